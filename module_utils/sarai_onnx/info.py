"""onnx_model_info: what a model is, without loading its weights into memory."""

import os

from .model import dtype_name, graph_inputs, iter_tensors, load_graph, model_files, tensor_nbytes, value_infos
from .coverage import planned_weights
from .quantize import describe_model_files, normalize_options


def model_info(path, method=None, options=None, checksum=True):
    """Facts about the model at `path`.

    method/options: also report which weight tensors that quantization method would rewrite.
    checksum: hash every file (sha256, streamed); False skips it for a quick look.
    """
    path = os.path.abspath(path)
    model = load_graph(path)
    paths = model_files(path, model)
    if checksum:
        described = describe_model_files(paths)
    else:
        listing = [{"name": os.path.relpath(p, os.path.dirname(path)), "size": os.path.getsize(p),
                    "sha256": None} for p in paths]
        described = {"path": path, "files": listing, "size_bytes": sum(f["size"] for f in listing),
                     "sha256": None}
    opsets = {(o.domain or "ai.onnx"): o.version for o in model.opset_import}
    by_dtype = {}
    inits = {t.name for t in model.graph.initializer}
    for t in iter_tensors(model.graph):
        count = 1
        for d in t.dims:
            count *= d
        entry = by_dtype.setdefault(dtype_name(t.data_type), {"tensors": 0, "count": 0, "bytes": 0})
        entry["tensors"] += 1
        entry["count"] += count
        entry["bytes"] += tensor_nbytes(t)
    info = {
        "path": path,
        "ir_version": model.ir_version,
        "opset": opsets.get("ai.onnx"),
        "opsets": opsets,
        "producer_name": model.producer_name,
        "producer_version": model.producer_version,
        "inputs": graph_inputs(model),
        "outputs": value_infos(model.graph.output),
        "nodes": len(model.graph.node),
        "initializers": len(inits),
        "params": {"count": sum(e["count"] for e in by_dtype.values()),
                   "bytes": sum(e["bytes"] for e in by_dtype.values()), "by_dtype": by_dtype},
        "files": described["files"],
        "size_bytes": described["size_bytes"],
        "sha256": described["sha256"],
        "external_data": len(paths) > 1,
    }
    if method:
        method, opts = normalize_options(method, options)
        info["quantization_plan"] = dict(planned_weights(model, method, opts), method=method, options=opts)
    return info
