"""Build a release directory from an FP32 ONNX model with onnxruntime's quantization.

dest/ ends up holding exactly: <model_name>, <model_name>.data, quantization.json, MANIFEST.sha256
(docs/contracts.md). The release is built in a staging dir beside dest, load-checked with
onnxruntime, then renamed into place; any failure before that leaves dest as it was.

Two engines build dynamic_int8, fp16 and matmul_nbits. `streaming` (stream_int8, stream_fp16,
stream_nbits) reads the graph alone and writes one weight tensor at a time, with onnxruntime's own
quantization functions; `onnxruntime` runs onnxruntime's quantizers on the whole model in memory and
is the reference the streaming engine is proven equal to (same files, byte for byte). none copies.
"""

import contextlib
import importlib
import json
import logging
import os
import shutil
import tempfile
import time
from unittest import mock

import onnx

from . import env, files
from .errors import SaraiError, StreamingUnsupported
from .coverage import default_floor, low_coverage_message, measure_coverage, planned_weights
from .hoist import hoist_constant_weights
from .model import external_data_needs, load_full, load_graph, model_files, unique_node_names
from .progress import Progress

METHODS = ("none", "dynamic_int8", "fp16", "matmul_nbits")
RECORD_NAME = "quantization.json"

# Options each method takes, with defaults. Values given for another method are an error.
OPTION_DEFAULTS = {
    "none": {},
    "dynamic_int8": {"weight_type": "QInt8", "per_channel": False, "reduce_range": False,
                     "nodes_to_exclude": [], "op_types_to_quantize": []},
    "fp16": {"keep_io_types": True, "nodes_to_exclude": []},
    "matmul_nbits": {"bits": 4, "block_size": 32, "symmetric": False, "accuracy_level": None,
                     "nodes_to_exclude": [], "op_types_to_quantize": []},
}
# The engines each method can use; the first is the default.
ENGINES = {"none": ("copy",), "dynamic_int8": ("streaming", "onnxruntime"), "fp16": ("streaming", "onnxruntime"),
           "matmul_nbits": ("streaming", "onnxruntime")}
# Output size of the onnxruntime engine, as (bytes of the source) - SHRINK * (bytes of the weights the
# method rewrites); matmul_nbits as a measured share of the source (4-bit blocks with scales).
SHRINK = {"none": 0.0, "dynamic_int8": 0.75, "fp16": 0.5}
NBITS_OUTPUT_SHARE = 0.4


def normalize_options(method, options):
    """(method, full option dict with defaults) or SaraiError. The dict is what idempotence compares."""
    if method not in METHODS:
        raise SaraiError(f"unknown quantization method {method!r}: use one of {', '.join(METHODS)}")
    given = {k: v for k, v in (options or {}).items() if v is not None}
    unknown = sorted(set(given) - set(OPTION_DEFAULTS[method]))
    if unknown:
        raise SaraiError(f"option(s) {', '.join(unknown)} do not apply to method {method}; "
                         f"it takes: {', '.join(OPTION_DEFAULTS[method]) or 'no options'}")
    opts = dict(OPTION_DEFAULTS[method], **given)
    for key in ("nodes_to_exclude", "op_types_to_quantize"):
        if key in opts:
            if isinstance(opts[key], str) or not all(isinstance(x, str) for x in opts[key]):
                raise SaraiError(f"option {key} must be a list of names, got {opts[key]!r}")
            opts[key] = sorted(opts[key])
    if method == "dynamic_int8" and opts["weight_type"] not in ("QInt8", "QUInt8"):
        raise SaraiError(f"weight_type {opts['weight_type']!r} is not supported: use QInt8 or QUInt8")
    if method == "matmul_nbits":
        if opts["bits"] not in (4, 8):
            raise SaraiError(f"bits {opts['bits']!r} is not supported by MatMulNBits here: use 4 or 8")
        bs = opts["block_size"]
        if not isinstance(bs, int) or bs < 16 or bs & (bs - 1):
            raise SaraiError(f"block_size {bs!r} must be a power of two >= 16 (e.g. 32 or 128)")
        if opts["accuracy_level"] not in (None, 0, 1, 2, 3, 4):
            raise SaraiError(f"accuracy_level {opts['accuracy_level']!r} must be 0-4 or unset")
    return method, opts


def check_engine(method, engine):
    """The engine to try first, or SaraiError. None means the method's default."""
    if engine is None:
        return ENGINES[method][0]
    if engine not in ("streaming", "onnxruntime"):
        raise SaraiError(f"unknown engine {engine!r}: use streaming or onnxruntime")
    if engine not in ENGINES[method]:
        raise SaraiError(f"method {method} has no {engine} engine; it runs on {ENGINES[method][0]}: "
                         "leave engine unset")
    return engine


def describe_model_files(paths):
    """{path, files, size_bytes, sha256}; sha256 is over the sha256sum listing of the files."""
    base = os.path.dirname(paths[0])
    listing = files.describe_files(base, [os.path.relpath(p, base) for p in paths])
    return {"path": paths[0], "files": listing, "size_bytes": sum(f["size"] for f in listing),
            "sha256": files.sha256_bytes(files.manifest_text(listing).encode())}


def stat_key(path):
    """What says a file is unchanged without reading it: size, mtime and ctime (ns), inode, device.
    ctime changes with any write or utime() call, so a file rewritten with its mtime put back differs."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def describe_source(src_files, dest):
    """describe_model_files(src_files) plus `stat` (name -> stat_key), without reading the files when
    dest's quantization.json recorded the same files with the same stat keys: an unchanged rerun does not
    hash a multi-GB source again. The keys are taken before hashing, so a file that changes while it is
    hashed does not match next time."""
    base = os.path.dirname(src_files[0])
    stats = {os.path.relpath(p, base): stat_key(p) for p in src_files}
    try:
        with open(os.path.join(dest, RECORD_NAME)) as fh:
            recorded = json.load(fh)["source"]
        if recorded["path"] == src_files[0] and recorded.get("stat") == stats:
            return {"path": recorded["path"], "files": recorded["files"], "size_bytes": recorded["size_bytes"],
                    "sha256": recorded["sha256"], "stat": stats, "hashed": False}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return dict(describe_model_files(src_files), stat=stats, hashed=True)


# ---------------------------------------------------------------- checks before any write

def _check_model_name(name):
    if not name or os.path.basename(name) != name or name in (RECORD_NAME, files.MANIFEST_NAME) \
            or name.startswith("."):
        raise SaraiError(f"model_name {name!r} must be a plain file name like agi_audio_core_int8.onnx")
    return name


def _check_dest(src_files, dest):
    src = src_files[0]
    if dest == src:
        raise SaraiError(f"dest {dest} is the source model itself: give a new directory for the release")
    for path in src_files:
        if path == dest or path.startswith(dest.rstrip(os.sep) + os.sep):
            raise SaraiError(f"dest {dest} contains the source model {path}: replacing dest would delete "
                             "the source; choose a separate directory")
    if os.path.lexists(dest):
        if not os.path.isdir(dest) or os.path.islink(dest):
            raise SaraiError(f"dest {dest} exists and is not a directory: remove it or choose another dest")
        names = os.listdir(dest)
        if names and RECORD_NAME not in names and files.MANIFEST_NAME not in names:
            raise SaraiError(f"dest {dest} holds files that are not a release (no {RECORD_NAME}): "
                             "refusing to replace it; choose a new or empty directory")
    # The staging dir and the final rename need a writable parent.
    parent = os.path.dirname(dest)
    existing = parent
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise SaraiError(f"dest {dest} is not writable: {existing} is not a writable directory for user "
                         f"{env.current_user()}; choose a dest under a writable directory or fix permissions")


def _check_space(path, needed, what):
    free = shutil.disk_usage(path).free
    if free < needed:
        raise SaraiError(f"not enough free space under {path} for {what}: need about {needed >> 20} MiB, "
                         f"have {free >> 20} MiB; free some space or set tmp_dir to a larger disk")


def extra_of(record):
    """The keys a caller added to the record with extra_record (part of the idempotence key)."""
    return {k: record.get(k) for k in record.get("extra_keys", [])}


def space_needed(method, engine, source, source_graph, opts, plan=None):
    """(bytes written beside dest, bytes of temporary files) by this build.

    streaming writes the output only, and its plan knows the data file's size exactly. The
    onnxruntime engine for dynamic_int8 also saves a full FP32 copy of the model in the temp dir
    (ONNXQuantizer re-infers shapes on a saved copy); its output is estimated from the weights the
    method rewrites.
    """
    graph_bytes = 2 * os.path.getsize(source["path"]) + (1 << 20)  # the output graph grows with new nodes
    if engine == "streaming":
        return plan.output_bytes + graph_bytes, 0
    if method == "matmul_nbits":
        return int(source["size_bytes"] * NBITS_OUTPUT_SHARE) + graph_bytes, 0
    rewritten = planned_weights(source_graph, method, opts)["quantized_weight_bytes"]
    output = source["size_bytes"] - int(SHRINK[method] * rewritten) + graph_bytes
    return output, source["size_bytes"] if method == "dynamic_int8" else 0


def _existing_release(dest, source, method, opts, model_name, extra):
    """The recorded quantization when dest already holds this exact build and still verifies."""
    record_path = os.path.join(dest, RECORD_NAME)
    try:
        with open(record_path) as fh:
            record = json.load(fh)
        same = (record["source"]["sha256"] == source["sha256"] and record["method"] == method
                and record["options"] == opts and record["output"]["model_name"] == model_name
                and extra_of(record) == extra)
    except (OSError, ValueError, KeyError, TypeError):
        return None, "no readable quantization.json in dest"
    if not same:
        return None, "dest was built from another source or with other options"
    try:
        entries = files.parse_manifest(os.path.join(dest, files.MANIFEST_NAME))
    except SaraiError as exc:
        return None, str(exc)
    sizes = {f["name"]: f["size"] for f in record["output"]["files"]}
    on_disk = [n for n in os.listdir(dest) if n != files.MANIFEST_NAME]
    _, mismatches = files.verify_files(dest, entries, expected_names=on_disk, sizes=sizes)
    if mismatches:
        return None, "dest does not verify: " + "; ".join(files.describe_mismatch(m) for m in mismatches)
    return record, "dest already holds this build and verifies"


# ---------------------------------------------------------------- the builders

@contextlib.contextmanager
def _quiet_quantizers():
    """onnxruntime's quantizers log every tensor at INFO (root and their own loggers): keep warnings."""
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(previous)


def _save(model, out_path):
    """One external data file named <model file>.data, as the release layout requires."""
    onnx.save_model(model, out_path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=os.path.basename(out_path) + ".data", size_threshold=0)


def _build_none(src, out_path, opts):
    src_data = [os.path.basename(p) for p in model_files(src)[1:]]
    if os.path.basename(src) == os.path.basename(out_path) and src_data == [os.path.basename(src) + ".data"]:
        for name in (os.path.basename(src), src_data[0]):  # already in release layout: byte for byte
            files.copy_file(os.path.join(os.path.dirname(src), name),
                            os.path.join(os.path.dirname(out_path), name))
        return "copied byte for byte"
    _save(load_full(src), out_path)
    return "weights unchanged, files re-laid out as <model_name> + <model_name>.data"


def _build_dynamic_int8(src, out_path, opts):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ort_quantize = importlib.import_module("onnxruntime.quantization.quantize")  # the module, not the function

    # quantize_dynamic(path) writes <src dir>/<name>-inferred.onnx (the source dir may be read-only)
    # through load_model_with_shape_infer; the same steps with that graph-only file in our temp dir
    # leave the source alone without copying it. A path rather than a loaded ModelProto also saves
    # one in-memory copy of the weights. A unit test proves the result equals quantize_dynamic's.
    try:
        with mock.patch.object(ort_quantize, "load_model_with_shape_infer", _load_model_with_shape_infer):
            quantize_dynamic(src, out_path, op_types_to_quantize=opts["op_types_to_quantize"] or None,
                             per_channel=opts["per_channel"], reduce_range=opts["reduce_range"],
                             weight_type=QuantType[opts["weight_type"]],
                             nodes_to_exclude=opts["nodes_to_exclude"] or None, use_external_data_format=True,
                             extra_options={"EnableSubgraph": True})  # weights in If/Loop/Scan bodies too
    except onnx.checker.ValidationError as exc:
        raise SaraiError(f"onnx refused the external data of {src}: {exc}; copy the files instead of linking")
    return "onnxruntime.quantization.quantize_dynamic"


def _load_model_with_shape_infer(model_path):
    """quant_utils.load_model_with_shape_infer with the inferred graph written to the temp dir."""
    from onnxruntime.quantization.quant_utils import add_infer_metadata

    work = tempfile.mkdtemp(prefix="inferred-")
    try:
        inferred = os.path.join(work, "model-inferred.onnx")
        onnx.shape_inference.infer_shapes_path(str(model_path), inferred)
        model = onnx.load(inferred, load_external_data=False)
        onnx.external_data_helper.load_external_data_for_model(model, os.path.dirname(os.path.abspath(model_path)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    add_infer_metadata(model)
    hoist_constant_weights(model)  # at the step stream_int8.plan does it
    return model


def _build_fp16(src, out_path, opts):
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from .stream_fp16 import converter_args

    # Shape inference on the graph alone (no weights loaded) has no 2 GB protobuf limit;
    # the weights are attached afterwards and the converter is told not to infer again.
    model = onnx.shape_inference.infer_shapes(load_graph(src))
    model_files(src, model)
    try:
        onnx.external_data_helper.load_external_data_for_model(model, os.path.dirname(src))
    except onnx.checker.ValidationError as exc:
        raise SaraiError(f"onnx refused the external data of {src}: {exc}; copy the files instead of linking")
    hoist_constant_weights(model)  # at the step stream_fp16.plan does it
    model = convert_float_to_float16(model, **converter_args(opts))
    unique_node_names(model.graph)
    _save(model, out_path)
    return "onnxruntime.transformers.float16.convert_float_to_float16"


def _build_matmul_nbits(src, out_path, opts):
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = load_full(src)
    hoist_constant_weights(model)
    quantizer = MatMulNBitsQuantizer(model, bits=opts["bits"], block_size=opts["block_size"],
                                     is_symmetric=opts["symmetric"], accuracy_level=opts["accuracy_level"],
                                     nodes_to_exclude=opts["nodes_to_exclude"],
                                     op_types_to_quantize=tuple(opts["op_types_to_quantize"]) or None)
    quantizer.process()
    quantizer.model.save_model_to_file(out_path, True)
    return "onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer"


# The onnxruntime engine (and the copy for none), one builder per method: (src, out_path, opts) -> tool.
BUILDERS = {"none": _build_none, "dynamic_int8": _build_dynamic_int8, "fp16": _build_fp16,
            "matmul_nbits": _build_matmul_nbits}
STREAMING_TOOLS = {"dynamic_int8": "sarai_onnx.stream_int8 (onnxruntime.quantization.quant_utils)",
                   "fp16": "sarai_onnx.stream_fp16 (onnxruntime.transformers.float16)",
                   "matmul_nbits": "sarai_onnx.stream_nbits (onnxruntime.quantization.matmul_nbits_quantizer)"}


def plan_streaming(src, source_graph, method, opts):
    """The streaming engine's plan (graph only); raises StreamingUnsupported, also for anything
    that breaks while planning (shape inference of an odd graph), so it is reported, not a traceback."""
    from . import stream_fp16, stream_int8, stream_nbits

    engine = {"dynamic_int8": stream_int8, "fp16": stream_fp16, "matmul_nbits": stream_nbits}[method]
    try:
        with env.stdout_to_stderr(), _quiet_quantizers():
            return engine.plan(src, source_graph, opts)
    except (StreamingUnsupported, SaraiError):
        raise
    except Exception as exc:
        raise StreamingUnsupported(f"planning failed: {type(exc).__name__}: {exc}") from None


def choose_engine(src, source_graph, method, opts, engine):
    """(engine, streaming plan or None, fallback reason or None).

    Unset engine: streaming when it covers the model, else onnxruntime with the reason.
    engine=streaming: streaming or a clear error.
    """
    first = check_engine(method, engine)
    if first != "streaming":
        return first, None, None
    try:
        return "streaming", plan_streaming(src, source_graph, method, opts), None
    except StreamingUnsupported as exc:
        if engine == "streaming":
            raise SaraiError(f"the streaming engine cannot build {method} from {src}: {exc}; use "
                             "engine=onnxruntime (it holds the whole model in memory, several times its size)"
                             ) from None
        return "onnxruntime", None, f"streaming does not cover this model: {exc}"


def _ensure_layout(out_path):
    """Exactly one external data file named <model_name>.data; re-save if a quantizer did otherwise."""
    needs = external_data_needs(load_graph(out_path))
    want = os.path.basename(out_path) + ".data"
    if list(needs) == [want]:
        return
    model = onnx.load(out_path)
    for location in needs:
        os.unlink(os.path.join(os.path.dirname(out_path), location))
    _save(model, out_path)


def load_check(path):
    """Raise SaraiError unless onnxruntime can build a session from the model.

    Without graph optimizations and weight pre-packing: the session still parses the model and finds
    a CPU kernel for every node, but holds no folded or packed copy of the weights (constant folding
    turns an FP16 model's weights back into FP32 copies: 1.4x the FP32 size, measured). The optimized
    session is what onnx_validate measures on the server.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.add_session_config_entry("session.disable_prepacking", "1")
    try:
        ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise SaraiError(f"onnxruntime cannot load the quantized model {os.path.basename(path)}: {exc}") from None


# ---------------------------------------------------------------- the entry point

def quantize(src, dest, method="dynamic_int8", model_name=None, options=None, tmp_dir=None,
             check_mode=False, extra_record=None, engine=None, progress_file=None, min_quantized_share=None,
             allow_low_coverage=False):
    """Quantize `src` into the release directory `dest`. Returns the result dict (see RETURN docs).

    extra_record: more top-level keys for quantization.json (JSON values, e.g. the fidelity search);
    they are part of the idempotence key, so a release is reused only when its record holds the same.
    engine: None (the method's default: streaming for dynamic_int8, fp16 and matmul_nbits, falling back to
    onnxruntime for a model it does not cover), "streaming" (or fail) or "onnxruntime".
    progress_file: keep a JSON progress document there (sarai_onnx.progress).
    min_quantized_share: the floor on the share of weight bytes rewritten (None: coverage.default_floor);
    below it the build fails and dest stays as it was, unless allow_low_coverage, then the result and
    quantization.json carry a warning.
    """
    started = time.perf_counter()
    extra = json.loads(json.dumps(extra_record or {}))  # as it will read back from the file
    method, opts = normalize_options(method, options)
    check_engine(method, engine)
    floor = check_floor(min_quantized_share, method)
    progress = Progress(None if check_mode else progress_file)
    try:
        result = _quantize(src, dest, method, model_name, opts, extra, tmp_dir, check_mode, engine, progress,
                           started, (floor, bool(allow_low_coverage)))
    except SaraiError as exc:
        progress.finish(msg=str(exc))
        raise
    except Exception as exc:
        progress.finish(msg=f"{type(exc).__name__}: {exc}")
        raise
    progress.finish()
    result["peak_rss_mb"] = round(env.peak_rss_mb(children=True), 1)
    return result


def check_floor(value, method):
    """min_quantized_share as a float in [0, 1] (None: the method's default), or SaraiError."""
    if value is None:
        return default_floor(method)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise SaraiError(f"min_quantized_share {value!r} must be a number between 0 and 1 (the share of weight "
                         f"bytes the release must rewrite; default {default_floor(method):g} for {method})")
    return float(value)


def _coverage_verdict(method, opts, coverage, coverage_floor, what):
    """[] or [warning] for a coverage that clears the floor or is allowed below it; SaraiError otherwise."""
    floor, allowed = coverage_floor
    message = low_coverage_message(method, opts, coverage, floor)
    if message is None:
        return []
    if not allowed:
        raise SaraiError(f"{message} {what}")
    return [message + " (allowed: allow_low_coverage is true)"]


def _quantize(src, dest, method, model_name, opts, extra, tmp_dir, check_mode, engine, progress, started,
              coverage_floor):
    src, dest = os.path.abspath(src), os.path.abspath(dest)
    source_graph = load_graph(src)
    src_files = model_files(src, source_graph)
    model_name = _check_model_name(model_name or os.path.basename(src))
    _check_dest(src_files, dest)
    if tmp_dir and not os.path.isdir(tmp_dir):
        raise SaraiError(f"tmp_dir {tmp_dir} is not a directory: create it or leave tmp_dir unset")
    progress.phase("hash_source")
    source = describe_source(src_files, dest)

    record, reason = _existing_release(dest, source, method, opts, model_name, extra)
    if record:
        if not source["hashed"]:
            reason += " (source unchanged since that build - size, mtime, ctime, inode - so not hashed again)"
        result = _result(False, dest, record, reason, time.perf_counter() - started)
        result["warnings"] = _coverage_verdict(method, opts, record["coverage"], coverage_floor,
                                               f"The release already in {dest} was left as it is.")
        return result
    progress.phase("plan")
    engine, plan, fallback = choose_engine(src, source_graph, method, opts, engine)
    output_bytes, temp_bytes = space_needed(method, engine, source, source_graph, opts, plan)
    if check_mode:
        planned = planned_weights(source_graph, method, opts)
        message = low_coverage_message(method, opts, planned, coverage_floor[0])
        warnings = [f"{message} (planned; {'allowed: allow_low_coverage is true' if coverage_floor[1] else 'the build would fail'})"] if message else []
        return {"changed": True, "warnings": warnings, "dest": dest, "method": method, "options": opts, "reason": reason,
                "msg": f"would build {method} release of {src} in {dest} with the {engine} engine ({reason})",
                "source": source, "planned": planned,
                "would_replace": os.path.exists(dest), "engine": engine, "engine_fallback_reason": fallback,
                "space_needed_bytes": output_bytes + temp_bytes}

    parent = os.path.dirname(dest)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise SaraiError(f"dest {dest} is not writable: cannot create {parent} ({exc.strerror}); "
                         "choose a dest under a writable directory") from None
    if tmp_dir and temp_bytes:  # onnxruntime's temporary FP32 copy goes to tmp_dir, the output beside dest
        _check_space(tmp_dir, temp_bytes, "onnxruntime's temporary FP32 copy of the model")
        temp_bytes = 0
    _check_space(parent, output_bytes + temp_bytes + (16 << 20), f"the {method} release ({engine} engine)")

    old_manifest = _read_text(os.path.join(dest, files.MANIFEST_NAME))
    with files.staging_dir(dest) as stage:
        out_dir = os.path.join(stage, "release")
        os.mkdir(out_dir)
        scratch = os.path.join(stage, "tmp")
        os.mkdir(scratch)
        if tmp_dir:
            scratch = tempfile.mkdtemp(dir=tmp_dir, prefix="sarai-quantize-")
        out_path = os.path.join(out_dir, model_name)
        t0 = time.perf_counter()
        try:
            with env.temp_dir_redirect(scratch), env.stdout_to_stderr(), _quiet_quantizers():
                if plan is not None:
                    progress.phase("quantize", plan.tensors_total, plan.bytes_total, engine=engine)
                    plan.write(out_path, progress)
                    tool = STREAMING_TOOLS[method]
                else:
                    progress.phase("quantize", engine=engine)
                    tool = BUILDERS[method](src, out_path, opts)
        except SaraiError:
            raise
        except Exception as exc:
            raise SaraiError(f"{method} quantization of {src} ({engine} engine) failed: {type(exc).__name__}: "
                             f"{exc}; dest was not touched") from None
        finally:
            if tmp_dir:
                shutil.rmtree(scratch, ignore_errors=True)
        quantize_s = time.perf_counter() - t0
        _ensure_layout(out_path)
        for name in os.listdir(out_dir):
            os.chmod(os.path.join(out_dir, name), files.FILE_MODE)
        progress.phase("load_check")
        with env.stdout_to_stderr():
            load_check(out_path)
        progress.phase("hash_output")
        output_graph = load_graph(out_path)
        output = describe_model_files(model_files(out_path, output_graph))
        output.update(model_name=model_name, path=os.path.join(dest, model_name))
        record = {
            "schema": 1, "method": method, "options": opts, "tool": tool,
            "engine": engine, "engine_fallback_reason": fallback,
            "source": dict({k: v for k, v in source.items() if k != "hashed"}, model_name=os.path.basename(src)),
            "output": output,
            "ratio": round(output["size_bytes"] / source["size_bytes"], 4),
            "coverage": measure_coverage(source_graph, output_graph),
            "min_quantized_share": coverage_floor[0], "allow_low_coverage": coverage_floor[1],
            "duration_s": round(quantize_s, 3),
            "peak_rss_mb": round(env.peak_rss_mb(children=True), 1),
            **env.provenance(),
        }
        record["warnings"] = _coverage_verdict(method, opts, record["coverage"], coverage_floor,
                                               f"Nothing was written: {dest} is as it was.")
        if extra:
            record.update(extra, extra_keys=sorted(extra))
        files.write_json_atomic(os.path.join(out_dir, RECORD_NAME), record)
        listing = files.describe_files(out_dir, os.listdir(out_dir))
        manifest = files.manifest_text(listing)
        files.write_file_atomic(os.path.join(out_dir, files.MANIFEST_NAME), manifest.encode())
        os.chmod(out_dir, files.DIR_MODE)
        files.fsync_tree(out_dir)
        files.replace_dir(out_dir, dest)
    result = _result(True, dest, record, f"built {method} release with the {engine} engine",
                     time.perf_counter() - started)
    result["warnings"] = list(record["warnings"])
    result["diff"] = {"before_header": os.path.join(dest, files.MANIFEST_NAME), "before": old_manifest or "",
                      "after_header": os.path.join(dest, files.MANIFEST_NAME), "after": manifest}
    return result


def _read_text(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def _result(changed, dest, record, reason, elapsed):
    manifest_path = os.path.join(dest, files.MANIFEST_NAME)
    manifest_sha = files.sha256_file(manifest_path)
    model_name = record["output"]["model_name"]
    return {
        "changed": changed, "dest": dest, "msg": reason,
        "model_path": os.path.join(dest, model_name),
        # None when the model holds no initializer to store outside the graph (all weights in the .onnx).
        "data_path": os.path.join(dest, model_name + ".data")
        if any(f["name"] == model_name + ".data" for f in record["output"]["files"]) else None,
        "model_name": model_name, "method": record["method"], "options": record["options"],
        "files": record["output"]["files"], "size_bytes": record["output"]["size_bytes"],
        "source_size_bytes": record["source"]["size_bytes"], "source_sha256": record["source"]["sha256"],
        "output_sha256": record["output"]["sha256"], "ratio": record["ratio"],
        "coverage": record["coverage"], "quantize_duration_s": record["duration_s"],
        # Releases recorded before there were two engines were all built by onnxruntime's.
        "engine": record.get("engine", "copy" if record["method"] == "none" else "onnxruntime"),
        "engine_fallback_reason": record.get("engine_fallback_reason"),
        "duration_s": round(elapsed, 3), "manifest_path": manifest_path,
        "manifest_sha256": manifest_sha, "release_sha12": manifest_sha[:12],
        "record_path": os.path.join(dest, RECORD_NAME),
    }
