"""Control characters in what reaches a file on a server (issue 16, finding 10): a display_name with
a newline would add top-level keys to sarai.yaml through its header comment, and a model `file` with
a trailing newline passed the `$`-anchored check. deploy_int8.yml and rollback.yml refuse both in their
first play, naming the variable and the value, before any server is contacted (the helpers of
test_inputs_refused.py: servers on a port nothing listens on)."""
from __future__ import annotations

import json

import yaml

from test_inputs_refused import CATALOG, _inventory, _refused_in_first_play, _run


def _catalog_with(variant, key, value):
    catalog = yaml.safe_load(CATALOG.read_text())["sarai_model_variants"]
    catalog[variant][key] = value
    return json.dumps({"sarai_model_variants": catalog})


def test_a_display_name_with_a_newline_is_refused_before_anything_changes(tmp_path):
    injected = "Qwen3-Omni-3B-INT8\nmodel_path: /tmp/evil.onnx"
    out = _refused_in_first_play(_run(_inventory(tmp_path, True), "playbooks/deploy_int8.yml",
                                      "-e", _catalog_with("int8", "display_name", injected)))
    assert ('sarai_model_variants.int8.display_name = "Qwen3-Omni-3B-INT8\\nmodel_path: /tmp/evil.onnx": '
            "contains a control character") in out, out


def test_a_model_file_with_a_trailing_newline_is_refused_by_the_rollback_too(tmp_path):
    out = _refused_in_first_play(_run(_inventory(tmp_path, False), "playbooks/rollback.yml",
                                      "-e", _catalog_with("fp32", "file", "agi_audio_core.onnx\n")))
    assert 'sarai_model_variants.fp32.file = "agi_audio_core.onnx\\n": must be a plain file name' in out, out
