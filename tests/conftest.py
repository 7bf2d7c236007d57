"""Make the project's Ansible code importable in tests the way Ansible itself finds it."""
from __future__ import annotations

import pathlib
import sys

import ansible.module_utils

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODULE_UTILS = str(ROOT / "module_utils")

# Tests import module_utils code directly (`import sarai_state`) ...
if MODULE_UTILS not in sys.path:
    sys.path.insert(0, MODULE_UTILS)
# ... and load modules from library/, which import it as `ansible.module_utils.<name>`.
if MODULE_UTILS not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(MODULE_UTILS)
