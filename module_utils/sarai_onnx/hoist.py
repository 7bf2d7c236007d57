"""Constant-node weights turned into initializers, so quantizers see them.

onnxruntime's quantizers only rewrite a weight held as an initializer (quantize_dynamic's MatMul
quantizes a constant B only; MatMulNBits and ConvInteger read initializers). Exporters often hold
weights as `Constant` nodes instead, in the main graph and inside If/Loop/Scan bodies. The same
tensor as an initializer of the same graph, under the Constant's output name, computes the same
outputs (a unit test runs onnxruntime on both). Both engines call this at the same step, so their
releases stay equal.

A weight initializer that only one subgraph reads (silero-vad's op18 file: each If branch reads its
own weights from the main graph) moves into that subgraph: onnxruntime's subgraph quantizer finds
an outer-scope weight valid but then fails to find it ("Expected ... to be an initializer").
"""

from onnx import TensorProto, helper, numpy_helper

from .tensor_io import is_external
from .weights import constant_weight, graphs, is_weight, subgraphs


def hoist_constant_weights(model):
    """Move every Constant node holding a weight (float, rank >= 2) into its graph's initializers, and
    weights only one subgraph reads into it (sink_weights), in place. Returns how many were moved."""
    moved = 0
    # Subgraphs first: they live inside their parent's nodes, which are edited afterwards.
    for scope, graph in reversed(list(graphs(model.graph))):
        new, moved_nodes = [], []
        for index, node in enumerate(graph.node):
            tensor = constant_weight(node)
            if tensor is None:
                continue
            moved_nodes.append(index)
            init = TensorProto()
            init.CopyFrom(tensor)
            if not is_external(init):  # one storage form (raw_data), as a loaded and re-saved model has
                init = numpy_helper.from_array(numpy_helper.to_array(tensor), node.output[0])
            init.name = node.output[0]
            new.append(init)
        for index in reversed(moved_nodes):
            del graph.node[index]
        graph.initializer.extend(new)
        if not scope and model.ir_version < 4:  # before IR 4 an initializer must also be a graph input
            graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in new)
        moved += len(new)
    return moved + sink_weights(model.graph)


def _reads(graph):
    """Names read by the graph's nodes, its subgraphs included, and declared in it (which shadow)."""
    read = {name for _, g in graphs(graph) for node in g.node for name in node.input}
    declared = {t.name for t in graph.initializer} | {i.name for i in graph.input} \
        | {o for node in graph.node for o in node.output}
    return read, declared


def sink_weights(graph):
    """Move each weight initializer of `graph` read by exactly one of its direct subgraphs (and by no
    node or output of its own) into that subgraph, then do the same below. Returns how many moved."""
    own = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    children = [sub for node in graph.node for _, sub in subgraphs(node)]
    reads = [_reads(sub) for sub in children]
    moved = []
    for index, tensor in enumerate(graph.initializer):
        if not is_weight(tensor) or tensor.name in own:
            continue
        readers = [i for i, (read, _) in enumerate(reads) if tensor.name in read]
        if len(readers) == 1 and tensor.name not in reads[readers[0]][1]:
            children[readers[0]].initializer.append(tensor)
            moved.append(index)
    for index in reversed(moved):
        del graph.initializer[index]
    return len(moved) + sum(sink_weights(sub) for sub in children)
