#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: sarai_disk_preflight
short_description: Check an inference server has room for the releases it will receive, and find our leftovers
description:
  - Runs on each inference server before the transfer. The releases in O(releases) whose directory
    under O(path) is not already a whole release are the incoming ones; their bytes, plus
    O(margin_percent) and O(margin_bytes), must be free on the filesystem of O(path) (its nearest
    existing parent when it does not exist yet). When O(remote_tmp) is on another filesystem, it must
    have room for the largest incoming file (C(copy) lands each file there first).
    Otherwise the task fails naming the host, the path, the sizes needed and free, and what to do.
  - Reports what interrupted runs left, as RV(leftovers), in three kinds. C(release) is a
    C(<variant>-<12 hex>) directory that cannot be a whole release (no manifest, a manifest its name
    does not name, a listed file missing or cut short). C(partial) is a copy in progress,
    C(.<release id>.partial-<token>). C(remote_tmp) is an C(ansible-tmp-*) directory under O(remote_tmp)
    that nothing wrote for O(remote_tmp_min_age_minutes).
  - Finding leftovers never reads release data, and a release that verifies, or whose id is in
    O(protect), is never one of them.
  - With O(remove_leftovers=true) it removes them (before measuring the space); nothing else ever
    changes. Symbolic links are never followed or removed.
version_added: "0.2.0"
author: sarai-deploy
options:
  path:
    description: The releases directory on the server (C(sarai_releases_dir)); it may not exist yet.
    type: path
    required: true
  releases:
    description:
      - The releases the transfer will ship, each C({id, files}) with C(files) a list of C({name, size})
        (bytes); other keys are ignored, so the C(files) onnx_manifest returns for the controller's verified
        copy can be passed as it is. Releases already whole on the server need no space.
    type: list
    elements: dict
    default: []
  margin_percent:
    description: Extra room, as a percentage of the incoming bytes.
    type: float
    default: 10
  margin_bytes:
    description: Extra room in bytes on top of O(margin_percent) (default 256 MiB). No margin is asked when nothing comes.
    type: int
    default: 268435456
  protect:
    description: Release ids never reported or removed as leftovers (the running and the previous release).
    type: list
    elements: str
    default: []
  remote_tmp:
    description:
      - Ansible's remote tmp of the connecting user (C(~<ansible_user>/.ansible/tmp)), where a copy
        lands before it is moved. Omit it to look at neither its space nor its leftovers.
    type: path
  remote_tmp_min_age_minutes:
    description:
      - An C(ansible-tmp-*) directory is a leftover only when nothing in it changed for this long; the
        remote tmp is shared with every Ansible run of that user, and a live copy writes continuously.
    type: int
    default: 60
  remove_leftovers:
    description: Remove the leftovers found (in check mode, report them and count their size as freed).
    type: bool
    default: false
  host:
    description: The host name the messages use (default the server's own hostname).
    type: str
notes:
  - Supports check mode and diff mode (the leftovers that are, or would be, removed).
  - Partial copies are removed whatever their age. Only one deploy runs on a host at a time, and this
    module runs before that deploy copies anything, so a partial found is from a dead run.
seealso:
  - module: onnx_manifest
"""

EXAMPLES = r"""
- name: Check the server has room for the releases it will receive, and remove leftovers
  sarai_disk_preflight:
    path: /opt/sarai/models/releases
    releases:
      - id: int8-0123456789ab
        files:
          - {name: agi_audio_core_int8.onnx, size: 1048576}
          - {name: agi_audio_core_int8.onnx.data, size: 1126170624}
          - {name: quantization.json, size: 4096}
    protect: [fp32-ba9876543210]
    remote_tmp: ~noel/.ansible/tmp
    remove_leftovers: true
    host: "{{ inventory_hostname }}"
"""

RETURN = r"""
incoming:
  description: Ids of the releases the server does not have whole yet (the ones the space is for).
  returned: always
  type: list
  elements: str
present:
  description: Ids of the releases already whole on the server.
  returned: always
  type: list
  elements: str
incoming_bytes:
  description: Bytes of the incoming releases.
  returned: always
  type: int
space:
  description: One check per filesystem, with C(what) (releases, remote tmp), C(path), C(checked_path), C(needed_bytes), C(free_bytes), C(ok).
  returned: always
  type: list
  elements: dict
leftovers:
  description: Leftovers found, each with C(path), C(kind) (release, partial, remote_tmp), C(reason), C(size_bytes), C(removed).
  returned: always
  type: list
  elements: dict
host:
  description: The host name the messages use.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.sarai_disk_preflight import PreflightError, preflight


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            releases=dict(type="list", elements="dict", default=[]),
            margin_percent=dict(type="float", default=10),
            margin_bytes=dict(type="int", default=256 << 20),
            protect=dict(type="list", elements="str", default=[]),
            remote_tmp=dict(type="path"),
            remote_tmp_min_age_minutes=dict(type="int", default=60),
            remove_leftovers=dict(type="bool", default=False),
            host=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        result = preflight(p["path"], releases=p["releases"], protect=p["protect"], margin_percent=p["margin_percent"],
                           margin_bytes=p["margin_bytes"], remote_tmp=p["remote_tmp"],
                           remote_tmp_min_age_minutes=p["remote_tmp_min_age_minutes"],
                           remove_leftovers=p["remove_leftovers"], check_mode=module.check_mode, host=p["host"])
    except (PreflightError, OSError) as exc:
        module.fail_json(msg=f"disk preflight of {p['path']}: {exc}")
    if not module._diff:
        result.pop("diff", None)
    if result.pop("failed", False):
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
