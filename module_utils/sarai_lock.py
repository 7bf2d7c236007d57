# -*- coding: utf-8 -*-
"""A deploy lock on a host: one file whose existence means a run holds the host (or a build dir).

The file holds the holder as JSON ({id, controller, user, pid, playbook, since, ...}; the
controller side, action_plugins/sarai_lock.py, describes the run). It is created complete and
atomically: written to a temporary name, then hard-linked to the lock name, which fails when the
lock exists. Only the holder with the same id removes it again; breaking a stale lock names the
holder it expects, so a lock taken meanwhile by another run is never removed by mistake.
"""
from __future__ import annotations

import json
import os
import tempfile


class LockError(Exception):
    """A lock path that cannot be used; the message says what to do."""


def read_holder(path):
    """The holder recorded in the lock file, None when there is no lock. A lock file that is not
    a holder record (written by hand, truncated) is returned as {"id": None, "unreadable": ...}."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LockError("cannot read the lock %s: %s; check the directory and its permissions" % (path, exc)) from exc
    try:
        holder = json.loads(text)
    except ValueError:
        holder = None
    if not isinstance(holder, dict) or not holder.get("id"):
        return {"id": None, "unreadable": text[:200]}
    return holder


def acquire(path, holder, check_mode=False):
    """Take the lock for `holder` (a dict with a unique `id`).

    Returns (acquired, changed, current holder). Taking a lock the same holder already has is
    not a change, so a run may take it twice (a rollback inside a deploy)."""
    if not holder.get("id"):
        raise LockError("the lock holder needs an id")
    current = read_holder(path)
    if current is not None:
        return current.get("id") == holder["id"], False, current
    if check_mode:
        return True, True, holder
    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        handle, temp_path = tempfile.mkstemp(prefix=".sarai-lock.", dir=directory)
    except OSError as exc:
        raise LockError("cannot create the lock %s: %s; check the directory and its permissions" % (path, exc)) from exc
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(holder, out, indent=2, sort_keys=True)
            out.write("\n")
        os.chmod(temp_path, 0o644)
        try:
            os.link(temp_path, path)
        except FileExistsError:
            current = read_holder(path) or {}
            return current.get("id") == holder["id"], False, current
    finally:
        os.unlink(temp_path)
    return True, True, holder


def release(path, holder_id, check_mode=False):
    """Remove the lock if `holder_id` holds it. Returns (changed, current holder). Releasing a
    lock held by someone else (a run that could not take it) changes nothing."""
    current = read_holder(path)
    if current is None or current.get("id") != holder_id:
        return False, current
    if not check_mode:
        os.unlink(path)
    return True, None


def break_lock(path, holder_id, check_mode=False):
    """Remove a lock judged stale. `holder_id` is the id of the holder judged (None for an
    unreadable lock file); a lock that changed hands since is left alone. Returns changed."""
    current = read_holder(path)
    if current is None or current.get("id") != holder_id:
        return False
    if not check_mode:
        os.unlink(path)
    return True
