"""The deployment state rules (module_utils/sarai_state.py) and the sarai_release_state module."""
from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest

from ansible.module_utils.testing import patch_module_args

import sarai_state

ROOT = pathlib.Path(__file__).resolve().parents[2]

FP32 = {"id": "fp32-aaaaaaaaaaaa", "variant": "fp32", "model_path": "/r/fp32-aaaaaaaaaaaa/m.onnx"}
INT8 = {"id": "int8-bbbbbbbbbbbb", "variant": "int8", "model_path": "/r/int8-bbbbbbbbbbbb/m_int8.onnx"}
INT8_NEW = {"id": "int8-cccccccccccc", "variant": "int8", "model_path": "/r/int8-cccccccccccc/m_int8.onnx"}


def test_first_switch_uses_baseline_as_previous():
    state = sarai_state.record_switch(sarai_state.empty_state(), INT8, baseline=FP32, now="T1")
    assert state["current"]["id"] == INT8["id"]
    assert state["current"]["validated"] is False
    assert state["previous"]["id"] == FP32["id"]
    assert sarai_state.rollback_target(state)["id"] == FP32["id"]


def test_switch_to_running_release_changes_nothing():
    state = sarai_state.record_switch(sarai_state.empty_state(), INT8, baseline=FP32, now="T1")
    assert sarai_state.record_switch(state, INT8, baseline=FP32, now="T2") is state


def test_rollback_never_lands_on_a_bad_release():
    state = sarai_state.record_switch(sarai_state.empty_state(), FP32, now="T1")
    state = sarai_state.record_switch(state, INT8, now="T2")
    state = sarai_state.record_failed(state, INT8["id"])
    state = sarai_state.record_switch(state, FP32, event="rollback", now="T3")
    # previous is now the bad INT8 release, and the only other candidate is the running FP32.
    assert state["previous"]["id"] == INT8["id"]
    assert sarai_state.rollback_target(state) is None


def test_rollback_target_by_variant_skips_other_variants():
    state = sarai_state.record_switch(sarai_state.empty_state(), FP32, now="T1")
    state = sarai_state.record_switch(state, INT8, now="T2")
    state = sarai_state.record_switch(state, INT8_NEW, now="T3")
    assert sarai_state.rollback_target(state)["id"] == INT8["id"]
    assert sarai_state.rollback_target(state, variant="fp32")["id"] == FP32["id"]


def test_validation_clears_bad_mark_and_is_idempotent():
    state = sarai_state.record_switch(sarai_state.empty_state(), INT8, now="T1")
    state = sarai_state.record_failed(state, INT8["id"])
    state = sarai_state.record_validated(state, INT8["id"], now="T2")
    assert state["bad_releases"] == []
    assert state["current"]["validated"] is True
    assert sarai_state.record_validated(state, INT8["id"], now="T3") is state


def test_validating_a_release_that_does_not_run_is_refused():
    state = sarai_state.record_switch(sarai_state.empty_state(), FP32, now="T1")
    with pytest.raises(sarai_state.StateError, match="current release is fp32-aaaaaaaaaaaa"):
        sarai_state.record_validated(state, INT8["id"])


def test_release_without_model_path_is_refused():
    with pytest.raises(sarai_state.StateError, match="missing model_path"):
        sarai_state.record_switch(sarai_state.empty_state(), {"id": "x", "variant": "int8"})


def test_broken_state_file_names_the_file(tmp_path):
    path = tmp_path / "sarai_model.fact"
    path.write_text("{not json")
    with pytest.raises(sarai_state.StateError, match=str(path)):
        sarai_state.load_state(str(path))


def test_releases_to_keep_protects_current_and_previous():
    state = sarai_state.empty_state()
    for index, release in enumerate([FP32, INT8, INT8_NEW]):
        state = sarai_state.record_switch(state, release, now="T%d" % index)
    assert sarai_state.releases_to_keep(state, 1) == [INT8_NEW["id"], INT8["id"]]
    assert sarai_state.releases_to_keep(state, 3) == [INT8_NEW["id"], INT8["id"], FP32["id"]]


def _load_module():
    spec = importlib.util.spec_from_file_location("sarai_release_state", ROOT / "library" / "sarai_release_state.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_module(args, capsys):
    module = _load_module()
    with patch_module_args(args), pytest.raises(SystemExit) as exit_info:
        module.main()
    return exit_info.value.code, json.loads(capsys.readouterr().out)


def test_module_records_switch_then_reports_unchanged(tmp_path, capsys):
    path = str(tmp_path / "facts.d" / "sarai_model.fact")
    args = {"path": path, "event": "switched", "release": INT8, "baseline": FP32}
    code, result = _run_module(args, capsys)
    assert code == 0 and result["changed"] is True
    assert result["rollback_target"]["id"] == FP32["id"]
    assert json.loads(pathlib.Path(path).read_text())["current"]["id"] == INT8["id"]
    code, result = _run_module(args, capsys)
    assert code == 0 and result["changed"] is False


def test_module_check_mode_writes_nothing(tmp_path, capsys):
    path = tmp_path / "sarai_model.fact"
    args = {"path": str(path), "event": "switched", "release": INT8, "_ansible_check_mode": True}
    code, result = _run_module(args, capsys)
    assert code == 0 and result["changed"] is True
    assert not path.exists()


def test_module_fails_clearly_on_broken_state(tmp_path, capsys):
    path = tmp_path / "sarai_model.fact"
    path.write_text("[1, 2")
    code, result = _run_module({"path": str(path), "event": "failed", "release": INT8}, capsys)
    assert code == 1 and result["failed"] is True
    assert str(path) in result["msg"] and "not valid JSON" in result["msg"]
    assert path.read_text() == "[1, 2"


def test_rollback_after_failed_switch_lands_on_the_running_release():
    # The deploy of INT8_NEW failed before its switch was recorded: INT8 still runs and is the target.
    state = sarai_state.record_switch(sarai_state.empty_state(), FP32, now="T1")
    state = sarai_state.record_switch(state, INT8, now="T2")
    assert sarai_state.rollback_target(state, leaving=INT8_NEW["id"])["id"] == INT8["id"]


def test_rollback_leaving_the_running_release_goes_to_previous():
    state = sarai_state.record_switch(sarai_state.empty_state(), INT8, baseline=FP32, now="T1")
    state = sarai_state.record_failed(state, INT8["id"])
    assert sarai_state.rollback_target(state, leaving=INT8["id"])["id"] == FP32["id"]
