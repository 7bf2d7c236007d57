"""Where a model's weights live: initializers, Constant nodes and subgraphs (If/Loop/Scan bodies).

A weight is a float tensor of rank >= 2 (what quantizers target; biases and norms are rank 1).
Exported models hold them as initializers of the main graph, but also as `Constant` nodes and
inside control-flow subgraphs (silero-vad: Constant nodes inside If branches), so counting the
main graph's initializers alone can find no weight at all in a model that is all weights.
"""

from collections import namedtuple

from onnx import AttributeProto

from .model import FLOAT_TYPES, tensor_nbytes

# Where a weight is held, as coverage reports it.
LOCATIONS = ("initializers", "constant_nodes", "subgraph_initializers", "subgraph_constant_nodes")

# name: the value name nodes read; location: one of LOCATIONS; scope: "" for the main graph, else the
# path of the subgraph (node:attribute/...); readers: [(op type, node name, input index)] of the nodes
# reading it in its graph and the subgraphs below (outer-scope reads).
Weight = namedtuple("Weight", "name tensor location scope readers")


def subgraphs(node):
    """[(attribute name, graph)] of a node (If branches, Loop/Scan bodies)."""
    out = []
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            out.append((attr.name, attr.g))
        elif attr.type == AttributeProto.GRAPHS:
            out.extend((f"{attr.name}:{i}", g) for i, g in enumerate(attr.graphs))
    return out


def graphs(graph, scope=""):
    """(scope, graph) for the graph and every subgraph below it, depth first."""
    yield scope, graph
    for node in graph.node:
        for attr_name, sub in subgraphs(node):
            yield from graphs(sub, f"{scope}{node.name or node.op_type}:{attr_name}/")


def constant_weight(node):
    """The tensor a Constant node holds when it is a weight (its `value` attribute), else None."""
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.output) != 1:
        return None
    for attr in node.attribute:
        if attr.name == "value" and attr.type == AttributeProto.TENSOR and is_weight(attr.t):
            return attr.t
    return None


def is_weight(tensor):
    return tensor.data_type in FLOAT_TYPES and len(tensor.dims) >= 2


def _readers(graph):
    readers = {}
    for _, g in graphs(graph):
        for node in g.node:
            for index, name in enumerate(node.input):
                if name:
                    readers.setdefault(name, []).append((node.op_type, node.name, index))
    return readers


def find_weights(model):
    """[Weight] of every weight in the model, in graph order (main graph first)."""
    found = []
    for scope, graph in graphs(model.graph):
        readers = _readers(graph)
        prefix = "subgraph_" if scope else ""
        for tensor in graph.initializer:
            if is_weight(tensor):
                found.append(Weight(tensor.name, tensor, prefix + "initializers", scope, readers.get(tensor.name, [])))
        for node in graph.node:
            tensor = constant_weight(node)
            if tensor is not None:
                found.append(Weight(node.output[0], tensor, prefix + "constant_nodes", scope,
                                    readers.get(node.output[0], [])))
    return found


def op_type_of(weight):
    """The op type a weight feeds (the first node reading it), "unused" when none does."""
    return weight.readers[0][0] if weight.readers else "unused"


def breakdown(weights, chosen, after=None):
    """{weight_tensors, quantized_tensors, weight_bytes, quantized_weight_bytes, tensor_share, byte_share,
    by_op, by_location}: `chosen` is the set of indices into `weights` that are (or would be) rewritten;
    `after` (index -> bytes the output holds for that weight) adds weight_bytes_after to each part."""
    def part(indices):
        total = sum(tensor_nbytes(weights[i].tensor) for i in indices)
        done = [i for i in indices if i in chosen]
        share = sum(tensor_nbytes(weights[i].tensor) for i in done)
        out = {"weight_tensors": len(indices), "quantized_tensors": len(done), "weight_bytes": total,
               "quantized_weight_bytes": share,
               "tensor_share": round(len(done) / len(indices), 4) if indices else 0.0,
               "byte_share": round(share / total, 4) if total else 0.0}
        if after is not None:
            out["weight_bytes_after"] = sum(after[i] for i in indices)
        return out

    everything = list(range(len(weights)))
    result = part(everything)
    groups = {}
    for i in everything:
        groups.setdefault(op_type_of(weights[i]), []).append(i)
    result["by_op"] = {op: part(ix) for op, ix in sorted(groups.items(), key=lambda kv: -part(kv[1])["weight_bytes"])}
    result["by_location"] = {loc: part([i for i in everything if weights[i].location == loc]) for loc in LOCATIONS
                             if any(w.location == loc for w in weights)}
    return result
