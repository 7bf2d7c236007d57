"""Progress of long work as a small JSON file another process can poll (Ansible async loops).

The file is replaced atomically, so a reader never sees half a document, and rewritten at most
once per `interval_s`: polling every few seconds needs no more, and an fsync per timed run would
disturb what is being timed. The first and the last update are always written.
"""

import time

from . import files


class Progress:
    """update(phase, **counters) -> {phase, **fixed, **counters, elapsed_s} in `path` (None: no file)."""

    def __init__(self, path, interval_s=1.0, clock=time.monotonic, **fixed):
        self.path = path
        self.interval_s = interval_s
        self.clock = clock
        self.fixed = fixed
        self.started = clock()
        self.last_write = None

    def update(self, phase, force=False, **counters):
        if not self.path:
            return
        now = self.clock()
        if not force and self.last_write is not None and now - self.last_write < self.interval_s:
            return
        files.write_json_atomic(self.path, {"phase": phase, **self.fixed, **counters,
                                            "elapsed_s": round(now - self.started, 1)})
        self.last_write = now
