"""The bake's decision rules from recorded samples, and how samples are read from the server."""
from __future__ import annotations

import json

import pytest

import sarai_bake
from sarai_onnx.progress import Progress


def sample(index, **over):
    base = {"index": index, "time": f"2026-12-04T03:00:{index * 5:02d}Z", "elapsed_s": index * 5.0,
            "active": True, "state": "active/running", "main_pid": 812, "n_restarts": 0, "result": "success",
            "rss_mb": 400.0, "rss_peak_mb": 420.0, "memory_current_mb": 500.0, "memory_peak_mb": 520.0,
            "oom_kills": 0, "health_ok": True, "health_msg": "HTTP 200"}
    base.update(over)
    return base


GATES = {"rss_max_mb": 1320.0}


def test_clean_samples_pass_and_report_the_peak():
    samples = [sample(0), sample(1, rss_peak_mb=610.5), sample(2)]
    verdict = sarai_bake.evaluate(samples, GATES)
    assert verdict["passed"] is True and verdict["breaches"] == []
    assert verdict["peak_memory_mb"] == 610.5
    assert "3 sample(s)" in verdict["msg"] and "610.5 MiB <= 1320.0 MiB" in verdict["msg"]


def test_memory_over_the_budget_names_the_sample_time_value_and_gate():
    samples = [sample(0), sample(1), sample(2, rss_mb=1400.0, rss_peak_mb=1456.2)]
    verdict = sarai_bake.evaluate(samples, GATES)
    assert not verdict["passed"]
    (breach,) = verdict["breaches"]
    assert (breach["index"], breach["time"], breach["gate"], breach["value"], breach["limit"]) == \
        (2, "2026-12-04T03:00:10Z", "rss_max_mb", 1456.2, 1320.0)
    assert verdict["msg"].startswith("the bake failed at sample 2 (2026-12-04T03:00:10Z, 10.0 s in): rss_max_mb")


def test_memory_gate_falls_back_to_rss_then_cgroup_and_can_be_disabled():
    assert sarai_bake.memory_of(sample(0, rss_peak_mb=None)) == 400.0
    assert sarai_bake.memory_of(sample(0, rss_peak_mb=None, rss_mb=None)) == 500.0
    assert sarai_bake.memory_of(sample(0, rss_peak_mb=None, rss_mb=None, memory_current_mb=None)) is None
    assert sarai_bake.evaluate([sample(0, rss_peak_mb=5000.0)], {"rss_max_mb": None})["passed"]


@pytest.mark.parametrize("change, gate", [
    ({"n_restarts": 1}, "restarts"),
    ({"main_pid": 913}, "main_pid"),
    ({"oom_kills": 1}, "oom"),
    ({"result": "oom-kill", "oom_kills": None}, "oom"),
    ({"health_ok": False, "health_msg": "no answer: refused"}, "health"),
    ({"active": False, "state": "failed/failed", "main_pid": 0}, "active"),
])
def test_each_gate_breaches_against_the_first_sample(change, gate):
    verdict = sarai_bake.evaluate([sample(0), sample(1, **change)], GATES)
    assert not verdict["passed"]
    assert [b["gate"] for b in verdict["breaches"]] == [gate]
    assert verdict["breaches"][0]["index"] == 1


def test_counters_that_were_already_up_at_the_start_are_not_a_breach():
    samples = [sample(0, n_restarts=2, oom_kills=1), sample(1, n_restarts=2, oom_kills=1)]
    assert sarai_bake.evaluate(samples, GATES)["passed"]


def test_health_unset_is_not_checked_and_not_claimed():
    samples = [sample(0, health_ok=None, health_msg=""), sample(1, health_ok=None, health_msg="")]
    verdict = sarai_bake.evaluate(samples, GATES)
    assert verdict["passed"] and "healthy" not in verdict["msg"]


def test_no_samples_is_not_a_pass():
    assert sarai_bake.evaluate([], GATES)["passed"] is False


def test_budget_is_the_variant_budget_plus_the_tolerance_unless_set():
    assert sarai_bake.bake_budget_mb(1200, 10) == 1320.0
    assert sarai_bake.bake_budget_mb(1200, 10, override_mb=1500) == 1500.0
    assert sarai_bake.bake_budget_mb(None, 10) is None


@pytest.mark.parametrize("duration, interval, count", [(600, 30, 21), (10, 3, 4), (0, 5, 1), (5, 0, 1)])
def test_sample_count(duration, interval, count):
    assert sarai_bake.sample_count(duration, interval) == count


SHOW = """ActiveState=active
SubState=running
MainPID=4242
NRestarts=0
Result=success
MemoryCurrent=546308096
MemoryPeak=[not set]
ControlGroup=/system.slice/sarai.service
"""


def test_take_sample_reads_systemd_proc_and_the_cgroup(tmp_path):
    proc = tmp_path / "proc" / "4242"
    proc.mkdir(parents=True)
    (proc / "status").write_text("Name:\tpython\nVmHWM:\t  512000 kB\nVmRSS:\t  409600 kB\nThreads:\t4\n")
    cgroup = tmp_path / "cg" / "system.slice" / "sarai.service"
    cgroup.mkdir(parents=True)
    (cgroup / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    got = sarai_bake.take_sample(2, 10.04, SHOW, proc_root=str(tmp_path / "proc"), cgroup_root=str(tmp_path / "cg"),
                                 now=1796353200)
    assert got == {"index": 2, "time": "2026-12-04T03:00:00Z", "elapsed_s": 10.0, "active": True,
                   "state": "active/running", "main_pid": 4242, "n_restarts": 0, "result": "success",
                   "rss_mb": 400.0, "rss_peak_mb": 500.0, "memory_current_mb": 521.0, "memory_peak_mb": None,
                   "oom_kills": 1, "health_ok": None, "health_msg": ""}


def test_take_sample_of_a_stopped_service_has_no_memory(tmp_path):
    got = sarai_bake.take_sample(0, 0, "ActiveState=failed\nSubState=failed\nMainPID=0\nNRestarts=1\n"
                                 "Result=oom-kill\nMemoryCurrent=[not set]\nControlGroup=\n",
                                 proc_root=str(tmp_path), cgroup_root=str(tmp_path), now=0)
    assert (got["active"], got["main_pid"], got["rss_mb"], got["oom_kills"], got["result"]) == \
        (False, 0, None, None, "oom-kill")


def test_a_health_url_that_does_not_answer_is_a_failed_probe():
    ok, msg = sarai_bake.probe_health("http://127.0.0.1:9/health", timeout_s=1)
    assert ok is False and msg.startswith("no answer")


class FakeTime:
    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(round(seconds, 3))
        self.now += seconds


def test_bake_samples_on_schedule_and_keeps_progress(tmp_path):
    fake = FakeTime()
    progress_path = tmp_path / "bake.progress.json"
    progress = Progress(str(progress_path), clock=fake.clock)
    bake = sarai_bake.Bake(lambda i, elapsed: sample(i, elapsed_s=elapsed), GATES, duration_s=10, interval_s=5,
                           progress=progress, clock=fake.clock, sleep=fake.sleep)
    verdict = bake.run()
    assert verdict["passed"] and [s["index"] for s in verdict["samples"]] == [0, 1, 2]
    assert fake.sleeps == [5.0, 5.0]
    doc = json.loads(progress_path.read_text())
    assert (doc["phase"], doc["samples_done"], doc["samples_total"], doc["budget_mb"]) == ("bake", 3, 3, 1320.0)


def test_bake_stops_at_the_first_breach():
    fake = FakeTime()
    grow = {0: 400.0, 1: 900.0, 2: 1500.0, 3: 1600.0}
    bake = sarai_bake.Bake(lambda i, elapsed: sample(i, rss_peak_mb=grow[i]), GATES, duration_s=15, interval_s=5,
                           clock=fake.clock, sleep=fake.sleep)
    verdict = bake.run()
    assert not verdict["passed"] and len(verdict["samples"]) == 3
    assert verdict["breaches"][0]["index"] == 2 and verdict["breaches"][0]["value"] == 1500.0
