"""Role async_progress's progress line, rendered by Ansible's template engine from the files that
sarai_onnx.progress.Progress writes for onnx_quantize and onnx_validate (the same writer the modules
use), with the role's own defaults and vars."""
from __future__ import annotations

import base64
import json

from helpers import ROOT
from sarai_onnx.progress import Progress

ROLE = ROOT / "roles" / "async_progress"


def line(progress_path, label="int8 on builder"):
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar

    loader = DataLoader()
    variables = {}
    for part in ("defaults", "vars"):
        variables.update(loader.load_from_file(str(ROLE / part / "main.yml"), trusted_as_template=True))
    read = ({"content": base64.b64encode(progress_path.read_bytes()).decode()} if progress_path.exists()
            else {"failed": True, "msg": "file not found"})
    variables.update(inventory_hostname="builder", async_progress_label=label, __async_progress_read=read,
                     __async_progress_round=0)
    return Templar(loader=loader, variables=variables).template(variables["__async_progress_line"])


def test_quantize_progress_names_phase_tensors_bytes_time_and_engine(tmp_path):
    path = tmp_path / "int8.progress.json"
    progress = Progress(str(path))
    progress.phase("hash_source")
    assert line(path).startswith("int8 on builder: hash_source, ")  # counts are null before quantize
    assert "tensors" not in line(path) and "engine" not in line(path)
    progress.phase("quantize", tensors_total=98, bytes_total=1771044864, engine="streaming")
    progress.advance(12, 402653184)
    progress.update(force=True)
    elapsed = json.loads(path.read_text())["elapsed_s"]
    assert line(path) == f"int8 on builder: quantize, tensors 12/98, 384/1689 MiB, {elapsed} s, engine streaming"


def test_validate_progress_names_phase_runs_and_time(tmp_path):
    path = tmp_path / "int8.progress.json"
    progress = Progress(str(path), runs_total=40)
    progress.update("timed", force=True, runs_done=18)
    elapsed = json.loads(path.read_text())["elapsed_s"]
    assert line(path, "validate int8-x on agi1") == f"validate int8-x on agi1: timed, runs 18/40, {elapsed} s"


def test_no_progress_file_yet_says_starting(tmp_path):
    assert line(tmp_path / "missing.json") == "int8 on builder: starting"


def test_the_gap_between_lines_grows_every_ten_lines():
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar

    loader = DataLoader()
    variables = {}
    for part in ("defaults", "vars"):
        variables.update(loader.load_from_file(str(ROLE / part / "main.yml"), trusted_as_template=True))
    waits = []
    for n in (0, 9, 10, 59):
        variables["__async_progress_round"] = n
        waits.append(int(Templar(loader=loader, variables=variables).template(variables["__async_progress_wait"])))
    assert waits == [2, 2, 4, 12]
