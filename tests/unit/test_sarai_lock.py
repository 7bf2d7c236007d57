"""The deploy lock: file operations (module_utils/sarai_lock.py, the module) and the controller side
(action_plugins/sarai_lock.py: who is this run, is a holder still alive). Real concurrent runs of
ansible-playbook are in tests/integration/test_lock_runs.py."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pathlib

import pytest

import sarai_lock
from helpers import ROOT, run_module

A = {"id": "ctl:100:5", "controller": "ctl", "pid": 100, "pid_start_ticks": 5, "boot_id": "b1"}
B = {"id": "ctl:200:7", "controller": "ctl", "pid": 200, "pid_start_ticks": 7, "boot_id": "b1"}


def _plugin():
    spec = importlib.util.spec_from_file_location("sarai_lock_action", ROOT / "action_plugins" / "sarai_lock.py")
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    return plugin


def test_acquire_is_exclusive_and_reentrant(tmp_path):
    path = str(tmp_path / "locks" / "deploy.lock")
    assert sarai_lock.acquire(path, A) == (True, True, A)
    assert json.loads(pathlib.Path(path).read_text()) == A
    assert sarai_lock.acquire(path, A) == (True, False, A)  # the same run again: no change
    assert sarai_lock.acquire(path, B) == (False, False, A)  # another run: refused, told who holds it
    assert os.listdir(tmp_path / "locks") == ["deploy.lock"]  # no temp file left behind


def test_check_mode_writes_nothing(tmp_path):
    path = tmp_path / "deploy.lock"
    assert sarai_lock.acquire(str(path), A, check_mode=True) == (True, True, A)
    assert not path.exists()


def test_release_only_by_the_holder(tmp_path):
    path = str(tmp_path / "deploy.lock")
    sarai_lock.acquire(path, A)
    assert sarai_lock.release(path, B["id"]) == (False, A)  # a run that never got it removes nothing
    assert os.path.exists(path)
    assert sarai_lock.release(path, A["id"]) == (True, None)
    assert not os.path.exists(path)
    assert sarai_lock.release(path, A["id"]) == (False, None)


def test_break_removes_only_the_holder_judged_stale(tmp_path):
    path = str(tmp_path / "deploy.lock")
    sarai_lock.acquire(path, B)
    assert sarai_lock.break_lock(path, A["id"]) is False  # changed hands since it was judged
    assert sarai_lock.break_lock(path, B["id"]) is True and not os.path.exists(path)


def test_unreadable_lock_file_is_reported_and_can_be_broken(tmp_path):
    path = tmp_path / "deploy.lock"
    path.write_text("held by noel, do not touch")
    acquired, changed, holder = sarai_lock.acquire(str(path), A)
    assert not acquired and not changed and holder["id"] is None
    assert holder["unreadable"] == "held by noel, do not touch"
    assert holder["fingerprint"] == "unreadable-" + hashlib.sha256(b"held by noel, do not touch").hexdigest()[:12]
    assert sarai_lock.break_lock(str(path), None) is False  # an unreadable lock is named by its fingerprint
    assert sarai_lock.break_lock(str(path), holder["fingerprint"]) is True and not path.exists()


def test_module_takes_and_releases(tmp_path, capsys):
    path = str(tmp_path / "deploy.lock")
    code, result = run_module("sarai_lock", {"path": path, "holder": A}, capsys)
    assert code == 0 and result["changed"] and result["acquired"] and result["holder"] == A
    code, result = run_module("sarai_lock", {"path": path, "holder": B}, capsys)
    assert code == 0 and not result["changed"] and not result["acquired"] and result["holder"] == A
    code, result = run_module("sarai_lock", {"path": path, "state": "unlocked", "holder_id": A["id"]}, capsys)
    assert code == 0 and result["changed"] and not os.path.exists(path)


def test_module_fails_clearly_when_the_directory_cannot_be_made(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, result = run_module("sarai_lock", {"path": str(blocker / "deploy.lock"), "holder": A}, capsys)
    assert code == 1 and str(blocker / "deploy.lock") in result["msg"] and "check the directory and its permissions" in result["msg"]


def _fake_proc(tmp_path, processes, boot_id="b1", btime=1_700_000_000):
    proc = tmp_path / "proc"
    (proc / "sys" / "kernel" / "random").mkdir(parents=True)
    (proc / "sys" / "kernel" / "random" / "boot_id").write_text(boot_id + "\n")
    (proc / "stat").write_text("cpu 1 2 3\nbtime %d\n" % btime)
    for pid, (comm, ticks) in processes.items():
        (proc / str(pid)).mkdir()
        fields = ["S"] + ["0"] * 18 + [str(ticks)] + ["0"] * 10
        (proc / str(pid) / "stat").write_text("%d (%s) %s\n" % (pid, comm, " ".join(fields)))
    return str(proc)


def test_process_start_survives_odd_command_names(tmp_path):
    plugin = _plugin()
    proc = _fake_proc(tmp_path, {100: ("ansible-playbook) (x", 5)})
    assert plugin.process_start_ticks(100, proc) == 5
    assert plugin.process_start_ticks(101, proc) is None
    assert plugin.boot_time(proc) == 1_700_000_000


def test_process_start_of_this_process_is_read_from_proc():
    plugin = _plugin()
    assert plugin.process_start_ticks(os.getpid()) > 0


@pytest.mark.parametrize("holder, status, why", [
    (dict(A), "alive", "process 100 on ctl still runs"),
    (dict(A, pid=101), "stale", "process 101 on ctl is gone"),
    (dict(A, pid_start_ticks=4), "stale", "process 100 on ctl is another program now"),
    (dict(A, boot_id="b0"), "stale", "ctl has rebooted since"),
    (dict(A, controller="ctl2"), "unknown", "taken on another controller (ctl2)"),
    ({"id": None, "unreadable": "x"}, "unknown", "does not describe its holder"),
])
def test_liveness_of_a_holder(tmp_path, holder, status, why):
    plugin = _plugin()
    proc = _fake_proc(tmp_path, {100: ("ansible-playbook", 5)})
    here = {"controller": "ctl", "boot_id": "b1"}
    got_status, got_why = plugin.liveness(holder, here, proc)
    assert got_status == status and why in got_why


def test_message_names_the_holder_and_the_way_out():
    plugin = _plugin()
    holder = dict(A, user="noel", playbook="playbooks/deploy_int8.yml", purpose="deploy int8-0123456789ab",
                  run_started="T0", since="T1")
    args = {"path": "/var/lib/sarai-deploy/deploy.lock", "wait_s": 0}
    vars_ = {"inventory_hostname": "agi1"}
    alive = plugin.ActionModule._message(args, vars_, holder, "alive", "process 100 on ctl still runs", 0)
    assert alive.startswith("agi1:/var/lib/sarai-deploy/deploy.lock is locked by deploy int8-0123456789ab")
    assert "user noel on controller ctl, pid 100, playbook playbooks/deploy_int8.yml" in alive
    assert "sarai_lock_wait_s" in alive
    stale = plugin.ActionModule._message(args, vars_, holder, "stale", "process 100 on ctl is gone", 0)
    assert "stale: process 100 on ctl is gone" in stale and "-e sarai_lock_break=true" in stale


# Issue 16, finding 5: only stale locks break with break_stale; an unknown one needs its holder id;
# removing renames aside and checks what it moved (no read-then-unlink race).
@pytest.mark.parametrize("status, break_stale, break_id, breaks", [
    ("stale", True, "", True),
    ("stale", False, "", False),
    ("stale", False, A["id"], True),
    ("unknown", True, "", False),  # another controller's live run is not a stale one
    ("unknown", False, A["id"], True),
    ("unknown", True, B["id"], False),  # names another holder: changed hands, or a typo
    ("alive", True, A["id"], False),  # a live run on this controller is never broken
])
def test_which_locks_a_task_breaks(status, break_stale, break_id, breaks):
    plugin = _plugin()
    assert plugin.may_break(status, dict(A), {"break_stale": break_stale, "break_id": break_id}) is breaks


def test_unreadable_lock_breaks_by_its_fingerprint():
    plugin = _plugin()
    holder = {"id": None, "unreadable": "x", "fingerprint": "unreadable-0123456789ab"}
    assert plugin.may_break("unknown", holder, {"break_stale": True, "break_id": ""}) is False
    assert plugin.may_break("unknown", holder, {"break_stale": False, "break_id": "unreadable-0123456789ab"}) is True


def test_unknown_lock_message_prints_the_holder_id_to_break_it():
    plugin = _plugin()
    holder = dict(A, controller="ctl2", user="noel", purpose="deploy int8-0123456789ab")
    args = {"path": "/var/lib/sarai-deploy/deploy.lock", "wait_s": 0, "break_stale": True, "break_id": ""}
    msg = plugin.ActionModule._message(args, {"inventory_hostname": "agi1"}, holder, "unknown",
                                       "it was taken on another controller (ctl2)", 0)
    assert "holder id ctl:100:5" in msg and "-e sarai_lock_break_id=ctl:100:5" in msg
    assert "sarai_lock_break=true breaks only stale locks" in msg and "ask on ctl2" in msg
    msg = plugin.ActionModule._message(dict(args, break_stale=False, break_id="ctl:9:9"), {"inventory_hostname": "agi1"},
                                       holder, "unknown", "it was taken on another controller (ctl2)", 0)
    assert "-e sarai_lock_break_id=ctl:9:9 does not name its holder" in msg


def test_break_puts_back_a_lock_that_changed_hands_after_it_was_judged(tmp_path, monkeypatch):
    # The race of read-then-unlink: A was judged, then B took the lock before the removal. The rename
    # moves B's lock; the check sees B, not A, and puts it back.
    path = str(tmp_path / "deploy.lock")
    sarai_lock.acquire(path, B)
    real_read = sarai_lock.read_holder
    calls = []

    def judged_then_changed(where):
        calls.append(where)
        return dict(A) if len(calls) == 1 else real_read(where)  # the first read still saw A

    monkeypatch.setattr(sarai_lock, "read_holder", judged_then_changed)
    assert sarai_lock.break_lock(path, A["id"]) is False
    assert json.loads(pathlib.Path(path).read_text()) == B  # B keeps its lock
    assert os.listdir(tmp_path) == ["deploy.lock"]  # nothing left aside
    assert calls[1].startswith(path + ".removing-")  # what was checked is the file it moved


def test_a_lock_taken_while_one_is_put_back_is_an_error_naming_both(tmp_path, monkeypatch):
    path = str(tmp_path / "deploy.lock")
    sarai_lock.acquire(path, B)
    real_read = sarai_lock.read_holder
    calls = []

    def third_run_takes_it(where):
        calls.append(where)
        if len(calls) == 1:
            return dict(A)
        # A third run takes the lock in the instant its name is free.
        pathlib.Path(path).write_text(json.dumps(dict(A, id="ctl:300:9")))
        return real_read(where)

    monkeypatch.setattr(sarai_lock, "read_holder", third_run_takes_it)
    with pytest.raises(sarai_lock.LockError, match="changed hands while it was removed") as error:
        sarai_lock.break_lock(path, A["id"])
    aside = [name for name in os.listdir(tmp_path) if name.startswith("deploy.lock.removing-")]
    assert len(aside) == 1 and aside[0] in str(error.value) and B["id"] in str(error.value)
    assert json.loads((tmp_path / aside[0]).read_text()) == B


def test_release_removes_only_its_own_lock_even_if_it_changed_hands(tmp_path, monkeypatch):
    path = str(tmp_path / "deploy.lock")
    sarai_lock.acquire(path, B)
    real_read = sarai_lock.read_holder
    calls = []
    monkeypatch.setattr(sarai_lock, "read_holder",
                        lambda where: calls.append(where) or (dict(A) if len(calls) == 1 else real_read(where)))
    assert sarai_lock.release(path, A["id"]) == (False, B)
    assert json.loads(pathlib.Path(path).read_text()) == B


def test_taking_and_removing_fsync_the_lock_and_its_directory(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda handle: synced.append(os.path.realpath("/proc/self/fd/%d" % handle))
                        or real_fsync(handle))
    path = tmp_path / "deploy.lock"
    sarai_lock.acquire(str(path), A)
    assert len(synced) == 2 and synced[0].startswith(str(tmp_path / ".sarai-lock.")) and synced[1] == str(tmp_path)
    sarai_lock.release(str(path), A["id"])
    assert synced[2:] == [str(tmp_path)] and not path.exists()
