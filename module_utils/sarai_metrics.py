# -*- coding: utf-8 -*-
"""What a server's monitoring scrapes about the deploy: a node_exporter textfile (Prometheus text format).

``render`` is pure: the running release (from the deployment state), its validation numbers and the
last bake in, the text out. Label values are escaped (backslash, double quote, newline), every series
has its HELP and TYPE lines, and only numbers become sample values. Nothing secret is in it: release
ids, variant and method names, times and measurements.

``write_atomic`` puts the text in place as node_exporter's textfile collector needs it: a temp file in
the same directory, renamed over the old one (the collector never reads half a file), mode 0644.
"""
from __future__ import annotations

import calendar
import math
import os
import tempfile
import time

PREFIX = "sarai"
# The validation numbers monitoring gets (the report keeps the rest).
VALIDATION_METRICS = {
    "p50_ms": "Median inference time measured by the deploy's validation, milliseconds.",
    "p99_ms": "99th percentile inference time measured by the deploy's validation, milliseconds.",
    "speedup": "Reference P50 divided by this release's P50 in the deploy's validation.",
    "cosine": "Cosine similarity of this release's outputs with the FP32 reference's.",
    "peak_rss_mb": "Peak resident memory of the release in the deploy's validation, MiB.",
}


def escape_label(value):
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text):
    return str(text).replace("\\", "\\\\").replace("\n", "\\n")


def number(value):
    """The value as Prometheus writes it, or None when it is not a finite number (bools are 0/1)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if not isinstance(value, (int, float)) or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return str(int(value)) if isinstance(value, int) or float(value).is_integer() else repr(float(value))


def utc_epoch(text):
    """Seconds since the epoch of a state time (2026-12-04T03:00:00Z), or None."""
    try:
        return calendar.timegm(time.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ"))
    except (TypeError, ValueError):
        return None


class _Families:
    """Series grouped by metric name, each name with one HELP and one TYPE line, in order of first use."""

    def __init__(self):
        self.order, self.help, self.samples = [], {}, {}

    def add(self, name, help_text, labels, value):
        text = number(value)
        if text is None:
            return
        full = f"{PREFIX}_{name}"
        if full not in self.help:
            self.order.append(full)
            self.help[full], self.samples[full] = help_text, []
        label_text = ",".join(f'{key}="{escape_label(val)}"' for key, val in labels.items())
        self.samples[full].append(f"{full}{{{label_text}}} {text}" if label_text else f"{full} {text}")

    def text(self):
        lines = []
        for name in self.order:
            lines += [f"# HELP {name} {escape_help(self.help[name])}", f"# TYPE {name} gauge"] + self.samples[name]
        return "\n".join(lines) + "\n" if lines else ""


def render(running=None, validation=None, bake=None, bad_releases=()):
    """The textfile. running: the state's entry of what runs {id, variant, catalog, time, validated};
    validation: {release, metrics}; bake: {release, passed, peak_memory_mb, budget_mb, samples, time};
    bad_releases: ids marked bad on this server."""
    families = _Families()
    if running and running.get("id"):
        release = running["id"]
        method = ((running.get("catalog") or {}).get("quantization") or {}).get("method", "")
        families.add("release_info", "The release SARAi runs on this server (always 1).",
                     {"id": release, "variant": running.get("variant", ""), "method": method}, 1)
        families.add("release_switch_timestamp_seconds", "When the deploy switched SARAi to the running release.",
                     {"id": release}, utc_epoch(running.get("time")))
        families.add("release_validated", "1 when the running release passed validation since its switch.",
                     {"id": release}, bool(running.get("validated")))
    if validation and validation.get("release"):
        labels = {"id": validation["release"]}
        for key, help_text in VALIDATION_METRICS.items():
            families.add(f"validation_{key}", help_text, labels, (validation.get("metrics") or {}).get(key))
    if bake and bake.get("release"):
        labels = {"id": bake["release"]}
        families.add("bake_passed", "1 when the last bake of the release passed, 0 when it breached a gate.",
                     labels, bool(bake.get("passed")))
        families.add("bake_peak_memory_mb", "Highest memory the last bake saw, MiB.", labels, bake.get("peak_memory_mb"))
        families.add("bake_budget_mb", "The bake's memory gate, MiB.", labels, bake.get("budget_mb"))
        families.add("bake_samples", "Samples the last bake took.", labels, len(bake.get("samples") or []))
        families.add("bake_timestamp_seconds", "When the last bake ended.", labels, utc_epoch(bake.get("time")))
    for release in sorted(set(bad_releases or ())):
        families.add("release_marked_bad", "1 for a release that failed here; no rollback lands on it.",
                     {"id": release}, 1)
    return families.text()


def write_atomic(path, text, mode=0o644):
    """Replace `path` with `text` through a temp file in its directory. True when the content changed."""
    try:
        with open(path, encoding="utf-8") as handle:
            if handle.read() == text:
                return False
    except OSError:
        pass
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".sarai_deploy.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return True


def directory_problem(path):
    """Why the textfile cannot be written at `path` (None when it can): its directory must exist and be writable."""
    if not isinstance(path, str) or not path.startswith("/") or path.endswith("/"):
        return f"{path!r} is not an absolute file path"
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        return f"its directory {directory} does not exist"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"its directory {directory} is not writable"
    return None
