"""Bad input stops deploy_int8.yml and rollback.yml in their first play, on the controller, before
any server is contacted (issue 10, findings 3 and 7). The inventories point their servers at
addresses nothing listens on: a run that got past the check would fail differently (unreachable),
and the output is checked for the later plays too."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
CATALOG = ROOT / "inventory" / "production" / "group_vars" / "all" / "sarai.yml"

# Servers on a port nothing listens on; `quantizers` only where a test wants it.
HOSTS = """
all:
  vars:
    ansible_host: 127.0.0.1
    ansible_port: 9
    sarai_root: /opt/sarai
    sarai_build_dir: /srv/sarai-build
  children:
    inference:
      hosts:
        server1: {{}}
{quantizers}
"""
QUANTIZERS = """    quantizers:
      hosts:
        builder: {}
"""


def _inventory(tmp_path, with_quantizers):
    inventory = tmp_path / "inventory"
    (inventory / "group_vars" / "all").mkdir(parents=True)
    (inventory / "hosts.yml").write_text(HOSTS.format(quantizers=QUANTIZERS if with_quantizers else ""))
    (inventory / "group_vars" / "all" / "sarai.yml").symlink_to(CATALOG)
    return str(inventory)


def _run(inventory, playbook, *extra):
    ansible_playbook = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    return subprocess.run([ansible_playbook, "-i", inventory, str(ROOT / playbook), *extra], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def _refused_in_first_play(run):
    out = run.stdout + run.stderr
    assert run.returncode != 0, out
    assert "input problem(s)" in out and "nothing was changed" in out, out
    # The check play is the only one that ran: no later play started, no server was reached.
    assert out.count("PLAY [") == 1, out
    assert "UNREACHABLE" not in out, out
    return out


def test_inventory_without_quantizers_is_refused_by_name(tmp_path):
    out = _refused_in_first_play(_run(_inventory(tmp_path, False), "playbooks/deploy_int8.yml"))
    assert "groups.quantizers" in out and "has none" in out, out
    assert "has no attribute" not in out, out


def test_gate_of_the_wrong_type_is_refused_before_any_switch(tmp_path):
    out = _refused_in_first_play(_run(_inventory(tmp_path, True), "playbooks/deploy_int8.yml",
                                      "-e", '{"sarai_validation_gates": {"cosine_min": "high"}}'))
    assert 'sarai_validation_gates.cosine_min = "high": must be a number' in out, out


def test_deploy_lists_every_problem_at_once(tmp_path):
    out = _refused_in_first_play(_run(_inventory(tmp_path, True), "playbooks/deploy_int8.yml",
                                      "-e", "sarai_target_variant=int9", "-e", "sarai_root=relative/path",
                                      "-e", '{"sarai_rollout_batches": [0]}'))
    # The variant, the batch, and sarai_root with the two paths derived from it.
    assert "5 input problem(s)" in out, out
    for named in ('sarai_target_variant = "int9"', "sarai_rollout_batches[0] = 0", "sarai_root (host server1)",
                  "sarai_releases_dir (host server1)", "sarai_config_path (host server1)"):
        assert named in out, out


def test_rollback_refuses_an_unknown_variant_and_ignores_gates(tmp_path):
    inventory = _inventory(tmp_path, False)
    out = _refused_in_first_play(_run(inventory, "playbooks/rollback.yml", "-e", "sarai_rollback_to=int9",
                                      "-e", '{"sarai_validation_gates": {"cosine_min": "high"}}'))
    assert "1 input problem(s) for the rollback" in out, out
    assert 'sarai_rollback_to = "int9"' in out, out
