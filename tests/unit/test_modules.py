"""The four modules end to end: in-process with patch_module_args, the CLI, and real `ansible` runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from helpers import OUTLIER_SHAPES, ROOT, SHAPES, ansible_adhoc, run_module, snapshot


def test_model_info_module_reports_signature_files_and_plan(talker, capsys):
    code, r = run_module("onnx_model_info", {"path": talker, "method": "dynamic_int8"}, capsys)
    assert code == 0 and r["changed"] is False
    assert r["opset"] == 17 and r["producer_name"].startswith("sarai-deploy")
    assert r["inputs"] == [{"name": "hidden_states", "dtype": "float32", "shape": ["batch", "seq", 256]}]
    assert r["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", "seq", 1024]}]
    assert r["params"]["by_dtype"]["float32"]["count"] > 1_800_000
    assert [f["name"] for f in r["files"]] == ["agi_audio_core.onnx", "agi_audio_core.onnx.data"]
    assert all(len(f["sha256"]) == 64 for f in r["files"]) and r["external_data"]
    assert r["quantization_plan"]["quantized_tensors"] == 13 and r["quantization_plan"]["byte_share"] == 1.0


def test_model_info_module_fails_clearly_on_missing_data(model_copy, capsys):
    os.unlink(model_copy + ".data")
    code, r = run_module("onnx_model_info", {"path": model_copy}, capsys)
    assert code == 1 and "external data file" in r["msg"] and "is missing" in r["msg"]


def test_quantize_module_builds_then_is_idempotent(talker, tmp_path, capsys):
    args = {"src": talker, "dest": str(tmp_path / "int4"), "method": "matmul_nbits", "bits": 4,
            "block_size": 32, "model_name": "agi_audio_core_int4.onnx"}
    code, r = run_module("onnx_quantize", dict(args, _ansible_diff=True), capsys)
    assert code == 0 and r["changed"] and r["ratio"] < 0.2
    assert "agi_audio_core_int4.onnx.data" in r["diff"]["after"]
    code, again = run_module("onnx_quantize", args, capsys)
    assert code == 0 and not again["changed"] and again["manifest_sha256"] == r["manifest_sha256"]


def test_quantize_module_onnxruntime_engine_and_progress_file(tiny_talker, tmp_path, capsys):
    progress = tmp_path / "progress.json"
    code, r = run_module("onnx_quantize", {"src": tiny_talker, "dest": str(tmp_path / "int8"),
                                           "engine": "onnxruntime", "progress_file": str(progress)}, capsys)
    assert code == 0 and r["changed"] and r["engine"] == "onnxruntime" and r["peak_rss_mb"] > 0
    assert json.loads(progress.read_text())["phase"] == "done"
    code, r = run_module("onnx_quantize", {"src": tiny_talker, "dest": str(tmp_path / "x"), "engine": "gpu"}, capsys)
    assert code == 1 and "engine" in r["msg"] and "gpu" in r["msg"]


def test_quantize_module_check_mode_and_bad_option(talker, tmp_path, capsys):
    code, r = run_module("onnx_quantize", {"src": talker, "dest": str(tmp_path / "fp16"), "method": "fp16",
                                           "_ansible_check_mode": True}, capsys)
    assert code == 0 and r["changed"] and os.listdir(tmp_path) == []
    code, r = run_module("onnx_quantize", {"src": talker, "dest": str(tmp_path / "fp16"), "method": "fp16",
                                           "weight_type": "QInt8"}, capsys)
    assert code == 1 and "weight_type do not apply to method fp16" in r["msg"]
    code, r = run_module("onnx_quantize", {"src": talker, "dest": str(tmp_path / "x"), "method": "int2"}, capsys)
    assert code == 1 and "method" in r["msg"] and "int2" in r["msg"]
    assert os.listdir(tmp_path) == []


def test_validate_module_passes_and_fails_on_gates(releases, talker, tmp_path, capsys):
    args = {"model": releases["dynamic_int8"]["model_path"], "reference": talker, "input_shapes": SHAPES,
            "warmup": 1, "runs": 20, "cosine_min": 0.98, "mse_max": 0.01, "gates": {"mae_max": 0.05},
            "speed_budget_s": 2}
    code, r = run_module("onnx_validate", args, capsys)
    assert code == 0 and r["passed"] and set(r["gates"]) == {"cosine_min", "mse_max", "mae_max"}
    code, r = run_module("onnx_validate", dict(args, speedup_min=500.0, report=str(tmp_path / "r.json")), capsys)
    assert code == 1 and r["failed"] and "gate speedup_min failed:" in r["msg"] and "< 500" in r["msg"]
    assert r["failed_gates"][0]["gate"] == "speedup_min" and r["failed_gates"][0]["limit"] == 500.0
    assert json.loads((tmp_path / "r.json").read_text())["passed"] is False
    progress = tmp_path / "progress.json"
    code, r = run_module("onnx_validate", dict(args, speedup_min=500.0, fail_on_gate=False,
                                               progress_file=str(progress)), capsys)
    assert code == 0 and not r["passed"]
    samples = r["latency_samples_ms"]
    assert json.loads(progress.read_text())["runs_done"] == 2 * r["runs"] == len(samples["model"]) + len(samples["reference"])


def test_validate_module_rejects_out_of_range_gate(releases, talker, capsys):
    code, r = run_module("onnx_validate", {"model": releases["fp16"]["model_path"], "reference": talker,
                                           "input_shapes": SHAPES, "cosine_min": 2.0}, capsys)
    assert code == 1 and "gate cosine_min=2.0 is out of range" in r["msg"]


def _cli(command, params, tmp_path, *extra):
    path = tmp_path / f"{command}.json"
    path.write_text(json.dumps(params))
    proc = subprocess.run([sys.executable, "-m", "sarai_onnx", command, "--params", str(path), *extra],
                          cwd=ROOT / "module_utils", capture_output=True, text=True, check=False)
    return proc.returncode, json.loads(proc.stdout)  # stdout must be exactly one JSON document


def test_cli_runs_the_same_code_as_the_modules(talker, tmp_path):
    dest = str(tmp_path / "out" / "int8")
    rc, r = _cli("quantize", {"src": talker, "dest": dest, "method": "dynamic_int8",
                              "progress_file": str(tmp_path / "progress.json")}, tmp_path)
    assert rc == 0 and r["changed"] and r["failed"] is False and r["ratio"] <= 0.26 and r["engine"] == "streaming"
    assert json.loads((tmp_path / "progress.json").read_text())["phase"] == "done"
    rc, r = _cli("manifest", {"path": dest, "state": "verified"}, tmp_path)
    assert rc == 0 and r["verified"]
    rc, r = _cli("info", {"path": os.path.join(dest, os.path.basename(talker))}, tmp_path)
    assert rc == 0 and "int8" in r["params"]["by_dtype"]
    rc, r = _cli("validate", {"model": os.path.join(dest, os.path.basename(talker)), "reference": talker,
                              "input_shapes": SHAPES, "runs": 20, "warmup": 1, "speedup_min": 1000}, tmp_path)
    assert rc == 1 and r["failed"] and "gate speedup_min failed" in r["msg"]


def test_cli_failures_are_json_with_exit_1(tmp_path):
    rc, r = _cli("quantize", {"src": str(tmp_path / "missing.onnx"), "dest": str(tmp_path / "o")}, tmp_path)
    assert rc == 1 and r == {"failed": True, "msg": r["msg"]} and "does not exist" in r["msg"]
    rc, r = _cli("quantize", {"src": "a", "dest": "b", "bitz": 4}, tmp_path)
    assert rc == 1 and "unknown parameter(s) bitz" in r["msg"]


def test_ansible_cli_quantize_changed_then_ok_and_check_mode(talker, tmp_path):
    dest = tmp_path / "int8"
    args = f"src={talker} dest={dest} method=dynamic_int8 model_name=agi_audio_core_int8.onnx"
    started = time.perf_counter()
    rc, first = ansible_adhoc("onnx_quantize", args)
    first_s = time.perf_counter() - started
    assert rc == 0 and first["changed"] is True and first["ratio"] <= 0.26, first
    assert first["engine"] == "streaming" and first["engine_fallback_reason"] is None and first["peak_rss_mb"] > 0
    before = snapshot(dest)
    rc, second = ansible_adhoc("onnx_quantize", args)
    assert rc == 0 and second["changed"] is False and second["duration_s"] < first_s
    assert snapshot(dest) == before
    rc, checked = ansible_adhoc("onnx_quantize", f"src={talker} dest={tmp_path / 'fp16'} method=fp16", check=True)
    assert rc == 0 and checked["changed"] is True and not (tmp_path / "fp16").exists()


def test_ansible_cli_manifest_detects_flipped_byte(releases, tmp_path):
    import shutil

    dest = tmp_path / "rel"
    shutil.copytree(releases["dynamic_int8"]["dest"], dest)
    with open(dest / "agi_audio_core_int8.onnx.data", "r+b") as fh:
        fh.seek(100)
        b = fh.read(1)
        fh.seek(100)
        fh.write(bytes([b[0] ^ 0x01]))
    rc, r = ansible_adhoc("onnx_manifest", f"path={dest} state=verified")
    assert rc != 0 and r["failed"] and r["mismatches"][0]["file"] == "agi_audio_core_int8.onnx.data"


# ---------------------------------------------------------------- fidelity search and low coverage

def test_quantize_module_searches_for_the_target_then_reuses_it(talker_outliers, tmp_path, capsys):
    args = {"src": talker_outliers, "dest": str(tmp_path / "int8"), "model_name": "m_int8.onnx",
            "fidelity_target": {"cosine_min": 0.98, "mse_max": None, "mae_max": None},
            "search_budget": {"max_trials": 8, "max_seconds": None, "min_quantized_share": None},
            "input_shapes": OUTLIER_SHAPES}
    code, r = run_module("onnx_quantize", args, capsys)
    assert code == 0 and r["changed"] and r["fidelity"]["passed"] and len(r["excluded_nodes"]) == 1
    assert r["pin_yaml"].startswith("quantization: {method: dynamic_int8,") and r["excluded_nodes"][0] in r["pin_yaml"]
    assert r["fidelity"]["request"]["budget"] == {"max_trials": 8, "max_seconds": 3600.0, "min_quantized_share": 0.5}
    assert "Pin it with: quantization:" in r["msg"] and r["input_warning"].startswith("generated inputs: give real")
    assert [w for w in r.get("warnings", []) if "generated inputs" not in json.dumps(w)] == []
    code, again = run_module("onnx_quantize", args, capsys)
    assert code == 0 and not again["changed"] and again["search"] == r["search"]


def test_quantize_module_fails_when_the_budget_is_spent(talker_outliers, tmp_path, capsys):
    code, r = run_module("onnx_quantize", {"src": talker_outliers, "dest": str(tmp_path / "int8"),
                                           "fidelity_target": {"cosine_min": 0.98},
                                           "search_budget": {"max_trials": 1}, "input_shapes": OUTLIER_SHAPES}, capsys)
    assert code == 1 and r["failed"] and "max_trials 1 reached" in r["msg"] and len(r["search"]) == 1
    assert os.listdir(tmp_path) == []


def _conv_only_model(path):
    """A tiny Conv1d audio front end: no MatMul at all."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    w1 = onnx.numpy_helper.from_array(rng.standard_normal((32, 16, 3)).astype(np.float32), "conv1.weight")
    w2 = onnx.numpy_helper.from_array(rng.standard_normal((32, 32, 3)).astype(np.float32), "conv2.weight")
    nodes = [helper.make_node("Conv", ["audio", "conv1.weight"], ["h"], name="conv1", pads=[1, 1]),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "conv2.weight"], ["features"], name="conv2", pads=[1, 1])]
    graph = helper.make_graph(nodes, "frontend", [helper.make_tensor_value_info("audio", TensorProto.FLOAT, [1, 16, 50])],
                              [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 32, 50])],
                              initializer=[w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def test_low_coverage_fails_naming_share_weights_and_what_to_try_and_keeps_the_release(tmp_path, capsys):
    src = _conv_only_model(tmp_path / "frontend.onnx")
    dest = tmp_path / "release"
    code, conv = run_module("onnx_quantize", {"src": src, "dest": str(dest)}, capsys)
    assert code == 0 and conv["coverage"]["byte_share"] == 1.0 and "warnings" not in conv  # ConvInteger by default
    before = snapshot(dest)
    code, r = run_module("onnx_quantize", {"src": src, "dest": str(dest), "method": "matmul_nbits"}, capsys)
    assert code == 1 and "matmul_nbits rewrites only 0.0% of the weight bytes" in r["msg"]
    assert "0 of 2 weight tensors" in r["msg"] and "below min_quantized_share 0.5" in r["msg"]
    assert "feed Conv" in r["msg"] and "held in initializers" in r["msg"] and "ConvInteger" in r["msg"]
    assert "method fp16" in r["msg"] and "allow_low_coverage: true" in r["msg"] and "Nothing was written" in r["msg"]
    assert snapshot(dest) == before  # the previous release, byte for byte
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".release")]  # no staging left behind
    code, planned = run_module("onnx_quantize", {"src": src, "dest": str(tmp_path / "int8"),
                                                 "op_types_to_quantize": ["MatMul"], "_ansible_check_mode": True},
                               capsys)
    warning = planned["warnings"][0]["event"]["msg"]  # ansible-core 2.19 ships warnings as events
    assert code == 0 and "dynamic_int8 rewrites only 0.0%" in warning and "the build would fail" in warning
    assert not (tmp_path / "int8").exists()


def test_allow_low_coverage_builds_with_a_warning_in_the_result_and_the_record(tmp_path, capsys):
    src = _conv_only_model(tmp_path / "frontend.onnx")
    code, r = run_module("onnx_quantize", {"src": src, "dest": str(tmp_path / "int4"), "method": "matmul_nbits",
                                           "allow_low_coverage": True}, capsys)
    assert code == 0 and r["changed"] and r["coverage"]["byte_share"] == 0.0
    (warning,) = [w["event"]["msg"] for w in r["warnings"]]
    assert "rewrites only 0.0%" in warning and "allowed: allow_low_coverage is true" in warning
    with open(r["record_path"]) as fh:
        assert json.load(fh)["warnings"] == [warning]
    code, r = run_module("onnx_quantize", {"src": src, "dest": str(tmp_path / "int8"), "op_types_to_quantize": ["MatMul"],
                                           "min_quantized_share": 0.0}, capsys)
    assert code == 0 and r["coverage"]["byte_share"] == 0.0 and "warnings" not in r  # a floor of 0 is met
    code, r = run_module("onnx_quantize", {"src": src, "dest": str(tmp_path / "x"), "min_quantized_share": 1.5}, capsys)
    assert code == 1 and "min_quantized_share 1.5 must be a number between 0 and 1" in r["msg"]


def test_low_coverage_verdict_reaches_ansible_and_the_cli(tmp_path):
    src = _conv_only_model(tmp_path / "frontend.onnx")
    rc, r = ansible_adhoc("onnx_quantize", f"src={src} dest={tmp_path / 'int4'} method=matmul_nbits")
    assert rc != 0 and "rewrites only 0.0% of the weight bytes" in r["msg"] and not (tmp_path / "int4").exists()
    rc, r = ansible_adhoc("onnx_quantize", f"src={src} dest={tmp_path / 'int4'} method=matmul_nbits allow_low_coverage=true")
    assert rc == 0 and any("rewrites only 0.0% of the weight bytes" in str(w) for w in r["warnings"]), r
    rc, r = _cli("quantize", {"src": src, "dest": str(tmp_path / "int4"), "method": "matmul_nbits",
                              "allow_low_coverage": True}, tmp_path)
    assert rc == 0 and not r["changed"] and "rewrites only 0.0%" in r["warnings"][0]
    rc, r = _cli("quantize", {"src": src, "dest": str(tmp_path / "int4"), "method": "matmul_nbits"}, tmp_path)
    assert rc == 1 and r["failed"] and "rewrites only 0.0%" in r["msg"] and "was left as it is" in r["msg"]
