#!/usr/bin/env python3
"""What the fidelity search chooses on a talker with outlier channels, every candidate timed side by side.

Builds a seeded FP32 talker whose MLPs carry massive-activation channels (tools/make_talker_model.py
--outliers), then runs the same sarai_onnx code the modules run (`python -m sarai_onnx`, one process
per step, its wall time and peak RSS measured):
  1. default dynamic INT8 (it loses fidelity);
  2. the fidelity search (fidelity_target cosine_min, every candidate kind), which times its passing
     candidates itself and builds the fastest;
  3. every candidate the search tried, rebuilt from its recorded method and options and timed here side
     by side with FP32 (race.time_side_by_side: one process, alternating rounds, ORT_ENABLE_EXTENDED,
     spinning off), so the table shows the speed of the failing ones too.
Writes one RESULTS.md section per input length (--seq), so runs at T=4 and T=128 sit side by side.

    python benchmarks/fidelity_search.py [--hidden 1024] [--layers 6] [--vocab 8192] [--outliers 2]
        [--outlier-scale 1000] [--outlier-layers 1,4] [--seq 4] [--cosine-min 0.99] [--rounds 20]
"""

import argparse
import os
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "tools"), os.path.join(ROOT, "benchmarks"), os.path.join(ROOT, "module_utils")]

from make_talker_model import build_talker_model  # noqa: E402
from results import machine, sarai_onnx, write_section  # noqa: E402
from sarai_onnx.fidelity import validation_feeds  # noqa: E402
from sarai_onnx.model import load_graph  # noqa: E402
from sarai_onnx.quantize import quantize  # noqa: E402
from sarai_onnx.race import summarize, time_side_by_side  # noqa: E402

# The issue's acceptance: the chosen build's speed as a share of default dynamic INT8's, by input length.
TARGET_VS_INT8 = {4: 0.85, 128: 0.65}


def _row(t, timing, chosen):
    m = timing[f"trial-{t['trial']}"]
    mark = " **chosen**" if chosen else ""
    return (f"| {t['trial']}{mark} | {t['kind']} | {t['change']} | {t['cosine']:.5f} | {'yes' if t['passed'] else 'no'} | "
            f"{t['quantized_share']:.1%} | {m['p50_ms']:.2f} | {m['speedup']:.2f}x [{m['interval'][0]:.2f}, "
            f"{m['interval'][1]:.2f}] | {m['vs_int8']:.2f}x | {t['size_bytes'] / 2**20:.1f} | {t['seconds']:.1f} |")


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
    ap.add_argument("--rounds", type=int, default=20, help="alternating rounds of the table's side-by-side timing")
    ap.add_argument("--results", help="write section (e) of this Markdown results file (one section per --seq)")
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
                 f"input [1, {a.seq}, {a.hidden}]; fidelity_target cosine_min {a.cosine_min}, every candidate kind, "
                 f"default budget; load average {os.getloadavg()[0]:.1f} at the start.")
        print(setup, flush=True)
        steps = {}
        for label, extra in (("default int8", {}),
                             ("int8 + search", {"fidelity_target": {"cosine_min": a.cosine_min},
                                                "input_shapes": shapes})):
            dest = os.path.join(work, label.replace(" ", "-").replace("+", "search"))
            q, q_rss, q_s = sarai_onnx("quantize", dict(src=src, dest=dest, method="dynamic_int8",
                                                        model_name="agi_audio_core_int8.onnx", **extra), work)
            steps[label] = (q, q_rss, q_s)
            print(f"{label}: {q_s:.1f} s, peak RSS {q_rss:.0f} MiB: {q['msg']}", flush=True)
            shutil.rmtree(dest, ignore_errors=True)
        searched = steps["int8 + search"][0]
        paths = {"fp32": src}
        for t in searched["search"]:  # every candidate tried, rebuilt as the search built it
            dest = os.path.join(work, f"trial-{t['trial']}")
            paths[f"trial-{t['trial']}"] = quantize(src, dest, t["method"], model_name="m.onnx", options=t["options"],
                                                    allow_low_coverage=True)["model_path"]
        feeds = validation_feeds(load_graph(src), input_shapes=shapes)
        print(f"timing {len(paths)} models side by side, {a.rounds} rounds ...", flush=True)
        samples = time_side_by_side(paths, feeds, rounds=a.rounds)
        timing = summarize(samples, "fp32")
        int8 = summarize(samples, "trial-1")  # trial 1: the requested options, here default dynamic INT8
        for label in timing:
            timing[label]["vs_int8"] = int8[label]["speedup"]
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)

    chosen = searched["fidelity"]["trial"]
    winner = next(t for t in searched["search"] if t["trial"] == chosen)
    header = ("trial", "kind", "change", "cosine", "passed", "quantized share", "p50 ms",
              "speedup vs FP32 [95% interval]", "vs default INT8", "size MiB", "build s")
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table += [_row(t, timing, t["trial"] == chosen) for t in searched["search"]]
    table.append(f"| FP32 | - | source | 1 | - | 0% | {timing['fp32']['p50_ms']:.2f} | 1x | "
                 f"{timing['fp32']['vs_int8']:.2f}x | {built['size_bytes'] / 2**20:.1f} | - |")
    print("\n" + "\n".join(table))
    vs_int8 = timing[f"trial-{chosen}"]["vs_int8"]
    want = TARGET_VS_INT8.get(a.seq)
    race = searched["fidelity"]["race"] or {}
    verdict = (f"Chosen: trial {chosen} ({winner['method']}, {winner['change']}), cosine {winner['cosine']:.5f}, "
               f"{timing[f'trial-{chosen}']['speedup']:.2f}x FP32 and {vs_int8:.2f}x default dynamic INT8 in this "
               f"table's rounds; the search's own race: {race.get('why', '-')}"
               + (f"; mixed base: {race['mixed_base']['why']}" if race.get("mixed_base") else "") + ". "
               + (f"Issue 15 target at T={a.seq}: cosine >= 0.99 at >= {want}x default INT8: "
                  f"{'met' if winner['cosine'] >= 0.99 and vs_int8 >= want else 'NOT met'}." if want else ""))
    steps_line = "; ".join(f"{label}: step {s:.1f} s, peak RSS {rss:.0f} MiB, {len(q.get('search', [])) or 1} build(s)"
                           for label, (q, rss, s) in steps.items())
    end = f"Load average at the end: {os.getloadavg()[0]:.1f} (other work on the machine skews latency; ratios from the same rounds still compare)."
    print("\n" + verdict + "\n" + steps_line + "\n" + end)
    if a.results:
        write_section(a.results, "e", "## (e) Fidelity search on a talker with outlier channels "
                      "(`benchmarks/fidelity_search.py`)\n\nOne section per input length (`--seq`), below. Every "
                      "candidate the search tried, rebuilt from its recorded method and options, timed side by "
                      "side with FP32 in one process (alternating rounds, ORT_ENABLE_EXTENDED, intra-op spinning "
                      "off); trial 1 is default dynamic INT8 (the requested options).")
        write_section(a.results, f"e_t{a.seq:04d}", "\n\n".join([
            f"### (e) T={a.seq}", before, setup, "\n".join(table), verdict, steps_line, end]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
