#!/usr/bin/env python3
"""INT8 on real trained models: silero-vad's shipped ONNX files on real speech, states carried.

silero-vad (PyPI, installed without its torch dependency: `make bench` does
`pip install --no-deps silero-vad`) ships several exports of one trained recurrent VAD: weights as
Constant nodes inside If branches, an op15 graph, an If-less op18 graph, an FP16 one. Each is run
on ~27 s of espeak-ng speech between silence and noise (benchmarks/speech_audio.py), window by
window with its state carried (`state_map`), by the same code the modules run
(`python -m sarai_onnx`, one measured process per step):
  1. default dynamic INT8 (built even below the coverage floor, to show what it quantized);
  2. the searched build: fidelity_target on the speech probability alone (its speech/non-speech
     decision at 0.5 must agree with FP32's on 99% of the windows; the state output is ignored);
  3. both validated against FP32 over the whole sequence: quantized share, per-output cosine,
     decision agreement, speedup with its 95% interval.
A build that breaks the decisions is shown failing; nothing here is asserted.

    python benchmarks/silero_bench.py [--results benchmarks/RESULTS.md] [--runs 50] [--files a.onnx,b.onnx]
"""

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "benchmarks")]

import numpy as np  # noqa: E402  (the heavy imports stay in the measured children but numpy)

from results import machine, sarai_onnx, write_section  # noqa: E402
from speech_audio import speech_stream, windows  # noqa: E402

FILES = ("silero_vad.onnx", "silero_vad_16k_op15.onnx", "silero_vad_op18_ifless.onnx", "silero_vad_half.onnx")
DECISION = {"threshold": {"at": 0.5, "agreement_min": 0.99}}


def data_dir():
    spec = importlib.util.find_spec("silero_vad")  # finds the package without importing it (and torch)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("silero-vad is not installed: pip install --no-deps silero-vad (make bench does it)")
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


def stream_npz(path, model_path, frames):
    """The .npz validation reads: every non-state input with a leading window axis, the state's first value."""
    import onnx

    names = [i.name for i in onnx.load(model_path, load_external_data=False).graph.input]
    arrays = {"input": frames, "state": np.zeros((2, 1, 128), np.float32)}  # the state before the first window
    if "sr" in names:
        arrays["sr"] = np.full((len(frames),), 16000, np.int64)
    np.savez(path, **arrays)


def gates(cosine_min=None):
    out = {"ignore": ["stateN"], "outputs": {"output": dict(DECISION)}}
    if cosine_min is not None:
        out["cosine_min"] = cosine_min
    return out


def row(label, build, check):
    m = check["metrics"]
    per = m.get("outputs", {})
    agree = next((g["value"] for g in check["gate_results"] if g["gate"] == "threshold"), None)
    low, high = m["speedup_ci95"]
    cov = build.get("coverage", {})
    return (f"| {label} | {cov.get('byte_share', 0):.1%} | {per.get('output', {}).get('cosine', float('nan')):.4f} | "
            f"{per.get('output', {}).get('max_abs', float('nan')):.3f} | {per.get('stateN', {}).get('cosine', float('nan')):.4f} | "
            f"{agree if agree is None else f'{agree:.1%}'} | {m['speedup']:.2f}x [{low:.2f}, {high:.2f}] | "
            f"{'passed' if check['passed'] else 'FAILED: ' + check['msg'].replace('|', '/')} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", default=",".join(FILES), help="which shipped files (comma-separated)")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--results", help="write section (f) of this Markdown results file")
    a = ap.parse_args(argv)

    before = machine()
    samples, mask = speech_stream()
    frames, labels = windows(samples, mask)
    setup = (f"Audio: {len(samples) / 16000:.1f} s of espeak-ng speech (es, en) between silence and noise, 16 kHz, "
             f"{len(frames)} windows of 512 samples (+64 of context), {labels.mean():.0%} of them speech by "
             f"construction; state carried window to window (`state_map: {{state: stateN}}`); validation "
             f"{a.runs} timed runs per model, alternating; gates: `output` decision at 0.5 agreeing on >= 99% "
             f"of the windows, `stateN` ignored; the verdict is those gates' (no speed gate: the speedup is shown).")
    print(setup, flush=True)
    header = ["| file / build | quantized share | `output` cosine | `output` max abs | `stateN` cosine | "
              "decisions agreeing | speedup [95% CI] | verdict |", "|---|---:|---:|---:|---:|---:|---|---|"]
    lines, speeds = list(header), []
    work = tempfile.mkdtemp(prefix="sarai-bench-silero-")
    try:
        for name in [f for f in a.files.split(",") if f]:
            src_dir = os.path.join(work, name.replace(".onnx", ""))
            os.makedirs(os.path.join(src_dir, "fp32"))
            src = os.path.join(src_dir, "fp32", name)
            shutil.copy(os.path.join(data_dir(), name), src)
            npz = os.path.join(src_dir, "stream.npz")
            stream_npz(npz, src, frames)
            validate = dict(reference=src, inputs=npz, state_map={"state": "stateN"}, gates=gates(),
                            warmup=5, runs=a.runs, speed_budget_s=20, session_options={"intra_op_num_threads": 1})
            builds = (("default INT8", {"allow_low_coverage": True}),
                      ("searched INT8", {"fidelity_target": gates(), "inputs": npz, "state_map": {"state": "stateN"},
                                         "allow_low_coverage": True}))
            for label, extra in builds:
                dest = os.path.join(src_dir, label.split()[0])
                built, _, seconds = sarai_onnx("quantize", dict(src=src, dest=dest, method="dynamic_int8",
                                                                model_name=name, **extra), work, allow_failed=True)
                if built.get("failed"):
                    lines.append(f"| {name}: {label} | - | - | - | - | - | - | build FAILED: "
                                 f"{built['msg'][:300].replace('|', '/')} |")
                    print(lines[-1], flush=True)
                    continue
                checked, _, _ = sarai_onnx("validate", dict(validate, model=built["model_path"]), work,
                                           allow_failed=True)
                if checked.get("failed") and "metrics" not in checked:
                    raise SystemExit(f"{name} {label}: validation could not run: {checked['msg']}")
                speeds.append(checked["metrics"]["speedup_ci95"])
                lines.append(row(f"{name}: {label}" + (f" ({', '.join(built.get('excluded_nodes', []))} in FP32)"
                                                       if built.get("excluded_nodes") else ""), built, checked))
                print(lines[-1], f"(build {seconds:.1f} s)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    slower = sum(1 for r in speeds if r[1] < 1.0)
    end = (f"{slower} of the {len(speeds)} INT8 builds validated run slower than FP32 (the whole 95% interval below "
           f"1.0x). Load average at the end: {os.getloadavg()[0]:.1f} (other work on the machine widens the intervals).")
    print(end)
    if a.results:
        write_section(a.results, "f", "\n\n".join([
            "## (f) INT8 on silero-vad's shipped models, real speech, state carried (`benchmarks/silero_bench.py`)",
            before, setup, "\n".join(lines), end]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
