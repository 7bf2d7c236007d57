"""benchmarks/RESULTS.md: one section per benchmark, each rewritten by its own script.

A section sits between `<!-- section:KEY -->` and `<!-- /section:KEY -->`; writing one leaves the
others as they are, so each benchmark can be rerun alone. Sections are kept in key order.
"""

import datetime
import os
import platform
import re
import subprocess
import sys
import time

HEADER = """# Benchmark results

Measured side by side by `make bench`; each section is rewritten by its own script and names the
machine and the load it ran under.
"""
PLACEHOLDERS = {
    "c": "## (c) Lab deploy wall time against its floor\n\nNot measured yet.",
    "d": "## (d) Tuned vs default session options on a lab server\n\nNot measured yet.",
}
_SECTION = re.compile(r"<!-- section:(\w+) -->\n(.*?)\n<!-- /section:\1 -->", re.S)


def write_section(path, key, body):
    """Replace (or add) section `key` of the results file with `body` (Markdown)."""
    sections = dict(PLACEHOLDERS)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            sections.update({k: v.strip() for k, v in _SECTION.findall(fh.read())})
    sections[key] = body.strip()
    text = HEADER + "".join(f"\n<!-- section:{k} -->\n{sections[k]}\n<!-- /section:{k} -->\n" for k in sorted(sections))
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _first(path, prefix):
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def layers_for(size_mb, hidden, vocab):
    """Talker layers that bring the FP32 model closest to size_mb (12 H^2 weights per layer + H*V head)."""
    per_layer = 12 * hidden * hidden * 4
    return max(1, round((size_mb * 2**20 - hidden * vocab * 4) / per_layer))


def machine():
    """One Markdown paragraph: CPU, cores, RAM, OS, versions, load, time. Imports nothing heavy."""
    from importlib.metadata import version

    mem = _first("/proc/meminfo", "MemTotal")
    ram = f"{int(mem.split()[0]) / 2**20:.1f} GiB" if mem != "unknown" else "unknown"
    try:
        nice = os.nice(0)
    except OSError:
        nice = "unknown"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"Machine: {_first('/proc/cpuinfo', 'model name')}, {os.cpu_count()} CPUs, {ram} RAM, "
            f"{platform.system()} {platform.release()}; Python {platform.python_version()}, onnx {version('onnx')}, "
            f"onnxruntime {version('onnxruntime')}, numpy {version('numpy')}; nice {nice}, "
            f"load average {load} (shared machine); "
            f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; "
            f"commit {_git_head()}.")


def _git_head():
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def rss_mib():
    """This process's resident set now (MiB), to show the measuring parent stays small."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return float("nan")


def run_measured(cmd, cwd=None, env=None):
    """Run cmd as a child; returns (stdout text, stderr text, exit code, peak RSS MiB, wall s).

    The peak is the child's ru_maxrss from os.wait4 (Linux: the larger of the child's and of its own
    waited-for children). Linux carries the parent's high-water mark into a child it forks and
    execs, so the measuring process must stay small: keep numpy/onnx out of it.
    """
    err_path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"bench-stderr-{os.getpid()}.txt")
    with open(err_path, "w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        proc.stdout.close()
        err.seek(0)
        stderr = err.read()
    os.unlink(err_path)
    scale = 2**20 if sys.platform == "darwin" else 1024.0
    return out, stderr, proc.returncode, usage.ru_maxrss / scale, wall


MODULE_UTILS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "module_utils")


def sarai_onnx(command, params, workdir, allow_failed=False):
    """Run `python -m sarai_onnx command` as a build host does, in its own measured child:
    (result dict, peak RSS MiB, wall s). A failed result stops the benchmark unless allowed."""
    import json

    path = os.path.join(workdir, f"{command}.json")
    with open(path, "w") as fh:
        json.dump(params, fh)
    out, err, _, peak, wall = run_measured([sys.executable, "-m", "sarai_onnx", command, "--params", path],
                                           cwd=MODULE_UTILS)
    result = json.loads(out)
    if result.get("failed") and not allow_failed:
        raise SystemExit(f"{command} failed: {result['msg']}\n{err[-2000:]}")
    return result, peak, wall
