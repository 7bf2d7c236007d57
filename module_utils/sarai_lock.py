# -*- coding: utf-8 -*-
"""A deploy lock on a host: one file whose existence means a run holds the host (or a build dir).

The file holds the holder as JSON ({id, controller, user, pid, playbook, since, ...}; the
controller side, action_plugins/sarai_lock.py, describes the run). It is created complete and
durably: written to a temporary name and fsynced, then hard-linked to the lock name (which fails
when the lock exists), then the directory is fsynced. Only the holder with the same id removes it
again; breaking a lock names the holder it judged. Removing never reads then unlinks by path (another
run may have taken the lock in between): it renames the lock aside atomically, checks that what it
moved is the lock it judged, and puts it back otherwise.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid


class LockError(Exception):
    """A lock path that cannot be used; the message says what to do."""


def read_holder(path):
    """The holder recorded in the lock file, None when there is no lock. A lock file that is not
    a holder record (written by hand, truncated) is returned as {"id": None, "unreadable": ...,
    "fingerprint": "unreadable-<sha256 of the file, 12 hex>"} (the fingerprint stands for its id)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LockError("cannot read the lock %s: %s; check the directory and its permissions" % (path, exc)) from exc
    try:
        holder = json.loads(text)
    except ValueError:
        holder = None
    if not isinstance(holder, dict) or not isinstance(holder.get("id"), str) or not holder["id"]:
        fingerprint = "unreadable-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
        return {"id": None, "unreadable": text[:200], "fingerprint": fingerprint}
    return holder


def holder_key(holder):
    """What names the holder of a lock: its id, or the fingerprint of an unreadable lock file."""
    return (holder or {}).get("id") or (holder or {}).get("fingerprint")


def _fsync_directory(directory):
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


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
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp_path, 0o644)
        try:
            os.link(temp_path, path)
        except FileExistsError:
            current = read_holder(path) or {}
            return current.get("id") == holder["id"], False, current
    finally:
        os.unlink(temp_path)
    _fsync_directory(directory)
    return True, True, holder


def remove_if_held(path, key):
    """Remove the lock if the holder named `key` (holder_key) holds it. Returns (removed, holder found).

    The lock is renamed aside first (atomic: one run moves it, whatever else happens meanwhile),
    then the moved file is read: the judged holder's lock is deleted; another's (taken since it was
    judged) is linked back under the lock name. Should a third run have taken the lock name in that
    instant, the moved lock cannot go back: that is an error naming where it is."""
    aside = "%s.removing-%s" % (path, uuid.uuid4().hex)
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False, None
    except OSError as exc:
        raise LockError("cannot move the lock %s aside: %s; check the directory and its permissions" % (path, exc)) from exc
    moved = read_holder(aside)
    if holder_key(moved) == key:
        os.unlink(aside)
        _fsync_directory(os.path.dirname(path) or ".")
        return True, moved
    try:
        os.link(aside, path)
    except FileExistsError as exc:
        raise LockError(
            "the lock %s changed hands while it was removed: the lock of %s is now %s, and another run took %s "
            "meanwhile. Check which runs are active, then remove the one that is not (or move %s back)."
            % (path, holder_key(moved), aside, path, aside)) from exc
    os.unlink(aside)
    return False, moved


def release(path, holder_id, check_mode=False):
    """Remove the lock if `holder_id` holds it. Returns (changed, current holder). Releasing a
    lock held by someone else (a run that could not take it) changes nothing."""
    current = read_holder(path)
    if current is None or current.get("id") != holder_id:
        return False, current
    if check_mode:
        return True, None
    removed, found = remove_if_held(path, holder_id)
    return (True, None) if removed else (False, found)


def break_lock(path, key, check_mode=False):
    """Remove a lock judged breakable. `key` names the holder judged (holder_key: its id, or the
    fingerprint of an unreadable lock file); a lock that changed hands since is left alone. Returns changed."""
    current = read_holder(path)
    if current is None or holder_key(current) != key:
        return False
    if check_mode:
        return True
    return remove_if_held(path, key)[0]
