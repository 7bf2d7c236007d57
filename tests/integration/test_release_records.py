"""A compromised build host (issue 16, finding 1): its quantize result names files and a model that
would leave the release dirs. Real ansible-playbook runs of deploy_int8.yml and of roles model_build
and model_transfer on this machine (connection local), with one stand-in: the build host's
onnx_quantize, which returns what the test makes it return (a WANT_JSON module: an attacker's host
answers whatever it likes). The releases it points at are real release dirs with real manifests, so
before the fix the staged copy verified and the file outside was written."""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import yaml

from sarai_onnx import files

ROOT = pathlib.Path(__file__).resolve().parents[2]
CATALOG = yaml.safe_load((ROOT / "inventory" / "production" / "group_vars" / "all" / "sarai.yml").read_text())

# The build host's onnx_quantize: returns <dest>.result.json, whatever it holds.
COMPROMISED_QUANTIZE = """#!/usr/bin/python
# WANT_JSON
import json, sys
with open(sys.argv[1]) as handle:
    args = json.load(handle)
with open(args["dest"] + ".result.json") as handle:
    print(handle.read())
"""


def build_release(build_dir, variant, model_name, extra_files=()):
    """A release dir <build_dir>/<variant> in the contract's layout and the result onnx_quantize
    returns for it (the keys the roles read)."""
    dest = build_dir / variant
    dest.mkdir(parents=True)
    blobs = {model_name: os.urandom(256), model_name + ".data": os.urandom(1024)}
    for name, blob in blobs.items():
        (dest / name).write_bytes(blob)
    listed = [{"name": n, "size": len(b)} for n, b in blobs.items()]
    (dest / "quantization.json").write_text(json.dumps({"output": {"files": listed, "model_name": model_name}}))
    text = files.manifest_text(files.describe_files(str(dest), sorted(os.listdir(dest)))).encode()
    (dest / files.MANIFEST_NAME).write_bytes(text)
    sha = files.sha256_bytes(text)
    result = {"changed": True, "dest": str(dest), "msg": "built", "model_name": model_name,
              "model_path": str(dest / model_name), "files": listed + list(extra_files),
              "size_bytes": sum(len(b) for b in blobs.values()), "ratio": 1.0, "method": "none", "options": {},
              "manifest_sha256": sha, "release_sha12": sha[:12], "coverage": {}}
    return dest, result


def _lab(tmp_path, int8_files=(), int8_model_name=None):
    """Build host b1 and server h1, both this machine. The server holds SARAi's state as a deploy
    would find it; the build host's dir holds the two releases and what its onnx_quantize returns."""
    build = tmp_path / "build"
    fp32_dest, fp32 = build_release(build, "fp32", CATALOG["sarai_model_variants"]["fp32"]["file"])
    int8_dest, int8 = build_release(build, "int8", CATALOG["sarai_model_variants"]["int8"]["file"], int8_files)
    if int8_model_name:
        int8["model_name"] = int8_model_name
    for dest, result in ((fp32_dest, fp32), (int8_dest, int8)):
        pathlib.Path(f"{dest}.result.json").write_text(json.dumps(result))
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "onnx_quantize.py").write_text(COMPROMISED_QUANTIZE)
    server = tmp_path / "server"
    (server / "sarai" / "config").mkdir(parents=True)
    (server / "sarai" / "config" / "sarai.yaml").write_text("audio_omni: {deployment: {release: fp32-000000000000}}\n")
    inventory = {"all": {
        "vars": {
            "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
            "sarai_runtime_python": sys.executable, "sarai_build_python": sys.executable,
            "sarai_build_source": str(tmp_path / "source" / "agi_audio_core.onnx"), "sarai_build_dir": str(build),
            "sarai_build_lock_file": str(build / ".sarai-deploy.lock"),
            "sarai_lock_wait_s": 0, "sarai_lock_break": False, "sarai_lock_break_id": "",
            "sarai_root": str(server / "sarai"), "sarai_releases_dir": str(server / "sarai" / "models" / "releases"),
            "sarai_config_path": str(server / "sarai" / "config" / "sarai.yaml"),
            "sarai_state_file": str(server / "state.fact"), "sarai_lock_file": str(server / "deploy.lock"),
            "sarai_reports_dir": str(tmp_path / "reports"),
            "model_transfer_staging_dir": str(tmp_path / "controller" / "cache" / "releases"),
            **{key: CATALOG[key] for key in ("sarai_model_variants", "sarai_validation_gates", "sarai_target_variant",
                                             "sarai_reference_variant")},
        },
        "children": {"quantizers": {"hosts": {"b1": None}}, "inference": {"hosts": {"h1": None}}},
    }}
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(inventory))
    return {"fp32": fp32, "int8": int8}


def _env(tmp_path):
    return dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
                ANSIBLE_LIBRARY=f"{tmp_path / 'lib'}:{ROOT / 'library'}")


def _playbook(tmp_path, playbook, *extra):
    ansible_playbook = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    proc = subprocess.run([ansible_playbook, "-i", str(tmp_path / "inventory.yml"), str(playbook), *extra],
                          env=_env(tmp_path), capture_output=True, text=True, timeout=300, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def _files_under(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def test_a_file_name_leaving_the_release_dir_is_refused_before_anything_is_fetched(tmp_path):
    # The attacker's file, placed where `<build dir>/int8/../../pwned.txt` resolves on the build host.
    (tmp_path / "pwned.txt").write_text("owned\n")
    _lab(tmp_path, int8_files=[{"name": "../../pwned.txt", "size": 6}])
    server_before = _files_under(tmp_path / "server")
    rc, out = _playbook(tmp_path, ROOT / "playbooks" / "deploy_int8.yml")
    assert rc != 0, out
    assert 'model_build_releases.int8.files[2].name = "../../pwned.txt": must be a plain file name' in out, out
    # Nothing was written outside the release dirs: the attacker's own file is the only pwned.txt,
    # nothing was staged on the controller, the server was not touched (its play never started).
    assert [p for p in tmp_path.rglob("pwned.txt")] == [tmp_path / "pwned.txt"], out
    assert not (tmp_path / "controller").exists(), _files_under(tmp_path / "controller")
    assert _files_under(tmp_path / "server") == server_before
    assert "PLAY [Check every inference server" not in out, out
    assert not (tmp_path / "build" / ".sarai-deploy.lock").exists()  # the build lock was given back


def test_a_model_name_leaving_the_release_dir_is_refused_before_anything_is_fetched(tmp_path):
    _lab(tmp_path, int8_model_name="../../x.onnx")
    server_before = _files_under(tmp_path / "server")
    rc, out = _playbook(tmp_path, ROOT / "playbooks" / "deploy_int8.yml")
    assert rc != 0, out
    assert 'model_build_releases.int8.model_name = "../../x.onnx": must be a plain file name' in out, out
    assert not (tmp_path / "controller").exists()
    assert _files_under(tmp_path / "server") == server_before
    assert "PLAY [Check every inference server" not in out, out


def test_a_model_name_other_than_the_catalog_file_is_refused(tmp_path):
    _lab(tmp_path, int8_model_name="agi_audio_core.onnx")  # a plain name, but not the catalog's int8 file
    rc, out = _playbook(tmp_path, ROOT / "playbooks" / "deploy_int8.yml")
    assert rc != 0, out
    assert ('model_build_releases.int8.model_name = "agi_audio_core.onnx": must be '
            f"'{CATALOG['sarai_model_variants']['int8']['file']}', the catalog's file for int8") in out, out
    assert not (tmp_path / "controller").exists()


# model_transfer on its own, as another playbook would use it: the record checked again where it is
# received (fetch on the build host, shipping on a server), then shipped from the staged manifest.
TRANSFER = """
- name: Stage
  hosts: quantizers
  gather_facts: false
  tasks:
    - name: Stage the releases on the controller
      ansible.builtin.include_role:
        name: model_transfer
        tasks_from: fetch
      vars:
        model_transfer_releases: "{{ records }}"

- name: Ship
  hosts: inference
  gather_facts: false
  tasks:
    - name: Ship the releases
      ansible.builtin.include_role:
        name: model_transfer
      vars:
        model_transfer_releases: "{{ records }}"
        model_transfer_protected_dirs: []
"""


def _records(results):
    return [dict(results[v], id=f"{v}-{results[v]['release_sha12']}", variant=v,
                 catalog=CATALOG["sarai_model_variants"][v], built_on="b1") for v in ("fp32", "int8")]


def _transfer(tmp_path, records):
    (tmp_path / "transfer.yml").write_text(TRANSFER)
    (tmp_path / "records.json").write_text(json.dumps({"records": records}))
    return _playbook(tmp_path, tmp_path / "transfer.yml", "-e", f"@{tmp_path / 'records.json'}")


def test_transfer_refuses_a_record_it_receives_with_a_path_in_a_file_name(tmp_path):
    (tmp_path / "pwned.txt").write_text("owned\n")
    results = _lab(tmp_path, int8_files=[{"name": "../../pwned.txt", "size": 6}])
    records = _records(results)
    rc, out = _transfer(tmp_path, records)
    assert rc != 0, out
    assert f'model_build_releases.int8.files[2].name = "../../pwned.txt"' in out, out
    assert [p for p in tmp_path.rglob("pwned.txt")] == [tmp_path / "pwned.txt"], out
    staging = tmp_path / "controller" / "cache" / "releases"
    assert not staging.exists() or os.listdir(staging) == []  # every record is checked before any fetch
    assert not (tmp_path / "server" / "sarai" / "models").exists()


def test_transfer_ships_exactly_what_the_staged_manifest_lists(tmp_path):
    records = _records(_lab(tmp_path))
    staging = tmp_path / "controller" / "cache" / "releases"
    rc, out = _transfer(tmp_path, records)
    assert rc == 0, out
    releases = tmp_path / "server" / "sarai" / "models" / "releases"
    for record in records:
        expected = sorted([f["name"] for f in record["files"]] + ["quantization.json", "MANIFEST.sha256"])
        assert sorted(os.listdir(staging / record["id"])) == expected
        assert sorted(os.listdir(releases / record["id"])) == expected
    # A file slipped into the staged copy (not in its manifest) makes it a leftover: the next run
    # removes the copy and stages it again, and the file never reaches a server.
    int8 = records[1]
    (staging / int8["id"] / "extra.bin").write_bytes(b"x")
    shutil.rmtree(releases / int8["id"])
    rc, out = _transfer(tmp_path, records)
    assert rc == 0, out
    expected = sorted([f["name"] for f in int8["files"]] + ["quantization.json", "MANIFEST.sha256"])
    assert sorted(os.listdir(staging / int8["id"])) == expected
    assert sorted(os.listdir(releases / int8["id"])) == expected and not list(releases.glob(".*partial*"))
