"""Accuracy-aware dynamic INT8: search for the options that meet a fidelity target, then build.

quantize_to_target() builds the same release quantize() builds, after finding options whose
output stays within `fidelity_target` of the FP32 source on the validation inputs:
  1. the requested options;
  2. the cheap changes, one at a time: per_channel, then the other weight type;
  3. the best of those with the k most sensitive MatMuls (sensitivity.rank_matmuls) kept in FP32,
     k doubled until the target passes, then bisected down to the fewest that still pass;
within a budget of trials, wall time and a floor on the share of weight bytes still quantized.
Every trial is a real build (quantize() into a scratch dir) judged against FP32 by the verdict
onnx_validate applies (verdict.compare and verdict.gate_results: per output, `ignore`d outputs,
agreement gates, non-finite values fail), on the inputs onnx_validate would generate.

The release records the request (options, target, budget, inputs digest) and the outcome, so a
second run with the same request reuses it without searching again; a damaged release is rebuilt
from the recorded options. When the budget runs out, nothing is built and dest stays as it was.
"""

import hashlib
import json
import math
import os
import shutil
import tempfile
import time

import numpy as np

from .coverage import planned_weights
from .errors import SaraiError
from .inputs import generate_inputs, load_npz, load_sequence_npz
from .model import graph_inputs, load_graph, model_files, value_infos
from .quantize import RECORD_NAME, describe_source, extra_of, normalize_options, quantize
from .sensitivity import rank_matmuls
from .session import make_session
from .validate import normalize_gates
from .verdict import (FIDELITY, IGNORE, OUTPUTS, check_output_names, check_state_map, compare, gate_results,
                      run_sequence, shortfall, window_feeds)

TARGET_KEYS = tuple(FIDELITY) + (IGNORE, OUTPUTS)
BUDGET_DEFAULTS = {"max_trials": 16, "max_seconds": 3600.0, "min_quantized_share": 0.5}
SEARCHABLE = ("dynamic_int8",)
RECORD_KEYS = ("fidelity", "excluded_nodes", "search")
INPUT_SEED = 0  # onnx_validate's default seed: the search sees the inputs validation will generate


class _BudgetSpent(Exception):
    """The budget allows no further trial (the message says which limit)."""


# ---------------------------------------------------------------- checking the request

def normalize_target(target):
    """{gate: limit} for the fidelity gates given; errors name the bad key or value."""
    if not isinstance(target, dict):
        raise SaraiError(f"fidelity_target must be a mapping like {{cosine_min: 0.99}}, got {target!r}")
    unknown = sorted(set(target) - set(TARGET_KEYS))
    if unknown:
        raise SaraiError(f"fidelity_target key(s) {', '.join(unknown)} are not fidelity gates: "
                         f"use {', '.join(TARGET_KEYS)} (speed is measured on the server by onnx_validate)")
    gates = normalize_gates(target, has_reference=True)
    if not set(gates) & set(FIDELITY) and not gates.get(OUTPUTS):
        raise SaraiError(f"fidelity_target sets no limit: give at least one of {', '.join(TARGET_KEYS)}")
    return gates


def normalize_budget(budget):
    """The search budget with defaults; errors name the bad key or value."""
    if budget is not None and not isinstance(budget, dict):
        raise SaraiError(f"search_budget must be a mapping like {{max_trials: 12}}, got {budget!r}")
    given = {k: v for k, v in (budget or {}).items() if v is not None}
    unknown = sorted(set(given) - set(BUDGET_DEFAULTS))
    if unknown:
        raise SaraiError(f"search_budget key(s) {', '.join(unknown)} are unknown: use {', '.join(BUDGET_DEFAULTS)}")
    out = dict(BUDGET_DEFAULTS, **given)
    checks = {"max_trials": (int, 1, None), "max_seconds": (float, 1e-9, None), "min_quantized_share": (float, 0.0, 1.0)}
    for key, (kind, low, high) in checks.items():
        value = out[key]
        try:
            if isinstance(value, bool):
                raise ValueError
            value = kind(value) if kind is float else int(str(value))
        except (TypeError, ValueError):
            raise SaraiError(f"search_budget {key}={out[key]!r} must be a {'whole ' if kind is int else ''}number") from None
        if not math.isfinite(value) or value < low or (high is not None and value > high):
            where = f"between {low:g} and {high:g}" if high is not None else ("at least 1" if kind is int else "> 0")
            raise SaraiError(f"search_budget {key}={out[key]!r} is out of range: it must be {where}")
        out[key] = value
    return out


def validation_feeds(model, inputs=None, input_shapes=None, input_values=None):
    """The inputs onnx_validate would use: an .npz, or generated from the signature (seed 0)."""
    signature = graph_inputs(model)
    if inputs:
        return load_npz(inputs, signature)
    return generate_inputs(signature, input_shapes, input_values, INPUT_SEED)


def validation_sequence(model, inputs, state_map):
    """(first-window feeds, (windows, state_map)) as onnx_validate reads a stream for a stateful model."""
    signature = graph_inputs(model)
    check_state_map(state_map, [s["name"] for s in signature], [o["name"] for o in value_infos(model.graph.output)])
    if not inputs:
        raise SaraiError("state_map needs `inputs`: an .npz with a leading window axis for the streamed input(s)")
    windows, initial = load_sequence_npz(inputs, signature, state_map)
    return dict(window_feeds(windows, 0), **initial), (windows, dict(state_map))


def feeds_digest(feeds):
    """sha256 over the input names, dtypes, shapes and bytes: what the search measured on."""
    digest = hashlib.sha256()
    for name in sorted(feeds):
        arr = np.ascontiguousarray(feeds[name])
        digest.update(f"{name}|{arr.dtype.str}|{list(arr.shape)}\n".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------- measuring

def run_outputs(path, feeds, sequence=None):
    """{output name: array} of one onnxruntime run with default CPU session options; with sequence =
    (windows, state_map) the outputs of every window, state carried (verdict.run_sequence)."""
    session = make_session(path, None)
    names = [o.name for o in session.get_outputs()]
    if sequence:
        windows, state_map = sequence
        return run_sequence(lambda f: session.run(None, f), windows, {k: feeds[k] for k in state_map}, state_map, names)
    return dict(zip(names, session.run(None, feeds)))


def pin_yaml(method, opts):
    """The variant's `quantization:` line that rebuilds these options without searching (flow YAML)."""
    keys = ["weight_type", "per_channel", "reduce_range", "nodes_to_exclude"]
    if opts.get("op_types_to_quantize"):
        keys.append("op_types_to_quantize")
    fields = ", ".join(f"{k}: {json.dumps(opts[k])}" for k in keys)
    return f"quantization: {{method: {method}, {fields}}}"


def _describe(trial):
    return (f"trial {trial['trial']} ({trial['change']}): cosine {trial['cosine']}, MSE {trial['mse']}, "
            f"MAE {trial['mae']}, quantized share {trial['quantized_share']}")


# ---------------------------------------------------------------- the search

class _Search:
    """Trials in a scratch dir; each one a quantize() build measured against the FP32 outputs."""

    def __init__(self, src, method, model_name, feeds, target, budget, scratch, build_kwargs, sequence=None):
        self.src, self.method, self.model_name = src, method, model_name
        self.feeds, self.target, self.budget, self.sequence = feeds, target, budget, sequence
        self.scratch, self.build_kwargs = scratch, build_kwargs
        self.started = time.perf_counter()
        self.reference = run_outputs(src, feeds, sequence)
        check_output_names(target, list(self.reference), "fidelity_target")
        self.trials = []
        self.options = []  # the options of each trial
        self.scores = []  # shortfall() of each trial

    def elapsed(self):
        return time.perf_counter() - self.started

    def check_budget(self):
        """Raise _BudgetSpent when no further trial fits (a trial is assumed to take the mean so far)."""
        if len(self.trials) >= self.budget["max_trials"]:
            raise _BudgetSpent(f"max_trials {self.budget['max_trials']} reached")
        typical = sum(t["seconds"] for t in self.trials) / len(self.trials) if self.trials else 0.0
        if self.elapsed() + typical > self.budget["max_seconds"]:
            raise _BudgetSpent(f"max_seconds {self.budget['max_seconds']:g} would be exceeded "
                               f"({self.elapsed():.0f} s spent, a trial takes about {typical:.0f} s)")

    def trial(self, change, opts, excluded_count=0):
        self.check_budget()
        t0 = time.perf_counter()
        dest = os.path.join(self.scratch, f"trial-{len(self.trials) + 1}")
        try:
            # The search judges the share itself (below); the trial build must not refuse it first.
            built = quantize(self.src, dest, self.method, model_name=self.model_name, options=opts,
                             **dict(self.build_kwargs, allow_low_coverage=True))
            outputs = run_outputs(built["model_path"], self.feeds, self.sequence)
        finally:
            shutil.rmtree(dest, ignore_errors=True)
        share = built["coverage"]["byte_share"]
        metrics = compare(self.reference, outputs, self.target.get(IGNORE, ()))
        results = gate_results(metrics, self.reference, outputs, self.target, leading_window_axis=bool(self.sequence))
        # The floor holds for every trial, the first included: quantizing nothing always meets a target.
        passed = all(g["passed"] for g in results) and share >= self.budget["min_quantized_share"]
        trial = {"trial": len(self.trials) + 1, "change": change,
                 "weight_type": opts["weight_type"], "per_channel": opts["per_channel"],
                 "reduce_range": opts["reduce_range"], "excluded_count": excluded_count,
                 "cosine": metrics["cosine"], "mse": metrics["mse"], "mae": metrics["mae"],
                 "max_abs": metrics["max_abs"], "quantized_share": share,
                 "outputs": metrics["outputs"], "failed_gates": [g for g in results if not g["passed"]],
                 "passed": passed, "seconds": round(time.perf_counter() - t0, 3)}
        self.trials.append(trial)
        self.options.append(opts)
        self.scores.append(shortfall(results))
        return trial

    def best(self):
        """(trial, options) of the trial closest to the target."""
        index = min(range(len(self.scores)), key=self.scores.__getitem__)
        return self.trials[index], self.options[index]

    def winner(self, opts):
        """The last passing trial built with `opts`."""
        return next(t for t, o in zip(reversed(self.trials), reversed(self.options)) if t["passed"] and o == opts)


def _cheap_changes(search, opts):
    """Trials 2-3: per_channel, then the other weight type on the better per_channel setting."""
    if not opts["per_channel"]:
        trial = search.trial("per_channel: true", dict(opts, per_channel=True))
        if trial["passed"]:
            return dict(opts, per_channel=True)
    _, best = search.best()
    other = "QUInt8" if best["weight_type"] == "QInt8" else "QInt8"
    candidate = dict(best, weight_type=other)
    if search.trial(f"weight_type: {other}" + (", per_channel: true" if candidate["per_channel"] else ""),
                    candidate)["passed"]:
        return candidate
    return None


def _with_excluded(opts, ranking, count):
    return dict(opts, nodes_to_exclude=sorted(set(opts["nodes_to_exclude"]) | {r["node"] for r in ranking[:count]}))


def _exclusions(search, source_graph, base, ranking):
    """Keep the k most sensitive nodes in FP32: k doubled until it passes, then bisected down.

    Returns the passing options with the fewest exclusions found; raises _BudgetSpent (naming the
    limit) when none passed within the budget and the floor.
    """
    floor = search.budget["min_quantized_share"]
    allowed = 0  # the largest k whose planned byte share stays at or above the floor
    for k in range(1, len(ranking) + 1):
        if planned_weights(source_graph, search.method, _with_excluded(base, ranking, k))["byte_share"] < floor:
            break
        allowed = k
    if allowed == 0:
        raise _BudgetSpent(f"min_quantized_share {floor:g}: excluding even the most sensitive node "
                           "would quantize less than that")
    failing, passing, k = 0, None, 1
    while passing is None:
        change = f"keep the {k} most sensitive MatMul(s) in FP32"
        if search.trial(change, _with_excluded(base, ranking, k), excluded_count=k)["passed"]:
            passing = k
        elif k == allowed:
            raise _BudgetSpent(f"min_quantized_share {floor:g}: the {allowed} most sensitive node(s) are all "
                               "that can stay in FP32 above that share, and the target still fails")
        else:
            failing, k = k, min(2 * k, allowed)
    while passing - failing > 1:
        middle = (failing + passing) // 2
        try:
            trial = search.trial(f"keep the {middle} most sensitive MatMul(s) in FP32",
                                 _with_excluded(base, ranking, middle), excluded_count=middle)
        except _BudgetSpent:
            break  # a passing set is in hand: the budget only stops the narrowing
        if trial["passed"]:
            passing = middle
        else:
            failing = middle
    return _with_excluded(base, ranking, passing)


def _search(search, source_graph, opts):
    """(chosen options, ranking): the first options meeting the target, in the order of the module doc."""
    first = search.trial("requested options", opts)
    if first["passed"]:
        return opts, []
    floor = search.budget["min_quantized_share"]
    if first["quantized_share"] < floor:  # the other trials rewrite the same weights or fewer
        raise _BudgetSpent(f"min_quantized_share {floor:g}: the requested options quantize only "
                           f"{first['quantized_share']:.1%} of the weight bytes, and every other trial "
                           "quantizes the same weights or fewer")
    chosen = _cheap_changes(search, opts)
    if chosen:
        return chosen, []
    _, base = search.best()
    search.check_budget()  # ranking costs one FP32 pass and a pass over the weights: not worth it without a trial left
    ranking = rank_matmuls(search.src, source_graph, search.feeds, base)
    if not ranking:
        raise _BudgetSpent("no MatMul left to keep in FP32 (no quantizable MatMul with a constant weight)")
    return _exclusions(search, source_graph, base, ranking), ranking


# ---------------------------------------------------------------- the entry point

def _recorded(dest, request, source_sha256):
    """The fidelity part of dest's record when it was built for this exact request and source."""
    try:
        with open(os.path.join(dest, RECORD_NAME)) as fh:
            record = json.load(fh)
        if record["fidelity"]["request"] == request and record["source"]["sha256"] == source_sha256:
            return record
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _finish(result, method, extra):
    """The search's keys (as recorded in quantization.json) and the pin snippet on the result."""
    result.update(extra)
    result["pin_yaml"] = pin_yaml(method, result["options"])
    return result


def quantize_to_target(src, dest, method, options, fidelity_target, search_budget=None, inputs=None,
                       input_shapes=None, input_values=None, model_name=None, tmp_dir=None, check_mode=False,
                       state_map=None, **build_kwargs):
    """quantize() with the options a search finds for `fidelity_target`. Returns the result dict;
    failed=True (and nothing built) when the budget is spent without meeting the target."""
    if method not in SEARCHABLE:
        raise SaraiError(f"fidelity_target is supported with method {', '.join(SEARCHABLE)}, not {method}: "
                         "drop fidelity_target or use dynamic_int8")
    method, opts = normalize_options(method, options)
    target, budget = normalize_target(fidelity_target), normalize_budget(search_budget)
    src, dest = os.path.abspath(src), os.path.abspath(dest)
    source_graph = load_graph(src)
    sequence = None
    if state_map:
        feeds, sequence = validation_sequence(source_graph, inputs, state_map)
    else:
        feeds = validation_feeds(source_graph, inputs, input_shapes, input_values)
    measured = dict(feeds, **sequence[0]) if sequence else feeds  # a stream: its windows are what is compared
    request = {"options": opts, "target": target, "budget": budget,
               "inputs": {k: {"shape": list(v.shape), "dtype": v.dtype.name} for k, v in measured.items()},
               "inputs_sha256": feeds_digest(measured)}
    if sequence:
        request["state_map"] = sequence[1]
    request = json.loads(json.dumps(request))
    build_kwargs = dict(build_kwargs, tmp_dir=tmp_dir)
    if build_kwargs.get("min_quantized_share") is None:  # the release is held to the floor its search was
        build_kwargs["min_quantized_share"] = budget["min_quantized_share"]
    source_sha256 = describe_source(model_files(src, source_graph), dest)["sha256"]
    record = _recorded(dest, request, source_sha256)
    if record:  # built for this request before: reuse it, or rebuild those options if it was damaged
        extra = extra_of(record)
        result = quantize(src, dest, method, model_name=model_name, options=record["options"],
                          check_mode=check_mode, extra_record=extra, **build_kwargs)
        return _finish(result, method, extra)
    # Every check quantize() makes on src, dest and tmp_dir, before anything is written.
    planned = quantize(src, dest, method, model_name=model_name, options=opts, check_mode=True, **build_kwargs)
    if check_mode:
        return dict(planned, changed=True, msg=f"would search for options meeting fidelity_target {target} "
                    f"(budget {budget}) and build the {method} release in {dest}")

    scratch_parent = tmp_dir or os.path.dirname(dest)
    os.makedirs(scratch_parent, exist_ok=True)
    scratch = tempfile.mkdtemp(dir=scratch_parent, prefix=f".{os.path.basename(dest)}.search-")
    try:
        search = _Search(src, method, model_name, feeds, target, budget, scratch, build_kwargs, sequence)
        try:
            chosen, ranking = _search(search, source_graph, opts)
        except _BudgetSpent as spent:
            best = f"Best was {_describe(search.best()[0])}" if search.trials else "No trial ran"
            return {"changed": False, "failed": True, "dest": dest, "method": method, "options": opts,
                    "search": search.trials, "fidelity": {"request": request, "passed": False},
                    "msg": f"fidelity_target {target} not reached: {spent}. {best}. "
                           "Nothing was built; dest is as it was. "
                           "Try a larger search_budget (max_trials, max_seconds), a lower min_quantized_share, "
                           "a looser target, or another method (fp16 keeps fidelity)."}
        search_s = search.elapsed()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    winner = search.winner(chosen)
    extra = {
        "fidelity": {"request": request, "passed": True, "trial": winner["trial"],
                     "reached": {k: winner[k] for k in ("cosine", "mse", "mae", "max_abs")},
                     "quantized_share": winner["quantized_share"], "search_s": round(search_s, 3),
                     "ranking": ranking},
        "excluded_nodes": chosen["nodes_to_exclude"],
        "search": search.trials,
    }
    result = quantize(src, dest, method, model_name=model_name, options=chosen, extra_record=extra, **build_kwargs)
    result = _finish(result, method, extra)
    result["msg"] = (f"built {method} release meeting fidelity_target {target} after {len(search.trials)} "
                     f"trial(s) in {search_s:.0f} s: {_describe(winner)}; "
                     f"{len(chosen['nodes_to_exclude'])} node(s) kept in FP32. Pin it with: {result['pin_yaml']}")
    return result
