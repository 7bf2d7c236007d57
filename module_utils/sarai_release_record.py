# -*- coding: utf-8 -*-
"""A release record from the build host, checked on the controller before any of it is used.

The build host is not trusted (docs/contracts.md, "The release record"): its result names the files
that become paths on the controller (staging) and on every server, and the model file sarai.yaml
points at. Pure functions: values in, problems out; each problem names the field, the value and
what to do. `staged_files` reads one small file (a staged MANIFEST.sha256) and nothing else.
"""
from __future__ import annotations

import json
import os
import re

from ansible.module_utils.sarai_onnx import files as release_files
from ansible.module_utils.sarai_onnx.errors import SaraiError
from ansible.module_utils.sarai_onnx.release import parse_release_id, plain_name_problem

RECORD_NAME = "quantization.json"
# The files every release dir holds besides the model's own (docs/contracts.md, Release layout).
RELEASE_EXTRAS = (RECORD_NAME, release_files.MANIFEST_NAME)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
FIX = ("the build host returned it: check that host (it may be compromised or run another version of "
       "sarai_onnx), rebuild, then run again")


def _show(value):
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def _is_size(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def record_problems(record, variant, catalog_entry, label=None):
    """Problems with a release record of `variant` whose catalog entry is `catalog_entry`; [] when
    it may be used. `label` names the record in messages (default model_build_releases.<variant>)."""
    label = label or f"model_build_releases.{variant}"
    if not isinstance(record, dict):
        return [f"{label} = {_show(record)}: must be a release record (a dict); {FIX}"]
    problems = []

    def bad(field, what):
        problems.append(f"{label}.{field} = {_show(record.get(field))}: {what}; {FIX}")

    if record.get("variant") != variant:
        bad("variant", f"must be {variant!r}, the variant this record was built for")
    sha = record.get("manifest_sha256")
    if not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
        bad("manifest_sha256", "must be the 64 lowercase hex digits of the sha256 of MANIFEST.sha256")
        sha = None
    parsed = parse_release_id(record.get("id"))
    if not parsed or parsed[0] != variant:
        bad("id", f"must be {variant}-<12 lowercase hex> (the variant, then the first 12 hex digits of the "
                  "manifest's sha256)")
    elif sha and parsed[1] != sha[:12]:
        bad("id", f"names manifest sha256 {parsed[1]}..., but manifest_sha256 is {sha}")
    expected_file = catalog_entry.get("file") if isinstance(catalog_entry, dict) else None
    model_name = record.get("model_name")
    if plain_name_problem(model_name):
        bad("model_name", plain_name_problem(model_name))
    elif model_name != expected_file:
        bad("model_name", f"must be {expected_file!r}, the catalog's file for {variant} (sarai_model_variants."
                          f"{variant}.file)")
    if "size_bytes" in record and not _is_size(record["size_bytes"]):
        bad("size_bytes", "must be a whole number of bytes >= 0")
    for field in ("dest",):
        value = record.get(field)
        if not isinstance(value, str) or not value or _CONTROL.search(value):
            bad(field, "must be the build directory's path (a string without control characters)")
    problems += _files_problems(record.get("files"), f"{label}.files", model_name)
    return problems


def _files_problems(listing, label, model_name):
    if not isinstance(listing, list) or not listing:
        return [f"{label} = {_show(listing)}: must list the model's files as [{{name, size}}]; {FIX}"]
    problems, names = [], []
    for index, item in enumerate(listing):
        where = f"{label}[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{where} = {_show(item)}: must be {{name, size}}; {FIX}")
            continue
        name = item.get("name")
        wrong = plain_name_problem(name)
        if not wrong and name in RELEASE_EXTRAS:
            wrong = f"is one of the files every release holds ({', '.join(RELEASE_EXTRAS)}), not a model file"
        if wrong:
            problems.append(f"{where}.name = {_show(name)}: {wrong}; {FIX}")
        elif name in names:
            problems.append(f"{where}.name = {_show(name)}: is listed twice; {FIX}")
        else:
            names.append(name)
        if not _is_size(item.get("size")):
            problems.append(f"{where}.size = {_show(item.get('size'))}: must be a whole number of bytes >= 0; {FIX}")
    if isinstance(model_name, str) and not problems and model_name not in names:
        problems.append(f"{label} = {_show(names)}: does not list the model file {model_name!r}; {FIX}")
    return problems


def staged_files(staged_dir, record):
    """(names to ship, problems): the files of the staged MANIFEST.sha256 plus the manifest itself,
    checked against the record. The manifest's bytes must hash to the record's manifest_sha256 and
    list exactly the record's files and quantization.json, each a plain name."""
    manifest = os.path.join(staged_dir, release_files.MANIFEST_NAME)
    try:
        entries = release_files.parse_manifest(manifest, plain_names=True)
        with open(manifest, "rb") as handle:
            actual = release_files.sha256_bytes(handle.read())
    except (SaraiError, OSError) as exc:
        return [], [f"the staged copy of {record.get('id')} cannot be shipped: {exc}. Remove {staged_dir} and run "
                    "the deploy again (it stages the release again from the build host)"]
    if actual != record.get("manifest_sha256"):
        return [], [f"{manifest} has sha256 {actual}, but the release record names {record.get('manifest_sha256')}: "
                    f"the staged copy is not this release. Remove {staged_dir} and run the deploy again"]
    listed = sorted(name for _, name in entries)
    expected = sorted([f.get("name") for f in record.get("files") or [] if isinstance(f, dict)] + [RECORD_NAME])
    if listed != expected:
        return [], [f"{manifest} lists {_show(listed)}, but the release record's files and {RECORD_NAME} are "
                    f"{_show(expected)}: the record and the manifest disagree, so nothing is shipped. {FIX}"]
    return listed + [release_files.MANIFEST_NAME], []
