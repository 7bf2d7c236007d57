"""Progress of long work (a quantization, a validation) as a small JSON file another process polls.

Ansible runs long onnx_quantize / onnx_validate tasks with async; async_status alone only says
"still running". With progress_file set, the work keeps this file current:

    {"phase": "quantize", "tensors_done": 12, "tensors_total": 98, "bytes_done": 402653184,
     "bytes_total": 1771044864, "elapsed_s": 3.2, "engine": "streaming"}      (onnx_quantize)
    {"phase": "timed", "runs_done": 24, "runs_total": 40, "elapsed_s": 5.1}     (onnx_validate)

The file is replaced atomically, so a reader never sees half a document. A phase change is written
at once; counters at most once per `interval_s` (polling every few seconds needs no more, and an
fsync per timed run would disturb what is being timed); the last word (finish, or force) always.
"""

import os
import time

from . import files
from .errors import SaraiError

INTERVAL_S = 1.0
TENSOR_COUNTS = ("tensors_done", "tensors_total", "bytes_done", "bytes_total")


class Progress:
    """Keeps `path` holding {phase, **fields, elapsed_s}; with path None it does nothing."""

    def __init__(self, path, interval_s=INTERVAL_S, clock=time.monotonic, **fields):
        self.path, self.interval_s, self.clock = path, interval_s, clock
        self.fields = {"phase": None, **fields}
        self.started = clock()
        self.last_write = None
        if path:
            parent = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
                raise SaraiError(f"progress_file {path}: {parent} is not a writable directory; "
                                 "create it or choose another path")

    def update(self, phase=None, force=False, **fields):
        """Set the phase and counters; written now on a new phase or with force, else when due."""
        new_phase = phase is not None and phase != self.fields["phase"]
        if phase is not None:
            self.fields["phase"] = phase
        self.fields.update(fields)
        due = self.last_write is None or self.clock() - self.last_write >= self.interval_s
        if force or new_phase or due:
            self._write()

    # The quantizer's vocabulary: phases with tensor counts that later phases keep.
    def phase(self, name, tensors_total=None, bytes_total=None, engine=None):
        for key in TENSOR_COUNTS + ("engine",):
            self.fields.setdefault(key, None)
        if engine:
            self.fields["engine"] = engine
        if tensors_total is not None:
            self.fields.update(tensors_total=tensors_total, bytes_total=bytes_total, tensors_done=0, bytes_done=0)
        self.update(name, force=True)

    def advance(self, tensors, nbytes):
        self.update(tensors_done=self.fields["tensors_done"] + tensors,
                    bytes_done=self.fields["bytes_done"] + nbytes)

    def finish(self, msg=None):
        """The last write: phase done, or failed with msg."""
        if msg:
            self.fields["msg"] = msg
        self.update("failed" if msg else "done", force=True)

    def _write(self):
        if not self.path:
            return
        self.last_write = self.clock()
        try:
            files.write_json_atomic(self.path, dict(self.fields, elapsed_s=round(self.last_write - self.started, 3)))
        except OSError:  # progress is a courtesy: a full disk there must not fail the work
            self.path = None
