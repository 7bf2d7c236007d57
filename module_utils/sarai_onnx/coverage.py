"""Which weights a quantization method would rewrite (plan) and did rewrite (coverage)."""

import onnx

from .model import tensor_nbytes
from .weights import breakdown, find_weights, graphs

# Which input of each op type holds the weight a quantizer rewrites (for the would-touch plan).
WEIGHT_INPUTS = {"MatMul": (1,), "Gemm": (1,), "Conv": (1,), "Gather": (0,), "Attention": (1,),
                 "LSTM": (1, 2), "EmbedLayerNormalization": (2, 3, 4)}
DYNAMIC_DEFAULT_OPS = ["Conv", "MatMul", "Attention", "LSTM", "Gather", "Transpose",
                       "EmbedLayerNormalization"]  # onnxruntime's IntegerOpsRegistry
QUANTIZING_METHODS = ("dynamic_int8", "fp16", "matmul_nbits")


def planned_weights(model, method, opts):
    """The share of weight bytes the method would rewrite, judged from the source graph: every weight,
    Constant nodes and subgraphs included (both engines turn Constant weights into initializers and
    quantize subgraphs)."""
    weights = find_weights(model)
    if method == "none":
        chosen = set()
    elif method == "fp16":
        chosen = {i for i, w in enumerate(weights) if w.tensor.data_type == onnx.TensorProto.FLOAT}
    else:
        ops = opts.get("op_types_to_quantize") or (DYNAMIC_DEFAULT_OPS if method == "dynamic_int8" else ["MatMul"])
        if "MatMul" in ops:
            ops = list(ops) + ["Gemm"]  # dynamic mode turns Gemm into MatMul before quantizing
        excluded = set(opts.get("nodes_to_exclude") or ())
        chosen = {i for i, w in enumerate(weights)
                  if any(op in ops and node not in excluded and index in WEIGHT_INPUTS.get(op, ())
                         for op, node, index in w.readers)}
    return breakdown(weights, chosen)


def _output_tensors(model):
    """{name: TensorProto} of every initializer and Constant value in every graph of the output."""
    out = {}
    for _, graph in graphs(model.graph):
        for t in graph.initializer:
            out.setdefault(t.name, t)
        for node in graph.node:
            for attr in node.attribute:
                if node.op_type == "Constant" and attr.name == "value" and len(node.output) == 1:
                    out.setdefault(node.output[0], attr.t)
    return out


def measure_coverage(source_model, output_model):
    """What was actually rewritten, read from the output graph, with the bytes before and after.

    A source weight counts as quantized when the output no longer holds it in its original dtype
    but holds a tensor derived from it (same name in another dtype, or <name>_quantized / _Q4 ...);
    its bytes after are those of the tensors derived from it (scales and zero points included).
    """
    weights = find_weights(source_model)
    source_names = {name for _, g in graphs(source_model.graph)
                    for name in [t.name for t in g.initializer] + [o for n in g.node for o in n.output]}
    out = _output_tensors(output_model)
    chosen, after = set(), {}
    for i, w in enumerate(weights):
        kept = out.get(w.name)
        derived = [t for name, t in out.items() if name.startswith(w.name + "_") and name not in source_names]
        if kept is not None and kept.data_type != w.tensor.data_type:
            derived.append(kept)
        if (kept is None or kept.data_type != w.tensor.data_type) \
                and any(t.data_type != w.tensor.data_type for t in derived):  # not a float copy (Gemm's transpose)
            chosen.add(i)
            after[i] = sum(tensor_nbytes(t) for t in derived)
        else:
            after[i] = tensor_nbytes(w.tensor)
    result = breakdown(weights, chosen, after)
    result["not_quantized"] = sorted({w.name for i, w in enumerate(weights) if i not in chosen})[:20]
    return result


# Below this share of weight bytes rewritten, a release buys little: the build fails unless the catalog
# allows it (allow_low_coverage), then it warns. The default floor of every method that rewrites weights.
LOW_COVERAGE_SHARE = 0.5
# What to try when most weight bytes feed an op type the method left alone (and why it may not help).
OP_HINTS = {
    "Conv": "dynamic_int8 with Conv in op_types_to_quantize (ConvInteger: measure it, onnxruntime's CPU "
            "ConvInteger is often slower than float Conv) or static INT8 with calibration data",
    "ConvTranspose": "static INT8 with calibration data (dynamic quantization has no ConvTranspose kernel)",
    "GRU": "nothing in onnxruntime's dynamic INT8 (it has an LSTM kernel, not GRU): fp16",
    "RNN": "nothing in onnxruntime's dynamic INT8 (it has an LSTM kernel, not RNN): fp16",
    "LSTM": "dynamic_int8 with LSTM in op_types_to_quantize (DynamicQuantizeLSTM; matmul_nbits has no LSTM kernel)",
    "Gather": "Gather in op_types_to_quantize (dynamic_int8, or matmul_nbits for embeddings)",
    "MatMul": "dynamic_int8 or matmul_nbits with MatMul in op_types_to_quantize and fewer nodes_to_exclude",
    "Gemm": "dynamic_int8 with MatMul in op_types_to_quantize (it rewrites Gemm as MatMul)",
}
LOCATION_WORDS = {"initializers": "initializers", "constant_nodes": "Constant nodes",
                  "subgraph_initializers": "subgraph initializers",
                  "subgraph_constant_nodes": "Constant nodes in subgraphs (If/Loop/Scan bodies)"}


def default_floor(method):
    """min_quantized_share when the catalog sets none: LOW_COVERAGE_SHARE for a method that rewrites weights."""
    return LOW_COVERAGE_SHARE if method in QUANTIZING_METHODS else 0.0


def _bytes(n):
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n / 1024:.1f} KiB"


def _parts(groups, words=None):
    return ", ".join(f"{(words or {}).get(k, k)} {_bytes(g['weight_bytes'])} ({g['byte_share']:.0%} rewritten)"
                     for k, g in list(groups.items())[:4])


def low_coverage_message(method, opts, coverage, floor):
    """What a build that rewrote (or would rewrite) less than `floor` of its weight bytes says: the share,
    where the weights are (per op type and where they are held), what was left and what to try.
    None when the share clears the floor (always for method none)."""
    if method not in QUANTIZING_METHODS or coverage["byte_share"] >= floor:
        return None
    if not coverage.get("weight_bytes"):
        return (f"{method} found no weight to rewrite (no float tensor of rank >= 2 in initializers, Constant "
                f"nodes or subgraphs; quantized share 0 < min_quantized_share {floor:g}): the release would be "
                "the FP32 model. Check that src is the FP32 model you meant.")
    left = {op: g for op, g in coverage.get("by_op", {}).items() if g["quantized_weight_bytes"] < g["weight_bytes"]}
    tries = [f"{op}: {OP_HINTS[op]}" for op in list(left)[:3] if op in OP_HINTS]
    if opts.get("nodes_to_exclude"):
        tries.append(f"fewer nodes_to_exclude (now {len(opts['nodes_to_exclude'])})")
    if method != "fp16":
        tries.append("method fp16, which halves every float weight whatever its op")
    tries.append("allow_low_coverage: true on the variant to ship it anyway")
    return (f"{method} rewrites only {coverage['byte_share']:.1%} of the weight bytes "
            f"({coverage['quantized_tensors']} of {coverage['weight_tensors']} weight tensors, "
            f"{_bytes(coverage['quantized_weight_bytes'])} of {_bytes(coverage['weight_bytes'])}), below "
            f"min_quantized_share {floor:g}: the rest stays FP32, so the release is barely smaller or faster. "
            f"The weights feed {_parts(coverage.get('by_op', {}))}; they are held in "
            f"{_parts(coverage.get('by_location', {}), LOCATION_WORDS)}. Left in FP32: "
            f"{', '.join(left) or 'none'}. Try: {'; '.join(tries)}.")
