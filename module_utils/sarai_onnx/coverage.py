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


# Below this share of weight bytes quantized, a release buys little: the module says so out loud.
LOW_COVERAGE_SHARE = 0.5
# What to try when most weight bytes feed an op type the method left alone.
OP_HINTS = {
    "Conv": "dynamic_int8 with Conv in op_types_to_quantize (ConvInteger: measure it, onnxruntime's CPU "
            "ConvInteger is often slower than float Conv) or static INT8 with calibration data",
    "ConvTranspose": "static INT8 with calibration data (dynamic quantization has no ConvTranspose kernel)",
    "GRU": "nothing in onnxruntime's dynamic INT8 (it has an LSTM kernel, not GRU)",
    "RNN": "nothing in onnxruntime's dynamic INT8 (it has an LSTM kernel, not RNN)",
    "LSTM": "dynamic_int8 with LSTM in op_types_to_quantize",
    "Gather": "Gather in op_types_to_quantize (dynamic_int8, or matmul_nbits for embeddings)",
    "MatMul": "dynamic_int8 or matmul_nbits with MatMul in op_types_to_quantize and fewer nodes_to_exclude",
    "Gemm": "dynamic_int8 with MatMul in op_types_to_quantize (it rewrites Gemm as MatMul)",
}


def weight_bytes_by_op(model):
    """{op type: share of the weight bytes its nodes read}, largest first (a weight read by two op
    types counts for the first)."""
    weights = {t.name: tensor_nbytes(t) for t in weight_tensors(model)}
    total = sum(weights.values())
    by_op, seen = {}, set()
    for node in model.graph.node:
        for name in node.input:
            if name in weights and name not in seen:
                seen.add(name)
                by_op[node.op_type] = by_op.get(node.op_type, 0) + weights[name]
    return {op: round(b / total, 4) for op, b in sorted(by_op.items(), key=lambda kv: -kv[1])} if total else {}


def low_coverage_warning(model, method, opts, coverage):
    """A warning naming the share and what to try when `method` quantized (or would quantize) less than
    LOW_COVERAGE_SHARE of the weight bytes; None otherwise (and always for the FP32 reference)."""
    if method == "none" or not coverage.get("weight_bytes") or coverage["byte_share"] >= LOW_COVERAGE_SHARE:
        return None
    shares = weight_bytes_by_op(model)
    where = ", ".join(f"{op} {share:.0%}" for op, share in list(shares.items())[:3])
    tries = [OP_HINTS[op] for op in list(shares)[:2] if op in OP_HINTS]
    if opts.get("nodes_to_exclude"):
        tries.append(f"fewer nodes_to_exclude (now {len(opts['nodes_to_exclude'])})")
    if method != "fp16":
        tries.append("method fp16, which halves every float weight whatever its op")
    return (f"{method} quantizes only {coverage['byte_share']:.1%} of the weight bytes "
            f"({coverage['quantized_tensors']} of {coverage['weight_tensors']} weight tensors; "
            f"warning below {LOW_COVERAGE_SHARE:.0%}): the rest stays FP32, so the release is barely smaller "
            f"or faster. The weight bytes feed {where or 'no node'}. Try: {'; '.join(tries)}.")
