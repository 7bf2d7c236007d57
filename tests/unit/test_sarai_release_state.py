"""The deployment state rules (module_utils/sarai_state.py) and the sarai_release_state module."""
from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest

from ansible.module_utils.testing import patch_module_args

import sarai_state

ROOT = pathlib.Path(__file__).resolve().parents[2]

FP32 = {"id": "fp32-aaaaaaaaaaaa", "variant": "fp32", "model_name": "m.onnx"}
INT8 = {"id": "int8-bbbbbbbbbbbb", "variant": "int8", "model_name": "m_int8.onnx", "catalog": {"max_memory_mb": 1200}}
INT8_NEW = {"id": "int8-cccccccccccc", "variant": "int8", "model_name": "m_int8.onnx"}


def switches(*releases, baseline=None):
    """A state after switching to each release in turn (times T1, T2...)."""
    state = sarai_state.empty_state()
    for index, release in enumerate(releases):
        state = sarai_state.record_switch(state, release, baseline=baseline, now="T%d" % index)
    return state


def test_first_switch_records_the_baseline_before_it():
    state = switches(INT8, baseline=FP32)
    assert [e["id"] for e in state["history"]] == [FP32["id"], INT8["id"]]
    assert state["history"][0]["event"] == "baseline" and state["history"][0]["validated"] is True
    assert sarai_state.current_entry(state, INT8["id"])["validated"] is False
    assert sarai_state.current_entry(state, INT8["id"])["catalog"] == {"max_memory_mb": 1200}
    assert sarai_state.previous_entry(state, INT8["id"])["id"] == FP32["id"]
    assert sarai_state.rollback_target(state, INT8["id"])["id"] == FP32["id"]


def test_switch_to_the_last_recorded_release_changes_nothing():
    state = switches(INT8, baseline=FP32)
    assert sarai_state.record_switch(state, INT8, baseline=FP32, now="T9") is state


def test_what_runs_comes_from_the_config_not_the_state():
    # A run rendered sarai.yaml for INT8_NEW and died before the service was healthy on it: the
    # state's last switch is INT8, but INT8_NEW is what the service was switched to.
    state = switches(FP32, INT8)
    assert sarai_state.current_entry(state, INT8_NEW["id"]) is None
    assert sarai_state.previous_entry(state, INT8_NEW["id"])["id"] == INT8["id"]
    # A rollback leaves INT8_NEW and lands on the last good switch, INT8.
    assert sarai_state.rollback_target(state, INT8_NEW["id"])["id"] == INT8["id"]
    with pytest.raises(sarai_state.StateError, match="sarai.yaml names int8-cccccccccccc"):
        sarai_state.record_validated(state, INT8_NEW["id"], INT8_NEW["id"])


def test_rollback_never_lands_on_a_bad_release():
    state = switches(FP32, INT8)
    state = sarai_state.record_failed(state, INT8["id"])
    state = sarai_state.record_switch(state, FP32, event="rollback", now="T3")
    # Left: INT8 (bad); the running FP32 is what a rollback would leave.
    assert sarai_state.previous_entry(state, FP32["id"])["id"] == INT8["id"]
    assert sarai_state.rollback_target(state, FP32["id"]) is None


def test_rollback_target_by_variant_skips_other_variants():
    state = switches(FP32, INT8, INT8_NEW)
    assert sarai_state.rollback_target(state, INT8_NEW["id"])["id"] == INT8["id"]
    assert sarai_state.rollback_target(state, INT8_NEW["id"], variant="fp32")["id"] == FP32["id"]


def test_rollback_target_is_a_release_record_without_history_fields():
    target = sarai_state.rollback_target(switches(INT8, FP32), FP32["id"])
    assert target == INT8


def test_schema_1_history_entries_are_not_rollback_targets(tmp_path):
    path = tmp_path / "sarai_model.fact"
    path.write_text(json.dumps({"current": {"id": INT8["id"]}, "previous": {"id": "fp32-000000000000"},
                                "history": [{"id": "fp32-000000000000", "variant": "fp32", "model_path": "/r/m.onnx"}],
                                "bad_releases": []}))
    state = sarai_state.load_state(str(path))
    assert set(state) == {"schema", "history", "bad_releases"}
    assert sarai_state.rollback_target(state, INT8["id"]) is None


def test_validation_clears_bad_mark_and_is_idempotent():
    state = switches(INT8)
    state = sarai_state.record_failed(state, INT8["id"])
    state = sarai_state.record_validated(state, INT8["id"], INT8["id"], now="T2")
    assert state["bad_releases"] == []
    assert state["history"][-1]["validated"] is True
    assert sarai_state.record_validated(state, INT8["id"], INT8["id"], now="T3") is state


def test_failing_the_running_release_clears_its_validation():
    state = sarai_state.record_validated(switches(INT8), INT8["id"], INT8["id"])
    state = sarai_state.record_failed(state, INT8["id"])
    assert state["bad_releases"] == [INT8["id"]] and state["history"][-1]["validated"] is False
    assert sarai_state.record_failed(state, INT8["id"]) is state


def test_validating_a_release_that_does_not_run_is_refused():
    state = switches(FP32)
    with pytest.raises(sarai_state.StateError, match="sarai.yaml names fp32-aaaaaaaaaaaa"):
        sarai_state.record_validated(state, INT8["id"], FP32["id"])


def test_release_without_model_name_is_refused():
    with pytest.raises(sarai_state.StateError, match="missing model_name"):
        sarai_state.record_switch(sarai_state.empty_state(), {"id": "x", "variant": "int8"})


def test_broken_state_file_names_the_file(tmp_path):
    path = tmp_path / "sarai_model.fact"
    path.write_text("{not json")
    with pytest.raises(sarai_state.StateError, match=str(path)):
        sarai_state.load_state(str(path))


def test_switched_release_reads_the_deployment_of_sarai_yaml(tmp_path):
    config = tmp_path / "sarai.yaml"
    assert sarai_state.switched_release(str(config)) is None
    config.write_text("audio_omni:\n  name: hand-made\n  model_path: /x.onnx\n")
    assert sarai_state.switched_release(str(config)) is None
    config.write_text("audio_omni:\n  deployment: {variant: int8, release: int8-bbbbbbbbbbbb}\n")
    assert sarai_state.switched_release(str(config)) == INT8["id"]
    config.write_text("audio_omni: [\n")
    with pytest.raises(sarai_state.StateError, match="not valid YAML"):
        sarai_state.switched_release(str(config))


def test_releases_to_keep_protects_running_and_previous():
    state = switches(FP32, INT8, INT8_NEW)
    assert sarai_state.releases_to_keep(state, INT8_NEW["id"], 1) == [INT8_NEW["id"], INT8["id"]]
    assert sarai_state.releases_to_keep(state, INT8_NEW["id"], 3) == [INT8_NEW["id"], INT8["id"], FP32["id"]]
    # sarai.yaml names FP32 (e.g. switched back by hand): FP32 and the last switch stay.
    assert sarai_state.releases_to_keep(state, FP32["id"], 1) == [FP32["id"], INT8_NEW["id"]]


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


def _config(tmp_path, release_id):
    path = tmp_path / "sarai.yaml"
    path.write_text("audio_omni:\n  deployment: {release: %s}\n" % release_id)
    return str(path)


def test_module_records_switch_then_reports_unchanged(tmp_path, capsys):
    path = str(tmp_path / "facts.d" / "sarai_model.fact")
    args = {"path": path, "config": _config(tmp_path, INT8["id"]), "event": "switched", "release": INT8,
            "baseline": FP32}
    code, result = _run_module(args, capsys)
    assert code == 0 and result["changed"] is True
    assert result["switched"] == INT8["id"] and result["current"]["id"] == INT8["id"]
    assert result["previous"]["id"] == FP32["id"] and result["rollback_target"] == FP32
    assert [e["id"] for e in json.loads(pathlib.Path(path).read_text())["history"]] == [FP32["id"], INT8["id"]]
    code, result = _run_module(args, capsys)
    assert code == 0 and result["changed"] is False


def test_module_check_mode_writes_nothing(tmp_path, capsys):
    path = tmp_path / "sarai_model.fact"
    args = {"path": str(path), "config": _config(tmp_path, INT8["id"]), "event": "switched", "release": INT8,
            "_ansible_check_mode": True}
    code, result = _run_module(args, capsys)
    assert code == 0 and result["changed"] is True
    assert not path.exists()


def test_module_fails_clearly_on_broken_state(tmp_path, capsys):
    path = tmp_path / "sarai_model.fact"
    path.write_text("[1, 2")
    code, result = _run_module({"path": str(path), "config": str(tmp_path / "none.yaml"), "event": "failed",
                                "release": INT8}, capsys)
    assert code == 1 and result["failed"] is True
    assert str(path) in result["msg"] and "not valid JSON" in result["msg"]
    assert path.read_text() == "[1, 2"


def test_rollback_after_failed_switch_lands_on_the_running_release():
    # The deploy of INT8_NEW failed before it rendered sarai.yaml: INT8 still runs and is the target.
    state = switches(FP32, INT8)
    assert sarai_state.rollback_target(state, INT8["id"], leaving=INT8_NEW["id"])["id"] == INT8["id"]


def test_rollback_leaving_the_running_release_goes_to_previous():
    state = sarai_state.record_failed(switches(INT8, baseline=FP32), INT8["id"])
    assert sarai_state.rollback_target(state, INT8["id"], leaving=INT8["id"])["id"] == FP32["id"]
