"""The deployment state rules (module_utils/sarai_state.py) and the sarai_release_state module."""
from __future__ import annotations

import importlib.util
import json
import os
import pathlib

import pytest

from ansible.module_utils.testing import patch_module_args

import sarai_state
from helpers import run_module

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
    # state's last switch is INT8 (validated), but INT8_NEW is what the service was switched to.
    state = sarai_state.record_validated(switches(FP32, INT8), INT8["id"], INT8["id"])
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


def validated(*releases, baseline=None):
    """A state after switching to each release in turn, each passing its validation."""
    state = sarai_state.empty_state()
    for index, release in enumerate(releases):
        state = sarai_state.record_switch(state, release, baseline=baseline, now="T%d" % index)
        state = sarai_state.record_validated(state, release["id"], release["id"], now="V%d" % index)
    return state


def test_rollback_target_by_variant_skips_other_variants():
    state = validated(FP32, INT8, INT8_NEW)
    assert sarai_state.rollback_target(state, INT8_NEW["id"])["id"] == INT8["id"]
    assert sarai_state.rollback_target(state, INT8_NEW["id"], variant="fp32")["id"] == FP32["id"]


def test_rollback_target_is_a_release_record_without_history_fields():
    target = sarai_state.rollback_target(validated(INT8, FP32), FP32["id"])
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
    assert sarai_state.switched_release(str(config)) == (None, None)
    config.write_text("audio_omni:\n  name: hand-made\n  model_path: /x.onnx\n")
    assert sarai_state.switched_release(str(config)) == (None, None)
    config.write_text("audio_omni:\n  deployment: {variant: int8, release: int8-bbbbbbbbbbbb}\n")
    assert sarai_state.switched_release(str(config)) == (INT8["id"], None)
    config.write_text("audio_omni: [\n")
    release, problem = sarai_state.switched_release(str(config))
    assert release is None and str(config) in problem and "not valid YAML" in problem


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
    state = validated(FP32, INT8)
    assert sarai_state.rollback_target(state, INT8["id"], leaving=INT8_NEW["id"])["id"] == INT8["id"]


def test_rollback_leaving_the_running_release_goes_to_previous():
    state = sarai_state.record_failed(switches(INT8, baseline=FP32), INT8["id"])
    assert sarai_state.rollback_target(state, INT8["id"], leaving=INT8["id"])["id"] == FP32["id"]


# Issue 16, finding 2: a rollback lands only on a release that passed validation.
INT8_1 = {"id": "int8-111111111111", "variant": "int8", "model_name": "m_int8.onnx"}
INT8_2 = {"id": "int8-222222222222", "variant": "int8", "model_name": "m_int8.onnx"}
INT8_3 = {"id": "int8-333333333333", "variant": "int8", "model_name": "m_int8.onnx"}


def _validated_switched_failed():
    """int8-1 validated; int8-2 switched, its controller died before validation; int8-3 switched and failed."""
    state = validated(INT8_1)
    state = sarai_state.record_switch(state, INT8_2, now="T2")
    state = sarai_state.mark_unvalidated(state, now="P3")  # the preflight of the run that deploys int8-3
    state = sarai_state.record_switch(state, INT8_3, now="T3")
    return sarai_state.record_failed(state, INT8_3["id"])


def test_rollback_lands_on_the_validated_release_not_the_unvalidated_one():
    state = _validated_switched_failed()
    assert sarai_state.rollback_target(state, INT8_3["id"], leaving=INT8_3["id"]) == INT8_1
    entry_2 = [e for e in state["history"] if e["id"] == INT8_2["id"]][0]
    assert entry_2["validated"] is False and entry_2["unvalidated"] is True and entry_2["unvalidated_time"] == "P3"
    # Even without the preflight's mark, an entry that never passed is not a way back.
    unmarked = sarai_state.record_failed(sarai_state.record_switch(
        sarai_state.record_switch(validated(INT8_1), INT8_2, now="T2"), INT8_3, now="T3"), INT8_3["id"])
    assert sarai_state.rollback_target(unmarked, INT8_3["id"]) == INT8_1


def test_nothing_validated_means_no_rollback_target():
    state = switches(INT8_1, INT8_2)
    assert sarai_state.rollback_target(state, INT8_2["id"]) is None
    # The running release (a deploy that failed before it switched) is the target only if it passed.
    assert sarai_state.rollback_target(state, INT8_2["id"], leaving=INT8_3["id"]) is None


def test_preflight_marks_only_switches_that_never_passed():
    # int8-1 validated, then a rollback switched back onto it (a new entry, validated false): that
    # release passed before, so the preflight does not mark it.
    state = validated(INT8_1, INT8_2)
    state = sarai_state.record_failed(state, INT8_2["id"])
    state = sarai_state.record_switch(state, INT8_1, event="rollback", now="T5")
    assert sarai_state.mark_unvalidated(state, now="P6") is state
    assert sarai_state.rollback_target(state, INT8_1["id"], leaving=INT8_1["id"]) is None  # int8-2 is bad
    # A mark is set once, and a validation of that release clears it.
    state = sarai_state.record_switch(state, INT8_3, now="T7")
    marked = sarai_state.mark_unvalidated(state, now="P8")
    assert marked["history"][-1]["unvalidated"] is True
    assert sarai_state.mark_unvalidated(marked, now="P9") is marked
    cleared = sarai_state.record_validated(marked, INT8_3["id"], INT8_3["id"], now="V9")
    assert "unvalidated" not in cleared["history"][-1] and cleared["history"][-1]["validated"] is True


def test_module_preflight_marks_and_rollback_target_skips_unvalidated(tmp_path, capsys):
    path = tmp_path / "sarai_model.fact"
    state = sarai_state.record_switch(validated(INT8_1), INT8_2, now="T2")
    path.write_text(sarai_state.render(state))
    config = _config(tmp_path, INT8_2["id"])
    code, result = _run_module({"path": str(path), "config": config, "event": "preflight"}, capsys)
    assert code == 0 and result["changed"] is True
    assert result["current"]["id"] == INT8_2["id"] and result["current"]["unvalidated"] is True
    assert result["rollback_target"] == INT8_1
    assert json.loads(path.read_text())["history"][-1]["unvalidated"] is True
    code, result = _run_module({"path": str(path), "config": config, "event": "preflight"}, capsys)
    assert code == 0 and result["changed"] is False


# Issue 16, finding 12: durable writes; an empty or wrongly typed state is corrupt, not empty.
@pytest.mark.parametrize("text, problem", [
    ("", "is empty"),
    ("  \n", "is empty"),
    ('{"history": [], "bad_releases": "int8-bbbbbbbbbbbb"}', '"bad_releases" must be a list of release ids, found str'),
    ('{"history": {"id": "x"}, "bad_releases": []}', '"history" must be a list of switches, found dict'),
    ('{"history": ["int8-bbbbbbbbbbbb"], "bad_releases": []}', '"history"[0] must be an object with a string "id"'),
    ('{"history": [{"id": "int8-bbbbbbbbbbbb", "validated": "yes"}]}', '"history"[0].validated must be true or false'),
    ('{"bad_releases": [1, 2]}', '"bad_releases" must be a list of release ids'),
    ('[]', "it must hold a JSON object, found list"),
])
def test_empty_or_wrongly_typed_state_is_corrupt(tmp_path, capsys, text, problem):
    path = tmp_path / "sarai_model.fact"
    path.write_text(text)
    with pytest.raises(sarai_state.StateError) as error:
        sarai_state.load_state(str(path))
    assert str(path) in str(error.value) and problem in str(error.value)
    assert "move it aside" in str(error.value)
    code, result = _run_module({"path": str(path), "config": str(tmp_path / "none.yaml"), "event": "failed",
                                "release": INT8}, capsys)
    assert code == 1 and problem in result["msg"]
    assert path.read_text() == text  # nothing rewritten


def test_save_state_fsyncs_the_file_and_its_directory(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(handle):
        synced.append(os.path.realpath("/proc/self/fd/%d" % handle))
        real_fsync(handle)

    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / "facts.d" / "sarai_model.fact"
    sarai_state.save_state(str(path), switches(INT8))
    assert len(synced) == 2
    assert synced[0].startswith(str(path.parent / ".sarai_state."))  # the temp file, before its rename
    assert synced[1] == str(path.parent)  # the directory, after it
    assert json.loads(path.read_text())["history"][0]["id"] == INT8["id"]
    assert os.listdir(path.parent) == ["sarai_model.fact"]


@pytest.mark.parametrize("text, problem", [
    ("audio_omni: [\n", "not valid YAML"),
    ("- just\n- a list\n", "does not hold an audio_omni mapping"),
    ("audio_omni: broken\n", "does not hold an audio_omni mapping"),
    ("audio_omni:\n  deployment: {release: [int8]}\n", "audio_omni.deployment.release is ['int8']"),
])
def test_broken_sarai_yaml_counts_as_unmanaged_so_a_rollback_can_rewrite_it(tmp_path, capsys, text, problem):
    path = tmp_path / "sarai_model.fact"
    path.write_text(sarai_state.render(validated(INT8_1, INT8_2)))
    config = tmp_path / "sarai.yaml"
    config.write_text(text)
    code, result = run_module("sarai_release_state", {"path": str(path), "config": str(config)}, capsys)
    assert code == 0 and result["switched"] is None and problem in result["config_problem"]
    assert any("counted as not managed" in w["event"]["msg"] for w in result["warnings"])
    assert result["rollback_target"] == INT8_2  # the newest validated release: where a rollback rewrites it to
    assert config.read_text() == text


def test_a_rollback_onto_the_reference_fallback_is_recorded_as_the_baseline():
    # A first deploy whose switch failed: the state knows nothing, the rollback lands on the FP32
    # fallback (event baseline). That switch counts as validated, so a later rollback may land there.
    state = sarai_state.record_switch(sarai_state.empty_state(), FP32, event="baseline", now="T1")
    assert state["history"][-1]["validated"] is True and state["history"][-1]["event"] == "baseline"
    state = sarai_state.record_validated(sarai_state.record_switch(state, INT8, now="T2"), INT8["id"], INT8["id"])
    assert sarai_state.mark_unvalidated(state) is state
    assert sarai_state.rollback_target(state, INT8["id"]) == FP32
    # A plain rollback switch waits for its validation like a deploy does.
    assert sarai_state.record_switch(sarai_state.empty_state(), FP32, event="rollback")["history"][-1]["validated"] is False
