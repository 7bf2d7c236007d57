"""Coverage sees every weight (initializers, Constant nodes, subgraphs), the quantizers rewrite them,
and a release that rewrites too little is refused (issue 14, points 1-3)."""
from __future__ import annotations

import copy
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

import op_models
from helpers import OUTLIER_SHAPES, snapshot
from sarai_onnx.errors import SaraiError
from sarai_onnx.fidelity import quantize_to_target
from sarai_onnx.hoist import hoist_constant_weights
from sarai_onnx.quantize import quantize
from sarai_onnx.weights import find_weights

NEW_MODELS = ("constant_weights", "if_branches", "lstm")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """{name: (path, feeds)} of the models whose weights are not (all) top-level initializers."""
    base = tmp_path_factory.mktemp("zoo")
    return {name: (op_models.save_with_external_data(op_models.BUILDERS[name]()[0], str(base / name / f"{name}.onnx"),
                                                     1024), op_models.BUILDERS[name]()[1]) for name in NEW_MODELS}


def _run(model_or_path, feeds):
    source = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else model_or_path
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _branch_feeds(feeds):
    """Both branches of an If model (cond true and false); other models as they are."""
    if "cond" not in feeds:
        return [feeds]
    return [dict(feeds, cond=np.array(True)), dict(feeds, cond=np.array(False))]


def _all_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs):
                yield from _all_nodes(sub)


# ---------------------------------------------------------------- point 1: where the weights are

def test_weights_are_found_in_initializers_constant_nodes_and_subgraphs():
    where = {name: {w.name: (w.location, w.readers[0][0]) for w in find_weights(op_models.BUILDERS[name]()[0])}
             for name in NEW_MODELS}
    assert where["constant_weights"] == {"cw": ("constant_nodes", "Conv"), "mw": ("constant_nodes", "MatMul")}
    assert where["if_branches"] == {"w_then": ("subgraph_constant_nodes", "MatMul"),
                                    "w_else": ("subgraph_constant_nodes", "MatMul"),
                                    "w_else2": ("subgraph_initializers", "MatMul"),
                                    "w_outer": ("initializers", "MatMul")}  # read by the then branch only
    assert where["lstm"] == {"lstm.W": ("initializers", "LSTM"), "lstm.R": ("initializers", "LSTM"),
                             "lstm.B": ("initializers", "LSTM"), "head": ("initializers", "MatMul")}


# ---------------------------------------------------------------- point 2: Constant weights as initializers

@pytest.mark.parametrize("name", ["constant_weights", "if_branches"])
def test_constant_weights_become_initializers_with_the_same_outputs(name):
    model, feeds = op_models.BUILDERS[name]()
    hoisted = copy.deepcopy(model)
    assert hoist_constant_weights(hoisted) == (2 if name == "constant_weights" else 3)  # + w_outer sunk
    if name == "if_branches":  # the weight only the then branch reads now lives in that branch
        assert {w.name: w.location for w in find_weights(hoisted)}["w_outer"] == "subgraph_initializers"
    assert not any(n.op_type == "Constant" and n.output[0] in ("cw", "mw", "w_then", "w_else")
                   for n in _all_nodes(hoisted.graph))
    assert {w.location for w in find_weights(hoisted)} <= {"initializers", "subgraph_initializers"}
    onnx.checker.check_model(hoisted)
    for case in _branch_feeds(feeds):
        for a, b in zip(_run(model, case), _run(hoisted, case)):
            assert a.shape == b.shape and np.array_equal(a, b)  # the same tensors, the same arithmetic


def test_a_weight_two_graphs_read_stays_where_it_is():
    model, feeds = op_models.if_branches()
    else_branch = next(a.g for a in model.graph.node[0].attribute if a.name == "else_branch")
    else_branch.node.append(onnx.helper.make_node("MatMul", ["x", "w_outer"], ["unused"], name="mm_outer_else"))
    hoisted = copy.deepcopy(model)
    assert hoist_constant_weights(hoisted) == 2  # the two Constant nodes; w_outer is read by both branches
    assert [t.name for t in hoisted.graph.initializer] == ["w_outer"]
    for case in _branch_feeds(feeds):
        for a, b in zip(_run(model, case), _run(hoisted, case)):
            assert np.array_equal(a, b)


def test_constant_weights_are_quantized_by_both_engines_alike(zoo, tmp_path):
    src, feeds = zoo["constant_weights"]
    built = {e: quantize(src, str(tmp_path / e), engine=e) for e in ("streaming", "onnxruntime")}
    assert built["streaming"]["engine"] == "streaming" and built["streaming"]["engine_fallback_reason"] is None
    assert built["streaming"]["files"] == built["onnxruntime"]["files"]  # byte for byte
    cov = built["streaming"]["coverage"]
    assert cov["byte_share"] == 1.0 and set(cov["by_op"]) == {"Conv", "MatMul"}
    assert cov["by_location"]["constant_nodes"]["quantized_tensors"] == 2
    assert cov["weight_bytes_after"] < cov["weight_bytes"] / 3  # int8 plus scales and zero points
    ops = {n.op_type for n in onnx.load(built["streaming"]["model_path"]).graph.node}
    assert {"ConvInteger", "MatMulInteger"} <= ops
    (fp32,), (int8,) = _run(src, feeds), _run(built["streaming"]["model_path"], feeds)
    assert np.corrcoef(fp32.ravel(), int8.ravel())[0, 1] > 0.99


def test_fp16_on_constant_and_subgraph_weights_counts_the_halved_bytes_and_both_engines_agree(zoo, tmp_path):
    for name in NEW_MODELS:
        src, feeds = zoo[name]
        built = {e: quantize(src, str(tmp_path / name / e), method="fp16", engine=e) for e in ("streaming", "onnxruntime")}
        assert built["streaming"]["engine"] == "streaming"
        assert built["streaming"]["files"] == built["onnxruntime"]["files"], name
        cov = built["streaming"]["coverage"]
        assert cov["byte_share"] == 1.0 and cov["weight_bytes_after"] * 2 == cov["weight_bytes"], name
        assert os.path.isfile(built["streaming"]["data_path"]), name  # the data file it names exists
        for case in _branch_feeds(feeds):
            for a, b in zip(_run(src, case), _run(built["streaming"]["model_path"], case)):
                assert np.max(np.abs(a - b)) < 1e-2


def test_data_path_is_null_when_the_release_has_no_data_file(tmp_path):
    bias = onnx.numpy_helper.from_array(np.arange(16, dtype=np.float32), "b")
    graph = onnx.helper.make_graph(  # no initializer, no weight: nothing for the build to put in a data file
        [onnx.helper.make_node("Constant", [], ["b"], value=bias), onnx.helper.make_node("Add", ["x", "b"], ["y"])],
        "g", [onnx.helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
        [onnx.helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    small = str(tmp_path / "src" / "m.onnx")
    os.makedirs(os.path.dirname(small))
    onnx.save(model, small)
    r = quantize(small, str(tmp_path / "fp16"), method="fp16", allow_low_coverage=True)
    assert r["data_path"] is None and [f["name"] for f in r["files"]] == ["m.onnx"]
    assert r["coverage"]["weight_tensors"] == 0 and "found no weight" in r["warnings"][0]


def test_if_branch_weights_are_quantized_by_onnxruntime_and_streaming_says_why_not(zoo, tmp_path):
    src, feeds = zoo["if_branches"]
    r = quantize(src, str(tmp_path / "int8"))
    assert r["engine"] == "onnxruntime" and "node branch (If) holds a subgraph" in r["engine_fallback_reason"]
    cov = r["coverage"]
    assert cov["byte_share"] == 1.0 and cov["quantized_tensors"] == 4
    assert set(cov["by_location"]) == {"initializers", "subgraph_constant_nodes", "subgraph_initializers"}
    out = onnx.load(r["model_path"])
    assert sum(n.op_type == "MatMulInteger" for n in _all_nodes(out.graph)) == 4
    for case in _branch_feeds(feeds):
        (fp32,), (int8,) = _run(src, case), _run(r["model_path"], case)
        assert np.corrcoef(fp32.ravel(), int8.ravel())[0, 1] > 0.99
    with pytest.raises(SaraiError, match="streaming engine cannot build dynamic_int8.*holds a subgraph"):
        quantize(src, str(tmp_path / "streaming"), engine="streaming")
    assert not (tmp_path / "streaming").exists()


def test_lstm_weights_are_quantized_by_dynamic_quantize_lstm_and_left_by_name_otherwise(zoo, tmp_path):
    src, feeds = zoo["lstm"]
    r = quantize(src, str(tmp_path / "int8"))
    assert r["engine"] == "onnxruntime" and "lstm (LSTM)" in r["engine_fallback_reason"]
    ops = {n.op_type for n in onnx.load(r["model_path"]).graph.node}
    assert "DynamicQuantizeLSTM" in ops and "LSTM" not in ops
    lstm = r["coverage"]["by_op"]["LSTM"]
    assert lstm["quantized_tensors"] == 2 and r["coverage"]["not_quantized"] == ["lstm.B"]  # W and R; B is a bias
    for a, b in zip(_run(src, feeds), _run(r["model_path"], feeds)):  # output and the carried state
        assert a.shape == b.shape and np.max(np.abs(a - b)) < 0.05
    # matmul_nbits has no LSTM kernel: the build is refused, naming LSTM and what to try.
    with pytest.raises(SaraiError) as refused:
        quantize(src, str(tmp_path / "int4"), method="matmul_nbits")
    assert "Left in FP32: LSTM" in str(refused.value) and "DynamicQuantizeLSTM" in str(refused.value)
    assert not (tmp_path / "int4").exists()


# ---------------------------------------------------------------- point 3: no empty release

def test_silero_like_if_branches_report_a_nonzero_share(zoo, tmp_path):
    """silero-vad's weights are Constant nodes inside If branches: all of them are counted and quantized."""
    src, _ = zoo["if_branches"]
    r = quantize(src, str(tmp_path / "int8"))
    assert r["coverage"]["weight_bytes"] == 4 * 16 * 16 * 4 and r["coverage"]["byte_share"] > 0.5
    with open(r["record_path"]) as fh:
        record = json.load(fh)
    assert record["coverage"] == r["coverage"] and record["warnings"] == []
    assert record["min_quantized_share"] == 0.5 and record["allow_low_coverage"] is False


def test_low_share_fails_with_the_share_and_where_and_keeps_the_previous_release(zoo, tmp_path):
    src, _ = zoo["lstm"]
    dest = tmp_path / "release"
    quantize(src, str(dest))  # a good release already there
    before = snapshot(tmp_path)
    with pytest.raises(SaraiError) as refused:
        quantize(src, str(dest), options={"op_types_to_quantize": ["MatMul"]})
    msg = str(refused.value)
    assert "rewrites only 3.7% of the weight bytes" in msg and "below min_quantized_share 0.5" in msg
    assert "The weights feed LSTM" in msg and "held in initializers" in msg and "Left in FP32: LSTM" in msg
    assert "LSTM in op_types_to_quantize" in msg and f"{dest} is as it was" in msg
    assert snapshot(tmp_path) == before  # the previous release byte for byte, no staging left
    # a floor of the catalog's own, and allowing it
    with pytest.raises(SaraiError, match="below min_quantized_share 0.95"):
        quantize(src, str(dest), min_quantized_share=0.95)
    assert snapshot(tmp_path) == before
    r = quantize(src, str(tmp_path / "low"), options={"op_types_to_quantize": ["MatMul"]}, allow_low_coverage=True)
    assert r["coverage"]["byte_share"] < 0.5 and "allowed: allow_low_coverage is true" in r["warnings"][0]
    assert json.load(open(r["record_path"]))["warnings"] == r["warnings"]
    with pytest.raises(SaraiError, match="min_quantized_share 'x' must be a number between 0 and 1"):
        quantize(src, str(tmp_path / "bad"), min_quantized_share="x")


def test_an_existing_release_below_a_new_floor_is_refused_and_kept(zoo, tmp_path):
    src, _ = zoo["lstm"]
    opts = {"op_types_to_quantize": ["MatMul"]}
    quantize(src, str(tmp_path / "low"), options=opts, allow_low_coverage=True)
    before = snapshot(tmp_path)
    with pytest.raises(SaraiError, match="was left as it is"):
        quantize(src, str(tmp_path / "low"), options=opts)
    assert snapshot(tmp_path) == before


def test_fidelity_search_applies_the_floor_to_the_first_trial(talker_outliers, tmp_path):
    """Quantizing nothing meets any fidelity target: the first trial must not pass below the floor."""
    r = quantize_to_target(talker_outliers, str(tmp_path / "int8"), "dynamic_int8",
                           {"op_types_to_quantize": ["Conv"]}, {"cosine_min": 0.98},
                           input_shapes=OUTLIER_SHAPES)
    assert r["failed"] and not r["changed"] and len(r["search"]) == 1
    (trial,) = r["search"]
    assert trial["cosine"] == 1.0 and trial["quantized_share"] == 0.0 and trial["passed"] is False
    assert "min_quantized_share 0.5: the requested options quantize only 0.0%" in r["msg"]
    assert os.listdir(tmp_path) == []
    # with the floor lowered on purpose the same request passes on its first trial
    r = quantize_to_target(talker_outliers, str(tmp_path / "int8"), "dynamic_int8",
                           {"op_types_to_quantize": ["Conv"]}, {"cosine_min": 0.98},
                           search_budget={"min_quantized_share": 0.0}, input_shapes=OUTLIER_SHAPES)
    assert r["changed"] and r["fidelity"]["passed"] and r["coverage"]["byte_share"] == 0.0


def test_weights_in_float16_are_not_counted_as_converted_by_fp16(tmp_path):
    model, _ = op_models.extremes()
    tensor = model.graph.initializer[0]
    tensor.CopyFrom(onnx.numpy_helper.from_array(np.full((32, 32), 0.5, np.float16), tensor.name))
    model.graph.node.insert(0, onnx.helper.make_node("Cast", ["w_extreme"], ["w32"], to=TensorProto.FLOAT))
    model.graph.node[1].input[1] = "w32"
    path = str(tmp_path / "src" / "m.onnx")
    os.makedirs(os.path.dirname(path))
    onnx.save(model, path)
    with pytest.raises(SaraiError, match="fp16 rewrites only 0.0%"):
        quantize(path, str(tmp_path / "fp16"), method="fp16")


def test_a_release_built_before_hidden_weights_were_quantized_is_rebuilt(zoo, tmp_path):
    """Its record has no by_location: the same source and options would otherwise reuse an FP32 release."""
    src, _ = zoo["if_branches"]
    dest = tmp_path / "int8"
    first = quantize(src, str(dest))
    record_path = dest / "quantization.json"
    record = json.loads(record_path.read_text())
    del record["coverage"]["by_location"]
    record_path.chmod(0o644)
    record_path.write_text(json.dumps(record))
    # the manifest lists quantization.json: rewrite it so the release still verifies
    from sarai_onnx import files
    listing = files.describe_files(str(dest), [n for n in os.listdir(dest) if n != files.MANIFEST_NAME])
    (dest / files.MANIFEST_NAME).chmod(0o644)
    (dest / files.MANIFEST_NAME).write_text(files.manifest_text(listing))
    planned = quantize(src, str(dest), check_mode=True)
    assert planned["reason"].startswith("dest was built before weights in Constant nodes and subgraphs")
    again = quantize(src, str(dest))
    assert again["changed"] and "by_location" in json.loads(record_path.read_text())["coverage"]
    assert again["coverage"] == first["coverage"]
    assert not quantize(src, str(dest))["changed"]  # and reused from then on
