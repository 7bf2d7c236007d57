"""execution-environment.yml carries this project's own dependencies (pyproject.toml) into AWX/AAP."""
from __future__ import annotations

import re
import tomllib

import yaml

from helpers import ROOT


def _name(requirement):
    return re.split(r"[<>=!~ \[;]", requirement, maxsplit=1)[0].lower()


def _strip(requirement):
    return requirement.split("#")[0].replace(" ", "")


def test_ee_python_dependencies_are_pyprojects():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ee = yaml.safe_load((ROOT / "execution-environment.yml").read_text())["dependencies"]
    wanted = {_name(r): _strip(r) for r in project["dependencies"] + project["optional-dependencies"]["windows"]}
    # ansible-core and ansible-runner have their own sections; the `ansible` bundle is replaced by
    # the collections of collections/requirements.yml
    assert ee["ansible_core"]["package_pip"] == wanted.pop("ansible-core")
    assert ee["ansible_runner"]["package_pip"] == wanted.pop("ansible-runner")
    wanted.pop("ansible")
    assert {_name(r): _strip(r) for r in ee["python"]} == wanted
    assert ee["galaxy"] == "collections/requirements.yml"


def test_every_collection_the_project_uses_is_required():
    required = {c["name"] for c in yaml.safe_load((ROOT / "collections" / "requirements.yml").read_text())["collections"]}
    used = set()
    for path in list((ROOT / "roles").rglob("*.yml")) + list((ROOT / "playbooks").rglob("*.yml")):
        used |= set(re.findall(r"^\s*-?\s*([a-z_]+\.[a-z_]+)\.[a-z_]+:", path.read_text(), re.MULTILINE))
    assert used - {"ansible.builtin"} == required
