"""Keep the last N backups of sarai.yaml: sarai_config_backups."""
from __future__ import annotations

import os
import shutil
import types

import pytest

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.sarai_config_backups import BackupsError, find_backups, prune_backups
from helpers import run_module, snapshot


@pytest.fixture
def config_dir(tmp_path):
    """sarai.yaml with 6 backups named as Ansible names them (mtimes in the reverse order of the
    names, as preserved copies have), and files that are not its backups."""
    config = tmp_path / "sarai.yaml"
    config.write_text("audio_omni: {}\n")
    stamps = ["2026-11-20@09:00:00", "2026-11-21@10:00:00", "2026-11-21@10:00:01", "2026-11-22@08:30:00",
              "2026-11-23@11:15:00", "2026-11-23@17:45:59"]
    for index, stamp in enumerate(stamps):
        backup = tmp_path / f"sarai.yaml.{4000 + (7 * index) % 5}.{stamp}~"
        backup.write_text(f"version {index}\n")
        os.utime(backup, (2_000_000_000 - index * 1000, 2_000_000_000 - index * 1000))
    (tmp_path / "sarai.yaml.bak").write_text("hand-made\n")
    (tmp_path / "other.yaml.4000.2026-11-20@09:00:00~").write_text("not ours\n")
    os.symlink(tmp_path / "sarai.yaml", tmp_path / "sarai.yaml.4000.2019-01-01@00:00:00~")
    return config, stamps


def test_real_backup_names_are_recognised(tmp_path):
    config = tmp_path / "sarai.yaml"
    config.write_text("x\n")
    fake_module = types.SimpleNamespace(check_mode=False, preserved_copy=shutil.copy2)
    made = AnsibleModule.backup_local(fake_module, str(config))  # Ansible's own naming
    assert [b["path"] for b in find_backups(str(config))] == [made]


def test_keeps_the_newest_by_name_stamp_not_mtime(config_dir):
    config, stamps = config_dir
    result = prune_backups(str(config), keep=2)
    assert result["changed"]
    assert [os.path.basename(p).split(".", 3)[3] for p in result["kept"]] == [s + "~" for s in stamps[-2:]]
    assert len(result["removed"]) == 4
    names = sorted(os.listdir(config.parent))
    assert "sarai.yaml" in names and "sarai.yaml.bak" in names and "other.yaml.4000.2026-11-20@09:00:00~" in names
    assert "sarai.yaml.4000.2019-01-01@00:00:00~" in names  # a link is not a backup
    assert len([n for n in names if n.startswith("sarai.yaml.") and n.endswith("~")]) == 3
    again = prune_backups(str(config), keep=2)
    assert not again["changed"] and again["removed"] == []


def test_check_mode_removes_nothing(config_dir):
    config, _ = config_dir
    before = snapshot(config.parent)
    result = prune_backups(str(config), keep=5, check_mode=True)
    assert result["changed"] and len(result["removed"]) == 1 and snapshot(config.parent) == before


@pytest.mark.parametrize("keep", [0, -1, True, "3"])
def test_keep_must_be_at_least_one(config_dir, keep):
    config, _ = config_dir
    with pytest.raises(BackupsError, match="keep at least 1"):
        prune_backups(str(config), keep=keep)


def test_missing_directory_has_no_backups(tmp_path):
    assert prune_backups(str(tmp_path / "absent" / "sarai.yaml"), keep=1)["changed"] is False


def test_module_with_check_mode_and_diff(config_dir, capsys):
    config, stamps = config_dir
    before = snapshot(config.parent)
    code, result = run_module("sarai_config_backups", {"path": str(config), "keep": 3, "_ansible_check_mode": True,
                                                       "_ansible_diff": True}, capsys)
    assert code == 0 and result["changed"] and len(result["removed"]) == 3
    assert result["diff"]["before"].count("\n") == 6 and result["diff"]["after"].count("\n") == 3
    assert snapshot(config.parent) == before
    code, result = run_module("sarai_config_backups", {"path": str(config), "keep": 3}, capsys)
    assert code == 0 and result["changed"] and "diff" not in result
    code, result = run_module("sarai_config_backups", {"path": str(config), "keep": 0}, capsys)
    assert code == 1 and "keep at least 1" in result["msg"]
