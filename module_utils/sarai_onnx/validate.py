"""onnx_validate: load, run and time a model (and its FP32 reference), compare outputs, apply gates.

What is measured, per model, in its own fresh child process (fork on Linux, spawn elsewhere) so
that one model's memory and threads cannot colour the other's numbers. Both processes stay up
while the timed runs alternate between them in rounds (A B B A ...), so other load on the host
falls on both alike:
  load_s             wall time of onnxruntime.InferenceSession(...) (graph optimisation included)
  first_inference_s  wall time of the first run() after loading
  p50/p90/p99/mean/min_ms  wall time of each of `runs` timed run() calls, after `warmup` untimed
                     ones (percentiles by linear interpolation, numpy's default)
  peak_rss_mb        the child's peak resident set (Linux VmHWM; ru_maxrss or the Windows peak
                     working set elsewhere): interpreter + onnxruntime + model + arena, what a
                     service process loading the model would show
  baseline_rss_mb    the child's resident set just before loading (peak - baseline = the model's share)
Against the reference (same inputs, same session options, same run): cosine, mse, mae, max_abs and
non-finite values per output (verdict.compare; the top-level ones are the worst over the gated
outputs), the task-level agreement gates, and speedup = reference p50 / model p50 with its bootstrap
95% interval (speed.measure_speedup: runs continue while it is wide; speedup_min judges its low end).
With state_map the inputs are a stream of windows: each model runs them in order, carrying its
state outputs into its state inputs, and the whole sequence is compared (timing: the first window).
The measuring sessions run with session.intra_op.allow_spinning=0: a worker waiting for its turn
must not keep the cores busy for the one being timed.
"""

import contextlib
import math
import multiprocessing
import os
import shutil
import tempfile
import time

import numpy as np

from . import env, files, speed, verdict
from .errors import SaraiError
from .inputs import generate_inputs, load_npz, load_sequence_npz
from .model import graph_inputs, load_graph, model_files, value_infos
from .progress import Progress
from .session import make_session, normalize_session_options

# gate -> (metric, comparison, needs a reference, lowest allowed limit, highest allowed limit)
GATES = {
    "cosine_min": ("cosine", ">=", True, -1.0, 1.0),
    "mse_max": ("mse", "<=", True, 0.0, None),
    "mae_max": ("mae", "<=", True, 0.0, None),
    "speedup_min": ("speedup_ci95_low", ">=", True, 0.0, None),  # the interval's low end, not the estimate
    "p50_max_ms": ("p50_ms", "<=", False, 0.0, None),
    "p99_max_ms": ("p99_ms", "<=", False, 0.0, None),
    "rss_max_mb": ("peak_rss_mb", "<=", False, 0.0, None),
}
SHAPES_GATE = "expected_output_shapes"
# Gates judged per output by verdict.gate_results (the others on the metrics, by evaluate_gates).
OUTPUT_GATES = tuple(verdict.FIDELITY)
GENERATED_INPUTS_WARNING = ("generated inputs: give real inputs with `inputs` (an .npz of real model inputs); "
                            "a fidelity verdict on random noise can differ from the one on real data")
SPINNING_KEY = "session.intra_op.allow_spinning"


def _check_limit(name, limit, where=None):
    """The limit of gate `name` as a float, in its range; errors name `where` (default: the gate)."""
    where = where or f"gate {name}"
    _, _, _, low, high = GATES[name]
    if isinstance(limit, bool):
        raise SaraiError(f"{where}={limit!r} must be a number")
    try:
        value = float(limit)
    except (TypeError, ValueError):
        raise SaraiError(f"{where}={limit!r} must be a number") from None
    if not math.isfinite(value) or value < low or (high is not None and value > high):
        bounds = f"in [{low:g}, {high:g}]" if high is not None else f">= {low:g}"
        raise SaraiError(f"{where}={limit!r} is out of range: it must be {bounds}")
    if name in ("speedup_min", "p50_max_ms", "p99_max_ms", "rss_max_mb") and value == 0:
        raise SaraiError(f"{where}={limit!r} is out of range: it must be > 0")
    return value


def normalize_gates(gates, has_reference):
    """Checked gate limits (None values dropped); out-of-range values are errors naming the gate.
    `ignore` (outputs no fidelity gate applies to) and `outputs` (per-output gates) are kept checked."""
    out = {}
    for name, limit in (gates or {}).items():
        if limit is None or name in (verdict.IGNORE, verdict.OUTPUTS):
            continue
        if name == SHAPES_GATE:
            out[name] = _check_shapes_gate(limit)
            continue
        if name not in GATES:
            known = sorted(list(GATES) + [SHAPES_GATE, verdict.IGNORE, verdict.OUTPUTS])
            raise SaraiError(f"unknown gate {name!r}: use {', '.join(known)}")
        if GATES[name][2] and not has_reference:
            raise SaraiError(f"gate {name} compares against a reference model: give `reference` "
                             "(the FP32 model) or drop the gate")
        out[name] = _check_limit(name, limit)
    ignore, outputs = verdict.normalize_output_gates(gates or {}, _check_limit)
    if (ignore or outputs) and not has_reference:
        raise SaraiError("gates ignore/outputs judge outputs against a reference model: give `reference` "
                         "(the FP32 model) or drop them")
    if ignore:
        out[verdict.IGNORE] = ignore
    if outputs:
        out[verdict.OUTPUTS] = outputs
    return out


def _check_shapes_gate(shapes):
    if not isinstance(shapes, dict) or not shapes:
        raise SaraiError(f"gate {SHAPES_GATE} must map output names to shapes, e.g. {{logits: [1, 16, 1024]}}")
    out = {}
    for name, shape in shapes.items():
        if not isinstance(shape, (list, tuple)) or not all(
                d is None or (isinstance(d, int) and not isinstance(d, bool) and d >= 0) for d in shape):
            raise SaraiError(f"gate {SHAPES_GATE}[{name!r}]={shape!r} must be a list of sizes (null = any)")
        out[name] = list(shape)
    return out


def evaluate_gates(metrics, gates):
    """[{gate, value, limit, passed}] for every gate judged on the metrics (the shapes gate: one entry
    per output); the per-output fidelity gates are verdict.gate_results'."""
    results = []
    for name, limit in gates.items():
        if name in OUTPUT_GATES or name in (verdict.IGNORE, verdict.OUTPUTS):
            continue
        if name == SHAPES_GATE:
            actual = metrics.get("output_shapes", {})
            for out_name, want in limit.items():
                got = actual.get(out_name)
                ok = got is not None and len(got) == len(want) and all(w is None or g == w for g, w in zip(got, want))
                results.append({"gate": f"{SHAPES_GATE}.{out_name}", "value": got, "limit": want, "passed": ok})
            continue
        metric, op, _, _, _ = GATES[name]
        value = metrics.get(metric)
        ok = value is not None and (value >= limit if op == ">=" else value <= limit)
        results.append({"gate": name, "value": value, "limit": limit, "passed": ok})
    return results


def describe_failure(f):
    if "output" in f:
        return verdict.describe(f)
    if f["gate"].startswith(SHAPES_GATE):
        return f"gate {f['gate']} failed: {f['value']} != {f['limit']}"
    if f["value"] is None:
        return f"gate {f['gate']} failed: value is not finite (limit {f['limit']:g})"
    op = "<" if GATES[f["gate"]][1] == ">=" else ">"
    if f["gate"] == "speedup_min":
        return (f"gate speedup_min failed: the 95% interval's low end {_fmt(f['value'])} {op} {f['limit']:g} "
                f"(speedup {f.get('estimate')}, interval {f.get('interval')})")
    return f"gate {f['gate']} failed: {_fmt(f['value'])} {op} {f['limit']:g}"


def _fmt(value):
    return f"{value:.6g}" if abs(value) < 1e-3 or abs(value) >= 1e6 else f"{value:.4g}"


# ---------------------------------------------------------------- measurement (child process)

def _measuring_options(session_options):
    """The session options with spinning off: a worker waiting for its turn sleeps instead of
    holding cores the timed one needs (the service's own setting is what sarai.yaml renders)."""
    entries = dict(session_options.get("config_entries") or {}, **{SPINNING_KEY: "0"})
    return dict(session_options, config_entries=entries)


def _worker_main(model, session_options, names, inputs_path, outputs_path, warmup, conn, sequence=None):
    """Child: load the model, run once (reply), warm up (reply), then serve ("run", n) until ("stop",).
    With sequence = (window names, state_map) the saved outputs are those of the whole stream."""
    try:
        baseline = env.rss_mb()
        with np.load(inputs_path, allow_pickle=False) as data:  # arrays by position: any input name works
            feeds = {name: data[f"arr_{i}"] for i, name in enumerate(names)}
            windows = {name: data[f"arr_{len(names) + i}"] for i, name in enumerate(sequence[0])} if sequence else None
        t0 = time.perf_counter()
        session = make_session(model, _measuring_options(session_options))
        load_s = time.perf_counter() - t0
        output_names = [o.name for o in session.get_outputs()]
        t0 = time.perf_counter()
        outputs = session.run(None, feeds)
        first_s = time.perf_counter() - t0
        if sequence:
            initial = {k: feeds[k] for k in sequence[1]}
            streamed = verdict.run_sequence(lambda f: session.run(None, f), windows, initial, sequence[1], output_names)
            outputs = [streamed[n] for n in output_names]
        np.savez(outputs_path, *outputs)
        conn.send({"ok": True, "load_s": load_s, "first_inference_s": first_s, "baseline_rss_mb": baseline,
                   "output_names": output_names})
        warmup_ms = []  # untimed for the metrics; onnx_session_tune sizes its runs from them
        for _ in range(warmup):
            t0 = time.perf_counter()
            session.run(None, feeds)
            warmup_ms.append((time.perf_counter() - t0) * 1000.0)
        conn.send({"ok": True, "warmup_ms": warmup_ms})  # warm: ready for timed runs
        while True:
            command = conn.recv()
            if command[0] != "run":
                break
            times = []
            for _ in range(command[1]):
                t0 = time.perf_counter()
                session.run(None, feeds)
                times.append((time.perf_counter() - t0) * 1000.0)
            conn.send({"ok": True, "times_ms": times})
        conn.send({"ok": True, "peak_rss_mb": env.peak_rss_mb()})
    except Exception as exc:  # reported to the parent, which raises SaraiError naming the model
        conn.send({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


class _Worker:
    """Parent side of one measuring process. `feeds` are what is timed; `sequence` = (windows,
    state_map) makes the compared outputs those of the stream (feeds then hold window 0 and the
    initial state)."""

    def __init__(self, ctx, model, session_options, feeds, warmup, workdir, tag, progress, sequence=None):
        self.model = model
        names = list(feeds)
        inputs_path = os.path.join(workdir, f"{tag}-inputs.npz")
        self.outputs_path = os.path.join(workdir, f"{tag}-outputs.npz")
        windows = sequence[0] if sequence else {}
        np.savez(inputs_path, *(feeds[n] for n in names), *windows.values())
        plan = (list(windows), sequence[1]) if sequence else None
        self.conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(model, session_options, names, inputs_path,
                                                          self.outputs_path, warmup, child_conn, plan))
        self.proc.start()
        child_conn.close()  # so recv() sees EOF if the child dies without answering
        self.ready = self._ask(None)
        progress.update("warmup", runs_done=0)
        self.ready["warmup_ms"] = self._ask(None)["warmup_ms"]
        self.times = []
        self.blocks = []  # the times of each run() call: one round of the alternation

    def _ask(self, command):
        try:
            if command is not None:
                self.conn.send(command)
            reply = self.conn.recv()
        except (EOFError, OSError):
            self.proc.join()
            raise SaraiError(f"measuring {self.model} crashed the measuring process (exit code "
                             f"{self.proc.exitcode}); check memory (dmesg for the OOM killer) and the model") from None
        if not reply["ok"]:
            self.proc.join()
            raise SaraiError(f"onnxruntime failed on {self.model}: {reply['error']}")
        return reply

    def run(self, count):
        block = self._ask(("run", count))["times_ms"]
        self.blocks.append(block)
        self.times += block

    def finish(self):
        """Stop the process; return (metrics, outputs)."""
        peak = self._ask(("stop",))["peak_rss_mb"]
        self.proc.join()
        with np.load(self.outputs_path, allow_pickle=False) as data:
            outputs = {name: data[f"arr_{i}"] for i, name in enumerate(self.ready["output_names"])}
        times = np.array(self.times, dtype=np.float64)
        base = self.ready["baseline_rss_mb"]
        metrics = {
            "load_s": round(self.ready["load_s"], 4),
            "first_inference_s": round(self.ready["first_inference_s"], 4),
            "p50_ms": round(float(np.percentile(times, 50)), 3),
            "p90_ms": round(float(np.percentile(times, 90)), 3),
            "p99_ms": round(float(np.percentile(times, 99)), 3),
            "mean_ms": round(float(times.mean()), 3),
            "min_ms": round(float(times.min()), 3),
            "peak_rss_mb": round(peak, 1),
            "baseline_rss_mb": round(base, 1) if base is not None else None,
            "output_shapes": {k: list(v.shape) for k, v in outputs.items()},
            "size_bytes": sum(os.path.getsize(p) for p in model_files(self.model)),
        }
        return metrics, outputs

    def kill(self):
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join()


def _context():
    return multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")


@contextlib.contextmanager
def live_workers(specs, warmup, workdir, progress=None):
    """One loaded, warmed-up measuring process per (path, feeds, session_options[, sequence]); all
    killed on exit."""
    progress = progress or Progress(None)
    ctx = _context()
    workers = []
    try:
        for i, (path, feeds, session_options, *sequence) in enumerate(specs):
            progress.update("load", runs_done=0)
            workers.append(_Worker(ctx, path, session_options, feeds, warmup, workdir, f"m{i}", progress,
                                   sequence[0] if sequence else None))
        yield workers
    finally:
        for w in workers:
            w.kill()


def alternate(workers, runs, rounds=None, progress=None):
    """`runs` timed runs on every worker, in rounds (default min(runs, 10)) whose order rotates by one
    each time (A B C, B C A, C A B, ...; with two workers A B, B A), so load from other work on the
    machine falls on all of them alike and no worker runs two blocks in a row (warm caches) more
    often than another."""
    rounds = min(runs, rounds or 10)
    done = 0
    for r in range(rounds):
        count = runs // rounds + (1 if r < runs % rounds else 0)
        shift = r % len(workers)
        for w in workers[shift:] + workers[:shift]:
            w.run(count)
            done += count
            if progress:
                progress.update("timed", runs_done=done)


def measure(models, session_options, warmup, runs, workdir, progress=None, budget_s=speed.DEFAULT_BUDGET_S,
            ci_width=speed.DEFAULT_CI_WIDTH):
    """([(metrics, outputs, times_ms)], speed or None) for [(path, feeds[, sequence])], each model in
    its own fresh process.

    With two models (the candidate, then its reference) the timed runs alternate in rounds and go
    on while the speedup's interval is wide (speed.measure_speedup). `progress` (a
    progress.Progress) hears of each phase and of the timed runs done after each round.
    """
    specs = [(path, feeds, session_options, *rest) for path, feeds, *rest in models]
    with live_workers(specs, warmup, workdir, progress) as workers:
        timing = None
        if len(workers) == 2:
            timing = speed.measure_speedup(workers[0], workers[1], runs, budget_s, ci_width, progress)
        else:
            alternate(workers, runs, progress=progress)
        return [w.finish() + (list(w.times),) for w in workers], timing


compare = verdict.compare  # the one comparison (tune and sensitivity use it too)


# ---------------------------------------------------------------- the entry point

def _output_path(option, path):
    """Absolute path of a file validate writes; its directory must exist (checked before measuring)."""
    if not path:
        return None
    path = os.path.abspath(path)
    if not os.path.isdir(os.path.dirname(path)):
        raise SaraiError(f"{option} {path}: directory {os.path.dirname(path)} does not exist; create it first")
    return path


def _samples(times):
    return [round(t, 3) for t in times]


def _feeds_for(path, signature, inputs, only_given=False):
    """Inputs cast to what this model declares (an fp16-io model takes float16 of the same values);
    only_given: cast those given (a stream's windows), without asking for the others."""
    feeds = {}
    for spec in signature:
        if only_given and spec["name"] not in inputs:
            continue
        if spec["name"] not in inputs:
            raise SaraiError(f"model {path} needs input {spec['name']!r}, which the other model does not have")
        arr = inputs[spec["name"]]
        feeds[spec["name"]] = arr if arr.dtype.name == spec["dtype"] else arr.astype(spec["dtype"])
    return feeds


def _graph_outputs(graph):
    return [o["name"] for o in value_infos(graph.graph.output)]


def _load_feeds(inputs, signature, input_shapes, input_values, seed, state_map):
    """(timed feeds, sequence or None): the sequence is (windows, state_map), the timed feeds its
    first window with the initial state."""
    if state_map:
        if not inputs:
            raise SaraiError("state_map needs `inputs`: an .npz with a leading window axis for the streamed "
                             "input(s), e.g. audio [windows, 1, 512]")
        windows, initial = load_sequence_npz(inputs, signature, state_map)
        return dict(verdict.window_feeds(windows, 0), **initial), (windows, state_map)
    if inputs:
        return load_npz(inputs, signature), None
    return generate_inputs(signature, input_shapes, input_values, seed), None


def validate(model, reference=None, session_options=None, inputs=None, input_shapes=None,
             input_values=None, seed=0, warmup=3, runs=20, gates=None, report=None, progress_file=None,
             state_map=None, speed_budget_s=speed.DEFAULT_BUDGET_S, speedup_ci_width=speed.DEFAULT_CI_WIDTH,
             check_mode=False):
    """Measure `model` (and `reference`), compare, and check gates. Returns the result dict.

    Gate failures are returned in `failed_gates` (the caller decides whether they fail the task);
    bad arguments and models that do not load raise SaraiError. `progress_file` receives
    {phase: load|warmup|timed|compare, runs_done, runs_total, elapsed_s} while it runs, also in
    check mode (it is a log of this run, not a result).
    """
    speed.check_runs(runs, warmup)
    speed_budget_s, speedup_ci_width = speed.check_budget(speed_budget_s, speedup_ci_width)
    gates = normalize_gates(gates, reference is not None)
    session_options = normalize_session_options(session_options)
    model = os.path.abspath(model)
    graph = load_graph(model)
    model_files(model, graph)
    signature = graph_inputs(graph)
    output_names = _graph_outputs(graph)
    verdict.check_output_names(gates, output_names)
    if state_map:
        state_map = verdict.check_state_map(state_map, [s["name"] for s in signature], output_names)
    ref_signature = None
    if reference:
        reference = os.path.abspath(reference)
        ref_graph = load_graph(reference)
        model_files(reference, ref_graph)
        ref_signature = graph_inputs(ref_graph)
    report = _output_path("report", report)
    progress_file = _output_path("progress_file", progress_file)
    feeds, sequence = _load_feeds(inputs, signature, input_shapes, input_values, seed, state_map)

    models = [(model, feeds, sequence)]
    if reference:
        ref_sequence = (_feeds_for(reference, ref_signature, sequence[0], only_given=True), state_map) if sequence else None
        models.append((reference, _feeds_for(reference, ref_signature, feeds), ref_sequence))
    progress = Progress(progress_file, runs_total=runs * len(models))
    workdir = tempfile.mkdtemp(prefix="sarai-validate-")
    try:
        with env.stdout_to_stderr():
            measured, timing = measure(models, session_options, warmup, runs, workdir, progress,
                                       speed_budget_s, speedup_ci_width)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    metrics, outputs, times = measured[0]
    progress.update("compare", force=True, runs_done=len(times) * len(models))
    ref_metrics, ref_times, output_results = None, None, []
    if reference:
        ref_metrics, ref_outputs, ref_times = measured[1]
        compared = compare(ref_outputs, outputs, gates.get(verdict.IGNORE, ()))
        metrics.update(compared)
        output_results = verdict.gate_results(compared, ref_outputs, outputs, gates, leading_window_axis=bool(sequence))
        metrics["speedup"] = timing["speedup"]
        metrics["speedup_ci95"] = timing["speedup_ci95"]
        metrics["speedup_ci95_low"] = timing["speedup_ci95"][0]
        metrics["size_ratio"] = round(metrics["size_bytes"] / ref_metrics["size_bytes"], 4)

    gate_results = output_results + evaluate_gates(metrics, gates)
    for g in gate_results:
        if g["gate"] == "speedup_min":
            g.update(estimate=metrics["speedup"], interval=metrics["speedup_ci95"])
    failed = [{k: v for k, v in r.items() if k != "passed"} for r in gate_results if not r["passed"]]
    warnings = [GENERATED_INPUTS_WARNING] if reference and not inputs else []
    result = {
        "changed": False, "model": model, "reference": reference, "metrics": metrics,
        "reference_metrics": ref_metrics, "session_options": session_options, "gates": gates,
        "gate_results": gate_results, "failed_gates": failed, "passed": not failed, "seed": seed, "warmup": warmup,
        "runs": len(times), "runs_asked": runs,
        "speed": timing, "state_map": state_map or None,
        "windows": len(next(iter(sequence[0].values()))) if sequence else None,
        "inputs": {k: {"shape": list(v.shape), "dtype": v.dtype.name} for k, v in feeds.items()},
        "input_source": inputs or "generated", "input_warning": warnings[0] if warnings else None,
        # Every timed run in the order measured, for distribution charts (metrics hold the summary).
        "latency_samples_ms": {"model": _samples(times), "reference": _samples(ref_times) if reference else None},
        "msg": "; ".join(describe_failure(f) for f in failed) if failed
        else f"{len(gate_results)} gate(s) passed",
        "report": report,
        **env.provenance(),
    }
    if report and not check_mode:
        files.write_json_atomic(report, result)
    result["warnings"] = warnings  # module.warn (after the report: the report has input_warning)
    return result
