# -*- coding: utf-8 -*-
"""What an interrupted deploy leaves on a server, found by name and removed only when it is ours.

Three kinds (docs/contracts.md, "Copies in progress and leftovers"):
  release     `<releases dir>/<variant>-<12 hex>/` that cannot be a whole release: no manifest, a
              manifest that is not the one its name claims, a listed file missing or of the wrong
              size. Found without reading any data (sarai_onnx.manifest.release_dir_problems), so
              a release that verifies is never one of them.
  partial     `<releases dir>/.<release id>.partial-<token>/`: a copy that never got renamed into
              place. Only one deploy runs on a host at a time (the host lock), and this runs before
              that deploy copies anything, so any partial found is dead.
  remote_tmp  `<remote tmp>/ansible-tmp-*/` idle for a while: Ansible removes a task's dir when the
              task ends, so one that nothing has written for `min_age` seconds was left by a killed
              run (an interrupted copy leaves the whole file it was sending there). The remote tmp
              is shared with every Ansible run of that user, hence the age guard.
Symbolic links are never followed or removed; nothing outside those two directories is touched.
"""
from __future__ import annotations

import os
import shutil
import time

from ansible.module_utils.sarai_onnx.manifest import release_dir_problems
from ansible.module_utils.sarai_onnx.release import PARTIAL_DIR, parse_release_id

ANSIBLE_TMP_PREFIX = "ansible-tmp-"


def tree_usage(path):
    """(bytes allocated on disk, newest mtime) of a directory tree, without following links."""
    used, newest = 0, os.lstat(path).st_mtime
    for root, dirs, names in os.walk(path):
        for name in dirs + names:
            try:
                st = os.lstat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            used += getattr(st, "st_blocks", 0) * 512 or st.st_size
            newest = max(newest, st.st_mtime)
    return used, newest


def _subdirs(path):
    """Real directories directly under path (no links), sorted; none when path does not exist."""
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [e for e in entries if e.is_dir(follow_symlinks=False)]


def _entry(path, kind, reason):
    size, _ = tree_usage(path)
    return {"path": path, "kind": kind, "reason": reason, "size_bytes": size, "removed": False}


def release_leftovers(releases_dir, protect=()):
    """Half releases and dead partial copies in the releases dir; `protect` ids are never looked at."""
    found = []
    for entry in _subdirs(releases_dir):
        partial = PARTIAL_DIR.match(entry.name)
        if partial:
            found.append(_entry(entry.path, "partial", f"copy of {partial.group('id')} that was never renamed "
                                "into place (an interrupted transfer)"))
        elif parse_release_id(entry.name) and entry.name not in protect:
            problems = release_dir_problems(entry.path)
            if problems:
                more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
                found.append(_entry(entry.path, "release", f"not a whole release: {problems[0]}{more}"))
    return found


def remote_tmp_leftovers(remote_tmp, min_age_s, now=None):
    """Ansible task dirs under the remote tmp that nothing has written for `min_age_s` seconds."""
    now = time.time() if now is None else now
    found = []
    for entry in _subdirs(remote_tmp):
        if not entry.name.startswith(ANSIBLE_TMP_PREFIX):
            continue
        size, newest = tree_usage(entry.path)
        idle = now - newest
        if idle >= min_age_s:
            found.append({"path": entry.path, "kind": "remote_tmp", "size_bytes": size, "removed": False,
                          "reason": f"Ansible task dir idle for {idle / 60:.0f} min (a killed run's)"})
    return found


def remove(leftovers):
    """Remove each leftover; returns the paths that could not be removed, with why."""
    failures = []
    for item in leftovers:
        try:
            shutil.rmtree(item["path"])
            item["removed"] = True
        except FileNotFoundError:
            item["removed"] = True
        except OSError as exc:
            failures.append(f"{item['path']}: {exc.strerror or exc}")
    return failures
