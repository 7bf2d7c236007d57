#!/usr/bin/env python3
"""Lab stand-in for the SARAi service (a test double, not part of the product).

    sarai_standin.py --config /opt/sarai/config/sarai.yaml --port 8101 [--status /run/sarai/status.json]

Reads `audio_omni.model_path` and `audio_omni.session_options` from sarai.yaml, loads the model with
onnxruntime, runs one inference on generated inputs that match the model's input signature, then
writes the status file, binds GET /health on 127.0.0.1:<port> and tells systemd READY=1
(Type=notify). The status and the health answer are the same JSON: model_path, sha256 of the model
file, load_s, first_inference_s, pid (plus a few descriptive fields).

Anything that goes wrong before READY (config unreadable, model missing or not loadable, inference
fails, port taken) exits non-zero with the reason on stderr, so `systemctl restart sarai` fails and
the journal says why: a bad deploy is visible to systemd.

Fault for the tests (off by default): `--die-after-s N [--die-if-model-contains TEXT]`, or the
environment variables SARAI_STANDIN_DIE_AFTER_S / SARAI_STANDIN_DIE_IF_MODEL_CONTAINS (a systemd
drop-in sets them without touching the unit), exits N s after READY when the model path contains
TEXT: the real service that dies while it loads a model too big for the server, after systemd
already said `active` (and health, here, answered).
"""

import argparse
import hashlib
import json
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

EXIT_CONFIG = 2
EXIT_MODEL = 3
EXIT_PORT = 4
EXIT_LATE = 5

# onnxruntime type strings -> numpy dtype names
_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}
# Symbolic dimensions: the first (batch) becomes 1, any other (sequence, ...) becomes 8.
_BATCH, _OTHER = 1, 8
SAMPLE_RATE = 16000


def log(msg):
    print(f"sarai-standin: {msg}", file=sys.stderr, flush=True)


def die(code, msg):
    log(msg)
    sys.exit(code)


def sd_notify(message):
    """Send one datagram to $NOTIFY_SOCKET (no python-systemd needed). False when not under systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(addr)
        sock.sendall(message.encode())
    return True


def sha256_file(path, chunk=4 * 1024 * 1024):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def read_config(path):
    import yaml

    try:
        with open(path) as fh:
            cfg = yaml.safe_load(fh)
    except OSError as exc:
        die(EXIT_CONFIG, f"cannot read config {path}: {exc}")
    except yaml.YAMLError as exc:
        die(EXIT_CONFIG, f"config {path} is not valid YAML: {exc}")
    omni = (cfg or {}).get("audio_omni") if isinstance(cfg, dict) else None
    if not isinstance(omni, dict) or not omni.get("model_path"):
        die(EXIT_CONFIG, f"config {path} has no audio_omni.model_path")
    if not os.path.isabs(omni["model_path"]):
        die(EXIT_CONFIG, f"audio_omni.model_path must be absolute, got {omni['model_path']!r}")
    return omni


def session_options(ort, options):
    """Map sarai.yaml session_options onto onnxruntime.SessionOptions; unknown keys are an error."""
    so = ort.SessionOptions()
    for key, value in (options or {}).items():
        if key == "graph_optimization_level":
            so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, str(value))
        elif key == "execution_mode":
            so.execution_mode = getattr(ort.ExecutionMode, str(value))
        elif key in ("intra_op_num_threads", "inter_op_num_threads", "log_severity_level"):
            setattr(so, key, int(value))
        elif key in ("enable_cpu_mem_arena", "enable_mem_pattern", "enable_mem_reuse"):
            setattr(so, key, bool(value))
        elif hasattr(so, key):
            setattr(so, key, value)
        else:
            raise ValueError(f"unknown session option {key!r}")
    return so


def make_inputs(np, session):
    feeds = {}
    for inp in session.get_inputs():
        dtype = _DTYPES.get(inp.type)
        if dtype is None:
            raise ValueError(f"input {inp.name!r} has unsupported type {inp.type}")
        shape = [d if isinstance(d, int) and d > 0 else (_BATCH if i == 0 else _OTHER)
                 for i, d in enumerate(inp.shape)]
        if dtype.startswith("float"):
            rng = np.random.default_rng(0)
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == "bool":
            feeds[inp.name] = np.ones(shape, dtype=dtype)
        elif inp.name in ("sr", "sample_rate"):
            feeds[inp.name] = np.full(shape, SAMPLE_RATE, dtype=dtype)
        else:
            feeds[inp.name] = np.ones(shape, dtype=dtype)
    return feeds


def load_and_infer(omni):
    import numpy as np
    import onnxruntime as ort

    model_path = omni["model_path"]
    if not os.path.isfile(model_path):
        die(EXIT_MODEL, f"model {model_path} does not exist")
    try:
        so = session_options(ort, omni.get("session_options"))
    except (AttributeError, ValueError, TypeError) as exc:
        die(EXIT_CONFIG, f"bad audio_omni.session_options: {exc}")
    try:
        t0 = time.perf_counter()
        session = ort.InferenceSession(model_path, sess_options=so, providers=["CPUExecutionProvider"])
        load_s = time.perf_counter() - t0
        feeds = make_inputs(np, session)
        t0 = time.perf_counter()
        outputs = session.run(None, feeds)
        first_inference_s = time.perf_counter() - t0
    except Exception as exc:  # onnxruntime raises several unrelated types
        die(EXIT_MODEL, f"cannot load or run {model_path}: {type(exc).__name__}: {exc}")
    return dict(
        model_path=model_path,
        sha256=sha256_file(model_path),
        load_s=round(load_s, 4),
        first_inference_s=round(first_inference_s, 4),
        pid=os.getpid(),
        name=omni.get("name"),
        session_options=omni.get("session_options") or {},
        deployment=omni.get("deployment"),
        inputs={k: list(v.shape) for k, v in feeds.items()},
        output_shapes=[list(o.shape) for o in outputs],
        onnxruntime=ort.__version__,
    )


def write_status(path, status):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(status, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)


def make_server(port, status):
    body = (json.dumps(status, sort_keys=True) + "\n").encode()

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server API)
            if self.path.split("?")[0] not in ("/health", "/status"):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *args):
            pass

    try:
        return ThreadingHTTPServer(("127.0.0.1", port), Health)
    except OSError as exc:
        die(EXIT_PORT, f"cannot listen on 127.0.0.1:{port}: {exc}")


def die_later(after_s, model_path, only_if):
    """The late-death fault: exit EXIT_LATE `after_s` seconds from now if `only_if` is in model_path."""
    if after_s <= 0 or only_if not in model_path:
        return
    def die():
        log(f"fault: dying {after_s:g} s after ready (--die-after-s), as a model that cannot finish loading")
        os._exit(EXIT_LATE)
    threading.Timer(after_s, die).start()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="sarai.yaml")
    ap.add_argument("--port", type=int, required=True, help="health port on 127.0.0.1")
    ap.add_argument("--status", default="/run/sarai/status.json", help="status file")
    ap.add_argument("--die-after-s", type=float, default=float(os.environ.get("SARAI_STANDIN_DIE_AFTER_S") or 0),
                    help="test fault: exit this many seconds after READY (0: never)")
    ap.add_argument("--die-if-model-contains", default=os.environ.get("SARAI_STANDIN_DIE_IF_MODEL_CONTAINS", ""),
                    help="test fault: only when the model path contains this text")
    args = ap.parse_args(argv)

    omni = read_config(args.config)
    log(f"loading {omni['model_path']}")
    status = load_and_infer(omni)
    status["config_path"] = args.config
    write_status(args.status, status)
    server = make_server(args.port, status)

    def stop(signum, _frame):
        log(f"signal {signum}: stopping")
        sd_notify("STOPPING=1")
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sd_notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=serving {status['model_path']}")
    log(f"ready: {status['model_path']} sha256={status['sha256'][:12]} load_s={status['load_s']} "
        f"first_inference_s={status['first_inference_s']} health=127.0.0.1:{args.port}")
    die_later(args.die_after_s, status["model_path"], args.die_if_model_contains)
    server.serve_forever(poll_interval=0.5)
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
