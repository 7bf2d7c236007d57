"""Which MatMuls lose the most fidelity under dynamic INT8, measured locally on real activations.

One FP32 pass of the source model returns, besides its outputs, the input activation of every
MatMul that dynamic INT8 would rewrite (added as graph outputs; the weights are read from the
external data, never copied). Then, one weight at a time, each node's output is computed twice
with numpy: exactly (x @ W) and as onnxruntime's integer path computes it (x quantized the way
DynamicQuantizeLinear does, W the way quantize_dynamic does with the same options, both
dequantized), and compared with validate.compare(). A node's sensitivity is 1 - that cosine.

The quantization parameters and integers come from onnxruntime's own helper
(onnxruntime.quantization.quant_utils.quantize_data); only the dequantization r = s * (q - z),
the definition those helpers document, is written here. docs/decisions.md says why this local
measure was chosen over per-node end-to-end builds.
"""

import os

import numpy as np
import onnx
from onnx import TensorProto

from .errors import SaraiError
from .model import external_info
from .session import build_session_options
from .validate import compare

# onnxruntime's config key for the directory of external data when a model is given as bytes.
_EXTERNAL_FOLDER = "session.model_external_initializers_file_folder_path"


def quantizable_matmuls(model, opts):
    """[(node name, activation name, weight name)]: the MatMuls quantize_dynamic rewrites with `opts`.

    quantize_dynamic quantizes MatMuls whose B is a constant (MatMulConstBOnly, its default);
    only named nodes can be excluded, so unnamed ones are not ranked.
    """
    if opts.get("op_types_to_quantize") and "MatMul" not in opts["op_types_to_quantize"]:
        return []
    weights = {t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) == 2}
    excluded = set(opts.get("nodes_to_exclude") or ())
    return [(n.name, n.input[0], n.input[1]) for n in model.graph.node
            if n.op_type == "MatMul" and n.name and n.name not in excluded and n.input[1] in weights]


def capture_activations(src, model, feeds, names):
    """{name: array} for intermediate tensors of the FP32 model, from one run on `feeds` (names that are
    no tensor of the run, e.g. a constant, are left out)."""
    import onnxruntime as ort

    graph_only = onnx.ModelProto()
    graph_only.CopyFrom(model)  # the graph without weight data: cheap for any model size
    present = {o.name for o in graph_only.graph.output}
    for name in names:
        if name not in present and name not in feeds:
            graph_only.graph.output.append(onnx.ValueInfoProto(name=name))
    so, providers = build_session_options(None)
    so.add_session_config_entry(_EXTERNAL_FOLDER, os.path.dirname(os.path.abspath(src)))
    try:
        session = ort.InferenceSession(graph_only.SerializeToString(), so, providers=providers)
        values = session.run(None, feeds)
    except Exception as exc:
        raise SaraiError(f"onnxruntime could not run {src} to capture the MatMul inputs: {exc}") from None
    found = dict(zip((o.name for o in session.get_outputs()), values))
    found.update(feeds)
    return {name: found[name] for name in names if name in found}


def read_weight(tensor, base_dir):
    """One float32 initializer as an array, read from its external data file by offset (nothing else loaded)."""
    if tensor.data_location != TensorProto.EXTERNAL:
        return onnx.numpy_helper.to_array(tensor)
    location, offset, _ = external_info(tensor)
    count = int(np.prod(tensor.dims))
    return np.fromfile(os.path.join(base_dir, location), dtype="<f4", count=count, offset=offset).reshape(tensor.dims)


def _dequantize(quantized, zero_point, scale):
    return (quantized.astype(np.float32) - zero_point.astype(np.float32)) * np.float32(scale)


def activation_roundtrip(x):
    """x as MatMulInteger sees it: DynamicQuantizeLinear's uint8, asymmetric, range including 0."""
    from onnxruntime.quantization.quant_utils import quantize_data

    zero_point, scale, quantized = quantize_data(x.ravel(), TensorProto.UINT8, symmetric=False)
    return _dequantize(quantized, zero_point, scale).reshape(x.shape)


def weight_roundtrip(w, opts):
    """W as quantize_dynamic stores it: per tensor or per output column (axis -1), INT8 symmetric or UINT8."""
    from onnxruntime.quantization.quant_utils import quantize_data

    qtype = TensorProto.INT8 if opts["weight_type"] == "QInt8" else TensorProto.UINT8
    symmetric = qtype == TensorProto.INT8  # onnxruntime's default (BaseQuantizer.is_weight_symmetric)
    if not opts["per_channel"]:
        zero_point, scale, quantized = quantize_data(w.ravel(), qtype, symmetric, reduce_range=opts["reduce_range"])
        return _dequantize(quantized, zero_point, scale).reshape(w.shape)
    out = np.empty_like(w)
    for j in range(w.shape[-1]):
        zero_point, scale, quantized = quantize_data(w[:, j].ravel(), qtype, symmetric,
                                                     reduce_range=opts["reduce_range"])
        out[:, j] = _dequantize(quantized, zero_point, scale)
    return out


def rank_matmuls(src, model, feeds, opts):
    """The quantizable MatMuls, most sensitive first: [{node, weight, weight_bytes, cosine, mse, mae}].

    cosine/mse/mae compare the node's INT8 output with its FP32 output on the validation inputs.
    Peak memory: the FP32 model's session once, then one weight (and its dequantized copy) at a time.
    """
    candidates = quantizable_matmuls(model, opts)
    if not candidates:
        return []
    activations = capture_activations(src, model, feeds, sorted({act for _, act, _ in candidates}))
    inits = {t.name: t for t in model.graph.initializer}
    base_dir = os.path.dirname(os.path.abspath(src))
    ranking = []
    for node, act, weight in candidates:
        x = activations.get(act)
        if x is None or x.dtype != np.float32 or x.shape[-1] != inits[weight].dims[0]:
            continue  # not the float activation x float weight MatMul that dynamic INT8 rewrites
        w = read_weight(inits[weight], base_dir)
        x = x.reshape(-1, w.shape[0])
        local = compare({"y": x @ w}, {"y": activation_roundtrip(x) @ weight_roundtrip(w, opts)})
        ranking.append({"node": node, "weight": weight, "weight_bytes": int(w.nbytes),
                        "cosine": local["cosine"], "mse": local["mse"], "mae": local["mae"]})
    # A non-finite comparison (cosine None) ranks first: that node is certainly worth keeping in FP32.
    ranking.sort(key=lambda r: (-(2.0 if r["cosine"] is None else 1.0 - r["cosine"]), r["node"]))
    return ranking
