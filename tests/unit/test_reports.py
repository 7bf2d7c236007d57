"""Validation reports from real onnx_validate JSON: roles/model_validate's templates rendered by
Ansible's own template engine, its report and fleet entry points run by ansible-playbook, the page
rendered by headless Chromium, and the chart filters of plugins/filter/sarai_report.py.

The JSON comes from validating the tiny INT8 test release against its FP32 reference (twice: a
release validated twice keeps both reports), the FP32 release on its own (no reference: issue 10,
finding 1), and the INT8 release with a gate it cannot pass. Only the accuracy search is made up
here: the build that records one (onnx_quantize's fidelity_target) lands separately, and the report
must show whatever such a record holds.
"""
from __future__ import annotations

import base64
import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from helpers import ROOT, SHAPES
from png import read_png
from sarai_onnx import env
from sarai_onnx.validate import GATES as VALIDATE_GATES
from sarai_onnx.validate import validate

PLAYBOOK = ROOT / "tests" / "unit" / "playbooks" / "write_reports.yml"
GATES = {"cosine_min": 0.98, "mse_max": 0.01, "mae_max": 0.05, "speedup_min": 0.05}
# The shape of a build record's accuracy search (issue 8): trials in the order tried.
SEARCH = [
    {"change": "default dynamic INT8", "excluded_nodes": [], "cosine": 0.9412, "mse": 0.031, "mae": 0.12,
     "byte_share": 1.0, "passed": False},
    {"change": "per_channel", "excluded_nodes": [], "cosine": 0.9655, "mse": 0.018, "mae": 0.09,
     "byte_share": 1.0, "passed": False},
    {"change": "keep /ffn_out_0 in FP32", "excluded_nodes": ["/ffn_out_0"], "cosine": 0.9781, "mse": 0.011,
     "mae": 0.07, "byte_share": 0.93, "passed": False},
    {"change": "keep 3 FFN outputs in FP32", "excluded_nodes": ["/ffn_out_0", "/ffn_out_1", "/ffn_out_2"],
     "cosine": 0.9904, "mse": 0.004, "mae": 0.04, "byte_share": 0.81, "passed": True},
]


def load_filters():
    spec = importlib.util.spec_from_file_location("sarai_report", ROOT / "plugins" / "filter" / "sarai_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(release, variant):
    """The release record as the role receives it (id, variant, model_name, manifest_sha256), with
    model_path where the test keeps it."""
    return {"id": f"{variant}-{release['release_sha12']}", "variant": variant, "model_name": release["model_name"],
            "model_path": release["model_path"], "manifest_sha256": release["manifest_sha256"]}


def _validate_into(directory, release, **kwargs):
    """Validate like the role does: onnx_validate writes <remote dir>/<release id>.json."""
    directory.mkdir(parents=True)
    return validate(release["model_path"], input_shapes=SHAPES, report=str(directory / f"{release['id']}.json"),
                    **kwargs)


def _next_second(stamp):
    while env.utc_now() == stamp:  # report files are named by the second: two runs need two seconds
        time.sleep(0.05)


ROLE = ROOT / "roles" / "model_validate"


@pytest.fixture(scope="module")
def validated(releases, tmp_path_factory):
    """Releases as a server holds them and onnx_validate runs on them, as the role makes them."""
    server = tmp_path_factory.mktemp("server")
    int8_dir = server / "releases" / "int8"
    shutil.copytree(releases["dynamic_int8"]["dest"], int8_dir)
    record = json.loads((int8_dir / "quantization.json").read_text())
    record.update(search=SEARCH, excluded_nodes=SEARCH[-1]["excluded_nodes"])
    (int8_dir / "quantization.json").write_text(json.dumps(record))
    int8 = _record(dict(releases["dynamic_int8"], model_path=str(int8_dir / releases["dynamic_int8"]["model_name"])),
                   "int8")
    fp32 = _record(releases["none"], "fp32")
    first = _validate_into(server / "agi1-run1", int8, reference=fp32["model_path"], warmup=2, runs=20, gates=GATES)
    _next_second(first["created_utc"])
    second = _validate_into(server / "agi1-run2", int8, reference=fp32["model_path"], warmup=2, runs=20,
                            gates=GATES)
    alone = _validate_into(server / "agi2-run1", fp32, warmup=2, runs=20, gates={})
    failed = _validate_into(server / "agi3-run1", int8, reference=fp32["model_path"], warmup=0, runs=6,
                            gates=dict(GATES, speedup_min=1000.0))
    releases_dir = server / "by_id"  # <releases dir>/<release id>/, as the role finds a release on a server
    releases_dir.mkdir()
    for release in (int8, fp32):
        (releases_dir / release["id"]).symlink_to(os.path.dirname(release["model_path"]))
    return {"server": server, "int8": int8, "fp32": fp32, "record": record, "releases_dir": releases_dir,
            "runs": {"agi1": [first, second], "agi2": [alone], "agi3": [failed]}}


def render(template, result, release, reference, record=None, host="agi1"):
    """Render a role template as ansible.builtin.template does in tasks/report.yml: Ansible's engine,
    the role's defaults and vars, our filters, and the registered results those tasks leave."""
    from ansible.parsing.dataloader import DataLoader
    from ansible.plugins.loader import filter_loader
    from ansible.template import Templar, trust_as_template

    filter_loader.add_directory(str(ROOT / "plugins" / "filter"))
    loader = DataLoader()
    variables = {}
    for part in ("defaults", "vars"):
        variables.update(loader.load_from_file(str(ROLE / part / "main.yml"), trusted_as_template=True))
    text = json.dumps(result)
    variables.update({
        "inventory_hostname": host, "ansible_version": {"full": "2.19.0"},
        "model_validate_release": release, "model_validate_reference": reference,
        "model_validate_remote_dir": "/opt/sarai/reports", "model_validate_reports_dir": "/srv/reports",
        "__model_validate_report_json": {"content": base64.b64encode(text.encode()).decode()},
        "__model_validate_build_json": ({"content": base64.b64encode(json.dumps(record).encode()).decode()}
                                        if record is not None else {"failed": True, "msg": "file not found"}),
        "model_validate_report": {"files": {ext: f"/srv/reports/{host}/{release['id']}/{_stamp(result)}.{ext}"
                                            for ext in ("json", "md", "html")}},
        # What tasks/main.yml registers before the report tasks run.
        "__model_validate_result": result,
        "__model_validate_config": {"content": base64.b64encode(b"audio_omni: {session_options: {}}").decode()},
    })
    templar = Templar(loader=loader, variables=variables).copy_with_new_env(
        searchpath=[str(ROLE / "templates")], available_variables=variables)
    source = trust_as_template((ROLE / "templates" / template).read_text())
    return templar.template(source, escape_backslashes=False,
                            overrides={"trim_blocks": True, "lstrip_blocks": False, "newline_sequence": "\n"})


def render_fleet(hosts, release):
    """Render fleet.html.j2 as tasks/fleet.yml does, for a summary written to /srv/reports/fleet/<release>/."""
    from ansible.parsing.dataloader import DataLoader
    from ansible.plugins.loader import filter_loader
    from ansible.template import Templar, trust_as_template

    filter_loader.add_directory(str(ROOT / "plugins" / "filter"))
    loader = DataLoader()
    variables = {"ansible_version": {"full": "2.19.0"}, "model_validate_fleet_release": release,
                 "model_validate_fleet_hosts": hosts,
                 "model_validate_fleet_report": {"release": release, "created_utc": "2026-11-23T20:00:00Z", "files": {
                     ext: f"/srv/reports/fleet/{release}/20261123T200000Z.{ext}" for ext in ("json", "md", "html")}}}
    templar = Templar(loader=loader, variables=variables).copy_with_new_env(
        searchpath=[str(ROLE / "templates")], available_variables=variables)
    source = trust_as_template((ROLE / "templates" / "fleet.html.j2").read_text())
    return templar.template(source, escape_backslashes=False,
                            overrides={"trim_blocks": True, "lstrip_blocks": False, "newline_sequence": "\n"})


def _stamp(result):
    return result["created_utc"].replace("-", "").replace(":", "")


# ------------------------------------------------------------------ the templates

def test_fp32_release_without_a_reference_gets_its_report(validated):
    """Issue 10, finding 1: deploying fp32 failed at 'Write the Markdown report' (no reference_metrics)."""
    fp32, result = validated["fp32"], validated["runs"]["agi2"][0]
    assert result["reference_metrics"] is None and result["latency_samples_ms"]["reference"] is None
    md = render("report.md.j2", result, fp32, fp32, host="agi2")
    assert "**Verdict: PASSED** — 0 gate(s) passed" in md and "- Reference: none." in md
    assert "| metric | FP32 |" in md and f"| P50 latency | {result['metrics']['p50_ms']:.2f} ms |" in md
    assert "No gate applies to this release" in md and "Accuracy search" not in md and "n/a" not in md
    page = render("report.html.j2", result, fp32, fp32, host="agi2")
    assert "measured on its own (no reference)" in page and page.count("<svg") == 3 and ">FP32<" in page


def test_markdown_has_time_versions_hashes_and_the_measurements(validated):
    int8, fp32, result = validated["int8"], validated["fp32"], validated["runs"]["agi1"][1]
    md = render("report.md.j2", result, int8, fp32, validated["record"])
    assert "**Verdict: PASSED** — 4 gate(s) passed" in md
    assert f"- Time: {result['created_utc']} (UTC), measured on {result['host']}" in md
    assert f"manifest sha256 `{int8['manifest_sha256']}`" in md and f"manifest sha256 `{fp32['manifest_sha256']}`" in md
    assert f"onnxruntime {result['versions']['onnxruntime']}" in md and "Controller: ansible-core 2.19.0" in md
    assert f"Versions on the build host: numpy {validated['record']['versions']['numpy']}" in md
    assert "| metric | FP32 | INT8 | change |" in md
    m, r = result["metrics"], result["reference_metrics"]
    assert f"| P50 latency | {r['p50_ms']:.2f} ms | {m['p50_ms']:.2f} ms |" in md
    assert f"| `cosine_min` | cosine ≥ 0.980000 | {m['cosine']:.6f} | passed |" in md
    assert "## Accuracy search at build time" in md and "| 4 | keep 3 FFN outputs in FP32 | 3 | 0.990400 |" in md
    assert "13 weight tensors)\n- Kept in FP32: 3 node(s)" in md and "100.0% of the weight bytes quantized" in md


def test_a_build_warning_in_the_record_is_shown_in_both_formats(validated):
    """A release shipped below min_quantized_share with allow_low_coverage carries its warning."""
    int8, fp32, result = validated["int8"], validated["fp32"], validated["runs"]["agi1"][1]
    record = dict(validated["record"], warnings=["dynamic_int8 rewrites only 3.7% of the weight bytes <LSTM>"])
    md = render("report.md.j2", result, int8, fp32, record)
    assert "- Build warning: dynamic_int8 rewrites only 3.7% of the weight bytes <LSTM>\n" in md
    page = render("report.html.j2", result, int8, fp32, record)
    assert "<dt>build warning</dt><dd>dynamic_int8 rewrites only 3.7% of the weight bytes &lt;LSTM&gt;</dd>" in page
    assert "Build warning" not in render("report.md.j2", result, int8, fp32, validated["record"])


def test_failed_gate_is_shown_failed_in_both_formats(validated):
    int8, fp32, result = validated["int8"], validated["fp32"], validated["runs"]["agi3"][0]
    md = render("report.md.j2", result, int8, fp32, validated["record"], host="agi3")
    assert "**Verdict: FAILED** — gate speedup_min failed:" in md
    assert re.search(r"\| `speedup_min` \| speedup ≥ 1000\.00x \| [0-9.]+x \| \*\*FAILED\*\* \|", md)
    page = render("report.html.j2", result, int8, fp32, validated["record"], host="agi3")
    assert 'class="verdict fail"' in page and "1 of 4 gates failed: speedup_min" in page
    assert re.search(r'<tr class="fail"><td><code>speedup_min</code>.*<span class="chip fail">FAIL</span>', page)
    assert '<div class="card fail"><div class="card-title">Speedup at P50' in page


def test_html_is_self_contained_with_every_chart(validated):
    int8, fp32, result = validated["int8"], validated["fp32"], validated["runs"]["agi1"][1]
    page = render("report.html.j2", result, int8, fp32, validated["record"])
    assert not re.search(r"<script|<link|<img|<iframe|@import|url\(", page, re.IGNORECASE)
    assert set(re.findall(r"https?://[^\s\"'<>]+", page)) == {"http://www.w3.org/2000/svg"}
    titles = re.findall(r"<svg[^>]*aria-label=\"([^\"]+)\"", page)
    assert titles == ["Latency of each timed run", "Latency percentiles (ms)", "Size on disk and peak RSS (MiB)",
                      "Accuracy search: fidelity vs nodes kept in FP32"]
    latency = page[page.index("<svg"):page.index("</svg>")]
    assert latency.count("<circle") == len(result["latency_samples_ms"]["model"]) + len(
        result["latency_samples_ms"]["reference"])
    assert 'class="verdict pass"' in page and f"{result['metrics']['cosine']:.6f}" in page
    assert f'<a href="{_stamp(result)}.json">' in page


def test_release_without_build_record_still_gets_its_report(validated):
    int8, fp32, result = validated["int8"], validated["fp32"], validated["runs"]["agi1"][0]
    md = render("report.md.j2", result, dict(int8, manifest_sha256=None), fp32, record=None)
    assert "- Build:" not in md and "Accuracy search" not in md and "manifest sha256 `not recorded`" in md
    page = render("report.html.j2", result, int8, fp32, record=None)
    assert page.count("<svg") == 3 and "quantization</dt>" not in page


# ------------------------------------------------------------------ the role's tasks through ansible-playbook

@pytest.fixture(scope="module")
def written(validated, tmp_path_factory):
    """Run the report entry point for agi1 (two runs of one release) and agi2 (FP32 alone), then the
    fleet entry point over them and a host the rollout did not reach."""
    base = tmp_path_factory.mktemp("controller")
    server, int8, fp32 = validated["server"], validated["int8"], validated["fp32"]

    def host(release, run_dirs, status, after):
        return {"model_validate_release": release, "model_validate_reference": fp32,
                "test_runs": [str(server / d) for d in run_dirs],
                "test_fleet_base": {"status": status, "release_before": fp32["id"], "release_after": after}}

    hosts = {"agi1": host(int8, ["agi1-run1", "agi1-run2"], "passed", int8["id"]),
             "agi2": host(fp32, ["agi2-run1"], None, None)}  # the FP32 release on its own: not in this rollout
    for name, h in hosts.items():
        h["test_fleet_base"]["host"] = name
    hosts["agi2"]["test_fleet_base"] = None
    inventory = {"all": {
        "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                 "model_validate_reports_dir": str(base / "reports"), "test_fleet_release": int8["id"],
                 "model_validate_releases_dir": str(validated["releases_dir"])},
        "children": {
            "validated": {"hosts": hosts},
            "unreached": {"hosts": {"agi4": {"test_fleet_entry": {
                "host": "agi4", "status": "not_reached", "release_before": fp32["id"], "release_after": fp32["id"],
                "msg": "not reached: the rollout stopped after agi3"}}}},
        }}}
    (base / "inventory.yml").write_text(yaml.safe_dump(inventory, sort_keys=False))
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
                           "-i", str(base / "inventory.yml"), str(PLAYBOOK)],
                          env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1"),
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    return dict(validated, reports=base / "reports")


def _dir(written, host, release):
    return written["reports"] / host / written[release]["id"]


@pytest.mark.slow
def test_each_run_keeps_its_own_reports_and_latest_points_at_the_newest(written):
    first, second = written["runs"]["agi1"]
    directory = _dir(written, "agi1", "int8")
    stamps = [_stamp(first), _stamp(second)]
    assert stamps[0] < stamps[1]
    assert sorted(os.listdir(directory)) == sorted(
        [f"{s}.{ext}" for s in stamps for ext in ("json", "md", "html")] + ["latest.json", "latest.md", "latest.html"])
    for ext in ("json", "md", "html"):
        assert os.readlink(directory / f"latest.{ext}") == f"{stamps[1]}.{ext}"
    for result, stamp, run in ((first, stamps[0], "agi1-run1"), (second, stamps[1], "agi1-run2")):
        kept = (directory / f"{stamp}.json").read_bytes()
        assert kept == (written["server"] / run / f"{written['int8']['id']}.json").read_bytes()
        assert f"- Time: {result['created_utc']} (UTC)" in (directory / f"{stamp}.md").read_text()
        assert f"<h1>{written['int8']['id']}</h1>" in (directory / f"{stamp}.html").read_text()


@pytest.mark.slow
def test_fp32_deploy_writes_its_reports(written):
    """Issue 10, finding 1, through the role's own task 'Write the Markdown and HTML reports ...'."""
    directory = _dir(written, "agi2", "fp32")
    assert "**Verdict: PASSED**" in (directory / "latest.md").read_text()
    assert "measured on its own (no reference)" in (directory / "latest.html").read_text()


@pytest.mark.slow
def test_rollout_summary_links_each_host_report(written):
    directory = written["reports"] / "fleet" / written["int8"]["id"]
    names = sorted(os.listdir(directory))
    assert len(names) == 6 and {"latest.json", "latest.md", "latest.html"} <= set(names)
    summary = json.loads((directory / "latest.json").read_text())
    assert [h["host"] for h in summary["hosts"]] == ["agi1", "agi4"]
    assert summary["hosts"][0]["validation"]["metrics"] == written["runs"]["agi1"][1]["metrics"]
    page = (directory / "latest.html").read_text()
    assert 'class="verdict fail"' in page and "1 of 2 host(s) on the new release, 1 not reached." in page
    links = re.findall(r'<a href="([^"]+)"', page)
    assert [(directory / link).resolve() for link in links] == [
        _dir(written, "agi1", "int8") / f"{_stamp(written['runs']['agi1'][1])}.html"]
    assert "not reached: the rollout stopped after agi3" in page and page.count("<svg") == 1
    md = (directory / "latest.md").read_text()
    assert "**Verdict: FAILED** — 1 of 2 host(s) on the new release" in md
    assert "| agi4 | not_reached |" in md and "| agi1 | passed |" in md


def test_rollout_summary_colours_each_outcome(validated):
    """A canary that failed its gate and was rolled back, one that passed, one never reached."""
    int8, fp32 = validated["int8"], validated["fp32"]

    def report(host, result):
        return {"host": host, "release": int8["id"], "variant": "int8", "reference": fp32["id"],
                "created_utc": result["created_utc"], "passed": result["passed"], "msg": result["msg"],
                "failed_gates": result["failed_gates"], "metrics": result["metrics"],
                "reference_metrics": result["reference_metrics"],
                "files": {ext: f"/srv/reports/{host}/{int8['id']}/{_stamp(result)}.{ext}" for ext in ("json", "md", "html")}}

    hosts = [{"host": "agi3", "status": "rolled_back", "release_before": fp32["id"], "release_after": fp32["id"],
              "validation": report("agi3", validated["runs"]["agi3"][0])},
             {"host": "agi1", "status": "passed", "release_before": fp32["id"], "release_after": int8["id"],
              "validation": report("agi1", validated["runs"]["agi1"][1])},
             {"host": "agi4", "status": "not_reached", "release_before": fp32["id"], "release_after": fp32["id"]}]
    page = render_fleet(hosts, int8["id"])
    rows = re.findall(r'<tr class="(\w+)">\s*<td><strong>(\w+)</strong>', page)
    assert rows == [("fail", "agi3"), ("pass", "agi1"), ("skip", "agi4")]
    assert "1 of 3 host(s) on the new release, 1 rolled back, 1 not reached." in page
    assert "failed: speedup_min" in page and "<span class=\"why\">not validated</span>" in page
    assert re.findall(r'<a href="([^"]+)"', page) == [f"../../agi3/{int8['id']}/{_stamp(validated['runs']['agi3'][0])}.html",
                                                      f"../../agi1/{int8['id']}/{_stamp(validated['runs']['agi1'][1])}.html"]


@pytest.mark.slow
def test_headless_chromium_shows_the_verdict_and_the_charts(written, tmp_path):
    """The page as a browser draws it: not blank, and every colour the report uses is on screen."""
    page = _dir(written, "agi1", "int8") / "latest.html"
    shot = tmp_path / "report.png"
    proc = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--window-size=1100,3300", f"--screenshot={shot}", page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-3000:]
    rgb = read_png(shot)[..., :3].reshape(-1, 3).astype(np.int32)
    pixels = rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2]
    colours, counts = np.unique(pixels, return_counts=True)
    assert len(colours) > 200  # text, charts and antialiasing, not a flat page

    def on_screen(hex_colour):
        return int(counts[colours == int(hex_colour[1:], 16)].sum())

    filters = load_filters()
    seen = {name: on_screen(filters.COLORS[name]) for name in ("model", "reference", "pass", "fail", "share")}
    # bars of both models and the PASSED banner are large areas; failed search trials and share marks small ones
    assert seen["model"] > 2000 and seen["reference"] > 2000 and seen["pass"] > 20000, seen
    assert seen["fail"] > 20 and seen["share"] > 20, seen
    assert on_screen("#f1f5f9") < 0.9 * len(pixels)  # the page background does not fill the screen


# ------------------------------------------------------------------ the filters on their own

def test_filter_gates_match_onnx_validate():
    filters = load_filters()
    assert {k: v[:2] for k, v in filters.GATES.items()} == {k: v[:2] for k, v in VALIDATE_GATES.items()}


def test_rows_without_reference_leave_reference_cells_empty():
    filters = load_filters()
    rows = filters.report_rows({"metrics": {"p50_ms": 12.5, "size_bytes": 3 * 1048576}, "reference_metrics": None})
    assert [r["reference"] for r in rows] == [""] * len(rows) and rows[2]["model"] == "12.50 ms"
    assert rows[-1] == {"metric": "size on disk", "model": "3.0 MiB", "reference": "", "change": ""}
    assert filters.report_rows({})[0]["model"] == "n/a"


def test_latency_chart_draws_every_sample_and_tolerates_none():
    filters = load_filters()
    svg = filters.latency_svg({"latency_samples_ms": {"model": [1.0, 2.0, 3.0], "reference": None}}, "INT8", "FP32")
    assert svg.count("<circle") == 3 and ">INT8<" in svg and ">FP32<" not in svg and "P50 2.00 ms" in svg
    assert "no per-run latency samples" in filters.latency_svg({"metrics": {}})


def test_search_rows_accept_missing_and_partial_trials():
    filters = load_filters()
    assert filters.search_rows(None) == [] and filters.search_rows({"method": "fp16"}) == []
    rows = filters.search_rows({"search": [{"cosine": 0.97, "nodes_excluded": 2, "quantized_share": 0.9},
                                           "not a trial", {"change": "per_channel"}]})
    assert rows[0] == {"trial": 1, "change": "", "excluded": 2, "cosine": 0.97, "mse": None, "mae": None,
                       "share": 0.9, "passed": None}
    assert rows[1]["cosine"] is None and filters.search_svg({"search": [{"change": "x"}]}) == ""
    svg = filters.search_svg({"search": SEARCH}, 0.98)
    assert "gate cosine ≥ 0.98" in svg and svg.count("<circle") == len(SEARCH)
    assert svg.count(f'r="5" fill="{filters.COLORS["fail"]}"') == 3 and svg.count(f'r="5" fill="{filters.COLORS["pass"]}"') == 1


def test_ticks_cover_the_range_with_round_steps():
    filters = load_filters()
    assert filters._ticks(0, 33.2) == [0, 10, 20, 30, 40]
    assert filters._ticks(0, 0.0042) == [0, 0.001, 0.002, 0.003, 0.004, 0.005]
    assert filters._ticks(0.93, 1.0, 4) == [0.92, 0.94, 0.96, 0.98, 1.0]
