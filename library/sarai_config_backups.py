#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: sarai_config_backups
short_description: Keep the newest N backups that Ansible's backup option leaves beside a config file
description:
  - C(ansible.builtin.template) and C(copy) with C(backup=true) leave C(<file>.<pid>.<YYYY-MM-DD@HH:MM:SS>~)
    beside the file on every change. This removes all but the newest O(keep) of them, ordered by the
    time stamp in their name (their mtime is the old file's, not the backup's).
  - Only regular files with exactly that name form are considered; links and other files are never touched.
version_added: "0.2.0"
author: sarai-deploy
options:
  path:
    description: The config file whose backups are pruned, e.g. C(/opt/sarai/config/sarai.yaml).
    type: path
    required: true
  keep:
    description: How many of the newest backups to keep (at least 1, the way back to a hand-edited config).
    type: int
    default: 5
notes:
  - Supports check mode and diff mode (the list of backups before and after).
seealso:
  - module: ansible.builtin.template
"""

EXAMPLES = r"""
- name: Keep the last 5 backups of sarai.yaml
  sarai_config_backups:
    path: /opt/sarai/config/sarai.yaml
    keep: 5
"""

RETURN = r"""
kept:
  description: Paths of the backups kept, oldest first.
  returned: always
  type: list
  elements: str
removed:
  description: Paths of the backups removed (or that would be, in check mode), oldest first.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.sarai_config_backups import BackupsError, prune_backups


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            keep=dict(type="int", default=5),
        ),
        supports_check_mode=True,
    )
    try:
        result = prune_backups(module.params["path"], module.params["keep"], check_mode=module.check_mode)
    except BackupsError as exc:
        module.fail_json(msg=f"backups of {module.params['path']}: {exc}")
    if not module._diff or not result["changed"]:
        result.pop("diff")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
