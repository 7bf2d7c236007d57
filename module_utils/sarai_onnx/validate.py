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
Against the reference (same inputs, same session options, same run): cosine, mse, mae and max_abs
over all outputs flattened together (float64), and speedup = reference p50 / model p50.
"""

import contextlib
import math
import multiprocessing
import os
import shutil
import tempfile
import time

import numpy as np

from . import env, files
from .errors import SaraiError
from .inputs import generate_inputs, load_npz
from .model import graph_inputs, load_graph, model_files
from .progress import Progress
from .session import make_session, normalize_session_options

# gate -> (metric, comparison, needs a reference, lowest allowed limit, highest allowed limit)
GATES = {
    "cosine_min": ("cosine", ">=", True, -1.0, 1.0),
    "mse_max": ("mse", "<=", True, 0.0, None),
    "mae_max": ("mae", "<=", True, 0.0, None),
    "speedup_min": ("speedup", ">=", True, 0.0, None),
    "p50_max_ms": ("p50_ms", "<=", False, 0.0, None),
    "p99_max_ms": ("p99_ms", "<=", False, 0.0, None),
    "rss_max_mb": ("peak_rss_mb", "<=", False, 0.0, None),
}
SHAPES_GATE = "expected_output_shapes"


def normalize_gates(gates, has_reference):
    """Checked gate limits (None values dropped); out-of-range values are errors naming the gate."""
    out = {}
    for name, limit in (gates or {}).items():
        if limit is None:
            continue
        if name == SHAPES_GATE:
            out[name] = _check_shapes_gate(limit)
            continue
        if name not in GATES:
            raise SaraiError(f"unknown gate {name!r}: use {', '.join(sorted(GATES) + [SHAPES_GATE])}")
        _, _, needs_ref, low, high = GATES[name]
        if isinstance(limit, bool):
            raise SaraiError(f"gate {name}={limit!r} must be a number")
        try:
            value = float(limit)
        except (TypeError, ValueError):
            raise SaraiError(f"gate {name}={limit!r} must be a number") from None
        if not math.isfinite(value) or value < low or (high is not None and value > high):
            where = f"in [{low:g}, {high:g}]" if high is not None else f">= {low:g}"
            raise SaraiError(f"gate {name}={limit!r} is out of range: it must be {where}")
        if name in ("speedup_min", "p50_max_ms", "p99_max_ms", "rss_max_mb") and value == 0:
            raise SaraiError(f"gate {name}={limit!r} is out of range: it must be > 0")
        if needs_ref and not has_reference:
            raise SaraiError(f"gate {name} compares against a reference model: give `reference` "
                             "(the FP32 model) or drop the gate")
        out[name] = value
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
    """[{gate, value, limit, passed}] for every gate (the shapes gate: one entry per output)."""
    results = []
    for name, limit in gates.items():
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
    if f["gate"].startswith(SHAPES_GATE):
        return f"gate {f['gate']} failed: {f['value']} != {f['limit']}"
    if f["value"] is None:
        return f"gate {f['gate']} failed: value is not finite (limit {f['limit']:g})"
    op = "<" if GATES[f["gate"]][1] == ">=" else ">"
    return f"gate {f['gate']} failed: {_fmt(f['value'])} {op} {f['limit']:g}"


def _fmt(value):
    return f"{value:.6g}" if abs(value) < 1e-3 or abs(value) >= 1e6 else f"{value:.4g}"


# ---------------------------------------------------------------- measurement (child process)

def _worker_main(model, session_options, names, inputs_path, outputs_path, warmup, conn):
    """Child: load the model, run once (reply), warm up (reply), then serve ("run", n) until ("stop",)."""
    try:
        baseline = env.rss_mb()
        with np.load(inputs_path, allow_pickle=False) as data:  # arrays by position: any input name works
            feeds = {name: data[f"arr_{i}"] for i, name in enumerate(names)}
        t0 = time.perf_counter()
        session = make_session(model, session_options)
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        outputs = session.run(None, feeds)
        first_s = time.perf_counter() - t0
        np.savez(outputs_path, *outputs)
        conn.send({"ok": True, "load_s": load_s, "first_inference_s": first_s, "baseline_rss_mb": baseline,
                   "output_names": [o.name for o in session.get_outputs()]})
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
    """Parent side of one measuring process."""

    def __init__(self, ctx, model, session_options, feeds, warmup, workdir, tag, progress):
        self.model = model
        names = list(feeds)
        inputs_path = os.path.join(workdir, f"{tag}-inputs.npz")
        self.outputs_path = os.path.join(workdir, f"{tag}-outputs.npz")
        np.savez(inputs_path, *(feeds[n] for n in names))
        self.conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(model, session_options, names, inputs_path,
                                                          self.outputs_path, warmup, child_conn))
        self.proc.start()
        child_conn.close()  # so recv() sees EOF if the child dies without answering
        self.ready = self._ask(None)
        progress.update("warmup", runs_done=0)
        self.ready["warmup_ms"] = self._ask(None)["warmup_ms"]
        self.times = []

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
        self.times += self._ask(("run", count))["times_ms"]

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
    """One loaded, warmed-up measuring process per (path, feeds, session_options); all killed on exit."""
    progress = progress or Progress(None)
    ctx = _context()
    workers = []
    try:
        for i, (path, feeds, session_options) in enumerate(specs):
            progress.update("load", runs_done=0)
            workers.append(_Worker(ctx, path, session_options, feeds, warmup, workdir, f"m{i}", progress))
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


def measure(models, session_options, warmup, runs, workdir, progress=None):
    """[(metrics, outputs, times_ms)] for [(path, feeds)], each model in its own fresh process.

    With two models the timed runs alternate in rounds (A B B A ...), so load from other work on
    the machine falls on both alike and the speedup stays meaningful on a busy host. `progress`
    (a progress.Progress) hears of each phase and of the timed runs done after each round.
    """
    specs = [(path, feeds, session_options) for path, feeds in models]
    with live_workers(specs, warmup, workdir, progress) as workers:
        alternate(workers, runs, progress=progress)
        return [w.finish() + (list(w.times),) for w in workers]


def compare(reference, outputs):
    """cosine, mse, mae, max_abs over every output flattened together (float64)."""
    missing = [n for n in reference if n not in outputs]
    if missing:
        raise SaraiError(f"the model lacks the reference output(s) {', '.join(missing)}: "
                         "it is not a variant of the reference model")
    for name, ref in reference.items():
        if ref.shape != outputs[name].shape:
            raise SaraiError(f"output {name!r} has shape {list(outputs[name].shape)} but the reference gives "
                             f"{list(ref.shape)}: the models are not comparable")
    a = np.concatenate([np.asarray(reference[n], dtype=np.float64).ravel() for n in reference])
    b = np.concatenate([np.asarray(outputs[n], dtype=np.float64).ravel() for n in reference])
    diff = b - a
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        cosine = 1.0
    elif na == 0 or nb == 0:
        cosine = 0.0
    else:
        cosine = float(np.dot(a, b) / (na * nb))
    result = {"cosine": cosine, "mse": float(np.mean(diff * diff)), "mae": float(np.mean(np.abs(diff))),
              "max_abs": float(np.max(np.abs(diff))) if diff.size else 0.0,
              "nonfinite_values": int(np.count_nonzero(~np.isfinite(b)))}
    # NaN is not JSON: a non-finite metric becomes None, and any gate on it fails.
    return {k: (round(v, 8) if math.isfinite(v) else None) if isinstance(v, float) else v
            for k, v in result.items()}


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


def _feeds_for(path, signature, inputs):
    """Inputs cast to what this model declares (an fp16-io model takes float16 of the same values)."""
    feeds = {}
    for spec in signature:
        if spec["name"] not in inputs:
            raise SaraiError(f"model {path} needs input {spec['name']!r}, which the other model does not have")
        arr = inputs[spec["name"]]
        feeds[spec["name"]] = arr if arr.dtype.name == spec["dtype"] else arr.astype(spec["dtype"])
    return feeds


def validate(model, reference=None, session_options=None, inputs=None, input_shapes=None,
             input_values=None, seed=0, warmup=3, runs=20, gates=None, report=None, progress_file=None,
             check_mode=False):
    """Measure `model` (and `reference`), compare, and check gates. Returns the result dict.

    Gate failures are returned in `failed_gates` (the caller decides whether they fail the task);
    bad arguments and models that do not load raise SaraiError. `progress_file` receives
    {phase: load|warmup|timed|compare, runs_done, runs_total, elapsed_s} while it runs, also in
    check mode (it is a log of this run, not a result).
    """
    if not isinstance(warmup, int) or warmup < 0:
        raise SaraiError(f"warmup={warmup!r} must be an integer >= 0")
    if not isinstance(runs, int) or runs < 1:
        raise SaraiError(f"runs={runs!r} must be an integer >= 1")
    gates = normalize_gates(gates, reference is not None)
    session_options = normalize_session_options(session_options)
    model = os.path.abspath(model)
    graph = load_graph(model)
    model_files(model, graph)
    signature = graph_inputs(graph)
    ref_signature = None
    if reference:
        reference = os.path.abspath(reference)
        ref_graph = load_graph(reference)
        model_files(reference, ref_graph)
        ref_signature = graph_inputs(ref_graph)
    report = _output_path("report", report)
    progress_file = _output_path("progress_file", progress_file)
    if inputs:
        feeds = load_npz(inputs, signature)
    else:
        feeds = generate_inputs(signature, input_shapes, input_values, seed)

    models = [(model, feeds)]
    if reference:
        models.append((reference, _feeds_for(reference, ref_signature, feeds)))
    progress = Progress(progress_file, runs_total=runs * len(models))
    workdir = tempfile.mkdtemp(prefix="sarai-validate-")
    try:
        with env.stdout_to_stderr():
            measured = measure(models, session_options, warmup, runs, workdir, progress)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    progress.update("compare", force=True, runs_done=runs * len(models))
    metrics, outputs, times = measured[0]
    ref_metrics, ref_times = None, None
    if reference:
        ref_metrics, ref_outputs, ref_times = measured[1]
        metrics.update(compare(ref_outputs, outputs))
        metrics["speedup"] = round(ref_metrics["p50_ms"] / metrics["p50_ms"], 4) if metrics["p50_ms"] else None
        metrics["size_ratio"] = round(metrics["size_bytes"] / ref_metrics["size_bytes"], 4)

    gate_results = evaluate_gates(metrics, gates)
    failed = [{k: r[k] for k in ("gate", "value", "limit")} for r in gate_results if not r["passed"]]
    result = {
        "changed": False, "model": model, "reference": reference, "metrics": metrics,
        "reference_metrics": ref_metrics, "session_options": session_options, "gates": gates,
        "gate_results": gate_results, "failed_gates": failed, "passed": not failed, "seed": seed, "warmup": warmup, "runs": runs,
        "inputs": {k: {"shape": list(v.shape), "dtype": v.dtype.name} for k, v in feeds.items()},
        "input_source": inputs or "generated",
        # Every timed run in the order measured, for distribution charts (metrics hold the summary).
        "latency_samples_ms": {"model": _samples(times), "reference": _samples(ref_times) if reference else None},
        "msg": "; ".join(describe_failure(f) for f in failed) if failed
        else f"{len(gates)} gate(s) passed",
        "report": report,
        **env.provenance(),
    }
    if report and not check_mode:
        files.write_json_atomic(report, result)
    return result
