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

- name: Write a manifest for a hand-placed FP32 model and its data file
  onnx_manifest:
    path: /srv/sarai-build/models/onnx/agi_audio_core.onnx
    state: present
"""

RETURN = r"""
verified: {description: Whether every file matches (always true after O(state=present))., returned: always, type: bool}
mismatches:
  description: One entry per problem, with C(file), C(problem) (missing, extra, size, sha256), C(expected), C(actual).
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
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.sarai_onnx.commands import run_module


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            state=dict(type="str", default="verified", choices=["present", "verified"]),
            manifest=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    run_module(module, "manifest")


if __name__ == "__main__":
    main()
