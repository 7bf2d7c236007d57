"""Process-level helpers: a clean stdout for JSON, provenance of a run, temp dir redirection."""

import contextlib
import datetime
import getpass
import os
import platform
import socket
import sys
import tempfile

from . import __version__


@contextlib.contextmanager
def stdout_to_stderr():
    """Send everything written to fd 1 (Python prints and native library logs) to stderr.

    Ansible and the CLI both parse stdout as one JSON document, and onnxruntime's quantizers
    print and log freely; this keeps their chatter out of the result.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@contextlib.contextmanager
def temp_dir_redirect(path):
    """Point tempfile (and so onnxruntime's quantizers) at `path` for the duration.

    quantize_dynamic writes a full FP32 copy of the model under the temp dir; redirecting it next
    to the output keeps that copy on the disk we checked for space and removes it with our scratch.
    """
    old_tempdir, old_env = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = path
    os.environ["TMPDIR"] = path
    try:
        yield path
    finally:
        tempfile.tempdir = old_tempdir
        if old_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old_env


def _status_mb(field):
    """VmRSS / VmHWM of this process in MiB, or None where /proc is not available."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def rss_mb():
    """Resident set of this process now, in MiB (None where /proc is not available)."""
    return _status_mb("VmRSS")


def peak_rss_mb(children=False):
    """Peak resident set of this process in MiB: Linux VmHWM, the Windows PeakWorkingSetSize, or
    ru_maxrss. children=True: the larger of that and the peak of the biggest child process this
    one has waited for (RUSAGE_CHILDREN; the kernel keeps no sum over children)."""
    peak = _status_mb("VmHWM")
    if peak is None and sys.platform == "win32":
        import ctypes
        from ctypes import wintypes

        class Counters(ctypes.Structure):
            _fields_ = [("cb", wintypes.DWORD), ("PageFaultCount", wintypes.DWORD),
                        ("PeakWorkingSetSize", ctypes.c_size_t), ("WorkingSetSize", ctypes.c_size_t),
                        ("QuotaPeakPagedPoolUsage", ctypes.c_size_t), ("QuotaPagedPoolUsage", ctypes.c_size_t),
                        ("QuotaPeakNonPagedPoolUsage", ctypes.c_size_t),
                        ("QuotaNonPagedPoolUsage", ctypes.c_size_t), ("PagefileUsage", ctypes.c_size_t),
                        ("PeakPagefileUsage", ctypes.c_size_t)]
        c = Counters()
        c.cb = ctypes.sizeof(c)
        ctypes.windll.psapi.GetProcessMemoryInfo(ctypes.windll.kernel32.GetCurrentProcess(),
                                                 ctypes.byref(c), c.cb)
        return c.PeakWorkingSetSize / 2**20  # Windows keeps no children's peak
    unit = 2**20 if sys.platform == "darwin" else 1024.0  # ru_maxrss: bytes on macOS, KiB elsewhere
    import resource

    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / unit
    if children:
        peak = max(peak, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / unit)
    return peak


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def current_user():
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers) and no USER variable
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


def versions():
    """Versions of everything that shapes a quantized model, for provenance records."""
    import numpy
    import onnx
    import onnxruntime

    return {"sarai_onnx": __version__, "python": platform.python_version(),
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "numpy": numpy.__version__}


def provenance():
    return {"host": socket.gethostname(), "user": current_user(), "created_utc": utc_now(),
            "versions": versions()}
