"""The production layout (issue 16, finding 7; docs/operations-layout.md): SARAi runs as a dedicated
unprivileged user that is not the account Ansible connects with, from a sarai_root outside any home
directory, so that the root-owned releases and sarai.yaml stay out of the service's reach."""
from __future__ import annotations

import pathlib

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
INFERENCE = ROOT / "inventory" / "production" / "group_vars" / "inference" / "main.yml"


def test_service_user_is_dedicated_and_not_the_ansible_user():
    layout = yaml.safe_load(INFERENCE.read_text())
    assert layout["sarai_service_user"] not in ("root", "", None)
    assert layout["ansible_user"] != layout["sarai_service_user"]
    assert layout["ansible_become"] is True  # root writes the releases and sarai.yaml, not the service


def test_sarai_root_is_outside_any_home_and_documented():
    layout = yaml.safe_load(INFERENCE.read_text())
    root = pathlib.PurePosixPath(layout["sarai_root"])
    assert root.is_absolute() and root.parts[1] not in ("home", "root", "tmp")
    doc = (ROOT / "docs" / "operations-layout.md").read_text()
    assert layout["sarai_root"] in doc and layout["sarai_service_user"] in doc and layout["ansible_user"] in doc


def test_production_documents_the_health_checks_of_the_switch():
    text = INFERENCE.read_text()
    assert "sarai_service_health_url:" in text and "sarai_switch_settle_s" in text
    assert "MainPID" in text and "NRestarts" in text
