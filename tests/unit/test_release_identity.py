"""A release's manifest must be the one its id names (finding 2), and release names."""
from __future__ import annotations

import os
import shutil

import pytest

from helpers import flip_byte, make_release, run_module
from sarai_onnx import files, release
from sarai_onnx.errors import SaraiError
from sarai_onnx.manifest import manifest, release_dir_problems


def _tamper(path):
    """A byte changed in the data file and the manifest rewritten to match: every file verifies
    against the manifest on disk, which is no longer the release's."""
    flip_byte(os.path.join(path, "agi_audio_core_int8.onnx.data"))
    rewritten = manifest(path, state="present")
    assert rewritten["changed"]
    return rewritten["manifest_sha256"]


def test_rewritten_manifest_verifies_when_the_id_is_not_checked(tmp_path):
    # What the deploy saw before: the manifest on the server was trusted as it was.
    _, path, _ = make_release(tmp_path)
    _tamper(path)
    assert manifest(path, state="verified", release_id="")["verified"]


def test_rewritten_manifest_is_refused_by_the_directory_name(tmp_path):
    release_id, path, original = make_release(tmp_path)
    tampered = _tamper(path)
    result = manifest(path, state="verified")
    assert not result["verified"] and result["release_id"] == release_id
    assert result["files"] == []  # refused before any file is trusted
    assert result["mismatches"] == [{"file": "MANIFEST.sha256", "problem": "release_id",
                                     "expected": original[:12], "actual": tampered}]
    assert os.path.join(path, "MANIFEST.sha256") in result["msg"]
    assert tampered in result["msg"] and original[:12] in result["msg"]
    assert f"remove {path}" in result["msg"]


def test_module_refuses_a_partial_copy_whose_manifest_is_not_the_release(tmp_path, capsys):
    release_id, path, original = make_release(tmp_path)
    partial = os.path.join(tmp_path, release.partial_dir_name(release_id, "20261123T101500Z"))
    os.rename(path, partial)
    tampered = _tamper(partial)
    code, result = run_module("onnx_manifest", {"path": partial, "release_id": release_id,
                                                "manifest_sha256": original}, capsys)
    assert code == 1 and result["failed"] and not result["verified"]
    assert result["mismatches"][0]["problem"] == "manifest_sha256"
    # Names the file and both full hashes.
    assert os.path.join(partial, "MANIFEST.sha256") in result["msg"]
    assert tampered in result["msg"] and original in result["msg"]


def test_intact_release_verifies_against_its_id_and_hash(tmp_path, capsys):
    release_id, path, original = make_release(tmp_path)
    code, result = run_module("onnx_manifest", {"path": path, "release_id": release_id,
                                                "manifest_sha256": original.upper()}, capsys)
    assert code == 0 and result["verified"] and result["expected_manifest_sha256"] == original
    assert [f["name"] for f in result["files"]] == ["agi_audio_core_int8.onnx", "agi_audio_core_int8.onnx.data",
                                                    "quantization.json"]


def test_directory_renamed_to_another_id_is_refused(tmp_path):
    release_id, path, _ = make_release(tmp_path)
    other = os.path.join(tmp_path, "int8-" + "0" * 12)
    os.rename(path, other)
    result = manifest(other, state="verified")
    assert not result["verified"] and result["mismatches"][0]["expected"] == "0" * 12


@pytest.mark.parametrize("params, words", [
    ({"release_id": "int8_0123456789ab"}, "is not a release id"),
    ({"release_id": "int8-0123456789AB"}, "is not a release id"),
    ({"manifest_sha256": "abc"}, "must be the 64 hex digits"),
    ({"release_id": "int8-0123456789ab", "manifest_sha256": "f" * 64}, "name different manifests"),
])
def test_bad_identity_values_are_refused_naming_them(tmp_path, params, words):
    _, path, _ = make_release(tmp_path)
    with pytest.raises(SaraiError, match=words):
        manifest(path, state="verified", **params)


def test_identity_options_do_not_apply_to_present(tmp_path):
    _, path, _ = make_release(tmp_path)
    with pytest.raises(SaraiError, match="use them with state=verified"):
        manifest(path, state="present", release_id=os.path.basename(path))


def test_release_dir_problems_never_reads_data_and_flags_half_releases(tmp_path):
    release_id, path, _ = make_release(tmp_path, data_size=8192)
    assert release_dir_problems(path) == []
    flip_byte(os.path.join(path, "agi_audio_core_int8.onnx.data"))
    assert release_dir_problems(path) == []  # same size: only hashing finds it (the transfer does)
    with open(os.path.join(path, "agi_audio_core_int8.onnx.data"), "r+b") as fh:
        fh.truncate(100)
    assert release_dir_problems(path) == ["agi_audio_core_int8.onnx.data: size is 100, manifest expects 8192"]
    os.unlink(os.path.join(path, "agi_audio_core_int8.onnx.data"))
    assert release_dir_problems(path) == ["agi_audio_core_int8.onnx.data: missing"]
    os.unlink(os.path.join(path, files.MANIFEST_NAME))
    assert "does not exist" in release_dir_problems(path)[0]


def test_release_dir_problems_checks_the_name(tmp_path):
    _, path, _ = make_release(tmp_path)
    moved = os.path.join(tmp_path, "int8-" + "a" * 12)
    shutil.move(path, moved)
    assert "is not the manifest of this release" in release_dir_problems(moved)[0]


def test_release_names():
    assert release.parse_release_id("int8-0123456789ab") == ("int8", "0123456789ab")
    assert release.parse_release_id("my_int8-0123456789ab") == ("my_int8", "0123456789ab")
    for bad in ("int8-0123456789a", "int-8-0123456789ab", ".int8-0123456789ab", "", None, 8):
        assert release.parse_release_id(bad) is None
    name = release.partial_dir_name("int8-0123456789ab", "20261123T101500Z")
    assert name == ".int8-0123456789ab.partial-20261123T101500Z"
    assert release.PARTIAL_DIR.match(name).group("id") == "int8-0123456789ab"
    with pytest.raises(SaraiError):
        release.partial_dir_name("int8-0123456789ab", "a/b")
