"""Release names: `<variant>-<sha12>` ids and `.<id>.partial-<token>` copies in progress.

A release id names the sha256 of the release's MANIFEST.sha256 (docs/contracts.md), so a manifest
found on a server can be checked against the id it claims before any of its files is trusted.
A copy to a server lands in `.<id>.partial-<token>` beside the releases (a dot name: never listed
as a release) and is renamed to `<id>` only once it verifies.
"""

import re

from .errors import SaraiError

# No '-' in a variant name: the id splits unambiguously at its last '-'.
VARIANT_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_]*"
_TOKEN = r"[A-Za-z0-9_.:@+-]+"  # the run's id in a partial copy's name, e.g. 20261123T101500Z
# \Z, not $: `$` also matches before a trailing newline, and these names become paths.
RELEASE_ID = re.compile(rf"^(?P<variant>{VARIANT_PATTERN})-(?P<sha12>[0-9a-f]{{12}})\Z")
PARTIAL_TOKEN = re.compile(rf"^{_TOKEN}\Z")
PARTIAL_DIR = re.compile(rf"^\.(?P<id>{VARIANT_PATTERN}-[0-9a-f]{{12}})\.partial-(?P<token>{_TOKEN})\Z")
_SHA256 = re.compile(r"^[0-9a-f]{64}\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def plain_name_problem(name):
    """Why `name` cannot be a file directly inside a release dir, or None when it can.

    A release's files are joined to a directory on the build host, the controller and every server:
    a name with a separator, a dot-dot or a control character would land elsewhere (or in a log line).
    """
    if not isinstance(name, str) or not name:
        return "must be a non-empty file name (a string)"
    if "/" in name or "\\" in name:
        return "must be a plain file name, without / or \\"
    if name in (".", "..") or name.startswith(".."):
        return "must not be or start with '..'"
    if _CONTROL.search(name):
        return "must not contain control characters (newline, tab, NUL...)"
    return None


def parse_release_id(value):
    """(variant, sha12) of a release id, or None when `value` does not have the form."""
    match = RELEASE_ID.match(value) if isinstance(value, str) else None
    return (match.group("variant"), match.group("sha12")) if match else None


def partial_dir_name(release, token):
    """The name a copy of `release` in progress has: `.<id>.partial-<token>` (token: the run's id)."""
    if not parse_release_id(release) or not PARTIAL_TOKEN.match(token or ""):
        raise SaraiError(f"cannot name a partial copy of {release!r} with token {token!r}: the id must be "
                         "<variant>-<12 hex> and the token letters, digits or _.:@+-")
    return f".{release}.partial-{token}"


def expected_manifest(release=None, manifest_sha256=None):
    """Normalise the identity a manifest must have: (release id or None, full sha256 or None).

    Bad forms are errors naming the value, so a typo never turns the check off silently.
    """
    if release and not parse_release_id(release):
        raise SaraiError(f"release_id {release!r} is not a release id: it must be <variant>-<12 lowercase hex> "
                         "(the first 12 hex digits of the sha256 of MANIFEST.sha256)")
    if manifest_sha256:
        manifest_sha256 = manifest_sha256.lower()
        if not _SHA256.match(manifest_sha256):
            raise SaraiError(f"manifest_sha256 {manifest_sha256!r} must be the 64 hex digits of a sha256")
        if release and not manifest_sha256.startswith(parse_release_id(release)[1]):
            raise SaraiError(f"manifest_sha256 {manifest_sha256} and release_id {release} name different "
                             "manifests: pass the values of the same release")
    return release or None, manifest_sha256 or None


def identity_mismatch(actual_sha256, release=None, manifest_sha256=None):
    """A mismatch entry when a manifest whose bytes hash to `actual_sha256` is not the one expected."""
    if manifest_sha256 and actual_sha256 != manifest_sha256:
        return {"file": "MANIFEST.sha256", "problem": "manifest_sha256", "expected": manifest_sha256,
                "actual": actual_sha256}
    if release and not actual_sha256.startswith(parse_release_id(release)[1]):
        return {"file": "MANIFEST.sha256", "problem": "release_id", "expected": parse_release_id(release)[1],
                "actual": actual_sha256}
    return None


def describe_identity_mismatch(wrong, manifest_path, release=None):
    """The refusal of a manifest that is not the release's: names the file and both hashes."""
    if wrong["problem"] == "manifest_sha256":
        expected = f"the release's manifest has sha256 {wrong['expected']}"
    else:
        expected = f"release id {release} names a manifest whose sha256 starts with {wrong['expected']}"
    return (f"{manifest_path} is not the manifest of this release: its sha256 is {wrong['actual']}, but "
            f"{expected}. The manifest on this host was rewritten or belongs to another build.")
