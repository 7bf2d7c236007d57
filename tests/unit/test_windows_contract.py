"""The contract between roles/model_build/tasks/windows.yml and `python -m sarai_onnx`, run on Linux.

No Windows machine is available, so the Windows tasks never ran. This test takes them as written:
the parameters file exactly as "Write the parameters of each variant" builds it (role defaults,
the production catalog), the exact argv and chdir of "Quantize the source model into each variant",
runs that command here, and feeds its stdout through the task's own `changed_when` with Ansible's
templating. If the command line, the parameters or the CLI's output shape change on one side only,
this fails. (Windows paths are opaque strings here: a backslash is an ordinary character in a Linux
file name, so the literal paths the tasks template work as they are.)
"""
from __future__ import annotations

import json
import ntpath
import shutil
import subprocess
import sys

import pytest

from helpers import ROOT

ROLE = ROOT / "roles" / "model_build"
CATALOG = ROOT / "inventory" / "production" / "group_vars" / "all" / "sarai.yml"


def _task(tasks, prefix):
    matches = [t for t in tasks if t["name"].startswith(prefix)]
    assert len(matches) == 1, f"windows.yml must have one task named {prefix!r}..."
    return matches[0]


@pytest.fixture(scope="module")
def windows(tmp_path_factory):
    """The Windows tasks and a templar holding what they see on the build host, for variant int8."""
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar
    from make_talker_model import build_talker_model

    base = tmp_path_factory.mktemp("windows")
    source = base / "models" / "agi_audio_core.onnx"
    source.parent.mkdir()
    build_talker_model(str(source), hidden=64, vocab=128, layers=1, seed=3)
    loader = DataLoader()
    variables = dict(loader.load_from_file(str(CATALOG), trusted_as_template=True))
    for part in ("defaults", "vars"):
        variables.update(loader.load_from_file(str(ROLE / part / "main.yml"), trusted_as_template=True))
    variables.update(sarai_build_source=str(source), sarai_build_dir=str(base / "build"),
                     sarai_build_python=sys.executable, sarai_build_tools_dir=str(base / "tools"),
                     role_path=str(ROLE), item="int8",
                     # The build host's validation inputs, which the int8 variant's fidelity search uses.
                     sarai_validation_input_shapes={"hidden_states": [1, 4, 64]})
    tasks = loader.load_from_file(str(ROLE / "tasks" / "windows.yml"), trusted_as_template=True)
    return {"tasks": tasks, "templar": Templar(loader=loader, variables=variables), "base": base}


def _install(windows):
    """The package copy ("Copy the sarai_onnx package to the build host"): its src into tools_dir."""
    templar = windows["templar"]
    copy = _task(windows["tasks"], "Copy the sarai_onnx package")["ansible.windows.win_copy"]
    tools_dir = templar.template(_task(windows["tasks"], "Quantize")["ansible.windows.win_command"]["chdir"])
    assert templar.template(copy["dest"]) == tools_dir + "\\"  # win_copy: a trailing \ copies src into the dir
    src = templar.template(copy["src"])
    shutil.copytree(src, ntpath.join(tools_dir, ntpath.basename(src)).replace("\\", "/"))
    return tools_dir


def _write_params(windows):
    """The parameters file, templated exactly as "Write the parameters of each variant" does."""
    task = _task(windows["tasks"], "Write the parameters")
    templar = windows["templar"].copy_with_new_env(
        available_variables={**windows["templar"].available_variables, **task["vars"]})
    content = templar.template(task["ansible.windows.win_copy"]["content"])
    dest = templar.template(task["ansible.windows.win_copy"]["dest"])
    with open(dest, "w", encoding="utf-8") as fh:
        fh.write(content)
    return json.loads(content)


def _run_quantize(windows):
    """Run the "Quantize ..." task's argv in its chdir; return (rc, stdout, changed per changed_when)."""
    task = _task(windows["tasks"], "Quantize")
    templar = windows["templar"]
    command = task["ansible.windows.win_command"]
    argv = [templar.template(arg) for arg in command["argv"]]
    proc = subprocess.run(argv, cwd=templar.template(command["chdir"]), capture_output=True, text=True,
                          timeout=300, check=False)
    registered = {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr, "cmd": argv}
    judge = templar.copy_with_new_env(
        available_variables={**templar.available_variables, task["register"]: registered})
    return proc, judge.evaluate_conditional(task["changed_when"]), argv


def test_windows_quantize_command_honours_the_contract(windows):
    tools_dir = _install(windows)
    params = _write_params(windows)
    assert params["method"] == "dynamic_int8" and params["model_name"] == "agi_audio_core_int8.onnx"
    assert params["dest"] == windows["templar"].resolve_variable_expression("model_build_dir") + "\\int8"
    # The variant's fidelity search travels in the same file, with the validation inputs.
    catalog = windows["templar"].resolve_variable_expression("model_build_catalog")["int8"]
    assert params["fidelity_target"] == catalog["fidelity_target"]
    assert params["search_budget"] == catalog["search_budget"]
    # and its coverage floor; allow_low_coverage only when the variant sets it
    assert params["min_quantized_share"] == catalog["min_quantized_share"] and "allow_low_coverage" not in params
    assert params["input_shapes"] == {"hidden_states": [1, 4, 64]}

    first, changed, argv = _run_quantize(windows)
    assert argv[:5] == [sys.executable, "-m", "sarai_onnx", "quantize", "--params"]
    assert argv[5] == ntpath.join(tools_dir, "int8.json")
    assert first.returncode == 0, first.stdout + first.stderr
    result = json.loads(first.stdout)  # stdout is exactly one JSON object
    assert isinstance(result, dict) and result["failed"] is False
    assert changed is True and result["changed"] is True
    assert len(result["release_sha12"]) == 12 and result["manifest_sha256"].startswith(result["release_sha12"])

    # The role reads the release record from that stdout with the expression both platforms share.
    parse = windows["templar"].copy_with_new_env(available_variables={
        **windows["templar"].available_variables, "__model_build_platform": "windows",
        "item": {"stdout": first.stdout, "item": "int8"}})
    assert parse.resolve_variable_expression("__model_build_result") == result

    second, changed_again, _ = _run_quantize(windows)
    assert second.returncode == 0, second.stdout + second.stderr
    again = json.loads(second.stdout)
    assert changed_again is False and again["changed"] is False
    assert again["release_sha12"] == result["release_sha12"]
    assert result["fidelity"]["passed"] and again["search"] == result["search"]


def test_allow_low_coverage_travels_from_the_catalog_to_the_parameters(windows):
    templar = windows["templar"]
    catalog = templar.resolve_variable_expression("model_build_catalog")
    low = dict(catalog, int8=dict(catalog["int8"], allow_low_coverage=True, min_quantized_share=0.3))
    task = _task(windows["tasks"], "Write the parameters")
    params = json.loads(templar.copy_with_new_env(available_variables={
        **templar.available_variables, **task["vars"], "model_build_catalog": low}).template(
            task["ansible.windows.win_copy"]["content"]))
    assert params["allow_low_coverage"] is True and params["min_quantized_share"] == 0.3


def test_a_stream_state_map_reaches_the_search_only_when_set(windows):
    """sarai_validation_state_map (what onnx_validate carries on the servers) goes to the build's search
    too, so both judge the same sequence; without one the search params carry no state_map."""
    templar = windows["templar"]
    assert "state_map" not in templar.resolve_variable_expression("__model_build_search_params")
    streaming = templar.copy_with_new_env(available_variables={
        **templar.available_variables, "sarai_validation_state_map": {"state": "stateN"},
        "model_build_search_inputs": "C:\\sarai\\vad_stream.npz"})
    params = streaming.resolve_variable_expression("__model_build_search_params")
    assert params["state_map"] == {"state": "stateN"} and params["inputs"] == "C:\\sarai\\vad_stream.npz"
