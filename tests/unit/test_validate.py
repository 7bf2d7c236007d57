"""sarai_onnx.validate, .inputs and .session: metrics, comparison, gates, inputs, options."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from helpers import SHAPES
from sarai_onnx.errors import SaraiError
from sarai_onnx.inputs import generate_inputs, load_npz
from sarai_onnx.progress import Progress
from sarai_onnx.session import build_session_options, normalize_session_options
from sarai_onnx.validate import evaluate_gates, normalize_gates, validate

METRICS = {"load_s", "first_inference_s", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "peak_rss_mb",
           "output_shapes", "size_bytes", "cosine", "mse", "mae", "max_abs", "speedup"}


@pytest.fixture(scope="module")
def int8_vs_fp32(releases, talker):
    return validate(releases["dynamic_int8"]["model_path"], reference=talker, input_shapes=SHAPES, speed_budget_s=2,
                    warmup=1, runs=20, gates={"cosine_min": 0.98, "mse_max": 0.01, "mae_max": 0.05})


def test_reports_every_metric_against_the_reference(int8_vs_fp32):
    m = int8_vs_fp32["metrics"]
    assert METRICS <= set(m)
    assert m["output_shapes"] == {"logits": [1, 16, 1024]}
    assert m["p50_ms"] <= m["p90_ms"] <= m["p99_ms"] and m["peak_rss_mb"] > 10
    assert m["cosine"] >= 0.999 and m["mse"] < 0.01 and m["max_abs"] >= m["mae"]
    assert m["speedup"] == pytest.approx(int8_vs_fp32["reference_metrics"]["p50_ms"] / m["p50_ms"], rel=1e-3)
    assert int8_vs_fp32["passed"] and int8_vs_fp32["failed_gates"] == []


def test_fp16_and_int4_validate_with_high_cosine(releases, talker):
    for method in ("fp16", "matmul_nbits"):
        result = validate(releases[method]["model_path"], reference=talker, input_shapes=SHAPES, speed_budget_s=2,
                          warmup=1, runs=20, gates={"cosine_min": 0.99})
        assert result["passed"], result["msg"]


def test_impossible_gate_is_named_with_value_and_limit(releases, talker):
    result = validate(releases["none"]["model_path"], reference=talker, input_shapes=SHAPES, speed_budget_s=2, warmup=1, runs=20,
                      gates={"speedup_min": 1000.0, "cosine_min": 0.5,
                             "expected_output_shapes": {"logits": [1, 16, 999]}})
    assert [f["gate"] for f in result["failed_gates"]] == ["speedup_min", "expected_output_shapes.logits"]
    assert result["msg"].startswith("gate speedup_min failed: ") and " < 1000" in result["msg"]
    assert "[1, 16, 1024] != [1, 16, 999]" in result["msg"]
    cosine = next(g for g in result["gate_results"] if g["gate"] == "cosine_min")
    assert cosine["passed"] and cosine["value"] == result["metrics"]["cosine"]


def test_report_is_written_as_json(releases, tmp_path):
    report = tmp_path / "report.json"
    result = validate(releases["dynamic_int8"]["model_path"], input_shapes=SHAPES, warmup=1, runs=20,
                      gates={"p50_max_ms": 1e6}, report=str(report))
    saved = json.loads(report.read_text())
    assert saved["metrics"]["p50_ms"] == result["metrics"]["p50_ms"] and saved["passed"]
    assert os.listdir(tmp_path) == ["report.json"]


def test_check_mode_writes_no_report(releases, tmp_path):
    validate(releases["dynamic_int8"]["model_path"], input_shapes=SHAPES, warmup=1, runs=20,
             report=str(tmp_path / "r.json"), check_mode=True)
    assert os.listdir(tmp_path) == []


def test_npz_inputs_are_used_as_given(releases, talker, tmp_path):
    x = np.random.default_rng(5).standard_normal((2, 4, 256)).astype(np.float32)
    np.savez(tmp_path / "in.npz", hidden_states=x)
    result = validate(releases["fp16"]["model_path"], reference=talker, inputs=str(tmp_path / "in.npz"),
                      warmup=1, runs=20)
    assert result["inputs"] == {"hidden_states": {"shape": [2, 4, 256], "dtype": "float32"}}
    assert result["metrics"]["output_shapes"] == {"logits": [2, 4, 1024]}


def test_session_options_are_applied_in_the_measuring_process(releases):
    result = validate(releases["dynamic_int8"]["model_path"], input_shapes=SHAPES, warmup=1, runs=20,
                      session_options={"graph_optimization_level": "ORT_DISABLE_ALL",
                                       "intra_op_num_threads": 1, "execution_mode": "ORT_SEQUENTIAL",
                                       "enable_cpu_mem_arena": False, "enable_mem_pattern": True,
                                       "config_entries": {"session.intra_op.allow_spinning": "0"}})
    assert result["session_options"]["intra_op_num_threads"] == 1


def test_sample_rate_input_gets_its_fixed_value(talker_sr):
    sig = [{"name": "hidden_states", "dtype": "float32", "shape": ["batch", "seq", 64]},
           {"name": "sr", "dtype": "int64", "shape": []}]
    feeds = generate_inputs(sig, {"hidden_states": [1, 4, 64]}, {"sr": 16000}, seed=0)
    assert feeds["sr"].dtype == np.int64 and feeds["sr"].shape == () and int(feeds["sr"]) == 16000
    with pytest.raises(SaraiError, match=r"model input 'sr' is a scalar .* give its value in input_values"):
        generate_inputs(sig, {"hidden_states": [1, 4, 64]})
    result = validate(talker_sr, reference=talker_sr, input_shapes={"hidden_states": [1, 4, 64]},
                      input_values={"sr": 16000}, warmup=1, runs=20, gates={"cosine_min": 0.9999})
    assert result["passed"] and result["inputs"]["sr"] == {"shape": [], "dtype": "int64"}


def test_generated_inputs_are_seeded():
    sig = [{"name": "x", "dtype": "float32", "shape": ["b", 3]}]
    a = generate_inputs(sig, {"x": [2, 3]}, seed=7)["x"]
    assert np.array_equal(a, generate_inputs(sig, {"x": [2, 3]}, seed=7)["x"])
    assert not np.array_equal(a, generate_inputs(sig, {"x": [2, 3]}, seed=8)["x"])


@pytest.mark.parametrize("shapes, values, message", [
    (None, None, r"symbolic dims \['b'\]: give input_shapes: \{x: \[1, 3\]\}"),
    ({"x": [2, 4]}, None, r"conflicts with the model's fixed dims \['b', 3\]"),
    ({"x": [2]}, None, "does not match its rank"),
    ({"y": [1, 3]}, None, "input_shapes names y, which the model does not have"),
    ({"x": [1, 3]}, {"x": "loud"}, r"input_values\['x'\]='loud' does not fit float32"),
])
def test_bad_input_specs_are_explained(shapes, values, message):
    sig = [{"name": "x", "dtype": "float32", "shape": ["b", 3]}]
    with pytest.raises(SaraiError, match=message):
        generate_inputs(sig, shapes, values)


def test_npz_missing_an_input_or_with_wrong_dtype(tmp_path):
    sig = [{"name": "x", "dtype": "float32", "shape": ["b", 3]}]
    np.savez(tmp_path / "a.npz", y=np.zeros((1, 3), np.float32))
    with pytest.raises(SaraiError, match="has no array for model input"):
        load_npz(str(tmp_path / "a.npz"), sig)
    np.savez(tmp_path / "b.npz", x=np.zeros((1, 3), np.float64))
    with pytest.raises(SaraiError, match="is float64, the model expects float32"):
        load_npz(str(tmp_path / "b.npz"), sig)
    with pytest.raises(SaraiError, match="does not exist"):
        load_npz(str(tmp_path / "c.npz"), sig)


@pytest.mark.parametrize("gates, message", [
    ({"cosine_min": 1.5}, r"cosine_min=1.5 is out of range: it must be in \[-1, 1\]"),
    ({"cosine_min": -2}, r"cosine_min=-2 is out of range"),
    ({"mse_max": -0.1}, r"mse_max=-0.1 is out of range: it must be >= 0"),
    ({"mae_max": float("nan")}, r"mae_max=nan is out of range"),
    ({"speedup_min": 0}, r"speedup_min=0 is out of range: it must be > 0"),
    ({"p50_max_ms": "fast"}, r"p50_max_ms='fast' must be a number"),
    ({"rss_max_mb": True}, r"rss_max_mb=True must be a number"),
    ({"latency_max": 3}, r"unknown gate 'latency_max'"),
    ({"expected_output_shapes": {"logits": "big"}}, r"must be a list of sizes"),
])
def test_gate_values_out_of_range_are_refused(gates, message):
    with pytest.raises(SaraiError, match=message):
        normalize_gates(gates, has_reference=True)


def test_reference_gates_need_a_reference(releases, tmp_path):
    with pytest.raises(SaraiError, match="gate cosine_min compares against a reference model"):
        validate(releases["fp16"]["model_path"], input_shapes=SHAPES, gates={"cosine_min": 0.9},
                 report=str(tmp_path / "r.json"))
    assert os.listdir(tmp_path) == []


def test_non_finite_metric_fails_its_gate():
    results = evaluate_gates({"speedup_ci95_low": None, "p50_ms": 3.0}, {"speedup_min": 1.5, "p50_max_ms": 10})
    assert results == [{"gate": "speedup_min", "value": None, "limit": 1.5, "passed": False},
                       {"gate": "p50_max_ms", "value": 3.0, "limit": 10, "passed": True}]


@pytest.mark.parametrize("options, message", [
    ({"graph_optimization_level": "FAST"}, "use one of ORT_DISABLE_ALL"),
    ({"intra_op_num_threads": -1}, "must be an integer >= 0"),
    ({"execution_mode": "parallel"}, "use one of ORT_SEQUENTIAL, ORT_PARALLEL"),
    ({"enable_mem_pattern": "maybe"}, "must be true or false"),
    ({"threads": 4}, "unknown session option"),
    ({"providers": ["NoSuchExecutionProvider"]}, "not available"),
])
def test_bad_session_options_are_explained(options, message):
    with pytest.raises(SaraiError, match=message):
        build_session_options(options)


def test_session_options_map_onto_onnxruntime():
    import onnxruntime as ort

    so, providers = build_session_options({"graph_optimization_level": "ORT_ENABLE_EXTENDED",
                                           "intra_op_num_threads": 2, "inter_op_num_threads": 1,
                                           "execution_mode": "ORT_PARALLEL", "enable_cpu_mem_arena": "false",
                                           "enable_mem_reuse": True})
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    assert so.intra_op_num_threads == 2 and so.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert so.enable_cpu_mem_arena is False and providers == ["CPUExecutionProvider"]
    assert normalize_session_options(None) == {}


def test_model_that_fails_to_load_is_reported(model_copy):
    import onnx

    model = onnx.load(model_copy, load_external_data=False)
    model.graph.node[0].op_type = "NoSuchOp"  # still parses, but onnxruntime has no such kernel
    with open(model_copy, "wb") as fh:
        fh.write(model.SerializeToString())
    with pytest.raises(SaraiError, match=r"onnxruntime failed on .*agi_audio_core.onnx"):
        validate(model_copy, input_shapes=SHAPES, runs=20, warmup=1)


def test_latency_samples_are_the_timed_runs_behind_the_metrics(int8_vs_fp32):
    samples = int8_vs_fp32["latency_samples_ms"]
    for values, metrics in ((samples["model"], int8_vs_fp32["metrics"]),
                            (samples["reference"], int8_vs_fp32["reference_metrics"])):
        assert len(values) == int8_vs_fp32["runs"] and all(v > 0 for v in values)
        assert float(np.percentile(values, 50)) == pytest.approx(metrics["p50_ms"], abs=2e-3)
        assert min(values) == pytest.approx(metrics["min_ms"], abs=2e-3)


def test_without_reference_there_are_no_reference_samples(releases, tmp_path):
    result = validate(releases["fp16"]["model_path"], input_shapes=SHAPES, warmup=1, runs=20,
                      report=str(tmp_path / "r.json"))
    assert len(result["latency_samples_ms"]["model"]) == 20 and result["latency_samples_ms"]["reference"] is None
    assert json.loads((tmp_path / "r.json").read_text())["latency_samples_ms"] == result["latency_samples_ms"]


def test_progress_file_goes_through_every_phase_in_order(releases, talker, tmp_path, monkeypatch):
    import functools

    import sarai_onnx.progress
    import sarai_onnx.validate

    written = []
    real_write = sarai_onnx.progress.files.write_json_atomic

    def record(path, obj):
        written.append(obj)
        real_write(path, obj)

    monkeypatch.setattr(sarai_onnx.progress.files, "write_json_atomic", record)
    monkeypatch.setattr(sarai_onnx.validate, "Progress", functools.partial(Progress, interval_s=0))
    progress = tmp_path / "progress.json"
    result = validate(releases["dynamic_int8"]["model_path"], reference=talker, input_shapes=SHAPES,
                      speed_budget_s=2, warmup=1, runs=20, progress_file=str(progress))
    total = 2 * result["runs"]  # both models, the rounds added while the interval was wide included
    timed = total // 2  # one update per block of 2 runs
    assert [w["phase"] for w in written] == ["load", "warmup", "load", "warmup"] + ["timed"] * timed + ["compare"]
    assert [w["runs_done"] for w in written] == [0] * 4 + list(range(2, total + 1, 2)) + [total]
    assert all(w["runs_total"] == 40 for w in written)
    assert [w["elapsed_s"] for w in written] == sorted(w["elapsed_s"] for w in written)
    assert json.loads(progress.read_text()) == written[-1] and os.listdir(tmp_path) == ["progress.json"]


def test_progress_is_written_at_most_once_per_interval(tmp_path):
    now = [100.0]
    path = tmp_path / "p.json"
    progress = Progress(str(path), interval_s=1.0, clock=lambda: now[0], runs_total=10)
    seen = []
    for t, runs_done, force in ((100.0, 0, False), (100.5, 1, False), (101.0, 2, False), (101.2, 3, False),
                                (101.3, 4, True)):
        now[0] = t
        progress.update("timed", force=force, runs_done=runs_done)
        seen.append(json.loads(path.read_text())["runs_done"])
    assert seen == [0, 0, 2, 2, 4]
    assert json.loads(path.read_text()) == {"phase": "timed", "runs_done": 4, "runs_total": 10, "elapsed_s": 1.3}
    Progress(None).update("load")  # no file: nothing to do, no error


def test_progress_file_in_a_missing_directory_is_refused_before_measuring(releases, tmp_path):
    with pytest.raises(SaraiError, match=r"progress_file .*/nowhere/p.json: directory .* does not exist"):
        validate(releases["fp16"]["model_path"], input_shapes=SHAPES, progress_file=str(tmp_path / "nowhere" / "p.json"))
