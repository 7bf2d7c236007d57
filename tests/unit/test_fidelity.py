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
from sarai_onnx import fidelity
from sarai_onnx.errors import SaraiError
from sarai_onnx.fidelity import quantize_to_target, validation_feeds
from sarai_onnx.quantize import normalize_options, quantize
from sarai_onnx.sensitivity import activation_roundtrip, rank_matmuls, weight_roundtrip
from sarai_onnx.validate import compare

TARGET = {"cosine_min": 0.98}


def _search(src, dest, target=TARGET, options=None, **kwargs):
    return quantize_to_target(src, str(dest), "dynamic_int8", options or {}, target,
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
