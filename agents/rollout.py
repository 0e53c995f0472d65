"""Rollout: one batch of prompts from a prompt-bandit environment, a completion each, the environment's score.

The part every on-policy language-model agent starts its iteration with (PPO, RLOO, GRPO).
The prompt batch comes from `env.reset(seed=...)` with a seed drawn from the agent's rng, so
a resumed run (rng restored from its checkpoint) sees the prompts an uninterrupted run would.
With grouped prompts (`PromptBanditVecEnv(group_size=G)`) slots `[g*G, (g+1)*G)` hold one
prompt, and their `G` completions are independent samples of it.

Under data parallelism every process draws the same prompt batch, samples completions for
its contiguous shard with its own seed (rank 0 uses the single-process seed), and the
completions are gathered so that every process steps the environment on the whole batch:
scores, and everything computed from them, are global and identical on every process.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import numpy as np
from gymnasium.vector import VectorEnv

from llm_gym.infra.distributed import Distributed
from llm_gym.models.policy import Policy, Rollout, SamplingConfig

__all__ = ["Experience", "collect_experience", "rank_seed"]


class Experience(NamedTuple):
    """One iteration's batch as the environment saw it, plus this process's token-level shard."""

    prompts: list[str]
    """The whole batch's prompts (every process)."""
    completions: list[str]
    """The whole batch's completions, in prompt order."""
    rollout: Rollout
    """This process's shard: token ids, masks and the log-probs of the sampling distribution."""
    scores: np.ndarray
    """(B,) float64: the environment's reward for every completion of the batch."""
    info: dict[str, Any]
    """The environment step's info (`gold`, `group`, `prompt_index`...)."""
    timings: dict[str, float]
    """Seconds spent in `generation` and `scoring`."""


def rank_seed(seed: int, rank: int) -> int:
    """Process `rank`'s sampling seed for an iteration: rank 0 keeps `seed` (the single-process seed)."""
    return seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def collect_experience(policy: Policy, env: VectorEnv, sampling: SamplingConfig, rng: np.random.Generator,
                       dist: Distributed, autocast: Any) -> Experience:
    """Reset `env` for a prompt batch, sample this process's completions, and score the whole batch.

    `rng` draws two numbers, in this order: the environment's reset seed and the sampling seed.
    `autocast` is the context manager the sampling forward passes run under.
    """
    prompts, _ = env.reset(seed=int(rng.integers(2**31 - 1)))
    timings = {}
    t = time.perf_counter()
    seed = rank_seed(int(rng.integers(2**63 - 1)), dist.rank)
    with autocast:
        rollout = policy.sample(dist.shard(list(prompts)), sampling, seed=seed)
    completions = [c for part in dist.gather_object(rollout.completions) for c in part]
    timings["generation"] = time.perf_counter() - t
    t = time.perf_counter()
    _, scores, _, _, info = env.step(completions)
    timings["scoring"] = time.perf_counter() - t
    return Experience(list(prompts), completions, rollout, np.asarray(scores, dtype=np.float64), info, timings)

