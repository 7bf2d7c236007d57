#!/usr/bin/env python3
"""What the fidelity search costs and buys on a talker with outlier channels, measured in one run.

Builds a seeded FP32 talker whose MLPs carry massive-activation channels (tools/make_talker_model.py
--outliers), then runs the same sarai_onnx code the modules run (`python -m sarai_onnx`, one process
per step, its wall time and peak RSS measured):
  1. default dynamic INT8, validated against FP32 (it loses fidelity);
  2. dynamic INT8 with fidelity_target (the search), validated against FP32 (speed and fidelity).
Prints every trial of the search and one table.

    python benchmarks/fidelity_search.py [--hidden 1024] [--layers 6] [--vocab 8192] [--outliers 2]
        [--outlier-scale 1000] [--outlier-layers 1,4] [--seq 4] [--cosine-min 0.99] [--threads 0]
"""

import argparse
import os
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "tools"), os.path.join(ROOT, "benchmarks")]

from make_talker_model import build_talker_model  # noqa: E402
from results import machine, sarai_onnx, write_section  # noqa: E402




def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--outliers", type=int, default=2)
    ap.add_argument("--outlier-scale", type=float, default=1000.0)
    ap.add_argument("--outlier-layers", default="1,4")
    ap.add_argument("--seq", type=int, default=4, help="frames of the validation input (the lab validates 4)")
    ap.add_argument("--cosine-min", type=float, default=0.99, help="fidelity_target cosine_min")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--threads", type=int, default=0, help="intra_op_num_threads of validation (0 = all cores)")
    ap.add_argument("--results", help="write section (e) of this Markdown results file")
    ap.add_argument("--workdir", help="where to build (default: a temp dir, removed afterwards)")
    a = ap.parse_args(argv)

    before = machine()
    work = a.workdir or tempfile.mkdtemp(prefix="sarai-bench-fidelity-")
    os.makedirs(work, exist_ok=True)
    try:
        src = os.path.join(work, "fp32", "agi_audio_core.onnx")
        outlier_layers = [int(i) for i in a.outlier_layers.split(",") if i.strip()]
        built = build_talker_model(src, hidden=a.hidden, vocab=a.vocab, layers=a.layers, seed=0,
                                   outliers=a.outliers, outlier_scale=a.outlier_scale, outlier_layers=outlier_layers)
        shapes = {"hidden_states": [1, a.seq, a.hidden]}
        setup = (f"FP32 talker: hidden={a.hidden} layers={a.layers} vocab={a.vocab} outliers={a.outliers} "
                 f"x{a.outlier_scale:g} in layers {outlier_layers}, {built['size_bytes'] / 2**20:.0f} MiB; "
                 f"input [1, {a.seq}, {a.hidden}]; fidelity_target cosine_min {a.cosine_min}; validation with "
                 f"{a.threads or 'all'} thread(s), {a.runs} runs; load average {os.getloadavg()[0]:.1f} at the start.")
        print(setup, flush=True)
        validate = dict(reference=src, input_shapes=shapes, warmup=5, runs=a.runs,
                        session_options={"graph_optimization_level": "ORT_ENABLE_EXTENDED",
                                         "intra_op_num_threads": a.threads})
        rows = []
        trials = ["| trial | change | cosine | MSE | MAE | quantized share | passed | s |",
                  "|---|---|---:|---:|---:|---:|---|---:|"]
        for label, extra in (("default int8", {}),
                             ("int8 + search", {"fidelity_target": {"cosine_min": a.cosine_min},
                                                "input_shapes": shapes})):
            dest = os.path.join(work, label.replace(" ", "-").replace("+", "search"))
            q, q_rss, q_s = sarai_onnx("quantize", dict(src=src, dest=dest, method="dynamic_int8",
                                                        model_name="agi_audio_core_int8.onnx", **extra), work,
                                        allow_failed=True)
            if q.get("failed"):
                raise SystemExit(f"{label}: {q['msg']}")
            for t in q.get("search", []):
                trials.append(f"| {t['trial']} | {t['change']} | {t['cosine']:.5f} | {t['mse']:.2e} | {t['mae']:.4f} | "
                              f"{t['quantized_share']:.1%} | {'yes' if t['passed'] else 'no'} | {t['seconds']:.1f} |")
                print(trials[-1], flush=True)
            v, _, _ = sarai_onnx("validate", dict(validate, model=q["model_path"]), work)
            m, ref = v["metrics"], v["reference_metrics"]
            rows.append({"label": label, "step_s": q_s, "step_rss": q_rss, "trials": len(q.get("search", [])),
                         "excluded": q.get("excluded_nodes", []), "share": q["coverage"]["byte_share"],
                         "size_mib": q["size_bytes"] / 2**20, "cosine": m["cosine"], "mse": m["mse"],
                         "mae": m["mae"], "p50": m["p50_ms"], "fp32_p50": ref["p50_ms"], "speedup": m["speedup"]})
            shutil.rmtree(dest, ignore_errors=True)
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)

    end = f"Load average at the end: {os.getloadavg()[0]:.1f} (other work on the machine skews latency)."
    print(end)
    header = ("build", "step s", "step peak RSS MiB", "trials", "kept in FP32", "quantized share", "size MiB",
              "cosine", "MSE", "MAE", "p50 ms", "FP32 p50 ms", "speedup")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append(f"| {r['label']} | {r['step_s']:.1f} | {r['step_rss']:.0f} | {r['trials']} | "
              f"{', '.join(r['excluded']) or '-'} | {r['share']:.1%} | {r['size_mib']:.1f} | {r['cosine']:.5f} | "
              f"{r['mse']:.2e} | {r['mae']:.4f} | {r['p50']:.2f} | {r['fp32_p50']:.2f} | {r['speedup']:.2f}x |")
    print("\n" + "\n".join(lines))
    if a.results:
        write_section(a.results, "e", "\n\n".join([
            "## (e) Fidelity search on a talker with outlier channels (`benchmarks/fidelity_search.py`)",
            before, setup, "\n".join(lines), "\n".join(trials), end]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
