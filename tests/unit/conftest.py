"""Fixtures for the sarai_onnx tests: small seeded talker models, built once per session."""
from __future__ import annotations

import os
import pathlib
import shutil
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
for extra in (ROOT / "module_utils", ROOT / "tools"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from make_talker_model import build_talker_model  # noqa: E402
from sarai_onnx.quantize import quantize  # noqa: E402

# ~7 MB FP32: big enough that graph overhead does not blur size ratios, small enough to be quick.
TALKER = dict(hidden=256, vocab=1024, layers=2, seed=0)


@pytest.fixture(scope="session")
def talker(tmp_path_factory):
    """Path of the shared FP32 model (.onnx + .onnx.data). Read-only: copy it before damaging it."""
    path = tmp_path_factory.mktemp("fp32") / "agi_audio_core.onnx"
    build_talker_model(str(path), **TALKER)
    return str(path)


@pytest.fixture(scope="session")
def talker_sr(tmp_path_factory):
    """A tiny talker with an int64 scalar input `sr` that must be 16000."""
    path = tmp_path_factory.mktemp("fp32sr") / "talker_sr.onnx"
    build_talker_model(str(path), hidden=64, vocab=128, layers=1, seed=1, with_sample_rate=True)
    return str(path)


# A tiny talker whose layer-1 MLP carries 2 massive-activation channels (tools/make_talker_model.py):
# default dynamic INT8 loses fidelity on it, keeping that layer's down_proj in FP32 restores it.
OUTLIERS = dict(hidden=64, vocab=128, layers=2, seed=0, outliers=2, outlier_scale=1000.0, outlier_layers=[1])


@pytest.fixture(scope="session")
def talker_outliers(tmp_path_factory):
    """Path of the shared tiny outlier model (read-only)."""
    path = tmp_path_factory.mktemp("outliers") / "agi_audio_core.onnx"
    build_talker_model(str(path), **OUTLIERS)
    return str(path)


@pytest.fixture(scope="session")
def tiny_talker(tmp_path_factory):
    """A one-layer talker (~0.2 MB) for tests that build many releases."""
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    build_talker_model(str(path), hidden=64, vocab=128, layers=1, seed=2)
    return str(path)


@pytest.fixture(scope="session")
def releases(talker, tmp_path_factory):
    """Release dirs built once: {method: quantize() result}."""
    base = tmp_path_factory.mktemp("releases")
    built = {}
    for method, name in (("dynamic_int8", "agi_audio_core_int8.onnx"), ("fp16", "agi_audio_core_fp16.onnx"),
                         ("matmul_nbits", "agi_audio_core_int4.onnx"), ("none", "agi_audio_core.onnx")):
        built[method] = quantize(talker, str(base / method), method=method, model_name=name)
    return built


@pytest.fixture
def model_copy(talker, tmp_path):
    """A private copy of the FP32 model (both files) that a test may damage."""
    dest = tmp_path / "src"
    dest.mkdir()
    for suffix in ("", ".data"):
        shutil.copyfile(talker + suffix, dest / (os.path.basename(talker) + suffix))
    return str(dest / os.path.basename(talker))
