"""The sarai_rollback role on localhost (a real ansible-playbook run): a rollback that has no validated
release to land on refuses a fallback marked bad, and a corrupt state file stops it; in both cases
nothing changes - state file, sarai.yaml, release dirs (issue 16, findings 3 and 12). What a rollback
that does land switches to is proven on the lab (Molecule `faults`)."""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]

FP32 = {"id": "fp32-aaaaaaaaaaaa", "variant": "fp32", "model_name": "m.onnx",
        "catalog": {"display_name": "Reference", "max_memory_mb": 100}}
INT8 = [{"id": "int8-%s" % (str(n) * 12), "variant": "int8", "model_name": "m_int8.onnx",
         "catalog": {"display_name": "INT8", "max_memory_mb": 50}} for n in (1, 2, 3)]

PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Roll back as a failed deploy does
      ansible.builtin.include_role:
        name: sarai_rollback
      vars:
        sarai_rollback_state_file: {root}/state.fact
        sarai_rollback_config_path: {root}/config/sarai.yaml
        sarai_rollback_releases_dir: {root}/releases
        sarai_rollback_leaving: {leaving}
        sarai_rollback_fallback: {fallback}
        sarai_rollback_required: true
        sarai_service_name: sarai-test-does-not-exist
        sarai_state_file: {root}/state.fact
        sarai_config_path: {root}/config/sarai.yaml
        sarai_releases_dir: {root}/releases
        sarai_session_options: {{}}
"""


def snapshot_tree(path):
    """{relative name: (bytes, mode)} of everything under path (to prove nothing changed)."""
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else None, p.stat().st_mode)
            for p in sorted(pathlib.Path(path).rglob("*"))}


def _release_dir(root, release):
    directory = root / "releases" / release["id"]
    directory.mkdir(parents=True)
    (directory / release["model_name"]).write_bytes(b"model " + release["id"].encode())
    digest = hashlib.sha256((directory / release["model_name"]).read_bytes()).hexdigest()
    (directory / "MANIFEST.sha256").write_text("%s  %s\n" % (digest, release["model_name"]))


def _host(tmp_path, state_text):
    """A server on localhost: every release on disk and verifying, sarai.yaml naming int8-3, the state."""
    root = tmp_path / "host"
    for release in [FP32] + INT8:
        _release_dir(root, release)
    (root / "config").mkdir()
    (root / "config" / "sarai.yaml").write_text(
        "audio_omni:\n  model_path: %s/releases/%s/m_int8.onnx\n  deployment: {release: %s}\n"
        % (root, INT8[2]["id"], INT8[2]["id"]))
    (root / "state.fact").write_text(state_text)
    return root


def _rollback(tmp_path, root):
    playbook = tmp_path / "rollback.yml"
    playbook.write_text(PLAYBOOK.format(root=root, leaving=INT8[2]["id"], fallback=json.dumps(FP32)))
    ansible_playbook = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    run = subprocess.run([ansible_playbook, "-i", "localhost,", "-c", "local",
                          "-e", "ansible_python_interpreter=%s" % sys.executable, str(playbook)],
                         env=env, capture_output=True, text=True, timeout=300, check=False)
    return run.returncode, run.stdout + run.stderr


def test_fallback_marked_bad_is_refused_and_nothing_changes(tmp_path):
    # Finding 3: history has no good entry left (trimmed; int8-3 just failed) and the fallback, the
    # FP32 reference, is in bad_releases: the rollback must not switch to it.
    state = {"schema": 2, "history": [dict(INT8[2], event="deploy", time="T3", validated=False)],
             "bad_releases": [FP32["id"], INT8[0]["id"], INT8[1]["id"], INT8[2]["id"]]}
    root = _host(tmp_path, json.dumps(state, indent=2, sort_keys=True) + "\n")
    before = snapshot_tree(root)
    rc, out = _rollback(tmp_path, root)
    assert rc != 0, out
    assert "No release to roll back to on localhost, nothing changed" in out, out
    assert "and the fallback %s is marked bad" % FP32["id"] in out, out
    assert "SARAi still runs %s" % INT8[2]["id"] in out, out
    assert "TASK [sarai_switch" not in out, out
    assert snapshot_tree(root) == before  # state, sarai.yaml and every release as they were


def test_corrupt_state_stops_the_rollback_and_nothing_changes(tmp_path):
    # Finding 12: a hand-edited state whose bad_releases is a string (once split into characters).
    text = json.dumps({"schema": 2, "history": [dict(INT8[0], event="deploy", time="T1", validated=True)],
                       "bad_releases": INT8[2]["id"]})
    root = _host(tmp_path, text)
    before = snapshot_tree(root)
    rc, out = _rollback(tmp_path, root)
    assert rc != 0, out
    assert "state.fact is corrupt: \"bad_releases\" must be a list of release ids, found str" in out, out
    assert "move it aside" in out, out
    assert snapshot_tree(root) == before
