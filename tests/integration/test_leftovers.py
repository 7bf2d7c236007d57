"""Leftovers (issue 16, finding 8), with real ansible-playbook runs on this machine (connection local).

Build host: a build killed mid-way leaves `.<variant>.staging-*` (about twice the model) and
`.<variant>.old-*` beside the release dir; playbooks/quantize.yml, holding the build lock, removes
them with the real onnx_quantize on a small generated model, and nothing of anyone else's.
Controller: the staging cache (model_transfer fetch) keeps this run's releases and the newest others
up to model_transfer_keep_releases, removes half-staged releases, and refuses to fetch when it has no
room (before anything is fetched)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import yaml

from test_release_records import CATALOG, ROOT, TRANSFER, _lab, _playbook, _records, _transfer, build_release

CONTROLLER_STAGING = ("controller", "cache", "releases")


def _make_model(path):
    path.parent.mkdir(parents=True)
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_talker_model.py"), "--out", str(path), "--hidden", "64",
                    "--vocab", "128", "--layers", "1"], check=True, capture_output=True, timeout=300)


def test_quantize_removes_what_a_killed_build_left_under_the_build_lock(tmp_path):
    build = tmp_path / "build"
    _make_model(tmp_path / "source" / "agi_audio_core.onnx")
    stale = [build / ".fp32.staging-k1ll3d", build / ".int8.staging-abc123", build / ".int8.old-x9"]
    for directory in stale:
        (directory / "release").mkdir(parents=True)
        (directory / "release" / "half.onnx.data").write_bytes(os.urandom(4096))
    others = [build / ".int8_other.staging-keep", build / "notes"]  # not a staging dir of a variant built here
    for directory in others:
        directory.mkdir(parents=True)
    catalog = {"fp32": CATALOG["sarai_model_variants"]["fp32"],
               "int8": dict(CATALOG["sarai_model_variants"]["int8"], quantization={"method": "dynamic_int8"})}
    catalog["int8"].pop("fidelity_target")
    catalog["int8"].pop("search_budget")
    inventory = {"all": {"children": {"quantizers": {"hosts": {"b1": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        "sarai_build_python": sys.executable, "sarai_build_source": str(tmp_path / "source" / "agi_audio_core.onnx"),
        "sarai_build_dir": str(build), "sarai_build_lock_file": str(build / ".sarai-deploy.lock"),
        "sarai_lock_wait_s": 0, "sarai_lock_break": False, "sarai_lock_break_id": "", "sarai_model_variants": catalog,
        "sarai_target_variant": "int8", "sarai_reference_variant": "fp32"}}}}}}
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(inventory))
    rc, out = _playbook(tmp_path, ROOT / "playbooks" / "quantize.yml")
    assert rc == 0, out
    assert not any(d.exists() for d in stale), out
    assert all(d.exists() for d in others)
    names = sorted(os.listdir(build))
    assert {"fp32", "int8"} <= set(names) and not [n for n in names if ".staging-" in n and "int8_other" not in n]
    assert not [n for n in names if ".old-" in n]


def _old_staged(staging, scratch, age_s):
    """A whole staged release of an earlier run, `age_s` seconds old."""
    dest, result = build_release(scratch, "int8", CATALOG["sarai_model_variants"]["int8"]["file"])
    staging.mkdir(parents=True, exist_ok=True)
    directory = staging / f"int8-{result['release_sha12']}"
    dest.rename(directory)
    then = time.time() - age_s
    os.utime(directory, (then, then))
    return directory


def test_the_staging_cache_keeps_what_the_servers_keep(tmp_path):
    records = _records(_lab(tmp_path))
    staging = tmp_path.joinpath(*CONTROLLER_STAGING)
    older = [_old_staged(staging, tmp_path / f"earlier{n}", age) for n, age in ((1, 3000), (2, 2000), (3, 1000))]
    half = staging / records[1]["id"]  # this run's release, half staged by a killed run
    half.mkdir()
    (half / records[1]["files"][0]["name"]).write_bytes(b"cut short")
    rc, out = _transfer(tmp_path, records)
    assert rc == 0, out
    # keep 3 (model_transfer_keep_releases): this run's two and the newest earlier one.
    assert sorted(os.listdir(staging)) == sorted([r["id"] for r in records] + [older[2].name]), out
    expected = sorted([f["name"] for f in records[1]["files"]] + ["quantization.json", "MANIFEST.sha256"])
    assert sorted(os.listdir(half)) == expected  # staged again whole


def test_no_room_in_the_staging_cache_stops_before_anything_is_fetched(tmp_path):
    records = _records(_lab(tmp_path))
    staging = tmp_path.joinpath(*CONTROLLER_STAGING)
    rc, out = _transfer_with(tmp_path, records, model_transfer_margin_bytes=1 << 60)
    assert rc != 0, out
    assert "Not enough disk space on the controller" in out and "model_transfer_staging_dir" in out, out
    assert not staging.exists() or os.listdir(staging) == []
    assert not (tmp_path / "server" / "sarai" / "models").exists()


def _transfer_with(tmp_path, records, **extra_vars):
    (tmp_path / "extra.json").write_text(json.dumps(extra_vars))
    (tmp_path / "transfer.yml").write_text(TRANSFER)
    (tmp_path / "records.json").write_text(json.dumps({"records": records}))
    return _playbook(tmp_path, tmp_path / "transfer.yml", "-e", f"@{tmp_path / 'records.json'}",
                     "-e", f"@{tmp_path / 'extra.json'}")
