"""Inputs checked in one place before anything changes: sarai_inputs and sarai_check_inputs."""
from __future__ import annotations

import copy

import pytest
import yaml

import sarai_inputs as inputs
from helpers import ROOT, run_module

CATALOG_FILE = ROOT / "inventory" / "production" / "group_vars" / "all" / "sarai.yml"
GROUPS = {"all": ["winbuild", "agi1"], "ungrouped": [], "quantizers": ["winbuild"], "inference": ["agi1"]}
PATHS = {"sarai_root": "/opt/sarai", "sarai_releases_dir": "/opt/sarai/models/releases",
         "sarai_config_path": "/opt/sarai/config/sarai.yaml", "sarai_state_file": "/etc/ansible/facts.d/sarai_model.fact"}


@pytest.fixture
def shipped():
    """The inventory's own values: the check must accept what the project ships."""
    values = yaml.safe_load(CATALOG_FILE.read_text())
    return dict(catalog=values["sarai_model_variants"], gates=values["sarai_validation_gates"],
                target_variant=values["sarai_target_variant"], reference_variant=values["sarai_reference_variant"],
                paths=dict(PATHS), keep={"model_transfer_keep_releases": 3}, groups=copy.deepcopy(GROUPS),
                inventory_sources=["inventory/production/hosts.yml"])


def problems(**kwargs):
    return inputs.check_inputs(**kwargs)["problems"]


def test_the_shipped_inventory_passes(shipped):
    result = inputs.check_inputs("deploy", batches=[1, "50%", "100%"], **shipped)
    assert result == {"problems": [], "warnings": [], "batches": [1, "50%", "100%"]}


def test_a_string_gate_is_refused_naming_variable_value_and_fix(shipped):
    # Finding 3: `cosine_min: "high"` used to be refused only after the switch.
    shipped["gates"]["cosine_min"] = "high"
    assert problems(**shipped) == [
        'sarai_validation_gates.cosine_min = "high": must be a number (without quotes); '
        "set e.g. cosine_min: 0.98, or null to disable the gate"]


@pytest.mark.parametrize("gate, limit, words", [
    ("cosine_min", 0, "must be in (0, 1]"),
    ("cosine_min", -0.5, "must be in (0, 1]"),
    ("cosine_min", 1.5, "is out of range"),
    ("mse_max", -0.01, "is out of range"),
    ("speedup_min", 0, "it must be > 0"),
    ("p99_max_ms", float("inf"), "is out of range"),
    ("cosine_min", True, "must be a number"),
    ("cosine_min", "0.98", "must be a number (without quotes)"),
    ("cosin_min", 0.98, "is not a gate"),
    ("expected_output_shapes", {"logits": "1x16"}, "must be a list of sizes"),
])
def test_bad_gates_are_refused(shipped, gate, limit, words):
    shipped["gates"][gate] = limit
    found = problems(**shipped)
    assert len(found) == 1 and f"sarai_validation_gates.{gate} = " in found[0] and words in found[0]


def test_null_disables_a_gate_and_zero_error_gates_are_allowed(shipped):
    shipped["gates"].update(cosine_min=1, mse_max=0, mae_max=0.0, speedup_min=None,
                            expected_output_shapes={"logits": [1, None, 1024]})
    assert problems(**shipped) == []


def test_every_problem_is_reported_at_once(shipped):
    catalog = shipped["catalog"]
    catalog["int8"]["file"] = "../../etc/agi.onnx"
    catalog["int8"]["max_memory_mb"] = "1200"
    catalog["int8"]["gates"] = {"speedup_min": "fast"}
    catalog["fp16"]["quantization"] = {"method": "fp16", "keep_io_types": "yes"}
    catalog["int4"]["quantization"] = {"method": "matmul_nbits", "bits": 3}
    catalog["bad-name"] = {"display_name": "", "file": "x.onnx", "max_memory_mb": 0, "quantization": {"method": "int2"}}
    shipped.update(target_variant="int9", batches=[0, "150%", "2"], groups={"all": [], "inference": []})
    shipped["paths"].update(sarai_root="opt/sarai", sarai_state_file="/etc/../tmp/x")
    shipped["keep"]["model_transfer_keep_releases"] = 0
    found = problems(**shipped)
    expected_starts = [
        "sarai_model_variants.int8.file = \"../../etc/agi.onnx\": must be a plain file name",
        "sarai_model_variants.int8.max_memory_mb = \"1200\": must be a positive whole number",
        "sarai_model_variants.int8.gates.speedup_min = \"fast\": must be a number",
        "sarai_model_variants.fp16.quantization.keep_io_types = \"yes\": must be true or false",
        "sarai_model_variants.int4.quantization = ",  # normalize_options: bits 3 is not supported
        "sarai_model_variants.bad-name = \"bad-name\": a variant name is letters, digits and _",
        "sarai_model_variants.bad-name.display_name = \"\": must be a non-empty string",
        "sarai_model_variants.bad-name.max_memory_mb = 0: must be a positive whole number",
        "sarai_model_variants.bad-name.quantization.method = \"int2\": is not a quantization method",
        "sarai_target_variant = \"int9\": is not a variant of sarai_model_variants; use one of bad-name, fp16, fp32, int4, int8",
        "sarai_rollout_batches[0] = 0: is not a batch size",
        "sarai_rollout_batches[1] = \"150%\": is not a batch size",
        "sarai_root = \"opt/sarai\": must be an absolute path",
        "sarai_state_file = \"/etc/../tmp/x\": must not contain '..'",
        "model_transfer_keep_releases = 0: must be a whole number >= 1",
        "groups.inference = []: inventory/production/hosts.yml has no host in group inference",
        "groups.quantizers = []: a deploy builds the model on exactly one host of group quantizers",
    ]
    assert len(found) == len(expected_starts), "\n".join(found)
    for text, start in zip(found, expected_starts):
        assert text.startswith(start), (text, start)
    assert "bits 3 is not supported" in found[4]
    message = inputs.describe("deploy", found)
    assert message.startswith("17 input problem(s) for the deploy; nothing was changed:\n1. ")


def test_inventory_without_quantizers_says_how_to_add_one(shipped):
    # Finding 7: this used to fail with "object of type 'dict' has no attribute 'quantizers'".
    del shipped["groups"]["quantizers"]
    [text] = problems(**shipped)
    assert text.startswith("groups.quantizers = []: a deploy builds the model on exactly one host of group "
                           "quantizers and inventory/production/hosts.yml has none; add the build host to group "
                           "quantizers in the inventory")
    # A rollback does not build: it needs no quantizers host.
    assert inputs.check_inputs("rollback", catalog=shipped["catalog"], groups=shipped["groups"])["problems"] == []


def test_two_build_hosts_are_refused(shipped):
    shipped["groups"]["quantizers"] = ["winbuild", "winbuild2"]
    assert "group quantizers has several" in problems(**shipped)[0]


def test_reference_must_be_unquantized(shipped):
    shipped["reference_variant"] = "int8"
    assert problems(**shipped) == ['sarai_reference_variant = "int8": its quantization method is dynamic_int8; the '
                                   "reference must be the unquantized model (method none); name the FP32 variant, e.g. fp32"]


def test_missing_catalog_and_target_say_where_to_define_them(shipped):
    found = problems(catalog=None, target_variant=None, reference_variant="fp32", groups=GROUPS)
    assert found[0].startswith("sarai_model_variants is not set: define the variant catalog")
    assert found[1].startswith("sarai_target_variant is not set: name the variant to use")


def test_rollback_is_not_blocked_by_build_only_inputs(shipped):
    catalog = shipped["catalog"]
    catalog["int8"]["gates"] = {"speedup_min": "fast"}
    catalog["int8"]["quantization"] = {"method": "int2"}
    assert problems(playbook="rollback", catalog=catalog, rollback_variant="fp32", groups=GROUPS) == []
    catalog["fp32"]["file"] = "models/agi_audio_core.onnx"
    found = problems(playbook="rollback", catalog=catalog, rollback_variant="fp64", groups=GROUPS)
    assert [t.split(" = ")[0] for t in found] == ["sarai_model_variants.fp32.file", "sarai_rollback_to"]


@pytest.mark.parametrize("value, batches", [
    (1, [1]), ("50%", ["50%"]), ("2", [2]), ([1, "100%"], [1, "100%"]), (None, None),
])
def test_batches_accepted(value, batches):
    assert inputs.check_batches(value) == ([], batches)


@pytest.mark.parametrize("value", [0, -1, True, "0%", "101%", "half", [], [1, None], 1.5])
def test_batches_refused(value):
    found, batches = inputs.check_batches(value)
    assert found and batches is None and "sarai_rollout_batches" in found[0]


def test_paths_and_counts_per_host_name_the_host():
    found = inputs.check_paths({"sarai_root": {"agi1": "/opt/sarai", "agi2": None, "agi3": "/"}})
    assert found == ["sarai_root (host agi2) is not set: set it to an absolute path in the inventory's "
                     "group_vars, e.g. /opt/sarai",
                     'sarai_root (host agi3) = "/": must not be / itself; set it to an absolute path in the '
                     "inventory's group_vars, e.g. /opt/sarai"]
    assert inputs.check_counts({"keep": {"agi1": 3, "agi2": "2", "agi3": "x"}}) == [
        'keep (host agi3) = "x": must be a whole number >= 1; keep at least 1 (the running release and '
        "sarai.yaml are always kept), e.g. 3"]


def test_unknown_variant_keys_are_warnings(shipped):
    shipped["catalog"]["int8"]["max_memmory_mb"] = 1200
    result = inputs.check_inputs(**shipped)
    assert result["problems"] == [] and "max_memmory_mb" in result["warnings"][0]


def test_gate_examples_cover_every_gate():
    from sarai_onnx.validate import GATES, SHAPES_GATE

    assert set(inputs.GATE_EXAMPLES) == set(GATES) | {SHAPES_GATE}


def test_module_fails_listing_every_problem_and_changes_nothing(shipped, capsys):
    shipped["gates"]["cosine_min"] = "high"
    del shipped["groups"]["quantizers"]
    code, result = run_module("sarai_check_inputs", dict(shipped, _ansible_check_mode=True), capsys)
    assert code == 1 and result["failed"] and not result["changed"] and len(result["problems"]) == 2
    assert result["msg"].startswith("2 input problem(s) for the deploy; nothing was changed:\n"
                                    '1. sarai_validation_gates.cosine_min = "high"')


def test_module_passes_and_warns(shipped, capsys):
    shipped["catalog"]["int8"]["notes"] = "x"
    code, result = run_module("sarai_check_inputs", dict(shipped, batches="25%"), capsys)
    assert code == 0 and not result["changed"] and result["batches"] == ["25%"]
    assert "int8 has key(s) notes that nothing reads" in str(result["warnings"])


@pytest.mark.parametrize("key,value,words", [
    ("min_quantized_share", 1.5, "must be a number between 0 and 1"),
    ("min_quantized_share", "0.5", "must be a number between 0 and 1"),
    ("min_quantized_share", True, "must be a number between 0 and 1"),
    ("allow_low_coverage", "yes", "must be true or false"),
])
def test_coverage_floor_is_checked_naming_variable_and_value(shipped, key, value, words):
    shipped["catalog"]["int8"][key] = value
    (found,) = problems(**shipped)
    assert found.startswith(f"sarai_model_variants.int8.{key} = {inputs.show(value)}: {words}")


def test_coverage_floor_keys_are_known_and_valid_values_pass(shipped):
    shipped["catalog"]["fp16"].update(min_quantized_share=0, allow_low_coverage=True)
    result = inputs.check_inputs(**shipped)
    assert result["problems"] == [] and result["warnings"] == []  # not "keys that nothing reads"


# ---------------------------------------------------------------- per-output gates (issue 14)

def test_per_output_and_agreement_gates_are_accepted(shipped):
    shipped["gates"].update(ignore=["stateN"], outputs={"speech": {"cosine_min": 0.99,
                                                                   "threshold": {"at": 0.5, "agreement_min": 0.99}}})
    shipped["catalog"]["int8"]["gates"] = {"outputs": {"logits": {"argmax": {"axis": -1, "agreement_min": 1}}}}
    assert inputs.check_inputs(**shipped)["problems"] == []


@pytest.mark.parametrize("gates, message", [
    ({"ignore": "stateN"}, "sarai_validation_gates.ignore='stateN' must be a list of output names"),
    ({"outputs": {"speech": {"threshold": {"at": 0.5, "agreement_min": 1.2}}}},
     r"sarai_validation_gates.outputs.speech.threshold.agreement_min=1.2 is out of range: it must be a number in [0, 1]"),
    ({"outputs": {"speech": {"argmax": {"axis": -1, "agreement_min": -0.5}}}}, "agreement_min=-0.5 is out of range"),
    ({"outputs": {"speech": {"threshold": {"agreement_min": 0.9}}}}, "threshold.at=None must be a finite number"),
    ({"outputs": {"speech": {"speedup_min": 2}}}, "has unknown gate(s) speedup_min"),
    ({"ignore": ["speech"], "outputs": {"speech": {"cosine_min": 0.9}}}, "is also in sarai_validation_gates.ignore"),
])
def test_bad_per_output_gates_are_refused_naming_the_variable(shipped, gates, message):
    shipped["gates"].update(gates)
    problems = inputs.check_inputs(**shipped)["problems"]
    assert len(problems) == 1 and problems[0].startswith("sarai_validation_gates = ") and message in problems[0]


def test_bad_per_output_gate_of_a_variant_names_the_variant(shipped):
    shipped["catalog"]["int8"]["gates"] = {"outputs": {"speech": {"cosine_min": 3}}}
    problems = inputs.check_inputs(**shipped)["problems"]
    assert len(problems) == 1 and "sarai_model_variants.int8.gates.outputs.speech.cosine_min=3 is out of range" in problems[0]


# ---------------------------------------------------------------- control characters (issue 16, finding 10)

@pytest.mark.parametrize("where, value", [
    (("int8", "display_name"), "Qwen3-Omni-3B-INT8\nmodel_path: /tmp/evil.onnx"),  # a key injected into sarai.yaml
    (("int8", "file"), "agi_audio_core_int8.onnx\n"),                               # `$` matched before the newline
    (("int8", "quantization", "weight_type"), "QInt8\t"),
])
def test_control_characters_in_the_catalog_are_refused_naming_the_variable(shipped, where, value):
    catalog = copy.deepcopy(shipped["catalog"])
    node = catalog
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    result = inputs.check_inputs(**dict(shipped, catalog=catalog))
    var = "sarai_model_variants." + ".".join(where)
    expected = f"{var} = {inputs.show(value)}: contains a control character"
    assert any(p.startswith(expected) for p in result["problems"]), result["problems"]


def test_model_file_and_variant_names_do_not_accept_a_trailing_newline():
    assert inputs.MODEL_FILE.match("agi_audio_core_int8.onnx") and not inputs.MODEL_FILE.match("agi_audio_core_int8.onnx\n")
    assert not inputs.VARIANT_NAME.match("int8\n") and not inputs.PERCENT.match("50%\n")


def test_a_variant_name_with_a_newline_is_refused(shipped):
    result = inputs.check_inputs(**dict(shipped, target_variant="int8\n"))
    assert any(p.startswith('sarai_target_variant = "int8\\n": contains a control character') for p in result["problems"])
