# -*- coding: utf-8 -*-
"""The bake: watch the running service for a while after a deploy, and judge what was seen.

A sample is one look at the service (``take_sample``):

    {"index": 3, "time": "2026-12-04T03:12:05Z", "elapsed_s": 30.0, "active": true, "main_pid": 812,
     "n_restarts": 0, "result": "success", "rss_mb": 412.3, "rss_peak_mb": 430.1,
     "memory_current_mb": 520.4, "memory_peak_mb": 540.0, "oom_kills": 0, "health_ok": true,
     "health_msg": "HTTP 200"}

Memory comes from the MainPID's /proc status (VmRSS, and VmHWM: the peak since the process started,
so a spike between two samples is not missed) and, for the record, from systemd's cgroup accounting
(MemoryCurrent/MemoryPeak, which also count page cache). OOM kills are the cgroup's memory.events
``oom_kill`` counter and systemd's ``Result=oom-kill``. Any of these may be None when the server
cannot tell (no accounting, no cgroup v2, the process gone).

``evaluate`` is pure: samples and gates in, breaches out, each naming the sample (index, time,
value, gate). The first sample is the baseline for restarts, MainPID and OOM kills.
"""
from __future__ import annotations

import datetime
import time
import urllib.error
import urllib.request

MIB = 1024 * 1024
GATES = ("active", "rss_max_mb", "restarts", "main_pid", "oom", "health")
# systemctl show properties a sample reads.
SHOW_PROPERTIES = ("ActiveState", "SubState", "MainPID", "NRestarts", "Result", "MemoryCurrent", "MemoryPeak",
                   "ControlGroup")
# What systemd prints for a memory figure it does not track.
_UNSET_MEMORY = ("", "[not set]", "infinity", "18446744073709551615")


def bake_budget_mb(max_memory_mb, tolerance_pct, override_mb=None):
    """The bake's memory gate: the variant's own bake_rss_max_mb, else its max_memory_mb plus the tolerance."""
    if override_mb is not None:
        return float(override_mb)
    if max_memory_mb is None:
        return None
    return round(float(max_memory_mb) * (1 + float(tolerance_pct) / 100.0), 1)


def sample_count(duration_s, interval_s):
    """Samples at 0, interval, 2 x interval ... up to duration (at least one)."""
    if interval_s <= 0:
        return 1
    return int(duration_s // interval_s) + 1


# ---------------------------------------------------------------- reading the server

def parse_systemctl_show(text):
    """{property: value} from `systemctl show -p A -p B` output (Key=Value lines)."""
    props = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            props[key.strip()] = value.strip()
    return props


def _int_or_none(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _memory_mb(value):
    if value is None or value in _UNSET_MEMORY:
        return None
    number = _int_or_none(value)
    return None if number is None else round(number / MIB, 1)


def parse_proc_status(text):
    """{rss_mb, rss_peak_mb} from /proc/<pid>/status (VmRSS and VmHWM are in kB)."""
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            number = _int_or_none(rest.split()[0]) if rest.split() else None
            values[key] = None if number is None else round(number / 1024.0, 1)
    return {"rss_mb": values.get("VmRSS"), "rss_peak_mb": values.get("VmHWM")}


def parse_memory_events(text):
    """The oom_kill count of a cgroup v2 memory.events file, or None without one."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "oom_kill":
            return _int_or_none(parts[1])
    return None


def _read(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return None


def probe_health(url, timeout_s=5.0):
    """(ok, message): ok is an HTTP 2xx answer within the timeout."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:  # noqa: S310 (the inventory's URL)
            return 200 <= answer.status < 300, f"HTTP {answer.status}"
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return False, f"no answer: {getattr(exc, 'reason', exc)}"


def utc_iso(epoch):
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def take_sample(index, elapsed_s, show_text, proc_root="/proc", cgroup_root="/sys/fs/cgroup", health_url="",
                health_timeout_s=5.0, now=None):
    """One look at the service from `systemctl show` output, /proc, the cgroup and the health URL."""
    props = parse_systemctl_show(show_text)
    main_pid = _int_or_none(props.get("MainPID")) or 0
    memory = parse_proc_status(_read(f"{proc_root}/{main_pid}/status") or "") if main_pid else {}
    control_group = props.get("ControlGroup", "")
    oom_kills = None
    if control_group:
        oom_kills = parse_memory_events(_read(f"{cgroup_root}/{control_group.lstrip('/')}/memory.events") or "")
    health_ok, health_msg = (None, "") if not health_url else probe_health(health_url, health_timeout_s)
    return {
        "index": index,
        "time": utc_iso(time.time() if now is None else now),
        "elapsed_s": round(elapsed_s, 1),
        "active": props.get("ActiveState") == "active",
        "state": f"{props.get('ActiveState', '?')}/{props.get('SubState', '?')}",
        "main_pid": main_pid,
        "n_restarts": _int_or_none(props.get("NRestarts")),
        "result": props.get("Result"),
        "rss_mb": memory.get("rss_mb"),
        "rss_peak_mb": memory.get("rss_peak_mb"),
        "memory_current_mb": _memory_mb(props.get("MemoryCurrent")),
        "memory_peak_mb": _memory_mb(props.get("MemoryPeak")),
        "oom_kills": oom_kills,
        "health_ok": health_ok,
        "health_msg": health_msg,
    }


# ---------------------------------------------------------------- the verdict

def memory_of(sample):
    """The figure the memory gate reads: the process's peak RSS, else its RSS, else the cgroup's current use."""
    for key in ("rss_peak_mb", "rss_mb", "memory_current_mb"):
        if sample.get(key) is not None:
            return sample[key]
    return None


def _breach(sample, gate, value, limit, what):
    return {"index": sample["index"], "time": sample["time"], "elapsed_s": sample.get("elapsed_s"), "gate": gate,
            "value": value, "limit": limit,
            "msg": f"sample {sample['index']} ({sample['time']}, {sample.get('elapsed_s')} s in): {gate}: {what}"}


def check_sample(sample, baseline, gates):
    """The breaches of one sample against the gates, with `baseline` the first sample."""
    breaches = []
    if gates.get("active", True) and not sample.get("active"):
        breaches.append(_breach(sample, "active", sample.get("state"), "active/running",
                                f"the service is {sample.get('state')}, not active"))
    limit = gates.get("rss_max_mb")
    memory = memory_of(sample)
    if limit is not None and memory is not None and memory > limit:
        breaches.append(_breach(sample, "rss_max_mb", memory, limit, f"memory {memory} MiB > budget {limit} MiB"))
    if gates.get("restarts", True):
        before, now = baseline.get("n_restarts"), sample.get("n_restarts")
        if before is not None and now is not None and now > before:
            breaches.append(_breach(sample, "restarts", now, before, f"NRestarts {now} (was {before} at sample "
                                    f"{baseline['index']}): systemd restarted the service"))
    if gates.get("main_pid", True) and baseline.get("main_pid") and sample.get("main_pid") \
            and sample["main_pid"] != baseline["main_pid"]:
        breaches.append(_breach(sample, "main_pid", sample["main_pid"], baseline["main_pid"],
                                f"MainPID {sample['main_pid']} (was {baseline['main_pid']}): the process was replaced"))
    if gates.get("oom", True):
        before, now = baseline.get("oom_kills"), sample.get("oom_kills")
        if before is not None and now is not None and now > before:
            breaches.append(_breach(sample, "oom", now, before, f"{now - before} OOM kill(s) in the service's cgroup"))
        elif sample.get("result") == "oom-kill" and baseline.get("result") != "oom-kill":
            breaches.append(_breach(sample, "oom", "oom-kill", None, "systemd reports Result=oom-kill"))
    if gates.get("health", True) and sample.get("health_ok") is False:
        breaches.append(_breach(sample, "health", sample.get("health_msg"), "HTTP 2xx",
                                f"health check failed ({sample.get('health_msg')})"))
    return breaches


def evaluate(samples, gates):
    """{passed, breaches, samples, peak_memory_mb, msg}: every sample checked against the first."""
    breaches = []
    baseline = samples[0] if samples else {}
    for sample in samples:
        breaches += check_sample(sample, baseline, gates)
    memories = [m for m in map(memory_of, samples) if m is not None]
    peak = max(memories) if memories else None
    if not samples:
        msg = "no sample was taken"
    elif breaches:
        msg = f"the bake failed at {breaches[0]['msg']}" + (f" (and {len(breaches) - 1} more)" if len(breaches) > 1 else "")
    else:
        msg = (f"{len(samples)} sample(s) over {samples[-1].get('elapsed_s')} s: active, no restart, no OOM"
               + (f", peak {peak} MiB <= {gates['rss_max_mb']} MiB" if gates.get("rss_max_mb") and peak else "")
               + (", healthy" if any(s.get("health_ok") is not None for s in samples) else ""))
    return {"passed": bool(samples) and not breaches, "breaches": breaches, "peak_memory_mb": peak, "msg": msg}


class Bake:
    """Samples `sample()` every interval_s for duration_s, stopping at the first breach (the rollback
    should not wait for the end of the watch); keeps a progress file for role async_progress."""

    def __init__(self, sample, gates, duration_s, interval_s, progress=None, clock=time.monotonic, sleep=time.sleep):
        self.sample, self.gates = sample, gates
        self.duration_s, self.interval_s = duration_s, interval_s
        self.progress, self.clock, self.sleep = progress, clock, sleep

    def run(self):
        total = sample_count(self.duration_s, self.interval_s)
        started = self.clock()
        samples = []
        for index in range(total):
            due = started + index * self.interval_s
            wait = due - self.clock()
            if wait > 0:
                self.sleep(wait)
            samples.append(self.sample(index, self.clock() - started))
            breached = check_sample(samples[-1], samples[0], self.gates)
            if self.progress is not None:
                self.progress.update("bake", force=True, samples_done=index + 1, samples_total=total,
                                     memory_mb=memory_of(samples[-1]), budget_mb=self.gates.get("rss_max_mb"),
                                     breached=bool(breached))
            if breached:
                break
        verdict = evaluate(samples, self.gates)
        verdict["samples"] = samples
        return verdict


def service_show_command(service):
    return ["systemctl", "show", service] + [f"--property={name}" for name in SHOW_PROPERTIES]

