#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Start or stop one lab container (systemd-nspawn --boot) and track it by the PID it recorded."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: lab_nspawn
short_description: Boot or power off one systemd-nspawn lab container, tracked by its recorded PID
description:
  - C(state=started) runs C(systemd-nspawn --boot --register=no --keep-unit) in its own session, in
    the background, with the console going to O(log_file), and records the PID of C(systemd-nspawn)
    together with its start time in O(pid_file). A container whose recorded process is still alive
    is left alone.
  - C(state=stopped) sends SIGTERM to the recorded C(systemd-nspawn) process, which forwards
    SIGRTMIN+3 to the container's systemd (an orderly C(poweroff)), and waits up to O(stop_timeout)
    seconds for it to exit; after that it sends SIGKILL to the container's init and to
    C(systemd-nspawn). It never looks processes up by name; a PID whose start time or command line
    no longer matches the record is not touched (the record is stale and is removed).
  - Lab tooling for the local test hosts, not part of the product.
options:
  name:
    description: Machine name (C(systemd-nspawn -M)); also the container's hostname.
    type: str
    required: true
  directory:
    description: Root directory of the container (a mounted overlay or a copy).
    type: path
  state:
    description: Whether the container should be running.
    type: str
    choices: [started, stopped]
    default: started
  pid_file:
    description: JSON record of the running container (pid, start time, name, directory).
    type: path
    required: true
  log_file:
    description: File that receives the container's console output.
    type: path
  stop_timeout:
    description: Seconds to wait for an orderly shutdown before SIGKILL.
    type: int
    default: 60
  start_check:
    description: Seconds to watch a freshly started container for an immediate failure.
    type: float
    default: 1.5
  nspawn_args:
    description: Extra arguments for C(systemd-nspawn), placed before C(--boot).
    type: list
    elements: str
    default: []
author: sarai-deploy
"""

EXAMPLES = r"""
- name: Boot agi1
  lab_nspawn:
    name: agi1
    directory: /var/lib/sarai-lab/machines/agi1/root
    pid_file: /var/lib/sarai-lab/machines/agi1/nspawn.json
    log_file: /var/lib/sarai-lab/machines/agi1/console.log

- name: Power off agi1
  lab_nspawn:
    name: agi1
    state: stopped
    pid_file: /var/lib/sarai-lab/machines/agi1/nspawn.json
"""

RETURN = r"""
pid:
  description: PID of the systemd-nspawn process (started), or of the one that was stopped.
  returned: when a container is or was running
  type: int
stop_seconds:
  description: How long the container took to exit after SIGTERM.
  returned: when a running container was stopped
  type: float
forced:
  description: True when the container did not exit in time and was killed with SIGKILL.
  returned: when a running container was stopped
  type: bool
stale_record:
  description: True when the PID file named a process that is gone or is no longer this container.
  returned: always
  type: bool
"""

import json
import os
import signal
import subprocess
import time

from ansible.module_utils.basic import AnsibleModule

NSPAWN = "systemd-nspawn"


def _proc_stat(pid):
    """Return (state, ppid, starttime) of a process, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode("utf-8", "replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm may hold spaces and parentheses: split after the last ')'
    rest = raw[raw.rindex(")") + 2:].split()
    return rest[0], int(rest[1]), int(rest[19])


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [a.decode("utf-8", "replace") for a in fh.read().split(b"\0") if a]
    except (FileNotFoundError, ProcessLookupError):
        return []


def _is_ours(record):
    """True while the recorded process is alive and is still the container we started."""
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 1:
        return False
    stat = _proc_stat(pid)
    if stat is None or stat[0] in ("Z", "X") or stat[2] != record.get("starttime"):
        return False
    argv = _cmdline(pid)
    return bool(argv) and os.path.basename(argv[0]) == NSPAWN and f"--machine={record.get('name')}" in argv


def _children(pid):
    kids = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                kids.extend(int(x) for x in fh.read().split())
    except (FileNotFoundError, ProcessLookupError):
        pass
    return kids


def _read_record(path):
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None
    except ValueError:
        return {}


def _write_record(path, record):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(record, fh)
    os.replace(tmp, path)


def _tail(path, lines=30):
    try:
        with open(path, "rb") as fh:
            return b"\n".join(fh.read().splitlines()[-lines:]).decode("utf-8", "replace")
    except (FileNotFoundError, TypeError):
        return ""


def _wait_gone(record, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _is_ours(record):
            return True
        time.sleep(0.2)
    return not _is_ours(record)


def start(module, record, stale):
    p = module.params
    if record and _is_ours(record):
        return dict(changed=False, pid=record["pid"], stale_record=False)
    if not p["directory"] or not os.path.isdir(os.path.join(p["directory"], "etc")):
        module.fail_json(msg=f"{p['directory']!r} is not a container root directory (no etc/): "
                             "build the rootfs and mount the host's overlay first")
    if module.check_mode:
        return dict(changed=True, stale_record=stale)
    nspawn = module.get_bin_path(NSPAWN, required=True)
    argv = [nspawn, f"--directory={p['directory']}", f"--machine={p['name']}",
            "--register=no", "--keep-unit", "--console=read-only", "--link-journal=no",
            *p["nspawn_args"], "--boot"]
    log = open(p["log_file"] or os.devnull, "ab")
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    finally:
        log.close()
    stat = _proc_stat(proc.pid)
    new = dict(pid=proc.pid, starttime=stat[2] if stat else None, name=p["name"],
               directory=p["directory"], argv=argv, started_at=time.time())
    _write_record(p["pid_file"], new)
    time.sleep(p["start_check"])
    if proc.poll() is not None or not _is_ours(new):
        os.unlink(p["pid_file"])
        module.fail_json(msg=f"systemd-nspawn for {p['name']} exited at once (rc={proc.returncode}); "
                             f"console log {p['log_file']}:\n{_tail(p['log_file'])}", cmd=argv)
    # The module process exits next; the container keeps running in its own session and is
    # reaped by init. Drop the handle so Python does not warn about a running child.
    proc.returncode = 0
    return dict(changed=True, pid=proc.pid, stale_record=stale, cmd=argv)


def stop(module, record, stale):
    p = module.params
    if not record or not _is_ours(record):
        if record is not None and not module.check_mode:
            os.unlink(p["pid_file"])
        return dict(changed=record is not None, stale_record=record is not None)
    if module.check_mode:
        return dict(changed=True, pid=record["pid"], stale_record=False)
    pid = record["pid"]
    t0 = time.monotonic()
    # systemd-nspawn turns SIGTERM into SIGRTMIN+3 for the container's systemd: a clean poweroff.
    os.kill(pid, signal.SIGTERM)
    forced = not _wait_gone(record, p["stop_timeout"])
    if forced:
        for child in _children(pid):  # the container's init: killing it ends its PID namespace
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if _is_ours(record):
            os.kill(pid, signal.SIGKILL)
        if not _wait_gone(record, 10):
            module.fail_json(msg=f"systemd-nspawn {pid} for {p['name']} survived SIGKILL", pid=pid)
    os.unlink(p["pid_file"])
    return dict(changed=True, pid=pid, stop_seconds=round(time.monotonic() - t0, 2), forced=forced,
                stale_record=False)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            directory=dict(type="path"),
            state=dict(type="str", default="started", choices=["started", "stopped"]),
            pid_file=dict(type="path", required=True),
            log_file=dict(type="path"),
            stop_timeout=dict(type="int", default=60),
            start_check=dict(type="float", default=1.5),
            nspawn_args=dict(type="list", elements="str", default=[]),
        ),
        required_if=[("state", "started", ("directory",))],
        supports_check_mode=True,
    )
    record = _read_record(module.params["pid_file"])
    stale = bool(record) and not _is_ours(record)
    if record == {}:
        stale = True
    if module.params["state"] == "started":
        result = start(module, record, stale)
    else:
        result = stop(module, record, stale)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
