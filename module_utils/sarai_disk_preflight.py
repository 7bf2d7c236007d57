# -*- coding: utf-8 -*-
"""Before a transfer: will the releases a server must receive fit, and what of ours is left over?

Nothing here writes, except `remove_leftovers` (sarai_leftovers.remove). The space rule:
  incoming   the releases whose directory is not already a whole release on the server
  releases   the filesystem of the releases dir (its nearest existing parent when it does not exist
             yet) needs incoming bytes x (1 + margin_percent/100) + margin_bytes free
  remote tmp `copy` first lands each file in Ansible's remote tmp and then moves it: on another
             filesystem that one needs room for the largest incoming file, with the same margins
Leftovers are removed before the space is measured (in check mode their size is counted as freed).
"""
from __future__ import annotations

import math
import os
import shutil
import socket

from ansible.module_utils.sarai_leftovers import release_leftovers, remote_tmp_leftovers, remove
from ansible.module_utils.sarai_onnx.manifest import release_dir_problems
from ansible.module_utils.sarai_onnx.release import parse_release_id

MIB = 1 << 20


class PreflightError(Exception):
    """Bad parameters; the message names the value and what to do."""


def human(size):
    return f"{size / (1 << 30):.2f} GiB" if abs(size) >= 1 << 30 else f"{size / MIB:.1f} MiB"


def nearest_existing(path):
    """The path itself or its nearest existing parent: where a dir that does not exist yet would live."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def describe_releases(releases):
    """[(id, total bytes, largest file bytes)] from [{id, files: [{name, size}]}] (extra keys ignored,
    so onnx_manifest's RV(files) or a build result's output files can be passed as they are)."""
    out = []
    for index, item in enumerate(releases or []):
        rid = item.get("id") if isinstance(item, dict) else None
        if not parse_release_id(rid):
            raise PreflightError(f"releases[{index}].id = {rid!r} is not a release id <variant>-<12 hex>: pass the "
                                 "releases the transfer will ship, each {id, files: [{name, size}]}")
        sizes = [f.get("size") if isinstance(f, dict) else None for f in item.get("files") or []]
        if not sizes or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in sizes):
            raise PreflightError(f"releases[{index}] ({rid}) needs files: [{{name, size}}] with sizes in bytes; "
                                 f"got {item.get('files')!r}")
        out.append((rid, sum(sizes), max(sizes)))
    return out


def device(path):
    """The filesystem a path is on (st_dev); a releases dir may be a link to another disk."""
    return os.stat(path).st_dev


def _needed(size, margin_percent, margin_bytes):
    return math.ceil(size * (1 + margin_percent / 100.0)) + margin_bytes if size else 0


def space_checks(releases_dir, remote_tmp, incoming, margin_percent, margin_bytes, freed=None):
    """One entry per filesystem that must hold something: {what, path, checked_path, needed_bytes,
    free_bytes, ok}. `freed`: {device: bytes} counted as free (leftovers check mode would remove)."""
    freed = freed or {}
    total = sum(size for _, size, _ in incoming)
    largest = max((big for _, _, big in incoming), default=0)
    target = nearest_existing(releases_dir)
    checks = [("releases", releases_dir, target, _needed(total, margin_percent, margin_bytes))]
    if remote_tmp:
        tmp = nearest_existing(remote_tmp)
        if device(tmp) != device(target):
            checks.append(("remote tmp", remote_tmp, tmp, _needed(largest, margin_percent, margin_bytes)))
    out = []
    for what, path, checked, needed in checks:
        free = shutil.disk_usage(checked).free + freed.get(device(checked), 0)
        out.append({"what": what, "path": path, "checked_path": checked, "needed_bytes": needed,
                    "free_bytes": free, "ok": free >= needed})
    return out


def preflight(releases_dir, releases=None, protect=(), margin_percent=10, margin_bytes=256 * MIB,
              remote_tmp=None, remote_tmp_min_age_minutes=60, remove_leftovers=False, check_mode=False,
              host=None):
    """The module's whole job; returns the result dict (failed=True with msg when it will not fit)."""
    if margin_percent < 0 or margin_bytes < 0 or remote_tmp_min_age_minutes < 0:
        raise PreflightError("margin_percent, margin_bytes and remote_tmp_min_age_minutes must be >= 0")
    wanted = describe_releases(releases)
    leftovers = release_leftovers(releases_dir, protect=set(protect or ()))
    if remote_tmp:
        leftovers += remote_tmp_leftovers(remote_tmp, remote_tmp_min_age_minutes * 60)
    failures, freed = [], {}
    if remove_leftovers and leftovers:
        if check_mode:
            for item in leftovers:
                dev = device(item["path"])
                freed[dev] = freed.get(dev, 0) + item["size_bytes"]
        else:
            failures = remove(leftovers)
    present = [rid for rid, _, _ in wanted if _is_whole_release(os.path.join(releases_dir, rid))]
    incoming = [item for item in wanted if item[0] not in present]
    checks = space_checks(releases_dir, remote_tmp, incoming, margin_percent, margin_bytes, freed)
    host = host or socket.gethostname()
    result = {
        "changed": bool(remove_leftovers and leftovers),
        "host": host,
        "incoming": [rid for rid, _, _ in incoming],
        "present": present,
        "incoming_bytes": sum(size for _, size, _ in incoming),
        "space": checks,
        "leftovers": leftovers,
    }
    if remove_leftovers and leftovers:
        listing = "".join(f"{item['path']}/\n" for item in leftovers)
        result["diff"] = {"before": listing, "after": "", "before_header": "leftovers", "after_header": "leftovers"}
    short = [c for c in checks if not c["ok"]]
    if short or failures:
        result["failed"] = True
        result["msg"] = " ".join([_describe_short(host, c, incoming, margin_percent, margin_bytes, protect)
                                  for c in short] + [f"Could not remove leftover {f}." for f in failures]
                                 + ["Nothing was copied or switched."])
    return result


def _is_whole_release(path):
    return os.path.isdir(path) and not os.path.islink(path) and not release_dir_problems(path)


def _describe_short(host, check, incoming, margin_percent, margin_bytes, protect):
    ids = ", ".join(rid for rid, _, _ in incoming)
    where = check["path"] if check["path"] == check["checked_path"] else \
        f"{check['path']} (not there yet: checked its nearest existing parent {check['checked_path']})"
    lack = check["needed_bytes"] - check["free_bytes"]
    if check["what"] == "releases":
        total = sum(size for _, size, _ in incoming)
        need = f"{human(total)} of releases ({ids}) + {margin_percent:g}% + {human(margin_bytes)} margin"
        todo = (f"Free at least {human(lack)} on that filesystem (releases that are not running can go"
                f"{'; keep ' + ', '.join(protect) if protect else ''}), or set sarai_releases_dir to a "
                "larger filesystem, then run the deploy again.")
    else:
        need = f"the largest incoming file ({human(max(big for _, _, big in incoming))}) + margins"
        todo = (f"Ansible's copy lands each file there before moving it: free at least {human(lack)} there, or set "
                "ansible_remote_tmp for the transfer to a directory on the releases' filesystem.")
    return (f"Not enough disk space on {host} for the {check['what']}: {where} has {human(check['free_bytes'])} "
            f"free and needs {human(check['needed_bytes'])} ({need}). {todo}")
