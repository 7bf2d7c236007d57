"""onnx_manifest: write or verify MANIFEST.sha256 for a release directory or a model file."""

import json
import os

from . import files, release
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


def verify_manifest(path, manifest=None, release_id=None, manifest_sha256=None):
    """state=verified: the manifest is the release's own, every listed file is present with the
    listed sha256, and nothing is unlisted.

    The manifest is checked first against what the release is known to be (`manifest_sha256`, and
    `release_id`, whose 12 hex digits start the manifest's sha256; by default the id is the
    directory's name when it has the `<variant>-<12 hex>` form, "" turns that off): a manifest
    rewritten to match changed files is refused before any file is trusted. Sizes recorded in a
    quantization.json beside the manifest are checked next, so a truncated copy is reported as such
    without hashing it.
    """
    path = os.path.abspath(path)
    if os.path.isdir(path):
        base, manifest_path, names = _targets(path, manifest)
        if release_id is None and release.parse_release_id(os.path.basename(path)):
            release_id = os.path.basename(path)
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
    release_id, manifest_sha256 = release.expected_manifest(release_id, manifest_sha256)
    entries = files.parse_manifest(manifest_path, plain_names=os.path.isdir(path))
    with open(manifest_path, "rb") as fh:
        manifest_sha = files.sha256_bytes(fh.read())
    result = {"changed": False, "path": path, "manifest_path": manifest_path, "manifest_sha256": manifest_sha,
              "release_id": release_id, "expected_manifest_sha256": manifest_sha256}
    wrong = release.identity_mismatch(manifest_sha, release_id, manifest_sha256)
    if wrong:
        return dict(result, files=[], verified=False, mismatches=[wrong])
    listing, mismatches = files.verify_files(base, entries, expected_names=names, sizes=_recorded_sizes(base))
    return dict(result, files=listing, verified=not mismatches, mismatches=mismatches)


def release_dir_problems(path):
    """Why directory `path` cannot be a whole release, without reading its data: [] when its
    manifest is the one its name claims and every listed file is there with its recorded size.

    A flipped byte passes this look (only hashing finds it); a copy cut short or a dir without its
    manifest does not. Cleanup removes only dirs that fail it, so it never removes a release that
    verifies.
    """
    path = os.path.abspath(path)
    try:
        base, manifest_path, names = _targets(path, None)
        entries = files.parse_manifest(manifest_path, plain_names=True)
        with open(manifest_path, "rb") as fh:
            manifest_sha = files.sha256_bytes(fh.read())
    except (SaraiError, OSError) as exc:
        return [str(exc)]
    name = os.path.basename(path)
    wrong = release.identity_mismatch(manifest_sha, name if release.parse_release_id(name) else None)
    if wrong:
        return [release.describe_identity_mismatch(wrong, manifest_path, name)]
    _, mismatches = files.verify_files(base, entries, expected_names=names, sizes=_recorded_sizes(base),
                                       hash_files=False)
    return [files.describe_mismatch(m) for m in mismatches]


def _recorded_sizes(base):
    try:
        with open(os.path.join(base, RECORD_NAME)) as fh:
            return {f["name"]: f["size"] for f in json.load(fh)["output"]["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def manifest(path, state="verified", manifest=None, check_mode=False, release_id=None, manifest_sha256=None):
    if state == "present":
        if release_id or manifest_sha256:
            raise SaraiError("release_id and manifest_sha256 check an existing manifest: use them with "
                             "state=verified, not state=present")
        return write_manifest(path, manifest=manifest, check_mode=check_mode)
    if state == "verified":
        result = verify_manifest(path, manifest=manifest, release_id=release_id, manifest_sha256=manifest_sha256)
        wrong = [m for m in result["mismatches"] if m["problem"] in ("release_id", "manifest_sha256")]
        if wrong:
            result["msg"] = (release.describe_identity_mismatch(wrong[0], result["manifest_path"], result["release_id"])
                             + f" None of its files were checked: remove {result['path']} and copy the release "
                             "again from the verified copy on the controller.")
        elif not result["verified"]:
            result["msg"] = (f"{result['manifest_path']} does not verify: "
                             + "; ".join(files.describe_mismatch(m) for m in result["mismatches"])
                             + ". Copy the files again from the source.")
        return result
    raise SaraiError(f"unknown manifest state {state!r}: use present or verified")
