"""Reward model: scoring, encoding, the environment's reward function, normalisation, the shared interface."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest

import llm_gym  # noqa: F401  (registers the environments)
from llm_gym.core.reward import validate_rewards
from llm_gym.models.reward_ensemble import RewardEnsemble
from llm_gym.models.reward_model import LearnedReward, RewardModel
from llm_gym.tasks.tiny_lm import PretrainReport


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


def test_a_model_and_an_ensemble_share_one_interface(rm: RewardModel, tiny_model: PretrainReport) -> None:
    ens = RewardEnsemble([rm, RewardModel.from_pretrained(tiny_model.path, device="cpu", head_seed=1)])
    assert rm.members == [rm] and ens.members[0] is rm
    for model in (rm, ens):
        assert isinstance(model, LearnedReward)

