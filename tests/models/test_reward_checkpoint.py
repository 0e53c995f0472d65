"""Reward-model checkpoints: round trip, refusal of modified or mismatched folders, loading whichever a folder holds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from llm_gym.models.reward_ensemble import RewardEnsemble, load_reward_model
from llm_gym.models.reward_model import RewardModel
from llm_gym.tasks.tiny_lm import PretrainReport


def test_save_load_round_trip(rm: RewardModel, task, tmp_path: Path) -> None:
    prompts = [d.prompt for d in task.demonstrations[:8]]
    completions = [d.completion for d in task.demonstrations[:8]]
    rm.normalize(prompts, completions)
    path = rm.save(tmp_path / "rm")
    assert sorted(p.name for p in path.glob("*.safetensors")) == ["model.safetensors"]
    assert not list(tmp_path.glob(".*"))  # no temporary folder left behind
    loaded = RewardModel.load(path, device="cpu")
    np.testing.assert_array_equal(loaded.score(prompts, completions), rm.score(prompts, completions))
    assert loaded.offset == rm.offset and loaded.max_length == rm.max_length
    rm.save(path)  # overwriting an existing checkpoint is allowed
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a checkpoint"):
        rm.save(tmp_path / "other")


def test_modified_checkpoint_is_refused(rm: RewardModel, tmp_path: Path) -> None:
    path = rm.save(tmp_path / "rm")
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"modified after saving \(sha256 mismatch\)"):
        RewardModel.load(path, device="cpu")


def _rewrite_meta(path: Path, **changes: object) -> None:
    meta = json.loads((path / "reward_model.json").read_text())
    meta.update(changes)
    (path / "reward_model.json").write_text(json.dumps(meta))


def test_mismatched_checkpoint_is_refused(rm: RewardModel, tmp_path: Path) -> None:
    import hashlib

    # the config says another hidden size / another depth than the tensors have
    for key, value in (("n_embd", 64), ("n_layer", 2)):
        path = rm.save(tmp_path / f"cfg_{key}")
        meta = json.loads((path / "reward_model.json").read_text())
        _rewrite_meta(path, backbone_config={**meta["backbone_config"], key: value})
        with pytest.raises(ValueError, match="mismatched checkpoint"):
            RewardModel.load(path, device="cpu")
    # tensors replaced by other shapes, re-saved with a matching sha256
    path = rm.save(tmp_path / "shapes")
    tensors = load_file(path / "model.safetensors")
    tensors["head.weight"] = torch.zeros(1, 7)
    save_file(tensors, path / "model.safetensors")
    _rewrite_meta(path, sha256=hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest())
    with pytest.raises(ValueError, match="mismatched checkpoint"):
        RewardModel.load(path, device="cpu")
    # a tensor missing
    del tensors["head.weight"]
    save_file(tensors, path / "model.safetensors")
    _rewrite_meta(path, sha256=hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest())
    with pytest.raises(ValueError, match="mismatched checkpoint.*missing"):
        RewardModel.load(path, device="cpu")
    # an unknown format version
    _rewrite_meta(path, format_version=99)
    with pytest.raises(ValueError, match="format version 99"):
        RewardModel.load(path, device="cpu")
    with pytest.raises(FileNotFoundError, match="not a reward-model checkpoint"):
        RewardModel.load(tmp_path / "nowhere")


def test_load_reward_model_loads_whichever_the_folder_holds(rm: RewardModel, tiny_model: PretrainReport, task,
                                                            tmp_path: Path) -> None:
    prompts = [d.prompt for d in task.demonstrations[:4]]
    completions = [d.completion for d in task.demonstrations[:4]]
    single = load_reward_model(rm.save(tmp_path / "rm"), device="cpu")
    assert isinstance(single, RewardModel)
    np.testing.assert_array_equal(single.score(prompts, completions), rm.score(prompts, completions))
    ens = RewardEnsemble([rm, RewardModel.from_pretrained(tiny_model.path, device="cpu", head_seed=1)])
    both = load_reward_model(ens.save(tmp_path / "ens"), device="cpu")
    assert isinstance(both, RewardEnsemble) and len(both) == 2
    np.testing.assert_array_equal(both.score(prompts, completions), ens.score(prompts, completions))
    with pytest.raises(FileNotFoundError, match="not a reward-model checkpoint"):
        load_reward_model(tmp_path / "nowhere")


@pytest.mark.parametrize("ensemble", [False, True], ids=["model", "ensemble"])
def test_a_reward_model_save_cut_short_between_its_renames_loads(rm: RewardModel, tmp_path: Path, ensemble: bool) -> None:
    """Killed between the renames of a save: the folder is only in `.<name>-old-*/old`; loading puts it back."""
    path = (RewardEnsemble([rm, rm]) if ensemble else rm).save(tmp_path / "rm")
    (tmp_path / ".rm-old-k2j4h6g8").mkdir()
    path.rename(tmp_path / ".rm-old-k2j4h6g8" / "old")
    (tmp_path / ".rm.tmp-a1b2c3d4").mkdir()  # and a killed write's temporary
    loaded = load_reward_model(path, device="cpu")
    assert isinstance(loaded, RewardEnsemble) == ensemble
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rm"]
