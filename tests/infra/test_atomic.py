"""Atomic folder and JSON writes: the old version or the new one, never half of one."""

from __future__ import annotations

import json

import pytest

from llm_gym.infra.atomic import atomic_dir, write_json


def test_atomic_dir_replaces_on_success_and_leaves_the_old_folder_on_error(tmp_path) -> None:
    target = tmp_path / "ckpt"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("one")
    assert (target / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("crash mid-write")
    assert (target / "a.txt").read_text() == "one", "a failed write leaves the previous folder untouched"
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"], "the new folder replaces the old one whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"], "no temporary or set-aside folder is left"


def test_write_json_replaces_the_file_and_leaves_no_temporary(tmp_path) -> None:
    path = tmp_path / "sub" / "state.json"
    write_json(path, {"a": 1})
    write_json(path, {"a": 2, "p": tmp_path})
    assert json.loads(path.read_text()) == {"a": 2, "p": str(tmp_path)}
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]
