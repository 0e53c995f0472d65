"""Checkpoint folders any agent can use: written atomically, sealed by a manifest of sha256 hashes, checked on open.

A checkpoint is a folder. `write_checkpoint(path)` yields a temporary folder to fill; when the
block ends it writes `manifest.json` (the sha256 and size of every file) *last*, then the
folder replaces `path` atomically (`llm_gym.infra.atomic`). `open_checkpoint(path, ...)` first
repairs what a killed writer left (`recover_dir`), then checks every file against the manifest,
so a flipped byte, a truncated file or a file swapped in from another run is refused with an
error that names the file and says what to do, instead of resuming a different model.

    with write_checkpoint(path) as tmp:          # an agent's save
        policy.save_pretrained(tmp / "policy")
        (tmp / "state.json").write_text(...)

    path = open_checkpoint(path, marker="state.json", kind="my-agent checkpoint", fix="delete it to start afresh")
    state = read_json(path / "state.json", fix=...)
    policy = load_policy(path / "policy", device=device, fix=...)   # weights that must fit its config.json
    with reading(path / "weights.safetensors", fix=...):   # any error while reading names the file
        weights = load_file(path / "weights.safetensors")

Checkpoints saved before manifests existed (no `manifest.json`) still load, unverified, with a
logged warning. Files whose name starts with "." are left out of the check (a file manager's
litter cannot change what loads); any other file that is not in the manifest is refused, since
a file added to a Hugging Face folder (an adapter, a generation config) changes what loads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
from collections.abc import Iterator
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm_gym.agents.reference import is_base_reference
from llm_gym.infra.atomic import atomic_dir, file_sha256, recover_dir
from llm_gym.infra.runfolder import CheckpointError
from llm_gym.models.policy import Policy, attach_adapter, base_state_dict

__all__ = ["MANIFEST", "CheckpointError", "load_policy", "load_policy_and_reference", "save_policy_and_reference",
           "open_checkpoint", "read_json", "reading", "verify_manifest", "write_checkpoint", "write_manifest"]

_log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
"""The manifest's file name inside a checkpoint folder."""
_FORMAT_VERSION = 1


def _files(folder: Path) -> dict[str, Path]:
    """Every file under `folder` but its manifest, by its path relative to `folder` (with "/")."""
    found = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel != MANIFEST:
            found[rel] = p
    return found


def write_manifest(folder: str | PathLike[str]) -> Path:
    """Write `folder/manifest.json`: the sha256 and size of every other file under `folder`. Call it last.

    Returns:
        The manifest's path.
    """
    folder = Path(folder)
    files = {rel: {"sha256": file_sha256(p), "bytes": p.stat().st_size} for rel, p in _files(folder).items()}
    manifest = folder / MANIFEST
    manifest.write_text(json.dumps({"format_version": _FORMAT_VERSION, "files": files}, indent=1))
    return manifest


def verify_manifest(folder: str | PathLike[str], *, fix: str) -> bool:
    """Check every file of `folder` against its manifest.

    Args:
        folder: a checkpoint folder.
        fix: the way out when no copy of the damaged file can be restored, ending the error
            message (e.g. "delete <folder> to restart the run from iteration 0").

    Returns:
        True when the folder matches its manifest; False when it has no manifest (a checkpoint
        saved before manifests existed: it loads unverified, and a warning is logged).

    Raises:
        CheckpointError: a listed file is missing or differs from the saved one (size or
            sha256), a file was added after saving, or the manifest itself is unreadable.
    """
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        _log.warning("%s has no %s (it was saved before llm_gym sealed checkpoints): loading it without an integrity "
                     "check", folder, MANIFEST)
        return False
    try:
        data = json.loads(manifest.read_text())
        version = data["format_version"]
        listed = {str(rel): (str(entry["sha256"]), int(entry["bytes"])) for rel, entry in data["files"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint {folder}: {MANIFEST} is damaged ({exc!r}), so its files cannot be checked; "
                              f"restore it from a copy, or {fix}") from exc
    if version != _FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {folder}: {MANIFEST} has format {version!r}, this llm_gym reads "
                              f"{_FORMAT_VERSION}; load it with the llm_gym version that wrote it")
    present = _files(folder)
    for rel, (digest, size) in listed.items():
        file = present.get(rel)
        if file is None:
            raise CheckpointError(f"checkpoint {folder} is incomplete: {rel} was saved with it but is missing; "
                                  f"restore it from a copy, or {fix}")
        if file.stat().st_size != size or file_sha256(file) != digest:
            raise CheckpointError(
                f"checkpoint {folder} is damaged: {rel} is not the file that was saved (its sha256 differs from the "
                f"one in {MANIFEST}); restore {file} from a copy, or {fix}"
            )
    added = [rel for rel in present if rel not in listed and not any(part.startswith(".") for part in rel.split("/"))]
    if added:
        raise CheckpointError(
            f"checkpoint {folder} holds {', '.join(added)}, which was not saved with it (not in {MANIFEST}) and could "
            f"change what loads; remove it if you added it, or {fix}"
        )
    return True


@contextlib.contextmanager
def write_checkpoint(path: str | PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder; when the block ends without error, seal it with a manifest, replacing `path`.

    A crash at any point leaves the previous checkpoint (or, between the final renames, a state
    that `open_checkpoint` completes); an error in the block leaves `path` untouched.
    """
    with atomic_dir(path) as tmp:
        yield tmp
        write_manifest(tmp)


def open_checkpoint(path: str | PathLike[str], *, marker: str, kind: str, fix: str) -> Path:
    """Make a checkpoint folder ready to load: repair an interrupted save, check it is one, verify its manifest.

    Args:
        path: the checkpoint folder.
        marker: a file every checkpoint of this kind holds (e.g. "trainer_state.json").
        kind: what it is, for messages ("PPO checkpoint").
        fix: what to do about a damaged one (see `verify_manifest`).

    Returns:
        `path`, as a `Path`.

    Raises:
        FileNotFoundError: there is no checkpoint of this kind at `path`.
        CheckpointError: it is damaged (see `verify_manifest`).
    """
    path = recover_dir(path)
    if not (path / marker).is_file():
        raise FileNotFoundError(f"{path} is not a {kind} (no {marker})")
    verify_manifest(path, fix=fix)
    return path


_READ_ERRORS = (OSError, ValueError, RuntimeError, KeyError, IndexError, TypeError, EOFError, pickle.UnpicklingError,
                SafetensorError)


@contextlib.contextmanager
def reading(file: str | PathLike[str], *, fix: str) -> Iterator[None]:
    """Turn an error raised while a checkpoint's `file` is read (or applied) into a `CheckpointError` that names it.

    Out-of-memory errors and `CheckpointError`s pass through unchanged.
    """
    try:
        yield
    except (CheckpointError, torch.cuda.OutOfMemoryError, MemoryError):
        raise
    except _READ_ERRORS as exc:
        message = f"{file} cannot be loaded ({type(exc).__name__}: {exc}); restore it from a copy, or {fix}"
        raise CheckpointError(message) from exc


def read_json(file: str | PathLike[str], *, fix: str) -> Any:
    """The JSON in a checkpoint's `file`, or a `CheckpointError` naming it when it is not valid JSON."""
    file = Path(file)
    with reading(file, fix=fix):
        return json.loads(file.read_text())


def load_policy(folder: str | PathLike[str], *, device: torch.device | str | None, fix: str,
                base: Policy | None = None) -> Policy:
    """A checkpoint's policy folder, loaded as `Policy.from_pretrained` does, refusing weights that misfit its config.

    Transformers builds the model from `config.json` and loads the weights that fit, leaving
    the rest newly initialised with a printed report; a checkpoint must instead load whole, so
    a `config.json` swapped in from another model is refused, as is a damaged weights header,
    each by name (`fix` ends the message, as in `verify_manifest`).

    A folder holding a LoRA adapter (a PEFT policy saves its adapter alone) is put, trainable,
    on `base`: the checkpoint's own copy of the base (its `reference/` model when that is the
    base with the adapter off, else its `base/` folder). The checkpoint then resumes from its
    own files, whatever became of the base model it was first loaded from.
    """
    folder = Path(folder)
    for file in sorted(folder.glob("*.safetensors")):  # a damaged header, named before transformers reads it
        with reading(file, fix=fix), safe_open(str(file), framework="pt"):
            pass
    if (folder / "adapter_config.json").is_file():
        return _load_adapter_policy(folder, base, device=device, fix=fix)
    with reading(folder, fix=fix):
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    misfits = {key: list(info[key])[:4] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")
               if info.get(key)}
    if misfits:
        raise CheckpointError(
            f"{folder / 'config.json'} does not describe the weights saved beside it ({misfits}): the config was "
            f"changed or swapped after saving; restore it from a copy, or {fix}"
        )
    return Policy(model, tokenizer, device=device)


def _load_adapter_policy(folder: Path, base: Policy | None, *, device: torch.device | str | None, fix: str) -> Policy:
    """The adapter in `folder` on `base`'s model (taken over: `base` must not be used afterwards), trainable."""
    if base is None:
        raise CheckpointError(f"{folder} holds a LoRA adapter but no base model was given to put it on; {fix}")
    with reading(folder, fix=fix):
        model = attach_adapter(base.model, folder)
    return Policy(model, base.tokenizer, device=device if device is not None else base.device, overflow=base.overflow)


REFERENCE_IS_BASE = "base_without_adapter"
"""The `"reference"` entry of a checkpoint's state when its reference is the policy's base with the adapter off."""

POLICY_BASE = "base"
"""The `"policy_base"` entry of a checkpoint's state, and its folder, when it holds a LoRA policy's base on its own."""


def save_policy_and_reference(policy: Policy, reference: Policy, folder: Path) -> dict[str, str]:
    """Write `policy/` and `reference/` (and, when needed, `base/`) into a checkpoint folder.

    Returns the state entries `load_policy_and_reference` reads. A LoRA policy saves its adapter
    alone. When its reference is its own base with the adapter off, `reference/` is that base, so
    the checkpoint holds the base once; when the reference is another model (passed in
    explicitly, or a frozen copy), the base is also written to `base/` (the policy's base weights
    as a plain model), so that either way the checkpoint resumes from its own files, whatever
    became of the base model the adapter was first put on.
    """
    policy.save_pretrained(folder / "policy")
    reference.save_pretrained(folder / "reference")
    if is_base_reference(reference, policy):
        return {"reference": REFERENCE_IS_BASE}
    entries = {"reference": "model"}
    if policy.is_peft:
        base = policy.model.get_base_model()
        base.save_pretrained(folder / POLICY_BASE, state_dict=base_state_dict(policy.model))
        policy.tokenizer.save_pretrained(folder / POLICY_BASE)
        entries["policy_base"] = POLICY_BASE
    return entries


def load_policy_and_reference(folder: Path, state: dict[str, Any], *, device: torch.device | str | None,
                              fix: str) -> tuple[Policy, Policy | None]:
    """The policy and reference `save_policy_and_reference` wrote; None for a reference that is the policy's base.

    The agent then rebuilds that reference over the same weights (`agents.reference.make_reference`).
    A LoRA policy's adapter goes on the base the checkpoint holds (`reference/` or `base/`);
    only a checkpoint saved before `base/` existed loads its base from where its adapter config
    says, as `Policy.from_pretrained` does.
    """
    if state.get("reference") == REFERENCE_IS_BASE:
        base = load_policy(folder / "reference", device=device, fix=fix)
        return load_policy(folder / "policy", device=device, fix=fix, base=base), None
    if state.get("policy_base") == POLICY_BASE:
        base = load_policy(folder / POLICY_BASE, device=device, fix=fix)
        policy = load_policy(folder / "policy", device=device, fix=fix, base=base)
    elif (folder / "policy" / "adapter_config.json").is_file():
        with reading(folder / "policy", fix=fix):
            policy = Policy.from_pretrained(folder / "policy", device=device)
    else:
        policy = load_policy(folder / "policy", device=device, fix=fix)
    return policy, load_policy(folder / "reference", device=policy.device, fix=fix)
