"""Accuracy-aware quantization: the fastest build that meets a fidelity target, then build it.

quantize_to_target() builds the same release quantize() builds, after finding a method and options
whose output stays within `fidelity_target` of the FP32 source on the validation inputs.
  1. the requested dynamic INT8 options: when they pass they are built, no search;
  2. screens, one fidelity run each, in this order (the `candidates` of the budget can narrow it):
     dynamic_int8   per_channel, then the other weight type on the better per_channel setting;
     op_types       MatMul/Gemm only (when the model has Conv, Gather... weights), LSTM/GRU only (when it has them);
     nbits<B>_b<S>  block-wise weight-only MatMulNBits, B bits (8, 4), block size S (128, 64, 32), symmetric,
                    accuracy_level 4 ("matmul_nbits" means all six);
     mixed          when no dynamic INT8 set passed: the *fastest* of the dynamic INT8 sets screened (timed
                    side by side, race.py) with the k most sensitive MatMuls (sensitivity.rank_matmuls) kept
                    in FP32, k doubled until the target passes, then bisected down to the fewest that pass;
  3. every candidate that passed is timed side by side with FP32 and the requested build in alternating
     rounds (race.py, the variant's session options), the fastest beyond the noise wins, else the
     smaller file; when all are slower than `speedup_min` x FP32 nothing is built.
The budget (trials, wall time) bounds the screens: when it runs out the candidates that passed so far
are raced; the floor on the share of weight bytes quantized holds for every trial. Every trial is a real
build (quantize() into a scratch dir) judged against FP32 by the verdict onnx_validate applies
(verdict.compare and verdict.gate_results: per output, `ignore`d outputs, agreement gates, non-finite
values fail), on the inputs onnx_validate would generate, or the windows of a stream with its state
carried (state_map).

Why the mixed base is timed, not the closest to the target: QUInt8 weights run onnxruntime's u8u8
kernels, 2.1-2.3x slower per MatMul than QInt8's u8s8 (profiled); a base chosen by a hair of cosine
made the searched build 0.5x the speed of default INT8.

The release records the request (options, target, budget, inputs digest) and the outcome (method and
options built, every trial with its timing), so a second run with the same request reuses it without
searching again; a damaged release is rebuilt from the recorded method and options. When nothing
passes, nothing is built and dest stays as it was.
"""

import hashlib
import json
import math
import os
import shutil
import tempfile
import time

import numpy as np

from .coverage import DYNAMIC_DEFAULT_OPS, planned_weights
from .errors import SaraiError
from .inputs import generate_inputs, load_npz, load_sequence_npz
from .model import graph_inputs, load_graph, model_files, value_infos
from .quantize import RECORD_NAME, describe_source, extra_of, normalize_options, quantize
from .race import RACE_SESSION_OPTIONS, pick_fastest, summarize, time_side_by_side
from .sensitivity import rank_matmuls
from .session import make_session
from .validate import normalize_gates
from .verdict import (FIDELITY, IGNORE, OUTPUTS, check_output_names, check_state_map, compare, gate_results,
                      run_sequence, shortfall, window_feeds)
from .weights import find_weights

TARGET_KEYS = tuple(FIDELITY) + (IGNORE, OUTPUTS)
BUDGET_DEFAULTS = {"max_trials": 16, "max_seconds": 3600.0, "min_quantized_share": 0.5, "candidates": None,
                   "speedup_min": None}
NBITS_BITS, NBITS_BLOCKS = (8, 4), (128, 64, 32)
NBITS_KINDS = tuple(f"nbits{b}_b{s}" for b in NBITS_BITS for s in NBITS_BLOCKS)
CANDIDATE_KINDS = ("dynamic_int8", "op_types") + NBITS_KINDS + ("mixed",)  # in screening order
SEARCHABLE = ("dynamic_int8",)
RECORD_KEYS = ("fidelity", "excluded_nodes", "search")
INPUT_SEED = 0  # onnx_validate's default seed: the search sees the inputs validation will generate


class _BudgetSpent(Exception):
    """The budget allows no further trial (the message says which limit)."""


class _TooSlow(Exception):
    """Faithful candidates exist but none reaches speedup_min (args: message, race record)."""


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
    out["candidates"] = normalize_candidates(out["candidates"])
    if out["speedup_min"] is not None:
        value = out["speedup_min"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise SaraiError(f"search_budget speedup_min={value!r} must be a number > 0 (the least speedup over "
                             "FP32 a faithful candidate must reach, e.g. 1.5)")
        out["speedup_min"] = float(value)
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


def normalize_candidates(candidates):
    """The candidate kinds to screen, in screening order (None: all); errors name the bad entry.

    An entry is a kind of CANDIDATE_KINDS, or matmul_nbits for every nbits<bits>_b<block size>."""
    if candidates is None:
        return list(CANDIDATE_KINDS)
    if isinstance(candidates, str) or not isinstance(candidates, list) or not candidates:
        raise SaraiError(f"search_budget candidates={candidates!r} must be a non-empty list of kinds like "
                         f"[dynamic_int8, nbits8_b128, mixed]; kinds: {', '.join(CANDIDATE_KINDS)}, matmul_nbits")
    chosen = set()
    for entry in candidates:
        if entry == "matmul_nbits":
            chosen.update(NBITS_KINDS)
            continue
        if not isinstance(entry, str) or entry not in CANDIDATE_KINDS:
            raise SaraiError(f"search_budget candidates: {_bad_kind(entry)}")
        chosen.add(entry)
    return [kind for kind in CANDIDATE_KINDS if kind in chosen]


def _bad_kind(entry):
    """Why `entry` is no candidate kind, naming the bad bits or block size of an nbits entry."""
    kinds = f"kinds: {', '.join(CANDIDATE_KINDS)}, matmul_nbits"
    parts = entry[len("nbits"):].split("_b") if isinstance(entry, str) and entry.startswith("nbits") else []
    if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
        if int(parts[0]) not in NBITS_BITS:
            return f"{entry!r}: bits {parts[0]} is not searched (use {' or '.join(map(str, NBITS_BITS))})"
        return f"{entry!r}: block size {parts[1]} is not searched (use {', '.join(map(str, NBITS_BLOCKS))})"
    return f"unknown kind {entry!r} ({kinds})"


def nbits_options(kind):
    """The matmul_nbits options of an nbits<bits>_b<block> kind: symmetric, accuracy_level 4."""
    bits, block = kind[len("nbits"):].split("_b")
    return {"bits": int(bits), "block_size": int(block), "symmetric": True, "accuracy_level": 4}


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
    """The variant's `quantization:` line that rebuilds this method and options without searching."""
    if method == "matmul_nbits":
        keys = ["bits", "block_size", "symmetric", "accuracy_level"]
        keys += [k for k in ("nodes_to_exclude", "op_types_to_quantize") if opts.get(k)]
    else:
        keys = ["weight_type", "per_channel", "reduce_range", "nodes_to_exclude"]
        if opts.get("op_types_to_quantize"):
            keys.append("op_types_to_quantize")
    fields = ", ".join(f"{k}: {json.dumps(opts[k])}" for k in keys)
    return f"quantization: {{method: {method}, {fields}}}"


def _describe(trial):
    return (f"trial {trial['trial']} ({trial['method']}, {trial['change']}): cosine {trial['cosine']}, MSE {trial['mse']}, "
            f"MAE {trial['mae']}, quantized share {trial['quantized_share']}")


# ---------------------------------------------------------------- the search

DYNAMIC = "dynamic_int8"
MATMUL_OPS = ("Gemm", "MatMul")
RECURRENT_OPS = ("GRU", "LSTM")


class _Search:
    """Trials in a scratch dir; each one a quantize() build measured against the FP32 outputs.

    The builds a later step times (the requested one, the dynamic INT8 sets, every passing one) stay
    in the scratch dir until the search ends; the others are removed at once. With sequence =
    (windows, state_map) each trial is judged on the whole stream; the race times one window."""

    def __init__(self, src, model_name, feeds, target, budget, scratch, build_kwargs, session_options,
                 sequence=None):
        self.src, self.model_name = src, model_name
        self.feeds, self.target, self.budget, self.sequence = feeds, target, budget, sequence
        self.scratch, self.build_kwargs, self.session_options = scratch, build_kwargs, session_options
        self.started = time.perf_counter()
        self.reference = run_outputs(src, feeds, sequence)
        check_output_names(target, list(self.reference), "fidelity_target")
        self.trials = []
        self.options = []  # (method, options) of each trial
        self.scores = []  # shortfall() of each trial
        self.paths = {}  # trial number -> model path of the builds kept for timing

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

    def trial(self, change, opts, method=DYNAMIC, kind=DYNAMIC, excluded_count=0, keep=False):
        self.check_budget()
        t0 = time.perf_counter()
        opts = normalize_options(method, opts)[1]  # the full set, as the release records it
        number = len(self.trials) + 1
        dest = os.path.join(self.scratch, f"trial-{number}")
        try:
            # The search judges the share itself (below); the trial build must not refuse it first.
            built = quantize(self.src, dest, method, model_name=self.model_name, options=opts,
                             **dict(self.build_kwargs, allow_low_coverage=True))
            outputs = run_outputs(built["model_path"], self.feeds, self.sequence)
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
        share = built["coverage"]["byte_share"]
        metrics = compare(self.reference, outputs, self.target.get(IGNORE, ()))
        results = gate_results(metrics, self.reference, outputs, self.target, leading_window_axis=bool(self.sequence))
        # The floor holds for every trial, the first included: quantizing nothing always meets a target.
        passed = all(g["passed"] for g in results) and share >= self.budget["min_quantized_share"]
        if passed or keep:
            self.paths[number] = built["model_path"]
        else:
            shutil.rmtree(dest, ignore_errors=True)
        trial = {"trial": number, "kind": kind, "method": method, "change": change,
                 "weight_type": opts.get("weight_type"), "per_channel": opts.get("per_channel"),
                 "reduce_range": opts.get("reduce_range"), "excluded_count": excluded_count,
                 "cosine": metrics["cosine"], "mse": metrics["mse"], "mae": metrics["mae"],
                 "max_abs": metrics["max_abs"], "quantized_share": share, "size_bytes": built["size_bytes"],
                 "outputs": metrics["outputs"], "failed_gates": [g for g in results if not g["passed"]],
                 "passed": passed, "seconds": round(time.perf_counter() - t0, 3), "options": opts}
        self.trials.append(trial)
        self.options.append((method, opts))
        self.scores.append(shortfall(results))
        return trial

    def best(self):
        """(trial, options) of the trial closest to the target."""
        index = min(range(len(self.scores)), key=self.scores.__getitem__)
        return self.trials[index], self.options[index][1]

    def time_trials(self, numbers):
        """{label: seconds samples} of FP32 ("fp32") and the kept builds of `numbers` (labels "trial-N")."""
        paths = {"fp32": self.src, **{f"trial-{n}": self.paths[n] for n in numbers}}
        return time_side_by_side(paths, self.feeds, self.session_options)

    def drop(self, number):
        self.paths.pop(number, None)
        shutil.rmtree(os.path.join(self.scratch, f"trial-{number}"), ignore_errors=True)


def _dynamic_sets(search, opts):
    """per_channel, then the other weight type on the better per_channel setting (all screened)."""
    if not opts["per_channel"]:
        search.trial("per_channel: true", dict(opts, per_channel=True), keep=True)
    base = min((t for t in search.trials if t["kind"] == DYNAMIC), key=lambda t: search.scores[t["trial"] - 1])
    base_opts = search.options[base["trial"] - 1][1]
    other = "QUInt8" if base_opts["weight_type"] == "QInt8" else "QInt8"
    candidate = dict(base_opts, weight_type=other)
    search.trial(f"weight_type: {other}" + (", per_channel: true" if candidate["per_channel"] else ""),
                 candidate, keep=True)


def _op_type_sets(source_graph, opts):
    """[(change, options)]: MatMul/Gemm only when the model has other weights dynamic INT8 rewrites
    (Conv then stays in FP32), LSTM/GRU only when it has them."""
    present = {op for w in find_weights(source_graph) for op, _, _ in w.readers}
    requested = set(opts["op_types_to_quantize"] or DYNAMIC_DEFAULT_OPS)
    out = []
    if present & requested - set(MATMUL_OPS) and present & set(MATMUL_OPS):
        out.append(("op types: MatMul/Gemm only", dict(opts, op_types_to_quantize=list(MATMUL_OPS))))
    recurrent = sorted(present & set(RECURRENT_OPS))
    if recurrent and present - set(recurrent):
        out.append((f"op types: {'/'.join(recurrent)} only", dict(opts, op_types_to_quantize=recurrent)))
    return out


def fastest_dynamic_base(search):
    """(options, note) of the fastest dynamic INT8 set screened (above the floor), timed side by side;
    within the noise of each other, QInt8 first, then the one closest to the target."""
    floor = search.budget["min_quantized_share"]
    numbers = [t["trial"] for t in search.trials
               if t["kind"] == DYNAMIC and t["excluded_count"] == 0 and t["quantized_share"] >= floor]
    if len(numbers) == 1:
        return search.options[numbers[0] - 1][1], None
    samples = search.time_trials(numbers)
    del samples["fp32"]
    # Within the noise (small models): QInt8 first, its u8s8 kernels being the fast path, then fidelity.
    prefer = {f"trial-{n}": (search.options[n - 1][1]["weight_type"] != "QInt8", search.scores[n - 1])
              for n in numbers}
    label, _, why = pick_fastest(samples, prefer)
    number = int(label.split("-")[1])
    for n in numbers:
        if n != 1 and not search.trials[n - 1]["passed"]:
            search.drop(n)  # only the requested build is timed again (the reference of the race)
    return search.options[number - 1][1], {"trial": number, "why": why.replace("the smallest file", "QInt8 first, then the closest to the target"),
                                           "timing": summarize(samples, label)}


def _with_excluded(opts, ranking, count):
    return dict(opts, nodes_to_exclude=sorted(set(opts["nodes_to_exclude"]) | {r["node"] for r in ranking[:count]}))


def _exclusions(search, source_graph, base, ranking):
    """Keep the k most sensitive nodes in FP32: k doubled until it passes, then bisected down.

    Returns the trial number of the passing build with the fewest exclusions found; raises _BudgetSpent
    (naming the limit) when none passed within the budget and the floor."""
    floor = search.budget["min_quantized_share"]
    allowed = 0  # the largest k whose planned byte share stays at or above the floor
    for k in range(1, len(ranking) + 1):
        if planned_weights(source_graph, DYNAMIC, _with_excluded(base, ranking, k))["byte_share"] < floor:
            break
        allowed = k
    if allowed == 0:
        raise _BudgetSpent(f"min_quantized_share {floor:g}: excluding even the most sensitive node "
                           "would quantize less than that")

    def attempt(k):
        return search.trial(f"keep the {k} most sensitive MatMul(s) in FP32", _with_excluded(base, ranking, k),
                            kind="mixed", excluded_count=k)

    failing, passing, k = 0, None, 1
    while passing is None:
        trial = attempt(k)
        if trial["passed"]:
            passing = trial
        elif k == allowed:
            raise _BudgetSpent(f"min_quantized_share {floor:g}: the {allowed} most sensitive node(s) are all "
                               "that can stay in FP32 above that share, and the target still fails")
        else:
            failing, k = k, min(2 * k, allowed)
    while passing["excluded_count"] - failing > 1:
        try:
            trial = attempt((failing + passing["excluded_count"]) // 2)
        except _BudgetSpent:
            break  # a passing set is in hand: the budget only stops the narrowing
        if trial["passed"]:
            search.drop(passing["trial"])  # more nodes in FP32: slower, the fewer exclusions compete
            passing = trial
        else:
            failing = trial["excluded_count"]
    return passing["trial"]


def _screen(search, source_graph, opts, kinds):
    """Screen the candidate kinds in order; returns (ranking, base note). Stops early (silently) when
    the budget is spent and something passed; raises _BudgetSpent when nothing did."""
    ranking, base_note = [], None
    try:
        if DYNAMIC in kinds:
            _dynamic_sets(search, opts)
        if "op_types" in kinds:
            for change, candidate in _op_type_sets(source_graph, opts):
                search.trial(change, candidate, kind="op_types", keep=True)
        for kind in kinds:
            if kind in NBITS_KINDS:
                search.trial(f"block-wise {kind}", nbits_options(kind), method="matmul_nbits", kind=kind)
        dynamic_passed = any(t["passed"] for t in search.trials if t["method"] == DYNAMIC)
        if "mixed" in kinds and not dynamic_passed:
            search.check_budget()  # ranking costs an FP32 pass and a pass over the weights: not worth it without a trial left
            base, base_note = fastest_dynamic_base(search)
            ranking = rank_matmuls(search.src, source_graph, search.feeds, base)
            if not ranking:
                raise _BudgetSpent("no MatMul left to keep in FP32 (no quantizable MatMul with a constant weight)")
            _exclusions(search, source_graph, base, ranking)
    except _BudgetSpent as spent:
        if not any(t["passed"] for t in search.trials):
            raise
        base_note = dict(base_note or {}, stopped=str(spent))
    if not any(t["passed"] for t in search.trials):
        raise _BudgetSpent("no candidate kind met the target (kinds screened: " + ", ".join(kinds) + ")")
    return ranking, base_note


def _race(search, speedup_min):
    """Time FP32, the requested build and every passing trial side by side; (winner trial, race record).
    Raises _TooSlow when every passing trial is slower than speedup_min x FP32."""
    # a passing mixed build superseded by one with fewer exclusions was dropped: it is not raced
    passing = [t["trial"] for t in search.trials if t["passed"] and t["trial"] in search.paths]
    samples = search.time_trials(sorted(set(passing) | {1}))
    timing = summarize(samples, "fp32")
    requested = timing["trial-1"]["p50_ms"]
    for trial in search.trials:
        measured = timing.get(f"trial-{trial['trial']}")
        if measured:
            trial.update(p50_ms=measured["p50_ms"], speedup=measured["speedup"],
                         speedup_interval=measured["interval"],
                         vs_requested=round(requested / measured["p50_ms"], 3))
    faithful = {f"trial-{n}": samples[f"trial-{n}"] for n in passing}
    label, tied, why = pick_fastest(faithful, {f"trial-{n}": search.trials[n - 1]["size_bytes"] for n in passing})
    winner = search.trials[int(label.split("-")[1]) - 1]
    record = {"session_options": search.session_options, "rounds": len(samples["fp32"]),
              "fp32_p50_ms": timing["fp32"]["p50_ms"], "requested_p50_ms": requested,
              "winner": winner["trial"], "tied": [int(t.split("-")[1]) for t in tied], "why": why,
              "speedup_min": speedup_min}
    if speedup_min is not None:
        fastest = max((search.trials[n - 1] for n in passing), key=lambda t: t["speedup"])
        if fastest["speedup"] < speedup_min:
            raise _TooSlow(f"every candidate meeting the target is slower than speedup_min {speedup_min:g}: the "
                           f"fastest, {_describe(fastest)}, ran {fastest['speedup']:g}x FP32 "
                           f"(interval {fastest['speedup_interval']}, p50 {fastest['p50_ms']} ms vs FP32 "
                           f"{timing['fp32']['p50_ms']} ms, timed side by side)", record)
    return winner, record


def _search(search, source_graph, opts):
    """(winner trial, ranking, race record or None) in the order of the module doc."""
    first = search.trial("requested options", opts, keep=True)
    if first["passed"]:
        return first, [], None
    floor = search.budget["min_quantized_share"]
    if first["quantized_share"] < floor and all(k == DYNAMIC or k == "mixed" for k in search.budget["candidates"]):
        raise _BudgetSpent(f"min_quantized_share {floor:g}: the requested options quantize only "
                           f"{first['quantized_share']:.1%} of the weight bytes, and every other trial "
                           "quantizes the same weights or fewer")
    ranking, base_note = _screen(search, source_graph, opts, search.budget["candidates"])
    winner, race = _race(search, search.budget["speedup_min"])
    if base_note:
        race["mixed_base"] = base_note
    return winner, ranking, race


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
                       state_map=None, session_options=None, **build_kwargs):
    """quantize() with the method and options a search finds for `fidelity_target`. Returns the result
    dict; failed=True (and nothing built) when no candidate meets the target within the budget or none
    reaches the budget's speedup_min. state_map: judge a stream (validation_sequence); session_options:
    what the race times with (RACE_SESSION_OPTIONS)."""
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
        result = quantize(src, dest, record["method"], model_name=model_name, options=record["options"],
                          check_mode=check_mode, extra_record=extra, **build_kwargs)
        return _finish(result, record["method"], extra)
    # Every check quantize() makes on src, dest and tmp_dir, before anything is written.
    planned = quantize(src, dest, method, model_name=model_name, options=opts, check_mode=True, **build_kwargs)
    if check_mode:
        return dict(planned, changed=True, msg=f"would search for options meeting fidelity_target {target} "
                    f"(budget {budget}) and build the {method} release in {dest}")

    scratch_parent = tmp_dir or os.path.dirname(dest)
    os.makedirs(scratch_parent, exist_ok=True)
    scratch = tempfile.mkdtemp(dir=scratch_parent, prefix=f".{os.path.basename(dest)}.search-")
    try:
        search = _Search(src, model_name, feeds, target, budget, scratch, build_kwargs,
                         RACE_SESSION_OPTIONS if session_options is None else session_options, sequence)
        try:
            winner, ranking, race = _search(search, source_graph, opts)
        except (_BudgetSpent, _TooSlow) as stop:
            if isinstance(stop, _TooSlow):
                reason, best, race = stop.args[0], "", stop.args[1]
                hint = "Lower speedup_min, loosen the target, or allow other candidate kinds."
            else:
                reason, race = f"fidelity_target {target} not reached: {stop}", None
                best = f" Best was {_describe(search.best()[0])}." if search.trials else " No trial ran."
                hint = ("Try a larger search_budget (max_trials, max_seconds), a lower min_quantized_share, "
                        "more candidate kinds, a looser target, or another method (fp16 keeps fidelity).")
            return {"changed": False, "failed": True, "dest": dest, "method": method, "options": opts,
                    "search": search.trials, "fidelity": {"request": request, "passed": False, "race": race},
                    "msg": f"{reason}.{best} Nothing was built; dest is as it was. {hint}"}
        search_s = search.elapsed()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    chosen_method, chosen = search.options[winner["trial"] - 1]
    extra = {
        "fidelity": {"request": request, "passed": True, "trial": winner["trial"],
                     "reached": {k: winner[k] for k in ("cosine", "mse", "mae", "max_abs")},
                     "quantized_share": winner["quantized_share"], "search_s": round(search_s, 3),
                     "ranking": ranking, "race": race},
        "excluded_nodes": chosen["nodes_to_exclude"],
        "search": search.trials,
    }
    result = quantize(src, dest, chosen_method, model_name=model_name, options=chosen, extra_record=extra,
                      **build_kwargs)
    result = _finish(result, chosen_method, extra)
    speed = f", {winner['speedup']:g}x FP32 side by side ({race['why']})" if race else ""
    result["msg"] = (f"built {chosen_method} release meeting fidelity_target {target} after {len(search.trials)} "
                     f"trial(s) in {search_s:.0f} s: {_describe(winner)}{speed}; "
                     f"{len(chosen['nodes_to_exclude'])} node(s) kept in FP32. Pin it with: {result['pin_yaml']}")
    return result
