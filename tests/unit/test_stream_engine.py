"""The streaming engines build the same releases as onnxruntime's engine, one tensor at a time."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

import op_models
from sarai_onnx import files
from sarai_onnx import quantize as q
from sarai_onnx.errors import SaraiError
from sarai_onnx.quantize import quantize

TALKER_FEEDS = {"hidden_states": np.random.default_rng(5).standard_normal((1, 6, 64)).astype(np.float32)}
# The tiny talker's nodes: MatMul_4 is the K projection, MatMul_36 the logits head.
INT8_CASES = [
    ("talker", {}),
    ("talker", {"weight_type": "QUInt8"}),
    ("talker", {"per_channel": True}),
    ("talker", {"reduce_range": True}),
    ("talker", {"weight_type": "QUInt8", "per_channel": True, "reduce_range": True}),
    ("talker", {"nodes_to_exclude": ["MatMul_4", "MatMul_36"]}),
    ("talker", {"op_types_to_quantize": ["MatMul", "Transpose"]}),
    ("shared_weights", {}),
    ("shared_weights", {"per_channel": True, "weight_type": "QUInt8"}),
    ("shared_weights", {"nodes_to_exclude": ["mm_b", "mm_small"]}),
    ("inline", {"per_channel": True}),
    ("gemm", {}),
    ("gemm", {"per_channel": True, "reduce_range": True}),
    ("gemm", {"op_types_to_quantize": ["Conv"]}),  # Gemm still becomes MatMul, weights stay float
    ("embedding", {}),
    ("embedding", {"op_types_to_quantize": ["Gather"]}),
    ("embedding", {"op_types_to_quantize": ["MatMul"], "weight_type": "QUInt8"}),
    ("conv", {}),
    ("conv", {"reduce_range": True, "weight_type": "QUInt8", "nodes_to_exclude": ["conv2"]}),
    ("extremes", {"per_channel": True}),
    ("constant_weights", {}),  # Constant-node weights, turned into initializers by both engines
    ("constant_weights", {"per_channel": True, "weight_type": "QUInt8"}),
]
FP16_CASES = [("talker", {}), ("talker", {"keep_io_types": False}),
              ("talker", {"nodes_to_exclude": ["MatMul_2", "LayerNormalization_1"]}),
              ("gemm", {}), ("embedding", {}), ("conv", {"keep_io_types": False}), ("extremes", {}), ("inline", {}),
              ("constant_weights", {}), ("if_branches", {}), ("lstm", {})]


@pytest.fixture(scope="session")
def models(tiny_talker, tmp_path_factory):
    """{name: (path, feeds)}: the tiny talker and the op models (small tensors inline, others external)."""
    base = tmp_path_factory.mktemp("op_models")
    built = {"talker": (tiny_talker, TALKER_FEEDS)}
    for name, build in op_models.BUILDERS.items():
        model, feeds = build()
        built[name] = (op_models.save_with_external_data(model, str(base / name / f"{name}.onnx"), 1024), feeds)
    model, feeds = op_models.shared_weights()  # every weight inside the .onnx, no data file
    built["inline"] = (op_models.save_with_external_data(model, str(base / "inline" / "inline.onnx"), 2**40), feeds)
    return built


def _outputs(path, feeds):
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    fp16 = {i.name for i in session.get_inputs() if i.type == "tensor(float16)"}  # fp16 without keep_io_types
    return session.run(None, {k: v.astype(np.float16) if k in fp16 else v for k, v in feeds.items()})


def _initializers(path):
    """Every initializer, those of subgraphs (If branches) included."""
    return {t.name: t for t in onnx.external_data_helper._get_initializer_tensors(onnx.load(path))}


def _build_both(src, tmp_path, method, options, **kwargs):
    built = {engine: quantize(src, str(tmp_path / engine), method=method, options=options, engine=engine, **kwargs)
             for engine in ("streaming", "onnxruntime")}
    assert {e: r["engine"] for e, r in built.items()} == {"streaming": "streaming", "onnxruntime": "onnxruntime"}
    return built["streaming"], built["onnxruntime"]


def _assert_same_outputs(streaming, reference, feeds):
    for a, b in zip(_outputs(streaming["model_path"], feeds), _outputs(reference["model_path"], feeds)):
        assert a.shape == b.shape
        assert np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0) <= 1e-5


@pytest.mark.parametrize("model,options", INT8_CASES, ids=[f"{m}-{'-'.join(o) or 'defaults'}" for m, o in INT8_CASES])
def test_int8_streaming_equals_onnxruntime(models, tmp_path, model, options):
    src, feeds = models[model]
    # Some cases quantize little or nothing on purpose: the equality is what they prove, not the share.
    streaming, reference = _build_both(src, tmp_path, "dynamic_int8", options, allow_low_coverage=True)
    ours, theirs = _initializers(streaming["model_path"]), _initializers(reference["model_path"])
    assert list(ours) == list(theirs)
    quantized = [n for n, t in theirs.items()
                 if t.data_type in (TensorProto.INT8, TensorProto.UINT8) and n.endswith("_quantized")]
    if options.get("op_types_to_quantize") != ["Conv"]:
        assert quantized, "the case quantizes nothing: it proves nothing"
    for name in quantized:  # every quantized weight byte for byte, with its scale and zero point
        for n in (name, name[:-len("_quantized")] + "_scale", name[:-len("_quantized")] + "_zero_point"):
            a, b = numpy_helper.to_array(ours[n]), numpy_helper.to_array(theirs[n])
            assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), n
    # and the release files themselves (graph and data), so either engine's release is the same release
    assert streaming["files"] == reference["files"]
    _assert_same_outputs(streaming, reference, feeds)


CHUNK_CASES = [("talker", "dynamic_int8", {}), ("talker", "dynamic_int8", {"per_channel": True}),
               ("talker", "fp16", {}), ("gemm", "dynamic_int8", {"per_channel": True}),
               ("gemm", "dynamic_int8", {"op_types_to_quantize": ["Conv"]})]


@pytest.mark.parametrize("model,method,options", CHUNK_CASES,
                         ids=[f"{m}-{k}-{'-'.join(o) or 'defaults'}" for m, k, o in CHUNK_CASES])
def test_weights_read_in_many_small_chunks_give_the_same_release(models, tmp_path, monkeypatch, model, method,
                                                                 options):
    """Real weights span many chunks: min/max across chunks and per-row chunks must not change a byte.
    1000 bytes is not a multiple of any row here, and smaller than one row of the 256-wide MLP."""
    from sarai_onnx import tensor_io

    src, feeds = models[model]
    allow = options.get("op_types_to_quantize") == ["Conv"]  # quantizes nothing on purpose
    reference = quantize(src, str(tmp_path / "onnxruntime"), method=method, options=options, engine="onnxruntime",
                         allow_low_coverage=allow)
    monkeypatch.setattr(tensor_io, "CHUNK_BYTES", 1000)
    streaming = quantize(src, str(tmp_path / "streaming"), method=method, options=options, engine="streaming",
                         allow_low_coverage=allow)
    assert streaming["files"] == reference["files"]


@pytest.mark.parametrize("model,options", FP16_CASES, ids=[f"{m}-{'-'.join(o) or 'defaults'}" for m, o in FP16_CASES])
def test_fp16_streaming_equals_onnxruntime(models, tmp_path, model, options):
    src, feeds = models[model]
    streaming, reference = _build_both(src, tmp_path, "fp16", options)
    ours, theirs = _initializers(streaming["model_path"]), _initializers(reference["model_path"])
    assert any(t.data_type == TensorProto.FLOAT16 for t in theirs.values())
    assert {n: numpy_helper.to_array(t).tobytes() for n, t in ours.items()} == \
        {n: numpy_helper.to_array(t).tobytes() for n, t in theirs.items()}
    assert streaming["files"] == reference["files"]
    _assert_same_outputs(streaming, reference, feeds)


def test_onnxruntime_engine_equals_quantize_dynamic_itself(tiny_talker, tmp_path):
    """The onnxruntime engine swaps quantize_dynamic's loader (no file beside the source, no copy);
    its release must still be what quantize_dynamic writes given the model's path."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    work = tmp_path / "work"
    work.mkdir()
    name = os.path.basename(tiny_talker)
    for suffix in ("", ".data"):
        shutil.copyfile(tiny_talker + suffix, work / (name + suffix))
    (tmp_path / "direct").mkdir()
    quantize_dynamic(str(work / name), str(tmp_path / "direct" / "int8.onnx"), per_channel=True,
                     weight_type=QuantType.QUInt8, use_external_data_format=True)
    ours = quantize(tiny_talker, str(tmp_path / "release"), model_name="int8.onnx", engine="onnxruntime",
                    options={"per_channel": True, "weight_type": "QUInt8"})
    for name in ("int8.onnx", "int8.onnx.data"):
        direct = files.sha256_file(str(tmp_path / "direct" / name))
        assert direct == files.sha256_file(os.path.join(ours["dest"], name)), name


def test_no_copy_of_the_source_is_made(tiny_talker, tmp_path, monkeypatch):
    def refuse(*args):
        raise AssertionError(f"copy_file{args}: the source was copied")

    monkeypatch.setattr(files, "copy_file", refuse)
    for engine in ("streaming", "onnxruntime"):
        assert quantize(tiny_talker, str(tmp_path / engine), engine=engine)["changed"]


def test_unsupported_model_falls_back_to_onnxruntime_or_fails_when_streaming_is_asked(models, tmp_path):
    src, feeds = models["attention"]
    result = quantize(src, str(tmp_path / "int8"))
    assert result["engine"] == "onnxruntime" and "attn (Attention)" in result["engine_fallback_reason"]
    record = json.load(open(result["record_path"]))
    assert record["engine"] == "onnxruntime" and record["engine_fallback_reason"] == result["engine_fallback_reason"]
    assert any(n.op_type == "QAttention" for n in onnx.load(result["model_path"]).graph.node)
    assert _outputs(result["model_path"], feeds)[0].shape == (1, 4, 16)
    checked = quantize(src, str(tmp_path / "check"), check_mode=True)
    assert checked["engine"] == "onnxruntime" and "Attention" in checked["engine_fallback_reason"]
    with pytest.raises(SaraiError, match=r"streaming engine cannot build dynamic_int8 from .*attn \(Attention\).*"
                                         r"use engine=onnxruntime"):
        quantize(src, str(tmp_path / "streaming"), engine="streaming")
    assert sorted(os.listdir(tmp_path)) == ["int8"]


def test_engine_is_recorded_with_peak_rss_and_not_part_of_idempotence(tiny_talker, tmp_path):
    dest = str(tmp_path / "int8")
    built = quantize(tiny_talker, dest, engine="onnxruntime")
    record = json.load(open(built["record_path"]))
    assert record["engine"] == "onnxruntime" and record["engine_fallback_reason"] is None
    assert record["peak_rss_mb"] > 0 and built["peak_rss_mb"] >= record["peak_rss_mb"]
    again = quantize(tiny_talker, dest)  # streaming would build the same files: nothing to do
    assert not again["changed"] and again["engine"] == "onnxruntime" and again["peak_rss_mb"] > 0
    assert again["manifest_sha256"] == built["manifest_sha256"]


def test_engine_choices_are_checked(tiny_talker, tmp_path):
    with pytest.raises(SaraiError, match="unknown engine 'fast': use streaming or onnxruntime"):
        quantize(tiny_talker, str(tmp_path / "x"), engine="fast")
    with pytest.raises(SaraiError, match="method none has no onnxruntime engine"):
        quantize(tiny_talker, str(tmp_path / "x"), method="none", engine="onnxruntime")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- disk space

def test_streaming_preflight_is_the_size_it_writes(tiny_talker, tmp_path):
    for method in ("dynamic_int8", "fp16"):
        graph = q.load_graph(tiny_talker)
        plan = q.plan_streaming(tiny_talker, graph, method, q.normalize_options(method, {})[1])
        built = quantize(tiny_talker, str(tmp_path / method), method=method)
        data = os.path.getsize(built["data_path"])
        assert plan.output_bytes == data
        source = q.describe_model_files(q.model_files(tiny_talker))
        output, temp = q.space_needed(method, "streaming", source, graph, {}, plan)
        assert temp == 0 and data < output <= built["size_bytes"] + 2 * source["files"][0]["size"] + (1 << 20)


def test_onnxruntime_engine_needs_a_model_copy_in_tmp_dir_and_streaming_none(tiny_talker, tmp_path, monkeypatch):
    tmp_dir = tmp_path / "tmp"
    tmp_dir.mkdir()
    real = shutil.disk_usage

    def tmp_dir_is_full(path):
        return shutil._ntuple_diskusage(10, 10, 0) if os.path.samefile(path, tmp_dir) else real(path)

    monkeypatch.setattr(q.shutil, "disk_usage", tmp_dir_is_full)
    with pytest.raises(SaraiError, match=r"not enough free space under .*tmp for onnxruntime's temporary FP32 "
                                         r"copy of the model: need about \d+ MiB"):
        quantize(tiny_talker, str(tmp_path / "ort"), engine="onnxruntime", tmp_dir=str(tmp_dir))
    assert quantize(tiny_talker, str(tmp_path / "streaming"), tmp_dir=str(tmp_dir))["engine"] == "streaming"
    assert os.listdir(tmp_dir) == []
