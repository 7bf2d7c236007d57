"""sarai_onnx.sensitivity and sarai_onnx.fidelity: ranking, search order, budget, pinning, idempotence."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import TensorProto, helper

from helpers import OUTLIER_SHAPES, snapshot
from sarai_onnx import fidelity, race
from sarai_onnx.errors import SaraiError
from sarai_onnx.fidelity import quantize_to_target, validation_feeds
from sarai_onnx.quantize import normalize_options, quantize
from sarai_onnx.sensitivity import activation_roundtrip, rank_matmuls, weight_roundtrip
from sarai_onnx.validate import compare

TARGET = {"cosine_min": 0.98}


def _search(src, dest, target=TARGET, options=None, search_budget=None, **kwargs):
    """The search over dynamic INT8 sets and exclusions (the kinds these tests follow trial by trial)."""
    budget = dict({"candidates": ["dynamic_int8", "mixed"]}, **(search_budget or {}))
    return quantize_to_target(src, str(dest), "dynamic_int8", options or {}, target, search_budget=budget,
                              input_shapes=OUTLIER_SHAPES, model_name="m_int8.onnx", **kwargs)


def _node_of(path, weight):
    model = onnx.load(path, load_external_data=False)
    return next(n.name for n in model.graph.node if n.input[-1] == weight)


@pytest.fixture(scope="module")
def searched(talker_outliers, tmp_path_factory):
    """One search on the outlier model, shared by the tests that only read its result."""
    return _search(talker_outliers, tmp_path_factory.mktemp("searched") / "int8")


# ---------------------------------------------------------------- sensitivity

@pytest.mark.parametrize("opts", [{}, {"per_channel": True}, {"weight_type": "QUInt8"}, {"reduce_range": True}])
def test_local_int8_emulation_equals_onnxruntime_matmulinteger(tmp_path, opts):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((64, 48)).astype(np.float32)
    w[5] *= 40.0  # an uneven weight, so per-channel and per-tensor scales differ
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "one",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16, 48])],
                              initializer=[onnx.numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "one.onnx"))
    built = quantize(str(tmp_path / "one.onnx"), str(tmp_path / "q"), options=opts)
    x = rng.standard_normal((16, 64)).astype(np.float32)
    x[:, 7] *= 30.0
    engine = ort.InferenceSession(built["model_path"]).run(None, {"x": x})[0]
    _, full = normalize_options("dynamic_int8", opts)
    emulated = activation_roundtrip(x) @ weight_roundtrip(w, full)
    np.testing.assert_allclose(emulated, engine, rtol=1e-4, atol=1e-4 * np.abs(engine).max())


def test_ranking_puts_the_outlier_node_first(talker_outliers):
    model = onnx.load(talker_outliers, load_external_data=False)
    feeds = validation_feeds(model, input_shapes=OUTLIER_SHAPES)
    ranking = rank_matmuls(talker_outliers, model, feeds, normalize_options("dynamic_int8", {})[1])
    assert len(ranking) == 13
    assert ranking[0]["weight"] == "layers.1.mlp.down_proj.weight"
    assert ranking[0]["cosine"] < 0.9 < 0.999 < min(r["cosine"] for r in ranking[1:])
    assert [r["node"] for r in ranking[:1]] == [_node_of(talker_outliers, "layers.1.mlp.down_proj.weight")]
    excluded = normalize_options("dynamic_int8", {"nodes_to_exclude": [ranking[0]["node"]]})[1]
    assert ranking[0]["node"] not in [r["node"] for r in rank_matmuls(talker_outliers, model, feeds, excluded)]


# ---------------------------------------------------------------- the search

def test_search_tries_cheap_options_before_excluding_and_meets_the_target(searched, talker_outliers):
    r = searched
    assert r["changed"] and r["fidelity"]["passed"]
    # the other weight type is tried on the better per_channel setting of the first two trials
    assert [t["change"].split(",")[0] for t in r["search"]] == [
        "requested options", "per_channel: true", "weight_type: QUInt8", "keep the 1 most sensitive MatMul(s) in FP32"]
    assert [t["passed"] for t in r["search"]] == [False, False, False, True]
    assert all(t["cosine"] < 0.98 for t in r["search"][:3])
    assert r["excluded_nodes"] == [_node_of(talker_outliers, "layers.1.mlp.down_proj.weight")]
    assert r["options"]["nodes_to_exclude"] == r["excluded_nodes"]
    assert r["fidelity"]["reached"]["cosine"] == r["search"][-1]["cosine"] >= 0.98
    assert r["coverage"]["byte_share"] == r["search"][-1]["quantized_share"] > 0.8
    # What was measured is what onnx_validate sees on the release: the same generated inputs and metrics.
    model = onnx.load(talker_outliers, load_external_data=False)
    feeds = validation_feeds(model, input_shapes=OUTLIER_SHAPES)
    fp32 = fidelity.run_outputs(talker_outliers, feeds)
    assert compare(fp32, fidelity.run_outputs(r["model_path"], feeds))["cosine"] == r["fidelity"]["reached"]["cosine"]
    record = json.load(open(r["record_path"]))
    assert record["search"] == r["search"] and record["excluded_nodes"] == r["excluded_nodes"]
    assert record["fidelity"]["request"]["target"] == TARGET and record["options"] == r["options"]
    assert sorted(os.listdir(os.path.dirname(r["dest"]))) == ["int8"]  # no scratch left


def test_requested_options_that_pass_are_built_without_a_search(talker, tmp_path):
    r = quantize_to_target(talker, str(tmp_path / "int8"), "dynamic_int8", {}, TARGET,
                           input_shapes={"hidden_states": [1, 16, 256]})
    assert [t["change"] for t in r["search"]] == ["requested options"] and r["excluded_nodes"] == []
    assert r["fidelity"]["ranking"] == [] and r["coverage"]["byte_share"] == 1.0


def test_spent_budget_fails_naming_the_best_trial_and_leaves_dest(talker_outliers, releases, tmp_path):
    dest = tmp_path / "int8"
    shutil.copytree(releases["dynamic_int8"]["dest"], dest)
    before = snapshot(tmp_path)
    r = _search(talker_outliers, dest, search_budget={"max_trials": 2})
    assert r["failed"] and not r["changed"] and len(r["search"]) == 2
    assert "max_trials 2 reached" in r["msg"] and "Best was trial " in r["msg"] and "cosine 0.9" in r["msg"]
    assert snapshot(tmp_path) == before  # dest as it was, no scratch left beside it


def test_floor_on_quantized_share_stops_the_exclusions(talker_outliers, tmp_path):
    r = _search(talker_outliers, tmp_path / "int8", search_budget={"min_quantized_share": 0.99})
    assert r["failed"] and "min_quantized_share 0.99" in r["msg"] and len(r["search"]) == 3
    assert os.listdir(tmp_path) == []


def test_time_budget_too_short_for_any_trial(talker_outliers, tmp_path):
    r = _search(talker_outliers, tmp_path / "int8", search_budget={"max_seconds": 0.001})
    assert r["failed"] and "max_seconds 0.001 would be exceeded" in r["msg"] and "No trial ran" in r["msg"]
    assert r["search"] == [] and os.listdir(tmp_path) == []


def test_bisection_finds_the_fewest_exclusions(talker_outliers, tmp_path, monkeypatch):
    """With a ranking whose real culprit sits 5th, doubling reaches 8 and bisection comes back to 5."""
    real = fidelity.rank_matmuls

    def culprit_fifth(*args):
        ranking = real(*args)
        return ranking[1:5] + ranking[:1] + ranking[5:]

    monkeypatch.setattr(fidelity, "rank_matmuls", culprit_fifth)
    r = _search(talker_outliers, tmp_path / "int8", search_budget={"min_quantized_share": 0.1})
    assert [t["excluded_count"] for t in r["search"]] == [0, 0, 0, 1, 2, 4, 8, 6, 5]
    assert [t["passed"] for t in r["search"][3:]] == [False, False, False, True, True, True]
    assert len(r["excluded_nodes"]) == 5 and r["fidelity"]["trial"] == 9


# ---------------------------------------------------------------- pinning and idempotence

def test_pinned_nodes_rebuild_the_same_release_without_search(searched, talker_outliers, tmp_path):
    pinned = yaml.safe_load(searched["pin_yaml"])["quantization"]
    method = pinned.pop("method")
    r = quantize(talker_outliers, str(tmp_path / "pinned"), method=method, model_name="m_int8.onnx", options=pinned)
    assert r["output_sha256"] == searched["output_sha256"]  # same model bytes: the build is deterministic


def test_same_request_reuses_the_release_without_searching(searched, talker_outliers, monkeypatch):
    def no_search(*args, **kwargs):
        raise AssertionError("searched again")

    monkeypatch.setattr(fidelity, "_Search", no_search)
    again = _search(talker_outliers, searched["dest"])
    assert not again["changed"] and again["manifest_sha256"] == searched["manifest_sha256"]
    assert again["search"] == searched["search"] and again["pin_yaml"] == searched["pin_yaml"]
    assert _search(talker_outliers, searched["dest"], check_mode=True)["changed"] is False


def test_damaged_release_is_rebuilt_from_the_record_without_searching(talker_outliers, tmp_path, monkeypatch):
    first = _search(talker_outliers, tmp_path / "int8")
    with open(first["data_path"], "r+b") as fh:
        fh.write(b"\0\0\0\0")
    monkeypatch.setattr(fidelity, "_Search", None)  # any search would fail calling it
    repaired = _search(talker_outliers, tmp_path / "int8")
    assert repaired["changed"] and repaired["output_sha256"] == first["output_sha256"]
    assert repaired["search"] == first["search"]


def test_another_target_searches_again_and_check_mode_writes_nothing(searched, talker_outliers, tmp_path):
    dest = tmp_path / "int8"
    shutil.copytree(searched["dest"], dest)
    before = snapshot(tmp_path)
    would = _search(talker_outliers, dest, target={"cosine_min": 0.999}, check_mode=True)
    assert would["changed"] and "would search" in would["msg"] and snapshot(tmp_path) == before
    stricter = _search(talker_outliers, dest, target={"cosine_min": 0.999})
    assert stricter["changed"] and stricter["fidelity"]["request"]["target"] == {"cosine_min": 0.999}


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("method, target, budget, message", [
    ("fp16", TARGET, None, "fidelity_target is supported with method dynamic_int8, not fp16"),
    ("dynamic_int8", {"speedup_min": 2.0}, None, "speedup_min are not fidelity gates"),
    ("dynamic_int8", {"cosine_min": None}, None, "sets no limit"),
    ("dynamic_int8", {"cosine_min": 1.5}, None, "gate cosine_min=1.5 is out of range"),
    ("dynamic_int8", TARGET, {"max_trial": 3}, "search_budget key(s) max_trial are unknown"),
    ("dynamic_int8", TARGET, {"max_trials": 0}, "max_trials=0 is out of range"),
    ("dynamic_int8", TARGET, {"min_quantized_share": 1.2}, "min_quantized_share=1.2 is out of range"),
    ("dynamic_int8", TARGET, {"max_seconds": "soon"}, "max_seconds='soon' must be a number"),
])
def test_bad_requests_fail_before_anything_is_written(talker_outliers, tmp_path, method, target, budget, message):
    with pytest.raises(SaraiError, match=message.replace("(", r"\(").replace(")", r"\)")):
        quantize_to_target(talker_outliers, str(tmp_path / "out"), method, {}, target, search_budget=budget,
                           input_shapes=OUTLIER_SHAPES)
    assert os.listdir(tmp_path) == []


def test_symbolic_inputs_need_shapes(talker_outliers, tmp_path):
    with pytest.raises(SaraiError, match="has symbolic dims"):
        quantize_to_target(talker_outliers, str(tmp_path / "out"), "dynamic_int8", {}, TARGET)
    assert os.listdir(tmp_path) == []


def test_floor_caps_the_doubling_and_fails_naming_it(talker_outliers, tmp_path, monkeypatch):
    real = fidelity.rank_matmuls
    monkeypatch.setattr(fidelity, "rank_matmuls", lambda *args: (lambda r: r[1:5] + r[:1] + r[5:])(real(*args)))
    r = _search(talker_outliers, tmp_path / "int8", search_budget={"min_quantized_share": 0.5})
    assert r["failed"] and "are all that can stay in FP32 above that share" in r["msg"]
    assert r["search"][-1]["excluded_count"] < 5 and min(t["quantized_share"] for t in r["search"]) >= 0.5
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- speed in the objective

def _recorded(ms, jitter=0.02, n=12):
    """Recorded-looking samples (seconds) around `ms`, deterministic."""
    return [ms / 1000 * (1 + jitter * ((i * 7919) % 11 - 5) / 5) for i in range(n)]


def test_fastest_beyond_the_noise_wins_even_when_larger():
    winner, tied, why = race.pick_fastest({"a": _recorded(5.0), "b": _recorded(8.0)}, {"a": 900, "b": 100})
    assert winner == "a" and tied == ["a"] and "beyond the noise" in why


def test_within_the_noise_the_smaller_file_wins():
    samples = {"a": _recorded(5.0, jitter=0.3), "b": _recorded(5.2, jitter=0.3)}
    assert race.ratio_interval(samples["b"], samples["a"])[0] <= 1.0 <= race.ratio_interval(samples["b"], samples["a"])[1]
    winner, tied, why = race.pick_fastest(samples, {"a": 900, "b": 100})
    assert winner == "b" and tied == ["a", "b"] and "b is the smallest file" in why


def test_summary_is_speedup_over_the_reference():
    out = race.summarize({"fp32": _recorded(10.0, 0), "q": _recorded(4.0, 0)}, "fp32")
    assert out["q"]["speedup"] == 2.5 and out["q"]["interval"] == [2.5, 2.5] and out["fp32"]["p50_ms"] == 10.0


def _profiled_timer(nbits_ms, calls=None):
    """A stand-in for race.time_side_by_side with the costs profiled on the bench talker: QUInt8 weights
    (u8u8 kernels) 2.2x slower than QInt8, each MatMul kept in FP32 +1 ms, MatMulNBits `nbits_ms`."""
    def timer(paths, feeds, session_options=None):
        out = {}
        for label, path in paths.items():
            model = onnx.load(path, load_external_data=False)
            ops = [n.op_type for n in model.graph.node]
            if "MatMulNBits" in ops:
                ms = nbits_ms
            elif "DynamicQuantizeLinear" in ops or "DynamicQuantizeMatMul" in ops or "MatMulInteger" in ops:
                u8 = any(t.data_type == TensorProto.UINT8 and len(t.dims) >= 2 for t in model.graph.initializer)
                weights = {t.name for t in model.graph.initializer}
                fp32 = sum(n.op_type == "MatMul" and n.input[1] in weights for n in model.graph.node)
                ms = (2.2 if u8 else 1.0) * 4.0 + fp32
            else:
                ms = 10.0
            out[label] = _recorded(ms)
        if calls is not None:
            calls.append((sorted(paths), session_options))
        return out
    return timer


def test_exclusions_build_on_the_fastest_dynamic_set_not_the_closest(talker_outliers, tmp_path, monkeypatch):
    """On this model QUInt8 + per_channel is closest to the target by a hair (as on the bench talker):
    the FP32 exclusions are built on a QInt8 set, which runs the faster kernels."""
    monkeypatch.setattr(fidelity, "time_side_by_side", _profiled_timer(nbits_ms=9.0))
    r = _search(talker_outliers, tmp_path / "int8")
    cheap = r["search"][:3]
    closest = min(cheap, key=lambda t: 1 - t["cosine"])
    assert closest["weight_type"] == "QUInt8" and not any(t["passed"] for t in cheap)  # best() would take it
    mixed = [t for t in r["search"] if t["kind"] == "mixed"]
    assert mixed and all(t["weight_type"] == "QInt8" for t in mixed)
    assert r["fidelity"]["race"]["mixed_base"]["trial"] in (1, 2) and r["options"]["weight_type"] == "QInt8"
    assert r["method"] == "dynamic_int8" and r["options"]["nodes_to_exclude"] == r["excluded_nodes"] != []


def test_real_timing_of_a_noisy_tie_still_takes_qint8(talker_outliers, tmp_path):
    r = _search(talker_outliers, tmp_path / "int8")
    assert all(t["weight_type"] == "QInt8" for t in r["search"] if t["kind"] == "mixed")
    race_record = r["fidelity"]["race"]
    assert race_record["session_options"] == race.RACE_SESSION_OPTIONS and race_record["rounds"] == race.ROUNDS
    assert r["search"][0]["p50_ms"] > 0 and r["search"][-1]["speedup"] > 0  # the requested build and the winner timed


@pytest.mark.parametrize("nbits_ms, kind", [(3.0, "nbits8_b32"), (9.0, "mixed")])
def test_faithful_but_slower_candidate_loses(talker_outliers, tmp_path, monkeypatch, nbits_ms, kind):
    calls = []
    monkeypatch.setattr(fidelity, "time_side_by_side", _profiled_timer(nbits_ms, calls))
    r = _search(talker_outliers, tmp_path / "int8", target={"cosine_min": 0.96},
                search_budget={"candidates": ["dynamic_int8", "nbits8_b32", "mixed"]})
    passing = [t for t in r["search"] if t["passed"]]
    assert sorted(t["kind"] for t in passing) == ["mixed", "nbits8_b32"]  # both faithful, both raced
    winner = next(t for t in r["search"] if t["trial"] == r["fidelity"]["trial"])
    assert winner["kind"] == kind and winner["speedup"] == max(t["speedup"] for t in passing)
    assert r["method"] == ("matmul_nbits" if kind.startswith("nbits") else "dynamic_int8")
    record = json.load(open(r["record_path"]))
    assert record["method"] == r["method"] and record["options"] == r["options"]
    assert calls[-1] == (["fp32", "trial-1"] + sorted(f"trial-{t['trial']}" for t in passing), race.RACE_SESSION_OPTIONS)
    pinned = yaml.safe_load(r["pin_yaml"])["quantization"]
    rebuilt = quantize(talker_outliers, str(tmp_path / "pinned"), method=pinned.pop("method"),
                       model_name="m_int8.onnx", options=pinned)
    assert rebuilt["output_sha256"] == r["output_sha256"]
    monkeypatch.setattr(fidelity, "_Search", None)  # the same request is reused, not searched
    again = _search(talker_outliers, tmp_path / "int8", target={"cosine_min": 0.96},
                    search_budget={"candidates": ["dynamic_int8", "nbits8_b32", "mixed"]})
    assert not again["changed"] and again["method"] == r["method"] and again["pin_yaml"] == r["pin_yaml"]


def test_all_faithful_candidates_slower_than_speedup_min_fail_and_leave_dest(talker_outliers, releases,
                                                                             tmp_path, monkeypatch):
    monkeypatch.setattr(fidelity, "time_side_by_side", _profiled_timer(nbits_ms=4.0))
    dest = tmp_path / "int8"
    shutil.copytree(releases["dynamic_int8"]["dest"], dest)
    before = snapshot(tmp_path)
    r = _search(talker_outliers, dest, target={"cosine_min": 0.96},
                search_budget={"candidates": ["dynamic_int8", "nbits8_b32", "mixed"], "speedup_min": 3.0})
    assert r["failed"] and not r["changed"]
    assert "slower than speedup_min 3: the fastest, trial " in r["msg"] and "ran 2.5x FP32" in r["msg"]
    assert "Nothing was built; dest is as it was" in r["msg"] and r["fidelity"]["race"]["fp32_p50_ms"] == pytest.approx(10.0, rel=0.05)
    assert snapshot(tmp_path) == before  # dest as it was, no scratch left beside it


def test_op_type_candidates_only_where_the_model_has_those_ops(talker_outliers):
    opts = normalize_options("dynamic_int8", {})[1]
    assert fidelity._op_type_sets(onnx.load(talker_outliers, load_external_data=False), opts) == []
    w = onnx.numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "conv_w")
    m = onnx.numpy_helper.from_array(np.ones((4, 4), np.float32), "mm_w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "conv_w"], ["c"], name="conv"),
                               helper.make_node("MatMul", ["c", "mm_w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[w, m])
    sets = fidelity._op_type_sets(helper.make_model(graph), opts)
    assert sets == [("op types: MatMul/Gemm only", dict(opts, op_types_to_quantize=["Gemm", "MatMul"]))]


@pytest.mark.parametrize("candidates, message", [
    (["dynamic_int8", "fp8"], "unknown kind 'fp8'"),
    (["nbits2_b32"], "bits 2 is not searched"),
    (["nbits4_b16"], "block size 16 is not searched"),
])
def test_bad_candidate_kinds_fail_before_anything_is_written(talker_outliers, tmp_path, candidates, message):
    with pytest.raises(SaraiError, match=message):
        quantize_to_target(talker_outliers, str(tmp_path / "out"), "dynamic_int8", {}, TARGET,
                           search_budget={"candidates": candidates}, input_shapes=OUTLIER_SHAPES)
    assert os.listdir(tmp_path) == []


def test_candidates_name_the_kinds_screened_in_order():
    assert fidelity.normalize_candidates(["mixed", "matmul_nbits", "dynamic_int8"]) == [
        "dynamic_int8", "nbits8_b128", "nbits8_b64", "nbits8_b32", "nbits4_b128", "nbits4_b64", "nbits4_b32", "mixed"]
    assert fidelity.nbits_options("nbits8_b128") == {"bits": 8, "block_size": 128, "symmetric": True,
                                                     "accuracy_level": 4}
