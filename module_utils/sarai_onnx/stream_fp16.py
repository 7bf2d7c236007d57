"""Streaming FP16: onnxruntime's float16 converter on the graph alone, weights cast one at a time.

onnxruntime.transformers.float16.convert_float_to_float16 rewrites the graph (types, Cast nodes
around blocked nodes and float32 inputs/outputs) and converts each float initializer it holds in
memory. Given the graph without weights, it marks the external float initializers as FLOAT16
without touching data (it converts only raw_data/float_data it finds); write() then casts each
such tensor from the source data file in chunks with the converter's own convert_np_to_float16.
The only help it needs: make_value_info_from_tensor reads a tensor's shape by loading its data,
so while it runs that function reads the shape from the tensor's dims instead.
"""

import copy
import os
from unittest import mock

import onnx
from onnx import TensorProto, helper

from .hoist import hoist_constant_weights
from .model import unique_node_names
from .tensor_io import DataFileWriter, SourceTensor, is_external, load_attribute_tensors

MIN_POSITIVE = 5.96e-08  # convert_float_to_float16's defaults, passed explicitly to both engines
MAX_FINITE = 65504.0


def converter_args(opts):
    return dict(min_positive_val=MIN_POSITIVE, max_finite_val=MAX_FINITE, keep_io_types=opts["keep_io_types"],
                disable_shape_infer=True, node_block_list=opts["nodes_to_exclude"] or None)


def _value_info_from_dims(tensor):
    return helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))


class Plan:
    """The FP16 graph (external weights as references) and which of them to cast when written."""

    def __init__(self, model, was_float, base_dir):
        self.model, self.base_dir = model, base_dir
        self.cast = {t.name for t in self._initializers() if is_external(t) and t.name in was_float
                     and t.data_type == TensorProto.FLOAT16}
        work = [self._source(t) for t in self._initializers() if is_external(t)]
        self.tensors_total = len(work)
        self.bytes_total = sum(s.nbytes for s in work)
        self.output_bytes = sum(s.size * 2 if s.name in self.cast else s.nbytes for s in work) + sum(
            len(t.raw_data) for t in self._initializers() if t.HasField("raw_data"))

    def _initializers(self):
        return onnx.external_data_helper._get_initializer_tensors(self.model)

    def _source(self, tensor):
        """The tensor as stored in the source: FLOAT for the ones the converter marked FLOAT16."""
        header = TensorProto()
        header.CopyFrom(tensor)
        if tensor.name in self.cast:
            header.data_type = TensorProto.FLOAT
        return SourceTensor(header, self.base_dir)

    def write(self, out_path, progress=None):
        """Every initializer with data goes to out_path.data, as quantize._save (size_threshold=0) puts it."""
        from onnxruntime.transformers.float16 import convert_np_to_float16

        with DataFileWriter(out_path + ".data") as writer:
            for tensor in self._initializers():
                if is_external(tensor):
                    source = self._source(tensor)
                    if tensor.name in self.cast:
                        chunks = (convert_np_to_float16(c, MIN_POSITIVE, MAX_FINITE).tobytes()
                                  for c in source.chunks())
                    else:
                        chunks = source.raw_bytes_chunks()
                    writer.append(tensor, chunks)
                    if progress:
                        progress.advance(1, source.nbytes)
                elif tensor.HasField("raw_data"):
                    writer.append(tensor, [tensor.raw_data])
        onnx.save_model(self.model, out_path)


def plan(src, source_graph, opts):
    """Plan the FP16 build of `src` from its graph (no weights are read)."""
    from onnxruntime.transformers import float16

    base_dir = os.path.dirname(os.path.abspath(src))
    model = onnx.shape_inference.infer_shapes(copy.deepcopy(source_graph))
    hoist_constant_weights(model)  # before the converter, as quantize._build_fp16
    load_attribute_tensors(model, base_dir)  # the onnxruntime engine loads them; they stay in the graph
    was_float = {t.name for t in onnx.external_data_helper._get_initializer_tensors(model)
                 if t.data_type == TensorProto.FLOAT}
    with mock.patch.object(float16, "make_value_info_from_tensor", _value_info_from_dims):
        model = float16.convert_float_to_float16(model, **converter_args(opts))
    unique_node_names(model.graph)
    return Plan(model, was_float, base_dir)
