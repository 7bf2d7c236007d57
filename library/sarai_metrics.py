#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: sarai_metrics
short_description: Write the deploy's node_exporter textfile on a SARAi server, or check that it can be written
description:
  - With O(state=present), renders the Prometheus text the textfile collector of node_exporter serves - the
    release SARAi runs (C(sarai_release_info) with C(id), C(variant), C(method) labels), when it was switched,
    whether it is validated, the numbers of O(validation) (P50, P99, speedup, cosine, peak RSS), the outcome of
    O(bake), and the releases marked bad - and writes it to O(path) atomically (a temp file in the same
    directory, then a rename), mode 0644. What runs and what is bad come from the deployment state (O(state_file)
    and the release O(config) names), so after a rollback the file names the release it went back to.
  - With O(state=writable), changes nothing and fails when the directory of O(path) does not exist or is not
    writable, naming C(sarai_metrics_textfile) (the deploy's preflight runs this before anything changes).
  - Rendering is module_utils/sarai_metrics.py. Nothing secret is written.
version_added: "0.3.0"
author: sarai-deploy
options:
  path:
    description: The textfile, e.g. C(/var/lib/prometheus/node-exporter/sarai_deploy.prom); its directory must exist.
    type: path
    required: true
  state:
    description: C(present) writes the file; C(writable) only checks that it could be written.
    type: str
    choices: [present, writable]
    default: present
  state_file:
    description: The deployment state (C(sarai_state_file)). Needed for O(state=present).
    type: path
  config:
    description: SARAi's C(sarai.yaml) (C(sarai_config_path)); the release it names is what runs.
    type: path
  validation:
    description: C({release, metrics}) of the validation of this run (the metrics onnx_validate returned); empty, none.
    type: dict
    default: {}
  bake:
    description: The result of M(sarai_bake) in this run (C(release), C(passed), C(peak_memory_mb), ...); empty, none.
    type: dict
    default: {}
notes:
  - Supports check mode (reports whether the file would change, writes nothing).
seealso:
  - module: sarai_bake
  - module: sarai_release_state
"""

EXAMPLES = r"""
- name: Write what runs here for monitoring
  sarai_metrics:
    path: /var/lib/prometheus/node-exporter/sarai_deploy.prom
    state_file: /etc/ansible/facts.d/sarai_model.fact
    config: /opt/sarai/config/sarai.yaml
    validation: {release: int8-0123456789ab, metrics: {p50_ms: 812.0, speedup: 2.4, cosine: 0.995}}
    bake: "{{ bake_result }}"
"""

RETURN = r"""
path: {description: O(path)., returned: always, type: str}
running: {description: The release id that runs (what the file names), or null., returned: when state is present, type: str}
content: {description: The text written (or that would be written in check mode)., returned: when state is present, type: str}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.sarai_metrics import directory_problem, render, write_atomic
from ansible.module_utils.sarai_state import StateError, current_entry, load_state, switched_release

VARIABLE = "sarai_metrics_textfile"


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            state=dict(type="str", choices=["present", "writable"], default="present"),
            state_file=dict(type="path"),
            config=dict(type="path"),
            validation=dict(type="dict", default={}),
            bake=dict(type="dict", default={}),
        ),
        required_if=[("state", "present", ("state_file", "config"))],
        supports_check_mode=True,
    )
    p = module.params
    problem = directory_problem(p["path"])
    if problem:
        module.fail_json(msg=f"{VARIABLE} = {p['path']}: {problem}; install "
                         "prometheus-node-exporter (it creates /var/lib/prometheus/node-exporter), point "
                         f"{VARIABLE} at a writable directory, or set {VARIABLE}: '' to write no metrics",
                         path=p["path"])
    if p["state"] == "writable":
        module.exit_json(changed=False, path=p["path"])
    try:
        state = load_state(p["state_file"])
        switched = switched_release(p["config"])
    except StateError as exc:
        module.fail_json(msg=str(exc), path=p["path"])
    running = current_entry(state, switched) or ({"id": switched} if switched else None)
    content = render(running, p["validation"], p["bake"], state.get("bad_releases"))
    changed = True
    if module.check_mode:
        try:
            with open(p["path"], encoding="utf-8") as handle:
                changed = handle.read() != content
        except OSError:
            pass
    else:
        changed = write_atomic(p["path"], content)
    module.exit_json(changed=changed, path=p["path"], running=switched, content=content)


if __name__ == "__main__":
    main()
