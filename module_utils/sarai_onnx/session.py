"""Session options as plain data (sarai.yaml, module args) -> onnxruntime.SessionOptions."""

from .errors import SaraiError

OPT_LEVELS = ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL")
EXEC_MODES = ("ORT_SEQUENTIAL", "ORT_PARALLEL")
INT_KEYS = ("intra_op_num_threads", "inter_op_num_threads")
BOOL_KEYS = ("enable_cpu_mem_arena", "enable_mem_pattern", "enable_mem_reuse")
KEYS = ("graph_optimization_level", "execution_mode", "config_entries", "providers") + INT_KEYS + BOOL_KEYS


def normalize_session_options(options):
    """Check the dict without importing onnxruntime (safe before forking measurement processes)."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(KEYS))
    if unknown:
        raise SaraiError(f"unknown session option(s) {', '.join(unknown)}: valid keys are {', '.join(KEYS)}")
    out = {}
    for key, value in options.items():
        if value is None:
            continue
        if key == "graph_optimization_level" and value not in OPT_LEVELS:
            raise SaraiError(f"session option graph_optimization_level={value!r}: use one of {', '.join(OPT_LEVELS)}")
        if key == "execution_mode" and value not in EXEC_MODES:
            raise SaraiError(f"session option execution_mode={value!r}: use one of {', '.join(EXEC_MODES)}")
        if key in INT_KEYS:
            if isinstance(value, bool) or not str(value).isdigit():
                raise SaraiError(f"session option {key}={value!r} must be an integer >= 0 (0 lets onnxruntime choose)")
            value = int(value)
        if key in BOOL_KEYS:
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
                value = value.lower() in ("true", "yes")
            if not isinstance(value, bool):
                raise SaraiError(f"session option {key}={value!r} must be true or false")
        if key == "config_entries":
            if not isinstance(value, dict):
                raise SaraiError(f"session option config_entries must be a mapping of strings, got {value!r}")
            value = {str(k): str(v) for k, v in value.items()}
        if key == "providers":
            if isinstance(value, str) or not isinstance(value, list):
                raise SaraiError(f"session option providers must be a list like [CPUExecutionProvider], got {value!r}")
        out[key] = value
    return out


def build_session_options(options):
    """(onnxruntime.SessionOptions, providers) from the dict."""
    import onnxruntime as ort

    options = normalize_session_options(options)
    so = ort.SessionOptions()
    if "graph_optimization_level" in options:
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, options["graph_optimization_level"])
    if "execution_mode" in options:
        so.execution_mode = getattr(ort.ExecutionMode, options["execution_mode"])
    for key in INT_KEYS + BOOL_KEYS:
        if key in options:
            setattr(so, key, options[key])
    for key, value in options.get("config_entries", {}).items():
        so.add_session_config_entry(key, value)
    providers = options.get("providers") or ["CPUExecutionProvider"]
    missing = [p for p in providers if p not in ort.get_available_providers()]
    if missing:
        raise SaraiError(f"execution provider(s) {', '.join(missing)} are not available in this onnxruntime "
                         f"(available: {', '.join(ort.get_available_providers())})")
    return so, providers


def make_session(path, options):
    import onnxruntime as ort

    so, providers = build_session_options(options)
    return ort.InferenceSession(path, sess_options=so, providers=providers)
