#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: sarai_check_inputs
short_description: Check every input of a SARAi deploy or rollback before anything changes
description:
  - Run once on the controller at the start of C(deploy_int8.yml) and C(rollback.yml). It checks the
    variant catalog, the gates, the variant names, the rollout batches, the paths on the servers,
    the keep counts and the inventory groups, and fails listing every problem at once. Each problem
    names the variable, its value and what to do.
  - The rules are the ones the later steps apply (quantization options from the quantizer, gate
    names and ranges from validation), so a value those would refuse after the switch, such as
    C(cosine_min) set to C("high"), is refused here before anything changes.
  - "No string of the catalog (keys and values, at any depth) and no variant name may hold a control
    character (newline, tab, NUL, ...): those values are written into files on the servers."
  - It changes nothing, on the controller or anywhere else.
version_added: "0.2.0"
author: sarai-deploy
options:
  playbook:
    description:
      - Which playbook the inputs are for. A C(rollback) only renders C(sarai.yaml) from the catalog, so
        it is refused only for what it reads (display_name, file, max_memory_mb, the variant asked
        for, paths, groups); a typo in a gate never blocks a way back.
    type: str
    choices: [deploy, rollback]
    default: deploy
  catalog:
    description:
      - The variant catalog, C(sarai_model_variants), passed whole. Each variant needs C(display_name),
        C(file) (a plain C(.onnx) file name, no path separators, no C(..)), C(max_memory_mb) (a positive
        whole number) and, for a deploy, C(quantization) (a known method and options of the right types)
        and C(gates) (as O(gates)). Keys nothing reads are warnings.
      - Variant names are letters, digits and C(_) (no C(-), which separates the variant from the
        manifest hash in a release id).
    type: dict
  gates:
    description:
      - The default gates, C(sarai_validation_gates). Known gate names only; limits are numbers (not
        strings) in the ranges validation accepts, C(cosine_min) in (0, 1], C(*_max) >= 0, C(speedup_min) > 0;
        null disables a gate.
    type: dict
  target_variant:
    description: The variant a deploy ships, C(sarai_target_variant); required for a deploy.
    type: str
  reference_variant:
    description: The FP32 reference, C(sarai_reference_variant). Required for a deploy; its method must be C(none).
    type: str
  rollback_variant:
    description: The variant a rollback must land on, C(sarai_rollback_to); empty means any.
    type: str
  batches:
    description:
      - Rolling batches, C(sarai_rollout_batches), as Ansible's C(serial) takes them. A positive
        number of hosts, a percentage C("N%") with 0 < N <= 100, or a non-empty list of them.
    type: raw
  paths:
    description:
      - Paths on the servers by variable name (C(sarai_root), C(sarai_releases_dir), ...). Each value is one
        path, or a dict of host name to path when it differs per host. Each must be absolute, without
        C(..), and not C(/).
    type: dict
  keep:
    description:
      - Keep counts by variable name (e.g. C(model_transfer_keep_releases)), each a whole number >= 1,
        or a dict of host name to count.
    type: dict
  groups:
    description:
      - The inventory's groups (the C(groups) magic variable). Every playbook needs a host in group
        C(inference); a deploy needs exactly one host in group C(quantizers).
    type: dict
  inventory_sources:
    description: The inventory sources (C(ansible_inventory_sources)), named in the messages.
    type: list
    elements: str
notes:
  - Supports check mode; it never changes anything, so a run in check mode checks the same.
seealso:
  - module: onnx_quantize
  - module: onnx_validate
"""

EXAMPLES = r"""
- name: Check the deploy's inputs before anything changes
  sarai_check_inputs:
    playbook: deploy
    catalog: "{{ sarai_model_variants | default(omit) }}"
    gates: "{{ sarai_validation_gates | default(omit) }}"
    target_variant: "{{ sarai_target_variant | default(omit) }}"
    reference_variant: "{{ sarai_reference_variant | default(omit) }}"
    batches: "{{ sarai_rollout_batches | default(omit) }}"
    paths:
      sarai_root: "{{ dict(groups['inference'] | default([]) | zip(groups['inference'] | default([]) | map('extract', hostvars) | map(attribute='sarai_root', default=None))) }}"
    keep:
      model_transfer_keep_releases: 3
    groups: "{{ groups }}"
    inventory_sources: "{{ ansible_inventory_sources }}"
  run_once: true
  delegate_to: localhost
"""

RETURN = r"""
problems:
  description: Every problem found, each naming the variable, the value and what to do (empty when all is well).
  returned: always
  type: list
  elements: str
batches:
  description: The rollout batches as a list (numbers and C("N%") strings), or null when O(batches) was not given.
  returned: always
  type: raw
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.sarai_inputs import check_inputs, describe

CHECKED = ("catalog", "gates", "target_variant", "reference_variant", "rollback_variant", "batches", "paths",
           "keep", "groups", "inventory_sources")


def main():
    module = AnsibleModule(
        argument_spec=dict(
            playbook=dict(type="str", default="deploy", choices=["deploy", "rollback"]),
            catalog=dict(type="dict"),
            gates=dict(type="dict"),
            target_variant=dict(type="str"),
            reference_variant=dict(type="str"),
            rollback_variant=dict(type="str"),
            batches=dict(type="raw"),
            paths=dict(type="dict"),
            keep=dict(type="dict"),
            groups=dict(type="dict"),
            inventory_sources=dict(type="list", elements="str"),
        ),
        supports_check_mode=True,
    )
    playbook = module.params["playbook"]
    result = check_inputs(playbook, **{key: module.params[key] for key in CHECKED})
    for warning in result["warnings"]:
        module.warn(warning)
    if result["problems"]:
        module.fail_json(msg=describe(playbook, result["problems"]), changed=False, problems=result["problems"],
                         batches=result["batches"])
    module.exit_json(changed=False, problems=[], batches=result["batches"])


if __name__ == "__main__":
    main()
