"""A run folder's own files: checks that say which file or folder is at fault and what to do.

`llm-gym run`, `eval` and `sweep` write into a folder and read back what they wrote there
(``state.json``, ``config.json``). A folder that cannot be created or written, and a file
that was damaged outside the program (the program writes them atomically), must stop the
command with a message that names the path, not with an ``OSError`` or a bare
``JSONDecodeError`` traceback. The command line prints `RunFolderError` as its ``error:``
line and exits with status 2.

Only stdlib is used, so the command line can check a folder before importing torch.
"""

from __future__ import annotations

import json
import os
from os import PathLike
from pathlib import Path
from typing import Any

__all__ = ["CheckpointError", "RunFolderError", "check_writable_folder", "read_json"]


class RunFolderError(ValueError):
    """A run folder or one of its files cannot be used; the message names the path and the fix."""


class CheckpointError(RunFolderError):
    """A checkpoint is damaged, incomplete or inconsistent; the message names the file and what to do
    (`llm_gym.agents.checkpoint` raises it; it is defined here so that the command line catches it cheaply)."""


def check_writable_folder(path: str | PathLike[str], what: str = "the run folder") -> None:
    """Refuse, before anything is computed, a folder that cannot be created or written.

    The folder need not exist: its nearest existing ancestor must then be a folder this
    process may create entries in. Nothing is created here.

    Args:
        path: the folder.
        what: how the message names it ("the run folder (--out)", "the sweep folder").

    Raises:
        RunFolderError: a regular file at `path` or above it, or no permission to write
            (a folder of another user, a read-only file system), with the fix.
    """
    folder = Path(path)
    fix = "choose another folder"
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"{what} {folder} is a file, not a folder; {fix}")
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise RunFolderError(f"{what} {folder} cannot be created: {existing} is a file, not a folder; {fix}")
    if not os.access(existing, os.W_OK | os.X_OK):
        problem = "is not writable" if existing == folder else f"cannot be created: {existing} is not writable"
        raise RunFolderError(
            f"{what} {folder} {problem} (no write permission, or a read-only file system); {fix} or make it writable"
        )


def read_json(path: str | PathLike[str], what: str, fix: str) -> Any:
    """The JSON content of a file the program wrote, or an error that names the file when it is damaged.

    Args:
        path: the file (it must exist; the caller decides what a missing one means).
        what: what the file is, for the message ("the record of finished stages").
        fix: what the reader can do about a damaged copy.

    Raises:
        RunFolderError: the file cannot be read, is not UTF-8, or is not valid JSON (cut short,
            say), with `what` and `fix`.
    """
    file = Path(path)
    try:
        return json.loads(file.read_bytes().decode("utf-8"))
    except OSError as err:
        raise RunFolderError(f"{file} ({what}) cannot be read: {err.strerror or err}; {fix}") from err
    except UnicodeDecodeError as err:
        raise RunFolderError(f"{file} ({what}) is damaged: not UTF-8 text at byte {err.start}; {fix}") from err
    except json.JSONDecodeError as err:
        raise RunFolderError(
            f"{file} ({what}) is damaged: not valid JSON ({err.msg}: line {err.lineno} column {err.colno}); {fix}"
        ) from err
