"""The rules a release record from the build host must pass on the controller (issue 16, finding 1),
and the server side's own refusal of a manifest naming a file outside its release dir."""
from __future__ import annotations

import pytest

from helpers import make_release
from sarai_onnx import files
from sarai_onnx.errors import SaraiError
from sarai_onnx.release import parse_release_id, plain_name_problem
from sarai_release_record import record_problems, staged_files

SHA = "0123456789ab" + "c" * 52
CATALOG_INT8 = {"display_name": "Qwen3-Omni-3B-INT8", "file": "agi_audio_core_int8.onnx", "max_memory_mb": 1200}


def _record(**changes):
    record = {"id": f"int8-{SHA[:12]}", "variant": "int8", "model_name": "agi_audio_core_int8.onnx",
              "manifest_sha256": SHA, "release_sha12": SHA[:12], "dest": "/srv/build/int8", "size_bytes": 300,
              "files": [{"name": "agi_audio_core_int8.onnx", "size": 100},
                        {"name": "agi_audio_core_int8.onnx.data", "size": 200}]}
    record.update(changes)
    return record


def test_a_record_as_the_build_makes_it_passes():
    assert record_problems(_record(), "int8", CATALOG_INT8) == []


@pytest.mark.parametrize("name", ["../../pwned.txt", "sub/x", "a\\b", "..hidden", "..", ".", "", "x\ny",
                                  "x\x00", "/etc/passwd", 7, None])
def test_file_names_that_are_not_plain_are_refused_naming_the_field(name):
    record = _record(files=_record()["files"] + [{"name": name, "size": 1}])
    problems = record_problems(record, "int8", CATALOG_INT8)
    assert len(problems) == 1 and problems[0].startswith("model_build_releases.int8.files[2].name = "), problems


@pytest.mark.parametrize("name", ["quantization.json", "MANIFEST.sha256", "agi_audio_core_int8.onnx"])
def test_file_names_every_release_has_or_listed_twice_are_refused(name):
    record = _record(files=_record()["files"] + [{"name": name, "size": 1}])
    assert len(record_problems(record, "int8", CATALOG_INT8)) == 1


@pytest.mark.parametrize("size", [-1, 1.5, "100", True, None])
def test_sizes_must_be_whole_non_negative_numbers(size):
    record = _record(files=[{"name": "agi_audio_core_int8.onnx", "size": size}], size_bytes=size)
    problems = record_problems(record, "int8", CATALOG_INT8)
    assert [p.split(" = ")[0] for p in problems] == ["model_build_releases.int8.size_bytes",
                                                     "model_build_releases.int8.files[0].size"], problems


@pytest.mark.parametrize("model_name, expected", [
    ("../../x.onnx", "must be a plain file name"),
    ("agi_audio_core.onnx", "must be 'agi_audio_core_int8.onnx', the catalog's file for int8"),
])
def test_the_model_name_is_the_catalog_file(model_name, expected):
    problems = record_problems(_record(model_name=model_name), "int8", CATALOG_INT8)
    assert any(p.startswith(f'model_build_releases.int8.model_name = "{model_name}": {expected}') for p in problems), \
        problems


@pytest.mark.parametrize("changes", [
    {"id": "fp16-0123456789ab"},                  # another variant's id
    {"id": "int8-0123456789ab\n"},                # a trailing newline ($ would have matched it)
    {"id": "int8-../../../x"},
    {"id": "int8-ffffffffffff"},                  # does not name its manifest
    {"manifest_sha256": "../" + SHA[3:]},
    {"variant": "fp32"},
    {"dest": "/srv/build/int8\nx"},
])
def test_identity_fields_are_refused_when_they_disagree(changes):
    assert record_problems(_record(**changes), "int8", CATALOG_INT8), changes


def test_not_a_dict_and_no_files_are_refused():
    assert record_problems("int8", "int8", CATALOG_INT8)[0].startswith("model_build_releases.int8 = ")
    assert record_problems(_record(files=[]), "int8", CATALOG_INT8)[0].startswith("model_build_releases.int8.files = ")


def test_release_ids_and_plain_names_do_not_accept_a_trailing_newline():
    assert parse_release_id("int8-0123456789ab\n") is None
    assert plain_name_problem("agi_audio_core_int8.onnx") is None


def _staged(tmp_path):
    release_id, path, digest = make_release(tmp_path)
    record = _record(id=release_id, manifest_sha256=digest, release_sha12=digest[:12],
                     files=[{"name": "agi_audio_core_int8.onnx", "size": 512},
                            {"name": "agi_audio_core_int8.onnx.data", "size": 4096}])
    return record, path


def test_staged_files_are_those_of_the_manifest(tmp_path):
    record, path = _staged(tmp_path)
    names, problems = staged_files(path, record)
    assert problems == [] and names == ["agi_audio_core_int8.onnx", "agi_audio_core_int8.onnx.data",
                                        "quantization.json", "MANIFEST.sha256"]


def test_staged_manifest_listing_other_files_than_the_record_is_refused(tmp_path):
    record, path = _staged(tmp_path)
    names, problems = staged_files(path, dict(record, files=record["files"][:1]))
    assert names == [] and "the record and the manifest disagree" in problems[0]
    names, problems = staged_files(path, dict(record, manifest_sha256="f" * 64))
    assert names == [] and "the staged copy is not this release" in problems[0]


def test_server_refuses_a_release_manifest_naming_a_file_outside_its_dir(tmp_path):
    """Defence in depth: onnx_manifest's verification on a server parses a release dir's manifest
    with plain names only, so a listed `../x` is refused before any file is opened."""
    manifest = tmp_path / files.MANIFEST_NAME
    manifest.write_text(f"{'a' * 64}  ok.onnx\n{'b' * 64}  sub/../../pwned.txt\n")
    with pytest.raises(SaraiError, match=r"line 2 names 'sub/../../pwned.txt' outside its directory \(the name must be a plain file name"):
        files.parse_manifest(str(manifest), plain_names=True)
    # A model file's manifest (not a release dir's) may still list its data in a subdirectory.
    manifest.write_text(f"{'a' * 64}  ok.onnx\n{'b' * 64}  data/ok.onnx.data\n")
    assert [name for _, name in files.parse_manifest(str(manifest))] == ["ok.onnx", "data/ok.onnx.data"]
