"""The verdict (sarai_onnx.verdict, .speed, the .npz reader): per-output and agreement gates,
non-finite and empty outputs, sequences carrying state, the speedup's interval, one implementation
for onnx_validate and the build's fidelity search."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import zipfile

import numpy as np
import onnx
import pytest

import op_models
from helpers import SHAPES, cosine, run_module
from sarai_onnx import fidelity, speed, validate as validate_mod, verdict
from sarai_onnx.errors import SaraiError
from sarai_onnx.inputs import load_npz, load_sequence_npz, read_npz_arrays
from sarai_onnx.validate import GENERATED_INPUTS_WARNING, live_workers, validate

FAST = dict(warmup=1, runs=20, speed_budget_s=0.5)  # fidelity tests: the speed is not what they judge


def _save(model, path):
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("verdict")
    return {
        "two": _save(op_models.two_outputs(1.0), d / "two.onnx"),
        "two_flipped": _save(op_models.two_outputs(-1.0), d / "two_flipped.onnx"),
        "sqrt_abs": _save(op_models.sqrt_model(True), d / "sqrt_abs.onnx"),
        "sqrt": _save(op_models.sqrt_model(False), d / "sqrt.onnx"),
        "empty": _save(op_models.empty_output(), d / "empty.onnx"),
        "rnn": _save(op_models.recurrent(1.0), d / "rnn.onnx"),
        "rnn_stateless": _save(op_models.recurrent(0.0), d / "rnn_stateless.onnx"),
    }


def _two_inputs(path):
    rng = np.random.default_rng(3)
    np.savez(path, x=rng.standard_normal((1, 4096)).astype(np.float32) * 3,
             y=rng.standard_normal((1, 16)).astype(np.float32))
    return str(path)


# ---------------------------------------------------------------- point 4: per output

def test_each_output_is_judged_on_its_own_where_the_flattened_cosine_passes(models, tmp_path):
    inputs = _two_inputs(tmp_path / "in.npz")
    r = validate(models["two_flipped"], reference=models["two"], inputs=inputs, gates={"cosine_min": 0.99}, **FAST)
    per = r["metrics"]["outputs"]
    assert set(per) == {"state", "prob"} and per["state"]["cosine"] == 1.0 and per["prob"]["cosine"] < 0.99
    # what the old flattened comparison said: one passing number
    from sarai_onnx.session import make_session
    ref = make_session(models["two"], None).run(None, dict(np.load(inputs)))
    new = make_session(models["two_flipped"], None).run(None, dict(np.load(inputs)))
    assert cosine(np.concatenate([a.ravel() for a in ref]), np.concatenate([a.ravel() for a in new])) > 0.99
    assert not r["passed"] and [(f["gate"], f["output"]) for f in r["failed_gates"]] == [("cosine_min", "prob")]
    assert r["metrics"]["cosine"] == per["prob"]["cosine"]  # the top level is the worst gated output
    assert "gate cosine_min on output 'prob' failed" in r["msg"]


def test_ignored_outputs_and_per_output_gates(models, tmp_path):
    inputs = _two_inputs(tmp_path / "in.npz")
    ignored = validate(models["two_flipped"], reference=models["two"], inputs=inputs,
                       gates={"cosine_min": 0.99, "ignore": ["prob"]}, **FAST)
    assert ignored["passed"] and [(g["gate"], g["output"]) for g in ignored["gate_results"]] == [("cosine_min", "state")]
    per = validate(models["two_flipped"], reference=models["two"], inputs=inputs,
                   gates={"cosine_min": 0.99, "outputs": {"prob": {"cosine_min": 0.1, "mae_max": 10}}}, **FAST)
    assert per["passed"] and sorted((g["gate"], g["output"], g["limit"]) for g in per["gate_results"]) == [
        ("cosine_min", "prob", 0.1), ("cosine_min", "state", 0.99), ("mae_max", "prob", 10.0)]


# ---------------------------------------------------------------- point 5: agreement

def test_threshold_and_argmax_agreement_gates(models, tmp_path):
    inputs = _two_inputs(tmp_path / "in.npz")
    gates = {"ignore": ["state"], "outputs": {"prob": {"threshold": {"at": 0.5, "agreement_min": 0.99},
                                                        "argmax": {"axis": -1, "agreement_min": 0.5}}}}
    r = validate(models["two_flipped"], reference=models["two"], inputs=inputs, gates=gates, **FAST)
    y = np.load(inputs)["y"]
    flipped = float(np.mean((y >= 0) == (-y >= 0)))  # sigmoid(w y) >= 0.5 iff y >= 0 (w > 0)
    threshold = next(g for g in r["gate_results"] if g["gate"] == "threshold")
    assert threshold["value"] == pytest.approx(flipped) and not threshold["passed"]
    assert "gate threshold on output 'prob' failed: agreement" in r["msg"] and "< 0.99" in r["msg"]
    same = validate(models["two"], reference=models["two"], inputs=inputs, gates=gates, **FAST)
    assert same["passed"] and [g["value"] for g in same["gate_results"]] == [1.0, 1.0]


def test_agreement_counts_decisions():
    ref = np.array([[0.1, 0.9, 0.6, 0.2]])
    out = np.array([[0.2, 0.8, 0.4, 0.3]])
    assert verdict.agreement(ref, out, "threshold", {"at": 0.5}) == 0.75
    ref3 = np.array([[[1, 0, 0], [0, 1, 0]], [[0, 0, 1], [1, 0, 0]]], float)
    out3 = np.array([[[1, 0, 0], [1, 0, 0]], [[0, 0, 1], [1, 0, 0]]], float)
    assert verdict.agreement(ref3, out3, "argmax", {"axis": -1}) == 0.75
    assert verdict.agreement(ref3[0], out3[0], "argmax", {"axis": 1}) == 0.5
    # the same axis on a stacked sequence: axis 1 of a window is axis 2 of the stack
    assert verdict.agreement(ref3, out3, "argmax", {"axis": 1}, leading_window_axis=True) == \
        verdict.agreement(ref3, out3, "argmax", {"axis": -1})


# ---------------------------------------------------------------- point 8: the obvious fails

def test_non_finite_output_fails_every_fidelity_gate_of_that_output(models):
    r = validate(models["sqrt"], reference=models["sqrt_abs"], input_shapes={}, seed=1,
                 gates={"cosine_min": -1.0, "mse_max": 1e9, "outputs": {"out": {"threshold": {"at": 0, "agreement_min": 0}}}},
                 **FAST)
    assert r["metrics"]["outputs"]["out"]["nonfinite_values"] > 0
    assert not r["passed"] and sorted(f["gate"] for f in r["failed_gates"]) == ["cosine_min", "mse_max", "threshold"]
    assert all("non-finite value(s)" in f["reason"] for f in r["failed_gates"])


def test_empty_output_fails_its_gates_instead_of_scoring_one(models):
    r = validate(models["empty"], reference=models["empty"], gates={"cosine_min": 0.5}, **FAST)
    failed = {(f["output"], f["reason"]) for f in r["failed_gates"]}
    assert failed == {("out", "the output is empty")} and r["metrics"]["outputs"]["y"]["cosine"] == 1.0


def test_zero_size_inputs_are_refused_with_the_input_name(talker, tmp_path):
    with pytest.raises(SaraiError, match=r"input_shapes: input 'hidden_states' has shape \[1, 0, 256\], which holds no"):
        validate(talker, input_shapes={"hidden_states": [1, 0, 256]}, **FAST)
    np.savez(tmp_path / "z.npz", x=np.zeros((1, 0), np.float32), state=np.zeros((1, 8), np.float32))
    sig = [{"name": "x", "dtype": "float32", "shape": ["b", "n"]}]
    with pytest.raises(SaraiError, match=r"input 'x' has shape \[1, 0\], which holds no values"):
        load_npz(str(tmp_path / "z.npz"), sig)


# ---------------------------------------------------------------- point 6: sequences

def _sequence(path, windows=12, seed=4):
    x = np.random.default_rng(seed).standard_normal((windows, 1, 8)).astype(np.float32)
    np.savez(path, x=x)
    return str(path)


def test_sequence_carries_the_state_and_judges_every_window(models, tmp_path):
    seq = _sequence(tmp_path / "seq.npz")
    first = tmp_path / "first.npz"
    np.savez(first, x=np.load(seq)["x"][0], state=np.zeros((1, 8), np.float32))
    gates = {"cosine_min": 0.999, "ignore": ["stateN"], "outputs": {"prob": {"threshold": {"at": 0.5, "agreement_min": 1.0}}}}
    # one window from a zero state: the stateless cell gives the same outputs
    one = validate(models["rnn_stateless"], reference=models["rnn"], inputs=str(first), gates=gates, **FAST)
    assert one["passed"] and one["metrics"]["outputs"]["prob"]["cosine"] == pytest.approx(1.0)
    # the stream: from the second window on, the real cell carries its state, the stateless one cannot
    streamed = validate(models["rnn_stateless"], reference=models["rnn"], inputs=seq, state_map={"state": "stateN"},
                        gates=gates, **FAST)
    assert streamed["windows"] == 12 and streamed["metrics"]["output_shapes"]["prob"] == [12, 1, 1]
    assert not streamed["passed"] and streamed["metrics"]["outputs"]["prob"]["cosine"] < 0.999
    same = validate(models["rnn"], reference=models["rnn"], inputs=seq, state_map={"state": "stateN"}, gates=gates, **FAST)
    assert same["passed"] and same["metrics"]["outputs"]["prob"]["max_abs"] == 0.0


def test_run_sequence_feeds_each_window_the_previous_state():
    seen = []

    def run(feeds):
        seen.append(float(feeds["s"][0]))
        return [feeds["s"] + feeds["x"], feeds["x"] * 2]

    out = verdict.run_sequence(run, {"x": np.array([[1.0], [2.0], [3.0]])}, {"s": np.array([10.0])},
                               {"s": "sN"}, ["sN", "y"])
    assert seen == [10.0, 11.0, 13.0] and out["sN"].ravel().tolist() == [11.0, 13.0, 16.0]
    assert out["y"].shape == (3, 1)


# ---------------------------------------------------------------- bad input, before anything runs

@pytest.mark.parametrize("kwargs, message", [
    (dict(gates={"cosine_min": 0.9, "ignore": ["staet"]}), r"gates.ignore names output\(s\) 'staet', which the model"),
    (dict(gates={"outputs": {"probs": {"cosine_min": 0.9}}}), r"gates.outputs names output\(s\) 'probs'"),
    (dict(gates={"outputs": {"prob": {"threshold": {"at": 0.5, "agreement_min": 1.5}}}}),
     r"gates.outputs.prob.threshold.agreement_min=1.5 is out of range: it must be a number in \[0, 1\]"),
    (dict(gates={"outputs": {"prob": {"argmax": {"axis": -1, "agreement_min": -0.1}}}}),
     r"agreement_min=-0.1 is out of range"),
    (dict(gates={"outputs": {"prob": {"cosine_min": 2}}}), r"gates.outputs.prob.cosine_min=2 is out of range"),
    (dict(gates={"ignore": ["prob"], "outputs": {"prob": {"cosine_min": 0.9}}}), r"is also in gates.ignore"),
    (dict(state_map={"stat": "stateN"}), r"state_map: 'stat' is not an input of the model"),
    (dict(state_map={"state": "state_out"}), r"state_map\['state'\] = 'state_out' is not an output of the model"),
])
def test_bad_gates_and_state_maps_are_refused_before_measuring(models, tmp_path, kwargs, message, monkeypatch):
    def never(*a, **k):
        raise AssertionError("measured despite bad input")

    monkeypatch.setattr(validate_mod, "measure", never)
    report = tmp_path / "r.json"
    with pytest.raises(SaraiError, match=message):
        validate(models["rnn"], reference=models["rnn"], inputs=_sequence(tmp_path / "s.npz"),
                 report=str(report), **dict(FAST, **kwargs))
    assert not report.exists()


def test_npz_without_the_window_axis_is_refused(models, tmp_path):
    np.savez(tmp_path / "flat.npz", x=np.zeros((1, 8), np.float32))
    with pytest.raises(SaraiError, match=r"sequence input 'x' has shape \[1, 8\], which has no leading window axis"):
        validate(models["rnn"], reference=models["rnn"], inputs=str(tmp_path / "flat.npz"),
                 state_map={"state": "stateN"}, **FAST)
    with pytest.raises(SaraiError, match="state_map needs `inputs`"):
        validate(models["rnn"], reference=models["rnn"], state_map={"state": "stateN"}, **FAST)


def test_module_refuses_bad_gates_and_state_map(models, tmp_path, capsys):
    code, r = run_module("onnx_validate", {"model": models["rnn"], "reference": models["rnn"],
                                           "inputs": _sequence(tmp_path / "s.npz"), "state_map": {"state": "nope"},
                                           "speed_budget_s": 0.5}, capsys)
    assert code == 1 and "state_map['state'] = 'nope' is not an output" in r["msg"]
    code, r = run_module("onnx_validate", {"model": models["rnn"], "reference": models["rnn"], "runs": 5,
                                           "input_values": {"state": 0.0, "x": 1.0}}, capsys)
    assert code == 1 and r["msg"].startswith("runs=5 must be an integer >= 20")
    code, r = run_module("onnx_validate", {"model": models["rnn"], "warmup": 0,
                                           "input_values": {"state": 0.0, "x": 1.0}}, capsys)
    assert code == 1 and r["msg"].startswith("warmup=0 must be an integer >= 1")


# ---------------------------------------------------------------- issue 16 finding 11: the .npz reader

def test_npz_reader_never_reads_an_array_the_model_does_not_use(tmp_path, monkeypatch):
    path = tmp_path / "big.npz"
    np.savez(path, x=np.ones((1, 8), np.float32), unused=np.zeros((256, 1024), np.float32))
    opened = []
    real_open = zipfile.ZipFile.open

    def recording_open(self, name, *args, **kwargs):
        opened.append(name if isinstance(name, str) else name.filename)
        return real_open(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", recording_open)
    arrays = load_npz(str(path), [{"name": "x", "dtype": "float32", "shape": [1, 8]}])
    assert list(arrays) == ["x"] and set(opened) == {"x.npy"}


def test_npz_header_over_the_limit_is_refused_before_its_data_is_read(tmp_path, monkeypatch):
    path = tmp_path / "a.npz"
    np.savez(path, x=np.ones((64, 64), np.float32))
    read = []
    monkeypatch.setattr(np.lib.format, "read_array", lambda *a, **k: read.append(1))
    with pytest.raises(SaraiError, match=r"array 'x' \(\[64, 64\] x float32\) holds 16384 bytes, more than the 16383"):
        read_npz_arrays(str(path), ["x"], max_bytes=64 * 64 * 4 - 1)
    assert read == []


# ---------------------------------------------------------------- point 7: speed

def test_speedup_interval_holds_the_estimate_and_shrinks_with_more_rounds():
    rng = np.random.default_rng(0)
    model = [list(1.0 + rng.random(2) * 0.2) for _ in range(20)]
    ref = [list(2.0 + rng.random(2) * 0.4) for _ in range(20)]
    point, low, high = speed.speedup_interval(model, ref)
    assert low <= point <= high and low > 1.5
    model4, ref4 = model * 4, ref * 4
    _, low4, high4 = speed.speedup_interval(model4, ref4)
    assert high4 - low4 < high - low
    assert speed.speedup_interval([[1.0, 1.0]] * 5, [[3.0, 3.0]] * 5) == (3.0, 3.0, 3.0)


def test_identical_copy_never_passes_a_speedup_gate(talker, tmp_path):
    copy = tmp_path / "agi_audio_core.onnx"  # its .data keeps the name the graph refers to
    shutil.copy(talker, copy)
    shutil.copy(talker + ".data", str(copy) + ".data")
    for _ in range(3):
        r = validate(str(copy), reference=talker, input_shapes=SHAPES, warmup=1, runs=20, speed_budget_s=2,
                     gates={"speedup_min": 1.2})
        low, high = r["metrics"]["speedup_ci95"]
        assert not r["passed"] and low < 1.2 and low <= r["metrics"]["speedup"] <= high
        assert r["failed_gates"][0]["value"] == low and "95% interval's low end" in r["msg"]


def test_measuring_sessions_do_not_spin():
    options = validate_mod._measuring_options({"config_entries": {"session.intra_op.allow_spinning": "1", "k": "v"},
                                               "intra_op_num_threads": 2})
    assert options == {"config_entries": {"session.intra_op.allow_spinning": "0", "k": "v"}, "intra_op_num_threads": 2}


def _cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_an_idle_third_worker_takes_no_cpu_while_two_are_timed(releases, talker):
    """A third loaded, warmed-up worker beside the two being timed (what onnx_session_tune and
    onnx_validate do) sleeps while it waits: it uses almost no CPU during the timed rounds, so it
    cannot take cores from them. CPU time, not wall time: the check does not depend on the load."""
    from sarai_onnx.inputs import generate_inputs
    from sarai_onnx.model import graph_inputs, load_graph

    feeds = generate_inputs(graph_inputs(load_graph(talker)), SHAPES)
    int8 = releases["dynamic_int8"]["model_path"]
    workdir = tempfile.mkdtemp()
    try:
        with live_workers([(int8, feeds, {}), (talker, feeds, {}), (talker, feeds, {})], 1, workdir) as workers:
            idle, busy = workers[2].proc.pid, [w.proc.pid for w in workers[:2]]
            before, busy_before, t0 = _cpu_seconds(idle), sum(map(_cpu_seconds, busy)), time.perf_counter()
            speed.measure_speedup(workers[0], workers[1], 40, budget_s=2, ci_width=0.05)
            wall = time.perf_counter() - t0
            idle_cpu, busy_cpu = _cpu_seconds(idle) - before, sum(map(_cpu_seconds, busy)) - busy_before
    finally:
        shutil.rmtree(workdir)
    assert busy_cpu > 0.2 * wall  # the two timed ones did work...
    assert idle_cpu < 0.02 * wall + 0.02, (idle_cpu, wall)  # ...the idle one slept (ticks of 10 ms)


def test_runs_adapt_until_the_interval_is_narrow_or_the_budget_ends():
    class Worker:
        def __init__(self, base, noise, seed):
            self.rng, self.base, self.noise = np.random.default_rng(seed), base, noise
            self.blocks, self.times = [], []

        def run(self, count):
            block = list(self.base + self.rng.random(count) * self.noise)
            self.blocks.append(block)
            self.times += block

    clock = iter(range(10_000))
    quiet = speed.measure_speedup(Worker(1.0, 0.01, 1), Worker(2.0, 0.01, 2), 20, budget_s=100,
                                  clock=lambda: next(clock))
    assert quiet["runs"] == 20 and quiet["stopped"] == "interval narrow enough"
    clock = iter(range(10_000))
    noisy = speed.measure_speedup(Worker(1.0, 3.0, 1), Worker(2.0, 3.0, 2), 20, budget_s=3, ci_width=0.01,
                                  clock=lambda: next(clock))
    assert noisy["runs"] > 20 and noisy["stopped"] == "time budget spent"


# ---------------------------------------------------------------- point 9: generated inputs say so

def test_a_verdict_on_generated_inputs_carries_a_warning(models, tmp_path):
    report = tmp_path / "r.json"
    r = validate(models["two"], reference=models["two"], report=str(report), **FAST)
    assert r["input_warning"] == GENERATED_INPUTS_WARNING and r["warnings"] == [GENERATED_INPUTS_WARNING]
    assert json.loads(report.read_text())["input_warning"].startswith("generated inputs: give real inputs with `inputs`")
    given = validate(models["two"], reference=models["two"], inputs=_two_inputs(tmp_path / "in.npz"), **FAST)
    assert given["input_warning"] is None and given["warnings"] == []


# ---------------------------------------------------------------- point 10: one implementation

def test_the_fidelity_search_and_onnx_validate_share_the_verdict():
    assert fidelity.compare is validate_mod.compare is verdict.compare
    assert fidelity.gate_results is verdict.gate_results and fidelity.shortfall is verdict.shortfall
    results = [{"gate": "cosine_min", "output": "a", "value": 0.98, "limit": 0.99},
               {"gate": "threshold", "output": "b", "value": 0.9, "limit": 0.95},
               {"gate": "mse_max", "output": "a", "value": 0.5, "limit": 1.0}]
    assert verdict.shortfall(results) == pytest.approx(2.0)
    assert verdict.shortfall(results + [{"gate": "mae_max", "output": "c", "value": 0.1, "limit": 1,
                                         "reason": "1 non-finite value(s)"}]) == float("inf")


def test_fidelity_target_takes_per_output_gates_and_checks_their_names(talker_outliers, tmp_path):
    from helpers import OUTLIER_SHAPES

    dest = tmp_path / "int8"
    with pytest.raises(SaraiError, match=r"fidelity_target.ignore names output\(s\) 'state'"):
        fidelity.quantize_to_target(talker_outliers, str(dest), "dynamic_int8", {},
                                    {"cosine_min": 0.9, "ignore": ["state"]}, input_shapes=OUTLIER_SHAPES)
    assert not dest.exists()
    r = fidelity.quantize_to_target(talker_outliers, str(dest), "dynamic_int8", {},
                                    {"outputs": {"logits": {"argmax": {"axis": -1, "agreement_min": 0.5}}}},
                                    input_shapes=OUTLIER_SHAPES, search_budget={"max_trials": 4})
    assert r["fidelity"]["passed"] and r["search"][0]["outputs"]["logits"]["size"] > 0


def test_fidelity_search_judges_a_stream_as_validation_does(models, tmp_path):
    seq = _sequence(tmp_path / "seq.npz")
    with pytest.raises(SaraiError, match=r"state_map\['state'\] = 'h' is not an output of the model"):
        fidelity.quantize_to_target(models["rnn"], str(tmp_path / "bad"), "dynamic_int8", {}, {"cosine_min": 0.9},
                                    inputs=seq, state_map={"state": "h"})
    assert not (tmp_path / "bad").exists()
    r = fidelity.quantize_to_target(models["rnn"], str(tmp_path / "int8"), "dynamic_int8", {},
                                    {"cosine_min": 0.5, "ignore": ["stateN"]}, inputs=seq,
                                    state_map={"state": "stateN"}, search_budget={"max_trials": 2})
    first = r["search"][0]
    assert first["outputs"]["prob"]["size"] == 12 and first["outputs"]["stateN"]["size"] == 12 * 8
    assert r["fidelity"]["request"]["state_map"] == {"state": "stateN"}
    assert r["fidelity"]["request"]["inputs"]["x"]["shape"] == [12, 1, 8]


def test_a_stream_of_scalars_reaches_the_model_as_arrays():
    # silero-vad's `sr` is a scalar input: streamed, its windows are numpy scalars, which onnxruntime refuses.
    seen = []

    def run(feeds):
        seen.append({k: type(v) for k, v in feeds.items()})
        return [feeds["x"] * 2, feeds["s"] + 1]

    windows = {"x": np.ones((3, 2), np.float32), "sr": np.full((3,), 16000, np.int64)}
    out = verdict.run_sequence(run, windows, {"s": np.zeros(1, np.float32)}, {"s": "s_out"}, ["y", "s_out"])
    assert all(t is np.ndarray for feeds in seen for t in feeds.values())
    assert out["s_out"][:, 0].tolist() == [1.0, 2.0, 3.0]
    assert verdict.window_feeds(windows, 0)["sr"].shape == ()
