"""Streaming dynamic INT8: onnxruntime's quantize_dynamic result, built one tensor at a time.

plan() reads the graph only: it runs the steps quantize_dynamic runs before quantizing (shape
inference, the Gemm rewrite, shape inference again) and replays onnxruntime's quantizer on it
(int8_graph.Quantizer), which covers MatMul, Gemm, Gather, Conv and Transpose of quantized values
and raises StreamingUnsupported for anything else it would have to quantize (Attention, LSTM,
EmbedLayerNormalization, subgraphs, FP16 weights, opset < 11, an already quantized model), so the
caller can use the onnxruntime engine instead.

Plan.write() then visits each tensor once, in the order onnx.save_model writes them: a weight is
read from the source data file in chunks, its scale and zero point come from onnxruntime's
quant_utils (compute_data_quant_params given the tensor's min and max), its values from
quant_utils.quantize_nparray, and each chunk is appended to the output data file. Unit tests prove
the release equals onnxruntime's byte for byte.
"""

import copy
import os

import numpy as np
import onnx
from onnx import helper

from .hoist import hoist_constant_weights
from .int8_graph import QuantizedWeight, Quantizer, check_supported, replace_gemm_with_matmul
from .tensor_io import DataFileWriter, SourceTensor, goes_external, is_external, load_small_external, write_copy

SIZE_THRESHOLD = 1024  # onnxruntime saves quantized models with onnx's default size_threshold


def plan(src, source_graph, opts):
    """Plan the dynamic INT8 build of `src` (graph only). Raises StreamingUnsupported."""
    from onnxruntime.quantization.onnx_model import ONNXModel
    from onnxruntime.quantization.quant_utils import __producer__, __version__, add_infer_metadata
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    check_supported(source_graph)
    base_dir = os.path.dirname(os.path.abspath(src))
    # quantize_dynamic: shape inference on the file (weights are not read), infer metadata.
    model = onnx.shape_inference.infer_shapes(copy.deepcopy(source_graph))
    add_infer_metadata(model)
    hoist_constant_weights(model)  # Constant-node weights become initializers, as quantize._load_model_with_shape_infer
    # ONNXQuantizer then rewrites Gemm and infers shapes again on a saved copy, where tensors under
    # the size threshold are inline: read those few bytes too.
    load_small_external(model, base_dir, SIZE_THRESHOLD)
    payloads = {}
    replace_gemm_with_matmul(model, payloads, base_dir)
    model = onnx.shape_inference.infer_shapes(model)
    add_infer_metadata(model)

    op_types = opts["op_types_to_quantize"] or list(IntegerOpsRegistry)
    quantizer = Quantizer(model, payloads, base_dir, op_types, opts)
    quantizer.quantize_model()
    model.producer_name, model.producer_version = __producer__, __version__
    if not any(o.domain == "com.microsoft" for o in model.opset_import) \
            and any(n.domain == "com.microsoft" for n in model.graph.node):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    ONNXModel(model).topological_sort()
    return Plan(model, payloads, base_dir)


class Plan:
    """The output graph, with weights as references, and how to make each initializer's data."""

    def __init__(self, model, payloads, base_dir):
        self.model, self.payloads, self.base_dir = model, payloads, base_dir
        work = [(source, q) for _, source, q in self._work() if source is not None]
        self.tensors_total = len(work)
        self.bytes_total = sum(source.nbytes for source, _ in work)
        # What the data file will hold: quantized values take one byte each.
        sizes = [source.size if q else source.nbytes for source, q in work]
        sizes += [len(t.raw_data) for t in onnx.external_data_helper._get_all_tensors(model)
                  if t.HasField("raw_data")]
        self.output_bytes = sum(n for n in sizes if goes_external(n, SIZE_THRESHOLD))

    def _work(self):
        """(tensor, source, quantized) for each tensor, in the order onnx.save_model writes external
        data (initializers, then attribute tensors). source is None for tensors already in the graph."""
        for tensor in onnx.external_data_helper._get_initializer_tensors(self.model):
            payload = self.payloads.get(tensor.name)
            if isinstance(payload, QuantizedWeight):
                yield tensor, payload.source, payload
            elif payload is not None:
                yield tensor, payload, None
            else:
                yield tensor, SourceTensor(tensor, self.base_dir) if is_external(tensor) else None, None
        for tensor in onnx.external_data_helper._get_attribute_tensors(self.model):
            yield tensor, SourceTensor(tensor, self.base_dir) if is_external(tensor) else None, None

    def write(self, out_path, progress=None):
        """Write out_path and out_path.data, one tensor at a time."""
        inits = {t.name: t for t in self.model.graph.initializer}
        with DataFileWriter(out_path + ".data") as writer:
            for tensor, source, q in self._work():
                if q is not None:
                    _write_quantized(tensor, q, inits, writer)
                elif source is not None:
                    write_copy(tensor, source, writer, SIZE_THRESHOLD)
                elif tensor.HasField("raw_data") and goes_external(len(tensor.raw_data), SIZE_THRESHOLD):
                    writer.append(tensor, [tensor.raw_data])  # inline in the source, external on save
                if source is not None and progress:
                    progress.advance(1, source.nbytes)
        onnx.save_model(self.model, out_path)


def _min_max(source, per_channel):
    """The tensor's min and max (per column of its last axis when per_channel), read in chunks."""
    rmin = rmax = None
    for chunk in source.chunks(source.dims[-1] if per_channel else None):
        lo, hi = (chunk.min(axis=0), chunk.max(axis=0)) if per_channel else (chunk.min(), chunk.max())
        rmin = lo if rmin is None else np.minimum(rmin, lo)
        rmax = hi if rmax is None else np.maximum(rmax, hi)
    return rmin, rmax


def _write_quantized(tensor, q, inits, writer):
    """quantize_data, one chunk at a time: its min and max are taken first over all chunks and passed
    to quant_utils.compute_data_quant_params; quant_utils.quantize_nparray is elementwise."""
    from onnxruntime.quantization.quant_utils import compute_data_quant_params, quantize_nparray

    source = q.source
    rmin, rmax = _min_max(source, q.per_channel)
    one, empty = np.zeros(1, source.dtype), np.zeros(0, source.dtype)

    def params(lo, hi):  # same as quantize_data(data, ...) on data whose min is lo and max is hi
        if lo is None:
            return compute_data_quant_params(empty, q.qtype, q.symmetric, q.reduce_range)
        return compute_data_quant_params(one, q.qtype, q.symmetric, q.reduce_range, None, lo, hi)

    if q.per_channel:  # onnxruntime calls quantize_data once per channel of the last axis
        channels = [params(None if rmin is None else rmin[i], None if rmax is None else rmax[i])
                    for i in range(source.dims[-1])]
        zero_points, scales = np.hstack([c[0] for c in channels]), np.hstack([c[1] for c in channels])
    else:
        zero_points, scales = params(rmin, rmax)
    chunks = (quantize_nparray(q.qtype, chunk, scales, zero_points).tobytes()
              for chunk in source.chunks(source.dims[-1] if q.per_channel else None))
    if goes_external(source.size, SIZE_THRESHOLD):
        writer.append(tensor, chunks)
    else:
        tensor.raw_data = b"".join(chunks)
    shape = [source.dims[-1]] if q.per_channel else []
    scale, zero_point = inits[q.scale_name], inits[q.zero_point_name]
    scale.CopyFrom(helper.make_tensor(scale.name, scale.data_type, shape, scales.reshape(-1).tolist()))
    zero_point.CopyFrom(helper.make_tensor(zero_point.name, q.qtype, shape, zero_points.reshape(-1).tolist()))
