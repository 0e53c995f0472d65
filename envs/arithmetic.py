"""`llm_gym/Arithmetic-v0`: the built-in verifiable task (chain sums) as a ready-made prompt bandit.

Prompts are sums such as ``"7 - 2 + 9 ="`` (`llm_gym.tasks.arithmetic`); the reward is 1 when the
completion is the right number and nothing else (``" 14"``) and 0 otherwise, from an `AnswerChecker` that knows every
prompt's answer, which is also the gold judge: `info["gold"]` is correctness, and the evaluation of
`llm-gym run` reports accuracy and pass@k for it. The environment's `task` is the whole generated
task (held-out sums, demonstrations, the corpus the built-in model is pretrained on).

    >>> import gymnasium, llm_gym
    >>> env = gymnasium.make("llm_gym/Arithmetic-v0", task_config={"n_pretrain": 10, "n_prompts": 5})
    >>> env.reset(seed=0)[0]
    '9 - 0 + 8 ='
    >>> env.step(" 17")[1:3]
    (1.0, True)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llm_gym.core.reward import RewardFn
from llm_gym.tasks.arithmetic import ArithmeticTask, ArithmeticTaskConfig, generate_arithmetic_task

from llm_gym.envs.generated import generated_task, split_prompts
from llm_gym.envs.prompt_bandit import PromptBanditEnv, PromptBanditVecEnv

__all__ = ["ArithmeticEnv", "ArithmeticVecEnv"]

TaskConfigLike = ArithmeticTaskConfig | Mapping[str, Any] | None


def arithmetic_task(task_config: TaskConfigLike = None) -> ArithmeticTask:
    """The generated task for a config (an `ArithmeticTaskConfig`, its fields as a table from a config file, or
    None for the defaults), generated once per config."""
    return generated_task(ArithmeticTaskConfig, generate_arithmetic_task, task_config)


class ArithmeticEnv(PromptBanditEnv):
    """The chain-sum task; reward = 1 for the right number, unless `reward_fn` is given.

    Args:
        reward_fn: the reward paid; the answer checker (`task.gold`) by default.
        split: `"train"` or `"eval"` prompts.
        task_config: which generated task (difficulty, sizes, seed), or its fields as a table.
        max_completion_chars, render_mode: as in `PromptBanditEnv`.
    """

    def __init__(self, reward_fn: RewardFn | str | None = None, split: str = "train", task_config: TaskConfigLike = None,
                 max_completion_chars: int = 64, render_mode: str | None = None) -> None:
        task = arithmetic_task(task_config)
        gold = task.gold  # this environment's own checker (its last_checks are this environment's)
        super().__init__(split_prompts(task, split), reward_fn=reward_fn if reward_fn is not None else gold,
                         gold_fn=gold, max_completion_chars=max_completion_chars, render_mode=render_mode)
        self.task = task


class ArithmeticVecEnv(PromptBanditVecEnv):
    """Batched form of `ArithmeticEnv` (`gymnasium.make_vec("llm_gym/Arithmetic-v0", num_envs=...)`)."""

    def __init__(self, reward_fn: RewardFn | str | None = None, num_envs: int = 16, split: str = "train",
                 task_config: TaskConfigLike = None, max_completion_chars: int = 64, group_size: int = 1) -> None:
        task = arithmetic_task(task_config)
        gold = task.gold
        super().__init__(split_prompts(task, split), reward_fn=reward_fn if reward_fn is not None else gold,
                         num_envs=num_envs, gold_fn=gold, max_completion_chars=max_completion_chars,
                         group_size=group_size)
        self.task = task
