"""Which weights a quantization method would rewrite (plan) and did rewrite (coverage)."""

import onnx

from .model import tensor_nbytes, weight_tensors

# Which input of each op type holds the weight a quantizer rewrites (for the would-touch plan).
WEIGHT_INPUTS = {"MatMul": (1,), "Gemm": (1,), "Conv": (1,), "Gather": (0,), "Attention": (1,),
                 "LSTM": (1, 2), "EmbedLayerNormalization": (2, 3, 4)}
DYNAMIC_DEFAULT_OPS = ["Conv", "MatMul", "Attention", "LSTM", "Gather", "Transpose",
                       "EmbedLayerNormalization"]  # onnxruntime's IntegerOpsRegistry


def planned_weights(model, method, opts):
    """Weight tensors (float, rank >= 2) the method would rewrite, judged from the source graph."""
    weights = {t.name: t for t in weight_tensors(model)}
    if method == "none":
        chosen = set()
    elif method == "fp16":
        chosen = set(weights)
    else:
        ops = opts.get("op_types_to_quantize") or (DYNAMIC_DEFAULT_OPS if method == "dynamic_int8" else ["MatMul"])
        if "MatMul" in ops:
            ops = list(ops) + ["Gemm"]  # dynamic mode turns Gemm into MatMul before quantizing
        excluded = set(opts.get("nodes_to_exclude") or ())
        chosen = set()
        for node in model.graph.node:
            if node.op_type in ops and node.name not in excluded:
                for i in WEIGHT_INPUTS.get(node.op_type, ()):
                    if i < len(node.input) and node.input[i] in weights:
                        chosen.add(node.input[i])
    if method == "fp16":
        chosen -= {n for n in chosen if weights[n].data_type != onnx.TensorProto.FLOAT}
    return _share(weights.values(), [weights[n] for n in chosen])


def measure_coverage(source_model, output_model):
    """What was actually quantized, read from the output graph.

    A source weight counts as quantized when the output no longer holds it in its original dtype
    but holds a tensor derived from it (same name in another dtype, or <name>_quantized / _Q4 ...).
    """
    out = {t.name: t.data_type for t in output_model.graph.initializer}
    weights = weight_tensors(source_model)
    done = [w for w in weights
            if out.get(w.name) != w.data_type
            and (w.name in out or any(n.startswith(w.name + "_") for n in out))]
    result = _share(weights, done)
    result["not_quantized"] = sorted({w.name for w in weights} - {w.name for w in done})[:20]
    return result


def _share(weights, chosen):
    weights = list(weights)
    total = sum(tensor_nbytes(t) for t in weights)
    part = sum(tensor_nbytes(t) for t in chosen)
    return {"weight_tensors": len(weights), "quantized_tensors": len(chosen),
            "weight_bytes": total, "quantized_weight_bytes": part,
            "tensor_share": round(len(chosen) / len(weights), 4) if weights else 0.0,
            "byte_share": round(part / total, 4) if total else 0.0}
