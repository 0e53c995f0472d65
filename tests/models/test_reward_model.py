"""Reward model: losses against hand computation, scoring, normalisation, training, checkpoints, ensemble."""

from __future__ import annotations

import json
import math
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import llm_gym  # noqa: F401  (registers the environments)
from llm_gym.infra.logger import Logger
from llm_gym.core.preferences import Comparison
from llm_gym.core.reward import validate_rewards
from llm_gym.models.reward_model import (
    RewardEnsemble,
    RewardModel,
    RewardTrainer,
    RewardTrainerConfig,
    pairwise_loss,
    ranking_loss,
)
from llm_gym.tasks.review import GoldScorer, generate_review_task
from llm_gym.tasks.tiny_lm import PretrainReport, TinyLMConfig


def _nls(x: float) -> float:
    """-log sigmoid(x), by hand."""
    return math.log1p(math.exp(-x))


@pytest.fixture(scope="module")
def task():
    return generate_review_task(TinyLMConfig.smoke().task)


@pytest.fixture()
def rm(tiny_model: PretrainReport) -> RewardModel:
    return RewardModel.from_pretrained(tiny_model.path, device="cpu", head_seed=0)


def _gold_comparisons(task, n: int, seed: int = 0) -> list[Comparison]:
    """Pairs (demonstration, corpus continuation) of one prompt, labelled by the gold scorer."""
    gold = GoldScorer()
    rng = np.random.default_rng(seed)
    fragments = [" " + t.split(" . ", 1)[-1] for t in task.pretrain_texts]
    out = []
    for i in range(n):
        demo = task.demonstrations[i % len(task.demonstrations)]
        pair = (demo.completion, fragments[int(rng.integers(len(fragments)))])
        if rng.random() < 0.5:
            pair = pair[::-1]
        g = gold([demo.prompt] * 2, list(pair))
        ranks = (0, 0) if g[0] == g[1] else ((0, 1) if g[0] > g[1] else (1, 0))
        out.append(Comparison(demo.prompt, pair, ranks, labeller="gold"))
    return out


# ----------------------------------------------------------------------------- losses
def test_pairwise_loss_matches_hand_computation() -> None:
    assert float(pairwise_loss(torch.tensor([1.0]), torch.tensor([0.0]))) == pytest.approx(math.log(1 + math.exp(-1)))
    loss = pairwise_loss(torch.tensor([1.0, 0.5]), torch.tensor([0.0, 2.0]))
    assert float(loss) == pytest.approx((_nls(1.0) + _nls(-1.5)) / 2)
    with pytest.raises(ValueError, match="same shape"):
        pairwise_loss(torch.zeros(2), torch.zeros(3))


def test_ranking_loss_k4_strict_is_mean_over_six_pairs() -> None:
    rewards = torch.tensor([[0.3, -1.2, 2.0, 0.7], [1.0, 0.0, -0.5, 0.25]])
    ranks = torch.tensor([[2, 0, 3, 1], [0, 1, 2, 3]])
    per_element = []
    for b in range(2):
        total, count = 0.0, 0
        for i in range(4):
            for j in range(4):
                if ranks[b, i] < ranks[b, j]:
                    total += _nls(float(rewards[b, i] - rewards[b, j]))
                    count += 1
        assert count == 6  # C(4, 2)
        per_element.append(total / 6)
    assert float(ranking_loss(rewards, ranks)) == pytest.approx(np.mean(per_element), rel=1e-6)


def test_ranking_loss_k2_equals_pairwise_loss() -> None:
    rewards = torch.tensor([[1.0, 0.0], [0.2, 0.9]])
    ranks = torch.tensor([[0, 1], [1, 0]])
    expected = pairwise_loss(torch.tensor([1.0, 0.9]), torch.tensor([0.0, 0.2]))
    assert float(ranking_loss(rewards, ranks)) == pytest.approx(float(expected))


def test_ranking_loss_ties_skip_and_half() -> None:
    r = [0.5, 1.5, -0.5]
    rewards = torch.tensor([r])
    ranks = torch.tensor([[0, 0, 1]])  # 0 and 1 tie, both beat 2
    strict = _nls(r[0] - r[2]) + _nls(r[1] - r[2])
    assert float(ranking_loss(rewards, ranks, ties="skip")) == pytest.approx(strict / 2)
    d = r[0] - r[1]
    tie = -0.5 * math.log(1 / (1 + math.exp(-d))) - 0.5 * math.log(1 / (1 + math.exp(d)))
    assert float(ranking_loss(rewards, ranks, ties="half")) == pytest.approx((strict + tie) / 3)
    with pytest.raises(ValueError, match="ties"):
        ranking_loss(rewards, ranks, ties="drop")  # type: ignore[arg-type]


def test_ranking_loss_k_mask_mixed_k() -> None:
    rewards = torch.tensor([[0.3, -1.2, 2.0, 0.7], [1.0, 0.0, 99.0, -99.0]])
    ranks = torch.tensor([[2, 0, 3, 1], [1, 0, 0, 0]])
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    four = float(ranking_loss(rewards[:1], ranks[:1]))
    two = _nls(0.0 - 1.0)
    assert float(ranking_loss(rewards, ranks, mask)) == pytest.approx((four + two) / 2, rel=1e-6)
    changed = rewards.clone()
    changed[1, 2:] = torch.tensor([-5.0, 5.0])  # padded entries do not matter
    assert float(ranking_loss(changed, ranks, mask)) == pytest.approx(float(ranking_loss(rewards, ranks, mask)))


def test_ranking_loss_all_tie_element_excluded() -> None:
    rewards = torch.tensor([[1.0, 0.0], [3.0, -3.0]], requires_grad=True)
    ranks = torch.tensor([[0, 1], [0, 0]])
    assert float(ranking_loss(rewards, ranks).detach()) == pytest.approx(_nls(1.0))
    only_ties = ranking_loss(rewards[1:], ranks[1:])
    assert float(only_ties.detach()) == 0.0
    only_ties.backward()  # a zero connected to the graph: a step on it is a no-op
    assert rewards.grad is not None and float(rewards.grad.abs().sum()) == 0.0


# ----------------------------------------------------------------------------- scoring
def test_batched_score_equals_one_by_one(rm: RewardModel, task) -> None:
    prompts = [d.prompt for d in task.demonstrations[:6]] + ["the film was"]
    completions = [d.completion for d in task.demonstrations[:6]] + [""]
    batched = rm.score(prompts, completions)
    assert batched.shape == (7,) and batched.dtype == np.float64
    single = np.array([rm.score([p], [c])[0] for p, c in zip(prompts, completions)])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    np.testing.assert_allclose(rm.score(prompts, completions, batch_size=2), batched, atol=1e-5)
    np.testing.assert_allclose(rm(prompts, completions), batched)
    validate_rewards(rm(prompts, completions), 7)
    assert rm.score([], []).shape == (0,)
    with pytest.raises(ValueError, match="completions"):
        rm.score(["a", "b"], ["x"])
    with pytest.raises(TypeError, match="list of strings"):
        rm.score("a", "b")  # type: ignore[arg-type]


def test_encode_appends_eos_and_truncates_left(tiny_model: PretrainReport) -> None:
    rm = RewardModel.from_pretrained(tiny_model.path, device="cpu", max_length=8)
    tok = rm.tokenizer
    ids, mask = rm.encode(["the film was"], [" great , and the actors are really great ."])
    assert ids.shape == (1, 8) and int(mask.sum()) == 8
    assert int(ids[0, -1]) == tok.eos_token_id and int(ids[0, 0]) == tok.bos_token_id
    assert rm.num_truncated == 1
    short, _ = rm.encode(["a"], [" b"])
    assert int(short[0, -1]) == tok.eos_token_id and rm.num_truncated == 1


def test_reward_model_is_a_reward_fn_for_the_env(rm: RewardModel) -> None:
    env = gymnasium.make("llm_gym/ReviewSentiment-v0", reward_fn=rm)
    obs, _ = env.reset(seed=0)
    _, reward, terminated, truncated, info = env.step(" great , really great .")
    assert reward == pytest.approx(float(rm([obs], [" great , really great ."])[0]), abs=1e-6)
    assert terminated and not truncated and "gold" in info


def test_normalize_makes_reference_mean_zero(rm: RewardModel, task) -> None:
    prompts = [d.prompt for d in task.demonstrations[:20]]
    completions = [d.completion for d in task.demonstrations[:20]]
    before = rm.score(prompts, completions)
    offset = rm.normalize(prompts, completions)
    after = rm.score(prompts, completions)
    assert abs(after.mean()) < 1e-5
    assert offset == pytest.approx(before.mean(), abs=1e-5)
    np.testing.assert_allclose(after - after[0], before - before[0], atol=1e-5)  # only a shift


# ----------------------------------------------------------------------------- training
def test_training_on_gold_labels_beats_chance(rm: RewardModel, task) -> None:
    comparisons = _gold_comparisons(task, 300)
    logger = Logger(None)
    trainer = RewardTrainer(
        RewardTrainerConfig(epochs=3, batch_size=16, learning_rate=1e-3, heldout_fraction=0.25), logger=logger, rng=np.random.default_rng(1)
    )
    before = {n: p.detach().clone() for n, p in rm.net.named_parameters()}
    metrics = trainer.train(rm, comparisons, gold_fn=GoldScorer())
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
    trainer.train(rm, comparisons[:32])
    assert trainer.num_updates > steps
    assert logger.history["reward_model/train_loss"][-1][0] == trainer.num_updates


def test_bad_comparison_sets(rm: RewardModel) -> None:
    trainer = RewardTrainer(RewardTrainerConfig(epochs=1), rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="empty"):
        trainer.train(rm, [])
    ties = [Comparison("p", ("a", "b"), (0, 0)), Comparison("q", ("a", "b", "c", "d"), (1, 1, 1, 1))]
    with pytest.raises(ValueError, match="all 2 comparisons are ties"):
        trainer.train(rm, ties)
    # contradictory labels are kept (both trained on), not dropped: with dropout off both copies
    # get the same scores, so exactly one of the two opposite pairs is ordered right
    a = Comparison("p", ("x", "y"), (0, 1))
    b = Comparison("p", ("x", "y"), (1, 0))
    metrics = RewardTrainer(RewardTrainerConfig(epochs=1, heldout_fraction=0.0), rng=np.random.default_rng(0)).train(rm, [a, b, ties[0]])
    assert metrics["num_train"] == 3 and metrics["train_accuracy"] == pytest.approx(0.5)


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
    ],
)
def test_trainer_config_validation(field: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RewardTrainerConfig(**{field: value})  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- checkpoints
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


# ----------------------------------------------------------------------------- ensemble
def test_ensemble_mean_std_and_bootstrap(tiny_model: PretrainReport, task, tmp_path: Path) -> None:
    prompts = [d.prompt for d in task.demonstrations[:5]]
    completions = [d.completion for d in task.demonstrations[:5]]
    same = RewardEnsemble([RewardModel.from_pretrained(tiny_model.path, device="cpu", head_seed=3) for _ in range(2)])
    mean, std = same.score_with_std(prompts, completions)
    assert mean.shape == std.shape == (5,)
    np.testing.assert_array_equal(std, 0.0)

    ens = RewardEnsemble.from_pretrained(tiny_model.path, 3, seed=0, device="cpu")
    trainer = RewardTrainer(RewardTrainerConfig(epochs=1, learning_rate=1e-3), logger=Logger(None), rng=np.random.default_rng(0))
    metrics = ens.train(trainer, _gold_comparisons(task, 60), rng=np.random.default_rng(1), gold_fn=GoldScorer())
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
