"""Atomic folder and JSON writes: the old version or the new one, never half of one, even after a SIGKILL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from llm_gym.infra.atomic import atomic_dir, recover_dir, write_json


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


# ------------------------------------------------------------------ recovery after a killed writer
# Each test runs a writer in a subprocess that SIGKILLs itself at one point of `atomic_dir`
# (WRITER below), then opens the folder as a rerun would.

WRITER = r"""
import os, signal, sys, time
from pathlib import Path
import llm_gym.infra.atomic as atomic

target, point = Path(sys.argv[1]), sys.argv[2]
real_replace = os.replace

def replace(src, dst):
    # the second rename of a replacement: `target` is already set aside
    if point == "between-renames" and Path(dst) == target and not target.exists():
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)

atomic.os.replace = replace
with atomic.atomic_dir(target) as tmp:
    (tmp / "a.txt").write_text("new")
    if point == "mid-write":
        (tmp / "big.bin").write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGKILL)
    if point == "live":
        print("writing", flush=True)
        sys.stdin.readline()  # holds the folder's lock until the test closes stdin or kills it
"""


def start_writer(target, point: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(target), point], **kwargs)


def killed_writer(target, point: str) -> None:
    proc = start_writer(target, point)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the writer was killed at the chosen point"


def names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def old_folder(target) -> None:
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("old")


def test_a_kill_mid_write_leaves_the_old_folder_and_its_temporary_is_removed_on_open(tmp_path) -> None:
    target = tmp_path / "ckpt"
    old_folder(target)
    killed_writer(target, "mid-write")
    leftovers = [n for n in names(tmp_path) if n.startswith(".ckpt.tmp-")]
    assert len(leftovers) == 1 and (tmp_path / leftovers[0] / "big.bin").exists(), "the killed write left its temporary"
    assert recover_dir(target) == target
    assert (target / "a.txt").read_text() == "old"
    assert names(tmp_path) == ["ckpt"], "the stale temporary is removed"


def test_a_kill_between_the_renames_is_finished_on_open(tmp_path) -> None:
    target = tmp_path / "ckpt"
    old_folder(target)
    killed_writer(target, "between-renames")
    assert not target.exists(), "killed after setting the old folder aside, before moving the new one in"
    recover_dir(target)
    assert (target / "a.txt").read_text() == "new", "the complete new version is moved into place"
    assert names(tmp_path) == ["ckpt"]


def test_a_replacement_interrupted_before_this_version_is_rolled_back(tmp_path) -> None:
    """What earlier versions of atomic_dir left when killed between the renames: no note naming the new folder."""
    target = tmp_path / "ckpt"
    (tmp_path / ".ckpt-old-k2j4h6g8" / "old").mkdir(parents=True)
    (tmp_path / ".ckpt-old-k2j4h6g8" / "old" / "a.txt").write_text("old")
    (tmp_path / ".ckpt.tmp-a1b2c3d4").mkdir()
    (tmp_path / ".ckpt.tmp-a1b2c3d4" / "a.txt").write_text("new, maybe half")
    (tmp_path / ".ckpt.tmp-not-mine").mkdir()  # not a name atomic_dir makes: never touched
    recover_dir(target)
    assert (target / "a.txt").read_text() == "old", "the last good version is back"
    assert names(tmp_path) == [".ckpt.tmp-not-mine", "ckpt"]
    with atomic_dir(target) as tmp:  # and writing works again
        (tmp / "a.txt").write_text("next")
    assert (target / "a.txt").read_text() == "next"


def test_a_live_writers_temporary_is_kept_until_it_dies(tmp_path) -> None:
    target = tmp_path / "ckpt"
    old_folder(target)
    writer = start_writer(target, "live", stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "writing\n"
        tmps = [n for n in names(tmp_path) if n.startswith(".ckpt.tmp-")]
        recover_dir(target)  # a reader opening the folder meanwhile
        assert [n for n in names(tmp_path) if n.startswith(".ckpt.tmp-")] == tmps, "a live writer's temporary is kept"
        assert (target / "a.txt").read_text() == "old"
        writer.kill()
        assert writer.wait(timeout=60) == -signal.SIGKILL
    finally:
        writer.kill()
        writer.wait()
    recover_dir(target)
    assert names(tmp_path) == ["ckpt"] and (target / "a.txt").read_text() == "old", "once it is dead, it is stale"
    # a writer that finishes replaces the folder and leaves nothing beside it
    writer = start_writer(target, "live", stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline() == "writing\n"
    writer.stdin.close()
    assert writer.wait(timeout=60) == 0
    assert names(tmp_path) == ["ckpt"] and (target / "a.txt").read_text() == "new"


def test_a_nested_write_of_the_same_folder_is_refused(tmp_path) -> None:
    with atomic_dir(tmp_path / "ckpt") as tmp:
        (tmp / "a.txt").write_text("one")
        assert recover_dir(tmp_path / "ckpt") == tmp_path / "ckpt", "opening it meanwhile does not wait for itself"
        with pytest.raises(RuntimeError, match="already being written"):
            with atomic_dir(tmp_path / "ckpt"):
                pass
    assert (tmp_path / "ckpt" / "a.txt").read_text() == "one"


# ------------------------------------------------------------------ permissions
@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_what_is_written_follows_the_umask_not_mkstemps_0600(tmp_path, umask) -> None:
    """Teammates on a shared server read a run as the user's umask allows; mkstemp and mkdtemp would make it private."""
    import os
    import stat
    import tempfile

    old = os.umask(umask)
    try:
        write_json(tmp_path / "state.json", {"a": 1})
        with atomic_dir(tmp_path / "ckpt") as tmp:
            fd, _ = tempfile.mkstemp(dir=tmp, suffix=".safetensors")  # what safetensors' own writer leaves: 0600
            os.close(fd)
            inner = Path(tempfile.mkdtemp(dir=tmp))  # 0700
            (inner / "run.sh").write_text("#!/bin/sh\n")
            os.chmod(inner / "run.sh", 0o700)
    finally:
        os.umask(old)
    mode = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [tmp_path / "state.json", tmp_path / "ckpt",
                                                             *(tmp_path / "ckpt").rglob("*")]}
    ckpt_file = next(n for n in mode if n.endswith(".safetensors"))
    assert mode["state.json"] == mode[ckpt_file] == 0o666 & ~umask
    assert mode["ckpt"] == mode[inner.name] == 0o777 & ~umask
    assert mode["run.sh"] == 0o777 & ~umask, "an executable stays executable"
