"""A server's validation report is not trusted (issue 16, finding 4): roles/model_validate's report
entry point run by ansible-playbook on this machine (connection local) on report JSON a server could
write. Before the fix, `created_utc` named the report files (`../../../pwned` wrote pwned.json/.md/.html
outside reports/) and the HTML page printed `runs`, `warmup`, `seed` and parts of the build record
unescaped."""
from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
RELEASE = {"id": "int8-0123456789ab", "variant": "int8", "model_name": "agi_audio_core_int8.onnx",
           "manifest_sha256": "0123456789ab" + "0" * 52}
REFERENCE = {"id": "fp32-ba9876543210", "variant": "fp32", "model_name": "agi_audio_core.onnx",
             "manifest_sha256": "ba9876543210" + "0" * 52}
SCRIPT = "<script>alert(1)</script>"

PLAYBOOK = """
- name: Keep the report of a validation run
  hosts: servers
  gather_facts: false
  tasks:
    - name: Keep the report on the controller
      ansible.builtin.include_role:
        name: model_validate
        tasks_from: report
"""


def _report(**changes):
    """A report with every field onnx_validate writes (module_utils/sarai_onnx/validate.py)."""
    metrics = {"load_s": 0.2, "first_inference_s": 0.01, "p50_ms": 1.0, "p90_ms": 1.2, "p99_ms": 1.5, "mean_ms": 1.1,
               "peak_rss_mb": 80.0, "baseline_rss_mb": 40.0, "size_bytes": 1000, "output_shapes": {"logits": [1, 4]}}
    report = {
        "created_utc": "2026-11-23T19:29:00Z", "host": "h1", "user": "root", "model": "/srv/int8/m.onnx",
        "reference": "/srv/fp32/m.onnx", "input_source": "generated", "msg": "1 gate(s) passed", "passed": True,
        "runs": 20, "warmup": 2, "seed": 0, "gates": {"cosine_min": 0.98},
        "metrics": dict(metrics, cosine=0.999, mse=0.001, mae=0.01, max_abs=0.1, speedup=2.0, size_ratio=0.5),
        "reference_metrics": dict(metrics, p50_ms=2.0, size_bytes=2000),
        "gate_results": [{"gate": "cosine_min", "value": 0.999, "limit": 0.98, "passed": True}], "failed_gates": [],
        "inputs": {"hidden_states": {"shape": [1, 16, 256], "dtype": "float32"}}, "session_options": {},
        "versions": {"onnxruntime": "1.32.0"}, "latency_samples_ms": {"model": [1.0, 1.1], "reference": [2.0, 2.1]},
    }
    report.update(changes)
    return report


def _keep(tmp_path, report):
    remote = tmp_path / "server" / "reports"
    remote.mkdir(parents=True)
    (remote / f"{RELEASE['id']}.json").write_text(json.dumps(report))
    inventory = {"all": {"children": {"servers": {"hosts": {"h1": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        "model_validate_release": RELEASE, "model_validate_reference": REFERENCE,
        "model_validate_remote_dir": str(remote), "model_validate_reports_dir": str(tmp_path / "reports"),
        "model_validate_releases_dir": str(tmp_path / "server" / "releases")}}}}}}
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(inventory))
    (tmp_path / "keep.yml").write_text(PLAYBOOK)
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i",
                           str(tmp_path / "inventory.yml"), str(tmp_path / "keep.yml")],
                          env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1"),
                          capture_output=True, text=True, timeout=300, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def _written(tmp_path):
    """Every file and link the run left outside the server's own dir."""
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")
                  if not p.is_dir() and p.relative_to(tmp_path).parts[0] not in ("server", "inventory.yml", "keep.yml"))


def test_report_files_are_named_by_the_controller_and_every_value_is_escaped(tmp_path):
    hostile = _report(created_utc="../../../pwned", host=SCRIPT, user=SCRIPT, model=SCRIPT, input_source=SCRIPT,
                      versions={SCRIPT: SCRIPT}, session_options={"x": SCRIPT},
                      inputs={SCRIPT: {"shape": [SCRIPT], "dtype": SCRIPT}})
    # The release's build record on the server (printed in the page, some of it without |e before).
    record_dir = tmp_path / "server" / "releases" / RELEASE["id"]
    record_dir.mkdir(parents=True)
    (record_dir / "quantization.json").write_text(json.dumps({
        "method": "dynamic_int8", "options": {}, "coverage": {"byte_share": 0.5, "quantized_tensors": SCRIPT}}))
    rc, out = _keep(tmp_path, hostile)
    assert rc == 0, out
    written = _written(tmp_path)
    here = f"reports/h1/{RELEASE['id']}/"
    assert written and all(w.startswith(here) for w in written), written
    names = sorted(w[len(here):] for w in written)
    stamp = names[0].split(".")[0]
    assert re.fullmatch(r"\d{8}T\d{6}Z", stamp) and names == sorted(
        [f"{stamp}.{ext}" for ext in ("json", "md", "html")] + ["latest.json", "latest.md", "latest.html"]), names
    page = (tmp_path / here / f"{stamp}.html").read_text()
    assert "<script" not in page.lower(), page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "../../../pwned UTC" in page
    assert page.count("<svg") == 3  # the charts still render


def test_a_report_field_of_the_wrong_type_is_refused_and_nothing_is_kept(tmp_path):
    rc, out = _keep(tmp_path, _report(runs=SCRIPT, warmup="2", passed="yes", failed_gates={"gate": "x"},
                                      metrics=dict(_report()["metrics"], p50_ms="fast")))
    assert rc != 0, out
    assert f"runs = '{SCRIPT}': must be a whole number" in out, out
    for named in ("warmup = '2': must be a whole number", "passed = 'yes': must be true or false",
                  "failed_gates = {'gate': 'x'}: must be a list", "metrics.p50_ms = 'fast': must be a number or null",
                  "Nothing of it was kept on the controller"):
        assert named in out, out
    assert _written(tmp_path) == []
