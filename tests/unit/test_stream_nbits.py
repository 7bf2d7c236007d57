"""The streaming MatMulNBits engine builds the same releases as onnxruntime's MatMulNBitsQuantizer."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import op_models
from sarai_onnx import files
from sarai_onnx import quantize as q
from sarai_onnx.errors import SaraiError
from sarai_onnx.quantize import quantize

TALKER_FEEDS = {"hidden_states": np.random.default_rng(5).standard_normal((1, 6, 64)).astype(np.float32)}


def _f32(name, *shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _init(name, *shape, rng):
    return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)


def _model(nodes, inputs, outputs, inits, feeds):
    model = helper.make_model(helper.make_graph(nodes, "nbits", inputs, outputs, initializer=inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, feeds


def matmuls(seed=0):
    """K = 100 (not a multiple of any block size), a [1, K, N] weight (onnxruntime squeezes it and
    adds a reshape chain), a weight shared by two MatMuls, one also used by a later Add, a weight
    too small to leave the graph, and MatMuls whose B is computed (left alone)."""
    rng = np.random.default_rng(seed)
    inits = [_init("w_odd_k", 100, 48, rng=rng), _init("w_3d", 1, 48, 40, rng=rng), _init("w_shared", 40, 40, rng=rng),
             _init("w_mixed", 40, 40, rng=rng), _init("w_small", 40, 4, rng=rng)]
    nodes = [
        helper.make_node("MatMul", ["x", "w_odd_k"], ["a"], name="mm_odd_k"),
        helper.make_node("MatMul", ["a", "w_3d"], ["b"], name="mm_3d"),
        helper.make_node("Reshape", ["b", "shape_2d"], ["b2"], name="flatten"),
        helper.make_node("MatMul", ["b2", "w_shared"], ["c"], name="mm_shared_1"),
        helper.make_node("MatMul", ["c", "w_shared"], ["d"], name="mm_shared_2"),
        helper.make_node("MatMul", ["d", "w_mixed"], ["e"], name="mm_mixed"),
        helper.make_node("Add", ["w_mixed", "w_mixed"], ["w_twice"], name="add_mixed"),
        helper.make_node("MatMul", ["e", "w_twice"], ["f"], name="mm_computed_b"),
        helper.make_node("Transpose", ["f"], ["f_t"], name="transpose"),
        helper.make_node("MatMul", ["f_t", "f"], ["g"], name="mm_activations"),
        helper.make_node("MatMul", ["g", "w_small"], ["y"], name="mm_small"),
    ]
    inits.append(numpy_helper.from_array(np.array([6, 40], dtype=np.int64), "shape_2d"))
    x = rng.standard_normal((6, 100)).astype(np.float32)
    return _model(nodes, [_f32("x", 6, 100)], [_f32("y", 40, 4)], inits, {"x": x})


def embedding(seed=0):
    """A Gather table of 65 rows of 33 (odd rows, odd element count: 4-bit pairs and zero points
    padded at the end) feeding a MatMul, and the gathered value as an output."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((65, 33)).astype(np.float32), "embed"),
             _init("proj", 33, 24, rng=rng)]
    nodes = [helper.make_node("Gather", ["embed", "ids"], ["emb"], name="gather"),
             helper.make_node("MatMul", ["emb", "proj"], ["y"], name="mm_proj")]
    ids = rng.integers(0, 65, (2, 5)).astype(np.int64)
    return _model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 5])],
                  [_f32("y", 2, 5, 24), _f32("emb", 2, 5, 33)], inits, {"ids": ids})


def constant(seed=0):
    """A 4 KB Constant value (inline in the source, moved to the data file on save) as the B of a
    MatMul (not an initializer: left alone), then a quantized MatMul."""
    rng = np.random.default_rng(seed)
    value = numpy_helper.from_array((rng.standard_normal((32, 32)) * 0.1).astype(np.float32), "c_value")
    nodes = [helper.make_node("Constant", [], ["c_w"], name="const", value=value),
             helper.make_node("MatMul", ["x", "c_w"], ["a"], name="mm_constant"),
             helper.make_node("MatMul", ["a", "w"], ["y"], name="mm_w")]
    return _model(nodes, [_f32("x", 2, 32)], [_f32("y", 2, 32)], [_init("w", 32, 32, rng=rng)],
                  {"x": rng.standard_normal((2, 32)).astype(np.float32)})


def with_subgraph(seed=0):
    """An If node: onnxruntime's quantizer walks subgraphs, the streaming engine does not."""
    rng = np.random.default_rng(seed)
    branch = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y_branch"], name="mm_inner")], "branch",
                               [], [_f32("y_branch", 2, 32)])
    nodes = [helper.make_node("If", ["cond"], ["y"], name="if", then_branch=branch, else_branch=branch)]
    inputs = [_f32("x", 2, 32), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])]
    return _model(nodes, inputs, [_f32("y", 2, 32)], [_init("w", 32, 32, rng=rng)],
                  {"x": rng.standard_normal((2, 32)).astype(np.float32), "cond": np.array(True)})


# (model, options): every bits x block size x symmetry of the catalog, accuracy levels 4 and 0/unset.
GRID = [{"bits": bits, "block_size": block, "symmetric": sym, "accuracy_level": 4}
        for bits in (4, 8) for block in (32, 64, 128) for sym in (False, True)]
CASES = [("matmuls", o) for o in GRID] + [
    ("talker", {}),
    ("talker", {"bits": 8, "block_size": 32, "symmetric": True, "accuracy_level": 4}),
    ("talker", {"bits": 4, "block_size": 128, "accuracy_level": 0}),
    ("talker", {"bits": 8, "block_size": 64, "symmetric": True, "nodes_to_exclude": ["MatMul_4", "MatMul_36"]}),
    ("matmuls", {"bits": 8, "block_size": 32, "nodes_to_exclude": ["mm_shared_2", "mm_3d"]}),
    ("embedding", {"op_types_to_quantize": ["Gather", "MatMul"]}),
    ("embedding", {"op_types_to_quantize": ["Gather", "MatMul"], "symmetric": True, "block_size": 16}),
    ("embedding", {"op_types_to_quantize": ["Gather"], "block_size": 64, "accuracy_level": 4}),
    ("embedding", {"op_types_to_quantize": ["Gather", "MatMul"], "bits": 8}),  # onnxruntime keeps the Gather
    ("inline", {"bits": 8}),
    ("constant", {"block_size": 16}),
    ("constant_weights", {}),  # MatMul and Conv weights as Constant nodes: both engines make them initializers
]


def _case_id(model, options):
    return f"{model}-" + "-".join(f"{k}{v}" if not isinstance(v, list) else f"{k}{'+'.join(v)}"
                                  for k, v in options.items()) or f"{model}-defaults"


@pytest.fixture(scope="session")
def models(tiny_talker, tmp_path_factory):
    """{name: (path, feeds)}: small tensors inline in the graph, the others in the external data file."""
    base = tmp_path_factory.mktemp("nbits_models")
    built = {"talker": (tiny_talker, TALKER_FEEDS)}
    for name, build in (("matmuls", matmuls), ("embedding", embedding), ("constant", constant),
                        ("with_subgraph", with_subgraph)):
        model, feeds = build()
        built[name] = (op_models.save_with_external_data(model, str(base / name / f"{name}.onnx"), 1024), feeds)
    model, feeds = op_models.constant_weights()
    built["constant_weights"] = (op_models.save_with_external_data(
        model, str(base / "constant_weights" / "constant_weights.onnx"), 1024), feeds)
    model, feeds = matmuls()  # every weight inside the .onnx, no data file
    built["inline"] = (op_models.save_with_external_data(model, str(base / "inline" / "inline.onnx"), 2**40), feeds)
    return built


def _outputs(path, feeds):
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)


def _build_both(src, tmp_path, options):
    # Some cases leave most weight bytes in float on purpose: the equality is what they prove, not the share.
    built = {engine: quantize(src, str(tmp_path / engine), method="matmul_nbits", options=options, engine=engine,
                              allow_low_coverage=True)
             for engine in ("streaming", "onnxruntime")}
    assert {e: r["engine"] for e, r in built.items()} == {"streaming": "streaming", "onnxruntime": "onnxruntime"}
    return built["streaming"], built["onnxruntime"]


@pytest.mark.parametrize("model,options", CASES, ids=[_case_id(m, o) for m, o in CASES])
def test_nbits_streaming_equals_onnxruntime(models, tmp_path, model, options):
    src, feeds = models[model]
    streaming, reference = _build_both(src, tmp_path, options)
    ours, theirs = onnx.load(streaming["model_path"]), onnx.load(reference["model_path"])
    quantized = [n.op_type for n in theirs.graph.node if n.op_type in ("MatMulNBits", "GatherBlockQuantized")]
    assert quantized, "the case quantizes nothing: it proves nothing"
    if "Gather" in options.get("op_types_to_quantize", []) and options.get("bits", 4) == 4:
        assert "GatherBlockQuantized" in quantized
    # the same initializers, in the same order, each byte for byte (quantized data, scales, zero points)
    assert [t.name for t in ours.graph.initializer] == [t.name for t in theirs.graph.initializer]
    for a, b in zip(ours.graph.initializer, theirs.graph.initializer):
        assert a.SerializeToString() == b.SerializeToString(), a.name
    assert [(n.name, n.op_type) for n in ours.graph.node] == [(n.name, n.op_type) for n in theirs.graph.node]
    # and the release files themselves (graph and data)
    assert streaming["files"] == reference["files"]
    for a, b in zip(_outputs(streaming["model_path"], feeds), _outputs(reference["model_path"], feeds)):
        assert a.shape == b.shape and np.max(np.abs(a.astype(np.float64) - b), initial=0.0) <= 1e-5


def test_shared_weight_is_quantized_for_each_matmul_and_kept_once_as_onnxruntime_does(models, tmp_path):
    """MatMulNBitsQuantizer appends a shared weight's blocks for each MatMul that reads it (same names,
    same bytes) and its initializer clean-up keeps the first; the streaming engine ends the same way."""
    streaming, _ = _build_both(models["matmuls"][0], tmp_path, {})
    model = onnx.load(streaming["model_path"])
    names = [t.name for t in model.graph.initializer]
    assert names.count("w_shared_Q4") == 1 and "w_shared" not in names
    readers = [n.name for n in model.graph.node if "w_shared_Q4" in n.input]
    assert readers == ["mm_shared_1_Q4", "mm_shared_2_Q4"]
    assert "w_mixed" in names and "w_mixed_Q4" in names  # the Add still reads the float weight


def test_onnxruntime_engine_equals_matmul_nbits_quantizer_itself(tiny_talker, tmp_path):
    """The reference is onnxruntime's quantizer as its documentation runs it, saved with external data."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    (tmp_path / "direct").mkdir()
    quantizer = MatMulNBitsQuantizer(onnx.load(tiny_talker), bits=8, block_size=64, is_symmetric=True,
                                     accuracy_level=4)
    quantizer.process()
    quantizer.model.save_model_to_file(str(tmp_path / "direct" / "int8.onnx"), True)
    ours = quantize(tiny_talker, str(tmp_path / "release"), model_name="int8.onnx", method="matmul_nbits",
                    options={"bits": 8, "block_size": 64, "symmetric": True, "accuracy_level": 4})
    assert ours["engine"] == "streaming" and ours["engine_fallback_reason"] is None
    for name in ("int8.onnx", "int8.onnx.data"):
        assert files.sha256_file(str(tmp_path / "direct" / name)) == files.sha256_file(os.path.join(ours["dest"], name))


@pytest.mark.parametrize("model,options", [("embedding", {"op_types_to_quantize": ["Gather", "MatMul"]}),
                                           ("embedding", {"op_types_to_quantize": ["Gather"], "symmetric": True,
                                                          "block_size": 16}),
                                           ("talker", {"bits": 8})])
def test_tables_read_in_many_small_chunks_give_the_same_release(models, tmp_path, monkeypatch, model, options):
    """A Gather table is quantized a few rows at a time: 300 bytes is two rows of 33 floats, so every
    chunk but the last holds 2 rows, and the odd last row pads the 4-bit pairs as one array would."""
    from sarai_onnx import tensor_io

    src, _ = models[model]
    reference = quantize(src, str(tmp_path / "onnxruntime"), method="matmul_nbits", options=options,
                         engine="onnxruntime")
    monkeypatch.setattr(tensor_io, "CHUNK_BYTES", 300)
    streaming = quantize(src, str(tmp_path / "streaming"), method="matmul_nbits", options=options, engine="streaming")
    assert streaming["files"] == reference["files"]


def test_matmul_nbits_is_streamed_by_default_and_recorded(tiny_talker, tmp_path):
    built = quantize(tiny_talker, str(tmp_path / "int4"), method="matmul_nbits")
    record = json.load(open(built["record_path"]))
    assert built["engine"] == record["engine"] == "streaming" and record["engine_fallback_reason"] is None
    assert record["tool"].startswith("sarai_onnx.stream_nbits")
    again = quantize(tiny_talker, str(tmp_path / "int4"), method="matmul_nbits", engine="onnxruntime")
    assert not again["changed"] and again["manifest_sha256"] == built["manifest_sha256"]  # the same release


def test_subgraph_falls_back_to_onnxruntime_or_fails_when_streaming_is_asked(models, tmp_path):
    src, feeds = models["with_subgraph"]
    result = quantize(src, str(tmp_path / "int4"), method="matmul_nbits")
    assert result["engine"] == "onnxruntime" and "if (If) holds a subgraph" in result["engine_fallback_reason"]
    record = json.load(open(result["record_path"]))
    assert record["engine_fallback_reason"] == result["engine_fallback_reason"]
    branch = next(a.g for a in onnx.load(result["model_path"]).graph.node[0].attribute if a.name == "then_branch")
    assert [n.op_type for n in branch.node] == ["MatMulNBits"]
    assert _outputs(result["model_path"], feeds)[0].shape == (2, 32)
    with pytest.raises(SaraiError, match=r"streaming engine cannot build matmul_nbits from .*if \(If\) holds a "
                                         r"subgraph.*use engine=onnxruntime"):
        quantize(src, str(tmp_path / "streaming"), method="matmul_nbits", engine="streaming")
    assert sorted(os.listdir(tmp_path)) == ["int4"]


def test_float16_weight_falls_back_to_onnxruntime(tmp_path):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((32, 32)) * 0.1).astype(np.float16), "w16")
    model, _ = _model([helper.make_node("MatMul", ["x", "w16"], ["y"], name="mm16")],
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 32])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, 32])], [w], {})
    src = op_models.save_with_external_data(model, str(tmp_path / "fp16" / "m.onnx"), 1024)
    checked = quantize(src, str(tmp_path / "check"), method="matmul_nbits", check_mode=True)
    assert checked["engine"] == "onnxruntime"
    assert "MatMul mm16 weight w16 is FLOAT16, not FLOAT" in checked["engine_fallback_reason"]
    assert not os.path.exists(tmp_path / "check")


# ---------------------------------------------------------------- disk space

@pytest.mark.parametrize("model,options", [("talker", {}), ("matmuls", {"bits": 8, "symmetric": True}),
                                           ("embedding", {"op_types_to_quantize": ["Gather", "MatMul"]})])
def test_streaming_preflight_is_the_size_it_writes(models, tmp_path, model, options):
    src, _ = models[model]
    opts = q.normalize_options("matmul_nbits", options)[1]
    graph = q.load_graph(src)
    plan = q.plan_streaming(src, graph, "matmul_nbits", opts)
    built = quantize(src, str(tmp_path / "out"), method="matmul_nbits", options=options)
    data = os.path.getsize(built["data_path"])
    assert plan.output_bytes == data
    source = q.describe_model_files(q.model_files(src))
    output, temp = q.space_needed("matmul_nbits", "streaming", source, graph, opts, plan)
    assert temp == 0 and data < output <= built["size_bytes"] + 2 * source["files"][0]["size"] + (1 << 20)


def test_not_enough_space_for_the_streamed_release_fails_before_writing(tiny_talker, tmp_path, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(q.shutil, "disk_usage",
                        lambda path: shutil._ntuple_diskusage(10, 10, 1000) if str(path).startswith(str(tmp_path))
                        else real(path))
    with pytest.raises(SaraiError, match=r"not enough free space under .* for the matmul_nbits release "
                                         r"\(streaming engine\)"):
        quantize(tiny_talker, str(tmp_path / "out" / "int4"), method="matmul_nbits")
    assert os.listdir(tmp_path / "out") == []
