"""Disk-space preflight and leftovers of interrupted runs: sarai_leftovers, sarai_disk_preflight."""
from __future__ import annotations

import collections
import os
import shutil
import time

import pytest

from ansible.module_utils import sarai_disk_preflight as preflight_mod
from ansible.module_utils.sarai_disk_preflight import PreflightError, preflight
from ansible.module_utils.sarai_leftovers import release_leftovers, remote_tmp_leftovers
from helpers import make_release, run_module, snapshot

MIB = 1 << 20
Usage = collections.namedtuple("Usage", "total used free")


def _files(path):
    return [{"name": n, "size": os.path.getsize(os.path.join(path, n))} for n in sorted(os.listdir(path))]


def _age(path, seconds):
    """Make a tree look untouched for `seconds`."""
    then = time.time() - seconds
    for root, dirs, names in os.walk(path):
        for name in dirs + names:
            os.utime(os.path.join(root, name), (then, then))
    os.utime(path, (then, then))


@pytest.fixture
def server(tmp_path):
    """A releases dir as an interrupted deploy leaves it, and a remote tmp with old and live task dirs."""
    releases = tmp_path / "releases"
    releases.mkdir()
    whole_id, whole, _ = make_release(releases, "fp32", seed=1)
    half_id, half, _ = make_release(releases, "int8", seed=2)
    os.unlink(os.path.join(half, "agi_audio_core_int8.onnx.data"))  # the copy died before the data file
    running_id, running, _ = make_release(releases, "int4", seed=3)
    os.unlink(os.path.join(running, "quantization.json"))  # damaged, but protected: never touched
    nomanifest = releases / "fp16-0123456789ab"
    nomanifest.mkdir()
    (nomanifest / "agi_audio_core_fp16.onnx").write_bytes(b"x" * 1000)
    partial = releases / f".{half_id}.partial-20261123T101500Z"
    partial.mkdir()
    (partial / "agi_audio_core_int8.onnx").write_bytes(b"y" * 2000)
    (releases / "notes").mkdir()  # not ours: never touched
    outside_id, outside, _ = make_release(tmp_path, "int8", seed=4)
    os.unlink(os.path.join(outside, "MANIFEST.sha256"))
    os.symlink(outside, releases / "int8-aaaaaaaaaaaa")  # a link: never followed or removed
    remote_tmp = tmp_path / "home" / ".ansible" / "tmp"
    old = remote_tmp / "ansible-tmp-1763890000.1-4242-1"
    old.mkdir(parents=True)
    (old / "source").write_bytes(b"z" * (3 * MIB))  # what a killed copy leaves
    _age(old, 2 * 3600)
    live = remote_tmp / "ansible-tmp-1763899999.9-4243-2"
    live.mkdir()
    (live / "source").write_bytes(b"z" * 10)
    other = remote_tmp / "something-else"
    other.mkdir()
    _age(other, 2 * 3600)
    return {"releases": str(releases), "remote_tmp": str(remote_tmp), "whole": (whole_id, whole),
            "half": (half_id, half), "running": (running_id, running), "nomanifest": str(nomanifest),
            "partial": str(partial), "old_tmp": str(old), "live_tmp": str(live), "outside": outside}


def test_leftovers_are_found_by_name_and_never_include_whole_or_protected_releases(server):
    found = release_leftovers(server["releases"], protect={server["running"][0]})
    assert [(os.path.basename(f["path"]), f["kind"]) for f in found] == [
        (os.path.basename(server["partial"]), "partial"),
        ("fp16-0123456789ab", "release"),
        (server["half"][0], "release"),
    ]
    assert found[2]["reason"] == "not a whole release: agi_audio_core_int8.onnx.data: missing"
    assert "MANIFEST.sha256 does not exist" in found[1]["reason"]
    assert all(f["size_bytes"] > 0 and not f["removed"] for f in found)
    # Without the protection, the damaged running release would be reported (proves protect works).
    assert server["running"][1] in [f["path"] for f in release_leftovers(server["releases"])]


def test_remote_tmp_leftovers_are_idle_ansible_task_dirs_only(server):
    found = remote_tmp_leftovers(server["remote_tmp"], min_age_s=3600)
    assert [f["path"] for f in found] == [server["old_tmp"]]
    assert found[0]["size_bytes"] >= 3 * MIB and "idle for 120 min" in found[0]["reason"]
    assert len(remote_tmp_leftovers(server["remote_tmp"], min_age_s=0)) == 2
    assert remote_tmp_leftovers(os.path.join(server["remote_tmp"], "absent"), 0) == []


def test_report_only_changes_nothing(server, tmp_path):
    before = snapshot(tmp_path)
    result = preflight(server["releases"], protect=[server["running"][0]], remote_tmp=server["remote_tmp"],
                       margin_bytes=0)
    assert not result["changed"] and "failed" not in result and len(result["leftovers"]) == 4
    assert snapshot(tmp_path) == before


def test_check_mode_reports_what_it_would_remove(server, tmp_path, capsys):
    before = snapshot(tmp_path)
    code, result = run_module("sarai_disk_preflight", {
        "path": server["releases"], "protect": [server["running"][0]], "remote_tmp": server["remote_tmp"],
        "remove_leftovers": True, "_ansible_check_mode": True, "_ansible_diff": True}, capsys)
    assert code == 0 and result["changed"] and not any(f["removed"] for f in result["leftovers"])
    assert f"{server['old_tmp']}/\n" in result["diff"]["before"] and result["diff"]["after"] == ""
    assert snapshot(tmp_path) == before


def test_remove_leftovers_removes_exactly_them(server, capsys):
    code, result = run_module("sarai_disk_preflight", {
        "path": server["releases"], "protect": [server["running"][0]], "remote_tmp": server["remote_tmp"],
        "remove_leftovers": True}, capsys)
    assert code == 0 and result["changed"] and all(f["removed"] for f in result["leftovers"])
    assert sorted(os.listdir(server["releases"])) == sorted(
        [server["whole"][0], server["running"][0], "notes", "int8-aaaaaaaaaaaa"])
    assert sorted(os.listdir(server["remote_tmp"])) == ["ansible-tmp-1763899999.9-4243-2", "something-else"]
    assert os.path.isdir(server["outside"]) and len(os.listdir(server["outside"])) == 3  # link target intact
    code, again = run_module("sarai_disk_preflight", {
        "path": server["releases"], "protect": [server["running"][0]], "remote_tmp": server["remote_tmp"],
        "remove_leftovers": True}, capsys)
    assert code == 0 and not again["changed"] and again["leftovers"] == []


def test_releases_already_whole_need_no_space(server):
    whole_id, whole = server["whole"]
    half_id, half = server["half"]
    wanted = [{"id": whole_id, "files": _files(whole)},
              {"id": half_id, "files": _files(half) + [{"name": "agi_audio_core_int8.onnx.data", "size": 4096}]}]
    result = preflight(server["releases"], releases=wanted, margin_percent=10, margin_bytes=MIB)
    assert result["present"] == [whole_id] and result["incoming"] == [half_id]
    incoming = sum(f["size"] for f in wanted[1]["files"])
    assert result["incoming_bytes"] == incoming
    assert result["space"][0]["needed_bytes"] == int(incoming * 1.1 + 0.999999) + MIB
    assert result["space"][0]["ok"] and "failed" not in result


def test_nothing_incoming_asks_for_no_margin(server, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(100, 100, 0))
    whole_id, whole = server["whole"]
    result = preflight(server["releases"], releases=[{"id": whole_id, "files": _files(whole)}])
    assert result["space"][0]["needed_bytes"] == 0 and "failed" not in result


def test_full_disk_fails_naming_host_path_sizes_and_what_to_do(tmp_path, capsys):
    # Real free space, and a release far bigger than any disk: the check must refuse it.
    releases_dir = tmp_path / "opt" / "sarai" / "models" / "releases"
    (tmp_path / "opt").mkdir()
    code, result = run_module("sarai_disk_preflight", {
        "path": str(releases_dir), "host": "agi1", "protect": ["fp32-ba9876543210"],
        "releases": [{"id": "int8-0123456789ab", "files": [{"name": "m.onnx", "size": 1 << 60}]}]}, capsys)
    assert code == 1 and result["failed"] and not result["changed"]
    free = shutil.disk_usage(tmp_path / "opt").free
    msg = result["msg"]
    assert msg.startswith(f"Not enough disk space on agi1 for the releases: {releases_dir} (not there yet: checked "
                          f"its nearest existing parent {tmp_path / 'opt'}) has {preflight_mod.human(free)} free and "
                          f"needs {preflight_mod.human(result['space'][0]['needed_bytes'])} (1073741824.00 GiB of "
                          "releases (int8-0123456789ab) + 10% + 256.0 MiB margin).")
    assert "keep fp32-ba9876543210" in msg and "set sarai_releases_dir to a larger filesystem" in msg
    assert msg.endswith("Nothing was copied or switched.")
    assert not releases_dir.exists()


def test_remote_tmp_on_another_filesystem_needs_room_for_the_largest_file(server, monkeypatch):
    tmp_root = os.path.dirname(os.path.dirname(server["remote_tmp"]))
    real = preflight_mod.device
    monkeypatch.setattr(preflight_mod, "device", lambda p: ("tmpfs" if p.startswith(tmp_root) else real(p)))
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda p: Usage(0, 0, 10 * MIB if p.startswith(tmp_root) else 1 << 40))
    wanted = [{"id": "int8-0123456789ab", "files": [{"name": "a", "size": 20 * MIB}, {"name": "b", "size": MIB}]}]
    result = preflight(server["releases"], releases=wanted, remote_tmp=server["remote_tmp"], margin_bytes=0)
    tmp_check = result["space"][1]
    assert tmp_check["what"] == "remote tmp" and tmp_check["needed_bytes"] == 22 * MIB and not tmp_check["ok"]
    assert result["failed"] and "the largest incoming file (20.0 MiB)" in result["msg"]
    assert "ansible_remote_tmp" in result["msg"]


def test_check_mode_counts_leftovers_as_freed(server, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(0, 0, MIB))
    wanted = [{"id": "int8-0123456789ab", "files": [{"name": "a", "size": 2 * MIB}]}]
    args = dict(releases=wanted, protect=[server["running"][0]], remote_tmp=server["remote_tmp"],
                margin_percent=0, margin_bytes=0)
    assert preflight(server["releases"], **args)["failed"]  # the 3 MiB orphan still there
    result = preflight(server["releases"], remove_leftovers=True, check_mode=True, **args)
    assert "failed" not in result and result["space"][0]["free_bytes"] >= 4 * MIB


@pytest.mark.parametrize("releases, words", [
    ([{"id": "int8", "files": [{"name": "a", "size": 1}]}], "is not a release id"),
    ([{"id": "int8-0123456789ab", "files": []}], "needs files"),
    ([{"id": "int8-0123456789ab", "files": [{"name": "a", "size": "1"}]}], "needs files"),
])
def test_bad_release_descriptions_are_refused(tmp_path, releases, words):
    with pytest.raises(PreflightError, match=words):
        preflight(str(tmp_path), releases=releases)


def test_runs_through_ansible_and_needs_neither_numpy_nor_onnx(server):
    # Servers run it with their system Python: the whole import chain must be the standard library.
    import json
    import subprocess
    import sys

    from helpers import ROOT, ansible_adhoc

    code = ("import sys, ansible.module_utils as m; sys.modules.update(numpy=None, onnx=None, onnxruntime=None); "
            f"m.__path__.append({str(ROOT / 'module_utils')!r}); import ansible.module_utils.sarai_disk_preflight")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rc, result = ansible_adhoc("sarai_disk_preflight", json.dumps({
        "path": server["releases"], "remote_tmp": server["remote_tmp"], "protect": [server["running"][0]],
        "remove_leftovers": True}), "--diff", check=True)
    assert rc == 0 and result["changed"] and len(result["leftovers"]) == 4
    assert os.path.isdir(server["partial"]) and os.path.isdir(server["old_tmp"])  # check mode
