"""Every module's DOCUMENTATION describes its argument_spec exactly (what ansible-test's validate-modules
checks): the same options, and for each the same type, default, required, choices and elements. A
module with an action plugin in front (sarai_lock) is described by the plugin's ARGUMENT_SPEC, which
is what a task passes."""
from __future__ import annotations

import importlib.util

import pytest
import yaml

from helpers import ROOT

MODULES = sorted(p.stem for p in (ROOT / "library").glob("*.py"))


class _Built(Exception):
    """Raised by the stand-in AnsibleModule with the arguments main() gave it."""


def _load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _argument_spec(name):
    module = _load(ROOT / "library" / f"{name}.py")
    action = ROOT / "action_plugins" / f"{name}.py"
    if action.exists():
        return module, _load(action).ARGUMENT_SPEC

    def build(**kwargs):
        raise _Built(kwargs)

    module.AnsibleModule = build
    with pytest.raises(_Built) as built:
        module.main()
    return module, built.value.args[0]["argument_spec"]


def _described(doc_options, spec_options, where):
    assert sorted(doc_options) == sorted(spec_options), where
    for key, spec in spec_options.items():
        doc = doc_options[key]
        here = f"{where}.{key}"
        assert doc.get("type", "str") == spec.get("type", "str"), here
        assert doc.get("default") == spec.get("default"), here
        assert bool(doc.get("required")) == bool(spec.get("required")), here
        assert doc.get("choices") == spec.get("choices"), here
        assert doc.get("elements") == spec.get("elements"), here
        if "options" in spec:
            _described(doc.get("suboptions", {}), spec["options"], here)


@pytest.mark.parametrize("name", MODULES)
def test_documentation_matches_the_argument_spec(name):
    module, argument_spec = _argument_spec(name)
    _described(yaml.safe_load(module.DOCUMENTATION)["options"], argument_spec, name)
