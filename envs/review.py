"""`llm_gym/ReviewSentiment-v0`: the built-in task as a ready-made prompt bandit.

Prompts are openings of synthetic reviews (`llm_gym.tasks.review`); the default reward is the
gold scorer (positive sentiment plus fluency), as in Ziegler et al. 2019's
positive-continuation task. Pass `reward_fn=` (a reward model, say) to train against a
learned reward: the gold score is still reported in `info["gold"]`. The environment's
`task` is the whole review task (held-out prompts, demonstrations, pretraining and held-out
text, the gold scorer), which is what `llm-gym run` reads from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llm_gym.core.reward import RewardFn
from llm_gym.tasks.review import GoldScorer, ReviewTask, ReviewTaskConfig, generate_review_task

from llm_gym.envs.generated import generated_task, split_prompts
from llm_gym.envs.prompt_bandit import PromptBanditEnv, PromptBanditVecEnv

__all__ = ["ReviewSentimentEnv", "ReviewSentimentVecEnv", "review_prompts"]


def _review_task(task_config: ReviewTaskConfig | Mapping[str, Any] | None) -> ReviewTask:
    """The generated task for a config (a `ReviewTaskConfig`, or its fields as a table from a config file)."""
    return generated_task(ReviewTaskConfig, generate_review_task, task_config)


def review_prompts(split: str = "train", task_config: ReviewTaskConfig | Mapping[str, Any] | None = None) -> list[str]:
    """The built-in task's training (`"train"`) or held-out (`"eval"`) prompts."""
    return split_prompts(_review_task(task_config), split)


class ReviewSentimentEnv(PromptBanditEnv):
    """The built-in review-continuation task; reward = gold scorer unless `reward_fn` is given.

    Args:
        reward_fn: the reward paid; the gold scorer by default.
        split: `"train"` or `"eval"` prompts.
        task_config: which generated task (seed and sizes), or its fields as a table.
        max_completion_chars, render_mode: as in `PromptBanditEnv`.
    """

    def __init__(
        self,
        reward_fn: RewardFn | None = None,
        split: str = "train",
        task_config: ReviewTaskConfig | Mapping[str, Any] | None = None,
        max_completion_chars: int = 1024,
        render_mode: str | None = None,
    ) -> None:
        gold = GoldScorer()
        super().__init__(
            review_prompts(split, task_config),
            reward_fn=reward_fn if reward_fn is not None else gold,
            gold_fn=gold,
            max_completion_chars=max_completion_chars,
            render_mode=render_mode,
        )
        if split == "train":
            self.task = _review_task(task_config)


class ReviewSentimentVecEnv(PromptBanditVecEnv):
    """Batched form of `ReviewSentimentEnv` (`gymnasium.make_vec("llm_gym/ReviewSentiment-v0", num_envs=...)`)."""

    def __init__(
        self,
        reward_fn: RewardFn | None = None,
        num_envs: int = 16,
        split: str = "train",
        task_config: ReviewTaskConfig | Mapping[str, Any] | None = None,
        max_completion_chars: int = 1024,
        group_size: int = 1,
    ) -> None:
        gold = GoldScorer()
        super().__init__(
            review_prompts(split, task_config),
            reward_fn=reward_fn if reward_fn is not None else gold,
            num_envs=num_envs,
            gold_fn=gold,
            max_completion_chars=max_completion_chars,
            group_size=group_size,
        )
        if split == "train":
            self.task = _review_task(task_config)
