# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of the sarai_lock module: who is this run, is the holder of a lock still alive.

The module (library/sarai_lock.py) creates and removes the lock file on the target. This plugin
describes the run holding it (controller, user, ansible-playbook's pid and start time, playbook),
retries while another live run holds the lock and `wait_s` allows, tells a stale lock (its run is
gone) from a live one and from one it cannot check (`unknown`: taken on another controller, or an
unreadable file), breaks a stale one with `break_stale` and an unknown one only with `break_id`
naming its holder (the message prints it), and fails with a message naming the holder.

Taking and releasing a lock leaves the host as it was, so neither is reported as a change (a deploy
that changes nothing else stays changed=0); breaking a stale lock is.

Action plugins run in a worker process forked from ansible-playbook, so os.getppid() is the pid of
the ansible-playbook run itself: the same for every host and task of one run, different for two runs.
"""
from __future__ import annotations

import datetime
import getpass
import os
import socket
import time

from ansible import context
from ansible.plugins.action import ActionBase

ARGUMENT_SPEC = dict(
    path=dict(type="path", required=True),
    state=dict(type="str", default="locked", choices=["locked", "unlocked"]),
    wait_s=dict(type="int", default=0),
    poll_s=dict(type="int", default=5),
    break_stale=dict(type="bool", default=False),
    break_id=dict(type="str", default=""),
    purpose=dict(type="str", default=""),
)


def _utc(epoch):
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return None


def process_start_ticks(pid, proc="/proc"):
    """Start time of a process in clock ticks after boot (/proc/<pid>/stat field 22), None if it is gone."""
    stat = _read("%s/%d/stat" % (proc, pid))
    if stat is None:
        return None
    # The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[19])


def boot_time(proc="/proc"):
    for line in (_read(proc + "/stat") or "").splitlines():
        if line.startswith("btime "):
            return int(line.split()[1])
    return None


def this_run(proc="/proc"):
    """The holder record of this ansible-playbook run (the parent of this worker process)."""
    pid = os.getppid()
    ticks = process_start_ticks(pid, proc)
    btime = boot_time(proc)
    started = btime + ticks / os.sysconf("SC_CLK_TCK") if ticks is not None and btime is not None else time.time()
    controller = socket.gethostname()
    return {
        "id": "%s:%d:%s" % (controller, pid, ticks),
        "controller": controller,
        "user": getpass.getuser(),
        "pid": pid,
        "pid_start_ticks": ticks,
        "boot_id": (_read(proc + "/sys/kernel/random/boot_id") or "").strip() or None,
        "playbook": " ".join(context.CLIARGS.get("args") or ()) or None,
        "run_started": _utc(started),
    }


def liveness(holder, here, proc="/proc"):
    """('alive' | 'stale' | 'unknown', why) for the holder of a lock, seen from this controller."""
    if not holder.get("id"):
        return "unknown", "the lock file does not describe its holder: %r" % holder.get("unreadable", "")
    if holder.get("controller") != here["controller"]:
        return "unknown", "it was taken on another controller (%s), whose processes this one cannot see" % (
            holder.get("controller"))
    if holder.get("boot_id") and here.get("boot_id") and holder["boot_id"] != here["boot_id"]:
        return "stale", "%s has rebooted since" % here["controller"]
    ticks = process_start_ticks(int(holder.get("pid") or 0), proc)
    if ticks is None:
        return "stale", "process %s on %s is gone" % (holder.get("pid"), here["controller"])
    if holder.get("pid_start_ticks") is not None and ticks != holder["pid_start_ticks"]:
        return "stale", "process %s on %s is another program now" % (holder.get("pid"), here["controller"])
    return "alive", "process %s on %s still runs" % (holder.get("pid"), here["controller"])


def describe(holder):
    if not holder.get("id"):
        return "an unreadable lock file (holder id %s)" % holder.get("fingerprint")
    return "%s (holder id %s: user %s on controller %s, pid %s, playbook %s, run started %s, lock taken %s)" % (
        holder.get("purpose") or "a run", holder["id"], holder.get("user"), holder.get("controller"), holder.get("pid"),
        holder.get("playbook"), holder.get("run_started"), holder.get("since"))


def holder_key(holder):
    """Its id, or the fingerprint of an unreadable lock file (module_utils/sarai_lock.py holder_key)."""
    return holder.get("id") or holder.get("fingerprint")


def may_break(status, holder, args):
    """Whether this task breaks the lock: a stale one with break_stale; one this controller cannot
    check (unknown) only with break_id naming its holder; a live one never."""
    if status == "stale":
        return bool(args["break_stale"]) or bool(args["break_id"]) and args["break_id"] == holder_key(holder)
    return status == "unknown" and bool(args["break_id"]) and args["break_id"] == holder_key(holder)


class LockTaskFailed(Exception):
    """The module failed (a lock path it cannot use): its answer is the task's result."""

    def __init__(self, answer):
        super().__init__(answer.get("msg"))
        self.answer = answer


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        dummy, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        if getattr(self._connection._shell, "SHELL_FAMILY", "") == "powershell":
            # The module is Python; a PowerShell twin (library/sarai_lock.ps1) is not written yet.
            self._display.warning("sarai_lock cannot lock %s on %s yet (no Windows implementation): that "
                                  "directory is not protected against a concurrent run." % (
                                      args["path"], task_vars.get("inventory_hostname")))
            return dict(result, skipped=True, msg="no lock on a Windows host")
        run = this_run()

        def module(**module_args):
            answer = self._execute_module(module_name="sarai_lock", module_args=dict(path=args["path"], **module_args),
                                          task_vars=task_vars)
            if answer.get("failed"):
                raise LockTaskFailed(answer)
            return answer

        try:
            return self._run(args, run, module, result, task_vars)
        except LockTaskFailed as exc:
            return dict(result, **exc.answer)

    def _run(self, args, run, module, result, task_vars):
        if args["state"] == "unlocked":
            answer = module(state="unlocked", holder_id=run["id"])
            return dict(result, changed=False, released=answer["changed"], holder=answer.get("holder"))

        started = time.monotonic()
        while True:
            holder = dict(run, purpose=args["purpose"], since=_utc(time.time()))
            answer = module(state="locked", holder=holder)
            current = answer.get("holder") or {}
            if answer["acquired"]:
                return dict(result, changed="broken" in result, holder=current,
                            waited_s=round(time.monotonic() - started, 1))
            status, why = liveness(current, run)
            if may_break(status, current, args):
                module(state="broken", holder_id=holder_key(current))
                result["broken"] = current
                self._display.warning("Broke the lock %s on %s held by %s: %s." % (
                    args["path"], task_vars.get("inventory_hostname"), describe(current), why))
                if self._task.check_mode:
                    return dict(result, changed=True, holder=holder, waited_s=0.0)
                continue
            waited = time.monotonic() - started
            if status != "stale" and waited + args["poll_s"] <= args["wait_s"]:
                time.sleep(args["poll_s"])
                continue
            return dict(result, failed=True, msg=self._message(args, task_vars, current, status, why, waited),
                        holder=current, lock_status=status, waited_s=round(waited, 1))

    @staticmethod
    def _message(args, task_vars, holder, status, why, waited):
        where = "%s:%s" % (task_vars.get("inventory_hostname"), args["path"])
        held = "%s is locked by %s" % (where, describe(holder))
        if status == "alive":
            return "%s; %s. %s" % (held, why, "Waited %d s for it." % waited if args["wait_s"] else
                                   "Let it finish, or wait for it with -e sarai_lock_wait_s=<seconds>.")
        if status == "stale":
            return ("%s, which is stale: %s. Nothing holds this lock any more; remove it with "
                    "-e sarai_lock_break=true (or delete %s)." % (held, why, args["path"]))
        named = ""
        if args["break_id"]:
            named = " -e sarai_lock_break_id=%s does not name its holder (it may have changed hands)." % args["break_id"]
        elif args["break_stale"]:
            named = " -e sarai_lock_break=true breaks only stale locks, and this one may belong to a live run."
        return ("%s, which this controller cannot check: %s.%s%s Make sure that no run holds it (ask on %s), then "
                "remove it with -e sarai_lock_break_id=%s." % (
                    held, why, " Waited %d s." % waited if args["wait_s"] else "", named,
                    holder.get("controller") or "the host that wrote it", holder_key(holder)))
