"""onnx_session_tune: measure a grid of session options on the host and keep the fastest faithful one.

How, in order:
  grid     the current options, onnxruntime's defaults (the fidelity reference), the six
           configurations of the team's own grid search (seed_configs), then one option changed at a time
           from the current ones, then the rest of the product nearest first, up to max_configs.
  measure  like onnx_validate (validate.live_workers / alternate): every configuration in its own
           loaded, warmed-up process, timed runs alternating in rounds. Configurations are measured
           in batches of `processes` live processes (RAM: one model copy each); every batch also
           holds the current options twice, so each configuration is compared with the current
           ones measured beside it, and the two copies show the run-to-run noise of that batch.
           Every worker's session runs with session.intra_op.allow_spinning=0 (validate's measuring
           options): the processes waiting for their turn must not spin on the cores of the timed one.
  budget   after the first batch has loaded, its load and warm-up times size the rest: as many
           configurations as fit time_budget_s with at least MIN_RUNS timed runs each, then as many
           runs (up to `runs`) as fit. The required configurations are measured whatever it costs.
  choose   configurations whose outputs differ from the defaults' by more than fidelity_max_abs
           are dropped; the fastest of the rest replaces the current options only when its gain
           over them beats both the measured noise and min_gain_pct. Otherwise the current stay.
  confirm  the fastest of many noisy numbers is partly luck: the winner is measured again beside
           two fresh copies of the current options, and replaces them only when it beats them
           again beyond the threshold (so a second run on a busy host does not flip the choice).
  persist  the choice goes into the tuning fact (tune_fact), rewritten only when it changes.
"""

import itertools
import math
import os
import shutil
import tempfile
import time

import numpy as np

from . import env, files, tune_fact, tune_report
from .errors import SaraiError
from .inputs import generate_inputs, load_npz
from .model import graph_inputs, load_graph, model_files
from .session import EXEC_MODES, OPT_LEVELS, normalize_session_options
from .validate import alternate, compare, live_workers

TUNED_KEYS = ("graph_optimization_level", "intra_op_num_threads", "inter_op_num_threads", "execution_mode",
              "enable_cpu_mem_arena", "enable_mem_pattern")
# What onnxruntime uses for a key that is not set (SessionOptions() of 1.32; a unit test compares).
ORT_DEFAULTS = {"graph_optimization_level": "ORT_ENABLE_ALL", "intra_op_num_threads": 0,
                "inter_op_num_threads": 0, "execution_mode": "ORT_SEQUENTIAL",
                "enable_cpu_mem_arena": True, "enable_mem_pattern": True}
CURRENT, DEFAULTS = "current", "onnxruntime defaults"
MIN_RUNS = 20  # fewer timed runs than this make P99 the slowest run and P50 a coin toss
DEFAULT_MAX_CONFIGS = 24
DEFAULT_TIME_BUDGET_S = 60.0
DEFAULT_RUNS = 300
DEFAULT_PROCESSES = 6
DEFAULT_MIN_GAIN_PCT = 5.0
DEFAULT_FIDELITY_MAX_ABS = 1e-4


def host_cpus():
    """CPUs this process may run on (a cgroup or affinity mask can give fewer than the machine has)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def seed_configs(cpus):
    """[(label, options, their P50 ms)]: the six configurations of the team's grid search, from the
    latency report of 29 Oct 2025 ("Fase 3: Fine-Tuning de Configuraciones", qwen25_audio_int8 on
    a quad-core i7). Their baseline sets intra_op_num_threads = os.cpu_count(), so it is this host's
    count; "Threads=2" and "Single thread" are the literal counts they tried. "Arena 128MB" changed
    the CPU provider's arena_size, which is not a session option: in these keys it is the baseline
    (arena on), so it merges with seed 1."""
    base = {"graph_optimization_level": "ORT_ENABLE_EXTENDED", "intra_op_num_threads": cpus,
            "inter_op_num_threads": 0, "execution_mode": "ORT_SEQUENTIAL",
            "enable_cpu_mem_arena": True, "enable_mem_pattern": True}
    return [
        ("seed 1: BASELINE (EXTENDED + threads=cpu_count)", base, 260.9),
        ("seed 2: Graph ALL", dict(base, graph_optimization_level="ORT_ENABLE_ALL"), 262.2),
        ("seed 3: Threads=2", dict(base, intra_op_num_threads=2), 486.0),
        ("seed 4: Arena 128MB (arena_size is a provider option)", base, 261.4),
        ("seed 5: ORT_PARALLEL", dict(base, execution_mode="ORT_PARALLEL"), 498.0),
        ("seed 6: Single thread", dict(base, intra_op_num_threads=1), 955.4),
    ]


def default_values(cpus):
    """Values tried per key: every level and mode, threads 0 (onnxruntime picks) / 1 / half / all."""
    return {"graph_optimization_level": list(OPT_LEVELS),
            "intra_op_num_threads": sorted({0, 1, max(1, cpus // 2), cpus}),
            "inter_op_num_threads": [0, 2],
            "execution_mode": list(EXEC_MODES),
            "enable_cpu_mem_arena": [True, False],
            "enable_mem_pattern": [True, False]}


def _effective(options):
    """The six tuned values onnxruntime really runs with. inter_op_num_threads only sizes the pool of
    ORT_PARALLEL, so under ORT_SEQUENTIAL it is dropped: those configurations are the same."""
    eff = {key: options.get(key, ORT_DEFAULTS[key]) for key in TUNED_KEYS}
    if eff["execution_mode"] == "ORT_SEQUENTIAL":
        eff["inter_op_num_threads"] = None
    return eff


def _check_values(values, cpus):
    out = default_values(cpus)
    for key, choices in (values or {}).items():
        if key not in TUNED_KEYS:
            raise SaraiError(f"grid key {key!r} is not tuned: use {', '.join(TUNED_KEYS)}")
        if not isinstance(choices, list) or not choices:
            raise SaraiError(f"grid[{key!r}]={choices!r} must be a non-empty list of values")
        out[key] = [normalize_session_options({key: v})[key] for v in choices]
    return out


def build_grid(current, cpus, values=None, max_configs=DEFAULT_MAX_CONFIGS):
    """Configurations to measure, in priority order: [{labels, options, seed_p50_ms, required}].

    The first is the current options, as given; every other one carries the current options' other
    keys (config_entries, providers, ...) unchanged. Duplicates (same effective values) merge labels.
    """
    current = normalize_session_options(current)
    values = _check_values(values, cpus)
    extras = {k: v for k, v in current.items() if k not in TUNED_KEYS}
    grid, seen = [], {}

    def add(label, options, required, seed_p50_ms=None):
        key = tuple(sorted(_effective(options).items()))
        if key in seen:
            if not required:  # a product point that is already in the grid adds nothing
                return
            entry = seen[key]
            entry["labels"].append(label)
            entry["required"] = entry["required"] or required
            entry["seed_p50_ms"] = entry["seed_p50_ms"] or seed_p50_ms
            return
        seen[key] = {"labels": [label], "options": options, "seed_p50_ms": seed_p50_ms, "required": required}
        grid.append(seen[key])

    add(CURRENT, current, True)
    add(DEFAULTS, dict(extras), True)
    for label, tuned, p50 in seed_configs(cpus):
        add(label, dict(extras, **tuned), True, p50)
    required = len(grid)
    if max_configs < required:
        raise SaraiError(f"max_configs={max_configs} is too small: the current options, onnxruntime's "
                         f"defaults and the seeds' configurations make {required}; give at least {required}")
    current_eff = _effective(current)
    product = [dict(zip(TUNED_KEYS, combo)) for combo in itertools.product(*(values[k] for k in TUNED_KEYS))]
    # nearest first: one option changed from the current ones, then two, ... (stable within a distance)
    product.sort(key=lambda tuned: sum(_effective(tuned)[k] != current_eff[k] for k in TUNED_KEYS))
    for tuned in product:
        if len(grid) >= max_configs:
            break
        changed = [f"{k}={tuned[k]}" for k in TUNED_KEYS if _effective(tuned)[k] != current_eff[k]]
        if changed:
            add("grid: " + ", ".join(changed), dict(extras, **tuned), False)
    return grid


def plan(n_required, n_total, per_batch, setup_s, run_ms, budget_s, max_runs):
    """(configurations to measure, timed runs each, over budget?) for a budget of budget_s.

    Cost model: every live process costs setup_s (load, first inference, warm-up) plus its timed
    runs at run_ms each; a batch holds `per_batch` candidates and the current options twice.
    """
    for n in range(n_total, n_required - 1, -1):
        candidates = n - 1
        slots = candidates + 2 * max(1, math.ceil(candidates / per_batch))
        runs = int((budget_s - slots * setup_s) * 1000.0 / (slots * max(run_ms, 1e-3)))
        if runs >= MIN_RUNS:
            return n, min(runs, max_runs), False
    return n_required, MIN_RUNS, True


def choose(current, candidates, noise_pct, min_gain_pct):
    """(the winning entry, why). The fastest faithful candidate wins only by more than the noise."""
    threshold = max(noise_pct, min_gain_pct)
    faithful = [c for c in candidates if c["faithful"]]
    best = max(faithful, key=lambda c: c["gain_pct"], default=None)
    if not current["faithful"] and best is not None:
        return best, (f"the current options change the outputs by {_abs(current['max_abs'])} (more than "
                      f"allowed); #{best['index']} is the fastest faithful configuration")
    if best is not None and best["gain_pct"] > threshold:
        return best, (f"#{best['index']} is {best['gain_pct']:.1f}% faster than the current options, "
                      f"more than the noise threshold of {threshold:.1f}%")
    if best is None:
        return current, "no other configuration kept the outputs: the current options stay"
    return current, (f"the fastest faithful configuration (#{best['index']}, {best['gain_pct']:+.1f}%) does not "
                     f"beat the current options by more than the noise threshold of {threshold:.1f}%: "
                     "the current options stay")


def _abs(max_abs):
    return "non-finite values" if max_abs is None else f"{max_abs:.3g}"


def _status(entry, chosen, threshold, fidelity_max_abs):
    if entry is chosen:
        return "chosen"
    if entry["index"] == 0:
        return "current (replaced)" if chosen["index"] != 0 else "current"
    if not entry["faithful"]:
        return f"dropped: outputs differ by {_abs(entry['max_abs'])} > {fidelity_max_abs:g}"
    if entry["gain_pct"] <= 0:
        return "slower"
    if entry["gain_pct"] <= threshold:
        return "within noise"
    return "faster, not the fastest"


def _summary(times):
    t = np.asarray(times, dtype=np.float64)
    return {"p50_ms": round(float(np.percentile(t, 50)), 3), "p90_ms": round(float(np.percentile(t, 90)), 3),
            "p99_ms": round(float(np.percentile(t, 99)), 3)}


def _anchor_noise_pct(a, b):
    return round(abs(a - b) / min(a, b) * 100.0, 2) if min(a, b) > 0 else 0.0


def _size_run(workers, setup_s, grid, n_loaded, per_batch, budget_s, max_runs):
    """(configurations to measure, info) from what the first batch cost: its processes' setup time
    and the median of the current options' warm-up runs."""
    warm = workers[0].ready["warmup_ms"] + workers[1].ready["warmup_ms"]
    run_ms = float(np.median(warm)) if warm else workers[0].ready["first_inference_s"] * 1000.0
    n_required = sum(1 for g in grid if g["required"])
    n, runs, over = plan(max(n_required, n_loaded), len(grid), per_batch, setup_s, run_ms, budget_s, max_runs)
    return n, {"setup_s": round(setup_s, 3), "run_ms_estimate": round(run_ms, 3), "runs": runs,
               "over_budget": over, "not_measured": [g["labels"] for g in grid[n:]]}


def _measure_batch(model, feeds, anchor, batch, warmup, workdir, size_run):
    """Measure the current options twice and `batch` side by side. `size_run(workers, setup_s)`
    returns the timed runs (it sizes the whole run on the first batch). Returns
    [(metrics, outputs, times)] in the order current, current, *batch."""
    specs = [(model, feeds, anchor["options"])] * 2 + [(model, feeds, c["options"]) for c in batch]
    t0 = time.monotonic()
    try:
        with live_workers(specs, warmup, workdir) as workers:
            runs = size_run(workers, (time.monotonic() - t0) / len(workers))
            alternate(workers, runs, rounds=3 * len(workers))  # every worker in every position
            return [w.finish() + (list(w.times),) for w in workers]
    except SaraiError as exc:
        labels = "; ".join(", ".join(c["labels"]) for c in [anchor] + batch)
        raise SaraiError(f"measuring {labels} failed: {exc}") from None


def measure_grid(model, feeds, grid, warmup, max_runs, processes, budget_s, workdir):
    """Measure `grid` (grid[0] = current options) in batches. Returns (entries, info): one entry per
    measured configuration (the current options first, P50/P99 over all their copies) and the run's
    sizing, noise and timing."""
    anchor, candidates = grid[0], grid[1:]
    per_batch = processes - 2
    started = time.monotonic()
    current = dict(anchor, index=0, batches=[])
    entries, anchor_times, info = [current], [], {}

    def size_run(workers, setup_s):
        nonlocal candidates
        if not info:
            n, sized = _size_run(workers, setup_s, grid, len(workers) - 1, per_batch, budget_s, max_runs)
            info.update(sized)
            candidates = candidates[:n - 1]
        return info["runs"]

    batch_no, last_batch_s = 0, 0.0
    while batch_no * per_batch < len(candidates):
        batch = candidates[batch_no * per_batch:(batch_no + 1) * per_batch]
        if not any(c["required"] for c in batch) and time.monotonic() - started + last_batch_s > budget_s:
            # the host got slower than the first batch promised: stop before the budget is spent
            info["not_measured"] = [c["labels"] for c in candidates[batch_no * per_batch:]] + info["not_measured"]
            break
        batch_dir = os.path.join(workdir, f"batch{batch_no}")
        os.mkdir(batch_dir)
        t0 = time.monotonic()
        measured = _measure_batch(model, feeds, anchor, batch, warmup, batch_dir, size_run)
        last_batch_s = time.monotonic() - t0
        batch_no += 1
        (copy1, outputs, times1), (copy2, _, times2) = measured[:2]
        here = _summary(times1 + times2)  # the current options in this batch
        anchor_times += times1 + times2
        current["batches"].append({"batch": batch_no, "p50_ms": here["p50_ms"], "p99_ms": here["p99_ms"],
                                   "copies_p50_ms": [copy1["p50_ms"], copy2["p50_ms"]],
                                   "noise_pct": _anchor_noise_pct(copy1["p50_ms"], copy2["p50_ms"])})
        if batch_no == 1:
            current.update(load_s=copy1["load_s"], peak_rss_mb=copy1["peak_rss_mb"], outputs=outputs)
        for config, (metrics, outputs, _) in zip(batch, measured[2:]):
            entries.append(dict(config, index=len(entries), batch=batch_no, outputs=outputs,
                                gain_pct=round((here["p50_ms"] - metrics["p50_ms"]) / here["p50_ms"] * 100.0, 2),
                                **{k: metrics[k] for k in ("p50_ms", "p90_ms", "p99_ms", "load_s", "peak_rss_mb")}))
    current.update(_summary(anchor_times), gain_pct=0.0)
    info.update(noise_pct=max(b["noise_pct"] for b in current["batches"]), batches=batch_no,
                elapsed_s=round(time.monotonic() - started, 1))
    return entries, info


def confirm(model, feeds, current, winner, warmup, runs, workdir):
    """The winner measured again in a batch of its own, beside two copies of the current options:
    {index, p50_ms, p99_ms, baseline_p50_ms, gain_pct, noise_pct}."""
    measured = _measure_batch(model, feeds, current, [winner], warmup, workdir, lambda workers, setup_s: runs)
    (copy1, _, times1), (copy2, _, times2), (again, _, _) = measured
    here = _summary(times1 + times2)
    return {"index": winner["index"], "p50_ms": again["p50_ms"], "p99_ms": again["p99_ms"],
            "baseline_p50_ms": here["p50_ms"],
            "gain_pct": round((here["p50_ms"] - again["p50_ms"]) / here["p50_ms"] * 100.0, 2),
            "noise_pct": _anchor_noise_pct(copy1["p50_ms"], copy2["p50_ms"])}


def _confirmed(winner, confirmation, threshold):
    """(kept?, why) for a winner measured again: it must beat the current options beyond the
    threshold (and beyond the confirmation batch's own noise) a second time."""
    needed = max(threshold, confirmation["noise_pct"])
    if confirmation["gain_pct"] > needed:
        return True, (f"#{winner['index']} is {winner['gain_pct']:.1f}% faster than the current options, and "
                      f"{confirmation['gain_pct']:.1f}% measured again beside them (threshold {needed:.1f}%)")
    return False, (f"#{winner['index']} was {winner['gain_pct']:.1f}% faster in its batch but "
                   f"{confirmation['gain_pct']:+.1f}% measured again beside the current options (threshold "
                   f"{needed:.1f}%): not confirmed, the current options stay")


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SaraiError(f"{name}={value!r} must be an integer >= {low}")


def _check_number(name, value, low):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
        raise SaraiError(f"{name}={value!r} must be a number >= {low:g}")


def _mem_available_mb():
    """MemAvailable in MiB, or None where /proc/meminfo is not there."""
    try:
        with open("/proc/meminfo") as fh:
            return next(int(line.split()[1]) / 1024.0 for line in fh if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return None


def processes_that_fit(model, processes):
    """Fewer live processes when RAM is short: each holds a copy of the model (its files' size plus
    ~128 MiB of interpreter and onnxruntime, as onnx_validate's workers measure), and half of
    MemAvailable is left to the service and everything else on the host."""
    available_mb = _mem_available_mb()
    if available_mb is None:
        return processes
    per_process_mb = sum(os.path.getsize(p) for p in model_files(model)) / 2**20 + 128
    fit = int(available_mb / 2 // per_process_mb)
    if fit < 3:
        raise SaraiError(f"not enough free memory to tune {model}: 3 processes of ~{per_process_mb:.0f} MiB each "
                         f"need {3 * per_process_mb:.0f} MiB within half of MemAvailable ({available_mb:.0f} MiB); "
                         "free memory or tune while the host is idle")
    return min(processes, fit)


def tune(model, release, session_options=None, inputs=None, input_shapes=None, input_values=None, seed=0,
         warmup=3, runs=DEFAULT_RUNS, grid=None, max_configs=DEFAULT_MAX_CONFIGS,
         time_budget_s=DEFAULT_TIME_BUDGET_S, processes=DEFAULT_PROCESSES,
         fidelity_max_abs=DEFAULT_FIDELITY_MAX_ABS, min_gain_pct=DEFAULT_MIN_GAIN_PCT,
         fact_path=tune_fact.DEFAULT_PATH, report=None, check_mode=False):
    """Tune `model` (release `release`) on this host; returns the result dict (changed: the stored
    choice for the release changed). Bad arguments raise SaraiError before anything is measured."""
    if not release or not isinstance(release, str):
        raise SaraiError(f"release={release!r} must name the release being tuned (e.g. int8-0123456789ab)")
    _check_int("warmup", warmup, 1)
    _check_int("runs", runs, MIN_RUNS)
    _check_int("max_configs", max_configs, 2)
    _check_int("processes", processes, 3)
    _check_number("time_budget_s", time_budget_s, 1)
    _check_number("fidelity_max_abs", fidelity_max_abs, 0)
    _check_number("min_gain_pct", min_gain_pct, 0)
    model = os.path.abspath(model)
    fact_path = os.path.abspath(fact_path)
    fact = tune_fact.load(fact_path)
    stored = tune_fact.stored_options(fact, release)
    try:
        current = normalize_session_options(stored if stored is not None else session_options)
    except SaraiError as exc:
        where = f"tuning fact {fact_path}, release {release}" if stored is not None else "session_options"
        raise SaraiError(f"{where}: {exc}") from None
    cpus = host_cpus()
    configs = build_grid(current, cpus, grid, max_configs)
    graph = load_graph(model)
    model_files(model, graph)
    signature = graph_inputs(graph)
    if report:
        report = os.path.abspath(report)
        if not report.endswith(".json") or not os.path.isdir(os.path.dirname(report)):
            raise SaraiError(f"report {report} must be a .json path in an existing directory (the Markdown "
                             "goes beside it as .md); create the directory first")
    feeds = load_npz(inputs, signature) if inputs else generate_inputs(signature, input_shapes, input_values, seed)
    processes = processes_that_fit(model, processes)

    workdir = tempfile.mkdtemp(prefix="sarai-tune-")
    try:
        with env.stdout_to_stderr():
            entries, info = measure_grid(model, feeds, configs, warmup, runs, processes, time_budget_s, workdir)
            reference = next(e for e in entries if DEFAULTS in e["labels"])["outputs"]
            for e in entries:
                e["max_abs"] = compare(reference, e.pop("outputs"))["max_abs"]
                e["faithful"] = e["max_abs"] is not None and e["max_abs"] <= fidelity_max_abs
            current_entry = entries[0]
            threshold = max(info["noise_pct"], min_gain_pct)
            chosen, why = choose(current_entry, entries[1:], info["noise_pct"], min_gain_pct)
            winner, confirmation = chosen, None
            # An unfaithful current is replaced whatever the speed: nothing to confirm then.
            if winner is not current_entry and current_entry["faithful"]:
                os.mkdir(os.path.join(workdir, "confirm"))
                confirmation = confirm(model, feeds, current_entry, winner, warmup, info["runs"],
                                       os.path.join(workdir, "confirm"))
                confirmation["confirmed"], why = _confirmed(winner, confirmation, threshold)
                chosen = winner if confirmation["confirmed"] else current_entry
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for e in entries:
        e["status"] = _status(e, chosen, threshold, fidelity_max_abs)
    if confirmation and not confirmation["confirmed"]:
        winner["status"] = f"not confirmed: {confirmation['gain_pct']:+.1f}% measured again"

    # What is stored is the side-by-side measurement that decided (the confirmation when there was one).
    decided = confirmation if confirmation and confirmation["confirmed"] else {
        "p50_ms": chosen["p50_ms"], "p99_ms": chosen["p99_ms"], "baseline_p50_ms": current_entry["p50_ms"],
        "noise_pct": info["noise_pct"]}
    entry = {"session_options": chosen["options"], "p50_ms": decided["p50_ms"], "p99_ms": decided["p99_ms"],
             "baseline_p50_ms": decided["baseline_p50_ms"], "noise_pct": decided["noise_pct"], "time": env.utc_now(),
             "report": report}
    changed = stored != chosen["options"]
    stored_verdict = "unchanged" if not changed else "recorded" if stored is None else "changed"
    after = tune_fact.with_entry(fact, release, entry) if changed else fact
    result = {
        "changed": changed, "model": model, "release": release,
        "session_options": chosen["options"], "previous_options": stored, "current_options": current,
        "current_source": "fact" if stored is not None else "session_options",
        "improved": chosen is not current_entry, "chosen": chosen["index"], "reason": why,
        "p50_ms": chosen["p50_ms"], "p99_ms": chosen["p99_ms"], "baseline_p50_ms": current_entry["p50_ms"],
        "gain_pct": chosen["gain_pct"], "noise_pct": info["noise_pct"], "threshold_pct": threshold,
        "confirmation": confirmation,
        "fidelity_max_abs": fidelity_max_abs, "min_gain_pct": min_gain_pct,
        "runs": info["runs"], "warmup": warmup, "processes": processes, "cpus": cpus,
        "batches": info["batches"], "elapsed_s": info["elapsed_s"], "time_budget_s": time_budget_s,
        "over_budget": info["over_budget"], "run_ms_estimate": info["run_ms_estimate"],
        "setup_s": info["setup_s"], "grid": entries, "not_measured": info["not_measured"],
        "fact_path": fact_path, "fact": after["releases"][release], "report": report,
        "report_md": report[:-len(".json")] + ".md" if report else None,
        "inputs": {k: {"shape": list(v.shape), "dtype": v.dtype.name} for k, v in feeds.items()},
        "stored": stored_verdict, "msg": f"{release}: {why}; stored choice {stored_verdict}",
        **env.provenance(),
    }
    if changed:
        result["diff"] = {"before": tune_fact.render(fact), "after": tune_fact.render(after),
                          "before_header": fact_path, "after_header": fact_path}
    if not check_mode:
        if changed:
            tune_fact.save(fact_path, after)
        if report:
            files.write_json_atomic(report, result)
            files.write_file_atomic(result["report_md"], tune_report.markdown(result).encode("utf-8"))
    return result
