# -*- coding: utf-8 -*-
"""Deployment state of one inference host: which release runs, which ran before, which failed.

The state is a JSON document kept as an Ansible local fact (/etc/ansible/facts.d/sarai_model.fact),
so every play can read it as ``ansible_local.sarai_model``. Every function here is pure (state in,
new state out) except load/save, so the rules are easy to test.

A release is a dict: {"id": "int8-0123456789ab", "variant": "int8", "model_path": "...",
"manifest_sha256": "..."}.
"""
from __future__ import annotations

import copy
import datetime
import json
import os
import tempfile

HISTORY_LIMIT = 20
RELEASE_KEYS = ("id", "variant", "model_path", "manifest_sha256")


class StateError(Exception):
    """A state file or a release description that cannot be used; the message says what to do."""


def empty_state():
    return {"current": None, "previous": None, "bad_releases": [], "history": []}


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def normalize_release(release, what="release"):
    """Keep the known keys of a release dict and insist on id, variant and model_path."""
    if not isinstance(release, dict):
        raise StateError("%s must be a dict with id, variant and model_path, got %r" % (what, release))
    missing = [key for key in ("id", "variant", "model_path") if not release.get(key)]
    if missing:
        raise StateError("%s is missing %s: %r" % (what, ", ".join(missing), release))
    return {key: release.get(key) for key in RELEASE_KEYS}


def load_state(path):
    """Read the state file; a missing file is an empty state, a broken one an error naming it."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return empty_state()
    if not text.strip():
        return empty_state()
    try:
        state = json.loads(text)
    except ValueError as exc:
        raise StateError(
            "%s is not valid JSON (%s). Fix or move it aside; the releases on disk are untouched, "
            "and the next deploy writes a fresh state." % (path, exc)
        ) from exc
    if not isinstance(state, dict):
        raise StateError("%s must hold a JSON object, found %s" % (path, type(state).__name__))
    merged = empty_state()
    merged.update(state)
    return merged


def save_state(path, state):
    """Write the state atomically (temp file in the same directory, then rename)."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    handle, temp_path = tempfile.mkstemp(prefix=".sarai_state.", dir=directory)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(render(state))
        os.chmod(temp_path, 0o644)
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.unlink(temp_path)
        raise


def render(state):
    return json.dumps(state, indent=2, sort_keys=True) + "\n"


def record_switch(state, release, event="deploy", baseline=None, now=None):
    """The service now points at `release`. Returns the new state (unchanged if it already did).

    `baseline` is what the host ran before we managed it (the FP32 reference on a first deploy): it
    becomes `previous` when no current release is recorded, so a first deploy can still roll back.
    """
    release = normalize_release(release)
    current = state.get("current")
    if current and current.get("id") == release["id"]:
        return state
    new = copy.deepcopy(state)
    now = now or utc_now()
    if current:
        new["previous"] = current
    elif baseline:
        baseline = normalize_release(baseline, "baseline")
        if baseline["id"] != release["id"]:
            new["previous"] = dict(baseline, time=now, event="baseline", validated=True)
    new["current"] = dict(release, time=now, event=event, validated=False)
    entry = dict(release, time=now, event=event)
    new["history"] = (list(new.get("history") or []) + [entry])[-HISTORY_LIMIT:]
    return new


def record_validated(state, release_id, now=None):
    """Validation passed for the running release: mark it validated and clear any failed mark."""
    current = state.get("current")
    if not current or current.get("id") != release_id:
        raise StateError(
            "cannot mark %s validated: the recorded current release is %s. Run the deploy again "
            "so the state and the running service agree." % (release_id, current and current.get("id"))
        )
    bad = [item for item in state.get("bad_releases") or [] if item != release_id]
    if current.get("validated") and bad == list(state.get("bad_releases") or []):
        return state
    new = copy.deepcopy(state)
    new["current"]["validated"] = True
    new["current"]["validated_time"] = now or utc_now()
    new["bad_releases"] = bad
    return new


def record_failed(state, release_id):
    """Mark a release bad so that no rollback ever lands on it again."""
    bad = list(state.get("bad_releases") or [])
    if release_id in bad:
        return state
    new = copy.deepcopy(state)
    new["bad_releases"] = bad + [release_id]
    if new.get("current") and new["current"].get("id") == release_id:
        new["current"]["validated"] = False
    return new


def rollback_target(state, variant=None, leaving=None):
    """The release a rollback should land on, or None.

    `leaving` is the release being abandoned (default: the running one). If the service does not run
    it (a deploy failed before its switch was recorded), the running release is the target. Otherwise
    the candidates, newest first, are the previous release and then the history; never the release
    being left, never one marked bad; with `variant`, only releases of that variant.
    """
    current = state.get("current") or {}
    leaving = leaving or current.get("id")
    bad = set(state.get("bad_releases") or [])
    candidates = []
    if current and current.get("id") != leaving:
        candidates.append(current)
    if state.get("previous"):
        candidates.append(state["previous"])
    candidates.extend(reversed(state.get("history") or []))
    for candidate in candidates:
        if candidate.get("id") in bad or candidate.get("id") == leaving:
            continue
        if variant and candidate.get("variant") != variant:
            continue
        return {key: candidate.get(key) for key in RELEASE_KEYS}
    return None


def releases_to_keep(state, keep):
    """Release ids cleanup must not delete: current, previous, then the newest of the history,
    up to `keep` ids in all (current and previous are kept even when `keep` is smaller)."""
    ids = []
    for release in (state.get("current"), state.get("previous")):
        if release and release.get("id") and release["id"] not in ids:
            ids.append(release["id"])
    for entry in reversed(state.get("history") or []):
        if len(ids) >= keep:
            break
        if entry.get("id") and entry["id"] not in ids:
            ids.append(entry["id"])
    return ids
