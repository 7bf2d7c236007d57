"""The fidelity verdict: a candidate's outputs against the FP32 reference's, output by output.

One implementation for the server (validate, onnx_validate) and the build host (the fidelity search):
  compare()        cosine, MSE, MAE, max abs error and non-finite count per output (float64), and
                   the worst of them over the gated outputs (what the top-level metrics show);
  gate_results()   the fidelity gates (cosine_min, mse_max, mae_max) on every output not ignored,
                   per-output overrides, and the task-level agreement gates (threshold, argmax);
                   an output with a non-finite value or no values fails every fidelity gate it has;
  shortfall()      how far those results are from passing (ranks the search's failed trials);
  run_sequence()   a stream of windows fed in order, state outputs carried into state inputs.
Gates, as the catalog and onnx_validate take them:
  {cosine_min: 0.98, ignore: [state], outputs: {speech: {threshold: {at: 0.5, agreement_min: 0.99}}}}
"""

import math

import numpy as np

from .errors import SaraiError

# gate -> (metric, comparison): limits of the same names as validate.GATES (checked there)
FIDELITY = {"cosine_min": ("cosine", ">="), "mse_max": ("mse", "<="), "mae_max": ("mae", "<=")}
# agreement gate -> the key that says where it decides (threshold: the value t; argmax: the axis)
AGREEMENT = {"threshold": "at", "argmax": "axis"}
IGNORE, OUTPUTS = "ignore", "outputs"
METRICS = ("cosine", "mse", "mae", "max_abs", "nonfinite_values", "size")


# ---------------------------------------------------------------- checking gates

def _agreement_min(name, value, where):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= 1:
        raise SaraiError(f"{where}.agreement_min={value!r} is out of range: it must be a number in [0, 1] "
                         "(the share of decisions that must agree, e.g. 0.99)")
    return float(value)


def normalize_agreement(kind, spec, where):
    """{at|axis, agreement_min} checked; errors name `where` and the value."""
    key = AGREEMENT[kind]
    example = "{at: 0.5, agreement_min: 0.99}" if kind == "threshold" else "{axis: -1, agreement_min: 0.99}"
    if not isinstance(spec, dict) or set(spec) - {key, "agreement_min"} or "agreement_min" not in spec:
        raise SaraiError(f"{where}={spec!r} must be a mapping like {example}")
    out = {"agreement_min": _agreement_min(kind, spec["agreement_min"], where)}
    value = spec.get(key, -1 if kind == "argmax" else None)
    if kind == "threshold":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SaraiError(f"{where}.at={value!r} must be a finite number (the decision threshold, e.g. 0.5)")
        out["at"] = float(value)
    else:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SaraiError(f"{where}.axis={value!r} must be a whole number (the axis of the classes, e.g. -1)")
        out["axis"] = value
    return out


def normalize_output_gates(gates, check_limit, var="gates"):
    """(ignore, outputs) checked from gates[ignore] and gates[outputs]; check_limit(name, value, where)
    checks a fidelity gate's limit (validate's ranges)."""
    ignore = gates.get(IGNORE) or []
    if isinstance(ignore, str) or not isinstance(ignore, list) or not all(isinstance(n, str) and n for n in ignore):
        raise SaraiError(f"{var}.{IGNORE}={ignore!r} must be a list of output names, e.g. [state]")
    outputs = gates.get(OUTPUTS) or {}
    if not isinstance(outputs, dict):
        raise SaraiError(f"{var}.{OUTPUTS}={outputs!r} must map output names to their gates, "
                         "e.g. {speech: {cosine_min: 0.99, threshold: {at: 0.5, agreement_min: 0.99}}}")
    checked = {}
    for name, spec in outputs.items():
        where = f"{var}.{OUTPUTS}.{name}"
        if name in ignore:
            raise SaraiError(f"{where}: output {name!r} is also in {var}.{IGNORE}; gate it or ignore it, not both")
        if not isinstance(spec, dict):
            raise SaraiError(f"{where}={spec!r} must map gate names to limits")
        unknown = sorted(set(spec) - set(FIDELITY) - set(AGREEMENT))
        if unknown:
            raise SaraiError(f"{where} has unknown gate(s) {', '.join(unknown)}: per output use "
                             f"{', '.join(list(FIDELITY) + list(AGREEMENT))}")
        one = {}
        for gate, value in spec.items():
            if value is None:
                continue
            one[gate] = normalize_agreement(gate, value, f"{where}.{gate}") if gate in AGREEMENT \
                else check_limit(gate, value, f"{where}.{gate}")
        checked[name] = one
    return list(ignore), checked


def check_output_names(gates, output_names, where="gates"):
    """Every output named in gates[ignore] or gates[outputs] exists in the model (before measuring)."""
    for key in (IGNORE, OUTPUTS):
        unknown = [n for n in gates.get(key) or [] if n not in output_names]
        if unknown:
            raise SaraiError(f"{where}.{key} names output(s) {', '.join(map(repr, unknown))}, which the model "
                             f"does not have (outputs: {', '.join(output_names)})")


def check_state_map(state_map, input_names, output_names, where="state_map"):
    """{state input: state output} naming real inputs and outputs."""
    if not isinstance(state_map, dict) or not state_map:
        raise SaraiError(f"{where}={state_map!r} must map state inputs to the outputs carried into them, "
                         "e.g. {state: stateN}")
    for inp, out in state_map.items():
        if inp not in input_names:
            raise SaraiError(f"{where}: {inp!r} is not an input of the model (inputs: {', '.join(input_names)})")
        if out not in output_names:
            raise SaraiError(f"{where}[{inp!r}] = {out!r} is not an output of the model "
                             f"(outputs: {', '.join(output_names)})")
    return dict(state_map)


# ---------------------------------------------------------------- comparing

def _round(value):
    return round(value, 8) if math.isfinite(value) else None  # NaN is not JSON: None fails any gate on it


def compare_output(ref, out):
    """Metrics of one output (float64); non-finite values are counted (in both) and make the metric None."""
    a = np.asarray(ref, dtype=np.float64).ravel()
    b = np.asarray(out, dtype=np.float64).ravel()
    nonfinite = int(np.count_nonzero(~np.isfinite(b)) + np.count_nonzero(~np.isfinite(a)))
    if a.size == 0:
        return {"cosine": None, "mse": None, "mae": None, "max_abs": None, "nonfinite_values": nonfinite, "size": 0}
    with np.errstate(all="ignore"):
        diff = b - a
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        if na == 0 and nb == 0:
            cosine = 1.0
        elif na == 0 or nb == 0:
            cosine = 0.0
        else:
            cosine = float(np.dot(a, b) / (na * nb))
        metrics = {"cosine": cosine, "mse": float(np.mean(diff * diff)), "mae": float(np.mean(np.abs(diff))),
                   "max_abs": float(np.max(np.abs(diff)))}
    return dict({k: _round(v) for k, v in metrics.items()}, nonfinite_values=nonfinite, size=int(a.size))


def _check_comparable(reference, outputs):
    missing = [n for n in reference if n not in outputs]
    if missing:
        raise SaraiError(f"the model lacks the reference output(s) {', '.join(missing)}: "
                         "it is not a variant of the reference model")
    for name, ref in reference.items():
        if np.shape(ref) != np.shape(outputs[name]):
            raise SaraiError(f"output {name!r} has shape {list(np.shape(outputs[name]))} but the reference gives "
                             f"{list(np.shape(ref))}: the models are not comparable")


def compare(reference, outputs, ignore=()):
    """Per-output metrics ({outputs: {name: metrics}}) and, at the top level, the worst over the
    outputs not ignored: lowest cosine, highest errors, all non-finite values (None when any is None)."""
    _check_comparable(reference, outputs)
    per = {name: compare_output(ref, outputs[name]) for name, ref in reference.items()}
    gated = [m for n, m in per.items() if n not in ignore] or list(per.values())
    worst = {}
    for key, pick in (("cosine", min), ("mse", max), ("mae", max), ("max_abs", max)):
        values = [m[key] for m in gated]
        worst[key] = None if any(v is None for v in values) else pick(values)
    worst["nonfinite_values"] = sum(m["nonfinite_values"] for m in gated)
    return dict(worst, outputs=per)


def agreement(ref, out, kind, spec, leading_window_axis=False):
    """Share of decisions that agree: threshold (value >= at) elementwise, or argmax along an axis."""
    a, b = np.asarray(ref, dtype=np.float64), np.asarray(out, dtype=np.float64)
    if a.size == 0 or not np.all(np.isfinite(a)) or not np.all(np.isfinite(b)):
        return None
    if kind == "threshold":
        return round(float(np.mean((a >= spec["at"]) == (b >= spec["at"]))), 6)
    axis = spec["axis"] + 1 if leading_window_axis and spec["axis"] >= 0 else spec["axis"]
    if not -a.ndim <= axis < a.ndim:
        raise SaraiError(f"argmax axis {spec['axis']} does not exist in an output of shape {list(a.shape)}")
    return round(float(np.mean(np.argmax(a, axis=axis) == np.argmax(b, axis=axis))), 6)


# ---------------------------------------------------------------- gates

def output_gates(gates, output_names):
    """[(output, gate, limit)] that apply: the top-level fidelity gates on every output not ignored,
    overridden (or completed) by the output's own gates."""
    ignore = gates.get(IGNORE) or []
    per = gates.get(OUTPUTS) or {}
    applied = []
    for name in output_names:
        if name in ignore:
            continue
        mine = dict({g: gates[g] for g in FIDELITY if gates.get(g) is not None}, **per.get(name, {}))
        applied += [(name, gate, limit) for gate, limit in mine.items()]
    return applied


def gate_results(metrics, reference, outputs, gates, leading_window_axis=False):
    """[{gate, output, value, limit, passed, reason?}] for every fidelity and agreement gate.

    metrics: compare()'s result; reference/outputs: the arrays (for agreement). An output with a
    non-finite value or no values fails all its gates, whatever the metric says.
    """
    results = []
    for name, gate, limit in output_gates(gates, list(metrics["outputs"])):
        m = metrics["outputs"][name]
        if gate in AGREEMENT:
            value = agreement(reference[name], outputs[name], gate, limit, leading_window_axis)
            entry = {"gate": gate, "output": name, "value": value, "limit": limit["agreement_min"],
                     "passed": value is not None and value >= limit["agreement_min"],
                     "decision": {k: v for k, v in limit.items() if k != "agreement_min"}}
        else:
            metric, op = FIDELITY[gate]
            value = m[metric]
            entry = {"gate": gate, "output": name, "value": value, "limit": limit,
                     "passed": value is not None and (value >= limit if op == ">=" else value <= limit)}
        if m["size"] == 0:
            entry.update(passed=False, reason="the output is empty")
        elif m["nonfinite_values"]:
            entry.update(passed=False, reason=f"{m['nonfinite_values']} non-finite value(s)")
        results.append(entry)
    return results


def describe(result):
    """One failed output gate in words: gate, output, value and limit."""
    where = f"gate {result['gate']} on output {result['output']!r} failed"
    if result.get("reason"):
        return f"{where}: {result['reason']} (limit {result['limit']:g})"
    if result["value"] is None:
        return f"{where}: value is not finite (limit {result['limit']:g})"
    if result["gate"] in AGREEMENT:
        return f"{where}: agreement {result['value']:.4g} < {result['limit']:g} ({result['decision']})"
    op = "<" if FIDELITY[result["gate"]][1] == ">=" else ">"
    return f"{where}: {result['value']:.6g} {op} {result['limit']:g}"


def shortfall(results):
    """How far gate results are from passing, worst gate first: <= 1 meets them all, inf: non-finite."""
    worst = 0.0
    for r in results:
        value, limit = r["value"], r["limit"]
        if value is None or r.get("reason"):
            return math.inf
        if r["gate"] == "cosine_min" or r["gate"] in AGREEMENT:
            ratio = (1.0 - value) / max(1.0 - limit, 1e-12)
        else:
            ratio = value / limit if limit > 0 else (0.0 if value == 0 else math.inf)
        worst = max(worst, ratio)
    return worst


# ---------------------------------------------------------------- sequences

def window_feeds(windows, k):
    """Window k of each streamed input, as arrays (a stream of scalars gives 0-d arrays, which
    onnxruntime takes; a numpy scalar it refuses)."""
    return {name: np.asarray(arr[k]) for name, arr in windows.items()}


def run_sequence(run, windows, initial_state, state_map, output_names):
    """{output: array [N, ...]}: run(feeds) -> [arrays] on each of the N windows in order; window k's
    state outputs (state_map: {input: output}) are window k+1's state inputs."""
    count = len(next(iter(windows.values())))
    state = dict(initial_state)
    collected = {name: [] for name in output_names}
    for k in range(count):
        feeds = dict(window_feeds(windows, k), **state)
        produced = dict(zip(output_names, run(feeds)))
        for name in output_names:
            collected[name].append(produced[name])
        state = {inp: produced[out].astype(initial_state[inp].dtype, copy=False) for inp, out in state_map.items()}
    return {name: np.stack(arrays) for name, arrays in collected.items()}
