"""What a killed build leaves beside a release dir on the build host (issue 16, finding 8): the
staging and .old dirs of files.staging_dir / files.replace_dir, found by dest's own names only."""
from __future__ import annotations

import os

from sarai_onnx import files


def test_only_the_staging_and_old_dirs_of_dest_are_found_and_removed(tmp_path):
    dest = tmp_path / "int8"
    ours = [tmp_path / ".int8.staging-abc", tmp_path / ".int8.old-x1"]
    theirs = [tmp_path / ".int8_other.staging-abc", tmp_path / ".fp32.staging-q", tmp_path / "int8.staging-noDot"]
    for directory in ours + theirs:
        (directory / "release").mkdir(parents=True)
    (tmp_path / ".int8.staging-file").write_text("a file, not a dir")
    os.symlink(theirs[0], tmp_path / ".int8.staging-link")
    assert files.stale_work_dirs(str(dest)) == sorted(str(d) for d in ours)
    assert files.remove_stale_work_dirs(str(dest)) == sorted(str(d) for d in ours)
    assert not any(d.exists() for d in ours) and all(d.exists() for d in theirs)
    assert (tmp_path / ".int8.staging-file").exists() and os.path.islink(tmp_path / ".int8.staging-link")


def test_a_dest_whose_parent_does_not_exist_has_none(tmp_path):
    assert files.stale_work_dirs(str(tmp_path / "missing" / "int8")) == []


def test_a_killed_staging_dir_is_what_staging_dir_names(tmp_path):
    dest = tmp_path / "int8"
    with files.staging_dir(str(dest)) as stage:
        assert files.stale_work_dirs(str(dest)) == [stage]
