"""Atomic writes of folders and JSON files: a crash leaves the old version or the new one, never half of one.

Checkpoints (PPO, reward models, the SFT policy), the built-in model cache and a run's state
files all go through here.

How a folder `path` is replaced (`atomic_dir`), and what a kill at each point leaves:

1. the writer takes the folder's lock (`.<name>.lock` beside it) and keeps it to the end;
2. it writes the new version into a temporary folder `.<name>.tmp-XXXXXXXX` beside `path`
   (killed here: `path` is untouched, the temporary is left behind);
3. it makes a set-aside folder `.<name>-old-XXXXXXXX` holding a note `new` that names the
   temporary, then renames `path` to `<set-aside>/old` and the temporary to `path`
   (killed between the two renames: `path` is missing, the old version is in `<set-aside>/old`
   and the complete new one in the temporary);
4. it deletes the set-aside folder and releases the lock.

`recover_dir(path)` repairs any of these states, and whatever opens a folder written here calls
it first: an interrupted replacement is finished when the new version is complete (its note
names a temporary that still exists), otherwise rolled back to the old version; then the
stale temporaries and set-aside folders are deleted.

When is a temporary stale? When no process holds the folder's lock. The lock is an `flock` on
`.<name>.lock`; a writer holds it from before it creates its temporary until its replacement
is done, and the kernel releases it when the writer exits or is killed (SIGKILL included), so a
temporary whose writer is alive is never touched, however long its write takes, and a pid
reused by another process cannot keep a dead writer's temporary alive. Recovery takes the lock
without waiting: when a live writer holds it, recovery leaves everything alone (that writer
finishes its own replacement) -- except that a reader who finds `path` missing waits for the
writer, which is then writing the first version or is between its two renames. On network
file systems this relies on their `flock` support (Linux NFS maps it onto NFS locks); on
platforms without `fcntl` (Windows) there is no lock, and recovery only restores a missing
folder, leaving temporaries in place.

The lock file is deleted when the lock is released, so a folder at rest has no companion file.

Permissions: what is written here comes out as a plain `open`/`mkdir` would make it under the
process's umask (files 0644 and folders 0755 under umask 022, 0640 / 0750 under 027), so a
run folder on a shared server is readable by whoever the user's umask lets read it. Writers
that make owner-only files themselves (`tempfile.mkstemp`, safetensors' own temporary file)
are brought to that mode before a folder is put in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no advisory locks (see the module docstring)
    fcntl = None  # type: ignore[assignment]

__all__ = ["atomic_dir", "file_sha256", "recover_dir", "replace_dir", "write_json", "write_text"]

_log = logging.getLogger(__name__)

_OLD = "old"
"""Inside a set-aside folder: the previous version of the folder being replaced."""
_NEW = "new"
"""Inside a set-aside folder: a note naming the temporary folder that holds the complete new version."""
_SUFFIX = "[a-z0-9_]{8}"
"""The random part of temporary names (8 characters; also matches those `tempfile` gave before locking existed)."""

_held = threading.local()  # the lock files this thread holds (a nested write of one folder would wait for itself)


def _held_locks() -> set[Path]:
    if not hasattr(_held, "locks"):
        _held.locks = set()
    return _held.locks


def _lock_file(path: Path) -> Path:
    """The folder's lock file, as an absolute path (so that two spellings of one folder are one lock)."""
    return Path(os.path.abspath(path.parent / f".{path.name}.lock"))


@contextlib.contextmanager
def _folder_lock(path: Path, *, wait: bool) -> Iterator[bool]:
    """Hold the exclusive lock of the folder `path`; yields False (holding nothing) when another process holds it and not `wait`.

    The lock file is removed before the lock is released. A process that opened the file before
    the removal then holds a lock on a deleted file, so after locking it checks that its file is
    still the one at the lock's path and starts again if not.
    """
    lock = _lock_file(path)
    if fcntl is None:
        yield True
        return
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            yield False
            return
        except BaseException:
            os.close(fd)
            raise
        try:
            ours = os.stat(lock)
            mine = os.fstat(fd)
            if (ours.st_dev, ours.st_ino) == (mine.st_dev, mine.st_ino):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    _held_locks().add(lock)
    try:
        yield True
    finally:
        _held_locks().discard(lock)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


def _leftovers(path: Path) -> tuple[list[Path], list[Path]]:
    """The temporaries and set-aside folders of `path` that exist now (whether stale or not)."""
    name = re.escape(path.name)
    tmp_re, aside_re = re.compile(rf"\.{name}\.tmp-{_SUFFIX}"), re.compile(rf"\.{name}-old-{_SUFFIX}")
    try:
        entries = list(os.scandir(path.parent))
    except (FileNotFoundError, NotADirectoryError):
        return [], []
    tmps = [Path(e.path) for e in entries if tmp_re.fullmatch(e.name)]
    asides = [Path(e.path) for e in entries if aside_re.fullmatch(e.name)]
    return tmps, asides


def _restore(path: Path, asides: list[Path]) -> str | None:
    """Put a version back at the missing `path` from an interrupted replacement; say which, or None if there is none."""
    for aside in sorted(asides, key=lambda p: p.stat().st_mtime, reverse=True):
        note = aside / _NEW
        new = path.parent / note.read_text().strip() if note.is_file() else None
        if new is not None and new.parent == path.parent and new.is_dir():
            os.replace(new, path)
            return f"finished (the new version, from {new.name}, is in place)"
        if (aside / _OLD).is_dir():
            os.replace(aside / _OLD, path)
            return f"rolled back (the previous version, from {aside.name}/{_OLD}, is in place)"
    return None


def _recover_locked(path: Path) -> None:
    """`recover_dir`'s work, by a process that holds the folder's lock (so every leftover is stale)."""
    tmps, asides = _leftovers(path)
    if not path.exists() and asides:
        outcome = _restore(path, asides)
        if outcome is not None:
            _log.warning("%s: a replacement interrupted by a crash was %s", path, outcome)
    if fcntl is None:  # no lock: a temporary may belong to a live writer, so none is deleted
        return
    stale = [p for p in tmps + asides if p.exists()]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    if stale:
        _log.info("%s: removed %d temporary folder(s) left by a writer that was killed: %s", path, len(stale),
                  ", ".join(p.name for p in stale))


def recover_dir(path: str | os.PathLike[str]) -> Path:
    """Repair the folder `path` after a crash of its writer; call it before opening a folder written by `atomic_dir`.

    A replacement cut short between its two renames is finished (when the complete new
    version is there) or rolled back to the previous version; temporaries and set-aside
    folders whose writer is dead are deleted (see the module docstring for how a live
    writer's are told apart). Cheap when there is nothing to do: one listing of the parent.

    Returns:
        `path`, as a `Path`.

    Raises:
        PermissionError: `path` is missing, a previous version waits in a set-aside folder,
            and the parent folder is not writable, so it cannot be put back.
    """
    path = Path(path)
    tmps, asides = _leftovers(path)
    if not tmps and not asides:
        return path
    if _lock_file(path) in _held_locks():  # this thread is writing the folder now: its leftovers are its own
        return path
    if not os.access(path.parent, os.W_OK):  # no lock file can be made, and nothing can be renamed or deleted
        where = next((a / _OLD for a in asides if (a / _OLD).is_dir()), None)
        if path.exists() or where is None:
            _log.debug("%s: cannot clean its temporaries (%s is not writable)", path, path.parent)
            return path
        raise PermissionError(
            f"{path} is missing: its replacement was interrupted and the previous version is in {where}, but "
            f"{path.parent} is not writable, so it cannot be put back; make the folder writable and open it "
            f"again, or move {where} to {path} yourself"
        )
    with _folder_lock(path, wait=not path.exists()) as locked:
        if locked:
            _recover_locked(path)
    return path


def _umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux: /proc/self/status)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # elsewhere: set and restore it, through the strictest mask, so that a file another thread creates
    # meanwhile is at worst private, never more open than the user asked
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _apply_umask(folder: Path) -> None:
    """Give `folder` and everything under it the modes a plain `mkdir` / `open` would under the umask.

    Libraries that write through owner-only temporary files (mkstemp, safetensors) would
    otherwise leave 0600 files in a checkpoint that the user's teammates cannot read.
    Executable files stay executable (for whom the umask allows); links are left alone.
    """
    mask = _umask()
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                os.chmod(p, 0o777 & ~mask)
        for name in files:
            p = os.path.join(root, name)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                os.chmod(p, (0o777 if st.st_mode & 0o111 else 0o666) & ~mask)
    os.chmod(folder, 0o777 & ~mask)


def _new_temporary(path: Path, kind: str) -> Path:
    """Make an empty folder `.<name><kind>XXXXXXXX` beside `path` (kind: ".tmp-" or "-old-")."""
    while True:
        candidate = path.parent / f".{path.name}{kind}{secrets.token_hex(4)}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue


def _swap(tmp: Path, path: Path) -> None:
    """Rename the complete folder `tmp` to `path` through a set-aside folder (steps 3-4 of the module docstring)."""
    if not path.exists():
        os.replace(tmp, path)
        return
    aside = _new_temporary(path, "-old-")
    (aside / _NEW).write_text(tmp.name)  # before the first rename: recovery may finish the replacement with `tmp`
    os.replace(path, aside / _OLD)
    os.replace(tmp, path)
    shutil.rmtree(aside, ignore_errors=True)


def replace_dir(tmp: Path, path: Path) -> None:
    """Move the finished folder `tmp` to `path`, replacing what is there, under the folder's lock.

    Prefer `atomic_dir`, which also makes the temporary folder: a `tmp` made by the caller is
    not covered by the lock while it is written, so it must not be named like `atomic_dir`'s
    temporaries (`.<name>.tmp-XXXXXXXX`), which recovery deletes when no writer holds the lock.
    `path` is never a half-written folder.
    """
    tmp, path = Path(tmp), Path(path)
    with _folder_lock(path, wait=True):
        _recover_locked(path)
        _apply_umask(tmp)
        _swap(tmp, path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; when the block ends without an error it replaces `path`.

    The folder's lock is held from the start of the block to the end of the replacement (a
    second writer of the same folder waits), and a crash of an earlier writer is repaired
    first (`recover_dir`). On an error the temporary folder is removed and `path` is untouched.
    The new folder's files and folders get the modes the umask gives (see the module docstring).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if _lock_file(path) in _held_locks():
        raise RuntimeError(f"{path} is already being written by this thread (a nested atomic_dir of the same folder)")
    with _folder_lock(path, wait=True):
        _recover_locked(path)
        tmp = _new_temporary(path, ".tmp-")
        try:
            yield tmp
            _apply_umask(tmp)
            _swap(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` to `path` atomically (a temporary file beside it, then a rename): a kill leaves the old or the new.

    The file gets the mode a plain `open` gives under the umask (0644 under umask 022), not the
    0600 of `tempfile.mkstemp`: a run's state and summary are for its readers too.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as in open()
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write `data` as indented JSON to `path` atomically (`write_text`)."""
    write_text(path, json.dumps(data, indent=2, default=str))


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's bytes (hex), read in 1 MiB blocks: what checkpoint formats record to detect damage."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
