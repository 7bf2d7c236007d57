#!/usr/bin/env python3
"""Generate a seeded FP32 transformer-style "talker" ONNX model for tests and benchmarks.

    hidden_states float32 [batch, seq, H]  ->  logits float32 [batch, seq, V]

Each layer is pre-norm: LayerNorm -> multi-head self-attention (Q/K/V/O MatMuls, Softmax)
-> residual -> LayerNorm -> MLP (MatMul, Erf-based GELU, MatMul) -> residual; then a final
LayerNorm and the logits MatMul. The model is saved the way large exported models are:
`<name>.onnx` (graph only) plus ONE external data file `<name>.onnx.data` (location = basename).

Weights are written to the data file one tensor at a time, so a multi-GB model never holds
more than one weight tensor in memory. Same arguments + same seed -> byte-identical files.

    python tools/make_talker_model.py --out DIR/agi_audio_core.onnx --hidden 256 --vocab 1024 \
        --layers 2 --seed 0 [--ffn 1024] [--heads 4] [--with-sample-rate]

`--with-sample-rate` adds an int64 scalar input `sr`; logits are scaled by sr / 16000, so only
the real sample rate (16000) reproduces the reference output.

`--outliers N --outlier-scale S [--outlier-layers 0,2]` gives the MLPs of the listed layers (default:
every layer) N "massive activation" channels, the pattern
trained transformers show (a few FFN channels carry a near-constant value tens to hundreds of
times larger than the rest, acting as a bias): up_proj's bias is S on those channels and
down_proj's matching weight rows are divided by S, so the FP32 function stays well-conditioned
while down_proj's input spans S times the usual range. Dynamic INT8 quantizes that input per
tensor, so its other channels lose their resolution: default INT8 loses fidelity, and keeping
the down_proj MatMuls in FP32 restores it. The outlier channels are chosen by their own seeded
generator, so N = 0 leaves the model byte-identical to one built without the option.
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper

SAMPLE_RATE = 16000


class _ExternalWriter:
    """Appends tensors to one external data file and returns TensorProtos pointing into it."""

    def __init__(self, data_path):
        self.location = os.path.basename(data_path)
        self.fh = open(data_path, "wb")
        self.offset = 0

    def tensor(self, name, array):
        array = np.ascontiguousarray(array, dtype=np.float32)
        raw = array.tobytes()
        self.fh.write(raw)
        t = TensorProto()
        t.name = name
        t.data_type = TensorProto.FLOAT
        t.dims.extend(array.shape)
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.location), ("offset", str(self.offset)),
                           ("length", str(len(raw)))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
        self.offset += len(raw)
        return t

    def close(self):
        self.fh.close()


class _Graph:
    """Small helper to emit nodes with unique names."""

    def __init__(self, writer, rng):
        self.w, self.rng = writer, rng
        self.nodes, self.inits, self.n = [], [], 0

    def node(self, op, inputs, **attrs):
        self.n += 1
        out = f"{op.lower()}_{self.n}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{op}_{self.n}", **attrs))
        return out

    def weight(self, name, shape, std, edit=None):
        # float32 straight from the generator: no float64 temporary for large tensors.
        arr = self.rng.standard_normal(shape, dtype=np.float32)
        arr *= np.float32(std)
        if edit is not None:  # in place, after drawing: the generator's stream stays the same
            edit(arr)
        self.inits.append(self.w.tensor(name, arr))
        return name

    def const(self, name, array):
        self.inits.append(self.w.tensor(name, np.asarray(array, dtype=np.float32)))
        return name

    def inline(self, name, array):
        # Tiny constants (scalars, shapes) stay inside the .onnx like exporters keep them.
        self.inits.append(helper.make_tensor(name, _onnx_dtype(array), array.shape,
                                             array.flatten().tolist()))
        return name

    def layer_norm(self, x, prefix, hidden):
        g = self.const(f"{prefix}.weight", np.ones(hidden))
        b = self.const(f"{prefix}.bias", np.zeros(hidden))
        return self.node("LayerNormalization", [x, g, b], axis=-1, epsilon=1e-5)

    def linear(self, x, prefix, fan_in, fan_out, bias=True, out_std=None, edit_weight=None, edit_bias=None):
        std = out_std if out_std is not None else 1.0 / math.sqrt(fan_in)
        y = self.node("MatMul", [x, self.weight(f"{prefix}.weight", (fan_in, fan_out), std, edit_weight)])
        if bias:
            # Small non-zero biases so bias handling is exercised by quantizers.
            y = self.node("Add", [y, self.weight(f"{prefix}.bias", (fan_out,), 0.02, edit_bias)])
        return y


def _onnx_dtype(array):
    return {np.dtype(np.float32): TensorProto.FLOAT,
            np.dtype(np.int64): TensorProto.INT64}[array.dtype]


def _outlier_edits(rng, ffn, count, scale):
    """(edit of up_proj's bias, edit of down_proj's weight) for `count` massive-activation channels."""
    channels = np.sort(rng.choice(ffn, size=count, replace=False))

    def bias(arr):
        arr[channels] = scale

    def rows(arr):
        arr[channels, :] /= scale

    return bias, rows


def build_talker_model(path, hidden=256, vocab=1024, layers=2, ffn=None, heads=None, seed=0,
                       opset=17, with_sample_rate=False, outliers=0, outlier_scale=100.0, outlier_layers=None):
    """Write `path` (+ `path`.data) and return a dict describing what was written."""
    ffn = ffn or 4 * hidden
    heads = heads or max(1, hidden // 64)
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
    if not 0 <= outliers <= ffn:
        raise ValueError(f"outliers ({outliers}) must be between 0 and the MLP width ({ffn})")
    if outliers and not outlier_scale > 1:
        raise ValueError(f"outlier_scale ({outlier_scale}) must be > 1")
    outlier_layers = sorted(set(range(layers) if outlier_layers is None else outlier_layers)) if outliers else []
    if any(not 0 <= i < layers for i in outlier_layers):
        raise ValueError(f"outlier_layers {outlier_layers} must be layer indices from 0 to {layers - 1}")
    head_dim = hidden // heads
    path = os.path.abspath(path)
    data_path = path + ".data"
    os.makedirs(os.path.dirname(path), exist_ok=True)

    rng = np.random.default_rng(seed)
    outlier_rng = np.random.default_rng([seed, 1])  # its own stream: the weights stay the same
    writer = _ExternalWriter(data_path)
    g = _Graph(writer, rng)
    try:
        split_shape = g.inline("shape.split_heads", np.array([0, 0, heads, head_dim], np.int64))
        merge_shape = g.inline("shape.merge_heads", np.array([0, 0, hidden], np.int64))
        scale = g.inline("attn.scale", np.array(1.0 / math.sqrt(head_dim), np.float32))
        inv_sqrt2 = g.inline("gelu.inv_sqrt2", np.array(1.0 / math.sqrt(2.0), np.float32))
        one = g.inline("gelu.one", np.array(1.0, np.float32))
        half = g.inline("gelu.half", np.array(0.5, np.float32))
        # Residual branch outputs are scaled down (GPT-2 style) so depth keeps activations stable.
        resid_std = 1.0 / math.sqrt(hidden) / math.sqrt(2.0 * layers)

        x = "hidden_states"
        for i in range(layers):
            p = f"layers.{i}"
            h = g.layer_norm(x, f"{p}.input_layernorm", hidden)
            q, k, v = (g.linear(h, f"{p}.attn.{n}_proj", hidden, hidden) for n in "qkv")
            # [B,T,H] -> [B,heads,T,hd]
            q, k, v = (g.node("Transpose", [g.node("Reshape", [t, split_shape])], perm=[0, 2, 1, 3])
                       for t in (q, k, v))
            kt = g.node("Transpose", [k], perm=[0, 1, 3, 2])
            scores = g.node("Mul", [g.node("MatMul", [q, kt]), scale])
            probs = g.node("Softmax", [scores], axis=-1)
            ctx = g.node("MatMul", [probs, v])
            ctx = g.node("Reshape", [g.node("Transpose", [ctx], perm=[0, 2, 1, 3]), merge_shape])
            attn = g.linear(ctx, f"{p}.attn.o_proj", hidden, hidden, out_std=resid_std)
            x = g.node("Add", [x, attn])

            h = g.layer_norm(x, f"{p}.post_attention_layernorm", hidden)
            up_bias, down_rows = (_outlier_edits(outlier_rng, ffn, outliers, outlier_scale) if i in outlier_layers
                                  else (None, None))
            up = g.linear(h, f"{p}.mlp.up_proj", hidden, ffn, edit_bias=up_bias)
            # GELU(x) = 0.5 * x * (1 + erf(x / sqrt(2))): plain ops every runtime and converter know.
            erf = g.node("Erf", [g.node("Mul", [up, inv_sqrt2])])
            act = g.node("Mul", [g.node("Mul", [up, half]), g.node("Add", [erf, one])])
            down = g.linear(act, f"{p}.mlp.down_proj", ffn, hidden, out_std=resid_std, edit_weight=down_rows)
            x = g.node("Add", [x, down])

        x = g.layer_norm(x, "final_layernorm", hidden)
        logits = g.linear(x, "lm_head", hidden, vocab, bias=False)

        inputs = [helper.make_tensor_value_info("hidden_states", TensorProto.FLOAT,
                                                ["batch", "seq", hidden])]
        if with_sample_rate:
            inputs.append(helper.make_tensor_value_info("sr", TensorProto.INT64, []))
            sr_ref = g.inline("sr.reference", np.array(float(SAMPLE_RATE), np.float32))
            ratio = g.node("Div", [g.node("Cast", ["sr"], to=TensorProto.FLOAT), sr_ref])
            logits = g.node("Mul", [logits, ratio])
        g.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="Identity_logits"))
    finally:
        writer.close()

    graph = helper.make_graph(
        g.nodes, "talker", inputs,
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab])],
        initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="sarai-deploy make_talker_model", producer_version="1")
    model.ir_version = 8  # readable by every onnxruntime from 1.10 on
    description = {"hidden": hidden, "vocab": vocab, "layers": layers, "ffn": ffn, "heads": heads, "seed": seed,
                   "with_sample_rate": with_sample_rate}
    if outliers:  # only when used, so models built without the option keep their exact bytes
        description.update(outliers=outliers, outlier_scale=outlier_scale, outlier_layers=outlier_layers)
    model.doc_string = json.dumps(description)
    # Tensors carry no raw_data (it is already in the data file), so this writes the graph only.
    with open(path, "wb") as fh:
        fh.write(model.SerializeToString())
    onnx.checker.check_model(path)  # path form: checks the external data references too
    for p in (path, data_path):
        os.chmod(p, 0o644)
    params = sum(math.prod(t.dims) for t in g.inits)
    return {"path": path, "data_path": data_path, "params": params,
            "size_bytes": os.path.getsize(path) + os.path.getsize(data_path)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="model file to write (DIR/name.onnx)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--ffn", type=int, default=None, help="MLP width (default 4 * hidden)")
    ap.add_argument("--heads", type=int, default=None, help="attention heads (default hidden // 64)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--with-sample-rate", action="store_true",
                    help="add an int64 scalar input 'sr' that must be 16000")
    ap.add_argument("--outliers", type=int, default=0,
                    help="massive-activation channels per MLP, like trained transformers (default 0: none)")
    ap.add_argument("--outlier-scale", type=float, default=100.0,
                    help="their magnitude relative to the other channels (default 100)")
    ap.add_argument("--outlier-layers", default=None,
                    help="comma-separated indices of the layers that carry them (default: every layer)")
    a = ap.parse_args(argv)
    layers = None if a.outlier_layers is None else [int(i) for i in a.outlier_layers.split(",") if i.strip()]
    info = build_talker_model(a.out, hidden=a.hidden, vocab=a.vocab, layers=a.layers, ffn=a.ffn,
                              heads=a.heads, seed=a.seed, opset=a.opset,
                              with_sample_rate=a.with_sample_rate, outliers=a.outliers,
                              outlier_scale=a.outlier_scale, outlier_layers=layers)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
