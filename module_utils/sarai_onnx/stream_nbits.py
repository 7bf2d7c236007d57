"""Streaming MatMulNBits: onnxruntime's MatMulNBitsQuantizer result, built one weight at a time.

plan() reads the graph only and replays MatMulNBitsQuantizer.process() (DEFAULT algorithm,
QOperator format; onnxruntime/quantization/matmul_nbits_quantizer.py) on it: the opset updates,
DefaultWeightOnlyQuantizer.quantize_matmul / quantize_gather's decisions, node and initializer
names and order, then onnxruntime's own _build_nbits_output_reshape, _clean_initializers_helper and
topological_sort. Where onnxruntime would read a weight, it appends initializers without data and
records a NBitsWeight; anything it does not mirror (subgraphs, local functions, a weight that is not
float32) raises StreamingUnsupported, so the caller can use the onnxruntime engine.

Plan.write() then visits each tensor once, in the order onnx.save_model writes them. A MatMul
weight is read whole (a block runs down a column, so no row chunk holds one) and quantized by
onnxruntime's DefaultWeightOnlyQuantizer.qbits_block_quant (the quantize_matmul_{4,8}bits C++
kernels); a Gather table is quantized in chunks of rows by its quantize_ndarray (blocks run along a
row). Unit tests prove the release equals onnxruntime's byte for byte.
"""

import copy
import math
import os

import numpy as np
import onnx
from onnx import TensorProto, helper

from .errors import StreamingUnsupported
from .hoist import hoist_constant_weights
from . import tensor_io
from .tensor_io import DataFileWriter, SourceTensor, goes_external, is_external, load_small_external, write_copy

SIZE_THRESHOLD = 1024  # ONNXModel.save_model_to_file: onnx's default size_threshold
GATHER_QUANTIZE_AXIS = 1  # WeightOnlyQuantConfig's default quant_axes {MatMul: 0, Gather: 1}
MS_DOMAIN = "com.microsoft"


class NBitsWeight:
    """A weight to quantize when written: the initializers it fills (quantized data, scales, zero
    points or None) and how (matmul: a [K, N] matrix; gather: a table quantized along axis 1)."""

    def __init__(self, kind, source, shape, names, opts):
        self.kind, self.source, self.shape, self.names = kind, source, shape, names
        self.bits, self.block_size, self.symmetric = opts["bits"], opts["block_size"], opts["symmetric"]

    def quantize(self, writer, tensor):
        """Write the quantized data as `tensor`; returns {name: bytes} of its scales and zero points."""
        if self.kind == "matmul":
            return self._matmul(writer, tensor)
        return self._gather(writer, tensor)

    def _matmul(self, writer, tensor):
        from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                     DefaultWeightOnlyQuantizer)

        config = DefaultWeightOnlyQuantConfig(block_size=self.block_size, is_symmetric=self.symmetric,
                                              bits=self.bits)
        weight = self.source.read().astype(np.float32, copy=False).reshape(self.shape)
        packed, scales, zero_points = DefaultWeightOnlyQuantizer(config).qbits_block_quant(weight)
        del weight
        _put(tensor, [packed.tobytes()], writer)
        return self._rest(scales.tobytes(), zero_points.tobytes())

    def _gather(self, writer, tensor):
        from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantizer

        scales, zero_points = [], []

        def packed_chunks():
            # quantize_ndarray treats each index of axis 0 alone (min/max per block of a row), so
            # chunks of whole rows give the same values; an even number of rows per chunk keeps the
            # 4-bit pairs from straddling two chunks.
            row = math.prod(self.shape[1:])
            pair_bytes = 2 * row * self.source.dtype.itemsize
            for chunk in self.source.chunks(row, max(1, tensor_io.CHUNK_BYTES // pair_bytes) * pair_bytes):
                chunk = chunk.astype(np.float32, copy=False).reshape((-1, *self.shape[1:]))
                data, s, zp = DefaultWeightOnlyQuantizer.quantize_ndarray(chunk, GATHER_QUANTIZE_AXIS,
                                                                         self.block_size, self.symmetric)
                scales.append(s)
                if zp is not None:
                    zero_points.append(zp)
                yield data.tobytes()

        _put(tensor, packed_chunks(), writer)
        return self._rest(np.concatenate(scales).tobytes(),
                          np.concatenate(zero_points).tobytes() if zero_points else None)

    def _rest(self, scales, zero_points):
        out = {self.names[1]: scales}
        if self.names[2] is not None:
            out[self.names[2]] = zero_points
        return out


def _put(tensor, chunks, writer):
    """The tensor's bytes into the data file, or inline when onnx would keep them in the graph."""
    if is_external(tensor):
        writer.append(tensor, chunks)
    else:
        tensor.raw_data = b"".join(chunks)


def _stub(name, data_type, dims, nbytes):
    """An initializer whose data is made when written; EXTERNAL when onnx will save it outside."""
    tensor = TensorProto(name=name, data_type=data_type, dims=list(dims))
    if goes_external(nbytes, SIZE_THRESHOLD):
        tensor.data_location = TensorProto.EXTERNAL
    return tensor


def check_supported(model):
    for node in model.graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise StreamingUnsupported(f"node {node.name or node.op_type} ({node.op_type}) holds a subgraph")
    if model.functions:
        raise StreamingUnsupported("the model defines local functions")


class _Replay:
    """MatMulNBitsQuantizer.process() (DEFAULT, QOperator) over a graph whose weights stay on disk."""

    def __init__(self, model, base_dir, opts):
        self.model, self.graph, self.base_dir, self.opts = model, model.graph, base_dir, opts
        self.op_types = set(opts["op_types_to_quantize"]) or {"MatMul"}
        self.excluded = set(opts["nodes_to_exclude"])
        self.bits = opts["bits"]
        self.payloads = {}  # quantized data tensor name -> NBitsWeight
        self.sizes = {}  # initializer name -> bytes of its data, for the ones made when written

    def _set_opset(self, domain, version):  # ONNXModel.set_opset_import
        for opset in self.model.opset_import:
            if opset.domain == domain:
                opset.version = version
                return
        self.model.opset_import.extend([helper.make_opsetid(domain, version)])

    def process(self):
        from onnxruntime.quantization.onnx_model import _clean_initializers_helper

        self._set_opset(MS_DOMAIN, 1)
        if "Gather" in self.op_types:
            for opset in self.model.opset_import:
                if opset.domain in (None, "ai.onnx", "") and opset.version < 21:
                    self._set_opset(opset.domain, 21)
            if self.model.ir_version < 10:
                self.model.ir_version = 10
        new_nodes = []
        for node in self.graph.node:
            if node.name in self.excluded or node.op_type not in self.op_types:
                new_nodes.append(node)
            elif node.op_type == "MatMul":
                new_nodes.extend(self.quantize_matmul(node))
            elif node.op_type == "Gather" and self.bits == 4:  # onnxruntime: "Gather only supports 4 bits"
                new_nodes.extend(self.quantize_gather(node))
            else:  # onnxruntime logs "Unsupported operator" and keeps it
                new_nodes.append(node)
        self.graph.ClearField("node")
        self.graph.node.extend(new_nodes)
        _clean_initializers_helper(self.graph, self.model)

    def _initializer(self, name):  # get_initializer: the first of that name
        return next((t for t in self.graph.initializer if t.name == name), None)

    def _remove_input(self, name):
        for value in self.graph.input:
            if value.name == name:
                self.graph.input.remove(value)
                break

    def _add(self, *tensors):
        self.graph.initializer.extend([t for t in tensors if t is not None])

    def _source(self, tensor, what):
        if tensor.data_type != TensorProto.FLOAT:
            raise StreamingUnsupported(f"{what} weight {tensor.name} is {TensorProto.DataType.Name(tensor.data_type)}, "
                                       "not FLOAT")
        return SourceTensor(tensor, self.base_dir)

    def quantize_matmul(self, node):
        """DefaultWeightOnlyQuantizer.quantize_matmul, QOperator."""
        from onnxruntime.quantization.matmul_nbits_quantizer import _build_nbits_output_reshape, _get_static_rank

        bits, block_size = self.bits, self.opts["block_size"]
        b_tensor = self._initializer(node.input[1])
        if b_tensor is None:
            return [node]
        original_shape = tuple(b_tensor.dims)
        if len(original_shape) < 2 or any(d != 1 for d in original_shape[:-2]):
            return [node]
        rows, cols = original_shape[-2:]
        source = self._source(b_tensor, f"MatMul {node.name}")
        b_original_shape = original_shape if len(original_shape) != 2 else None

        kpack = 8 // bits
        k_blocks = (rows + block_size - 1) // block_size
        blob_size = (block_size + kpack - 1) // kpack
        packed_shape, scales_shape = (cols, k_blocks, blob_size), (cols, k_blocks)
        zp_shape = (cols, (k_blocks + kpack - 1) // kpack)
        name = b_tensor.name
        b_quant = self._make(f"{name}_Q{bits}", TensorProto.UINT8, packed_shape, math.prod(packed_shape))
        scales = self._make(name + "_scales", TensorProto.FLOAT, scales_shape, 4 * math.prod(scales_shape))
        self._remove_input(node.input[1])
        self._add(b_quant, scales)
        inputs = [node.input[0], b_quant.name, scales.name]
        zp = None
        if not self.opts["symmetric"]:
            zp = self._make(name + "_zero_points", TensorProto.UINT8, zp_shape, math.prod(zp_shape))
            inputs.append(zp.name)
            self._add(zp)
        self.payloads[b_quant.name] = NBitsWeight("matmul", source, (rows, cols),
                                                  (b_quant.name, scales.name, zp and zp.name), self.opts)
        kwargs = {"K": rows, "N": cols, "bits": bits, "block_size": block_size}
        if self.opts["accuracy_level"]:
            kwargs["accuracy_level"] = self.opts["accuracy_level"]
        a_static_rank = _get_static_rank(node.input[0], [self.graph])
        rank_b_orig = len(b_original_shape) if b_original_shape is not None else 0
        needs_reshape = b_original_shape is not None and (a_static_rank is None or a_static_rank < rank_b_orig)
        qop_output = node.output[0] if not needs_reshape else node.output[0] + "_pre_reshape"
        nodes = [helper.make_node("MatMulNBits", inputs=inputs, outputs=[qop_output],
                                  name=node.name + f"_Q{bits}" if node.name else "", domain=MS_DOMAIN, **kwargs)]
        if needs_reshape:
            nodes.extend(_build_nbits_output_reshape(
                a_input_name=node.input[0], b_original_shape=b_original_shape, target_graph=self.graph,
                name_prefix=(node.name + f"_Q{bits}") if node.name else (name + f"_Q{bits}"),
                pre_reshape_output=qop_output, final_output=node.output[0]))
        return nodes

    def quantize_gather(self, node):
        """DefaultWeightOnlyQuantizer.quantize_gather (4 bits)."""
        qtype = TensorProto.INT4 if self.opts["symmetric"] else TensorProto.UINT4
        data = self._initializer(node.input[0])
        if data is None:
            return [node]
        shape = tuple(data.dims)
        block_size = self.opts["block_size"]
        if len(shape) < 2:  # onnxruntime asserts "Invalid quantize axis for Gather node."
            raise StreamingUnsupported(f"Gather {node.name} table {data.name} has rank {len(shape)}: onnxruntime "
                                       f"quantizes axis {GATHER_QUANTIZE_AXIS}")
        source = self._source(data, f"Gather {node.name}")
        scales_shape = list(shape)
        scales_shape[GATHER_QUANTIZE_AXIS] = (shape[GATHER_QUANTIZE_AXIS] + block_size - 1) // block_size
        self._remove_input(node.input[0])
        quantized = self._make(data.name + "_Q4", qtype, shape, (math.prod(shape) + 1) // 2)
        scales = self._make(data.name + "_scales", TensorProto.FLOAT, scales_shape, 4 * math.prod(scales_shape))
        self._add(quantized, scales)
        inputs = [quantized.name, node.input[1], scales.name]
        zp = None
        if not self.opts["symmetric"]:
            zp = self._make(data.name + "_zero_points", qtype, scales_shape, (math.prod(scales_shape) + 1) // 2)
            inputs.append(zp.name)
            self._add(zp)
        self.payloads[quantized.name] = NBitsWeight("gather", source, shape,
                                                    (quantized.name, scales.name, zp and zp.name), self.opts)
        try:
            gather_axis = helper.get_node_attr_value(node, "axis")
        except ValueError:
            gather_axis = 0
        return [helper.make_node("GatherBlockQuantized", inputs=inputs, outputs=[node.output[0]],
                                 name=node.name + "_Q4" if node.name else "", domain=MS_DOMAIN,
                                 gather_axis=gather_axis, quantize_axis=GATHER_QUANTIZE_AXIS, block_size=block_size)]

    def _make(self, name, data_type, dims, nbytes):
        self.sizes[name] = nbytes
        return _stub(name, data_type, dims, nbytes)


def plan(src, source_graph, opts):
    """Plan the MatMulNBits build of `src` (graph only). Raises StreamingUnsupported."""
    from onnxruntime.quantization.onnx_model import ONNXModel

    check_supported(source_graph)
    base_dir = os.path.dirname(os.path.abspath(src))
    model = copy.deepcopy(source_graph)
    hoist_constant_weights(model)  # Constant-node weights become initializers, as quantize._build_matmul_nbits
    # onnxruntime's engine loads every tensor and saves again: the small ones come back inline.
    load_small_external(model, base_dir, SIZE_THRESHOLD)
    replay = _Replay(model, base_dir, opts)
    replay.process()
    ONNXModel(model).topological_sort()  # ONNXModel.save_model_to_file
    return Plan(model, replay.payloads, replay.sizes, base_dir)


class Plan:
    """The output graph, with weights as references, and how to make each initializer's data."""

    def __init__(self, model, payloads, sizes, base_dir):
        self.model, self.payloads, self.base_dir = model, payloads, base_dir
        made = {name for p in payloads.values() for name in p.names if name}
        quantized = [payloads[t.name].source for t in self._tensors() if t.name in payloads]
        copied = [SourceTensor(t, base_dir) for t in self._tensors() if t.name not in made and is_external(t)]
        self.tensors_total = len(quantized) + len(copied)
        self.bytes_total = sum(source.nbytes for source in quantized + copied)
        # What the data file will hold: copies, the tensors made when written, inline ones moved out.
        sizes = [sizes[t.name] if t.name in made else SourceTensor(t, base_dir).nbytes if is_external(t)
                 else len(t.raw_data) for t in self._tensors()]
        self.output_bytes = sum(n for n in sizes if goes_external(n, SIZE_THRESHOLD))

    def _tensors(self):
        """Initializers, then attribute tensors: the order onnx.save_model writes external data."""
        yield from onnx.external_data_helper._get_initializer_tensors(self.model)
        yield from onnx.external_data_helper._get_attribute_tensors(self.model)

    def write(self, out_path, progress=None):
        """Write out_path and out_path.data, one weight at a time."""
        made = {}  # scales and zero points of the last quantized weight, until their turn
        with DataFileWriter(out_path + ".data") as writer:
            for tensor in self._tensors():
                payload = self.payloads.get(tensor.name)
                if payload is not None:  # a shared weight appears once per MatMul: quantized each time
                    made = payload.quantize(writer, tensor)
                    if progress:
                        progress.advance(1, payload.source.nbytes)
                elif tensor.name in made:
                    _put(tensor, [made[tensor.name]], writer)
                elif is_external(tensor):
                    source = SourceTensor(tensor, self.base_dir)
                    write_copy(tensor, source, writer, SIZE_THRESHOLD)
                    if progress:
                        progress.advance(1, source.nbytes)
                elif tensor.HasField("raw_data") and goes_external(len(tensor.raw_data), SIZE_THRESHOLD):
                    writer.append(tensor, [tensor.raw_data])  # inline in the source, external on save
        onnx.save_model(self.model, out_path)
