"""What a task is: prompts, and optionally held-out prompts, demonstrations, pretraining text and a gold judge.

A *task* is the data an RLHF experiment runs on, apart from the model. Any object with
these six attributes is a `Task` (a structural protocol, as Gymnasium's spaces and SB3's
callbacks are duck-typed), so the built-in review task, a `PromptTask` built from files
or lists, and a user's own class all go through the same pipeline:

| attribute | used for | when absent (empty / None) |
|---|---|---|
| `prompts` | RL rollouts, preference queries | required: a task has at least one prompt |
| `eval_prompts` | held-out evaluation | evaluation falls back to the training prompts |
| `demonstrations` | SFT (InstructGPT stage 1), RM normalisation | SFT is skipped; the reward is not normalised |
| `pretrain_texts` | PPO-ptx's pretraining batches | ptx cannot run |
| `heldout_texts` | held-out perplexity (the alignment tax) | no perplexity column |
| `gold` | the judge that plays the human: synthetic labels, gold score, win rate | no gold, win-rate or RM-vs-gold column; labels must come from a person or a file |

`gold` is a `RewardFn` (`gold(prompts, completions) -> floats`), the same interface as
any reward: a synthetic oracle compares completions by it, and evaluation reports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from llm_gym.core.reward import RewardFn

__all__ = ["Demonstration", "PromptTask", "Task"]


@dataclass(frozen=True)
class Demonstration:
    """A prompt and a good completion for it; SFT trains on ``prompt + completion``.

    The completion carries its own leading space where the text needs one, so
    ``prompt + completion`` is the full text.
    """

    prompt: str
    completion: str


@runtime_checkable
class Task(Protocol):
    """The data of an experiment: see the module docstring for what each part is used for."""

    @property
    def prompts(self) -> Sequence[str]:
        """Training prompts (at least one)."""
        ...

    @property
    def eval_prompts(self) -> Sequence[str]:
        """Held-out prompts for evaluation (may be empty)."""
        ...

    @property
    def demonstrations(self) -> Sequence[Demonstration]:
        """(prompt, good completion) pairs for SFT (may be empty)."""
        ...

    @property
    def pretrain_texts(self) -> Sequence[str]:
        """Pretraining documents, for PPO-ptx (may be empty)."""
        ...

    @property
    def heldout_texts(self) -> Sequence[str]:
        """Documents never trained on, for held-out perplexity (may be empty)."""
        ...

    @property
    def gold(self) -> RewardFn | None:
        """The judge that plays the human, or None when the task has none."""
        ...


@dataclass(frozen=True)
class PromptTask:
    """A `Task` from plain lists: prompts, and whichever optional parts you have.

    Example:
        >>> task = PromptTask(prompts=["2 + 2 =", "3 + 4 ="], gold=lambda p, c: [float(x.strip() == "4") for x in c])
        >>> len(task.prompts), task.eval_prompts, task.gold is not None
        (2, (), True)
    """

    prompts: Sequence[str]
    """Training prompts (non-empty strings, at least one)."""
    eval_prompts: Sequence[str] = ()
    """Held-out prompts; () = none (evaluation then uses the training prompts)."""
    demonstrations: Sequence[Demonstration] = ()
    """SFT data; () = none (SFT is skipped)."""
    pretrain_texts: Sequence[str] = ()
    """Pretraining documents for PPO-ptx; () = none."""
    heldout_texts: Sequence[str] = ()
    """Held-out documents for perplexity; () = none."""
    gold: RewardFn | None = field(default=None, compare=False)
    """The judge that plays the human (a `RewardFn`); None = the task has none."""

    def __post_init__(self) -> None:
        for name in ("prompts", "eval_prompts", "pretrain_texts", "heldout_texts"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise TypeError(f"PromptTask.{name} must be a list of strings, not one string; wrap it: [{name[:-1]}]")
            object.__setattr__(self, name, tuple(value))
            for i, text in enumerate(getattr(self, name)):
                if not isinstance(text, str):
                    raise TypeError(f"PromptTask.{name}[{i}] is {type(text).__name__}, not str")
        if not self.prompts:
            raise ValueError("PromptTask.prompts is empty; a task needs at least one prompt")
        for i, p in enumerate(self.prompts):
            if not p.strip():
                raise ValueError(f"PromptTask.prompts[{i}] is empty or whitespace; remove it or fill it in")
        object.__setattr__(self, "demonstrations", tuple(self.demonstrations))
        for i, d in enumerate(self.demonstrations):
            if not isinstance(d, Demonstration):
                raise TypeError(f"PromptTask.demonstrations[{i}] is {type(d).__name__}; build it as Demonstration(prompt, completion)")
        if self.gold is not None and not callable(self.gold):
            raise TypeError(f"PromptTask.gold must be a reward function (prompts, completions) -> floats, got {type(self.gold).__name__}")
