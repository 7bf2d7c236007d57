#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: sarai_release_record
short_description: Check on the controller a release record the build host returned, before it is used
description:
  - The build host is not trusted. Its result names files that become paths on the controller and on
    every server, and the model file sarai.yaml points at. Run this on the controller (delegated to
    localhost) where a record is received, before any of it becomes a path.
  - The record's C(id) must be C(<variant>-<12 hex>) for O(variant) and name its C(manifest_sha256)
    (64 hex); C(variant) must be O(variant); C(model_name) must be the catalog's C(file) for it; every
    C(files[].name) a plain file name (no C(/), C(\), leading C(..), control characters, not empty,
    listed once, not C(quantization.json) or C(MANIFEST.sha256)), every C(files[].size) and
    C(size_bytes) a whole number >= 0; C(dest) a path without control characters.
  - With O(staged_dir), the staged C(MANIFEST.sha256) there must hash to the record's C(manifest_sha256)
    and list exactly the record's files and C(quantization.json), with plain names; RV(files) are then
    the names to ship, read from that manifest.
  - Fails listing every problem, each naming the field and the value. It changes nothing.
version_added: "0.3.0"
author: sarai-deploy
options:
  record:
    description: The release record (docs/contracts.md), as model_build made it from the build host's result.
    type: dict
    required: true
  variant:
    description: The variant the controller asked the build for (the key of the record in C(model_build_releases)).
    type: str
    required: true
  catalog_entry:
    description: The controller's catalog entry of O(variant) (C(sarai_model_variants[variant])); its C(file) is the model's name.
    type: dict
    required: true
  staged_dir:
    description:
      - The controller's staged copy of the release, C(<staging dir>/<id>). Its manifest is read, not the
        data files (onnx_manifest verifies those). In check mode a copy not staged yet is not an error.
    type: path
notes:
  - Supports check mode; it never changes anything.
seealso:
  - module: onnx_manifest
"""

EXAMPLES = r"""
- name: Check the release record the build host returned
  sarai_release_record:
    record: "{{ model_build_releases.int8 }}"
    variant: int8
    catalog_entry: "{{ sarai_model_variants.int8 }}"
  delegate_to: localhost

- name: Ship only what the staged manifest lists
  sarai_release_record:
    record: "{{ release }}"
    variant: "{{ release.variant }}"
    catalog_entry: "{{ release.catalog }}"
    staged_dir: ~/.cache/sarai-deploy/releases/{{ release.id }}
  delegate_to: localhost
  register: staged
"""

RETURN = r"""
problems:
  description: Every problem found (empty when the record may be used).
  returned: always
  type: list
  elements: str
files:
  description:
    - With O(staged_dir), the names to ship, from the staged manifest (its files, then C(MANIFEST.sha256));
      otherwise the record's files, C(quantization.json) and C(MANIFEST.sha256).
  returned: always
  type: list
  elements: str
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.sarai_release_record import RECORD_NAME, record_problems, staged_files

MANIFEST_NAME = "MANIFEST.sha256"


def main():
    module = AnsibleModule(
        argument_spec=dict(
            record=dict(type="dict", required=True),
            variant=dict(type="str", required=True),
            catalog_entry=dict(type="dict", required=True),
            staged_dir=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    record = p["record"]
    problems = record_problems(record, p["variant"], p["catalog_entry"])
    names = [f["name"] for f in record.get("files") or []] + [RECORD_NAME, MANIFEST_NAME] if not problems else []
    staged = p["staged_dir"]
    if not problems and staged and not (module.check_mode and not os.path.exists(os.path.join(staged, MANIFEST_NAME))):
        names, problems = staged_files(staged, record)
    if problems:
        module.fail_json(msg=f"release record {record.get('id')!r} of {p['variant']} refused, nothing of it was used: "
                             + " | ".join(problems), problems=problems, files=[])
    module.exit_json(changed=False, problems=[], files=names)


if __name__ == "__main__":
    main()
