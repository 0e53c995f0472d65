"""RewardEnsemble: mean and disagreement, bootstrap training, saving; building a model or an ensemble by member count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from llm_gym.core.reward import validate_rewards
from llm_gym.infra.logger import Logger
from llm_gym.models.reward_ensemble import RewardEnsemble, reward_model_from_pretrained
from llm_gym.models.reward_model import RewardModel
from llm_gym.models.reward_trainer import RewardTrainer, RewardTrainerConfig
from llm_gym.tasks.review import GoldScorer
from llm_gym.tasks.tiny_lm import PretrainReport


def test_ensemble_mean_std_and_bootstrap(tiny_model: PretrainReport, task, gold_comparisons, tmp_path: Path) -> None:
    prompts = [d.prompt for d in task.demonstrations[:5]]
    completions = [d.completion for d in task.demonstrations[:5]]
    same = RewardEnsemble([RewardModel.from_pretrained(tiny_model.path, device="cpu", head_seed=3) for _ in range(2)])
    mean, std = same.score_with_std(prompts, completions)
    assert mean.shape == std.shape == (5,)
    np.testing.assert_array_equal(std, 0.0)

    ens = RewardEnsemble.from_pretrained(tiny_model.path, 3, seed=0, device="cpu")
    trainer = RewardTrainer(RewardTrainerConfig(epochs=1, learning_rate=1e-3), logger=Logger(None), rng=np.random.default_rng(0))
    metrics = trainer.fit(ens, gold_comparisons(60), GoldScorer(), bootstrap_rng=np.random.default_rng(1))
    assert {"train_loss", "heldout_accuracy", "gold_agreement"} <= metrics.keys()
    assert "reward_model/member2/train_loss" in trainer.logger.history  # type: ignore[union-attr]
    mean, std = ens.score_with_std(prompts, completions)
    assert mean.shape == std.shape == (5,) and (std > 0).all()
    np.testing.assert_allclose(ens(prompts, completions), mean)
    validate_rewards(ens(prompts, completions), 5)

    loaded = RewardEnsemble.load(ens.save(tmp_path / "ens"), device="cpu")
    assert len(loaded) == 3
    m2, s2 = loaded.score_with_std(prompts, completions)
    np.testing.assert_allclose(m2, mean, atol=1e-6)
    np.testing.assert_allclose(s2, std, atol=1e-6)


def test_bootstrap_draws_one_resample_per_member(tiny_model: PretrainReport, gold_comparisons) -> None:
    """An ensemble member trains exactly as a single model would on its resample, with the shared held-out set."""
    comparisons = gold_comparisons(30)
    ens = RewardEnsemble.from_pretrained(tiny_model.path, 2, seed=4, device="cpu")
    trainer = RewardTrainer(RewardTrainerConfig(epochs=1), logger=Logger(None), rng=np.random.default_rng(0))
    metrics = trainer.fit(ens, comparisons, bootstrap_rng=np.random.default_rng(1))

    by_hand = RewardTrainer(RewardTrainerConfig(epochs=1), rng=np.random.default_rng(0))
    train_set, held = by_hand.split(comparisons)
    draws = np.random.default_rng(1)
    expected = []
    for i in range(2):
        sample = [train_set[j] for j in draws.integers(0, len(train_set), size=len(train_set))]
        member = RewardModel.from_pretrained(tiny_model.path, device="cpu", head_seed=4 + i)
        expected.append(by_hand.fit(member, sample, heldout=held))
        assert all(torch.equal(a, b) for a, b in zip(member.parameters(), ens.members[i].parameters()))
    assert metrics == {k: float(np.mean([m[k] for m in expected])) for k in expected[0]}
    assert {"reward_model/member0/train_loss", "reward_model/member1/train_loss"} <= trainer.logger.history.keys()  # type: ignore[union-attr]


def test_deprecated_ensemble_train_is_trainer_fit(tiny_model: PretrainReport, gold_comparisons) -> None:
    comparisons = gold_comparisons(20)
    results = []
    for call in ("fit", "train"):
        ens = RewardEnsemble.from_pretrained(tiny_model.path, 2, seed=0, device="cpu")
        trainer = RewardTrainer(RewardTrainerConfig(epochs=1), rng=np.random.default_rng(0))
        if call == "train":
            with pytest.warns(DeprecationWarning, match="trainer.fit"):
                metrics = ens.train(trainer, comparisons, np.random.default_rng(1), gold_fn=GoldScorer())
        else:
            metrics = trainer.fit(ens, comparisons, GoldScorer(), bootstrap_rng=np.random.default_rng(1))
        results.append((metrics, [p.detach().clone() for m in ens.members for p in m.parameters()]))
    (m1, p1), (m2, p2) = results
    assert m1 == m2 and all(torch.equal(a, b) for a, b in zip(p1, p2))


def test_reward_model_from_pretrained_by_member_count(tiny_model: PretrainReport) -> None:
    one = reward_model_from_pretrained(tiny_model.path, 1, seed=3, pooling="mean", device="cpu")
    same = RewardModel.from_pretrained(tiny_model.path, head_seed=3, pooling="mean", device="cpu")
    assert isinstance(one, RewardModel) and one.net.pooling == "mean"
    assert all(torch.equal(a, b) for a, b in zip(one.parameters(), same.parameters()))
    three = reward_model_from_pretrained(tiny_model.path, 3, seed=3, device="cpu")
    assert isinstance(three, RewardEnsemble) and len(three) == 3
    reference = RewardEnsemble.from_pretrained(tiny_model.path, 3, seed=3, device="cpu")
    for a, b in zip(three.members, reference.members):
        assert torch.equal(a.net.head.weight, b.net.head.weight)
    assert torch.equal(three.members[0].net.head.weight, RewardModel.from_pretrained(tiny_model.path, head_seed=3, device="cpu").net.head.weight)
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match="members must be a positive int"):
            reward_model_from_pretrained(tiny_model.path, bad)  # type: ignore[arg-type]
