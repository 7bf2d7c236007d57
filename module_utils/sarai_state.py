# -*- coding: utf-8 -*-
"""Deployment state of one inference host, and the rollback rule.

What runs is not stored here: it is the release sarai.yaml names (``audio_omni.deployment.release``),
the file the service was switched to (``switched_release`` reads it). The state keeps only what
cannot be derived from anything else:

- ``history``: the switches that reached a healthy service, oldest first, each a release record
  with ``event`` (deploy, rollback, tune, baseline), ``time`` and ``validated``;
- ``bad_releases``: release ids that failed and that no rollback may land on.

It is a JSON document kept as an Ansible local fact (/etc/ansible/facts.d/sarai_model.fact), so
plays can also read it as ``ansible_local.sarai_model``. Every function here is pure (state in,
new state out) except the three that read or write files.

A release record is the dict the build describes once (see docs/contracts.md); the state keeps
RELEASE_KEYS of it: {"id": "int8-0123456789ab", "variant": "int8", "model_name": "m_int8.onnx",
"manifest_sha256": "...", "catalog": {...the variant's catalog entry...}}.
"""
from __future__ import annotations

import copy
import datetime
import json
import os
import tempfile

SCHEMA = 2
HISTORY_LIMIT = 20
RELEASE_KEYS = ("id", "variant", "model_name", "manifest_sha256", "catalog")


class StateError(Exception):
    """A state file, config or release description that cannot be used; the message says what to do."""


def empty_state():
    return {"schema": SCHEMA, "history": [], "bad_releases": []}


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def normalize_release(release, what="release"):
    """Keep the known keys of a release record and insist on id, variant and model_name."""
    if not isinstance(release, dict):
        raise StateError("%s must be a release record (a dict with id, variant, model_name), got %r" % (what, release))
    missing = [key for key in ("id", "variant", "model_name") if not release.get(key)]
    if missing:
        raise StateError("%s is missing %s: %r" % (what, ", ".join(missing), release))
    return {key: release[key] for key in RELEASE_KEYS if release.get(key) is not None}


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
    return {"schema": SCHEMA, "history": list(state.get("history") or []),
            "bad_releases": list(state.get("bad_releases") or [])}


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


def switched_release(config_path):
    """The release id sarai.yaml names (audio_omni.deployment.release), or None for a config this
    project did not render (the hand-made one a first deploy replaces) or no config at all."""
    try:
        with open(config_path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return None
    import yaml  # the runtime venv has PyYAML; imported here so the pure rules need nothing

    try:
        config = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise StateError("%s is not valid YAML (%s): fix it or deploy again to rewrite it" % (config_path, exc)) from exc
    deployment = (config.get("audio_omni") or {}).get("deployment") if isinstance(config, dict) else None
    return (deployment or {}).get("release") or None


def current_entry(state, switched):
    """The history entry of what runs: the last switch recorded, if sarai.yaml still names it.

    None when nothing is recorded, or when sarai.yaml names another release (a run that rendered
    the config and died before the service was healthy): that switch never completed."""
    history = state.get("history") or []
    if switched and history and history[-1].get("id") == switched:
        return history[-1]
    return None


def previous_entry(state, switched):
    """The newest recorded switch to a release other than the one sarai.yaml names."""
    for entry in reversed(state.get("history") or []):
        if entry.get("id") != switched:
            return entry
    return None


def record_switch(state, release, event="deploy", baseline=None, now=None):
    """The service is healthy on `release`. Returns the new state (unchanged if it was the last switch).

    `baseline` is what the host ran before we managed it (the FP32 reference on a first deploy): on
    a host with no history it is recorded first, so a first deploy can still roll back to it.
    """
    release = normalize_release(release)
    history = list(state.get("history") or [])
    if history and history[-1].get("id") == release["id"]:
        return state
    now = now or utc_now()
    if not history and baseline:
        baseline = normalize_release(baseline, "baseline")
        if baseline["id"] != release["id"]:
            history.append(dict(baseline, time=now, event="baseline", validated=True))
    history.append(dict(release, time=now, event=event, validated=False))
    new = copy.deepcopy(state)
    new["history"] = history[-HISTORY_LIMIT:]
    return new


def record_validated(state, release_id, switched, now=None):
    """Validation passed for the running release: mark its switch validated, clear any bad mark."""
    entry = current_entry(state, switched)
    if switched != release_id or entry is None:
        raise StateError(
            "cannot mark %s validated: sarai.yaml names %s and the last recorded switch is %s. Run the "
            "deploy again so that the service, its config and the state agree."
            % (release_id, switched, (state.get("history") or [{}])[-1].get("id"))
        )
    bad = [item for item in state.get("bad_releases") or [] if item != release_id]
    if entry.get("validated") and bad == list(state.get("bad_releases") or []):
        return state
    new = copy.deepcopy(state)
    new["history"][-1].update(validated=True, validated_time=now or utc_now())
    new["bad_releases"] = bad
    return new


def record_failed(state, release_id):
    """Mark a release bad so that no rollback ever lands on it again."""
    bad = list(state.get("bad_releases") or [])
    history = state.get("history") or []
    last_validated = bool(history) and history[-1].get("id") == release_id and history[-1].get("validated")
    if release_id in bad and not last_validated:
        return state
    new = copy.deepcopy(state)
    if release_id not in bad:
        new["bad_releases"] = bad + [release_id]
    if last_validated:
        new["history"][-1]["validated"] = False
    return new


def rollback_target(state, switched, variant=None, leaving=None):
    """The rollback rule: the release a rollback lands on, or None.

    `leaving` is the release being abandoned (default: the one sarai.yaml names). When sarai.yaml
    names another release (a deploy failed before it rendered its config), that running release
    is the target. Otherwise the candidates are the recorded switches, newest first. Never the
    release being left, never one marked bad; with `variant`, only releases of that variant.
    """
    leaving = leaving or switched
    bad = set(state.get("bad_releases") or [])
    history = list(reversed(state.get("history") or []))
    running = [entry for entry in history if switched and entry.get("id") == switched][:1]
    for candidate in running + history:
        if candidate.get("id") in bad or candidate.get("id") == leaving:
            continue
        if not candidate.get("model_name"):  # written by state schema 1: not a release record
            continue
        if variant and candidate.get("variant") != variant:
            continue
        return normalize_release(candidate, "history entry %s" % candidate.get("id"))
    return None


def releases_to_keep(state, switched, keep):
    """Release ids cleanup must not delete: the running one, the previous one, then the newest of
    the history, up to `keep` ids in all (running and previous are kept even when `keep` is smaller)."""
    ids = [switched] if switched else []
    previous = previous_entry(state, switched)
    if previous and previous.get("id") not in ids:
        ids.append(previous["id"])
    for entry in reversed(state.get("history") or []):
        if len(ids) >= keep:
            break
        if entry.get("id") and entry["id"] not in ids:
            ids.append(entry["id"])
    return ids
