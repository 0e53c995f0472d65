"""The one agent interface every llm_gym algorithm implements (PPO, the preference loop, SB3 adapters).

Modelled on Stable-Baselines3's `BaseAlgorithm`: `learn` runs the training loop and
returns `self`; a callback can stop it; `act` answers observations; `save`/`load`
round-trip the agent through a folder.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from os import PathLike
from typing import Any

__all__ = ["Agent", "Callback"]

Callback = Callable[["Agent", int], bool]
"""`callback(agent, step) -> bool`, called after each update; returning False stops `learn`."""


class Agent(ABC):
    """Base class of llm_gym agents."""

    @abstractmethod
    def learn(self, total_steps: int, callback: Callback | None = None) -> Agent:
        """Train for `total_steps` environment steps (completions, for LM agents); return `self`."""

    @abstractmethod
    def act(self, observations: Sequence[Any]) -> list[Any]:
        """Answer a batch of observations (prompts, for LM agents)."""

    @abstractmethod
    def save(self, path: str | PathLike[str]) -> None:
        """Write everything needed to resume into the folder `path`."""

    @classmethod
    @abstractmethod
    def load(cls, path: str | PathLike[str], **components: Any) -> Agent:
        """Restore an agent saved with `save`; components that are not saved (env, logger) are passed in."""
