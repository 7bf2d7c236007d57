# -*- coding: utf-8 -*-
"""Every input of a deploy or a rollback, checked in one place before anything changes.

Pure functions: values in, a list of problems out. Each problem names the variable, the value
and what to do, and every problem is reported at once, so one run shows the user all they must
fix. The rules reuse the code that consumes the values later (quantization options from
sarai_onnx.quantize, gates from sarai_onnx.validate): anything those would refuse after the
switch is refused here first.
"""
from __future__ import annotations

import json
import re

from ansible.module_utils.sarai_onnx.errors import SaraiError
from ansible.module_utils.sarai_onnx.quantize import METHODS, OPTION_DEFAULTS, normalize_options
from ansible.module_utils.sarai_onnx.release import VARIANT_PATTERN
from ansible.module_utils.sarai_onnx.validate import GATES, SHAPES_GATE, _check_limit, normalize_gates
from ansible.module_utils.sarai_onnx.verdict import IGNORE, OUTPUTS, normalize_output_gates

CATALOG_VAR = "sarai_model_variants"
GATES_VAR = "sarai_validation_gates"
TARGET_VAR = "sarai_target_variant"
REFERENCE_VAR = "sarai_reference_variant"
ROLLBACK_VAR = "sarai_rollback_to"
BATCHES_VAR = "sarai_rollout_batches"

# \Z, not $: `$` also matches before a trailing newline ("x.onnx\n" would pass).
VARIANT_NAME = re.compile(rf"^{VARIANT_PATTERN}\Z")
# A plain file name: it is joined to release dirs on every host and written into sarai.yaml.
MODEL_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*\.onnx\Z")
PERCENT = re.compile(r"^([0-9]+)%\Z")
# Control characters (newline, tab, NUL, DEL ...): in a value written to a file they start new lines
# or keys (a display_name with a newline adds top-level keys to sarai.yaml through its header comment).
CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")
# What a rollback reads from a variant (it renders sarai.yaml); a deploy also builds and validates.
ROLLBACK_KEYS = ("display_name", "file", "max_memory_mb")
# fidelity_target, search_budget and engine go to onnx_quantize as they are (roles/model_build), which checks them.
VARIANT_KEYS = ROLLBACK_KEYS + ("quantization", "gates", "fidelity_target", "search_budget", "engine")
VARIANT_KEYS += ("min_quantized_share", "allow_low_coverage")  # the coverage floor (check_coverage_floor)
GATE_EXAMPLES = {"cosine_min": 0.98, "mse_max": 0.01, "mae_max": 0.05, "speedup_min": 2.0,
                 "p50_max_ms": 300, "p99_max_ms": 500, "rss_max_mb": 1500,
                 SHAPES_GATE: {"logits": [1, 16, 1024]}}
_UNSET = object()


def show(value):
    """The value as the user would write it (JSON), cut short when long."""
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def problem(var, value, what, fix):
    if value is _UNSET or value is None:
        return f"{var} is not set: {fix}"
    return f"{var} = {show(value)}: {what}; {fix}"


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _as_count(value):
    """A whole number from an int or a string of digits (extra vars on the command line are strings)."""
    if _is_int(value):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _per_host(value):
    """[(host or None, value)]: a value may be the same everywhere or given per host {host: value}."""
    if isinstance(value, dict):
        return sorted(value.items(), key=lambda item: str(item[0]))
    return [(None, value)]


# ---------------------------------------------------------------- the catalog

def check_catalog(catalog, playbook="deploy"):
    """(problems, warnings) for the variant catalog. A rollback only renders sarai.yaml, so it is
    refused only for the keys it reads; a deploy also needs quantization and gates right."""
    if catalog is None or catalog is _UNSET:
        return [problem(CATALOG_VAR, None, "", "define the variant catalog in the inventory's group_vars "
                        "(see inventory/production/group_vars/all/sarai.yml)")], []
    if not isinstance(catalog, dict) or not catalog:
        return [problem(CATALOG_VAR, catalog, "must map variant names to {display_name, file, max_memory_mb, "
                        "quantization, gates}", "define at least the reference variant, e.g. fp32")], []
    problems, warnings = [], []
    for name, spec in catalog.items():
        var = f"{CATALOG_VAR}.{name}"
        if not isinstance(name, str) or not VARIANT_NAME.match(name):
            problems.append(problem(var, name, "a variant name is letters, digits and _ (no '-': it separates "
                                    "the variant from the manifest hash in release ids)", "rename the variant"))
        if not isinstance(spec, dict):
            problems.append(problem(var, spec, "must be a dict", "give display_name, file, max_memory_mb, "
                                    "quantization and gates"))
            continue
        problems += _check_variant(var, spec, playbook)
        unknown = sorted(set(spec) - set(VARIANT_KEYS))
        if unknown:
            warnings.append(f"{var} has key(s) {', '.join(unknown)} that nothing reads "
                            f"(known: {', '.join(VARIANT_KEYS)}); check their spelling")
    return problems, warnings


def _check_variant(var, spec, playbook):
    problems = []
    display_name = spec.get("display_name", _UNSET)
    if not isinstance(display_name, str) or not display_name.strip():
        problems.append(problem(f"{var}.display_name", display_name, "must be a non-empty string",
                                "give the name sarai.yaml shows, e.g. Qwen3-Omni-3B-INT8"))
    model_file = spec.get("file", _UNSET)
    if not isinstance(model_file, str) or not MODEL_FILE.match(model_file) or ".." in model_file:
        problems.append(problem(f"{var}.file", model_file, "must be a plain file name ending in .onnx "
                                "(letters, digits and . _ + -; no path separators, no '..')",
                                "give the model's file name only, e.g. agi_audio_core_int8.onnx"))
    memory = spec.get("max_memory_mb", _UNSET)
    if not _is_int(memory) or memory <= 0:
        problems.append(problem(f"{var}.max_memory_mb", memory, "must be a positive whole number of MiB",
                                "give the service's memory budget for this variant, e.g. 1200"))
    if playbook == "deploy":
        problems += check_quantization(spec.get("quantization", _UNSET), f"{var}.quantization")
        problems += check_gates(spec.get("gates"), f"{var}.gates")
        problems += check_coverage_floor(spec, var)
    return problems


_TYPE_RULES = ((bool, "true or false"), (list, "a list of names"), (int, "a whole number"), (str, "a string"))


def _option_type_problem(var, key, value, default):
    """The option's type is that of its default in sarai_onnx.quantize.OPTION_DEFAULTS (None: any)."""
    for kind, words in _TYPE_RULES:
        if isinstance(default, kind):
            ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
            if not ok:
                return problem(f"{var}.{key}", value, f"must be {words}", f"e.g. {key}: {show(default)}")
            return None
    return None


def check_quantization(quantization, var):
    if not isinstance(quantization, dict):
        return [problem(var, quantization, "must be a dict with a method and its options",
                        f"e.g. {{method: dynamic_int8, weight_type: QInt8}}; methods: {', '.join(METHODS)}")]
    method = quantization.get("method", _UNSET)
    if method not in METHODS:
        return [problem(f"{var}.method", method, "is not a quantization method",
                        f"use one of {', '.join(METHODS)}")]
    options = {k: v for k, v in quantization.items() if k != "method"}
    defaults = OPTION_DEFAULTS[method]
    problems = []
    for key, value in options.items():
        if key not in defaults:
            problems.append(problem(f"{var}.{key}", value, f"method {method} has no option {key}",
                                    f"remove it; {method} takes: {', '.join(defaults) or 'no options'}"))
        elif value is not None:
            wrong_type = _option_type_problem(var, key, value, defaults[key])
            if wrong_type:
                problems.append(wrong_type)
    if not problems:
        try:
            normalize_options(method, options)
        except SaraiError as exc:
            problems.append(problem(var, quantization, str(exc), "fix the option"))
    return problems


def check_coverage_floor(spec, var):
    """min_quantized_share a number in [0, 1] and allow_low_coverage a bool, as onnx_quantize takes them."""
    problems = []
    share = spec.get("min_quantized_share")
    if share is not None and (isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1):
        problems.append(problem(f"{var}.min_quantized_share", share, "must be a number between 0 and 1 (the share "
                                "of weight bytes the build must rewrite)", "e.g. min_quantized_share: 0.5, or "
                                "remove it for the default (0.5 for dynamic_int8, fp16 and matmul_nbits)"))
    allow = spec.get("allow_low_coverage")
    if allow is not None and not isinstance(allow, bool):
        problems.append(problem(f"{var}.allow_low_coverage", allow, "must be true or false (without quotes)",
                                "e.g. allow_low_coverage: true to ship a release below min_quantized_share with a "
                                "warning"))
    return problems


# ---------------------------------------------------------------- gates

def check_gates(gates, var=GATES_VAR):
    """Known gate names, numbers (not strings), in the ranges onnx_validate accepts; null disables a gate."""
    if gates is None or gates is _UNSET:
        return []
    if not isinstance(gates, dict):
        return [problem(var, gates, "must map gate names to limits",
                        f"e.g. {{cosine_min: 0.98, mse_max: 0.01}}; gates: {', '.join(sorted(GATE_EXAMPLES))}")]
    problems = check_output_gates(gates, var)
    for name, limit in gates.items():
        if limit is None or name in (IGNORE, OUTPUTS):
            continue
        gate_var = f"{var}.{name}"
        if name not in GATES and name != SHAPES_GATE:
            problems.append(problem(gate_var, limit, "is not a gate",
                                    f"rename or remove it; gates are {', '.join(sorted(GATE_EXAMPLES))}"))
            continue
        fix = f"set e.g. {name}: {show(GATE_EXAMPLES[name])}, or null to disable the gate"
        if name != SHAPES_GATE and (isinstance(limit, bool) or not isinstance(limit, (int, float))):
            problems.append(problem(gate_var, limit, "must be a number (without quotes)", fix))
            continue
        try:
            normalize_gates({name: limit}, has_reference=True)
        except SaraiError as exc:
            problems.append(problem(gate_var, limit, str(exc), fix))
            continue
        if name == "cosine_min" and limit <= 0:
            problems.append(problem(gate_var, limit, "must be in (0, 1]: a cosine of 0 or less accepts outputs "
                                    "unrelated to the reference", fix))
    return problems


OUTPUT_GATES_EXAMPLE = ("e.g. ignore: [state] and outputs: {speech: {cosine_min: 0.99, "
                        "threshold: {at: 0.5, agreement_min: 0.99}}}")


def check_output_gates(gates, var=GATES_VAR):
    """gates.ignore (output names) and gates.outputs (per-output gates, agreement in [0, 1]), as
    onnx_validate checks them; the names themselves are checked against the model on the server."""
    if not gates.get(IGNORE) and not gates.get(OUTPUTS):
        return []
    value = {k: gates.get(k) for k in (IGNORE, OUTPUTS) if gates.get(k) is not None}
    try:
        normalize_output_gates(gates, _check_limit, var)
    except SaraiError as exc:
        return [problem(var, value, str(exc), OUTPUT_GATES_EXAMPLE)]
    return []


# ---------------------------------------------------------------- variant names

def check_variant_name(value, var, catalog, required):
    if value is None or value is _UNSET or value == "":
        if required:
            return [problem(var, None, "", f"name the variant to use: one of {_names(catalog)}")]
        return []
    if not isinstance(catalog, dict):
        return []  # the catalog's own problem says it all
    if not isinstance(value, str) or value not in catalog:
        return [problem(var, value, f"is not a variant of {CATALOG_VAR}", f"use one of {_names(catalog)}, "
                        f"or add the variant to {CATALOG_VAR}")]
    return []


def check_reference(value, catalog):
    """The reference is what every variant is compared with and falls back to: the unquantized model."""
    problems = check_variant_name(value, REFERENCE_VAR, catalog, required=True)
    if problems or not isinstance(catalog, dict) or not isinstance(catalog.get(value), dict):
        return problems
    quantization = catalog[value].get("quantization")
    method = quantization.get("method") if isinstance(quantization, dict) else None
    if method not in (None, "none"):
        return [problem(REFERENCE_VAR, value, f"its quantization method is {method}; the reference must be the "
                        "unquantized model (method none)", "name the FP32 variant, e.g. fp32")]
    return []


def _names(catalog):
    return ", ".join(sorted(map(str, catalog))) if isinstance(catalog, dict) and catalog else "(no variants defined)"


# ---------------------------------------------------------------- batches, paths, counts

def check_batches(value, var=BATCHES_VAR):
    """(problems, batches as a list) for rolling batches: hosts per batch (1) or a share ('50%')."""
    if value is None or value is _UNSET:
        return [], None
    items = value if isinstance(value, list) else [value]
    fix = "give a number of hosts (e.g. 1) or a percentage of them (e.g. '50%', 1-100%), or a list of them, e.g. [1, '50%', '100%']"
    if not items:
        return [problem(var, value, "is an empty list", fix)], None
    problems, batches = [], []
    for index, item in enumerate(items):
        item_var = f"{var}[{index}]" if isinstance(value, list) else var
        count = _as_count(item)
        percent = PERCENT.match(item.strip()) if isinstance(item, str) else None
        if count is not None and count >= 1:
            batches.append(count)
        elif percent and 0 < int(percent.group(1)) <= 100:
            batches.append(f"{int(percent.group(1))}%")
        else:
            problems.append(problem(item_var, item, "is not a batch size", fix))
    return problems, None if problems else batches


def check_paths(paths):
    """Absolute paths on the servers, no '..', not '/' itself. {variable: path or {host: path}}."""
    problems = []
    for var, value in (paths or {}).items():
        for host, path in _per_host(value):
            label = f"{var} (host {host})" if host is not None else var
            fix = "set it to an absolute path in the inventory's group_vars, e.g. /opt/sarai"
            if path is None or path == "":
                problems.append(problem(label, None, "", fix))
            elif not isinstance(path, str):
                problems.append(problem(label, path, "must be a path (a string)", fix))
            elif not path.startswith("/"):
                problems.append(problem(label, path, "must be an absolute path (starting with /)", fix))
            elif ".." in path.split("/"):
                problems.append(problem(label, path, "must not contain '..'", "write the path without it"))
            elif not path.strip("/"):
                problems.append(problem(label, path, "must not be / itself", fix))
            elif any(c in path for c in "\n\r\t\0"):
                problems.append(problem(label, path, "contains a control character", "remove it"))
    return problems


def check_counts(counts):
    """How many releases/backups to keep: whole numbers >= 1. {variable: count or {host: count}}."""
    problems = []
    for var, value in (counts or {}).items():
        for host, count in _per_host(value):
            label = f"{var} (host {host})" if host is not None else var
            number = _as_count(count)
            if number is None or number < 1:
                problems.append(problem(label, count, "must be a whole number >= 1",
                                        "keep at least 1 (the running release and sarai.yaml are always kept), e.g. 3"))
    return problems


# ---------------------------------------------------------------- inventory groups

def check_groups(groups, playbook="deploy", inventory_sources=None):
    """The inventory has the servers (group inference) and, for a deploy, one build host."""
    if groups is None:
        return []
    inventory = ", ".join(inventory_sources or []) or "the inventory"
    problems = []
    if not groups.get("inference"):
        problems.append(problem("groups.inference", groups.get("inference", []), f"{inventory} has no host in "
                                f"group inference, so the {playbook} has no server to act on",
                                "add the SARAi servers under all.children.inference.hosts in the inventory, e.g. "
                                "`inference: {hosts: {agi1: {ansible_host: agi1.lan}}}`"))
    if playbook != "deploy":
        return problems
    quantizers = groups.get("quantizers") or []
    add = ("add the build host to group quantizers in the inventory, e.g. `quantizers: {hosts: {winbuild: "
           "{ansible_host: winbuild.lan}}}` under all.children")
    if not quantizers:
        problems.append(problem("groups.quantizers", quantizers, f"a deploy builds the model on exactly one host of "
                                f"group quantizers and {inventory} has none", add))
    elif len(quantizers) > 1:
        problems.append(problem("groups.quantizers", quantizers, "a deploy builds on exactly one host and group "
                                "quantizers has several", "keep only the host to build on in group quantizers"))
    return problems


# ---------------------------------------------------------------- control characters

def check_control_characters(values):
    """Every string (keys too) in {variable: value}, at any depth, free of control characters: each
    one found is a problem naming where it is, e.g. sarai_model_variants.int8.display_name."""
    problems = []

    def walk(var, value):
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and CONTROL_CHARACTER.search(key):
                    problems.append(problem(f"{var} key", key, "contains a control character (newline, tab, ...)",
                                            "remove it: keys and values are written into files on the servers"))
                walk(f"{var}.{key}", item)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(f"{var}[{index}]", item)
        elif isinstance(value, str) and CONTROL_CHARACTER.search(value):
            problems.append(problem(var, value, "contains a control character (newline, tab, ...)",
                                    "remove it: the value is written into files on the servers (sarai.yaml, "
                                    "release names, reports)"))

    for var, value in (values or {}).items():
        walk(var, value)
    return problems


# ---------------------------------------------------------------- all of it

def check_inputs(playbook="deploy", catalog=_UNSET, gates=None, target_variant=None, reference_variant=None,
                 rollback_variant=None, batches=None, paths=None, keep=None, groups=None,
                 inventory_sources=None):
    """{problems, warnings, batches}: everything the playbook will use, checked together."""
    problems, warnings = check_catalog(catalog, playbook)
    if playbook == "deploy":
        problems += check_variant_name(target_variant, TARGET_VAR, catalog, required=True)
        problems += check_reference(reference_variant, catalog)
        problems += check_gates(gates)
    else:
        problems += check_variant_name(rollback_variant, ROLLBACK_VAR, catalog, required=False)
    batch_problems, batch_list = check_batches(batches)
    problems += batch_problems
    problems += check_paths(paths)
    problems += check_counts(keep)
    problems += check_groups(groups, playbook, inventory_sources)
    problems += check_control_characters({CATALOG_VAR: catalog if isinstance(catalog, dict) else None,
                                          TARGET_VAR: target_variant, REFERENCE_VAR: reference_variant,
                                          ROLLBACK_VAR: rollback_variant})
    return {"problems": problems, "warnings": warnings, "batches": batch_list}


def describe(playbook, problems):
    lines = [f"{len(problems)} input problem(s) for the {playbook}; nothing was changed:"]
    lines += [f"{number}. {text}" for number, text in enumerate(problems, 1)]
    lines.append("Fix them in the inventory (group_vars, e.g. inventory/production/group_vars/all/sarai.yml) "
                 "or in your -e values, then run again.")
    return "\n".join(lines)
