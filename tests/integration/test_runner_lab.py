"""The playbooks driven through ansible-runner against the lab, as AWX and other runner callers drive
them: deploy, validate twice, roll back. The assertions read what a caller gets from runner - status,
rc, stats, the job events (which hosts were switched, the progress lines) and the deploy's set_stats
(artifact_data.sarai_deploy) - and the reports on the controller.

The lab (SARAI_LAB_INSTANCE from the environment, 0 by default) is brought up and reset through
runner first (lab_up.yml, then lab_seed.yml with lab_seed_reset=true), so the tests start from what
production looks like today: SARAi on FP32. Molecule runs after them on the same lab."""
from __future__ import annotations

import base64
import os
import pathlib
import sys

import ansible_runner
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
REPORTS = ROOT / "reports"


def _run(tmp_path_factory, playbook, limit=None, **extravars):
    """One ansible-runner run of a playbook with the lab inventory; returns the Runner."""
    private = tmp_path_factory.mktemp(pathlib.Path(playbook).stem)
    return ansible_runner.run(private_data_dir=str(private), project_dir=str(ROOT), playbook=playbook,
                              inventory=str(ROOT / "inventory" / "lab"), extravars=extravars or None,
                              limit=limit, envvars=_env(), quiet=True)


def _env():
    return {"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
            # ansible-playbook from this venv, also when pytest is not run from an activated venv
            "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
            "SARAI_LAB_INSTANCE": os.environ.get("SARAI_LAB_INSTANCE", "0")}


def _artifact_data(runner):
    """What set_stats published (the playbook_on_stats event's artifact_data)."""
    stats = [e for e in runner.events if e["event"] == "playbook_on_stats"]
    assert len(stats) == 1
    return stats[0]["event_data"].get("artifact_data", {})


def _ok_events(runner, task_prefix):
    return [e["event_data"] for e in runner.events
            if e["event"] == "runner_on_ok" and e["event_data"].get("task", "").startswith(task_prefix)]


def _explain(runner):
    return runner.stdout.read()[-6000:]


def _switched(runner):
    """The hosts on which sarai.yaml was pointed at a new release."""
    return sorted(e["host"] for e in _ok_events(runner, "Point sarai.yaml at") if e["res"].get("changed"))


def _running(private, host):
    """The release sarai.yaml names on a lab host (what runs, docs/contracts.md)."""
    out = ansible_runner.run(private_data_dir=str(private), host_pattern=host, module="ansible.builtin.slurp",
                             module_args="src=/opt/sarai/config/sarai.yaml", inventory=str(ROOT / "inventory" / "lab"),
                             project_dir=str(ROOT), envvars=_env(), quiet=True)
    ok = [e for e in out.events if e["event"] == "runner_on_ok"]
    return yaml.safe_load(base64.b64decode(ok[0]["event_data"]["res"]["content"]))["audio_omni"]["deployment"]["release"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    up = _run(tmp_path_factory, "playbooks/lab_up.yml")
    assert up.status == "successful", _explain(up)
    seed = _run(tmp_path_factory, "playbooks/lab_seed.yml", lab_seed_reset=True)
    assert seed.status == "successful", _explain(seed)
    return tmp_path_factory


@pytest.fixture(scope="module")
def deploy(lab):
    return _run(lab, "deploy_int8.yml")


def test_deploy_switches_both_servers_and_publishes_their_gates(deploy):
    assert deploy.status == "successful" and deploy.rc == 0, _explain(deploy)
    assert deploy.stats["failures"] == {} and deploy.stats["dark"] == {}
    # The seeded FP32 ran before; int8 is switched on both servers.
    assert _switched(deploy) == ["agi1", "agi2"]
    published = _artifact_data(deploy)["sarai_deploy"]
    release = published["release"]
    assert release.startswith("int8-")
    assert sorted(published["hosts"]) == ["agi1", "agi2"]
    for host, result in published["hosts"].items():
        assert result["release_before"] is None, (host, result)  # the seeded FP32 is no deployed release
        assert result["release_after"] == release and result["outcome"] == "deployed" and result["passed"] is True
        assert result["failed_gates"] == [] and result["failure"] == ""
        gates = {g["gate"]: g for g in result["gates"]}
        assert {"cosine_min", "speedup_min"} <= set(gates) and all(g["passed"] for g in gates.values())
        assert isinstance(gates["cosine_min"]["value"], float) and gates["cosine_min"]["value"] >= gates["cosine_min"]["limit"]
        assert pathlib.Path(result["report"]).is_file() and result["report"].endswith(".html")
    # The validation printed its progress while it measured (role async_progress), on each server.
    lines = [e["res"]["msg"] for e in _ok_events(deploy, "Show the progress")]
    assert any(line.startswith(f"validate {release} on agi1: ") for line in lines), lines
    assert any(line.startswith(f"validate {release} on agi2: ") for line in lines), lines
    # The rollout's summary page exists and names both hosts.
    page = (REPORTS / "fleet" / release / "latest.html").read_text()
    assert "agi1" in page and "agi2" in page


def test_two_validations_of_one_release_keep_both_reports(deploy, lab):
    release = _artifact_data(deploy)["sarai_deploy"]["release"]
    report_dir = REPORTS / "agi1" / release
    before = set(report_dir.glob("*.json")) - {report_dir / "latest.json"}
    for _ in range(2):
        run = _run(lab, "playbooks/validate.yml", limit="agi1")
        assert run.status == "successful", _explain(run)
    after = set(report_dir.glob("*.json")) - {report_dir / "latest.json"}
    new = sorted(after - before)
    assert len(new) == 2, (before, after)
    for json_report in new:
        assert json_report.with_suffix(".html").is_file() and json_report.with_suffix(".md").is_file()
    assert (report_dir / "latest.json").resolve() == new[-1]


def test_rollback_returns_both_servers_to_fp32_and_marks_int8_bad(deploy, lab):
    release = _artifact_data(deploy)["sarai_deploy"]["release"]
    back = _run(lab, "rollback.yml")
    assert back.status == "successful" and back.rc == 0, _explain(back)
    assert back.stats["failures"] == {}
    assert _switched(back) == ["agi1", "agi2"]
    assert all(_running(lab.mktemp("state"), host).startswith("fp32-") for host in ("agi1", "agi2"))
    # The release left is marked bad: a rollback to int8 finds nothing to land on and changes nothing
    # (deploy_int8.yml is the way back, as in the README's session).
    to_int8 = _run(lab, "rollback.yml", sarai_rollback_to="int8")
    assert to_int8.status == "successful", _explain(to_int8)
    assert _switched(to_int8) == []
    said = [e["res"]["msg"] for e in _ok_events(to_int8, "Say that there is nothing to roll back")]
    assert sorted(said) == [f"{host} runs {_running(lab.mktemp('state'), host)} and has no other good release of variant int8 "
                            "to roll back to; nothing changed." for host in ("agi1", "agi2")], said
    assert release not in said[0]
