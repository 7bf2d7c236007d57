"""sarai_onnx.tune, .tune_fact, .tune_report and the onnx_session_tune module: grid, budget, fidelity,
noise rule, persistence."""
from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from helpers import ROOT, SHAPES, run_module
from sarai_onnx import tune as tune_mod
from sarai_onnx import tune_fact
from sarai_onnx.errors import SaraiError
from sarai_onnx.tune import (DEFAULTS, MIN_RUNS, ORT_DEFAULTS, TUNED_KEYS, build_grid, choose, plan, seed_configs,
                             tune)
from sarai_onnx.tune_report import markdown

CURRENT = {"graph_optimization_level": "ORT_ENABLE_EXTENDED", "intra_op_num_threads": 0,
           "execution_mode": "ORT_SEQUENTIAL", "enable_cpu_mem_arena": True, "enable_mem_pattern": True}
SEED_LABELS = ["seed 1:", "seed 2:", "seed 3:", "seed 4:", "seed 5:", "seed 6:"]
# Measuring for real in unit tests: the fewest runs (which keeps them short, whatever the budget), a
# budget large enough that a busy machine does not leave configurations out, one batch for the
# required configurations, and the smallest test model (talker_sr: 64 wide, one layer, an `sr` input).
QUICK = {"runs": MIN_RUNS, "time_budget_s": 600.0, "warmup": 1, "processes": 8}
TINY_INPUTS = {"input_shapes": {"hidden_states": [1, 4, 64]}, "input_values": {"sr": 16000}}


def _labels(grid):
    return [label for entry in grid for label in entry["labels"]]


def _required(cpus=4):
    return sum(entry["required"] for entry in build_grid(CURRENT, cpus))


# ---------------------------------------------------------------- grid

def test_onnxruntime_defaults_are_what_sessionoptions_holds():
    import onnxruntime as ort

    so = ort.SessionOptions()
    assert ORT_DEFAULTS == {"graph_optimization_level": so.graph_optimization_level.name,
                            "intra_op_num_threads": so.intra_op_num_threads,
                            "inter_op_num_threads": so.inter_op_num_threads,
                            "execution_mode": so.execution_mode.name,
                            "enable_cpu_mem_arena": so.enable_cpu_mem_arena,
                            "enable_mem_pattern": so.enable_mem_pattern}


def test_grid_starts_with_current_defaults_and_all_six_seed_configurations():
    grid = build_grid(CURRENT, cpus=4)
    assert grid[0]["labels"][0] == "current" and grid[0]["options"] == CURRENT
    assert grid[1]["labels"] == [DEFAULTS] and grid[1]["options"] == {}
    labels = _labels(grid)
    assert all(any(label.startswith(seed) for label in labels) for seed in SEED_LABELS)
    seeds = {label.split(":")[0]: entry for entry in grid for label in entry["labels"] if label.startswith("seed")}
    # the seeds' own baseline: EXTENDED, every core, sequential, arena and memory pattern on
    assert seeds["seed 1"]["options"] == {"graph_optimization_level": "ORT_ENABLE_EXTENDED", "intra_op_num_threads": 4,
                                          "inter_op_num_threads": 0, "execution_mode": "ORT_SEQUENTIAL",
                                          "enable_cpu_mem_arena": True, "enable_mem_pattern": True}
    assert seeds["seed 1"]["seed_p50_ms"] == 260.9
    assert seeds["seed 4"] is seeds["seed 1"]  # arena_size is not a session option: same configuration
    assert seeds["seed 3"]["options"]["intra_op_num_threads"] == 2
    assert seeds["seed 5"]["options"]["execution_mode"] == "ORT_PARALLEL"
    assert seeds["seed 6"]["options"]["intra_op_num_threads"] == 1 and seeds["seed 6"]["seed_p50_ms"] == 955.4
    assert [p50 for _, _, p50 in seed_configs(4)] == [260.9, 262.2, 486.0, 261.4, 498.0, 955.4]
    assert all(entry["required"] for entry in grid[:_required()]) and not any(e["required"] for e in grid[_required():])


def test_grid_fills_max_configs_nearest_first_without_duplicates():
    grid = build_grid(CURRENT, cpus=4, max_configs=20)
    assert len(grid) == 20
    keys = [tuple(sorted(tune_mod._effective(e["options"]).items())) for e in grid]
    assert len(set(keys)) == 20
    current = tune_mod._effective(CURRENT)
    distances = [sum(tune_mod._effective(e["options"])[k] != current[k] for k in TUNED_KEYS)
                 for e in grid[_required():]]
    assert distances[0] == 1 and distances == sorted(distances)
    # inter-op threads matter only to ORT_PARALLEL: no sequential configuration differs by them alone
    assert not any(label.startswith("grid: inter_op_num_threads=2") and "PARALLEL" not in label
                   for label in _labels(grid))


def test_grid_smaller_than_the_required_configurations_is_refused():
    with pytest.raises(SaraiError, match=rf"max_configs=3 is too small: .* give at least {_required(2)}"):
        build_grid(CURRENT, cpus=2, max_configs=3)


def test_grid_keeps_the_current_options_other_keys_in_every_configuration():
    current = dict(CURRENT, config_entries={"session.intra_op.allow_spinning": "0"})
    grid = build_grid(current, cpus=2, max_configs=12)
    assert all(e["options"]["config_entries"] == {"session.intra_op.allow_spinning": "0"} for e in grid)
    assert grid[1]["options"] == {"config_entries": {"session.intra_op.allow_spinning": "0"}}


def test_grid_values_can_be_narrowed():
    grid = build_grid(CURRENT, cpus=2, values={"intra_op_num_threads": [0], "execution_mode": ["ORT_SEQUENTIAL"],
                                               "enable_cpu_mem_arena": [True], "enable_mem_pattern": ["true"]},
                      max_configs=40)
    extra = grid[_required(2):]
    # ORT_ENABLE_ALL with the rest unchanged is onnxruntime's defaults, already in the grid
    assert [e["options"]["graph_optimization_level"] for e in extra] == ["ORT_DISABLE_ALL", "ORT_ENABLE_BASIC"]
    assert len(grid) == _required(2) + 2


@pytest.mark.parametrize("values, message", [
    ({"enable_mem_reuse": [True]}, r"grid key 'enable_mem_reuse' is not tuned"),
    ({"intra_op_num_threads": []}, r"must be a non-empty list"),
    ({"execution_mode": ["FAST"]}, r"execution_mode='FAST'"),
])
def test_bad_grid_values_are_explained(values, message):
    with pytest.raises(SaraiError, match=message):
        build_grid(CURRENT, cpus=2, values=values)


# ---------------------------------------------------------------- budget

def test_plan_trims_configurations_before_runs_fall_below_the_minimum():
    # 24 configurations, 4 candidates per batch: 23 candidates + 2 x 6 anchors = 35 processes
    n, runs, over = plan(8, 24, 4, setup_s=0.1, run_ms=1.0, budget_s=60, max_runs=300)
    assert (n, runs, over) == (24, 300, False)
    n, runs, over = plan(8, 24, 4, setup_s=0.1, run_ms=1.0, budget_s=10, max_runs=300)
    assert n == 24 and MIN_RUNS <= runs < 300 and 35 * (0.1 + runs / 1000) <= 10
    n, runs, over = plan(8, 24, 4, setup_s=0.5, run_ms=20.0, budget_s=30, max_runs=300)
    assert 8 <= n < 24 and runs >= MIN_RUNS and not over
    assert plan(8, 24, 4, setup_s=5, run_ms=500, budget_s=30, max_runs=300) == (8, MIN_RUNS, True)


def test_fewer_processes_when_memory_is_short(talker, monkeypatch):
    per_process = sum(os.path.getsize(p) for p in (talker, talker + ".data")) / 2**20 + 128
    monkeypatch.setattr(tune_mod, "_mem_available_mb", lambda: 2 * 4.5 * per_process)
    assert tune_mod.processes_that_fit(talker, 6) == 4
    monkeypatch.setattr(tune_mod, "_mem_available_mb", lambda: 2 * 2.5 * per_process)
    with pytest.raises(SaraiError, match=r"not enough free memory to tune .*agi_audio_core.onnx: 3 processes"):
        tune_mod.processes_that_fit(talker, 6)


def test_rounds_rotate_so_every_process_runs_in_every_position():
    from sarai_onnx.validate import alternate

    log = []

    class Worker:
        def __init__(self, name):
            self.name = name

        def run(self, count):
            log.append((self.name, count))

    two = [Worker("A"), Worker("B")]
    alternate(two, 20)  # onnx_validate's two models: A B, B A, ... exactly as before the rotation
    assert "".join(n for n, _ in log) == "ABBA" * 5 and {c for _, c in log} == {2}
    log.clear()
    alternate([Worker("A"), Worker("B"), Worker("C")], 10, rounds=3)
    assert "".join(n for n, _ in log) == "ABCBCACAB" and [c for _, c in log] == [4] * 3 + [3] * 6


# ---------------------------------------------------------------- the noise rule

def _entry(index, gain, faithful=True):
    return {"index": index, "gain_pct": gain, "faithful": faithful, "max_abs": 0.0 if faithful else 1e-3}


@pytest.mark.parametrize("gains, noise, min_gain, winner", [
    ([4.0, -2.0], 6.0, 5.0, 0),    # best gain within the noise: keep the current options
    ([8.0, 3.0], 6.0, 5.0, 1),     # beats noise and the floor
    ([8.0, 3.0], 9.0, 5.0, 0),     # noise larger than the gain
    ([8.0, 3.0], 1.0, 10.0, 0),    # the floor larger than the gain
])
def test_the_fastest_wins_only_beyond_the_noise(gains, noise, min_gain, winner):
    current = _entry(0, 0.0)
    candidates = [_entry(i + 1, g) for i, g in enumerate(gains)]
    chosen, why = choose(current, candidates, noise, min_gain)
    assert chosen["index"] == winner
    assert ("the current options stay" in why) == (winner == 0)


def test_an_unfaithful_configuration_never_wins_and_an_unfaithful_current_is_replaced():
    chosen, _ = choose(_entry(0, 0.0), [_entry(1, 50.0, faithful=False), _entry(2, 2.0)], 1.0, 5.0)
    assert chosen["index"] == 0
    chosen, why = choose(_entry(0, 0.0, faithful=False), [_entry(1, -3.0)], 1.0, 5.0)
    assert chosen["index"] == 1 and "the current options change the outputs by 0.001" in why


# ---------------------------------------------------------------- tune() with a stand-in measurement

def fake_measure(p50_by_index, max_abs_by_index=None, noise_pct=2.0):
    """A measure_grid stand-in: each grid index gets the given P50 (default: slower than the current
    options) and outputs that differ from the defaults' by the given max abs."""
    def measure(model, feeds, grid, warmup, max_runs, processes, budget_s, workdir):
        base = p50_by_index[0]
        entries = []
        for index, config in enumerate(grid):
            p50 = p50_by_index.get(index, base * 1.2)
            offset = (max_abs_by_index or {}).get(index, 0.0)
            entries.append(dict(config, index=index, batch=1, p50_ms=p50, p90_ms=p50, p99_ms=p50 * 1.5, load_s=0.1,
                                peak_rss_mb=50.0, gain_pct=round((base - p50) / base * 100, 2),
                                outputs={"logits": np.full((1, 4), 1.0 + offset, np.float32)}))
        entries[0]["batches"] = [{"batch": 1, "p50_ms": base, "p99_ms": base * 1.5, "copies_p50_ms": [base, base],
                                  "noise_pct": noise_pct}]
        return entries, {"noise_pct": noise_pct, "batches": 1, "elapsed_s": 0.1, "setup_s": 0.01,
                         "run_ms_estimate": base, "runs": max_runs, "over_budget": False, "not_measured": []}
    return measure


def fake_confirm(gain_pct=None, noise_pct=2.0):
    """A confirm stand-in: the winner measured again gains gain_pct (default: what it gained in its batch)."""
    def again(model, feeds, current, winner, warmup, runs, workdir):
        gain = winner["gain_pct"] if gain_pct is None else gain_pct
        base = current["p50_ms"]
        return {"index": winner["index"], "p50_ms": round(base * (1 - gain / 100), 3), "p99_ms": base * 1.5,
                "baseline_p50_ms": base, "gain_pct": gain, "noise_pct": noise_pct}
    return again


@pytest.fixture
def tune_here(talker, tmp_path, monkeypatch):
    """tune() on the test model with the fact and report in tmp_path; a winner is confirmed unless a
    test sets another tune_mod.confirm."""
    monkeypatch.setattr(tune_mod, "confirm", fake_confirm())

    def run(**kwargs):
        args = dict(model=talker, release="int8-0123456789ab", session_options=CURRENT, input_shapes=SHAPES,
                    fact_path=str(tmp_path / "facts.d" / "sarai_tuning.fact"), report=str(tmp_path / "tune.json"))
        args.update(kwargs)
        return tune(**args)
    return run


def test_a_faster_configuration_that_changes_the_outputs_is_dropped(tune_here, monkeypatch):
    # #7 is the fastest by far but its outputs move by 2e-4; #8 is faster beyond the noise and faithful
    monkeypatch.setattr(tune_mod, "measure_grid", fake_measure({0: 10.0, 7: 5.0, 8: 8.0}, {7: 2e-4, 8: 5e-5}))
    result = tune_here()
    by_index = {e["index"]: e for e in result["grid"]}
    assert by_index[7]["max_abs"] == pytest.approx(2e-4, rel=1e-3) and not by_index[7]["faithful"]
    assert by_index[7]["status"].startswith("dropped: outputs differ by 0.0002 > 0.0001")
    assert result["chosen"] == 8 and result["improved"] and by_index[8]["status"] == "chosen"
    assert result["session_options"] == by_index[8]["options"] and result["gain_pct"] == 20.0


def test_a_gain_within_the_noise_keeps_the_current_options(tune_here, monkeypatch):
    monkeypatch.setattr(tune_mod, "measure_grid", fake_measure({0: 10.0, 7: 9.0}, noise_pct=12.0))
    result = tune_here()
    assert not result["improved"] and result["session_options"] == CURRENT
    assert result["threshold_pct"] == 12.0 and "does not beat the current options" in result["reason"]
    assert next(e for e in result["grid"] if e["index"] == 7)["status"] == "within noise"


def test_the_choice_is_stored_once_and_a_second_run_changes_nothing(tune_here, monkeypatch, tmp_path):
    fact_path = tmp_path / "facts.d" / "sarai_tuning.fact"
    monkeypatch.setattr(tune_mod, "measure_grid", fake_measure({0: 10.0, 7: 8.0}))
    first = tune_here()
    assert first["changed"] and first["stored"] == "recorded" and first["current_source"] == "session_options"
    fact = json.loads(fact_path.read_text())
    entry = fact["releases"]["int8-0123456789ab"]
    assert fact["schema"] == 1 and set(entry) == {"session_options", "p50_ms", "p99_ms", "baseline_p50_ms",
                                                  "noise_pct", "time", "report"}
    assert entry["session_options"] == first["session_options"] != CURRENT
    assert (entry["p50_ms"], entry["baseline_p50_ms"], entry["noise_pct"]) == (8.0, 10.0, 2.0)
    assert entry["report"] == str(tmp_path / "tune.json") and entry["time"].endswith("Z")
    assert first["diff"]["after"] == fact_path.read_text() and '"releases": {}' in first["diff"]["before"]
    # the options keep their order, so sarai.yaml renders byte for byte the same from the fact
    assert list(entry["session_options"]) == list(first["session_options"]) != sorted(first["session_options"])
    assert oct(fact_path.stat().st_mode & 0o777) == "0o644"  # an executable .fact would be run, not read
    written = fact_path.read_bytes()

    # second run: the stored options are now the current ones; nothing beats them beyond the noise
    monkeypatch.setattr(tune_mod, "measure_grid", fake_measure({0: 8.0}))
    second = tune_here()
    assert not second["changed"] and second["stored"] == "unchanged" and "diff" not in second
    assert second["current_source"] == "fact" and second["current_options"] == entry["session_options"]
    assert second["session_options"] == entry["session_options"] and fact_path.read_bytes() == written
    assert second["fact"] == entry  # the stored numbers stay those of the run that chose

    # a real change of choice is recorded, and other releases' entries are kept
    fact["releases"]["fp32-ba9876543210"] = dict(entry, session_options={"intra_op_num_threads": 1})
    fact_path.write_text(json.dumps(fact))
    monkeypatch.setattr(tune_mod, "measure_grid", fake_measure({0: 8.0, 9: 4.0}))
    third = tune_here()
    assert third["changed"] and third["stored"] == "changed" and third["previous_options"] == entry["session_options"]
    saved = json.loads(fact_path.read_text())["releases"]
    assert saved["int8-0123456789ab"]["session_options"] == third["session_options"]
    assert saved["fp32-ba9876543210"]["session_options"] == {"intra_op_num_threads": 1}


def test_a_winner_is_measured_again_and_kept_only_when_it_wins_again(tune_here, monkeypatch):
    # #7 gained 20% in its batch; measured again beside the current options it gains 3% (< min_gain 5%)
    monkeypatch.setattr(tune_mod, "measure_grid", fake_measure({0: 10.0, 7: 8.0}))
    monkeypatch.setattr(tune_mod, "confirm", fake_confirm(gain_pct=3.0))
    lucky = tune_here()
    assert not lucky["improved"] and lucky["session_options"] == CURRENT and lucky["chosen"] == 0
    assert lucky["confirmation"]["index"] == 7 and not lucky["confirmation"]["confirmed"]
    assert "was 20.0% faster in its batch but +3.0% measured again" in lucky["reason"]
    assert next(e for e in lucky["grid"] if e["index"] == 7)["status"] == "not confirmed: +3.0% measured again"
    assert "not confirmed" in markdown(lucky)
    # confirmed by 15%, beyond a confirmation batch noise of 9%: switched, and the confirming numbers are stored
    monkeypatch.setattr(tune_mod, "confirm", fake_confirm(gain_pct=15.0, noise_pct=9.0))
    kept = tune_here()
    assert kept["improved"] and kept["chosen"] == 7 and kept["confirmation"]["confirmed"]
    assert (kept["fact"]["p50_ms"], kept["fact"]["baseline_p50_ms"], kept["fact"]["noise_pct"]) == (8.5, 10.0, 9.0)
    # ... but not beyond a confirmation batch noise of 16%
    monkeypatch.setattr(tune_mod, "confirm", fake_confirm(gain_pct=15.0, noise_pct=16.0))
    assert not tune_here(check_mode=True)["improved"]


def test_check_mode_measures_but_writes_nothing(tune_here, monkeypatch, tmp_path):
    monkeypatch.setattr(tune_mod, "measure_grid", fake_measure({0: 10.0, 7: 5.0}))
    result = tune_here(check_mode=True)
    assert result["changed"] and result["improved"] and os.listdir(tmp_path) == []


def test_broken_fact_and_bad_arguments_are_explained(tune_here, tmp_path):
    broken = tmp_path / "broken.fact"
    broken.write_text("{not json")
    with pytest.raises(SaraiError, match=r"tuning fact .*broken.fact is not valid JSON .* move it aside"):
        tune_here(fact_path=str(broken))
    broken.write_text('{"releases": []}')
    with pytest.raises(SaraiError, match=r"is not a schema 1 document"):
        tune_here(fact_path=str(broken))
    with pytest.raises(SaraiError, match=r"runs=5 must be an integer >= 20"):
        tune_here(runs=5)
    with pytest.raises(SaraiError, match=r"processes=2 must be an integer >= 3"):
        tune_here(processes=2)
    with pytest.raises(SaraiError, match=r"report .*tune.txt must be a .json path"):
        tune_here(report=str(tmp_path / "tune.txt"))
    with pytest.raises(SaraiError, match=r"session_options: unknown session option\(s\) threads"):
        tune_here(session_options={"threads": 4})
    broken.write_text('{"schema": 1, "releases": {"int8-0123456789ab": {"session_options": {"threads": 4}}}}')
    with pytest.raises(SaraiError, match=r"tuning fact .*broken.fact, release int8-0123456789ab: unknown session"):
        tune_here(fact_path=str(broken))
    assert sorted(os.listdir(tmp_path)) == ["broken.fact"]


# ---------------------------------------------------------------- real measurements on tiny models

def _amplifier(path):
    """x -> MatMul -> GELU written out with Erf -> x 1e4. ORT_ENABLE_EXTENDED fuses the GELU into one
    kernel whose rounding differs from the unfused ops; the gain makes that difference ~2e-3, so the
    lower optimisation levels change the outputs by more than 1e-4 against onnxruntime's defaults."""
    rng = np.random.default_rng(0)
    consts = [numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "W")] + [
        numpy_helper.from_array(np.array(v, np.float32), n)
        for n, v in (("sqrt2", 1.4142135), ("one", 1.0), ("half", 0.5), ("gain", 1e4))]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Div", ["h", "sqrt2"], ["d"]),
             helper.make_node("Erf", ["d"], ["e"]), helper.make_node("Add", ["e", "one"], ["e1"]),
             helper.make_node("Mul", ["h", "e1"], ["m"]), helper.make_node("Mul", ["m", "half"], ["g"]),
             helper.make_node("Mul", ["g", "gain"], ["y"])]
    graph = helper.make_graph(nodes, "amplifier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 64])], consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def test_measured_grid_drops_the_optimisation_levels_that_change_outputs(tmp_path):
    model = _amplifier(tmp_path / "amplifier.onnx")
    result = tune(model, "fp32-amplifier", session_options=CURRENT, input_shapes={"x": [4, 64]},
                  fact_path=str(tmp_path / "t.fact"), max_configs=_required(tune_mod.host_cpus()) + 2,
                  grid={"intra_op_num_threads": [0]}, **QUICK)
    levels = {e["options"].get("graph_optimization_level", "ORT_ENABLE_ALL"): e for e in result["grid"]}
    assert {"ORT_DISABLE_ALL", "ORT_ENABLE_BASIC"} <= set(levels)  # the two nearest grid points
    for level in ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC"):
        assert levels[level]["max_abs"] > 1e-4 and levels[level]["status"].startswith("dropped")
    assert all(e["faithful"] for e in result["grid"]
               if e["options"].get("graph_optimization_level", "ORT_ENABLE_ALL") in ("ORT_ENABLE_EXTENDED",
                                                                                     "ORT_ENABLE_ALL"))
    assert result["session_options"] in [e["options"] for e in result["grid"] if e["faithful"]]
    assert result["runs"] >= MIN_RUNS and len(result["grid"][0]["batches"]) == result["batches"]


def test_optional_batches_stop_when_the_host_turns_slower_than_planned(tmp_path, monkeypatch):
    class Clock:  # every reading is one second later: each batch "takes" several seconds
        now = 0.0

        @classmethod
        def monotonic(cls):
            cls.now += 1.0
            return cls.now

    monkeypatch.setattr(tune_mod, "time", Clock)
    monkeypatch.setattr(tune_mod, "plan", lambda n_required, n_total, *args: (n_total, MIN_RUNS, False))
    model = _amplifier(tmp_path / "amplifier.onnx")
    required = _required(tune_mod.host_cpus())
    result = tune(model, "fp32-amplifier", session_options=CURRENT, input_shapes={"x": [4, 64]},
                  fact_path=str(tmp_path / "t.fact"), max_configs=required + 6, processes=8, runs=MIN_RUNS,
                  time_budget_s=5.0, warmup=1, check_mode=True)
    # the first batch holds the required configurations; the next one, optional only, is not started
    assert sum(e["required"] for e in result["grid"]) == required
    assert len(result["grid"]) + len(result["not_measured"]) == required + 6 and result["batches"] == 1
    assert result["not_measured"] and all(labels[0].startswith("grid: ") for labels in result["not_measured"])


def test_module_records_then_keeps_the_choice_and_honours_check_mode(talker_sr, tmp_path, capsys):
    fact = tmp_path / "facts.d" / "sarai_tuning.fact"
    args = dict(QUICK, **TINY_INPUTS, model=talker_sr, release="int8-0123456789ab", session_options=CURRENT,
                max_configs=_required(tune_mod.host_cpus()), min_gain_pct=1000.0, fact_path=str(fact),
                report=str(tmp_path / "tune-int8.json"))
    code, r = run_module("onnx_session_tune", dict(args, _ansible_check_mode=True, _ansible_diff=True), capsys)
    assert code == 0 and r["changed"] and "diff" in r and os.listdir(tmp_path) == []
    code, first = run_module("onnx_session_tune", dict(args, _ansible_diff=True), capsys)
    assert code == 0 and first["changed"] and first["session_options"] == CURRENT
    assert json.loads(fact.read_text())["releases"]["int8-0123456789ab"]["session_options"] == CURRENT
    report = json.loads((tmp_path / "tune-int8.json").read_text())
    assert [e["index"] for e in report["grid"]] == list(range(len(first["grid"])))
    page = (tmp_path / "tune-int8.md").read_text()
    assert page.count("\n| ") == len(first["grid"]) + 2 and "seed 6: Single thread" in page
    code, second = run_module("onnx_session_tune", args, capsys)
    assert code == 0 and not second["changed"] and second["current_source"] == "fact"
    code, bad = run_module("onnx_session_tune", dict(args, max_configs=2), capsys)
    assert code == 1 and "max_configs=2 is too small" in bad["msg"]


def test_cli_tune_prints_one_json_result(talker_sr, tmp_path):
    params = dict(QUICK, **TINY_INPUTS, model=talker_sr, release="int8-cli", session_options=CURRENT,
                  max_configs=_required(tune_mod.host_cpus()), fact_path=str(tmp_path / "t.fact"))
    (tmp_path / "p.json").write_text(json.dumps(params))
    proc = subprocess.run([sys.executable, "-m", "sarai_onnx", "tune", "--params", str(tmp_path / "p.json"), "--check"],
                          cwd=ROOT / "module_utils", capture_output=True, text=True, check=False)
    result = json.loads(proc.stdout)
    assert proc.returncode == 0 and not result["failed"] and result["release"] == "int8-cli"
    assert not (tmp_path / "t.fact").exists()


# ---------------------------------------------------------------- the documentation matches the code

def test_module_documents_tunes_defaults():
    spec = importlib_module("onnx_session_tune")
    doc = yaml.safe_load(spec.DOCUMENTATION)["options"]
    defaults = {k: v.default for k, v in inspect.signature(tune).parameters.items()
                if v.default is not inspect.Parameter.empty and k != "check_mode"}
    assert {k: doc[k].get("default") for k in defaults} == defaults
    assert tune_fact.DEFAULT_PATH == doc["fact_path"]["default"]


def importlib_module(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "library" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_markdown_lists_every_configuration_with_its_verdict(tune_here, monkeypatch):
    monkeypatch.setattr(tune_mod, "measure_grid", fake_measure({0: 10.0, 7: 5.0}, {7: 1.0}))
    page = markdown(tune_here(check_mode=True))
    rows = [line for line in page.splitlines() if line.startswith("| ") and not line.startswith(("| #", "| ---"))]
    assert len(rows) == len(build_grid(CURRENT, tune_mod.host_cpus())) and "dropped: outputs differ by 1" in page
    assert page.startswith("# Session tuning of int8-0123456789ab") and "**Keep the current options**" in page
