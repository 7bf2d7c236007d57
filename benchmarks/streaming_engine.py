#!/usr/bin/env python3
"""Streaming vs onnxruntime engine of onnx_quantize, measured side by side in one run.

For a ~400 MB and a >= 1.5 GB seeded FP32 talker model, each build runs alone in a child process
(`python -m sarai_onnx quantize`, the code the module runs, load check and hashing included) and is
measured from outside: peak RSS (os.wait4 ru_maxrss) as a multiple of the FP32 size, and wall
time. The two engines' releases are then compared: same files (sha256), and the max abs
difference of their outputs on the same input (onnx_validate, one process per model). matmul_nbits
is built twice (its default 4-bit blocks of 32 with zero points, and the issue 15 candidate: 8-bit
symmetric blocks of 128, accuracy_level 4); none (one engine) is measured too, for the README's
memory table. Finally the acceptance command itself:
`ansible localhost -m onnx_quantize -a 'src=... dest=... method=dynamic_int8'`.

    python benchmarks/streaming_engine.py [--small-mb 400] [--large-mb 1600] [--results benchmarks/RESULTS.md]
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.dirname(os.path.abspath(__file__))]

# This process measures its children and must stay small (see results.run_measured): it imports
# neither numpy nor onnx, and builds the models in a child too.
from results import layers_for, machine, rss_mib, run_measured, sarai_onnx, write_section  # noqa: E402

MODULE_UTILS = os.path.join(ROOT, "module_utils")
VOCAB = 8192
NBITS_8 = {"bits": 8, "block_size": 128, "symmetric": True, "accuracy_level": 4}
# (method, label of its options, options): each built by both engines, then none copied.
BUILDS = [("dynamic_int8", "dynamic_int8", {}), ("fp16", "fp16", {}),
          ("matmul_nbits", "matmul_nbits", {}), ("matmul_nbits", "matmul_nbits 8-bit sym b128 al4", NBITS_8)]
STEPS = [(method, label, options, engine) for method, label, options in BUILDS
         for engine in ("onnxruntime", "streaming")] + [("none", "none", {}, "copy")]
# What the issues accept (numbers measured here, not in unit tests): peak RSS as a multiple of FP32.
LIMITS = {"dynamic_int8": 0.5, "fp16": 0.75, "matmul_nbits": 0.5, "matmul_nbits 8-bit sym b128 al4": 0.5}




def ansible_quantize(args, workdir):
    """The acceptance command, as a user types it; (module result, peak RSS MiB of the tree, wall s)."""
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
               ANSIBLE_STDOUT_CALLBACK="json", ANSIBLE_LIBRARY=os.path.join(ROOT, "library"),
               ANSIBLE_MODULE_UTILS=MODULE_UTILS)
    ansible = os.path.join(os.path.dirname(sys.executable), "ansible")
    cmd = [ansible, "localhost", "-i", "localhost,", "-c", "local", "-e",
           f"ansible_python_interpreter={sys.executable}", "-m", "onnx_quantize", "-a", args]
    out, err, code, peak, wall = run_measured(cmd, cwd=workdir, env=env)
    result = json.loads(out)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    if code or result.get("failed"):
        raise SystemExit(f"ansible onnx_quantize failed: {result.get('msg')}\n{err[-2000:]}")
    return result, peak, wall


def bench_model(model_label, size_mb, hidden, work, seq):
    layers = layers_for(size_mb, hidden, VOCAB)
    src = os.path.join(work, "fp32", "agi_audio_core.onnx")
    out, err, code, _, _ = run_measured([sys.executable, os.path.join(ROOT, "tools", "make_talker_model.py"),
                                         "--out", src, "--hidden", str(hidden), "--vocab", str(VOCAB),
                                         "--layers", str(layers), "--seed", "0"])
    if code:
        raise SystemExit(f"make_talker_model failed: {err[-2000:]}")
    fp32 = json.loads(out)["size_bytes"]
    print(f"{model_label}: hidden {hidden}, {layers} layers, vocab {VOCAB}: {fp32 / 2**20:.0f} MiB FP32", flush=True)
    rows, releases = [], {}
    for method, label, options, engine in STEPS:
        dest = os.path.join(work, f"{label.replace(' ', '_')}-{engine}")
        params = dict(src=src, dest=dest, method=method, **options)
        if engine != "copy":
            params["engine"] = engine
        result, peak, wall = sarai_onnx("quantize", params, work)
        assert result["engine"] == engine, result
        row = {"model": model_label, "fp32_mib": fp32 / 2**20, "method": label, "engine": engine, "peak_rss_mib": peak,
               "rss_x_fp32": peak * 2**20 / fp32, "self_reported_peak_mib": result["peak_rss_mb"],
               "step_s": wall, "quantize_s": result["quantize_duration_s"], "output_mib": result["size_bytes"] / 2**20,
               "files": result["files"]}
        rows.append(row)
        print(f"  {label} / {engine}: peak {peak:.0f} MiB ({row['rss_x_fp32']:.2f}x), {wall:.1f} s", flush=True)
        releases[(label, engine)] = result
        if (label, "onnxruntime") in releases and (label, "streaming") in releases:
            ours, ref = releases.pop((label, "streaming")), releases.pop((label, "onnxruntime"))
            check, _, _ = sarai_onnx("validate", dict(model=ours["model_path"], reference=ref["model_path"],
                                                      input_shapes={"hidden_states": [1, seq, hidden]},
                                                      warmup=1, runs=20), work)
            rows[-1]["same_files"] = ours["files"] == ref["files"]
            rows[-1]["max_abs"] = check["metrics"]["max_abs"]
            rows[-1]["ort_step_s"] = next(r["step_s"] for r in rows if r["method"] == label
                                          and r["engine"] == "onnxruntime")
            shutil.rmtree(ours["dest"])
            shutil.rmtree(ref["dest"])
        elif engine not in ("onnxruntime", "streaming"):
            shutil.rmtree(dest)
    return src, fp32, rows


def table(rows):
    head = ("model", "method", "engine", "peak RSS MiB", "x FP32", "step s", "quantize s", "output MiB",
            "same files as onnxruntime", "max abs diff")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        same = {True: "yes", False: "NO"}.get(r.get("same_files"), "")
        diff = f"{r['max_abs']:.2e}" if "max_abs" in r else ""
        lines.append(f"| {r['model']} ({r['fp32_mib']:.0f} MiB) | {r['method']} | {r['engine']} | "
                     f"{r['peak_rss_mib']:.0f} | {r['rss_x_fp32']:.2f} | {r['step_s']:.1f} | {r['quantize_s']:.1f} | "
                     f"{r['output_mib']:.0f} | {same} | {diff} |")
    return "\n".join(lines)


def acceptance(rows, large_label):
    out = []
    for method, limit in LIMITS.items():
        r = next(r for r in rows if r["model"] == large_label and r["method"] == method and r["engine"] == "streaming")
        checks = [f"peak RSS {r['rss_x_fp32']:.2f}x FP32 <= {limit}x: {'PASS' if r['rss_x_fp32'] <= limit else 'FAIL'}",
                  f"same files as onnxruntime's (sha256 of model and data): {'PASS' if r['same_files'] else 'FAIL'}"]
        if method == "dynamic_int8":
            ok = r["step_s"] <= r["ort_step_s"]
            checks.append(f"wall {r['step_s']:.1f} s <= onnxruntime engine's {r['ort_step_s']:.1f} s: "
                          f"{'PASS' if ok else 'FAIL'}")
        checks.append(f"max abs output difference {r['max_abs']:.2e} <= 1e-5: {'PASS' if r['max_abs'] <= 1e-5 else 'FAIL'}")
        out.append(f"- {method}, streaming, {large_label}: " + "; ".join(checks))
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small-mb", type=float, default=400)
    ap.add_argument("--large-mb", type=float, default=1600)
    ap.add_argument("--seq", type=int, default=16, help="sequence length of the comparison input")
    ap.add_argument("--workdir", help="where to build (default: a temp dir, removed afterwards)")
    ap.add_argument("--results", help="write section (a) of this Markdown results file")
    a = ap.parse_args(argv)

    work = a.workdir or tempfile.mkdtemp(prefix="sarai-bench-engines-")
    os.makedirs(work, exist_ok=True)
    before = machine()
    rows, commands = [], []
    try:
        models = [(f"~{a.small_mb:.0f} MB", a.small_mb, 1024), (f">={a.large_mb / 1000:.1f} GB", a.large_mb, 2048)]
        for label, size_mb, hidden in models:
            src, fp32, model_rows = bench_model(label, size_mb, hidden, os.path.join(work, "m"), a.seq)
            rows += model_rows
            engine_arg = "" if size_mb == a.large_mb else " engine=onnxruntime"
            args = f"src={src} dest={os.path.join(work, 'ansible-int8')} method=dynamic_int8{engine_arg}"
            result, peak, wall = ansible_quantize(args, work)
            commands.append(f"- `ansible localhost -m onnx_quantize -a 'src=... dest=... method=dynamic_int8"
                            f"{engine_arg}'` on {label}: changed={result['changed']}, engine={result['engine']}, "
                            f"module peak_rss_mb={result['peak_rss_mb']} ({result['peak_rss_mb'] * 2**20 / fp32:.2f}x "
                            f"FP32), whole `ansible` process tree {peak:.0f} MiB, {wall:.1f} s")
            print(commands[-1], flush=True)
            shutil.rmtree(os.path.join(work, "m"))
            shutil.rmtree(os.path.join(work, "ansible-int8"))
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)

    large_label = models[1][0]
    body = "\n\n".join([
        "## (a) Streaming vs onnxruntime engine (`benchmarks/streaming_engine.py`)",
        before,
        "Each build runs alone in a child process (`python -m sarai_onnx quantize`, the module's code: hashing, "
        "quantization, load check, manifest); peak RSS is the child's ru_maxrss (os.wait4), x FP32 its multiple of "
        "the FP32 model's size, step s its wall time, quantize s the engine's own part. The streaming row of each "
        "method compares its release with the onnxruntime engine's: same files (sha256 of model and data), and the "
        "max abs difference of their outputs on the same input (onnx_validate). The measuring parent stays "
        f"small ({rss_mib():.0f} MiB: Linux carries a parent's high-water mark into the children it starts).",
        table(rows),
        "Acceptance (issue 7; matmul_nbits: issue 15):\n\n" + acceptance(rows, large_label),
        "The module as a user runs it:\n\n" + "\n".join(commands),
        f"At the end: load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}.",
    ])
    print("\n" + body)
    print(f"(this measuring process: {rss_mib():.0f} MiB resident)")
    if a.results:
        write_section(a.results, "a", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
