"""Speedup you can trust: alternating rounds, a bootstrap confidence interval, runs until it is narrow.

The model and its reference run in rounds of ROUND_RUNS timed runs each, in rotating order (A B,
B A, ...), both processes alive throughout, so load from elsewhere falls on both alike. A round is
the unit of resampling (runs inside one round share the host's state of that moment): the
interval resamples rounds with replacement and takes reference P50 / model P50 over the runs of
the drawn rounds. After the `runs` asked for, more rounds are run while the interval is wider than
`ci_width` (relative to the speedup) and the time budget lasts. `speedup_min` is judged on the
interval's lower bound: a model passes only when it is faster beyond the measurement's doubt.
"""

import math
import time

import numpy as np

from .errors import SaraiError

MIN_RUNS = 20  # fewer timed runs than this make P99 the slowest run and P50 a coin toss
MIN_WARMUP = 1  # the first runs after loading pay for allocation and caches
ROUND_RUNS = 2
MORE_ROUNDS = 10  # rounds added per step while the interval is too wide (an even number: balanced order)
CONFIDENCE = 0.95
RESAMPLES = 2000
DEFAULT_BUDGET_S = 60.0
DEFAULT_CI_WIDTH = 0.1


def check_runs(runs, warmup):
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < MIN_RUNS:
        raise SaraiError(f"runs={runs!r} must be an integer >= {MIN_RUNS}: fewer timed runs make the "
                         "percentiles and the speedup a coin toss")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < MIN_WARMUP:
        raise SaraiError(f"warmup={warmup!r} must be an integer >= {MIN_WARMUP}: the first runs after "
                         "loading are slower and would colour the timings")


def check_budget(budget_s, ci_width):
    for name, value in (("speed_budget_s", budget_s), ("speedup_ci_width", ci_width)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise SaraiError(f"{name}={value!r} must be a number > 0")
    return float(budget_s), float(ci_width)


def speedup_interval(model_blocks, reference_blocks, confidence=CONFIDENCE, resamples=RESAMPLES, seed=0):
    """(speedup, low, high): reference P50 / model P50 over all runs, and its bootstrap interval
    over rounds (block i of each list is round i; every block holds the same number of runs)."""
    rounds = min(len(model_blocks), len(reference_blocks))
    model = np.asarray(model_blocks[:rounds], dtype=np.float64)
    ref = np.asarray(reference_blocks[:rounds], dtype=np.float64)
    point = float(np.median(ref) / np.median(model))
    rng = np.random.default_rng(seed)
    draws = []
    chunk = max(1, 2_000_000 // max(1, ref.size))  # resamples at a time: bounded memory on long runs
    while len(draws) < resamples:
        pick = rng.integers(0, rounds, (min(chunk, resamples - len(draws)), rounds))
        size = (len(pick), -1)
        draws += list(np.median(ref[pick].reshape(size), axis=1) / np.median(model[pick].reshape(size), axis=1))
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(draws, [tail, 100.0 - tail])
    return round(point, 4), round(float(low), 4), round(float(high), 4)


def _round(workers, index, progress):
    order = workers[index % len(workers):] + workers[:index % len(workers)]
    for w in order:
        w.run(ROUND_RUNS)
        if progress:
            progress.update("timed", runs_done=sum(len(x.times) for x in workers))


def measure_speedup(model, reference, runs, budget_s=DEFAULT_BUDGET_S, ci_width=DEFAULT_CI_WIDTH,
                    progress=None, clock=time.monotonic):
    """Time two live workers (validate._Worker) in alternating rounds: at least `runs` timed runs
    each, then more rounds while the interval is wider than ci_width and budget_s lasts. Returns
    {speedup, speedup_ci95: [low, high], rounds, runs, ci_width, stopped}."""
    started = clock()
    workers = [model, reference]
    rounds = math.ceil(runs / ROUND_RUNS)
    rounds += rounds % 2  # each worker first as often as the other
    done = 0
    for r in range(rounds):
        _round(workers, r, progress)
        done += 1
    while True:
        point, low, high = speedup_interval(model.blocks, reference.blocks)
        width = (high - low) / point if point > 0 else math.inf
        if width <= ci_width:
            stopped = "interval narrow enough"
            break
        if clock() - started >= budget_s:
            stopped = "time budget spent"
            break
        for _ in range(max(MORE_ROUNDS, done // 4 * 2)):  # half as many again (an even number)
            _round(workers, done, progress)
            done += 1
    return {"speedup": point, "speedup_ci95": [low, high], "rounds": done, "runs": done * ROUND_RUNS,
            "ci_width": round(width, 4), "stopped": stopped}
