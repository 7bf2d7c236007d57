"""Files: streaming sha256, sha256sum-format manifests, atomic file and directory writes."""

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile

from .errors import SaraiError
from .release import plain_name_problem

CHUNK = 1 << 20  # 1 MiB: never read a whole model into memory
MANIFEST_NAME = "MANIFEST.sha256"
FILE_MODE = 0o644  # the service user must read release files (onnx writes *.onnx.data as 0600)
DIR_MODE = 0o755
_MANIFEST_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def copy_file(src, dest):
    """Copy bytes in 1 MiB chunks and return the sha256 of what was written."""
    h = hashlib.sha256()
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        for block in iter(lambda: fin.read(CHUNK), b""):
            h.update(block)
            fout.write(block)
    return h.hexdigest()


def describe_files(base_dir, names):
    """[{name, size, sha256}] for files given relative to base_dir, sorted by name."""
    out = []
    for name in sorted(names):
        path = os.path.join(base_dir, name)
        out.append({"name": name, "size": os.path.getsize(path), "sha256": sha256_file(path)})
    return out


def manifest_text(files):
    """sha256sum format ("<64 hex>  <name>"), sorted by name, for [{name, sha256}] entries."""
    return "".join(f"{f['sha256']}  {f['name']}\n" for f in sorted(files, key=lambda f: f["name"]))


def parse_manifest(path, plain_names=False):
    """[(sha256, name)] from a sha256sum-format file; a bad line is an error naming the line.

    plain_names: every name must be a file directly beside the manifest (a release dir's manifest),
    so no listed name can lead a check or a copy out of the directory.
    """
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise SaraiError(f"manifest {path} does not exist: write it first (onnx_manifest state=present)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SaraiError(f"manifest {path} is not UTF-8 text: it is corrupt, copy the release again")
    entries, seen = [], set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _MANIFEST_LINE.match(line)
        if not match:
            raise SaraiError(f"manifest {path} line {number} is not '<64 lowercase hex>  <file name>': "
                             f"{line[:120]!r}; the manifest is corrupt, copy the release again")
        digest, name = match.groups()
        wrong = plain_name_problem(name) if plain_names else None
        if wrong:
            raise SaraiError(f"manifest {path} line {number} names {name!r} outside its directory (the name "
                             f"{wrong}): a release dir holds plain file names only, refusing to check it")
        if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
            raise SaraiError(f"manifest {path} line {number} names {name!r} outside its directory: "
                             "refusing to check files outside the release")
        if name in seen:
            raise SaraiError(f"manifest {path} lists {name!r} twice (line {number}): the manifest is corrupt")
        seen.add(name)
        entries.append((digest, name))
    if not entries:
        raise SaraiError(f"manifest {path} lists no files: it is empty or truncated, write it again")
    return entries


def verify_files(base_dir, entries, expected_names=None, sizes=None, hash_files=True):
    """Check [(sha256, name)] against base_dir. Returns (files, mismatches).

    expected_names: every file that should be listed; ones on disk but unlisted are 'extra'.
    sizes: optional {name: size} (e.g. from quantization.json) for a cheap truncation check.
    hash_files=False checks presence and sizes only (sha256 None in files): a cheap look at
    whether a directory can be a whole release, which never reads the data.
    """
    files, mismatches = [], []
    for digest, name in entries:
        path = os.path.join(base_dir, name)
        if not os.path.isfile(path):
            mismatches.append({"file": name, "problem": "missing", "expected": digest, "actual": None})
            continue
        size = os.path.getsize(path)
        if sizes and name in sizes and sizes[name] != size:
            mismatches.append({"file": name, "problem": "size", "expected": sizes[name], "actual": size})
            files.append({"name": name, "size": size, "sha256": None})
            continue
        actual = sha256_file(path) if hash_files else None
        files.append({"name": name, "size": size, "sha256": actual})
        if hash_files and actual != digest:
            mismatches.append({"file": name, "problem": "sha256", "expected": digest, "actual": actual})
    listed = {name for _, name in entries}
    for name in sorted(set(expected_names or ()) - listed):
        if os.path.exists(os.path.join(base_dir, name)):
            mismatches.append({"file": name, "problem": "extra", "expected": None, "actual": "not in manifest"})
    return files, mismatches


def describe_mismatch(m):
    if m["problem"] == "missing":
        return f"{m['file']}: missing"
    if m["problem"] == "extra":
        return f"{m['file']}: extra file not listed in the manifest"
    return f"{m['file']}: {m['problem']} is {m['actual']}, manifest expects {m['expected']}"


def write_file_atomic(path, data, mode=FILE_MODE):
    """Write bytes to a temp file beside `path`, fsync, chmod, then os.replace into place."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path, obj):
    write_file_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


@contextlib.contextmanager
def staging_dir(dest):
    """A private temp dir beside `dest` (same filesystem, so the final rename is atomic).

    Removed on any failure, so an interrupted run leaves nothing at or near `dest`.
    """
    parent = os.path.dirname(os.path.abspath(dest))
    try:
        path = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(dest)}.staging-")
    except OSError as exc:
        raise SaraiError(f"{dest} is not writable: cannot create a staging dir in {parent} "
                         f"({exc.strerror}); choose a path under a writable directory") from None
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def stale_work_dirs(dest):
    """The dirs staging_dir and replace_dir make beside `dest` (`.<name>.staging-*`, `.<name>.old-*`)
    that are still there: a build killed mid-way leaves them (about twice the model). Only `dest`'s own
    names, never a link; none when the parent does not exist."""
    parent, name = os.path.split(os.path.abspath(dest))
    prefixes = (f".{name}.staging-", f".{name}.old-")
    try:
        entries = list(os.scandir(parent))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(e.path for e in entries if e.name.startswith(prefixes) and e.is_dir(follow_symlinks=False))


def remove_stale_work_dirs(dest):
    """Remove stale_work_dirs(dest); only for a caller that holds the build lock (a live build of the
    same dest would lose its staging dir). Returns the paths removed."""
    removed = stale_work_dirs(dest)
    for path in removed:
        shutil.rmtree(path)
    return removed


def fsync_tree(path):
    """Flush every file and the directory itself, so a crash after the rename finds whole files."""
    for name in os.listdir(path):
        fd = os.open(os.path.join(path, name), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_dir(new_dir, dest):
    """Move a finished directory to `dest`, replacing an older one only at this last step.

    POSIX cannot swap two directories atomically with rename(2), so an existing dest is first
    renamed aside and removed only after the new one is in place; if the second rename fails the
    old one is put back.
    """
    old = None
    if os.path.lexists(dest):
        old = tempfile.mkdtemp(dir=os.path.dirname(dest), prefix=f".{os.path.basename(dest)}.old-")
        os.rmdir(old)
        os.rename(dest, old)
    try:
        os.rename(new_dir, dest)
    except BaseException:
        if old:
            os.rename(old, dest)
        raise
    if old:
        shutil.rmtree(old, ignore_errors=True)
