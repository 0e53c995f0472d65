"""The reward-model checkpoint format: a folder per model, and an index over member folders for an ensemble.

A model's folder (`RewardModel.save`):

    reward_model.json    format version, backbone class, config and dtype, head shape, max length,
                         pooling, offset, the sha256 of the weights file, and the PEFT adapter's
                         config when the backbone carries one (LoRA)
    model.safetensors    backbone (with its adapter), head and offset (no pickle anywhere)
    tokenizer files      as the tokenizer's `save_pretrained` writes them

An ensemble's folder (`RewardEnsemble.save`) holds `member_0/`, `member_1/`, ... (each a model
folder) and `reward_ensemble.json` (format version, number of members). Folders are written
atomically (`llm_gym/infra/atomic.py`), and replace only a checkpoint of the same kind; every
reader repairs a save that a crash cut short (`recover_dir`) before it looks at the folder. A
checkpoint whose weights changed after saving, or whose tensors do not fit the saved config,
is refused with a `ValueError` that says what to do.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import safetensors.torch
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from llm_gym.infra.atomic import atomic_dir, file_sha256, recover_dir
from llm_gym.models.policy import is_peft_model, require_peft

if TYPE_CHECKING:
    from llm_gym.models.reward_model import RewardModel

__all__ = ["ENSEMBLE_META", "FORMAT_VERSION", "MODEL_META", "WEIGHTS", "SavedModel", "ensemble_members", "is_ensemble",
           "load_weights", "read_model", "save_ensemble", "save_model"]

FORMAT_VERSION = 1
"""Version of the checkpoint layout written by `save_model` and `save_ensemble`."""
WEIGHTS = "model.safetensors"
MODEL_META = "reward_model.json"
ENSEMBLE_META = "reward_ensemble.json"


class SavedModel(NamedTuple):
    """What a model folder says, checked: the backbone (built from its config, weights not yet loaded) and the rest."""

    backbone: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    max_length: int
    pooling: str
    head_in: int
    """The head's input width, which must be the backbone's hidden size."""
    peft_config: Any = None
    """The backbone's PEFT adapter config (a `peft.PeftConfig`), or None for a backbone trained in full."""


# ------------------------------------------------------------------ writing
def save_model(rm: RewardModel, path: str | PathLike[str]) -> Path:
    """Write `rm` to the folder `path` atomically (see the module docstring for the layout)."""
    path = Path(path)
    _check_replaceable(path, MODEL_META)
    with atomic_dir(path) as tmp:
        _write_model(tmp, rm)
    return path


def save_ensemble(members: Sequence[RewardModel], path: str | PathLike[str]) -> Path:
    """Write the members to `path/member_{i}` and the index file, atomically."""
    path = Path(path)
    _check_replaceable(path, ENSEMBLE_META)
    with atomic_dir(path) as tmp:
        for i, m in enumerate(members):
            (tmp / f"member_{i}").mkdir()
            _write_model(tmp / f"member_{i}", m)
        (tmp / ENSEMBLE_META).write_text(json.dumps({"format_version": FORMAT_VERSION, "num_members": len(members)}))
    return path


def _write_model(folder: Path, rm: RewardModel) -> None:
    weights = folder / WEIGHTS
    safetensors.torch.save_model(rm.net, str(weights), metadata={"format": "pt", "llm_gym": "reward_model"})
    backbone, adapter = rm.net.backbone, None
    if is_peft_model(backbone):
        adapter = _adapter_config_dict(backbone)
        backbone = backbone.get_base_model()
    meta = {
        "format_version": FORMAT_VERSION,
        "backbone_class": type(backbone).__name__,
        "backbone_config": backbone.config.to_dict(),
        "backbone_dtype": str(next(rm.net.backbone.parameters()).dtype).removeprefix("torch."),
        "head": {"in_features": rm.net.head.in_features, "out_features": rm.net.head.out_features},
        "max_length": rm.max_length,
        "pooling": rm.net.pooling,
        "offset": rm.offset,
        "sha256": file_sha256(weights),
        **({"peft_config": adapter} if adapter is not None else {}),
    }
    (folder / MODEL_META).write_text(json.dumps(meta, indent=2, default=str))
    rm.tokenizer.save_pretrained(folder)


def _adapter_config_dict(peft_model: Any) -> dict[str, Any]:
    """The active adapter's config as JSON-ready values (peft keeps target modules as a set; JSON needs a list)."""
    config = peft_model.peft_config[peft_model.active_adapter].to_dict()
    return {k: sorted(v) if isinstance(v, (set, frozenset)) else v for k, v in config.items()}


def _check_replaceable(path: Path, marker: str) -> None:
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not (path / marker).is_file())):
        raise ValueError(f"{path} exists and is not a checkpoint of this kind; choose another path or remove it yourself")


# ------------------------------------------------------------------ reading
def read_model(path: str | PathLike[str]) -> SavedModel:
    """Check a model folder (files present, format version, sha256, a complete config) and build its parts.

    Raises:
        FileNotFoundError: no checkpoint at `path`.
        ValueError: unknown format version, weights modified after saving (sha256 mismatch),
            or an incomplete or invalid `reward_model.json`.
    """
    path = recover_dir(path)
    meta_file, weights = path / MODEL_META, path / WEIGHTS
    if not meta_file.is_file() or not weights.is_file():
        raise FileNotFoundError(f"{path} is not a reward-model checkpoint (needs {MODEL_META} and {WEIGHTS}); write one with RewardModel.save")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"checkpoint {path}: {MODEL_META} is not valid JSON ({exc}); re-save the model") from exc
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {path} has format version {version!r}, this llm_gym reads version {FORMAT_VERSION}; "
            "re-save it with a matching llm_gym version"
        )
    if file_sha256(weights) != meta.get("sha256"):
        raise ValueError(
            f"checkpoint {path} was modified after saving (sha256 mismatch): {WEIGHTS} is not the file "
            "that was saved; re-save it or restore the original"
        )
    try:
        config_dict = dict(meta["backbone_config"])
        config = AutoConfig.for_model(**config_dict)
        head_in = int(meta["head"]["in_features"])
        max_length = int(meta["max_length"])
        dtype = getattr(torch, str(meta.get("backbone_dtype", "float32")))
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown backbone_dtype {meta.get('backbone_dtype')!r}")
        adapter = meta.get("peft_config")
        peft_config = require_peft().PeftConfig.from_peft_type(**adapter) if adapter is not None else None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"mismatched checkpoint {path}: {MODEL_META} is incomplete or invalid ({exc!r}); re-save the model") from exc
    backbone = AutoModel.from_config(config).to(dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return SavedModel(backbone, tokenizer, max_length, meta.get("pooling", "last"), head_in, peft_config)


def load_weights(net: nn.Module, path: str | PathLike[str]) -> None:
    """Load the folder's weights into `net`; `ValueError` when its tensors do not fit `net` exactly."""
    path = Path(path)
    try:
        missing, unexpected = safetensors.torch.load_model(net, str(path / WEIGHTS), strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ValueError(f"mismatched checkpoint {path}: its tensors do not fit the saved config ({exc}); re-save the model") from exc
    if missing or unexpected:
        raise ValueError(
            f"mismatched checkpoint {path}: missing tensors {sorted(missing)[:5]}, unexpected tensors "
            f"{sorted(unexpected)[:5]}; the weights do not belong to this backbone config"
        )


def ensemble_members(path: str | PathLike[str]) -> list[Path]:
    """The member folders of an ensemble checkpoint, after checking its index file."""
    path = recover_dir(path)
    meta_file = path / ENSEMBLE_META
    if not meta_file.is_file():
        raise FileNotFoundError(f"{path} is not a reward-ensemble checkpoint (no {ENSEMBLE_META}); write one with RewardEnsemble.save")
    meta = json.loads(meta_file.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"ensemble {path} has format version {meta.get('format_version')!r}, expected {FORMAT_VERSION}; re-save it")
    return [path / f"member_{i}" for i in range(int(meta["num_members"]))]


def is_ensemble(path: str | PathLike[str]) -> bool:
    """Whether `path` holds an ensemble checkpoint (its index file) rather than a single model's."""
    return (recover_dir(path) / ENSEMBLE_META).is_file()
