# -*- coding: utf-8 -*-
"""Deployment state of one inference host, and the rollback rule.

What runs is not stored here: it is the release sarai.yaml names (``audio_omni.deployment.release``),
the file the service was switched to (``switched_release`` reads it). The state keeps only what
cannot be derived from anything else:

- ``history``: the switches that reached a healthy service, oldest first, each a release record
  with ``event`` (deploy, rollback, tune, baseline), ``time`` and ``validated``; a switch whose run
  ended before validation is marked ``unvalidated`` by the next run's preflight (``mark_unvalidated``);
- ``bad_releases``: release ids that failed and that no rollback may land on.

A rollback lands only on a release that passed validation on this host (or the baseline, the
reference the host ran before it was managed): a switch that never passed a gate is never a way back.

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
# size_bytes: the switch sizes its settle time from it (roles/sarai_switch), also for a rollback.
RELEASE_KEYS = ("id", "variant", "model_name", "manifest_sha256", "catalog", "size_bytes")


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
    """Read the state file; a missing file is an empty state, an empty or broken one an error naming it
    (never read as empty: that would drop the history and the bad marks silently)."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return empty_state()
    what_to_do = ("Restore it from a backup, or fix it by hand, or move it aside (the next deploy then "
                  "writes a fresh state, and forgets the history and the releases marked bad); the "
                  "releases on disk and the running service are untouched.")
    if not text.strip():
        raise StateError("%s is empty (a crash while it was written?). %s" % (path, what_to_do))
    try:
        state = json.loads(text)
    except ValueError as exc:
        raise StateError("%s is not valid JSON (%s). %s" % (path, exc, what_to_do)) from exc
    problem = state_problem(state)
    if problem:
        raise StateError("%s is corrupt: %s. %s" % (path, problem, what_to_do))
    return {"schema": SCHEMA, "history": list(state.get("history") or []),
            "bad_releases": list(state.get("bad_releases") or [])}


def state_problem(state):
    """What is wrong with the types of a parsed state document, or None."""
    if not isinstance(state, dict):
        return "it must hold a JSON object, found %s" % type(state).__name__
    history = state.get("history")
    if history is not None and not isinstance(history, list):
        return '"history" must be a list of switches, found %s %r' % (type(history).__name__, history)
    for index, entry in enumerate(history or []):
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not entry["id"]:
            return '"history"[%d] must be an object with a string "id", found %r' % (index, entry)
        if not isinstance(entry.get("validated", False), bool):
            return '"history"[%d].validated must be true or false, found %r' % (index, entry["validated"])
    bad = state.get("bad_releases")
    if bad is not None and not (isinstance(bad, list) and all(isinstance(item, str) and item for item in bad)):
        return '"bad_releases" must be a list of release ids, found %s %r' % (type(bad).__name__, bad)
    return None


def _fsync_directory(directory):
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def save_state(path, state):
    """Write the state atomically and durably (temp file in the same directory, fsync, rename, fsync
    of the directory): a crash or power cut leaves the old state or the new one, never an empty file."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    handle, temp_path = tempfile.mkstemp(prefix=".sarai_state.", dir=directory)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(render(state))
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp_path, 0o644)
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.unlink(temp_path)
        raise
    _fsync_directory(directory)


def render(state):
    return json.dumps(state, indent=2, sort_keys=True) + "\n"


def switched_release(config_path):
    """(release id, problem): the release sarai.yaml names (audio_omni.deployment.release), or None for
    a config this project did not render (the hand-made one a first deploy replaces), no config at
    all, or one that does not parse. `problem` says why a config that exists names no release when it
    is broken (not YAML, wrong types): such a config counts as unmanaged, so that the deploy or
    rollback that rewrites it can run."""
    try:
        with open(config_path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return None, None
    import yaml  # the runtime venv has PyYAML; imported here so the pure rules need nothing

    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return None, "%s is not valid YAML (%s)" % (config_path, " ".join(str(exc).split()))
    if config is None:
        return None, None
    omni = config.get("audio_omni") if isinstance(config, dict) else None
    deployment = omni.get("deployment") if isinstance(omni, dict) else None
    release = deployment.get("release") if isinstance(deployment, dict) else None
    if not isinstance(config, dict) or ("audio_omni" in config and not isinstance(omni, dict)):
        return None, "%s does not hold an audio_omni mapping" % config_path
    if release is not None and not (isinstance(release, str) and release):
        return None, "%s: audio_omni.deployment.release is %r, not a release id" % (config_path, release)
    return release or None, None


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
    event="baseline" records a switch to that reference itself (a rollback onto the fallback).
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
    # A switch back to the reference when the state knows nothing better (event baseline: what the
    # host ran before it was managed) is as good as the baseline; any other switch waits for its validation.
    history.append(dict(release, time=now, event=event, validated=event == "baseline"))
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
    new["history"][-1].pop("unvalidated", None)
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


def validated_ids(state):
    """Ids of the releases that passed validation on this host (a baseline counts: it ran before),
    and are not marked bad since."""
    bad = set(state.get("bad_releases") or [])
    return {entry.get("id") for entry in state.get("history") or []
            if entry.get("validated") is True and entry.get("id") not in bad}


def mark_unvalidated(state, now=None):
    """Preflight of a run, under the host lock: every switch still waiting for its validation belongs
    to a run that ended before validating it (a dead controller). Mark those entries `unvalidated`
    (never a rollback target). A release that passed validation before (a rollback onto it) or that
    is marked bad is not marked. Returns the new state (the same object when nothing is marked)."""
    passed = validated_ids(state)
    bad = set(state.get("bad_releases") or [])  # failed: marked already, and more plainly
    marks = [index for index, entry in enumerate(state.get("history") or [])
             if not entry.get("validated") and not entry.get("unvalidated") and entry.get("id") not in passed | bad]
    if not marks:
        return state
    new = copy.deepcopy(state)
    for index in marks:
        new["history"][index].update(unvalidated=True, unvalidated_time=now or utc_now())
    return new


def rollback_target(state, switched, variant=None, leaving=None):
    """The rollback rule: the release a rollback lands on, or None.

    `leaving` is the release being abandoned (default: the one sarai.yaml names). When sarai.yaml
    names another release (a deploy failed before it rendered its config), that running release
    is the target if it passed validation. Otherwise the candidates are the recorded switches, newest
    first. Only a release that passed validation here (validated_ids), never the release being left,
    never one marked bad; with `variant`, only releases of that variant.
    """
    leaving = leaving or switched
    passed = validated_ids(state)
    history = list(reversed(state.get("history") or []))
    running = [entry for entry in history if switched and entry.get("id") == switched][:1]
    for candidate in running + history:
        if candidate.get("id") not in passed or candidate.get("id") == leaving:
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
