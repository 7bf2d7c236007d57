"""The commands with module-shaped parameters: shared by the Ansible modules and the CLI.

Each takes the module's params dict (None = unset) and check_mode and returns the result dict;
a result with failed=True (a manifest that does not verify, a failed gate) carries msg.
Imports are per command: verifying a release directory needs neither numpy nor onnx, so
onnx_manifest also runs on a plain system Python (AnsiballZ still bundles every module_utils file).
"""

from .errors import SaraiError

QUANTIZE_OPTIONS = ("weight_type", "per_channel", "reduce_range", "nodes_to_exclude", "op_types_to_quantize",
                    "keep_io_types", "bits", "block_size", "symmetric", "accuracy_level")
# The fidelity search (sarai_onnx.fidelity): used only when fidelity_target is set.
SEARCH_PARAMS = ("fidelity_target", "search_budget", "inputs", "input_shapes", "input_values")
GATE_OPTIONS = ("cosine_min", "mse_max", "mae_max", "speedup_min", "p50_max_ms", "p99_max_ms", "rss_max_mb",
                "expected_output_shapes")  # validate.GATES + SHAPES_GATE (a unit test keeps them equal)
TUNE_OPTIONS = ("model", "release", "session_options", "inputs", "input_shapes", "input_values", "seed", "warmup",
                "runs", "grid", "max_configs", "time_budget_s", "processes", "fidelity_max_abs", "min_gain_pct",
                "fact_path", "report")


def _info(p, check_mode):
    from .info import model_info

    return model_info(p["path"], method=p.get("method"), options=p.get("options"),
                      checksum=p.get("checksum", True))


def _quantize(p, check_mode):
    from .quantize import quantize

    method = p.get("method") or "dynamic_int8"
    options = {k: p.get(k) for k in QUANTIZE_OPTIONS}
    build = dict(model_name=p.get("model_name"), tmp_dir=p.get("tmp_dir"), check_mode=check_mode,
                 engine=p.get("engine"), progress_file=p.get("progress_file"),
                 min_quantized_share=p.get("min_quantized_share"), allow_low_coverage=bool(p.get("allow_low_coverage")))
    if p.get("fidelity_target"):
        from .fidelity import quantize_to_target

        result = quantize_to_target(p["src"], p["dest"], method, options, p["fidelity_target"],
                                    search_budget=p.get("search_budget"), inputs=p.get("inputs"),
                                    input_shapes=p.get("input_shapes"), input_values=p.get("input_values"), **build)
    else:
        result = quantize(p["src"], p["dest"], method=method, options=options, **build)
    return result


def _manifest(p, check_mode):
    from .manifest import manifest

    result = manifest(p["path"], state=p.get("state") or "verified", manifest=p.get("manifest"),
                      release_id=p.get("release_id"), manifest_sha256=p.get("manifest_sha256"),
                      check_mode=check_mode)
    if not result["verified"]:
        result["failed"] = True
    return result


def _validate(p, check_mode):
    from .validate import validate

    gates = dict(p.get("gates") or {})
    gates.update({k: p[k] for k in GATE_OPTIONS if p.get(k) is not None})
    result = validate(p["model"], reference=p.get("reference"), session_options=p.get("session_options"),
                      inputs=p.get("inputs"), input_shapes=p.get("input_shapes"),
                      input_values=p.get("input_values"), seed=_default(p, "seed", 0),
                      warmup=_default(p, "warmup", 3), runs=_default(p, "runs", 20), gates=gates,
                      report=p.get("report"), progress_file=p.get("progress_file"), check_mode=check_mode)
    if result["failed_gates"] and _default(p, "fail_on_gate", True):
        result["failed"] = True
    return result


def _tune(p, check_mode):
    from .tune import tune

    # unset parameters take tune()'s defaults (the module documents the same values; a unit test compares)
    return tune(check_mode=check_mode, **{k: p[k] for k in TUNE_OPTIONS if p.get(k) is not None})


def _default(p, key, value):
    return value if p.get(key) is None else p[key]


COMMANDS = {
    "info": (_info, ("path", "method", "options", "checksum")),
    "quantize": (_quantize, ("src", "dest", "method", "model_name", "tmp_dir", "engine", "progress_file",
                             "min_quantized_share", "allow_low_coverage")
                 + QUANTIZE_OPTIONS + SEARCH_PARAMS),
    "manifest": (_manifest, ("path", "state", "manifest", "release_id", "manifest_sha256")),
    "validate": (_validate, ("model", "reference", "session_options", "inputs", "input_shapes", "input_values",
                             "seed", "warmup", "runs", "gates", "fail_on_gate", "report", "progress_file")
                 + GATE_OPTIONS),
    "tune": (_tune, TUNE_OPTIONS),
}
REQUIRED = {"info": ("path",), "quantize": ("src", "dest"), "manifest": ("path",), "validate": ("model",),
            "tune": ("model", "release")}


def run(command, params, check_mode=False):
    """Run one command; SaraiError for bad commands or parameters (the CLI has no argument_spec)."""
    if command not in COMMANDS:
        raise SaraiError(f"unknown command {command!r}: use one of {', '.join(COMMANDS)}")
    func, accepted = COMMANDS[command]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise SaraiError(f"unknown parameter(s) {', '.join(unknown)} for {command}: accepted are {', '.join(accepted)}")
    missing = [k for k in REQUIRED[command] if not params.get(k)]
    if missing:
        raise SaraiError(f"{command} needs parameter(s) {', '.join(missing)}")
    try:
        return func(params, check_mode)
    except OSError as exc:  # permissions, vanished files: say which file, not a traceback
        raise SaraiError(f"{command}: {exc.filename or ''}: {exc.strerror or exc}; "
                         "check the path and its permissions") from None


# The model inputs a command feeds (validate, tune, quantize's fidelity search), as module options.
INPUT_ARGUMENT_SPEC = dict(inputs=dict(type="path"), input_shapes=dict(type="dict"), input_values=dict(type="dict"))


def feeding_module(module_class, **argument_spec):
    """The AnsibleModule of a command that feeds the model: its options plus the input options, of
    which `inputs` and `input_shapes` exclude each other; check mode supported. (The class is passed
    in: this file is also the Windows CLI's, which has no Ansible.)"""
    return module_class(argument_spec=dict(argument_spec, **INPUT_ARGUMENT_SPEC),
                        mutually_exclusive=[("inputs", "input_shapes")], supports_check_mode=True)


def run_module(module, command):
    """Run `command` with an AnsibleModule's params and end the module: one exit path for all the
    modules (errors and failed results -> fail_json, warnings through module.warn, diff only when asked)."""
    try:
        result = run(command, module.params, check_mode=module.check_mode)
    except SaraiError as exc:
        module.fail_json(msg=str(exc))
    for warning in result.pop("warnings", []):
        module.warn(warning)
    result.setdefault("changed", False)
    if not module._diff:
        result.pop("diff", None)
    if result.pop("failed", False):
        module.fail_json(**result)
    module.exit_json(**result)
