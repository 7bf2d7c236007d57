"""onnx_manifest: write or verify MANIFEST.sha256 for a release directory or a model file."""

import json
import os

from . import files
from .errors import SaraiError


def _model_files(path):
    """The model and its external data files. onnx is needed only here: a release directory
    is written and verified with hashlib alone, on any Python."""
    try:
        from .model import model_files
    except ImportError as exc:
        raise SaraiError(f"listing the data files of model {path} needs the onnx package ({exc}); "
                         "give the release directory instead, or run with the runtime Python") from None
    return model_files(path)

RECORD_NAME = "quantization.json"


def _targets(path, manifest):
    """(base dir, manifest path, names that belong in it).

    A directory: every regular file in it except the manifest. A model file: the model and its
    external data files, with the manifest beside them unless `manifest` says otherwise.
    """
    path = os.path.abspath(path)
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path)
                       if os.path.isfile(os.path.join(path, n)) and n != files.MANIFEST_NAME
                       and not n.startswith("."))
        return path, manifest or os.path.join(path, files.MANIFEST_NAME), names
    if not os.path.exists(path):
        raise SaraiError(f"path {path} does not exist: give a release directory or a model file")
    base = os.path.dirname(path)
    names = [os.path.relpath(p, base) for p in _model_files(path)]
    return base, manifest or os.path.join(base, files.MANIFEST_NAME), names


def write_manifest(path, manifest=None, check_mode=False):
    """state=present: (re)write the manifest when its content would change."""
    base, manifest_path, names = _targets(path, manifest)
    if not names:
        raise SaraiError(f"{path} holds no files to list in a manifest")
    listing = files.describe_files(base, names)
    text = files.manifest_text(listing)
    try:
        with open(manifest_path, encoding="utf-8", errors="replace") as fh:
            before = fh.read()
    except OSError:
        before = None
    changed = before != text
    if changed and not check_mode:
        try:
            files.write_file_atomic(manifest_path, text.encode("utf-8"))
        except OSError as exc:
            raise SaraiError(f"cannot write manifest {manifest_path}: {exc.strerror}; "
                             "check the directory permissions") from None
    return {"changed": changed, "path": os.path.abspath(path), "manifest_path": manifest_path,
            "files": listing, "verified": True, "mismatches": [],
            "manifest_sha256": files.sha256_bytes(text.encode("utf-8")),
            "diff": {"before_header": manifest_path, "before": before or "",
                     "after_header": manifest_path, "after": text}}


def verify_manifest(path, manifest=None):
    """state=verified: every listed file present with the listed sha256, and nothing unlisted.

    Sizes recorded in a quantization.json beside the manifest are checked first, so a truncated
    copy is reported as such without hashing it.
    """
    path = os.path.abspath(path)
    if os.path.isdir(path):
        base, manifest_path, names = _targets(path, manifest)
    else:
        # Do not require the model to parse: a damaged copy must still be reported as a mismatch.
        if not os.path.exists(path):
            raise SaraiError(f"path {path} does not exist: give a release directory or a model file")
        base = os.path.dirname(path)
        manifest_path = manifest or os.path.join(base, files.MANIFEST_NAME)
        try:
            names = [os.path.relpath(p, base) for p in _model_files(path)]
        except SaraiError:
            names = [os.path.basename(path)]  # missing/truncated data shows up as a mismatch below
    entries = files.parse_manifest(manifest_path)
    sizes = _recorded_sizes(base)
    listing, mismatches = files.verify_files(base, entries, expected_names=names, sizes=sizes)
    with open(manifest_path, "rb") as fh:
        manifest_sha = files.sha256_bytes(fh.read())
    return {"changed": False, "path": path, "manifest_path": manifest_path, "files": listing,
            "verified": not mismatches, "mismatches": mismatches, "manifest_sha256": manifest_sha}


def _recorded_sizes(base):
    try:
        with open(os.path.join(base, RECORD_NAME)) as fh:
            return {f["name"]: f["size"] for f in json.load(fh)["output"]["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def manifest(path, state="verified", manifest=None, check_mode=False):
    if state == "present":
        return write_manifest(path, manifest=manifest, check_mode=check_mode)
    if state == "verified":
        result = verify_manifest(path, manifest=manifest)
        if not result["verified"]:
            result["msg"] = (f"{result['manifest_path']} does not verify: "
                             + "; ".join(files.describe_mismatch(m) for m in result["mismatches"])
                             + ". Copy the files again from the source.")
        return result
    raise SaraiError(f"unknown manifest state {state!r}: use present or verified")
