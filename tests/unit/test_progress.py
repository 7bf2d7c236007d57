"""progress_file: what a poller sees while onnx_quantize runs."""
from __future__ import annotations

import json

import pytest

from sarai_onnx import files, progress, stream_int8
from sarai_onnx.errors import SaraiError
from sarai_onnx.quantize import quantize

KEYS = {"phase", "tensors_done", "tensors_total", "bytes_done", "bytes_total", "elapsed_s", "engine"}


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _read(path):
    return json.loads(path.read_text())


def test_phases_are_written_at_once_and_tensor_counts_at_most_once_a_second(tmp_path):
    path, clock = tmp_path / "p.json", FakeClock()
    p = progress.Progress(str(path), engine="streaming", clock=clock)
    p.phase("quantize", tensors_total=3, bytes_total=300)
    assert _read(path) == {"phase": "quantize", "tensors_done": 0, "tensors_total": 3, "bytes_done": 0,
                           "bytes_total": 300, "elapsed_s": 0.0, "engine": "streaming"}
    clock.now += 0.4
    p.advance(1, 100)
    assert _read(path)["tensors_done"] == 0  # 0.4 s after the last write: not yet
    clock.now += 0.7
    p.advance(1, 100)
    assert _read(path)["tensors_done"] == 2 and _read(path)["bytes_done"] == 200
    assert _read(path)["elapsed_s"] == pytest.approx(1.1)
    p.advance(1, 100)
    p.finish()
    assert _read(path) == {"phase": "done", "tensors_done": 3, "tensors_total": 3, "bytes_done": 300,
                           "bytes_total": 300, "elapsed_s": pytest.approx(1.1), "engine": "streaming"}


def test_failure_is_the_last_word_and_a_bad_path_is_refused_first(tmp_path):
    path = tmp_path / "p.json"
    p = progress.Progress(str(path), engine="onnxruntime")
    p.phase("quantize")
    assert _read(path)["tensors_done"] is None  # the onnxruntime engine cannot count tensors
    p.finish(msg="disk on fire")
    assert _read(path)["phase"] == "failed" and _read(path)["msg"] == "disk on fire"
    with pytest.raises(SaraiError, match="progress_file .*/missing/p.json: .*/missing is not a writable directory"):
        progress.Progress(str(tmp_path / "missing" / "p.json"))
    progress.Progress(None).finish()  # no file, no error


def _recorded_phases(monkeypatch, path):
    seen = []
    real = files.write_json_atomic

    def record(target, doc):
        if target == str(path):
            seen.append(dict(doc))
        real(target, doc)

    monkeypatch.setattr(files, "write_json_atomic", record)
    return seen


@pytest.mark.parametrize("engine", ["streaming", "onnxruntime"])
def test_a_build_reports_every_phase_then_done(tiny_talker, tmp_path, monkeypatch, engine):
    path = tmp_path / "progress.json"
    seen = _recorded_phases(monkeypatch, path)
    quantize(tiny_talker, str(tmp_path / "int8"), engine=engine, progress_file=str(path))
    phases = [d["phase"] for i, d in enumerate(seen) if i == 0 or d["phase"] != seen[i - 1]["phase"]]
    assert phases == ["hash_source", "plan", "quantize", "load_check", "hash_output", "done"]
    assert all(set(d) == KEYS for d in seen)
    final = _read(path)
    assert final["phase"] == "done" and final["engine"] == engine and final["elapsed_s"] > 0
    if engine == "streaming":
        assert final["tensors_done"] == final["tensors_total"] >= 7  # the 7 MatMul weights at least
        assert final["bytes_done"] == final["bytes_total"] > 100_000
    else:
        assert final["tensors_done"] is None and final["bytes_total"] is None


def test_a_failed_build_and_an_unchanged_one_end_the_file(tiny_talker, tmp_path, monkeypatch):
    path = tmp_path / "progress.json"

    def broken(self, out_path, progress):
        raise RuntimeError("disk on fire")

    with monkeypatch.context() as m:
        m.setattr(stream_int8.Plan, "write", broken)
        with pytest.raises(SaraiError):
            quantize(tiny_talker, str(tmp_path / "int8"), progress_file=str(path))
    assert _read(path)["phase"] == "failed" and "disk on fire" in _read(path)["msg"]
    quantize(tiny_talker, str(tmp_path / "int8"), progress_file=str(path))
    seen = _recorded_phases(monkeypatch, path)
    assert not quantize(tiny_talker, str(tmp_path / "int8"), progress_file=str(path))["changed"]
    assert [d["phase"] for d in seen] == ["hash_source", "done"]
