"""The node_exporter textfile: valid Prometheus text, escaped labels, atomic writes; the module on a state file."""
from __future__ import annotations

import json
import os
import re
import stat

import pytest

import sarai_metrics
from helpers import run_module

RUNNING = {"id": "int8-0123456789ab", "variant": "int8", "time": "2026-12-04T03:00:00Z", "validated": True,
           "catalog": {"quantization": {"method": "dynamic_int8"}, "max_memory_mb": 1200}}
VALIDATION = {"release": "int8-0123456789ab", "metrics": {"p50_ms": 812.5, "p99_ms": 990.0, "speedup": 2.41,
                                                         "cosine": 0.9951, "peak_rss_mb": 1105.0, "mse": 0.001}}
BAKE = {"release": "int8-0123456789ab", "passed": True, "peak_memory_mb": 1150.2, "budget_mb": 1320.0,
        "samples": [{}, {}, {}], "time": "2026-12-04T03:10:00Z"}
# A sample line: name{labels} value (the exposition format's grammar, labels escaped).
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\.)*",?)*\})? -?[0-9.e+-]+$')


def families(text):
    """{name: [sample lines]}, asserting HELP then TYPE before each family's samples."""
    seen, current = {}, None
    lines = text.splitlines()
    for number, line in enumerate(lines):
        if line.startswith("# HELP "):
            current = line.split()[2]
            assert current not in seen, f"{current} described twice"
            assert lines[number + 1] == f"# TYPE {current} gauge"
            seen[current] = []
        elif line.startswith("# TYPE "):
            continue
        else:
            assert SAMPLE.match(line), line
            assert line.split("{")[0].split(" ")[0] == current, line
            seen[current].append(line)
    return seen


def test_render_the_running_release_its_validation_bake_and_bad_releases():
    text = sarai_metrics.render(RUNNING, VALIDATION, BAKE, ["int8-bad000000000", "fp16-aaaaaaaaaaaa"])
    got = families(text)
    assert got["sarai_release_info"] == ['sarai_release_info{id="int8-0123456789ab",variant="int8",method="dynamic_int8"} 1']
    assert got["sarai_release_switch_timestamp_seconds"] == [
        'sarai_release_switch_timestamp_seconds{id="int8-0123456789ab"} 1796353200']
    assert got["sarai_validation_p50_ms"] == ['sarai_validation_p50_ms{id="int8-0123456789ab"} 812.5']
    assert got["sarai_validation_peak_rss_mb"] == ['sarai_validation_peak_rss_mb{id="int8-0123456789ab"} 1105']
    assert "sarai_validation_mse" not in got  # the report keeps the rest
    assert got["sarai_bake_passed"] == ['sarai_bake_passed{id="int8-0123456789ab"} 1']
    assert got["sarai_bake_samples"] == ['sarai_bake_samples{id="int8-0123456789ab"} 3']
    assert got["sarai_release_marked_bad"] == ['sarai_release_marked_bad{id="fp16-aaaaaaaaaaaa"} 1',
                                               'sarai_release_marked_bad{id="int8-bad000000000"} 1']
    assert text.endswith("\n")


def test_label_values_are_escaped_and_non_numbers_are_left_out():
    running = dict(RUNNING, variant='we"ird\\x\nline')
    text = sarai_metrics.render(running, {"release": "r", "metrics": {"p50_ms": None, "speedup": float("nan"),
                                                                      "cosine": "0.99"}})
    got = families(text)
    assert got["sarai_release_info"] == [
        'sarai_release_info{id="int8-0123456789ab",variant="we\\"ird\\\\x\\nline",method="dynamic_int8"} 1']
    assert not any(name.startswith("sarai_validation") for name in got)


def test_nothing_known_renders_an_empty_file_and_a_failed_bake_is_zero():
    assert sarai_metrics.render() == ""
    got = families(sarai_metrics.render(bake=dict(BAKE, passed=False, peak_memory_mb=None)))
    assert got["sarai_bake_passed"] == ['sarai_bake_passed{id="int8-0123456789ab"} 0']
    assert "sarai_bake_peak_memory_mb" not in got


def test_write_atomic_replaces_with_mode_0644_and_reports_no_change(tmp_path):
    path = tmp_path / "sarai_deploy.prom"
    os.umask(0o077)
    try:
        assert sarai_metrics.write_atomic(str(path), "a 1\n") is True
    finally:
        os.umask(0o022)
    assert path.read_text() == "a 1\n" and stat.S_IMODE(path.stat().st_mode) == 0o644
    inode = path.stat().st_ino
    assert sarai_metrics.write_atomic(str(path), "a 1\n") is False and path.stat().st_ino == inode
    assert sarai_metrics.write_atomic(str(path), "a 2\n") is True and path.stat().st_ino != inode
    assert os.listdir(tmp_path) == ["sarai_deploy.prom"]


def test_directory_problem_names_missing_and_unwritable_dirs(tmp_path):
    assert sarai_metrics.directory_problem(str(tmp_path / "x.prom")) is None
    assert "does not exist" in sarai_metrics.directory_problem(str(tmp_path / "no" / "x.prom"))
    assert "absolute" in sarai_metrics.directory_problem("x.prom")


def _state(tmp_path, bad=()):
    state = tmp_path / "state.fact"
    state.write_text(json.dumps({"schema": 2, "history": [RUNNING], "bad_releases": list(bad)}))
    config = tmp_path / "sarai.yaml"
    config.write_text("audio_omni:\n  deployment:\n    release: int8-0123456789ab\n")
    return str(state), str(config)


def test_module_writes_what_the_state_says_runs_then_changes_nothing(tmp_path, capsys):
    state, config = _state(tmp_path, bad=["int8-bad000000000"])
    path = tmp_path / "sarai_deploy.prom"
    args = {"path": str(path), "state_file": state, "config": config, "validation": VALIDATION, "bake": BAKE}
    code, r = run_module("sarai_metrics", dict(args, _ansible_check_mode=True), capsys)
    assert code == 0 and r["changed"] and not path.exists()
    code, r = run_module("sarai_metrics", args, capsys)
    assert code == 0 and r["changed"] and r["running"] == "int8-0123456789ab"
    assert 'sarai_release_marked_bad{id="int8-bad000000000"} 1' in path.read_text()
    code, r = run_module("sarai_metrics", args, capsys)
    assert code == 0 and not r["changed"]


@pytest.mark.parametrize("state", ["writable", "present"])
def test_module_refuses_a_missing_directory_naming_the_variable(tmp_path, capsys, state):
    state_file, config = _state(tmp_path)
    code, r = run_module("sarai_metrics", {"path": str(tmp_path / "nodir" / "x.prom"), "state": state,
                                           "state_file": state_file, "config": config}, capsys)
    assert code == 1 and r["msg"].startswith("sarai_metrics_textfile = ") and "does not exist" in r["msg"]
    assert not (tmp_path / "nodir").exists()
