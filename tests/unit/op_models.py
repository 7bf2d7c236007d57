"""Tiny seeded ONNX models with the op patterns onnxruntime's dynamic quantizer treats specially.

Each builder returns (ModelProto, {input name: array}); save_with_external_data() writes it the way
large exported models are stored (graph + one external data file).
"""
from __future__ import annotations

import copy
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _init(name, *shape, rng, scale=0.1):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def _model(nodes, inputs, outputs, inits, opset=17):
    graph = helper.make_graph(nodes, "zoo", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _f32(name, *shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def shared_weights(seed=0):
    """One weight under two MatMuls, one weight under a MatMul and a later Add (float use after the
    quantized one), an excluded-able MatMul sharing a weight, and a weight too small to leave the graph."""
    rng = np.random.default_rng(seed)
    inits = [_init("w_shared", 32, 32, rng=rng), _init("w_mixed", 32, 32, rng=rng),
             _init("w_small", 32, 4, rng=rng), _init("w_late", 32, 32, rng=rng)]
    nodes = [
        helper.make_node("MatMul", ["x", "w_shared"], ["a"], name="mm_a"),
        helper.make_node("MatMul", ["a", "w_shared"], ["b"], name="mm_b"),
        helper.make_node("Add", ["w_late", "b"], ["b2"], name="add_late_first"),  # float use before quantizing
        helper.make_node("MatMul", ["b2", "w_late"], ["c"], name="mm_c"),
        helper.make_node("MatMul", ["c", "w_mixed"], ["d"], name="mm_d"),
        helper.make_node("Add", ["d", "w_mixed"], ["e"], name="add_mixed_after"),  # float use after quantizing
        helper.make_node("MatMul", ["e", "w_small"], ["y"], name="mm_small"),
    ]
    x = rng.standard_normal((2, 32, 32)).astype(np.float32)
    return _model(nodes, [_f32("x", 2, 32, 32)], [_f32("y", 2, 32, 4)], inits), {"x": x}


def gemm(seed=0):
    """Gemm with transB=1 (weight transposed by the quantizer) and bias, transB=0 without bias,
    a transB=1 Gemm sharing that weight, and one with alpha != 1 (left alone)."""
    rng = np.random.default_rng(seed)
    inits = [_init("w_t", 48, 32, rng=rng), _init("bias", 48, rng=rng), _init("w_n", 48, 48, rng=rng),
             _init("w_alpha", 48, 8, rng=rng)]
    nodes = [
        helper.make_node("Gemm", ["x", "w_t", "bias"], ["h"], name="gemm_t", transB=1),
        helper.make_node("Gemm", ["h", "w_n"], ["h2"], name="gemm_n"),
        helper.make_node("Gemm", ["x", "w_t"], ["h3"], name="gemm_t_again", transB=1),
        helper.make_node("Add", ["h2", "h3"], ["h4"], name="add"),
        helper.make_node("Gemm", ["h4", "w_alpha"], ["y"], name="gemm_alpha", alpha=0.5),
    ]
    x = rng.standard_normal((8, 32)).astype(np.float32)
    return _model(nodes, [_f32("x", 8, 32)], [_f32("y", 8, 8)], inits), {"x": x}


def embedding(seed=0):
    """Gather on an embedding table (quantized as uint8), a Transpose of the gathered value (moved
    as quantized), a MatMul on it, and the gathered value as a graph output (dequantized)."""
    rng = np.random.default_rng(seed)
    inits = [_init("embed", 64, 16, rng=rng, scale=1.0), _init("proj", 16, 16, rng=rng)]
    nodes = [
        helper.make_node("Gather", ["embed", "ids"], ["emb"], name="gather"),
        helper.make_node("Transpose", ["emb"], ["emb_t"], name="transpose", perm=[0, 2, 1]),
        helper.make_node("Transpose", ["emb_t"], ["emb_back"], name="transpose_back", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["emb_back", "proj"], ["y"], name="mm_proj"),
    ]
    ids = rng.integers(0, 64, (2, 5)).astype(np.int64)
    inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 5])]
    outputs = [_f32("y", 2, 5, 16), _f32("emb", 2, 5, 16)]
    return _model(nodes, inputs, outputs, inits), {"ids": ids}


def conv(seed=0):
    """A 1-D convolution with bias then one without (an audio front end)."""
    rng = np.random.default_rng(seed)
    inits = [_init("conv1.w", 16, 4, 3, rng=rng), _init("conv1.b", 16, rng=rng),
             _init("conv2.w", 16, 16, 5, rng=rng)]
    nodes = [
        helper.make_node("Conv", ["x", "conv1.w", "conv1.b"], ["c1"], name="conv1", pads=[1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
        helper.make_node("Conv", ["r1", "conv2.w"], ["y"], name="conv2", strides=[2], pads=[2, 2]),
    ]
    x = rng.standard_normal((1, 4, 32)).astype(np.float32)
    return _model(nodes, [_f32("x", 1, 4, 32)], [_f32("y", 1, 16, 16)], inits), {"x": x}


def attention(seed=0):
    """A com.microsoft Attention node: onnxruntime quantizes it (QAttention); streaming does not."""
    rng = np.random.default_rng(seed)
    inits = [_init("qkv.w", 16, 48, rng=rng), _init("qkv.b", 48, rng=rng)]
    nodes = [helper.make_node("Attention", ["x", "qkv.w", "qkv.b"], ["y"], name="attn", domain="com.microsoft",
                              num_heads=2)]
    model = _model(nodes, [_f32("x", 1, 4, 16)], [_f32("y", 1, 4, 16)], inits)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model, {"x": rng.standard_normal((1, 4, 16)).astype(np.float32)}


def extremes(seed=0):
    """Weights with values FP16 cannot hold (under its smallest subnormal, over its largest finite)
    and exact zeros: the converter clamps them, both engines must clamp them alike."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((32, 32)) * 0.1).astype(np.float32)
    w.flat[:8] = [1e-9, -1e-9, 3e-8, -3e-8, 7e4, -7e4, 0.0, -0.0]
    inits = [numpy_helper.from_array(w, "w_extreme")]
    nodes = [helper.make_node("MatMul", ["x", "w_extreme"], ["y"], name="mm")]
    x = rng.standard_normal((2, 32)).astype(np.float32) * 1e-3
    return _model(nodes, [_f32("x", 2, 32)], [_f32("y", 2, 32)], inits), {"x": x}


def _constant(name, *shape, rng, scale=0.1):
    """A Constant node holding a weight, as exporters write them (silero-vad, traced conv nets)."""
    return helper.make_node("Constant", [], [name], name=f"const_{name}", value=_init(name, *shape, rng=rng, scale=scale))


def constant_weights(seed=0):
    """A Conv and a MatMul whose weights (and the Conv bias) are Constant nodes, not initializers."""
    rng = np.random.default_rng(seed)
    nodes = [
        _constant("cw", 8, 4, 3, rng=rng), _constant("mw", 32, 16, rng=rng),
        helper.make_node("Constant", [], ["cb"], name="const_cb", value=_init("cb", 8, rng=rng)),
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", pads=[1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "mw"], ["y"], name="mm"),
    ]
    x = rng.standard_normal((1, 4, 32)).astype(np.float32)
    return _model(nodes, [_f32("x", 1, 4, 32)], [_f32("y", 1, 8, 16)], []), {"x": x}


def if_branches(seed=0):
    """An If whose two branches hold all the weights (silero-vad's layout): the then branch as Constant
    nodes, the else branch as a Constant and a subgraph initializer; both read x from the outer scope."""
    rng = np.random.default_rng(seed)
    then_branch = helper.make_graph(
        [_constant("w_then", 16, 16, rng=rng),
         helper.make_node("MatMul", ["x", "w_then"], ["t1"], name="mm_then"),
         helper.make_node("Tanh", ["t1"], ["then_out"], name="tanh_then")],
        "then", [], [_f32("then_out", 2, 16)])
    else_branch = helper.make_graph(
        [_constant("w_else", 16, 16, rng=rng),
         helper.make_node("MatMul", ["x", "w_else"], ["e1"], name="mm_else"),
         helper.make_node("MatMul", ["e1", "w_else2"], ["else_out"], name="mm_else2")],
        "else", [], [_f32("else_out", 2, 16)], initializer=[_init("w_else2", 16, 16, rng=rng)])
    nodes = [helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_branch,
                              else_branch=else_branch)]
    inputs = [_f32("x", 2, 16), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])]
    x = rng.standard_normal((2, 16)).astype(np.float32)
    return _model(nodes, inputs, [_f32("y", 2, 16)], []), {"x": x, "cond": np.array(True)}


def lstm(seed=0):
    """An LSTM carrying its state (initial_h/initial_c in, Y_h/Y_c out) and a MatMul head on Y_h."""
    rng = np.random.default_rng(seed)
    hidden, features = 16, 8
    inits = [_init("lstm.W", 1, 4 * hidden, features, rng=rng), _init("lstm.R", 1, 4 * hidden, hidden, rng=rng),
             _init("lstm.B", 1, 8 * hidden, rng=rng), _init("head", hidden, 4, rng=rng)]
    nodes = [
        helper.make_node("LSTM", ["x", "lstm.W", "lstm.R", "lstm.B", "", "h0", "c0"], ["seq", "h", "c"],
                         name="lstm", hidden_size=hidden),
        helper.make_node("MatMul", ["h", "head"], ["y"], name="mm_head"),
    ]
    inputs = [_f32("x", 5, 1, features), _f32("h0", 1, 1, hidden), _f32("c0", 1, 1, hidden)]
    outputs = [_f32("y", 1, 1, 4), _f32("h", 1, 1, hidden), _f32("c", 1, 1, hidden)]
    feeds = {"x": rng.standard_normal((5, 1, features)).astype(np.float32),
             "h0": rng.standard_normal((1, 1, hidden)).astype(np.float32) * 0.1,
             "c0": rng.standard_normal((1, 1, hidden)).astype(np.float32) * 0.1}
    return _model(nodes, inputs, outputs, inits), feeds


BUILDERS = {"shared_weights": shared_weights, "gemm": gemm, "embedding": embedding, "conv": conv,
            "attention": attention, "extremes": extremes, "constant_weights": constant_weights,
            "if_branches": if_branches, "lstm": lstm}


def save_with_external_data(model, path, size_threshold=0):
    """Graph in `path`, every tensor of at least size_threshold bytes in `path`.data."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    onnx.save_model(copy.deepcopy(model), path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=os.path.basename(path) + ".data", size_threshold=size_threshold)
    return path
