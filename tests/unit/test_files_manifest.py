"""Hashing, manifests (write, verify, damage), atomic writes: sarai_onnx.files and .manifest."""
from __future__ import annotations

import hashlib
import os
import shutil

import pytest

from helpers import run_module, snapshot
from sarai_onnx import files
from sarai_onnx.errors import SaraiError
from sarai_onnx.manifest import manifest


def test_streamed_sha256_matches_hashlib(tmp_path):
    path = tmp_path / "blob"
    data = os.urandom(3 * files.CHUNK + 17)
    path.write_bytes(data)
    assert files.sha256_file(str(path)) == hashlib.sha256(data).hexdigest()


def test_release_manifest_lists_every_file_in_sha256sum_format(releases):
    release = releases["dynamic_int8"]
    lines = open(release["manifest_path"]).read().splitlines()
    names = [line.split("  ", 1)[1] for line in lines]
    assert names == sorted(["agi_audio_core_int8.onnx", "agi_audio_core_int8.onnx.data", "quantization.json"])
    for line in lines:
        digest, name = line.split("  ", 1)
        assert digest == files.sha256_file(os.path.join(release["dest"], name))
    assert release["manifest_sha256"] == files.sha256_file(release["manifest_path"])


def test_present_writes_once_then_reports_unchanged(model_copy):
    first = manifest(model_copy, state="present")
    assert first["changed"] and os.path.exists(first["manifest_path"])
    assert [f["name"] for f in first["files"]] == ["agi_audio_core.onnx", "agi_audio_core.onnx.data"]
    assert os.stat(first["manifest_path"]).st_mode & 0o777 == 0o644
    again = manifest(model_copy, state="present")
    assert not again["changed"] and again["manifest_sha256"] == first["manifest_sha256"]
    assert manifest(model_copy, state="verified")["verified"]


def test_present_in_check_mode_writes_nothing(model_copy):
    result = manifest(model_copy, state="present", check_mode=True)
    assert result["changed"] and not os.path.exists(result["manifest_path"])


def test_single_flipped_byte_in_external_data_is_detected(releases, tmp_path):
    dest = tmp_path / "copy"
    shutil.copytree(releases["dynamic_int8"]["dest"], dest)
    data = dest / "agi_audio_core_int8.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data.write_bytes(bytes(raw))
    result = manifest(str(dest), state="verified")
    assert not result["verified"]
    assert [(m["file"], m["problem"]) for m in result["mismatches"]] == [("agi_audio_core_int8.onnx.data", "sha256")]
    assert "agi_audio_core_int8.onnx.data: sha256" in result["msg"]


def test_missing_extra_and_truncated_files_are_each_reported(releases, tmp_path):
    dest = tmp_path / "copy"
    shutil.copytree(releases["dynamic_int8"]["dest"], dest)
    (dest / "agi_audio_core_int8.onnx").unlink()
    (dest / "stray.txt").write_text("not in the manifest")
    data = dest / "agi_audio_core_int8.onnx.data"
    data.write_bytes(data.read_bytes()[:1000])
    problems = {(m["file"], m["problem"]) for m in manifest(str(dest), state="verified")["mismatches"]}
    assert problems == {("agi_audio_core_int8.onnx", "missing"), ("stray.txt", "extra"),
                        ("agi_audio_core_int8.onnx.data", "size")}


def test_corrupted_manifest_entry_names_the_line(releases, tmp_path):
    dest = tmp_path / "copy"
    shutil.copytree(releases["dynamic_int8"]["dest"], dest)
    path = dest / files.MANIFEST_NAME
    lines = path.read_text().splitlines()
    lines[1] = "zz" + lines[1][2:]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SaraiError, match=r"line 2 .*corrupt"):
        manifest(str(dest), state="verified")


def test_manifest_entry_outside_the_directory_is_refused(tmp_path):
    (tmp_path / files.MANIFEST_NAME).write_text("0" * 64 + "  ../etc/passwd\n")
    with pytest.raises(SaraiError, match="outside its directory"):
        manifest(str(tmp_path), state="verified")


def test_missing_manifest_says_how_to_create_it(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x")
    with pytest.raises(SaraiError, match="state=present"):
        manifest(str(tmp_path), state="verified")


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "f.json"
    target.write_text("old")
    monkeypatch.setattr(files.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(5, "I/O error")))
    with pytest.raises(OSError):
        files.write_file_atomic(str(target), b"new")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["f.json"]


def test_module_verifies_and_fails_on_damage(releases, tmp_path, capsys):
    dest = tmp_path / "copy"
    shutil.copytree(releases["fp16"]["dest"], dest)
    code, result = run_module("onnx_manifest", {"path": str(dest)}, capsys)
    assert code == 0 and result["verified"] and not result["changed"]
    assert result["manifest_sha256"] == releases["fp16"]["manifest_sha256"]
    with open(dest / "agi_audio_core_fp16.onnx.data", "r+b") as fh:
        fh.seek(12345)
        byte = fh.read(1)
        fh.seek(12345)
        fh.write(bytes([byte[0] ^ 0x80]))
    code, result = run_module("onnx_manifest", {"path": str(dest), "state": "verified"}, capsys)
    assert code == 1 and result["failed"] and not result["verified"]
    assert result["mismatches"][0]["file"] == "agi_audio_core_fp16.onnx.data"
    assert "does not verify" in result["msg"]


def test_module_present_with_diff_and_check_mode(model_copy, capsys):
    before = snapshot(os.path.dirname(model_copy))
    code, result = run_module("onnx_manifest", {"path": model_copy, "state": "present",
                                                "_ansible_check_mode": True, "_ansible_diff": True}, capsys)
    assert code == 0 and result["changed"] and "agi_audio_core.onnx.data" in result["diff"]["after"]
    assert snapshot(os.path.dirname(model_copy)) == before


def test_release_directory_verifies_without_numpy_or_onnx(releases, tmp_path):
    # Inference hosts may verify with a plain system Python: block the heavy imports and run the CLI.
    import json
    import subprocess
    import sys

    from helpers import ROOT

    params = tmp_path / "p.json"
    params.write_text(json.dumps({"path": releases["fp16"]["dest"], "state": "verified"}))
    code = ("import runpy, sys; sys.modules.update(numpy=None, onnx=None, onnxruntime=None); "
            f"sys.argv = ['sarai_onnx', 'manifest', '--params', {str(params)!r}]; "
            "runpy.run_module('sarai_onnx', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "module_utils", capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["verified"] is True


def test_gate_option_names_match_validate():
    from sarai_onnx.commands import GATE_OPTIONS
    from sarai_onnx.validate import GATES, SHAPES_GATE

    assert set(GATE_OPTIONS) == set(GATES) | {SHAPES_GATE}
