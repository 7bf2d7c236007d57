"""The lab stand-in's late-death fault (tests/lab/sarai_standin.py --die-after-s), which the Molecule
`faults` scenario uses for issue 16, finding 6: it serves (health 200) and then exits EXIT_LATE, only
for a model path containing the given text."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

from helpers import ROOT

STANDIN = ROOT / "tests" / "lab" / "sarai_standin.py"


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(tmp_path, model, *fault):
    config = tmp_path / "sarai.yaml"
    config.write_text("audio_omni:\n  model_path: %s\n" % model)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(STANDIN), "--config", str(config), "--port", str(port),
                             "--status", str(tmp_path / "status.json"), *fault],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/health" % port, timeout=2) as answer:
                return proc, answer.status, json.load(answer)
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the stand-in never served: %s" % proc.communicate()[1])
            time.sleep(0.2)


def test_standin_serves_then_dies_late_on_the_model_named(tmp_path, tiny_talker):
    proc, status, health = _start(tmp_path, tiny_talker, "--die-after-s", "1", "--die-if-model-contains", "tiny")
    served_at = time.monotonic()
    assert status == 200 and health["model_path"] == tiny_talker
    assert proc.wait(timeout=30) == 5
    assert time.monotonic() - served_at < 30
    assert "fault: dying 1 s after ready" in proc.stderr.read()


def test_standin_keeps_serving_another_model(tmp_path, tiny_talker):
    proc, status, health = _start(tmp_path, tiny_talker, "--die-after-s", "1", "--die-if-model-contains", "/fp16-")
    try:
        assert status == 200
        time.sleep(2)
        assert proc.poll() is None  # still up past the fault's delay
    finally:
        proc.terminate()
        proc.wait(timeout=30)
