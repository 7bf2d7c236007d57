"""The session tuning local fact: which session options each release runs with on this host.

    /etc/ansible/facts.d/sarai_tuning.fact  (ansible_local.sarai_tuning)
    {"schema": 1, "releases": {"<release id>": {"session_options": {...}, "p50_ms": .., "p99_ms": ..,
                                                "baseline_p50_ms": .., "noise_pct": .., "time": "UTC",
                                                "report": "<path>"}}}

onnx_session_tune writes it; the role rendering sarai.yaml reads `session_options` of the release
it renders (docs/contracts.md). An entry is rewritten only when its session_options change, so a
second tuning run that keeps the same choice leaves the file, and its numbers, as they were.
"""

import copy
import json
import os

from . import files
from .errors import SaraiError

SCHEMA = 1
DEFAULT_PATH = "/etc/ansible/facts.d/sarai_tuning.fact"
ENTRY_KEYS = ("session_options", "p50_ms", "p99_ms", "baseline_p50_ms", "noise_pct", "time", "report")


def empty():
    return {"schema": SCHEMA, "releases": {}}


def load(path):
    """The fact at `path`; a missing or empty file is an empty fact, a broken one an error naming it."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        return empty()
    if not text.strip():
        return empty()
    what_to_do = "fix it or move it aside (the next tuning run writes a fresh one)"
    try:
        fact = json.loads(text)
    except ValueError as exc:
        raise SaraiError(f"tuning fact {path} is not valid JSON ({exc}): {what_to_do}") from None
    if not isinstance(fact, dict) or fact.get("schema") != SCHEMA or not isinstance(fact.get("releases"), dict):
        raise SaraiError(f"tuning fact {path} is not a schema {SCHEMA} document "
                         f'{{"schema": {SCHEMA}, "releases": {{...}}}}: {what_to_do}')
    return fact


def stored_options(fact, release):
    """The session options stored for `release`, or None."""
    entry = fact["releases"].get(release)
    return entry.get("session_options") if isinstance(entry, dict) else None


def with_entry(fact, release, entry):
    """A copy of `fact` whose `release` holds `entry` (only the contract's keys)."""
    new = copy.deepcopy(fact)
    new["releases"][release] = {key: entry.get(key) for key in ENTRY_KEYS}
    return new


def render(fact):
    # Keys keep their order: sarai_config renders session_options in the order it reads them, so a
    # sorted copy would rewrite an unchanged sarai.yaml (and restart the service) on the next deploy.
    return json.dumps(fact, indent=2) + "\n"


def save(path, fact):
    """Atomically replace `path` (creating facts.d if needed). Mode 0644: a .fact file that is
    executable would be run by Ansible instead of read."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    files.write_file_atomic(path, render(fact).encode("utf-8"))
