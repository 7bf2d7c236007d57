"""The deploy lock between real ansible-playbook runs on this machine (connection local): a second
run fails at once naming the first, waits for it when asked, and a lock left by a killed run is
reported as stale and broken only when asked. The Molecule `lock` scenario does the same with real
deploys on the lab."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Take the lock
      sarai_lock:
        path: {lock}
        purpose: {purpose}
        wait_s: {wait_s}
        poll_s: 1
        break_stale: {break_stale}
        break_id: "{break_id}"
      register: taken
    - name: Keep what taking the lock returned
      ansible.builtin.copy:
        content: "{{{{ taken | to_json }}}}"
        dest: {lock}.{name}.json
        mode: "0644"
    - name: Hold it
      ansible.builtin.command: sleep {hold_s}
      changed_when: false
    - name: Release the lock
      sarai_lock:
        path: {lock}
        state: unlocked
"""


def _playbook(tmp_path, name, lock, purpose, wait_s=0, hold_s=0, break_stale=False, break_id=""):
    path = tmp_path / f"{name}.yml"
    path.write_text(PLAYBOOK.format(lock=lock, name=name, purpose=purpose, wait_s=wait_s, hold_s=hold_s,
                                    break_stale=str(break_stale).lower(), break_id=break_id))
    return str(path)


def _command(playbook):
    ansible_playbook = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    return [ansible_playbook, "-i", "localhost,", "-c", "local", "-e", f"ansible_python_interpreter={sys.executable}",
            playbook]


def _env():
    return dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
                ANSIBLE_LIBRARY=str(ROOT / "library"), ANSIBLE_MODULE_UTILS=str(ROOT / "module_utils"),
                ANSIBLE_ACTION_PLUGINS=str(ROOT / "action_plugins"))


def _run(playbook):
    started = time.monotonic()
    proc = subprocess.run(_command(playbook), env=_env(), capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started


def _start_holding(playbook, lock):
    """Start a run that takes the lock and holds it; return it once the lock file exists."""
    # Its own session, so that killing it kills the whole run (workers and the module they run).
    proc = subprocess.Popen(_command(playbook), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while not os.path.exists(lock):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the holding run never took the lock: %s" % proc.communicate()[0])
        time.sleep(0.2)
    return proc


def _taken(lock, name):
    with open(f"{lock}.{name}.json", encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture()
def lock(tmp_path):
    return str(tmp_path / "locks" / "deploy.lock")


def test_second_run_fails_at_once_then_waits_for_the_first(tmp_path, lock):
    holder = _start_holding(_playbook(tmp_path, "a", lock, "deploy int8-aaaaaaaaaaaa", hold_s=6), lock)
    try:
        rc, out, seconds = _run(_playbook(tmp_path, "b", lock, "deploy fp16-bbbbbbbbbbbb"))
        assert rc != 0, out
        assert f"localhost:{lock} is locked by deploy int8-aaaaaaaaaaaa (holder id " in out and ": user " in out
        assert f", pid {holder.pid}, playbook {tmp_path}/a.yml, run started " in out
        assert "still runs" in out and "sarai_lock_wait_s" in out
        assert not os.path.exists(f"{lock}.b.json")

        rc, out, seconds = _run(_playbook(tmp_path, "c", lock, "deploy fp16-cccccccccccc", wait_s=60))
        assert rc == 0, out
        assert holder.wait(timeout=5) == 0
        taken = _taken(lock, "c")
        assert taken["waited_s"] > 0 and taken["changed"] is False
        assert taken["holder"]["purpose"] == "deploy fp16-cccccccccccc" and taken["holder"]["pid"] != holder.pid
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
    assert not os.path.exists(lock)  # c released it


def test_lock_of_a_killed_run_is_stale_and_broken_only_when_asked(tmp_path, lock):
    killed = _start_holding(_playbook(tmp_path, "d", lock, "deploy int8-dddddddddddd", hold_s=120), lock)
    os.killpg(killed.pid, signal.SIGKILL)  # the run dies without releasing: kill -9, a crash, a reboot
    killed.wait(timeout=10)
    assert os.path.exists(lock)  # nothing ran its release

    rc, out, seconds = _run(_playbook(tmp_path, "e", lock, "rollback", wait_s=300))
    assert rc != 0, out
    assert f"which is stale: process {killed.pid} on " in out and " is gone" in out
    assert "-e sarai_lock_break=true" in out
    assert seconds < 300  # a stale lock is not waited for

    rc, out, seconds = _run(_playbook(tmp_path, "f", lock, "rollback", break_stale=True))
    assert rc == 0, out
    assert "Broke the lock" in out and f"pid {killed.pid}" in out
    taken = _taken(lock, "f")
    assert taken["broken"]["pid"] == killed.pid and taken["changed"] is True
    assert not os.path.exists(lock)


def test_lock_of_another_controller_breaks_only_with_its_holder_id(tmp_path, lock):
    # Issue 16, finding 5: a live run on another controller holds the lock; this controller cannot see
    # its process. sarai_lock_break=true must not remove it; the holder id the message prints does.
    os.makedirs(os.path.dirname(lock))
    other = {"id": "ctl-b:4242:777", "controller": "ctl-b", "user": "ana", "pid": 4242, "pid_start_ticks": 777,
             "boot_id": "elsewhere", "playbook": "playbooks/deploy_int8.yml", "purpose": "deploy int8-eeeeeeeeeeee",
             "run_started": "T0", "since": "T1"}
    with open(lock, "w", encoding="utf-8") as handle:
        json.dump(other, handle)
    before = pathlib.Path(lock).read_bytes()

    rc, out, seconds = _run(_playbook(tmp_path, "g", lock, "rollback", break_stale=True))
    assert rc != 0, out
    assert "which this controller cannot check: it was taken on another controller (ctl-b)" in out
    assert "sarai_lock_break=true breaks only stale locks" in out
    assert "-e sarai_lock_break_id=ctl-b:4242:777" in out
    assert pathlib.Path(lock).read_bytes() == before  # untouched
    assert sorted(os.listdir(os.path.dirname(lock))) == ["deploy.lock"]

    rc, out, seconds = _run(_playbook(tmp_path, "h", lock, "rollback", break_id="ctl-b:4242:99"))
    assert rc != 0 and "-e sarai_lock_break_id=ctl-b:4242:99 does not name its holder" in out, out
    assert pathlib.Path(lock).read_bytes() == before

    rc, out, seconds = _run(_playbook(tmp_path, "i", lock, "rollback", break_id="ctl-b:4242:777"))
    assert rc == 0, out
    assert "Broke the lock" in out and "holder id ctl-b:4242:777" in out
    taken = _taken(lock, "i")
    assert taken["broken"] == other and taken["changed"] is True and taken["holder"]["purpose"] == "rollback"
    assert not os.path.exists(lock)  # i released its own lock at the end
    assert [name for name in os.listdir(os.path.dirname(lock)) if not name.endswith(".json")] == []
