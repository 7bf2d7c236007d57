#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: onnx_manifest
short_description: Write or verify the sha256 manifest of an ONNX model or release directory
description:
  - The manifest is C(MANIFEST.sha256) in sha256sum format (C(<64 hex>  <name>), sorted by name),
    so C(sha256sum -c MANIFEST.sha256) also checks it.
  - For a release directory it lists every regular file in it (dot files and the manifest itself
    excluded). For a model file it lists the model and its external data files and sits beside them.
  - Files are hashed in 1 MiB chunks; a model is never read into memory.
version_added: "0.1.0"
author: sarai-deploy
options:
  path:
    description: A release directory, or a C(.onnx) model file.
    type: path
    required: true
  state:
    description:
      - C(present) writes the manifest when its content would change (atomically, mode 0644).
      - C(verified) checks every listed file (missing, size when C(quantization.json) records it,
        sha256) and that no file that belongs in it is unlisted (extra); the task fails listing
        every mismatch.
    type: str
    choices: [present, verified]
    default: verified
  manifest:
    description: Manifest path. Default C(MANIFEST.sha256) in the directory (beside the model file).
    type: path
  release_id:
    description:
      - With O(state=verified), the release the directory must be, C(<variant>-<sha12>). The sha256
        of the manifest's bytes must start with its 12 hex digits, or the task fails naming the
        manifest and both hashes before any file is checked. A manifest rewritten to match altered
        files is refused this way.
      - Default (unset) the directory's own name when it has that form, so C(releases/int8-0123456789ab)
        is always checked against its name. Set it for a copy under a temporary name
        (C(.int8-0123456789ab.partial-<token>)); set it to an empty string to skip the check.
    type: str
  manifest_sha256:
    description:
      - With O(state=verified), the full sha256 (64 hex digits) the manifest's bytes must have, e.g.
        the RV(manifest_sha256) of the verified copy on the controller. Checked like O(release_id),
        before any file.
    type: str
notes:
  - Supports check mode and diff mode (for O(state=present)).
seealso:
  - module: onnx_quantize
"""

EXAMPLES = r"""
- name: Verify the release copied to the inference host
  onnx_manifest:
    path: /opt/sarai/models/releases/int8-0123456789ab
    state: verified

- name: Verify a copy in progress is the release the controller staged, then its files
  onnx_manifest:
    path: /opt/sarai/models/releases/.int8-0123456789ab.partial-20261123T101500Z
    state: verified
    release_id: int8-0123456789ab
    manifest_sha256: 0123456789abf00d0123456789abf00d0123456789abf00d0123456789abf00d

- name: Write a manifest for a hand-placed FP32 model and its data file
  onnx_manifest:
    path: /srv/sarai-build/models/onnx/agi_audio_core.onnx
    state: present
"""

RETURN = r"""
verified: {description: Whether every file matches (always true after O(state=present))., returned: always, type: bool}
mismatches:
  description:
    - One entry per problem, with C(file), C(problem) (missing, extra, size, sha256), C(expected), C(actual).
    - A manifest that is not the release's gives one entry for C(MANIFEST.sha256) with problem
      C(release_id) or C(manifest_sha256), and no file is checked.
  returned: always
  type: list
  elements: dict
files:
  description: The files checked or listed, with C(name), C(size) and C(sha256).
  returned: always
  type: list
  elements: dict
manifest_path: {description: Path of the manifest., returned: always, type: str}
manifest_sha256: {description: sha256 of the manifest bytes (release ids use its first 12 hex digits)., returned: always, type: str}
release_id:
  description: The release id the manifest was checked against (given or taken from the directory name), or null.
  returned: when O(state=verified)
  type: str
expected_manifest_sha256:
  description: The full manifest sha256 checked against (O(manifest_sha256)), or null.
  returned: when O(state=verified)
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.sarai_onnx.commands import run_module


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            state=dict(type="str", default="verified", choices=["present", "verified"]),
            manifest=dict(type="path"),
            release_id=dict(type="str"),
            manifest_sha256=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    run_module(module, "manifest")


if __name__ == "__main__":
    main()
