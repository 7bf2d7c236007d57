"""Progress of a long quantization, as a small JSON file another process can poll.

Ansible runs a long onnx_quantize with async; a task polling async_status only learns "still
running". With progress_file set, the build keeps this file current (written atomically, so a
reader never sees half a document):

    {"phase": "quantize", "tensors_done": 12, "tensors_total": 98, "bytes_done": 402653184,
     "bytes_total": 1771044864, "elapsed_s": 3.2, "engine": "streaming"}

It is written on each phase change, at most about once a second while tensors are processed, and
once at the end (phase done or failed, failed adding msg). Phases in order: hash_source, plan,
quantize, load_check, hash_output, done (an unchanged release: hash_source, done). Counts are null
until quantize starts, then kept to the end; the onnxruntime engine cannot count tensors, so with
it they stay null.
"""

import os
import time

from . import files
from .errors import SaraiError

INTERVAL_S = 1.0


class Progress:
    """Reports to `path`, or does nothing when path is None."""

    def __init__(self, path, engine=None, clock=time.monotonic):
        self.path, self.engine, self.clock = path, engine, clock
        self.started = clock()
        self.last_write = None
        self.state = {"phase": None, "tensors_done": None, "tensors_total": None, "bytes_done": None,
                      "bytes_total": None}
        if path:
            parent = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
                raise SaraiError(f"progress_file {path}: {parent} is not a writable directory; "
                                 "create it or choose another path")

    def phase(self, name, tensors_total=None, bytes_total=None, engine=None):
        """Enter a phase (written now). Totals start the tensor counts at zero; later phases keep
        them, so the last document still says how much was done."""
        self.engine = engine or self.engine
        self.state["phase"] = name
        if tensors_total is not None:
            self.state.update(tensors_total=tensors_total, bytes_total=bytes_total, tensors_done=0, bytes_done=0)
        self._write()

    def advance(self, tensors, nbytes):
        self.state["tensors_done"] += tensors
        self.state["bytes_done"] += nbytes
        if self.last_write is None or self.clock() - self.last_write >= INTERVAL_S:
            self._write()

    def finish(self, msg=None):
        """The last write: phase done, or failed with msg."""
        self.state["phase"] = "failed" if msg else "done"
        if msg:
            self.state["msg"] = msg
        self._write()

    def _write(self):
        if not self.path:
            return
        self.last_write = self.clock()
        doc = dict(self.state, elapsed_s=round(self.last_write - self.started, 3), engine=self.engine)
        try:
            files.write_json_atomic(self.path, doc)
        except OSError:  # progress is a courtesy: a full disk there must not fail the build
            self.path = None
