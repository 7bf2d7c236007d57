"""The HTML reports print what servers and the build host wrote (issue 16, finding 4): every string
they hold, rendered by Ansible's own template engine as tasks/report.yml and tasks/fleet.yml do,
comes out escaped, and the server's JSON is type-checked before the controller uses it.

Ansible 2.19 forces Jinja's autoescape off (its environment sets autoescape=False and compiles with
the native code generator, which ignores {% autoescape %}), so the templates escape each value with
`| e`; this test renders a report in which every string is a script, to catch a value printed raw."""
from __future__ import annotations

import copy
import importlib.util

import pytest

from helpers import ROOT
from test_reports import render, render_fleet

SCRIPT = "<script>alert(1)</script>"
RELEASE = {"id": "int8-0123456789ab", "variant": "int8", "model_name": "agi_audio_core_int8.onnx",
           "manifest_sha256": "0123456789ab" + "0" * 52}
REFERENCE = {"id": "fp32-ba9876543210", "variant": "fp32", "model_name": "agi_audio_core.onnx",
             "manifest_sha256": "ba9876543210" + "0" * 52}


def _filters():
    spec = importlib.util.spec_from_file_location("sarai_report", ROOT / "plugins" / "filter" / "sarai_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def report():
    """A report with every field onnx_validate writes (module_utils/sarai_onnx/validate.py)."""
    metrics = {"load_s": 0.2, "first_inference_s": 0.01, "p50_ms": 1.0, "p90_ms": 1.2, "p99_ms": 1.5, "mean_ms": 1.1,
               "peak_rss_mb": 80.0, "baseline_rss_mb": 40.0, "size_bytes": 1000, "output_shapes": {"logits": [1, 4]}}
    return {
        "created_utc": "2026-11-23T19:29:00Z", "host": "h1", "user": "root", "model": "/srv/int8/m.onnx",
        "reference": "/srv/fp32/m.onnx", "input_source": "generated", "msg": "1 gate(s) passed", "passed": True,
        "runs": 20, "warmup": 2, "seed": 0, "gates": {"cosine_min": 0.98},
        "metrics": dict(metrics, cosine=0.999, mse=0.001, mae=0.01, max_abs=0.1, speedup=2.0, size_ratio=0.5),
        "reference_metrics": dict(metrics, p50_ms=2.0, size_bytes=2000),
        "gate_results": [{"gate": "cosine_min", "value": 0.999, "limit": 0.98, "passed": True}], "failed_gates": [],
        "inputs": {"hidden_states": {"shape": [1, 16, 256], "dtype": "float32"}}, "session_options": {"x": "y"},
        "versions": {"onnxruntime": "1.32.0"}, "latency_samples_ms": {"model": [1.0, 1.1], "reference": [2.0, 2.1]},
    }


def hostile(value):
    """The same shape with every string (keys too) replaced by a script."""
    if isinstance(value, dict):
        return {(SCRIPT + str(i) if isinstance(k, str) else k): hostile(v) for i, (k, v) in enumerate(value.items())}
    if isinstance(value, list):
        return [hostile(v) for v in value]
    return SCRIPT if isinstance(value, str) else value


BUILD_RECORD = {"method": "dynamic_int8", "options": {"per_channel": True}, "versions": {"onnx": "1.19"},
                "coverage": {"byte_share": 0.5, "quantized_tensors": 3, "weight_tensors": 4},
                "excluded_nodes": ["/ffn_out_0"],
                "search": [{"change": "per_channel", "excluded_nodes": ["/ffn_out_0"], "cosine": 0.99, "mse": 0.01,
                            "mae": 0.05, "byte_share": 0.9, "passed": True}]}


def _hostile_report():
    # Keys the templates look up by name keep their names; their values are scripts.
    result = report()
    for key in ("created_utc", "host", "user", "model", "reference", "input_source", "msg"):
        result[key] = SCRIPT
    result.update(inputs=hostile(result["inputs"]), session_options=hostile(result["session_options"]),
                  versions=hostile(result["versions"]), gates=dict(result["gates"]))
    result["gate_results"][0]["gate"] = SCRIPT
    result["metrics"]["output_shapes"] = hostile(result["metrics"]["output_shapes"])
    return result


def _hostile_record():
    record = copy.deepcopy(BUILD_RECORD)
    record.update(method=SCRIPT, options=hostile(record["options"]), versions=hostile(record["versions"]),
                  excluded_nodes=[SCRIPT])
    record["coverage"].update(quantized_tensors=SCRIPT, weight_tensors=SCRIPT)
    record["search"][0].update(change=SCRIPT, excluded_nodes=[SCRIPT])
    return record


def test_the_hostile_report_is_one_the_controller_accepts():
    assert _filters().report_problems(_hostile_report()) == []


def test_every_string_of_the_report_and_the_build_record_is_escaped_in_the_page():
    page = render("report.html.j2", _hostile_report(), RELEASE, REFERENCE, record=_hostile_record(), host=SCRIPT)
    assert "<script" not in page.lower(), [line for line in page.splitlines() if "<script" in line.lower()]
    assert page.count("&lt;script&gt;") >= 15 and page.count("<svg") == 4


def test_every_string_of_the_rollout_summary_is_escaped():
    hosts = [{"host": SCRIPT, "status": "passed", "release_before": SCRIPT, "release_after": SCRIPT,
              "validation": {"passed": False, "failed_gates": [{"gate": SCRIPT}], "metrics": report()["metrics"],
                             "reference_metrics": report()["reference_metrics"],
                             "files": {"md": "/srv/reports/h/x.md", "html": "/srv/reports/h/x.html"}}},
             {"host": "h2", "status": SCRIPT, "msg": SCRIPT}]
    page = render_fleet(hosts, RELEASE["id"])
    assert "<script" not in page.lower(), [line for line in page.splitlines() if "<script" in line.lower()]


@pytest.mark.parametrize("field, value, expected", [
    ("runs", SCRIPT, "must be a whole number"),
    ("warmup", -1, "must be a whole number >= 0"),
    ("seed", True, "must be a whole number"),
    ("passed", "yes", "must be true or false"),
    ("created_utc", 20261123, "must be a string"),
    ("host", "h1\nx", "must be a string without control characters"),
    ("metrics", [], "must be a mapping"),
    ("reference_metrics", "none", "must be a mapping or null"),
    ("failed_gates", {"gate": "x"}, "must be a list"),
    ("latency_samples_ms", {"model": ["1"]}, "latency_samples_ms.model = ['1']: must be a list of numbers or null"),
])
def test_report_fields_of_the_wrong_type_are_named(field, value, expected):
    problems = _filters().report_problems(dict(report(), **{field: value}))
    assert len(problems) == 1 and expected in problems[0] and problems[0].startswith(field), problems


def test_missing_fields_and_wrong_nested_types_are_named():
    result = report()
    del result["passed"]
    result["metrics"]["p50_ms"] = "fast"
    result["gate_results"] = [{"gate": "cosine_min", "passed": "yes"}]
    assert _filters().report_problems(result) == [
        "passed is missing", "metrics.p50_ms = 'fast': must be a number or null",
        "gate_results[0].passed = 'yes': must be true or false"]
