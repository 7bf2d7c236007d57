"""sarai_onnx.quantize: the four methods, provenance, idempotence, atomicity and bad input."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import onnxruntime as ort
import pytest

from helpers import cosine, snapshot
from sarai_onnx import quantize as q
from sarai_onnx.errors import SaraiError
from sarai_onnx.quantize import quantize


def _run(path, x):
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"hidden_states": x})[0]


def test_int8_release_layout_ratio_and_coverage(releases):
    r = releases["dynamic_int8"]
    assert r["changed"] and r["ratio"] <= 0.26
    assert sorted(os.listdir(r["dest"])) == sorted(["agi_audio_core_int8.onnx", "agi_audio_core_int8.onnx.data",
                                                   "quantization.json", "MANIFEST.sha256"])
    for name in os.listdir(r["dest"]):
        assert os.stat(os.path.join(r["dest"], name)).st_mode & 0o777 == 0o644
    assert os.stat(r["dest"]).st_mode & 0o777 == 0o755
    cov = r["coverage"]
    assert cov["weight_tensors"] == 13 and cov["quantized_tensors"] == 13 and cov["byte_share"] == 1.0
    assert r["release_sha12"] == r["manifest_sha256"][:12]


def test_quantization_json_records_provenance(releases, talker):
    r = releases["dynamic_int8"]
    rec = json.load(open(r["record_path"]))
    assert rec["method"] == "dynamic_int8" and rec["options"]["weight_type"] == "QInt8"
    assert rec["source"]["sha256"] == r["source_sha256"]
    assert {f["name"] for f in rec["source"]["files"]} == {"agi_audio_core.onnx", "agi_audio_core.onnx.data"}
    assert {f["name"] for f in rec["output"]["files"]} == {"agi_audio_core_int8.onnx", "agi_audio_core_int8.onnx.data"}
    assert set(rec["versions"]) >= {"onnx", "onnxruntime", "numpy", "python"}
    assert rec["host"] and rec["user"] and rec["created_utc"].endswith("Z")
    assert rec["duration_s"] > 0 and rec["ratio"] == r["ratio"] and rec["coverage"] == r["coverage"]


@pytest.mark.parametrize("method", ["dynamic_int8", "fp16", "matmul_nbits"])
def test_outputs_load_and_stay_close_to_fp32(releases, talker, method):
    x = np.random.default_rng(1).standard_normal((1, 16, 256)).astype(np.float32)
    out = _run(releases[method]["model_path"], x)
    assert out.dtype == np.float32  # fp16 keeps float32 I/O by default
    assert cosine(_run(talker, x), out) >= 0.99


def test_fp16_has_unique_node_names_and_halves_the_size(releases):
    import onnx

    model = onnx.load(releases["fp16"]["model_path"], load_external_data=False)
    names = [n.name for n in model.graph.node]
    assert len(names) == len(set(names))
    assert 0.45 < releases["fp16"]["ratio"] < 0.55


def test_int4_is_smaller_than_int8(releases):
    assert releases["matmul_nbits"]["ratio"] < releases["dynamic_int8"]["ratio"]
    assert releases["matmul_nbits"]["options"] == {"bits": 4, "block_size": 32, "symmetric": False,
                                                   "accuracy_level": None, "nodes_to_exclude": [],
                                                   "op_types_to_quantize": []}


def test_none_copies_the_reference_byte_for_byte(releases, talker):
    r = releases["none"]
    for suffix in ("", ".data"):
        assert open(talker + suffix, "rb").read() == open(r["model_path"] + suffix, "rb").read()
    assert r["ratio"] < 1.001 and r["coverage"]["quantized_tensors"] == 0


def test_second_run_is_unchanged_and_rewrites_nothing(releases, talker):
    r = releases["dynamic_int8"]
    mtimes = {n: os.stat(os.path.join(r["dest"], n)).st_mtime_ns for n in os.listdir(r["dest"])}
    again = quantize(talker, r["dest"], method="dynamic_int8", model_name="agi_audio_core_int8.onnx")
    assert not again["changed"] and again["manifest_sha256"] == r["manifest_sha256"]
    assert {n: os.stat(os.path.join(r["dest"], n)).st_mtime_ns for n in os.listdir(r["dest"])} == mtimes


def test_unchanged_source_is_not_hashed_again(model_copy, tmp_path, monkeypatch):
    dest = str(tmp_path / "int8")
    first = quantize(model_copy, dest, method="dynamic_int8")
    assert first["changed"]
    hashed = []
    real = q.files.sha256_file
    monkeypatch.setattr(q.files, "sha256_file", lambda path, *a, **k: hashed.append(path) or real(path, *a, **k))
    again = quantize(model_copy, dest, method="dynamic_int8")
    assert not again["changed"] and "not hashed again" in again["msg"]
    assert not [p for p in hashed if p.startswith(os.path.dirname(model_copy))]  # the release is still verified
    assert hashed and all(p.startswith(dest) for p in hashed)

    # Same bytes rewritten (new ctime): hashed again, same sha256, so reused without a rebuild.
    with open(model_copy + ".data", "r+b") as fh:
        head = fh.read(4)
        fh.seek(0)
        fh.write(head)
    hashed.clear()
    same = quantize(model_copy, dest, method="dynamic_int8")
    assert not same["changed"] and "not hashed again" not in same["msg"]
    assert model_copy + ".data" in hashed

    # Different bytes with the size and mtime put back: ctime tells, the release is rebuilt.
    st = os.stat(model_copy + ".data")
    with open(model_copy + ".data", "r+b") as fh:
        fh.seek(st.st_size - 4)
        fh.write(b"\1\2\3\4")
    os.utime(model_copy + ".data", ns=(st.st_atime_ns, st.st_mtime_ns))
    rebuilt = quantize(model_copy, dest, method="dynamic_int8")
    assert rebuilt["changed"] and rebuilt["source_sha256"] != first["source_sha256"]


def test_other_options_or_damaged_release_are_rebuilt(talker, tmp_path):
    dest = str(tmp_path / "int8")
    first = quantize(talker, dest, method="dynamic_int8")
    per_channel = quantize(talker, dest, method="dynamic_int8", options={"per_channel": True})
    assert per_channel["changed"] and per_channel["options"]["per_channel"] is True
    with open(per_channel["data_path"], "r+b") as fh:
        fh.write(b"\0\0\0\0")
    repaired = quantize(talker, dest, method="dynamic_int8", options={"per_channel": True})
    assert repaired["changed"] and repaired["manifest_sha256"] != first["manifest_sha256"]


def test_check_mode_reports_and_writes_nothing(talker, tmp_path):
    dest = tmp_path / "int8"
    before = snapshot(tmp_path)
    result = quantize(talker, str(dest), method="dynamic_int8", check_mode=True)
    assert result["changed"] and "would build" in result["msg"]
    assert result["planned"]["quantized_tensors"] == 13
    assert snapshot(tmp_path) == before and not dest.exists()


def test_nothing_is_written_beside_the_source(talker, tmp_path):
    before = sorted(os.listdir(os.path.dirname(talker)))
    quantize(talker, str(tmp_path / "int8"), method="dynamic_int8")
    assert sorted(os.listdir(os.path.dirname(talker))) == before  # no model-inferred.onnx
    assert sorted(os.listdir(tmp_path)) == ["int8"]  # no staging or temp dirs left


def test_read_only_source_directory_works(model_copy, tmp_path):
    src_dir = os.path.dirname(model_copy)
    os.chmod(src_dir, 0o555)
    try:
        assert quantize(model_copy, str(tmp_path / "int8"), method="dynamic_int8")["changed"]
    finally:
        os.chmod(src_dir, 0o755)


@pytest.mark.parametrize("engine", ["streaming", "onnxruntime"])
def test_failed_build_leaves_existing_release_untouched(releases, talker, tmp_path, monkeypatch, engine):
    from sarai_onnx import stream_int8

    dest = tmp_path / "int8"
    shutil.copytree(releases["dynamic_int8"]["dest"], dest)
    before = snapshot(dest)

    def half_written(*args):
        out_path = args[1]
        open(out_path, "wb").write(b"half a model")
        raise RuntimeError("disk on fire")

    monkeypatch.setitem(q.BUILDERS, "dynamic_int8", half_written)
    monkeypatch.setattr(stream_int8.Plan, "write", half_written)
    with pytest.raises(SaraiError, match=f"dynamic_int8 quantization of .* \\({engine} engine\\) failed: "
                                         "RuntimeError: disk on fire"):
        quantize(talker, str(dest), method="dynamic_int8", options={"per_channel": True}, engine=engine)
    assert snapshot(dest) == before
    assert sorted(os.listdir(tmp_path)) == ["int8"]


def test_unloadable_output_is_never_installed(talker, tmp_path, monkeypatch):
    def garbage(src, out_path, opts):
        shutil.copyfile(src, out_path)  # graph without its data file: onnxruntime cannot load it
        open(out_path + ".data", "wb").write(b"\0" * 16)

    monkeypatch.setitem(q.BUILDERS, "fp16", garbage)
    monkeypatch.setattr(q, "_ensure_layout", lambda path: None)
    with pytest.raises(SaraiError, match="onnxruntime cannot load"):
        quantize(talker, str(tmp_path / "fp16"), method="fp16", engine="onnxruntime")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- bad input

def test_missing_source(tmp_path):
    with pytest.raises(SaraiError, match=r"model file .*nope.onnx does not exist"):
        quantize(str(tmp_path / "nope.onnx"), str(tmp_path / "out"))
    assert os.listdir(tmp_path) == []


def test_non_onnx_source(tmp_path):
    src = tmp_path / "notes.onnx"
    src.write_text("this is a text file, not a model\n" * 50)
    with pytest.raises(SaraiError, match="is not an ONNX model"):
        quantize(str(src), str(tmp_path / "out"))
    assert os.listdir(tmp_path) == ["notes.onnx"]


def test_source_with_missing_external_data(model_copy, tmp_path):
    os.unlink(model_copy + ".data")
    with pytest.raises(SaraiError, match=r"external data file .*agi_audio_core.onnx.data .* is missing"):
        quantize(model_copy, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_source_with_truncated_external_data(model_copy, tmp_path):
    with open(model_copy + ".data", "r+b") as fh:
        fh.truncate(4096)
    with pytest.raises(SaraiError, match=r"is truncated: 4096 bytes"):
        quantize(model_copy, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_unknown_method_and_misplaced_option(talker, tmp_path):
    with pytest.raises(SaraiError, match="unknown quantization method 'int3': use one of none, dynamic_int8"):
        quantize(talker, str(tmp_path / "out"), method="int3")
    with pytest.raises(SaraiError, match="bits do not apply to method dynamic_int8"):
        quantize(talker, str(tmp_path / "out"), method="dynamic_int8", options={"bits": 4})
    with pytest.raises(SaraiError, match="block_size 48 must be a power of two"):
        quantize(talker, str(tmp_path / "out"), method="matmul_nbits", options={"block_size": 48})
    assert os.listdir(tmp_path) == []


def test_dest_equal_to_or_containing_source(model_copy):
    before = snapshot(os.path.dirname(model_copy))
    with pytest.raises(SaraiError, match="is the source model itself"):
        quantize(model_copy, model_copy)
    with pytest.raises(SaraiError, match="contains the source model"):
        quantize(model_copy, os.path.dirname(model_copy))
    with pytest.raises(SaraiError, match="contains the source model"):
        quantize(model_copy, os.path.dirname(os.path.dirname(model_copy)))
    assert snapshot(os.path.dirname(model_copy)) == before


def test_dest_not_writable(talker):
    # /proc refuses new directories even to root, so this holds for any user running the tests.
    with pytest.raises(SaraiError, match=r"dest /proc/sarai-release/int8 is not writable"):
        quantize(talker, "/proc/sarai-release/int8")


def test_dest_holding_other_files_is_not_replaced(talker, tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(SaraiError, match="not a release .* refusing to replace it"):
        quantize(talker, str(tmp_path))
    assert snapshot(tmp_path) == {"precious.txt": b"keep me"}


def test_dest_that_is_a_file(talker, tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(SaraiError, match="exists and is not a directory"):
        quantize(talker, str(tmp_path / "out"))


def test_not_enough_space_fails_before_writing(talker, tmp_path, monkeypatch):
    monkeypatch.setattr(q.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 1024))
    with pytest.raises(SaraiError, match=r"not enough free space .* need about \d+ MiB, have 0 MiB"):
        quantize(talker, str(tmp_path / "out"))
    assert os.listdir(tmp_path) == []
