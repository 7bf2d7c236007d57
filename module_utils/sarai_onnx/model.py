"""Reading ONNX model files: the graph without weights, external data references and checks."""

import os

import onnx
from onnx import TensorProto

from .errors import SaraiError

FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)


def dtype_name(elem_type):
    """'float32', 'int64', ... as numpy spells them (onnx's own names are FLOAT, INT64)."""
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
    except (KeyError, TypeError, ValueError):
        return TensorProto.DataType.Name(elem_type).lower()


def load_graph(path):
    """The ModelProto without weight data (cheap for any size). Errors name the file."""
    if not os.path.exists(path):
        raise SaraiError(f"model file {path} does not exist: check the path")
    if not os.path.isfile(path):
        raise SaraiError(f"model path {path} is not a regular file: give the .onnx file itself")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning or others depending on bytes
        raise SaraiError(f"{path} is not an ONNX model (cannot parse it: {exc}); "
                         "give the .onnx file, not its .data file or a partial download") from None
    # Arbitrary bytes sometimes parse as an empty protobuf message: require a real graph.
    if model.ir_version <= 0 or not model.graph.output or not model.opset_import:
        raise SaraiError(f"{path} is not an ONNX model (no IR version, opset or graph outputs); "
                         "give the .onnx file, not its .data file or a partial download")
    return model


def iter_tensors(graph):
    """Every TensorProto in a graph: initializers and tensors in node attributes, subgraphs too."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from iter_tensors(attr.g)
            for sub in attr.graphs:
                yield from iter_tensors(sub)


def external_info(tensor):
    info = {e.key: e.value for e in tensor.external_data}
    return info["location"], int(info.get("offset", 0)), int(info.get("length", 0) or 0)


def external_data_needs(model):
    """{location: bytes needed} over all tensors stored in external files."""
    needs = {}
    for t in iter_tensors(model.graph):
        if t.data_location == TensorProto.EXTERNAL:
            location, offset, length = external_info(t)
            needs[location] = max(needs.get(location, 0), offset + length)
    return needs


def model_files(path, model=None):
    """[model path, external data paths...] after checking every data file exists and is long enough."""
    model = model if model is not None else load_graph(path)
    base = os.path.dirname(os.path.abspath(path))
    files = [os.path.abspath(path)]
    for location, needed in sorted(external_data_needs(model).items()):
        if os.path.isabs(location) or ".." in location.replace("\\", "/").split("/"):
            raise SaraiError(f"model {path} points its weights at {location!r}, outside its directory; "
                             "re-save the model with its external data beside it")
        data = os.path.join(base, location)
        if not os.path.isfile(data):
            raise SaraiError(f"external data file {data} referenced by {path} is missing: "
                             "copy it beside the model (models are the .onnx plus its .data)")
        size = os.path.getsize(data)
        if size < needed:
            raise SaraiError(f"external data file {data} is truncated: {size} bytes, but {path} needs "
                             f"{needed}; copy it again from the source")
        files.append(data)
    return files


def load_full(path):
    """The ModelProto with weights loaded (after checking the files, so errors are clear)."""
    model_files(path)
    try:
        return onnx.load(path, load_external_data=True)
    except onnx.checker.ValidationError as exc:
        # onnx refuses external data reached through symlinks or files with several hard links.
        raise SaraiError(f"onnx refused the external data of {path}: {exc}; "
                         "copy the files (not symlink or hard-link them) and retry") from None


_PACKED_4BIT = {getattr(TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(TensorProto, n)}


def tensor_nbytes(tensor):
    count = 1
    for d in tensor.dims:
        count *= d
    if tensor.data_type in _PACKED_4BIT:  # two values per byte
        return (count + 1) // 2
    if tensor.data_type == TensorProto.STRING:
        return sum(len(x) for x in tensor.string_data)
    return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def value_infos(values):
    """[{name, dtype, shape}] where symbolic dims are strings and unknown dims None."""
    out = []
    for v in values:
        tt = v.type.tensor_type
        shape = None
        if tt.HasField("shape"):
            shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
        out.append({"name": v.name, "dtype": dtype_name(tt.elem_type), "shape": shape})
    return out


def graph_inputs(model):
    """Real inputs (old IR versions also list initializers as inputs)."""
    inits = {t.name for t in model.graph.initializer}
    return value_infos([i for i in model.graph.input if i.name not in inits])


def unique_node_names(graph):
    """Rename duplicate node names (onnxconverter_common's fp16 pass made such invalid models)."""
    seen = set()
    for i, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        node.name = name
        seen.add(name)
