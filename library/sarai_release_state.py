#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: sarai_release_state
short_description: Record the switches of a SARAi inference host, the releases marked bad, and where a rollback lands
description:
  - Keeps the deployment history of one SARAi inference host in a JSON local fact
    (C(/etc/ansible/facts.d/sarai_model.fact) by default), read back as C(ansible_local.sarai_model).
  - What runs is not stored - it is the release the service's config names (O(config),
    C(audio_omni.deployment.release) of sarai.yaml); the state keeps the history of switches that
    reached a healthy service (with whether each passed validation) and the releases marked bad.
  - Records a switch to a release, a passed validation, or a failure (the release is marked bad so
    that no rollback lands on it). Always returns what runs, what ran before and the release a
    rollback would land on now (the one rollback rule, C(module_utils/sarai_state.py)).
  - Writes atomically; unchanged state is not rewritten, so repeated runs report C(ok).
  - Reading O(config) needs PyYAML on the target's Python (the runtime venv has it). A sarai.yaml that does
    not parse (or holds the wrong types) counts as unmanaged - no release runs - with a warning, so that
    the deploy or rollback that rewrites it can run.
  - An empty or wrongly typed state file is an error naming the file and what to do; it is never read as empty.
version_added: "0.1.0"
author: sarai-deploy
options:
  path:
    description: The state file.
    type: path
    default: /etc/ansible/facts.d/sarai_model.fact
  config:
    description: The service's sarai.yaml; the release it names is what runs. A missing file or one without
      C(audio_omni.deployment) means no managed release runs.
    type: path
    required: true
  event:
    description:
      - C(switched) records that the service is healthy on O(release) (after sarai.yaml names it).
      - C(validated) records that O(release), which runs, passed validation (clears a bad mark).
      - C(failed) marks O(release) bad.
      - C(preflight) (a run's preflight, under the host lock) marks C(unvalidated) every switch whose
        run ended before validating it; no rollback lands on those.
      - C(read) changes nothing and only returns the state.
    type: str
    choices: [switched, validated, failed, preflight, read]
    default: read
  release:
    description:
      - The release record concerned; required unless O(event=read).
      - Keys C(id), C(variant), C(model_name) are required; C(manifest_sha256) and C(catalog) are recorded when given.
    type: dict
  reason:
    description:
      - Why the switch happened, recorded in the history.
      - C(baseline) is a switch back to the reference the host ran before it was managed (a rollback that
        found no validated release and landed on the fallback); it is recorded validated, like the baseline.
    type: str
    choices: [deploy, rollback, tune, baseline]
    default: deploy
  baseline:
    description:
      - With O(event=switched) on a host with no history, this release is recorded first, so a first
        deploy can still be rolled back (to the FP32 reference).
    type: dict
  rollback_variant:
    description: Restrict the returned rollback target to releases of this variant.
    type: str
  leaving:
    description:
      - Id of the release a rollback abandons (default the one that runs). When the service runs another
        one (a deploy failed before it switched), the running release is the target.
    type: str
  keep:
    description: How many releases cleanup keeps; sets the returned RV(releases_to_keep).
    type: int
    default: 3
notes:
  - Supports check mode and diff mode.
"""

EXAMPLES = r"""
- name: Record the switch to the INT8 release once the service is healthy on it
  sarai_release_state:
    config: /opt/sarai/config/sarai.yaml
    event: switched
    release:
      id: int8-0123456789ab
      variant: int8
      model_name: agi_audio_core_int8.onnx
    baseline:
      id: fp32-ba9876543210
      variant: fp32
      model_name: agi_audio_core.onnx

- name: Find where a rollback would land
  sarai_release_state:
    config: /opt/sarai/config/sarai.yaml
  register: sarai_state
"""

RETURN = r"""
state:
  description: The state after the event (what the local fact holds).
  returned: always
  type: dict
  contains:
    history: {description: The last 20 switches that reached a healthy service, oldest first., type: list}
    bad_releases: {description: Release ids that failed and must not be rolled back to., type: list}
switched:
  description: The release id sarai.yaml names (what runs), or null.
  returned: always
  type: str
current:
  description: The history entry of what runs (with C(validated)), or null when its switch was never recorded.
  returned: always
  type: dict
previous:
  description: The newest recorded switch to another release, or null.
  returned: always
  type: dict
rollback_target:
  description: The release record a rollback would land on (the newest release that passed validation here, not
    bad and not the one left), or null.
  returned: always
  type: dict
config_problem:
  description: Why O(config) exists but names no release (not valid YAML, wrong types), or null.
  returned: always
  type: str
releases_to_keep:
  description: Release ids cleanup must keep (running, previous, then the newest, O(keep) in all).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.sarai_state import (
    StateError,
    current_entry,
    load_state,
    mark_unvalidated,
    previous_entry,
    record_failed,
    record_switch,
    record_validated,
    releases_to_keep,
    render,
    rollback_target,
    save_state,
    switched_release,
)


def apply_event(params, state, switched):
    event = params["event"]
    release = params["release"]
    if event == "read":
        return state
    if event == "preflight":
        return mark_unvalidated(state)
    if not release:
        raise StateError("event=%s needs `release` (a record with id, variant, model_name)" % event)
    if event == "switched":
        return record_switch(state, release, event=params["reason"], baseline=params["baseline"])
    if event == "validated":
        return record_validated(state, release.get("id"), switched)
    return record_failed(state, release.get("id"))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", default="/etc/ansible/facts.d/sarai_model.fact"),
            config=dict(type="path", required=True),
            event=dict(type="str", default="read", choices=["switched", "validated", "failed", "preflight", "read"]),
            release=dict(type="dict"),
            reason=dict(type="str", default="deploy", choices=["deploy", "rollback", "tune", "baseline"]),
            baseline=dict(type="dict"),
            rollback_variant=dict(type="str"),
            leaving=dict(type="str"),
            keep=dict(type="int", default=3),
        ),
        supports_check_mode=True,
    )
    path = module.params["path"]
    try:
        switched, config_problem = switched_release(module.params["config"])
        if config_problem:
            module.warn("%s: counted as not managed (no release runs); the deploy or rollback that rewrites it "
                        "can run." % config_problem)
        before = load_state(path)
        after = apply_event(module.params, before, switched)
        changed = after != before
        if changed and not module.check_mode:
            save_state(path, after)
        result = dict(
            changed=changed,
            state=after,
            switched=switched,
            config_problem=config_problem,
            current=current_entry(after, switched),
            previous=previous_entry(after, switched),
            rollback_target=rollback_target(after, switched, module.params["rollback_variant"],
                                            module.params["leaving"]),
            releases_to_keep=releases_to_keep(after, switched, module.params["keep"]),
        )
    except (StateError, OSError) as exc:
        module.fail_json(msg="sarai state %s: %s" % (path, exc))
    if module._diff and changed:
        result["diff"] = dict(before=render(before), after=render(after), before_header=path, after_header=path)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
