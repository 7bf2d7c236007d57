"""onnxruntime's dynamic INT8 quantizer, replayed on a graph whose weights stay on disk.

_Quantizer walks the nodes the way ONNXQuantizer does in IntegerOps mode, dynamic
(onnxruntime/quantization/onnx_quantizer.py, base_quantizer.py and operators/matmul.py, conv.py,
gather.py, direct_q8.py; onnx_model.py for the Gemm rewrite and the initializer clean-up): the
same decisions, nodes, tensor names and initializer order. Where onnxruntime would read a weight,
it records a QuantizedWeight instead; stream_int8 writes the data. Each method names the
onnxruntime function it follows. Anything else onnxruntime would quantize raises
StreamingUnsupported.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper

from .errors import StreamingUnsupported
from .tensor_io import SourceTensor, TransposedTensor

QUANT_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
             "QLinearMatMul", "QLinearConv", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "MatMulNBits")
UNSUPPORTED_OPS = ("Attention", "LSTM", "EmbedLayerNormalization")  # in IntegerOpsRegistry, not mirrored here
Q_SUFFIX = "_quantized"  # quant_utils.TENSOR_NAME_QUANT_SUFFIX


class QuantizedWeight:
    """A weight to quantize when written; its scale and zero point initializers are filled then."""

    def __init__(self, source, qtype, symmetric, reduce_range, per_channel, scale_name, zero_point_name):
        self.source, self.qtype, self.symmetric = source, qtype, symmetric
        self.reduce_range, self.per_channel = reduce_range, per_channel
        self.scale_name, self.zero_point_name = scale_name, zero_point_name


def check_supported(model):
    opset = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not opset or opset[0] < 11:
        raise StreamingUnsupported(f"opset {opset[0] if opset else 'none'} < 11 (onnxruntime converts or "
                                   "quantizes such models differently)")
    for node in model.graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise StreamingUnsupported(f"node {node.name or node.op_type} ({node.op_type}) holds a subgraph")
        if node.op_type in QUANT_OPS:
            raise StreamingUnsupported(f"node {node.name or node.op_type} ({node.op_type}): the model is "
                                       "already quantized")
    if model.functions:
        raise StreamingUnsupported("the model defines local functions")


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def replace_gemm_with_matmul(model, payloads, base_dir):
    """onnx_model.ONNXModel.replace_gemm_with_matmul, with a transposed weight as a reference."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    names = {t.name for t in graph.initializer}
    names.update(v.name for v in (*graph.input, *graph.output, *graph.value_info))
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
    transposed = {}
    new_nodes = []
    for node in graph.node:
        if node.op_type != "Gemm" or not (_attr(node, "alpha", 1.0) == 1.0 and _attr(node, "beta", 1.0) == 1.0
                                          and _attr(node, "transA", 0) == 0):
            new_nodes.append(node)
            continue
        input_b = node.input[1]
        if _attr(node, "transB", 0) == 1:
            if input_b in inits:
                if input_b not in transposed:
                    name, suffix = input_b + "_Transposed", 0
                    while any(name + s in names for s in ("", "_quantized", "_scale", "_zero_point")):
                        suffix += 1
                        name = f"{input_b}_Transposed_{suffix}"
                    names.update(name + s for s in ("", "_quantized", "_scale", "_zero_point"))
                    source = inits[input_b]
                    if source.data_type != TensorProto.FLOAT or len(source.dims) != 2:
                        raise StreamingUnsupported(f"Gemm {node.name} weight {input_b} is not a float32 matrix")
                    stub = TensorProto(name=name, data_type=source.data_type, dims=list(reversed(source.dims)))
                    stub.data_location = TensorProto.EXTERNAL  # its data is made when written
                    graph.initializer.append(stub)
                    payloads[name] = TransposedTensor(SourceTensor(source, base_dir))
                    transposed[input_b] = name
                input_b = transposed[input_b]
            else:
                input_b += "_Transposed"
                new_nodes.append(helper.make_node("Transpose", inputs=[node.input[1]], outputs=[input_b],
                                                  name=node.name + "_Transpose" if node.name else ""))
        new_nodes.append(helper.make_node(
            "MatMul", inputs=[node.input[0], input_b],
            outputs=[node.output[0] + ("_MatMul" if len(node.input) > 2 else "")],
            name=node.name + "_MatMul" if node.name else ""))
        if len(node.input) > 2:
            new_nodes.append(helper.make_node("Add", inputs=[node.output[0] + "_MatMul", node.input[2]],
                                              outputs=node.output, name=node.name + "_Add" if node.name else ""))
    graph.ClearField("node")
    graph.node.extend(new_nodes)


class _QValue:
    """quant_utils.QuantizedValue: where the quantized form of a value lives."""

    def __init__(self, q_name, scale_name, zp_name, axis=None):
        self.q_name, self.scale_name, self.zp_name, self.axis = q_name, scale_name, zp_name, axis


class Quantizer:
    """ONNXQuantizer.quantize_model (IntegerOps, dynamic) over a graph whose weights stay on disk."""

    def __init__(self, model, payloads, base_dir, op_types, opts):
        self.model, self.graph, self.payloads, self.base_dir = model, model.graph, payloads, base_dir
        self.op_types = set(op_types)
        self.excluded = set(opts["nodes_to_exclude"])
        self.per_channel, self.reduce_range = opts["per_channel"], opts["reduce_range"]
        self.weight_qtype = TensorProto.INT8 if opts["weight_type"] == "QInt8" else TensorProto.UINT8
        self.activation_qtype = TensorProto.UINT8  # dynamic quantization: activations are always uint8
        self.inits = {t.name: t for t in self.graph.initializer}
        self.value_infos = {vi.name: vi for vi in self.graph.value_info}
        self.value_infos.update({vi.name: vi for vi in self.graph.output})
        self.value_infos.update({vi.name: vi for vi in self.graph.input})
        self.tensor_names = {o.name for o in self.graph.output} | {i.name for i in self.graph.input}
        for node in self.graph.node:
            self.tensor_names.update(node.output)
        self.qmap = {}
        self.generated = {i.name for i in self.graph.input if i.name not in self.inits}
        self.new_nodes = []
        self.new_node_names = {}  # first committed new node of each name (quant_utils.find_by_name)
        self.node_names = {}  # the same over the source graph and the new nodes (find_node_by_name)
        for node in self.graph.node:
            self.node_names.setdefault(node.name, node)

    # ---- onnxruntime's predicates (base_quantizer.py, onnx_quantizer.py)
    def should_quantize_node(self, node):
        return node.op_type in self.op_types and node.name not in self.excluded

    def is_valid_quantize_weight(self, name):
        t = self.inits.get(name)
        return t is not None and t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)

    def is_float_tensor(self, name):
        if name in self.inits:
            return self.is_valid_quantize_weight(name)
        vi = self.value_infos.get(name)
        return vi is not None and vi.type.HasField("tensor_type") \
            and vi.type.tensor_type.elem_type in (TensorProto.FLOAT, TensorProto.FLOAT16)

    def is_weight_symmetric(self, qtype):
        return qtype in (TensorProto.INT4, TensorProto.INT8, TensorProto.INT16, TensorProto.FLOAT8E4M3FN)

    def tensor_type(self, name):
        if name in self.inits:
            return self.inits[name].data_type
        vi = self.value_infos.get(name)
        if vi is None or not vi.type.HasField("tensor_type") or vi.type.tensor_type.elem_type == 0:
            raise StreamingUnsupported(f"shape inference gives no type for {name!r}")
        return vi.type.tensor_type.elem_type

    # ---- the walk
    def commit(self, nodes):
        for node in nodes:
            self.new_nodes.append(node)
            self.new_node_names.setdefault(node.name, node)
            self.node_names.setdefault(node.name, node)

    def quantize_model(self):
        for node in list(self.graph.node):
            before = len(self.new_nodes)
            self.quantize_node(node)
            for new in self.new_nodes[before:]:
                self.generated.update(new.output)
        for output in self.graph.output:
            dq = self.dequantize_value(output.name)
            if dq is not None:
                self.commit([dq])
        self.graph.ClearField("node")
        self.graph.node.extend(self.new_nodes)
        self.clean_initializers()

    def quantize_node(self, node):
        op = node.op_type
        wanted = self.should_quantize_node(node)
        if op in UNSUPPORTED_OPS and wanted:
            raise StreamingUnsupported(f"node {node.name or op} ({op}): onnxruntime quantizes it with an "
                                       "operator this engine does not mirror")
        if op == "MatMul" and wanted and self.matmul_should_quantize(node):
            return self.quantize_matmul(node)
        if op == "Gather" and wanted and self.is_valid_quantize_weight(node.input[0]):
            return self.quantize_gather(node)
        if op == "Conv" and wanted and self.is_float_tensor(node.input[0]):
            return self.quantize_conv(node)
        if op == "Transpose" and wanted and self.is_float_tensor(node.input[0]):
            return self.quantize_direct8bit(node)
        self.quantize_base(node)

    def matmul_should_quantize(self, node):
        if not self.is_float_tensor(node.input[1]) and not self.is_float_tensor(node.input[0]):
            return False
        return node.input[1] in self.inits  # MatMulConstBOnly, quantize_dynamic's default

    def quantize_base(self, node):
        """QuantOperatorBase.quantize: dequantize quantized inputs, keep the node."""
        for name in node.input:
            dq = self.dequantize_value(name)
            if dq is not None:
                self.commit([dq])
        self.commit([node])

    def dequantize_value(self, name):
        if name not in self.qmap or name in self.generated:
            return None
        qv = self.qmap[name]
        if qv.axis is None and qv.scale_name in self.inits and len(self.inits[qv.scale_name].dims) > 0 \
                and self.inits[qv.scale_name].dims[0] > 1:
            raise StreamingUnsupported(f"{name} would be dequantized per tensor with a per-channel scale")
        dq_name = name + "_DequantizeLinear"
        if dq_name in self.node_names:
            return None
        return helper.make_node("DequantizeLinear", [qv.q_name, qv.scale_name, qv.zp_name], [name], dq_name,
                                axis=qv.axis)

    def quantize_inputs(self, node, indices, weight=True, reduce_range=False, op_level_per_channel=False,
                        axis=-1):
        """onnx_quantizer.__quantize_inputs: (quantized names, zero points, scales, new nodes)."""
        q_names, zps, scales, nodes = [], [], [], []
        for i in indices:
            name = node.input[i]
            if name in self.qmap:
                qv = self.qmap[name]
            elif not name:
                q_names.append("")
                zps.append("")
                scales.append("")
                continue
            elif name in self.inits:
                qtype = self.weight_qtype if weight else self.activation_qtype
                if self.per_channel and op_level_per_channel:
                    qv = self.quantize_initializer(name, qtype, self.reduce_range and reduce_range, axis)
                else:
                    qv = self.quantize_initializer(name, qtype, self.reduce_range and reduce_range, None)
            elif name in self.value_infos or name in self.tensor_names or name in self.generated:
                if name + "_QuantizeLinear" in self.node_names:
                    raise StreamingUnsupported(f"the graph already holds a node named {name}_QuantizeLinear")
                qv = _QValue(name + Q_SUFFIX, name + "_scale", name + "_zero_point")
                nodes.append(helper.make_node("DynamicQuantizeLinear", [name],
                                              [qv.q_name, qv.scale_name, qv.zp_name], name + "_QuantizeLinear"))
                self.qmap[name] = qv
            else:
                raise StreamingUnsupported(f"invalid tensor name to quantize: {name}")
            q_names.append(qv.q_name)
            zps.append(qv.zp_name)
            scales.append(qv.scale_name)
        return q_names, zps, scales, nodes

    def quantize_initializer(self, name, qtype, reduce_range, axis):
        """quantize_initializer_impl / quantize_weight_per_channel_impl: names and initializers now,
        the data when the plan is written."""
        weight = self.inits[name]
        if weight.data_type != TensorProto.FLOAT:
            raise StreamingUnsupported(f"weight {name} is {TensorProto.DataType.Name(weight.data_type)}, "
                                       "not FLOAT")
        if axis is not None and axis not in (-1, len(weight.dims) - 1):
            raise StreamingUnsupported(f"weight {name} would be quantized per channel on axis {axis}")
        symmetric = self.is_weight_symmetric(qtype) if qtype == self.weight_qtype else False
        shape = [] if axis is None else [weight.dims[-1]]
        scale = TensorProto(name=name + "_scale", data_type=weight.data_type, dims=shape)
        zero_point = TensorProto(name=name + "_zero_point", data_type=qtype, dims=shape)
        quantized = TensorProto(name=name + Q_SUFFIX, data_type=qtype, dims=weight.dims)
        self.graph.initializer.extend([scale, zero_point, quantized])
        for t in (scale, zero_point, quantized):
            self.inits[t.name] = t
        source = self.payloads.get(name) or SourceTensor(weight, self.base_dir)
        self.payloads[quantized.name] = QuantizedWeight(source, qtype, symmetric, reduce_range, axis is not None,
                                                        scale.name, zero_point.name)
        qv = _QValue(quantized.name, scale.name, zero_point.name, axis)
        self.qmap[name] = qv
        return qv

    # ---- the op quantizers (operators/matmul.py, gather.py, conv.py, direct_q8.py)
    def _integer_op(self, node, op, q_names, zps, scales, nodes, output, **attrs):
        """MatMulInteger / ConvInteger -> Cast -> Mul by the product of both scales."""
        integer_name = node.name + "_quant" if node.name else ""
        integer_out = node.output[0] + "_output_quantized"
        nodes.append(helper.make_node(op, q_names + zps, [integer_out], integer_name, **attrs))
        cast_out = integer_out + "_cast_output"
        nodes.append(helper.make_node("Cast", [integer_out], [cast_out], integer_out + "_cast",
                                      to=self.tensor_type(node.output[0])))
        scales_mul = integer_name + "_scales_mul" if integer_name else scales[0] + "_" + scales[1] + "_mul"
        existing = self.new_node_names.get(scales_mul)
        if existing is None:
            existing = helper.make_node("Mul", scales, [scales_mul + ":0"], scales_mul)
            nodes.append(existing)
        nodes.append(helper.make_node("Mul", [cast_out, existing.output[0]], [output],
                                      integer_name + "_output_scale_mul" if integer_name else ""))

    def quantize_matmul(self, node):
        q_names, zps, scales, nodes = self.quantize_inputs(node, [0], weight=False)
        w = self.quantize_inputs(node, [1], reduce_range=True, op_level_per_channel=True)
        q_names, zps, scales, nodes = q_names + w[0], zps + w[1], scales + w[2], nodes + w[3]
        self._integer_op(node, "MatMulInteger", q_names, zps, scales, nodes, node.output[0])
        self.commit(nodes)

    def quantize_conv(self, node):
        from onnxruntime.quantization.quant_utils import attribute_to_kwarg

        q_names, zps, scales, nodes = self.quantize_inputs(node, [0], weight=False)
        w = self.quantize_inputs(node, [1], reduce_range=self.reduce_range)
        q_names, zps, scales, nodes = q_names + w[0], zps + w[1], scales + w[2], nodes + w[3]
        has_bias = len(node.input) == 3
        output = node.output[0]
        scaled = output if not has_bias else output + "quant_scaled_output"
        attrs = {}
        for attribute in node.attribute:
            attrs.update(attribute_to_kwarg(attribute))
        self._integer_op(node, "ConvInteger", q_names, zps, scales, nodes, scaled, **attrs)
        if has_bias:
            weight = self.inits.get(node.input[1])
            if weight is None:
                raise StreamingUnsupported(f"Conv {node.name} weight {node.input[1]} is not an initializer")
            shape = np.ones(len(weight.dims), dtype=np.int64)
            shape[1] = -1
            shape_name = output + "_bias_reshape_shape"
            self.graph.initializer.append(helper.make_tensor(shape_name, TensorProto.INT64, [len(weight.dims)],
                                                             shape))
            self.inits[shape_name] = self.graph.initializer[-1]
            nodes.append(helper.make_node("Reshape", [node.input[2], shape_name],
                                          [output + "_bias_reshape_output"]))
            nodes.append(helper.make_node("Add", [scaled, output + "_bias_reshape_output"], [output],
                                          output + "_bias_add"))
        self.commit(nodes)

    def quantize_gather(self, node):
        q_names, zps, scales, nodes = self.quantize_inputs(node, [0], weight=False)
        q_output = node.output[0] + Q_SUFFIX
        self.qmap[node.output[0]] = _QValue(q_output, scales[0], zps[0])
        node.output[0] = q_output
        node.input[0] = q_names[0]
        self.commit(nodes + [node])

    def quantize_direct8bit(self, node):
        """Direct8BitOp: a Transpose of an already quantized value moves the quantized value."""
        qv = self.qmap.get(node.input[0])
        if qv is None:
            self.commit([node])
            return
        self.qmap[node.output[0]] = _QValue(node.output[0] + Q_SUFFIX, qv.scale_name, qv.zp_name)
        node.input[0] = qv.q_name
        node.output[0] = node.output[0] + Q_SUFFIX
        self.commit([node])

    def clean_initializers(self):
        """onnx_model._clean_initializers_helper on the top graph."""
        wanted = {name for node in self.graph.node for name in node.input if name}
        wanted.update(o.name for o in self.graph.output if o.name)
        wanted.difference_update(out for node in self.graph.node for out in node.output)
        unused = {t.name for t in self.graph.initializer if t.name not in wanted}
        wanted.difference_update(t.name for t in self.graph.initializer)
        for i in reversed(range(len(self.graph.initializer))):
            if self.graph.initializer[i].name in unused:
                self.payloads.pop(self.graph.initializer[i].name, None)
                del self.graph.initializer[i]
        for i in reversed(range(len(self.graph.input))):
            if self.graph.input[i].name in unused:
                del self.graph.input[i]
        wanted.difference_update(i.name for i in self.graph.input)
        if wanted:
            raise StreamingUnsupported(f"tensors used but never produced: {sorted(wanted)[:5]}")
