"""Constant-node weights turned into initializers, so quantizers see them.

onnxruntime's quantizers only rewrite a weight held as an initializer (quantize_dynamic's MatMul
quantizes a constant B only; MatMulNBits and ConvInteger read initializers). Exporters often hold
weights as `Constant` nodes instead, in the main graph and inside If/Loop/Scan bodies. The same
tensor as an initializer of the same graph, under the Constant's output name, computes the same
outputs (a unit test runs onnxruntime on both). Both engines call this at the same step, so their
releases stay equal.
"""

from onnx import TensorProto, helper, numpy_helper

from .tensor_io import is_external
from .weights import constant_weight, graphs


def hoist_constant_weights(model):
    """Move every Constant node holding a weight (float, rank >= 2) into its graph's initializers,
    in place. Returns how many were moved."""
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
    return moved
