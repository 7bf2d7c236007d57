#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: sarai_lock
short_description: Lock an inference host or a build directory for one deploy or rollback run
description:
  - Takes, releases or breaks a lock file on the target. The file holds who holds it - controller host,
    user, process id, when the run started and took the lock, the playbook and what it is doing.
  - The action plugin of the same name describes the run on the controller, retries while the lock is
    held when O(wait_s) allows, tells a live holder from a stale one (a run on this controller whose
    process is gone), and fails naming the holder. The module only does the atomic file operations.
  - A lock the run already holds is taken again, so a rollback inside a deploy works.
  - Taking and releasing the lock are not reported as changes (the lock is gone again at the end of the
    run, so a deploy that changes nothing else stays C(changed=0)); breaking a lock is.
  - Removing a lock (release or break) renames it aside atomically, checks that it moved the lock of the
    holder it judged, and puts it back otherwise; the lock file and its directory are fsynced.
  - Releasing removes the lock only when this run holds it; a run that could not take it never removes
    another run's lock.
version_added: "0.2.0"
author: sarai-deploy
options:
  path:
    description: The lock file; its directory is created when missing.
    type: path
    required: true
  state:
    description:
      - C(locked) takes the lock (fails naming the holder when another run holds it).
      - C(unlocked) releases it if this run holds it.
    type: str
    choices: [locked, unlocked]
    default: locked
  wait_s:
    description:
      - Seconds to wait for a lock another live run holds before failing (0 fails at once).
      - A stale lock is never waited for - it does not go away by itself.
    type: int
    default: 0
  poll_s:
    description: Seconds between two attempts while waiting.
    type: int
    default: 5
  break_stale:
    description:
      - Remove a stale lock - its holder was a run on this controller whose process is gone, or the
        controller rebooted since. A lock held by a live run on this controller is never broken.
      - A lock this controller cannot check (taken on another controller, or an unreadable file) is not
        stale; it needs O(break_id).
    type: bool
    default: false
  break_id:
    description:
      - Remove the lock if this names its holder - the holder id the failure message prints (for an
        unreadable file, its C(unreadable-<sha256>) fingerprint). For a lock taken on another controller,
        check there that no run is active first. A lock that changed hands since is left alone.
      - Empty breaks nothing. A live run on this controller is never broken.
    type: str
    default: ""
  purpose:
    description: What the run does, recorded in the lock (for example C(deploy int8-0123456789ab)).
    type: str
    default: ""
attributes:
  check_mode:
    support: full
    details: Reports whether the lock could be taken; writes nothing.
  platform:
    platforms: posix
    details: On a Windows host (a Windows build host) the task is skipped with a warning; there is no PowerShell twin yet.
notes:
  - Needs the action plugin C(action_plugins/sarai_lock.py) (ansible.cfg C(action_plugins)); the module on
    its own is given the holder record by it.
  - docs/contracts.md (Deploy locks) lists the lock files of the project and the options that wait or break.
"""

EXAMPLES = r"""
- name: Lock this server for the deploy (fails at once, naming the holder, if another run has it)
  sarai_lock:
    path: /var/lib/sarai-deploy/deploy.lock
    purpose: deploy int8-0123456789ab

- name: Wait up to 10 minutes for another deploy to finish
  sarai_lock:
    path: /var/lib/sarai-deploy/deploy.lock
    wait_s: 600

- name: Unlock this server
  sarai_lock:
    path: /var/lib/sarai-deploy/deploy.lock
    state: unlocked
"""

RETURN = r"""
holder:
  description: The holder of the lock after the task (this run's record after taking it; null after releasing).
  returned: always
  type: dict
  sample: {id: "ctl1:4242:98765", controller: ctl1, user: noel, pid: 4242, playbook: playbooks/deploy_int8.yml,
           run_started: "2026-11-23T19:30:00Z", since: "2026-11-23T19:31:05Z", purpose: deploy int8-0123456789ab}
broken:
  description: The holder this task removed before taking the lock, when it broke one.
  returned: when a stale lock was broken
  type: dict
released:
  description: Whether this run held the lock and removed it.
  returned: when state=unlocked
  type: bool
waited_s:
  description: Seconds spent waiting for another run's lock.
  returned: when state=locked
  type: float
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.sarai_lock import LockError, acquire, break_lock, release


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            # locked/unlocked come from the task; `broken` and the holder record from the action plugin.
            state=dict(type="str", default="locked", choices=["locked", "unlocked", "broken"]),
            holder=dict(type="dict"),
            holder_id=dict(type="str"),
        ),
        required_if=[("state", "locked", ["holder"])],
        supports_check_mode=True,
    )
    path, state = module.params["path"], module.params["state"]
    try:
        if state == "locked":
            acquired, changed, holder = acquire(path, module.params["holder"], module.check_mode)
            module.exit_json(changed=changed, acquired=acquired, holder=holder)
        if state == "unlocked":
            changed, holder = release(path, module.params["holder_id"], module.check_mode)
            module.exit_json(changed=changed, holder=holder)
        module.exit_json(changed=break_lock(path, module.params["holder_id"], module.check_mode))
    except (LockError, OSError) as exc:
        module.fail_json(msg="lock %s: %s" % (path, exc))


if __name__ == "__main__":
    main()
