#!/usr/bin/env python3
"""What each quantization variant buys, measured side by side in one run.

Builds a seeded FP32 talker model (~320 MB by default), quantizes it to INT8 (dynamic), FP16 and
4-bit (MatMulNBits) with the same sarai_onnx code the modules run (as `python -m sarai_onnx`, one
lean process per step), validates each against the FP32 model in the same run (same inputs, same
session options) and prints one table.

    python benchmarks/quantize_variants.py [--size-mb 320] [--hidden 1024] [--seq 128] [--runs 20]
                                           [--results benchmarks/RESULTS.md]
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "tools"), os.path.dirname(os.path.abspath(__file__))]

from make_talker_model import build_talker_model  # noqa: E402
from results import layers_for, machine, sarai_onnx, write_section  # noqa: E402

VARIANTS = [
    ("int8", "dynamic_int8", {"weight_type": "QInt8"}),
    ("fp16", "fp16", {}),
    ("int4", "matmul_nbits", {"bits": 4, "block_size": 32}),
]




def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=float, default=320, help="approximate FP32 model size")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--layers", type=int, help="overrides --size-mb")
    ap.add_argument("--seq", type=int, default=128, help="sequence length of the test input")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="intra_op_num_threads (0 = all cores)")
    ap.add_argument("--workdir", help="where to build (default: a temp dir, removed afterwards)")
    ap.add_argument("--json", help="also write the rows as JSON to this file")
    ap.add_argument("--results", help="write section (b) of this Markdown results file")
    a = ap.parse_args(argv)

    layers = a.layers or layers_for(a.size_mb, a.hidden, a.vocab)
    before = machine()
    work = a.workdir or tempfile.mkdtemp(prefix="sarai-bench-")
    os.makedirs(work, exist_ok=True)
    try:
        src = os.path.join(work, "fp32", "agi_audio_core.onnx")
        t0 = time.perf_counter()
        built = build_talker_model(src, hidden=a.hidden, vocab=a.vocab, layers=layers, seed=0)
        setup = (f"FP32 talker: hidden={a.hidden} vocab={a.vocab} layers={layers} params={built['params']:,} "
                 f"size={built['size_bytes'] / 2**20:.0f} MiB (built in {time.perf_counter() - t0:.1f} s); "
                 f"input [1, {a.seq}, {a.hidden}], {a.runs} timed runs after {a.warmup} warmup, "
                 f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        print(setup, flush=True)
        session_options = {"graph_optimization_level": "ORT_ENABLE_ALL", "intra_op_num_threads": a.threads}
        shapes = {"hidden_states": [1, a.seq, a.hidden]}
        rows = []
        for variant, method, options in VARIANTS:
            dest = os.path.join(work, variant)
            q, _, _ = sarai_onnx("quantize", dict(src=src, dest=dest, method=method,
                                            model_name=f"agi_audio_core_{variant}.onnx", **options), work)
            v, _, _ = sarai_onnx("validate", dict(model=q["model_path"], reference=src, session_options=session_options,
                                            input_shapes=shapes, warmup=a.warmup, runs=a.runs), work)
            m, ref = v["metrics"], v["reference_metrics"]
            rows.append({"variant": variant, "method": method, "size_mib": q["size_bytes"] / 2**20,
                         "size_ratio": q["ratio"], "quantize_s": q["quantize_duration_s"],
                         "coverage": q["coverage"]["byte_share"], "p50_ms": m["p50_ms"],
                         "fp32_p50_ms": ref["p50_ms"], "speedup": m["speedup"], "cosine": m["cosine"],
                         "mse": m["mse"], "max_abs": m["max_abs"], "load_s": m["load_s"],
                         "peak_rss_mb": m["peak_rss_mb"], "fp32_peak_rss_mb": ref["peak_rss_mb"]})
            print(f"  {variant}: done", flush=True)
            shutil.rmtree(dest, ignore_errors=True)  # keep the disk footprint to one variant at a time
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)

    end = f"Load average at the end: {os.getloadavg()[0]:.1f} (other work on the machine skews latency)."
    print(end)
    header = ("variant", "size MiB", "size ratio", "quantize s", "coverage", "p50 ms", "FP32 p50", "speedup",
              "cosine", "MSE", "max abs", "load s", "peak RSS MiB", "FP32 RSS")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['size_mib']:.1f} | {r['size_ratio']:.3f} | {r['quantize_s']:.1f} | "
                     f"{r['coverage']:.0%} | {r['p50_ms']:.2f} | {r['fp32_p50_ms']:.2f} | {r['speedup']:.2f}x | "
                     f"{r['cosine']:.5f} | {r['mse']:.2e} | {r['max_abs']:.3f} | {r['load_s']:.2f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['fp32_peak_rss_mb']:.0f} |")
    print("\n" + "\n".join(lines))
    if a.results:
        write_section(a.results, "b", "\n\n".join([
            "## (b) INT8 / FP16 / INT4 against FP32 (`benchmarks/quantize_variants.py`)", before, setup + ".",
            "Each variant built with the default engine, then validated against the FP32 model in the same run "
            "(onnx_validate: same inputs, same session options; peak RSS is the inference process's).",
            "\n".join(lines), end]))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
