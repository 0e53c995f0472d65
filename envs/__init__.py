"""llm_gym environments, registered in Gymnasium's own registry under the `llm_gym/` namespace.

    >>> import gymnasium, llm_gym
    >>> env = gymnasium.make("llm_gym/ReviewSentiment-v0")
    >>> vec = gymnasium.make_vec("llm_gym/ReviewSentiment-v0", num_envs=4)

This file is only the register calls (entry points are strings, so registering imports no
environment code) and the names the folder exports:

    prompt_bandit.py   PromptBanditEnv / PromptBanditVecEnv: any prompt dataset + any reward function
    review.py          the built-in review task as a ready-made prompt bandit
    arithmetic.py      the built-in verifiable task (chain sums, paid 1 for the right number) as a prompt bandit
    generated.py       what those two share: their generated task, once per config, and a split's prompts
    reasoning_gym.py   ReasoningGymEnv / ReasoningGymVecEnv: reasoning-gym's problems, paid its score_answer
                       (needs `pip install llm-gym[reasoning]`, imported only when one is made)
    wrappers.py        LearnedRewardWrapper: any Gymnasium env paying a learned reward, its own kept in info["true_reward"]
"""

from __future__ import annotations

import importlib
from typing import Any

from gymnasium.envs.registration import register

__all__ = ["ArithmeticEnv", "ArithmeticVecEnv", "LearnedRewardWrapper", "PromptBanditEnv", "PromptBanditVecEnv", "ReasoningGymEnv", "ReasoningGymScorer",
           "ReasoningGymVecEnv", "ReviewSentimentEnv", "ReviewSentimentVecEnv", "StepRecorder", "StepRewardFn",
           "review_prompts"]

register(
    id="llm_gym/PromptBandit-v0",
    entry_point="llm_gym.envs.prompt_bandit:PromptBanditEnv",
    vector_entry_point="llm_gym.envs.prompt_bandit:PromptBanditVecEnv",
    disable_env_checker=False,
)
register(
    id="llm_gym/ReviewSentiment-v0",
    entry_point="llm_gym.envs.review:ReviewSentimentEnv",
    vector_entry_point="llm_gym.envs.review:ReviewSentimentVecEnv",
)
register(
    id="llm_gym/Arithmetic-v0",
    entry_point="llm_gym.envs.arithmetic:ArithmeticEnv",
    vector_entry_point="llm_gym.envs.arithmetic:ArithmeticVecEnv",
)
register(
    id="llm_gym/ReasoningGym-v0",
    entry_point="llm_gym.envs.reasoning_gym:ReasoningGymEnv",
    vector_entry_point="llm_gym.envs.reasoning_gym:ReasoningGymVecEnv",
)

_MODULES = {"ArithmeticEnv": "arithmetic", "ArithmeticVecEnv": "arithmetic", "PromptBanditEnv": "prompt_bandit", "PromptBanditVecEnv": "prompt_bandit", "ReviewSentimentEnv": "review",
            "ReviewSentimentVecEnv": "review", "review_prompts": "review", "LearnedRewardWrapper": "wrappers",
            "StepRecorder": "wrappers", "StepRewardFn": "wrappers", "ReasoningGymEnv": "reasoning_gym",
            "ReasoningGymVecEnv": "reasoning_gym", "ReasoningGymScorer": "reasoning_gym"}


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module 'llm_gym.envs' has no attribute {name!r}")
    return getattr(importlib.import_module(f"llm_gym.envs.{_MODULES[name]}"), name)
