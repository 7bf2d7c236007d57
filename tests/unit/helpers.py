"""Helpers shared by the unit tests (imported as `helpers`; fixtures live in conftest.py)."""
from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHAPES = {"hidden_states": [1, 16, 256]}
OUTLIER_SHAPES = {"hidden_states": [1, 16, 64]}  # inputs of the talker_outliers fixture


def snapshot(path):
    """{relative name: bytes} of every file under path (to prove nothing changed)."""
    path = pathlib.Path(path)
    if not path.exists():
        return None
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def run_module(name, args, capsys):
    """Run library/<name>.py in-process with patched args; returns (exit code, result dict)."""
    from ansible.module_utils.common import warnings as module_warnings
    from ansible.module_utils.testing import patch_module_args

    from ansible.module_utils import _internal

    # Ansible runs each module in a fresh process, on the module side: no warnings left from earlier
    # tests, and module.warn() collecting into the result even when a test imported controller code
    # (ansible.template flips is_controller, which sends warnings to the display instead).
    module_warnings._global_warnings.clear()
    spec = importlib.util.spec_from_file_location(name, ROOT / "library" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    is_controller, _internal.is_controller = _internal.is_controller, False
    try:
        with patch_module_args(args), pytest.raises(SystemExit) as exit_info:
            module.main()
    finally:
        _internal.is_controller = is_controller
    return exit_info.value.code, json.loads(capsys.readouterr().out)


def cosine(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def ansible_adhoc(module, args, *extra, check=False):
    """Run `ansible localhost -m module -a args` as a user would; returns (rc, host result dict)."""
    env = dict(os.environ,
               ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
               ANSIBLE_LIBRARY=str(ROOT / "library"),
               ANSIBLE_MODULE_UTILS=str(ROOT / "module_utils"),
               ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
               ANSIBLE_STDOUT_CALLBACK="json")
    ansible = os.path.join(os.path.dirname(sys.executable), "ansible")
    cmd = [ansible, "localhost", "-i", "localhost,", "-c", "local",
           "-e", f"ansible_python_interpreter={sys.executable}", "-m", module, "-a", args, *extra]
    if check:
        cmd.append("--check")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    try:
        out = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"ansible printed no JSON: {proc.stdout}\n{proc.stderr}") from None
    return proc.returncode, out["plays"][0]["tasks"][0]["hosts"]["localhost"]


def make_release(base, variant="int8", data_size=4096, seed=0):
    """A release directory in the contract's layout, without onnx: random model/data bytes, a
    quantization.json recording their sizes, MANIFEST.sha256; named `<variant>-<sha12>`.
    Returns (release id, path, manifest sha256)."""
    import random

    from sarai_onnx import files

    rng = random.Random(seed)
    work = pathlib.Path(base) / f".build-{variant}-{seed}"
    work.mkdir(parents=True)
    model = f"agi_audio_core_{variant}.onnx"
    blobs = {model: rng.randbytes(512), model + ".data": rng.randbytes(data_size)}
    for name, blob in blobs.items():
        (work / name).write_bytes(blob)
    record = {"output": {"files": [{"name": n, "size": len(b)} for n, b in blobs.items()]}}
    (work / "quantization.json").write_text(json.dumps(record))
    listing = files.describe_files(str(work), sorted(os.listdir(work)))
    text = files.manifest_text(listing).encode()
    (work / files.MANIFEST_NAME).write_bytes(text)
    digest = files.sha256_bytes(text)
    release_id = f"{variant}-{digest[:12]}"
    final = pathlib.Path(base) / release_id
    work.rename(final)
    return release_id, str(final), digest


def flip_byte(path, offset=100):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x01]))
