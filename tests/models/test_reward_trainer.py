"""RewardTrainer: learning from gold labels, warm starts, bad comparison sets, the learning-rate schedule, keeping the
best held-out epoch, config checks, the deprecated name."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from llm_gym.core.preferences import Comparison
from llm_gym.infra.logger import Logger
from llm_gym.models.reward_model import RewardModel
from llm_gym.models.reward_trainer import RewardTrainer, RewardTrainerConfig
from llm_gym.tasks.review import GoldScorer
from llm_gym.tasks.tiny_lm import PretrainReport


def test_training_on_gold_labels_beats_chance(rm: RewardModel, gold_comparisons) -> None:
    comparisons = gold_comparisons(300)
    logger = Logger(None)
    trainer = RewardTrainer(
        RewardTrainerConfig(epochs=3, batch_size=16, learning_rate=1e-3, heldout_fraction=0.25), logger=logger, rng=np.random.default_rng(1)
    )
    before = {n: p.detach().clone() for n, p in rm.net.named_parameters()}
    metrics = trainer.fit(rm, comparisons, gold_fn=GoldScorer())
    assert metrics["heldout_accuracy"] > 0.7, metrics
    assert metrics["gold_agreement"] > 0.7, metrics
    assert metrics["num_heldout"] == 75 and metrics["num_train"] == 225
    # every parameter moved except the two that Bradley-Terry cannot see: a constant added to
    # all rewards (the head's bias, and the final layer-norm bias that only feeds it) cancels in r_w - r_l
    unchanged = {n for n, p in rm.net.named_parameters() if torch.equal(before[n], p)}
    assert unchanged <= {"head.bias", "backbone.ln_f.bias"}, unchanged
    for key in ("train_loss", "train_accuracy", "train_margin", "heldout_loss", "heldout_accuracy", "heldout_margin", "gold_agreement"):
        assert len(logger.history[f"reward_model/{key}"]) == 3
    # warm start: a second call continues from these weights and the logging step keeps counting
    steps = trainer.num_updates
    trainer.fit(rm, comparisons[:32])
    assert trainer.num_updates > steps
    assert logger.history["reward_model/train_loss"][-1][0] == trainer.num_updates


def test_bad_comparison_sets(rm: RewardModel) -> None:
    trainer = RewardTrainer(RewardTrainerConfig(epochs=1), rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="empty"):
        trainer.fit(rm, [])
    ties = [Comparison("p", ("a", "b"), (0, 0)), Comparison("q", ("a", "b", "c", "d"), (1, 1, 1, 1))]
    with pytest.raises(ValueError, match="all 2 comparisons are ties"):
        trainer.fit(rm, ties)
    # contradictory labels are kept (both trained on), not dropped: with dropout off both copies
    # get the same scores, so exactly one of the two opposite pairs is ordered right
    a = Comparison("p", ("x", "y"), (0, 1))
    b = Comparison("p", ("x", "y"), (1, 0))
    metrics = RewardTrainer(RewardTrainerConfig(epochs=1, heldout_fraction=0.0), rng=np.random.default_rng(0)).fit(rm, [a, b, ties[0]])
    assert metrics["num_train"] == 3 and metrics["train_accuracy"] == pytest.approx(0.5)


@pytest.mark.parametrize(("schedule", "warmup", "expected"),
                         [("linear", 0.0, [5e-4, 0.0]), ("constant", 0.0, [1e-3, 1e-3]), ("linear", 0.5, [1e-3, 0.0]),
                          ("constant", 0.8, [6.25e-4, 1e-3])])
def test_learning_rate_schedule(rm: RewardModel, gold_comparisons, schedule: str, warmup: float, expected: list[float]) -> None:
    # 40 comparisons in batches of 8: 5 steps an epoch, 10 in all; linear decay reaches 1e-3 * (1 - 5/10) after
    # the first epoch and 0 after the last step (the logged rate is the one the next step would use); a warm-up
    # over 5 steps peaks at step 5 and decays from there, one over 8 steps has reached 5/8 of the peak at step 5
    comparisons = [c for c in gold_comparisons(48) if not c.is_tie][:40]
    logger = Logger(None)
    config = RewardTrainerConfig(epochs=2, batch_size=8, learning_rate=1e-3, heldout_fraction=0.0, lr_schedule=schedule,
                                 warmup_fraction=warmup)
    RewardTrainer(config, logger=logger, rng=np.random.default_rng(0)).fit(rm, comparisons)
    assert [v for _, v in logger.history["reward_model/learning_rate"]] == pytest.approx(expected)


def test_keep_best_restores_the_epoch_with_the_lowest_heldout_loss(rm: RewardModel, gold_comparisons) -> None:
    # coin-flip labels: fitting them raises the held-out loss, so an early epoch holds out best
    coin = np.random.default_rng(3)
    comparisons = [Comparison(c.prompt, c.completions, (0, 1) if coin.random() < 0.5 else (1, 0))
                   for c in gold_comparisons(160) if not c.is_tie]
    config = RewardTrainerConfig(epochs=4, batch_size=8, learning_rate=3e-3, heldout_fraction=0.25, keep_best=True)
    logger = Logger(None)
    trainer = RewardTrainer(config, logger=logger, rng=np.random.default_rng(0))
    _, held = RewardTrainer(config, rng=np.random.default_rng(0)).split(comparisons)  # the split fit draws first
    metrics = trainer.fit(rm, comparisons)
    losses = [v for _, v in logger.history["reward_model/heldout_loss"]]
    best = int(np.argmin(losses))
    assert len(losses) == 4 and best < 3, losses  # the case that matters: an earlier epoch's weights come back
    assert metrics["best_epoch"] == best + 1 and metrics["heldout_loss"] == losses[best]
    # the model now holds that epoch's weights: its held-out loss, recomputed, is the best one logged
    scores = rm.score([c.prompt for c in held for _ in c.completions], [x for c in held for x in c.completions])
    diffs = [scores[2 * i + w] - scores[2 * i + l] for i, c in enumerate(held) for w, l in c.pairs()]
    assert float(np.mean(np.logaddexp(0.0, -np.array(diffs)))) == pytest.approx(losses[best], rel=1e-5)
    # without a held-out set there is nothing to choose by: the last epoch's weights stay
    no_held = RewardTrainer(dataclasses.replace(config, heldout_fraction=0.0), rng=np.random.default_rng(0)).fit(rm, comparisons)
    assert "best_epoch" not in no_held


def test_keep_best_never_takes_a_nan_heldout_loss(rm: RewardModel, gold_comparisons) -> None:
    # a held-out set of ties only has no strict pair: its loss is NaN at every epoch, so no epoch is "best" and the
    # last epoch's weights and metrics stay (a NaN first epoch once became the best for good)
    train = [c for c in gold_comparisons(48) if not c.is_tie][:32]
    ties = [Comparison(c.prompt, c.completions, (0, 0)) for c in train[:8]]
    config = RewardTrainerConfig(epochs=3, batch_size=8, learning_rate=1e-3, heldout_fraction=0.0, keep_best=True)
    logger = Logger(None)
    before = [p.detach().clone() for p in rm.net.parameters()]
    metrics = RewardTrainer(config, logger=logger, rng=np.random.default_rng(0)).fit(rm, train, heldout=ties)
    assert "best_epoch" not in metrics and math.isnan(metrics["heldout_loss"])
    losses = [v for _, v in logger.history["reward_model/train_loss"]]
    assert len(losses) == 3 and metrics["train_loss"] == losses[-1], "the last epoch's metrics"
    assert any(not torch.equal(a, b) for a, b in zip(before, rm.net.parameters())), "it trained and kept what it learned"


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("epochs", 0, "epochs"),
        ("batch_size", 1.5, "batch_size"),
        ("learning_rate", -1.0, "learning_rate"),
        ("learning_rate", float("nan"), "learning_rate"),
        ("weight_decay", -0.1, "weight_decay"),
        ("heldout_fraction", 1.0, "heldout_fraction"),
        ("max_grad_norm", 0.0, "max_grad_norm"),
        ("ties", "ignore", "ties"),
        ("eval_batch_size", 0, "eval_batch_size"),
        ("disable_dropout", "yes", "disable_dropout"),
        ("lr_schedule", "cosine", "lr_schedule"),
        ("warmup_fraction", 1.0, "warmup_fraction"),
        ("label_smoothing", 0.5, "label_smoothing"),
        ("keep_best", 1, "keep_best"),
    ],
)
def test_trainer_config_validation(field: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RewardTrainerConfig(**{field: value})  # type: ignore[arg-type]


def test_deprecated_train_is_fit(tiny_model: PretrainReport, gold_comparisons) -> None:
    comparisons = gold_comparisons(24)
    results = []
    for call in ("fit", "train"):
        rm = RewardModel.from_pretrained(tiny_model.path, device="cpu", head_seed=0)
        trainer = RewardTrainer(RewardTrainerConfig(epochs=1), logger=Logger(None), rng=np.random.default_rng(0))
        if call == "train":
            with pytest.warns(DeprecationWarning, match="RewardTrainer.fit"):
                metrics = trainer.train(rm, comparisons)
        else:
            metrics = trainer.fit(rm, comparisons)
        results.append((metrics, [p.detach().clone() for p in rm.parameters()], trainer.logger.history))
    (m1, p1, h1), (m2, p2, h2) = results
    assert m1 == m2 and h1 == h2 and all(torch.equal(a, b) for a, b in zip(p1, p2))


def test_seed_is_the_rng_it_names() -> None:
    assert RewardTrainer(seed=5).rng.integers(2**62) == np.random.default_rng(5).integers(2**62)
    with pytest.raises(TypeError, match="not both"):
        RewardTrainer(rng=np.random.default_rng(0), seed=0)
    with pytest.raises(TypeError, match="seed must be an int"):
        RewardTrainer(seed=1.5)  # type: ignore[arg-type]
