"""The rollout part on its own: a grouped prompt batch, the rng draws in the documented order, the env's scores."""

from __future__ import annotations

import contextlib

import numpy as np

from llm_gym import Policy, SamplingConfig
from llm_gym.agents.rollout import collect_experience, rank_seed
from llm_gym.envs import PromptBanditVecEnv
from llm_gym.infra.distributed import Distributed

PROMPTS = ["the film was", "the hotel is", "this novel", "my new phone is"]


def test_a_grouped_batch_its_draws_and_its_scores(policy: Policy) -> None:
    env = PromptBanditVecEnv(PROMPTS, lambda p, c: [float(len(x)) for x in c], num_envs=8, group_size=4)
    sampling = SamplingConfig(max_new_tokens=6)
    rng = np.random.default_rng(3)
    exp = collect_experience(policy, env, sampling, rng, Distributed(), contextlib.nullcontext())
    assert exp.prompts[:4] == [exp.prompts[0]] * 4 and exp.prompts[4:] == [exp.prompts[4]] * 4  # two groups of 4
    assert exp.scores.dtype == np.float64 and np.array_equal(exp.scores, [float(len(c)) for c in exp.completions])
    assert exp.rollout.completions == exp.completions and set(exp.timings) == {"generation", "scoring"}
    # the documented order: the env's reset seed, then the sampling seed
    replay = np.random.default_rng(3)
    reset_seed, sample_seed = int(replay.integers(2**31 - 1)), int(replay.integers(2**63 - 1))
    prompts, _ = env.reset(seed=reset_seed)
    assert list(prompts) == exp.prompts
    assert policy.sample(list(prompts), sampling, seed=sample_seed).completions == exp.completions
    assert rng.bit_generator.state == replay.bit_generator.state  # nothing else was drawn


def test_rank_seeds() -> None:
    assert rank_seed(12345, 0) == 12345  # rank 0 samples as a single process does
    assert len({rank_seed(12345, r) for r in range(4)}) == 4 and 0 <= rank_seed(12345, 3) < 2**63
