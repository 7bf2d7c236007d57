# -*- coding: utf-8 -*-
"""Keep the newest N backups Ansible's `backup: true` leaves beside a config file.

ansible.module_utils.basic.AnsibleModule.backup_local names them
`<file>.<pid>.<YYYY-MM-DD@HH:MM:SS>~` (local time of the backup). They are ordered by that time
stamp, not by mtime: the backup is a preserved copy, so its mtime is the old file's.
"""
from __future__ import annotations

import os
import re

_STAMP = r"(?P<stamp>[0-9]{4}-[0-9]{2}-[0-9]{2}@[0-9]{2}:[0-9]{2}:[0-9]{2})"


class BackupsError(Exception):
    """Bad parameters; the message names the value and what to do."""


def backup_pattern(config_path):
    return re.compile(rf"^{re.escape(os.path.basename(config_path))}(?:\.[0-9]+)?\.{_STAMP}~$")


def find_backups(config_path):
    """The backups of config_path, oldest first: [{path, stamp}]. Links and other names are ignored."""
    directory = os.path.dirname(os.path.abspath(config_path))
    pattern = backup_pattern(config_path)
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        match = pattern.match(entry.name)
        if match and entry.is_file(follow_symlinks=False):
            # Two backups in the same second: the later write is the newer one.
            found.append((match.group("stamp"), entry.stat(follow_symlinks=False).st_ctime, entry.path))
    return [{"path": path, "stamp": stamp} for stamp, _, path in sorted(found)]


def prune_backups(config_path, keep, check_mode=False):
    """Remove all but the newest `keep` backups; returns {changed, kept, removed, diff}."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise BackupsError(f"keep = {keep!r}: keep at least 1 backup (the way back to a hand-edited config)")
    backups = find_backups(config_path)
    cut = max(len(backups) - keep, 0)
    removed, kept = backups[:cut], backups[cut:]
    if not check_mode:
        for item in removed:
            try:
                os.unlink(item["path"])
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise BackupsError(f"cannot remove backup {item['path']}: {exc.strerror}; check its permissions") from None
    return {"changed": bool(removed), "kept": [i["path"] for i in kept], "removed": [i["path"] for i in removed],
            "diff": {"before": _listing(backups), "after": _listing(kept),
                     "before_header": f"backups of {config_path}", "after_header": f"backups of {config_path}"}}


def _listing(backups):
    return "".join(os.path.basename(item["path"]) + "\n" for item in backups)
