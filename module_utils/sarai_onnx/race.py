"""Side-by-side latency of several ONNX models in one process, and the rule that picks the fastest.

time_side_by_side() opens one session per model with the same session options and runs them in
alternating rounds on the same feeds, so load from other work on the machine falls on every model
alike and ratios of medians compare even where absolute times do not. pick_fastest() is a pure
function of those samples: the fastest median wins when a bootstrap interval of its lead over every
other candidate lies above 1; the candidates within that noise of it are tied and the smallest
file wins among them.

validate.py (onnx_validate) measures one model against its reference with its own bootstrap
interval of the speedup; the two are meant to be unified (one interval function) once both exist
on main. Keep this file free of fidelity logic so that stays a move, not a rewrite.
"""

import time

import numpy as np

from .session import make_session

# What the search times with unless told otherwise: the variant's serving options (ORT_ENABLE_EXTENDED,
# idle sessions' spinning threads off: with several sessions open they otherwise steal the cores).
RACE_SESSION_OPTIONS = {"graph_optimization_level": "ORT_ENABLE_EXTENDED",
                        "config_entries": {"session.intra_op.allow_spinning": "0"}}
ROUNDS, WARMUP = 12, 2
RESAMPLES, LEVEL, SEED = 2000, 0.95, 0


def time_side_by_side(paths, feeds, session_options=None, rounds=ROUNDS, warmup=WARMUP):
    """{label: [seconds of each timed run]} for {label: model path}, one run of each per round, in a
    new (seeded) order each round."""
    sessions = {label: make_session(path, RACE_SESSION_OPTIONS if session_options is None else session_options)
                for label, path in paths.items()}
    samples = {label: [] for label in paths}
    rng = np.random.default_rng(SEED)
    for round_index in range(warmup + rounds):
        # A new order each round (seeded): under load the model run right after FP32 was systematically
        # slower, and a fixed or rotated order keeps the same neighbours.
        for label in rng.permutation(list(sessions)):
            session = sessions[label]
            start = time.perf_counter()
            session.run(None, feeds)
            if round_index >= warmup:
                samples[label].append(time.perf_counter() - start)
    return samples


def ratio_interval(slow, fast, resamples=RESAMPLES, level=LEVEL, seed=SEED):
    """(low, high) bootstrap interval of median(slow) / median(fast): above 1 means `fast` is faster."""
    rng = np.random.default_rng(seed)
    slow, fast = np.asarray(slow, dtype=float), np.asarray(fast, dtype=float)
    ratios = (np.median(rng.choice(slow, (resamples, slow.size)), axis=1)
              / np.median(rng.choice(fast, (resamples, fast.size)), axis=1))
    tail = (1.0 - level) / 2.0
    return float(np.quantile(ratios, tail)), float(np.quantile(ratios, 1.0 - tail))


def pick_fastest(samples, sizes):
    """(winning label, tied labels, why) for {label: [seconds]} and {label: file bytes}.

    Tied: the fastest median and every candidate whose interval of the ratio of its median to the
    fastest's reaches down to 1 (the fastest's lead over it is not beyond the noise); the smallest
    file among them wins (then the label, for a deterministic choice). `sizes` can be any sortable
    key: the smaller wins."""
    medians = {label: float(np.median(s)) for label, s in samples.items()}
    fastest = min(medians, key=lambda label: (medians[label], label))
    tied = [label for label in samples
            if label == fastest or ratio_interval(samples[label], samples[fastest])[0] <= 1.0]
    winner = min(tied, key=lambda label: (sizes[label], label))
    if len(tied) == 1:
        why = f"{winner} is the fastest beyond the noise (95% bootstrap interval of the ratio of medians)"
    else:
        why = (f"{', '.join(sorted(tied))} are within the noise of the fastest ({fastest}): "
               f"{winner} is the smallest file")
    return winner, sorted(tied), why


def summarize(samples, reference):
    """{label: {p50_ms, speedup, interval}}: each median and its ratio against `reference`'s (e.g. FP32)."""
    out = {}
    for label, s in samples.items():
        low, high = ratio_interval(samples[reference], s)
        out[label] = {"p50_ms": round(1000 * float(np.median(s)), 3),
                      "speedup": round(float(np.median(samples[reference]) / np.median(s)), 3),
                      "interval": [round(low, 3), round(high, 3)]}
    return out
