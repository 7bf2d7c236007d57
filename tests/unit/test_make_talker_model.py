"""tools/make_talker_model.py: seeded, saved like a large export, well-conditioned outputs."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import onnx
import onnxruntime as ort

from helpers import ROOT
from make_talker_model import build_talker_model


def test_model_has_symbolic_signature_and_one_external_data_file(talker):
    model = onnx.load(talker, load_external_data=False)
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "hidden_states" and out.name == "logits"
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["batch", "seq", 256]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch", "seq", 1024]
    locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"agi_audio_core.onnx.data"}
    ops = {n.op_type for n in model.graph.node}
    assert {"LayerNormalization", "MatMul", "Softmax", "Erf"} <= ops
    for suffix in ("", ".data"):
        assert os.stat(talker + suffix).st_mode & 0o777 == 0o644


def test_same_seed_gives_identical_files_and_outputs_are_well_conditioned(talker, tmp_path):
    again = tmp_path / "agi_audio_core.onnx"
    build_talker_model(str(again), hidden=256, vocab=1024, layers=2, seed=0)
    for suffix in ("", ".data"):
        assert open(talker + suffix, "rb").read() == open(str(again) + suffix, "rb").read()
    x = np.random.default_rng(0).standard_normal((2, 8, 256)).astype(np.float32)
    logits = ort.InferenceSession(talker).run(None, {"hidden_states": x})[0]
    assert logits.shape == (2, 8, 1024)
    assert np.isfinite(logits).all() and 0.3 < logits.std() < 3.0


def test_sample_rate_variant_scales_by_sr(talker_sr):
    session = ort.InferenceSession(talker_sr)
    assert [(i.name, i.type, i.shape) for i in session.get_inputs()][1] == ("sr", "tensor(int64)", [])
    x = np.ones((1, 4, 64), np.float32)
    at_16k = session.run(None, {"hidden_states": x, "sr": np.array(16000, np.int64)})[0]
    at_8k = session.run(None, {"hidden_states": x, "sr": np.array(8000, np.int64)})[0]
    np.testing.assert_allclose(at_8k, at_16k / 2, rtol=1e-5, atol=1e-6)


def test_cli_writes_model_and_prints_summary(tmp_path):
    out = tmp_path / "m" / "tiny.onnx"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "make_talker_model.py"), "--out", str(out),
                           "--hidden", "64", "--vocab", "96", "--layers", "1", "--seed", "3",
                           "--outliers", "2", "--outlier-scale", "50", "--outlier-layers", "0"],
                          capture_output=True, text=True, check=True)
    assert '"params"' in proc.stdout
    assert out.exists() and (tmp_path / "m" / "tiny.onnx.data").exists()
    described = json.loads(onnx.load(str(out), load_external_data=False).doc_string)
    assert (described["outliers"], described["outlier_scale"], described["outlier_layers"]) == (2, 50.0, [0])


def _down_proj_nodes(path):
    model = onnx.load(path, load_external_data=False)
    return {n.input[1].split(".")[1]: n.name for n in model.graph.node
            if n.op_type == "MatMul" and n.input[1].endswith("mlp.down_proj.weight")}


def test_outliers_make_default_int8_fail_and_excluding_their_down_proj_pass(talker_outliers, tmp_path):
    from sarai_onnx.quantize import quantize
    from sarai_onnx.validate import compare

    x = np.random.default_rng(0).standard_normal((1, 16, 64)).astype(np.float32)

    def outputs(path):
        return {"logits": ort.InferenceSession(path).run(None, {"hidden_states": x})[0]}

    fp32 = outputs(talker_outliers)
    default = quantize(talker_outliers, str(tmp_path / "default"))
    excluded = quantize(talker_outliers, str(tmp_path / "excluded"),
                        options={"nodes_to_exclude": [_down_proj_nodes(talker_outliers)["1"]]})
    assert compare(fp32, outputs(default["model_path"]))["cosine"] < 0.98
    assert compare(fp32, outputs(excluded["model_path"]))["cosine"] >= 0.98
    assert excluded["coverage"]["byte_share"] > 0.8  # one node of 9 kept in FP32


def test_outlier_channels_carry_massive_activations_only_where_asked(talker_outliers):
    model = onnx.load(talker_outliers)
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    assert np.sort(weights["layers.1.mlp.up_proj.bias"])[-2:].tolist() == [1000.0, 1000.0]
    assert np.abs(weights["layers.0.mlp.up_proj.bias"]).max() < 1.0
    channels = np.argsort(weights["layers.1.mlp.up_proj.bias"])[-2:]
    rows = np.abs(weights["layers.1.mlp.down_proj.weight"]).max(axis=1)
    assert rows[channels].max() < rows.mean() / 100  # divided by the scale: the FP32 function stays sane


def test_zero_outliers_build_the_same_bytes_and_bad_outlier_options_fail(talker, tmp_path):
    again = tmp_path / "agi_audio_core.onnx"
    build_talker_model(str(again), hidden=256, vocab=1024, layers=2, seed=0, outliers=0, outlier_scale=5.0)
    for suffix in ("", ".data"):
        assert open(talker + suffix, "rb").read() == open(str(again) + suffix, "rb").read()
    with pytest.raises(ValueError, match="outlier_layers"):
        build_talker_model(str(tmp_path / "x.onnx"), hidden=64, vocab=96, layers=1, outliers=2, outlier_layers=[3])
    with pytest.raises(ValueError, match="outlier_scale"):
        build_talker_model(str(tmp_path / "x.onnx"), hidden=64, vocab=96, layers=1, outliers=2, outlier_scale=0.5)
