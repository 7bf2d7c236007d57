#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: sarai_bake
short_description: Watch the running SARAi service for a while and judge it (the deploy's bake)
description:
  - Samples the systemd service O(service) every O(interval_s) seconds for O(duration_s) seconds - C(systemctl
    show) (C(ActiveState), C(MainPID), C(NRestarts), C(Result), C(MemoryCurrent), C(MemoryPeak)), the MainPID's
    resident memory from C(/proc/<pid>/status) (C(VmRSS) and its peak C(VmHWM)), the cgroup's C(memory.events)
    C(oom_kill) count, and O(health_url) when set.
  - Gates, the first sample being the baseline - the service stays active, its memory (peak RSS, else RSS, else
    the cgroup's current use) stays at most O(rss_max_mb), C(NRestarts) does not grow, C(MainPID) does not change,
    no OOM kill, and the health URL answers 2xx on every sample.
  - It stops at the first sample that breaches a gate and fails naming it (index, UTC time, seconds in, value,
    gate), unless O(fail_on_breach=false). The decision rules are module_utils/sarai_bake.py.
  - Meant to run as an C(async) task followed by role C(async_progress), which prints O(progress_file).
version_added: "0.3.0"
author: sarai-deploy
options:
  service:
    description: The systemd unit to watch (without C(.service) is fine).
    type: str
    required: true
  release:
    description: The release id the service should be running, named in the result and the messages.
    type: str
    default: ""
  duration_s:
    description: How long to watch, in seconds (>= 0); samples are taken at 0, O(interval_s), 2 x O(interval_s)...
    type: float
    required: true
  interval_s:
    description: Seconds between two samples (> 0).
    type: float
    default: 30
  rss_max_mb:
    description: The memory gate in MiB; unset, memory is recorded but not gated.
    type: float
  health_url:
    description: An HTTP URL that must answer 2xx on every sample; empty, no health check.
    type: str
    default: ""
  health_timeout_s:
    description: Seconds one health request may take.
    type: float
    default: 5
  fail_on_breach:
    description: Fail when a gate is breached. False only reports RV(passed) and RV(breaches).
    type: bool
    default: true
  progress_file:
    description:
      - While it runs, keep this JSON file up to date (replaced atomically) with C({phase, samples_done,
        samples_total, memory_mb, budget_mb, breached, elapsed_s}). Its directory must exist.
    type: path
notes:
  - Read-only apart from O(progress_file); supports check mode (watches the same way).
  - Inside containers without a delegated memory controller C(MemoryCurrent) and C(oom_kill) are unknown (null);
    the gates then read what is known (the MainPID's RSS, C(Result=oom-kill)).
seealso:
  - module: onnx_validate
"""

EXAMPLES = r"""
- name: Bake the release for 10 minutes, a sample every 30 s
  sarai_bake:
    service: sarai
    release: int8-0123456789ab
    duration_s: 600
    interval_s: 30
    rss_max_mb: 1320
    health_url: http://127.0.0.1:8101/health
    progress_file: /opt/sarai/reports/int8-0123456789ab.bake.progress.json
  async: 900
  poll: 0
  register: bake_job
"""

RETURN = r"""
passed: {description: True when every sample met every gate., returned: always, type: bool}
breaches:
  description: The breached gates, first first, each naming its sample.
  returned: always
  type: list
  elements: dict
  sample: [{index: 7, time: "2026-12-04T03:12:05Z", elapsed_s: 35.0, gate: rss_max_mb, value: 1456.2, limit: 1320.0,
            msg: "sample 7 (2026-12-04T03:12:05Z, 35.0 s in): rss_max_mb: memory 1456.2 MiB > budget 1320.0 MiB"}]
samples:
  description: Every sample taken (index, time, elapsed_s, active, state, main_pid, n_restarts, result, rss_mb,
    rss_peak_mb, memory_current_mb, memory_peak_mb, oom_kills, health_ok, health_msg).
  returned: always
  type: list
  elements: dict
peak_memory_mb: {description: The highest memory figure the gate read, or null., returned: always, type: float}
budget_mb: {description: The memory gate (O(rss_max_mb)) or null., returned: always, type: float}
release: {description: O(release)., returned: always, type: str}
time: {description: UTC time the bake ended., returned: always, type: str}
duration_s: {description: O(duration_s)., returned: always, type: float}
interval_s: {description: O(interval_s)., returned: always, type: float}
msg: {description: The first breach (with the sample) or a pass summary., returned: always, type: str}
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.sarai_bake import Bake, service_show_command, take_sample, utc_iso
from ansible.module_utils.sarai_onnx.errors import SaraiError
from ansible.module_utils.sarai_onnx.progress import Progress


def main():
    module = AnsibleModule(
        argument_spec=dict(
            service=dict(type="str", required=True),
            release=dict(type="str", default=""),
            duration_s=dict(type="float", required=True),
            interval_s=dict(type="float", default=30),
            rss_max_mb=dict(type="float"),
            health_url=dict(type="str", default=""),
            health_timeout_s=dict(type="float", default=5),
            fail_on_breach=dict(type="bool", default=True),
            progress_file=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["duration_s"] < 0 or p["interval_s"] <= 0:
        module.fail_json(msg=f"duration_s must be >= 0 and interval_s > 0 (got {p['duration_s']}, {p['interval_s']})")
    if p["rss_max_mb"] is not None and p["rss_max_mb"] <= 0:
        module.fail_json(msg=f"rss_max_mb must be > 0 MiB (got {p['rss_max_mb']})")
    try:
        progress = Progress(p["progress_file"]) if p["progress_file"] else None
    except SaraiError as exc:
        module.fail_json(msg=str(exc))
    command = service_show_command(p["service"])

    def sample(index, elapsed_s):
        rc, out, err = module.run_command(command)
        if rc != 0:
            module.fail_json(msg=f"{' '.join(command)} failed (rc {rc}): {err.strip()}")
        return take_sample(index, elapsed_s, out, health_url=p["health_url"], health_timeout_s=p["health_timeout_s"])

    gates = {"rss_max_mb": p["rss_max_mb"]}
    verdict = Bake(sample, gates, p["duration_s"], p["interval_s"], progress=progress).run()
    if progress is not None:
        progress.finish(None if verdict["passed"] else verdict["msg"])
    release = p["release"] or p["service"]
    verdict.update(changed=False, release=p["release"], time=utc_iso(time.time()), budget_mb=p["rss_max_mb"],
                   duration_s=p["duration_s"], interval_s=p["interval_s"])
    verdict["msg"] = f"bake of {release}: {verdict['msg']}"
    if not verdict["passed"] and p["fail_on_breach"]:
        module.fail_json(**verdict)
    module.exit_json(**verdict)


if __name__ == "__main__":
    main()
