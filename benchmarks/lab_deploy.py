#!/usr/bin/env python3
"""What a lab deploy costs against its floor, and what session tuning buys on a lab server, in one run.

Needs the lab up (`make lab`; with SARAI_LAB_INSTANCE=N in the environment, that instance) and
resets it to FP32 (playbooks/lab_seed.yml -e lab_seed_reset=true, build directory removed). Then:
  (c) deploy_int8.yml from scratch (its own controller staging directory), its idempotent rerun, and
      the floor: each step the deploy does (sha256 of the source, quantize, copy, restart, validate)
      alone on the same hosts (benchmarks/lab_floor.yml), each task's duration from ansible.posix.json;
  (d) playbooks/tune.yml twice on the deployed release: the grid's choice vs the current options
      (P50, P99, measured noise) per server, and the second run's changed count.
Writes sections (c) and (d) of the results file.

    SARAI_LAB_INSTANCE=2 python benchmarks/lab_deploy.py [--results benchmarks/RESULTS.md]
"""

import argparse
import datetime
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from results import machine, write_section  # noqa: E402

BIN = os.path.dirname(os.path.abspath(sys.executable))
INVENTORY = os.path.join(ROOT, "inventory", "lab")


def _env(json_output):
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    if json_output:
        env["ANSIBLE_STDOUT_CALLBACK"] = "ansible.posix.json"
    return env


def playbook(path, *extra, check=True):
    """Run ansible-playbook with the JSON callback: (wall s, parsed output, rc)."""
    argv = [os.path.join(BIN, "ansible-playbook"), "-i", INVENTORY, path]
    for e in extra:
        argv += ["-e", e if isinstance(e, str) else json.dumps(e)]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=_env(True), cwd=ROOT, check=False)
    wall = time.perf_counter() - t0
    # The JSON document starts at the first line that is "{": ansible.builtin.pause (async_progress's
    # wait between progress lines) writes "Pausing for N seconds" to stdout before it.
    lines = proc.stdout.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == "{"), len(lines))
    try:
        out = json.loads("".join(lines[start:]))
    except ValueError:
        out = {}
    if not out.get("stats"):  # no numbers are better than numbers read from nothing (changed=0)
        raise SystemExit(f"{os.path.relpath(path, ROOT)}: no JSON result on stdout (rc {proc.returncode}): "
                         f"{proc.stdout[:500]!r} {proc.stderr[-1000:]}")
    if check and proc.returncode != 0:
        failed = [f"{t['task']['name']} on {h}: {r.get('msg', '')}" for p in out.get("plays", []) for t in p["tasks"]
                  for h, r in t["hosts"].items() if r.get("failed") and not r.get("ignore_errors")]
        raise SystemExit(f"{os.path.relpath(path, ROOT)} failed (rc {proc.returncode}): "
                         f"{'; '.join(failed) or proc.stderr[-2000:]}")
    print(f"{os.path.relpath(path, ROOT)} {' '.join(str(e) for e in extra)[:80]}: {wall:.1f} s", flush=True)
    return wall, out, proc.returncode


def changed(out):
    return sum(s.get("changed", 0) for s in out.get("stats", {}).values())


def _seconds(duration):
    parse = datetime.datetime.fromisoformat
    return (parse(duration["end"].replace("Z", "+00:00")) - parse(duration["start"].replace("Z", "+00:00"))).total_seconds()


def task_times(out):
    """[(task name, seconds)] in run order (a task over several hosts counts once, start to end)."""
    return [(t["task"]["name"], _seconds(t["task"]["duration"])) for p in out.get("plays", []) for t in p["tasks"]]


def check_lab():
    argv = [os.path.join(BIN, "ansible"), "-i", INVENTORY, "lab", "-m", "ansible.builtin.ping", "-o"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=_env(False), cwd=ROOT, timeout=120, check=False)
        ok = proc.returncode == 0
    except subprocess.TimeoutExpired:
        ok, proc = False, None
    if not ok:
        instance = os.environ.get("SARAI_LAB_INSTANCE", "0")
        raise SystemExit(f"The lab (instance {instance}) is not reachable, so sections (c) and (d) cannot be "
                         f"measured: bring it up with `SARAI_LAB_INSTANCE={instance} make lab` and rerun. "
                         f"{(proc.stdout + proc.stderr)[-1000:] if proc else 'ansible ping timed out'}")


def releases(out):
    """{variant: release record}: every model_build_releases the build host's set_facts published."""
    found = {}
    for p in out.get("plays", []):
        for t in p["tasks"]:
            for r in t["hosts"].values():
                for one in [r] + r.get("results", []):  # a loop's facts are in its items' results
                    found.update(one.get("ansible_facts", {}).get("model_build_releases") or {})
    missing = {"fp32", "int8"} - set(found)
    if missing:
        raise SystemExit(f"the deploy's output has no release record of {', '.join(sorted(missing))} "
                         f"(found {', '.join(sorted(found)) or 'none'}): model_build_releases changed shape?")
    return found


def section_c(first, rerun, floor, first_wall, rerun_wall, rerun_changed, releases_built):
    ping = [s for name, s in floor if name == "Floor: ping"]
    rows = [(name.removeprefix("Floor: "), s) for name, s in floor if name.startswith("Floor: ") and name != "Floor: ping"]
    total = sum(s for _, s in rows)
    int8 = next((r for r in releases_built.values() if r.get("variant") != "fp32"), {})
    top = sorted(task_times(rerun), key=lambda x: -x[1])[:8]
    lines = [
        "## (c) Lab deploy wall time against its floor (`benchmarks/lab_deploy.py`)", "",
        f"`deploy_int8.yml` on the lab (builder, agi1, agi2; {int8.get('id', '?')}: "
        f"{len(int8.get('search', []))} search trial(s), {len(int8.get('excluded_nodes', []))} MatMul(s) kept in FP32), "
        "after `lab_seed.yml -e lab_seed_reset=true` and an empty build directory and controller staging directory.", "",
        "| run | wall s | changed |", "|---|---:|---:|",
        f"| first deploy (build, stage, canary agi1 then agi2: ship, switch, validate) | {first_wall:.1f} | {changed(first)} |",
        f"| idempotent rerun | {rerun_wall:.1f} | {rerun_changed} |", "",
        "The floor: each step alone, as one Ansible task on the same host and files (task duration from "
        "ansible.posix.json; each includes one task's overhead, a `ping` task took "
        f"{', '.join(f'{s:.2f}' for s in ping)} s):", "",
        "| step | s |", "|---|---:|",
        *[f"| {name} | {s:.2f} |" for name, s in rows],
        f"| **sum (one server)** | **{total:.2f}** |", "",
        f"A deploy does the server steps once per server (two here, one batch after the other), so its floor is "
        f"about {total + sum(s for n, s in rows if not n.startswith(('quantize', 'sha256'))):.1f} s; "
        f"the first deploy took {first_wall / max(total, 1e-9):.1f}x the one-server sum.", "",
        "The rerun's costliest tasks:", "", "| task | s |", "|---|---:|",
        *[f"| {name} | {s:.2f} |" for name, s in top],
    ]
    return "\n".join(lines)


def section_d(reports_dir, walls, second_changed):
    lines = ["## (d) Tuned vs default session options on a lab server (`benchmarks/lab_deploy.py`)", "",
             f"`playbooks/tune.yml` on the deployed INT8 release, twice: {walls[0]:.1f} s, then {walls[1]:.1f} s "
             f"with changed={second_changed} (0: the second run kept the first run's choice; the table is the second "
             "run's grid).", "",
             "| host | current options | P50 ms | chosen | P50 ms | P99 ms (current P99) | noise % | threshold % | "
             "configurations | decision |", "|---|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for path in sorted(glob.glob(os.path.join(reports_dir, "*", "tune-*.json"))):
        with open(path) as fh:
            r = json.load(fh)
        current = r["grid"][0]
        chosen = next((e for e in r["grid"] if e["index"] == r["chosen"]), current)
        opts = lambda o: ", ".join(f"{k}={v}" for k, v in sorted(o.items()))  # noqa: E731
        lines.append(f"| {r['host']} | `{opts(r['current_options'])}` | {r['baseline_p50_ms']:.3f} | "
                     f"#{r['chosen']} `{opts(chosen['options'])}` | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} "
                     f"({current['p99_ms']:.3f}) | {r['noise_pct']:.2f} | {r['threshold_pct']:.2f} | "
                     f"{len(r['grid'])} | {'switch' if r['improved'] else 'keep'}: {r['reason']} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", help="write sections (c) and (d) of this Markdown results file")
    a = ap.parse_args(argv)

    check_lab()
    before = machine()
    work = tempfile.mkdtemp(prefix="sarai-bench-lab-")
    staging, reports = os.path.join(work, "staging"), os.path.join(work, "reports")
    try:
        pb = lambda name: os.path.join(ROOT, "playbooks", name)  # noqa: E731
        playbook(pb("lab_seed.yml"), "lab_seed_reset=true")
        subprocess.run([os.path.join(BIN, "ansible"), "-i", INVENTORY, "quantizers", "-m", "ansible.builtin.file",
                        "-a", "path={{ sarai_build_dir }} state=absent"], env=_env(False), cwd=ROOT, check=True,
                       capture_output=True)
        common = {"model_transfer_staging_dir": staging, "sarai_reports_dir": reports}
        first_wall, first, _ = playbook(pb("deploy_int8.yml"), common)
        rerun_wall, rerun, _ = playbook(pb("deploy_int8.yml"), common)
        built = releases(first)
        int8, fp32 = built["int8"], built["fp32"]
        _, floor, _ = playbook(os.path.join(ROOT, "benchmarks", "lab_floor.yml"), {
            "floor_staged": os.path.join(staging, int8["id"]), "floor_releases_dir": "{{ sarai_releases_dir }}",
            "floor_release_id": int8["id"], "floor_model_name": os.path.basename(int8["model_path"]),
            "floor_reference_id": fp32["id"], "floor_reference_name": os.path.basename(fp32["model_path"])})
        c = section_c(first, rerun, task_times(floor), first_wall, rerun_wall, changed(rerun), built)
        tune1_wall, _, _ = playbook(pb("tune.yml"), common)
        tune2_wall, tune2, _ = playbook(pb("tune.yml"), common)
        d = section_d(reports, (tune1_wall, tune2_wall), changed(tune2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    end = f"Load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}."
    print(c + "\n\n" + d + "\n\n" + end)
    if a.results:
        for key, body in (("c", c), ("d", d)):
            title, rest = body.split("\n", 1)
            write_section(a.results, key, "\n\n".join([title, before, rest.strip(), end]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
