#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: sarai_release_state
short_description: Record which model release an inference host runs, ran before, and must never run again
description:
  - Keeps the deployment state of one SARAi inference host in a JSON local fact
    (C(/etc/ansible/facts.d/sarai_model.fact) by default), read back as C(ansible_local.sarai_model).
  - Records a switch to a release (the old current becomes C(previous)), a passed validation, or a
    failure (the release is marked bad so that no rollback lands on it).
  - Always returns the release a rollback would land on now.
  - Writes atomically; unchanged state is not rewritten, so repeated runs report C(ok).
version_added: "0.1.0"
author: sarai-deploy
options:
  path:
    description: The state file.
    type: path
    default: /etc/ansible/facts.d/sarai_model.fact
  event:
    description:
      - C(switched) records that the service now points at O(release).
      - C(validated) records that O(release) passed validation (clears a bad mark).
      - C(failed) marks O(release) bad.
      - C(read) changes nothing and only returns the state.
    type: str
    choices: [switched, validated, failed, read]
    default: read
  release:
    description:
      - The release concerned; required unless O(event=read).
      - Keys C(id), C(variant), C(model_path) are required, C(manifest_sha256) is recorded when given.
    type: dict
  reason:
    description: Why the switch happened, recorded in the history (C(deploy) or C(rollback)).
    type: str
    choices: [deploy, rollback]
    default: deploy
  baseline:
    description:
      - With O(event=switched) on a host that has no recorded current release, this release becomes
        C(previous), so a first deploy can still be rolled back (to the FP32 reference).
    type: dict
  rollback_variant:
    description: Restrict the returned rollback target to releases of this variant.
    type: str
  leaving:
    description:
      - Id of the release a rollback abandons (default the current one). When the service does not
        run it (a deploy failed before its switch was recorded), the current release is the target.
    type: str
  keep:
    description: How many releases cleanup keeps; sets the returned RV(releases_to_keep).
    type: int
    default: 3
notes:
  - Supports check mode and diff mode.
"""

EXAMPLES = r"""
- name: Record the switch to the INT8 release
  sarai_release_state:
    event: switched
    release:
      id: int8-0123456789ab
      variant: int8
      model_path: /opt/sarai/models/releases/int8-0123456789ab/agi_audio_core_int8.onnx
    baseline:
      id: fp32-ba9876543210
      variant: fp32
      model_path: /opt/sarai/models/releases/fp32-ba9876543210/agi_audio_core.onnx

- name: Find where a rollback would land
  sarai_release_state:
    event: read
  register: sarai_state
"""

RETURN = r"""
state:
  description: The state after the event.
  returned: always
  type: dict
  contains:
    current: {description: Release the service points at, with time, event and validated., type: dict}
    previous: {description: Release it pointed at before., type: dict}
    bad_releases: {description: Release ids that failed and must not be rolled back to., type: list}
    history: {description: The last 20 switches, oldest first., type: list}
rollback_target:
  description: The release a rollback would land on (newest good release other than the one left), or null.
  returned: always
  type: dict
releases_to_keep:
  description: Release ids cleanup must keep (current, previous, then the newest, O(keep) in all).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.sarai_state import (
    StateError,
    load_state,
    record_failed,
    record_switch,
    record_validated,
    releases_to_keep,
    render,
    rollback_target,
    save_state,
)


def apply_event(params, state):
    event = params["event"]
    release = params["release"]
    if event == "read":
        return state
    if not release:
        raise StateError("event=%s needs `release` (a dict with id, variant, model_path)" % event)
    if event == "switched":
        return record_switch(state, release, event=params["reason"], baseline=params["baseline"])
    if event == "validated":
        return record_validated(state, release.get("id"))
    return record_failed(state, release.get("id"))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", default="/etc/ansible/facts.d/sarai_model.fact"),
            event=dict(type="str", default="read", choices=["switched", "validated", "failed", "read"]),
            release=dict(type="dict"),
            reason=dict(type="str", default="deploy", choices=["deploy", "rollback"]),
            baseline=dict(type="dict"),
            rollback_variant=dict(type="str"),
            leaving=dict(type="str"),
            keep=dict(type="int", default=3),
        ),
        supports_check_mode=True,
    )
    path = module.params["path"]
    try:
        before = load_state(path)
        after = apply_event(module.params, before)
        changed = after != before
        if changed and not module.check_mode:
            save_state(path, after)
    except (StateError, OSError) as exc:
        module.fail_json(msg="sarai state %s: %s" % (path, exc))
    result = dict(
        changed=changed,
        state=after,
        rollback_target=rollback_target(after, module.params["rollback_variant"], module.params["leaving"]),
        releases_to_keep=releases_to_keep(after, module.params["keep"]),
    )
    if module._diff and changed:
        result["diff"] = dict(before=render(before), after=render(after), before_header=path, after_header=path)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
