"""An ensemble of reward models, and the two constructors that give a model or an ensemble as asked.

Christiano et al. 2017 trained an ensemble of reward predictors, each on a bootstrap resample
of the comparisons (`RewardTrainer.fit` does that for a `RewardEnsemble`), rewarded the
policy with their mean and asked for labels where they disagree most. `RewardEnsemble` is a
`LearnedReward` like a single `RewardModel`, so callers treat the two alike:

    rm = reward_model_from_pretrained(sft_path, members, seed=seed)   # a RewardModel when members == 1
    trainer.fit(rm, comparisons, gold_fn, bootstrap_rng=rng)
    rm.normalize(demo_prompts, demo_completions)
    rm.save(path); rm = load_reward_model(path)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from llm_gym.core.preferences import Comparison
from llm_gym.core.reward import RewardFn
from llm_gym.models import reward_checkpoint
from llm_gym.models.reward_model import RewardModel

if TYPE_CHECKING:
    from llm_gym.models.reward_trainer import RewardTrainer

__all__ = ["RewardEnsemble", "load_reward_model", "reward_model_from_pretrained"]


class RewardEnsemble:
    """Several reward models; scores are their mean, disagreement their standard deviation.

    Calling the ensemble returns the mean (so it is a `RewardFn`); `score_with_std` also
    returns the disagreement, the query-selection signal of Christiano et al. 2017. Each
    member is a full model (memory grows with the number of members).

    With LoRA (`peft_config=`), each member is still its own backbone, loaded separately with
    its own adapter: K members hold K copies of the base weights. LoRA saves optimizer memory
    and checkpoint size here (only adapters and heads train), but not the base copies.
    """

    bootstrap = True
    """Members train on bootstrap resamples of the comparisons (see `LearnedReward.bootstrap`)."""

    def __init__(self, members: Sequence[RewardModel]) -> None:
        members = list(members)
        if not members:
            raise ValueError("an ensemble needs at least one member; build them with RewardEnsemble.from_pretrained")
        for i, m in enumerate(members):
            if not isinstance(m, RewardModel):
                raise TypeError(f"member {i} is a {type(m).__name__}, not a RewardModel")
        self.members = members

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | PathLike[str], num_members: int, *, seed: int = 0, **kwargs: object
    ) -> RewardEnsemble:
        """`num_members` reward models on the same pretrained backbone, heads initialised with seeds `seed + i`."""
        _check_members(num_members, "num_members")
        return cls([RewardModel.from_pretrained(name_or_path, head_seed=seed + i, **kwargs) for i in range(num_members)])  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.members)

    def score_with_std(self, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) across members, each a float64 array of shape (n,); std (ddof 0) is the disagreement."""
        scores = np.stack([m.score(prompts, completions, batch_size=batch_size) for m in self.members])
        return scores.mean(axis=0), scores.std(axis=0)

    def score(self, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Mean score across members, float64 array of shape (n,)."""
        return self.score_with_std(prompts, completions, batch_size)[0]

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """`score(prompts, completions)`: the ensemble mean as a `RewardFn`."""
        return self.score(prompts, completions)

    def normalize(self, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 64) -> None:
        """Normalise every member so that these pairs score 0 on average (see `RewardModel.normalize`)."""
        for m in self.members:
            m.normalize(prompts, completions, batch_size)

    def save(self, path: str | PathLike[str]) -> Path:
        """Write the members to `path/member_{i}` and an index file, atomically."""
        return reward_checkpoint.save_ensemble(self.members, path)

    @classmethod
    def load(cls, path: str | PathLike[str], device: torch.device | str | None = None) -> RewardEnsemble:
        """Load an ensemble written by `save` (each member checked as in `RewardModel.load`)."""
        return cls([RewardModel.load(folder, device=device) for folder in reward_checkpoint.ensemble_members(path)])

    def train(
        self,
        trainer: RewardTrainer,
        comparisons: Sequence[Comparison],
        rng: np.random.Generator,
        gold_fn: RewardFn | None = None,
    ) -> dict[str, float]:
        """Deprecated: `trainer.fit(ensemble, comparisons, gold_fn, bootstrap_rng=rng)` trains the same way."""
        warnings.warn("RewardEnsemble.train(trainer, comparisons, rng) is now "
                      "trainer.fit(ensemble, comparisons, gold_fn, bootstrap_rng=rng)", DeprecationWarning, stacklevel=2)
        return trainer.fit(self, comparisons, gold_fn, bootstrap_rng=rng)


def reward_model_from_pretrained(
    name_or_path: str | PathLike[str], members: int = 1, *, seed: int = 0, **kwargs: object
) -> RewardModel | RewardEnsemble:
    """A new reward model on a pretrained backbone: one `RewardModel` for `members=1`, else a `RewardEnsemble`.

    Head seeds are `seed` for a single model (`RewardModel.from_pretrained(..., head_seed=seed)`)
    and `seed, seed + 1, ...` for the members of an ensemble. `kwargs` go to
    `RewardModel.from_pretrained` (`device`, `pooling`, `max_length`, `dtype`, ...).
    """
    _check_members(members, "members")
    if members == 1:
        return RewardModel.from_pretrained(name_or_path, head_seed=seed, **kwargs)  # type: ignore[arg-type]
    return RewardEnsemble.from_pretrained(name_or_path, members, seed=seed, **kwargs)


def load_reward_model(path: str | PathLike[str], device: torch.device | str | None = None) -> RewardModel | RewardEnsemble:
    """Load whichever `path` holds: a `RewardEnsemble` (its folder has `reward_ensemble.json`) or a `RewardModel`.

    Raises what `RewardModel.load` raises: `FileNotFoundError` when `path` is no checkpoint,
    `ValueError` for a modified or mismatched one.
    """
    if reward_checkpoint.is_ensemble(path):
        return RewardEnsemble.load(path, device=device)
    return RewardModel.load(path, device=device)


def _check_members(n: object, name: str) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be a positive int, got {n!r}")
