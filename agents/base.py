"""The one agent interface every llm_gym algorithm implements (PPO, the preference loop, SB3 adapters).

Modelled on Stable-Baselines3's `BaseAlgorithm`, with the habits its users bring along:

* `learn(total_steps, callback=...)` runs the training loop and returns `self`. The callback is a
  plain `callback(agent, step) -> bool`, an SB3 `BaseCallback`, or a list of them (SB3 chains a
  list in a `CallbackList`); `as_callback` turns each into a `BaseCallback` and
  `Agent._training_callback` runs SB3's protocol around the loop (see "Callbacks" below). The
  callback's `model` is the agent, so `self.model.num_timesteps`, `self.model.get_env()`
  (`training_env`) and, where the agent has one, `self.logger` work.
* `act(observations, deterministic=False)` answers a batch; `predict(observation, state=None,
  episode_start=None, deterministic=False)` is SB3's name for it and returns `(actions, None)`.
  Both take a batch: one string is refused (wrap it in a list), where SB3 would take one observation.
* Agents take their randomness as `rng=` (a numpy Generator) or `seed=` (an int; `resolve_rng`).
* `save`/`load` round-trip the agent through a folder.

Callbacks. SB3's `OnPolicyAlgorithm.collect_rollouts` calls `on_rollout_start()`, then per env
step (one action in each of `num_envs` envs, `num_timesteps += num_envs`) `update_locals(locals())`
and `on_step()`, then `update_locals` and `on_rollout_end()`, and trains after that. Our episodes
are one step long (a prompt, a completion, a score) and an iteration is one batch of them, so
the mapping is, per iteration (one update):

    on_rollout_start() -> collect the batch -> update -> num_timesteps += batch ->
    update_locals(dones, infos, rewards, actions, ...) -> on_step() -> on_rollout_end()

* `on_step()` fires once per iteration, as SB3's fires once per batched env step; it comes after the
  update rather than before it, so that a callback that stops training does not throw away a batch
  already generated and scored, and one that saves (`CheckpointCallback`) saves a model that has
  trained on every step `num_timesteps` counts. False stops `learn` at once and, as in SB3, without
  `on_rollout_end`.
* `update_locals` gives SB3's names where they mean something: `dones` (all True: every episode
  ends after its one step, so `StopTrainingOnMaxEpisodes` counts completions), `infos` (one dict
  per episode, `vector_infos`), and where the agent has them `rewards` and `actions`.
* `training_env.num_envs` is the batch: `ProgressBarCallback` advances by it on each `on_step`, and
  `StopTrainingOnMaxEpisodes(max_episodes=N)` stops after `N * num_envs` episodes. An agent with
  no environment (DPO, best-of-N) hands callbacks a `StandInEnv` that has only `num_envs`.

Each agent's `learn` docstring says what its iteration is (DPO: one batch of comparisons;
PreferenceLoop: the inner agent's own iterations; best-of-N: none, so only `on_training_start`
and `on_training_end` fire).
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from os import PathLike
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from llm_gym.infra.seeding import resolve_rng

if TYPE_CHECKING:
    from stable_baselines3.common.callbacks import BaseCallback

__all__ = ["Agent", "Callback", "CallbackLike", "StandInEnv", "as_callback", "check_batch", "resolve_rng", "sample_actions", "vector_infos"]

Callback = Callable[["Agent", int], bool]
"""`callback(agent, step) -> bool`, called after each update; returning False stops `learn`."""

CallbackLike = Union[Callback, "BaseCallback", Sequence[Union[Callback, "BaseCallback"]], None]
"""What `learn(callback=...)` accepts: a plain `Callback`, an SB3 `BaseCallback`, a list of either, or None."""


@functools.cache
def _function_callback_type() -> type[BaseCallback]:
    """`FunctionCallback`, made on first use so that importing llm_gym does not import Stable-Baselines3."""
    from stable_baselines3.common.callbacks import BaseCallback

    class FunctionCallback(BaseCallback):
        """A plain `callback(agent, step) -> bool` as an SB3 callback: `on_step` calls it with the agent's step count.

        Only an explicit False stops training (None, the result of a function that returns nothing, goes on),
        as `learn` has always read a plain callback.
        """

        def __init__(self, fn: Callback, agent: Agent) -> None:
            super().__init__()
            self.fn, self.agent = fn, agent

        def _on_step(self) -> bool:
            return self.fn(self.agent, self.agent.num_timesteps) is not False

    return FunctionCallback


def as_callback(callback: CallbackLike, agent: Agent) -> BaseCallback:
    """`callback` as one SB3 `BaseCallback`, the form every `learn` drives.

    None becomes an empty `CallbackList`; a `BaseCallback` is returned as it is; a plain
    `callback(agent, step)` is wrapped so that it is called with `agent` and `agent.num_timesteps`;
    a list (or tuple) becomes a `CallbackList` of its items, each converted the same way.
    """
    from stable_baselines3.common.callbacks import BaseCallback, CallbackList

    if callback is None:
        return CallbackList([])
    if isinstance(callback, BaseCallback):
        return callback
    if isinstance(callback, (list, tuple)):
        return CallbackList([as_callback(c, agent) for c in callback])
    if callable(callback):
        return _function_callback_type()(callback, agent)
    raise TypeError(f"callback must be a function callback(agent, step) -> bool, a stable_baselines3 BaseCallback, "
                    f"or a list of them; got {type(callback).__name__}")


class StandInEnv:
    """What an agent that trains without an environment hands SB3 callbacks as `training_env`: only `num_envs`.

    SB3 callbacks read `training_env.num_envs` (`ProgressBarCallback` advances by it per `on_step`,
    `StopTrainingOnMaxEpisodes` multiplies `max_episodes` by it) and fail when `get_env()` is None.
    DPO's stand-in counts the comparisons of a step, best-of-N's is 1 (it never steps). Nothing can
    be reset or stepped through it.
    """

    def __init__(self, num_envs: Callable[[], int], what: str) -> None:
        self._num_envs, self.what = num_envs, what

    @property
    def num_envs(self) -> int:
        """The number of one-step episodes in a step (read when asked: DPO's last batch of an epoch may be shorter)."""
        return int(self._num_envs())

    def __repr__(self) -> str:
        return f"StandInEnv({self.what}, num_envs={self.num_envs})"


def vector_infos(info: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """A Gymnasium vector env's `info` (a dict of per-env arrays) as SB3's `infos`: a list of `n` dicts, one per env.

    An array of length `n` is split by env, following Gymnasium's `_key` masks (env i gets `key`
    only where `info["_key"][i]`); anything else (a scalar, another length) goes to every env as it is.
    """
    infos: list[dict[str, Any]] = [{} for _ in range(n)]
    for key, value in info.items():
        if key.startswith("_") and key[1:] in info:
            continue  # Gymnasium's mask of `key`, applied below
        mask = info.get(f"_{key}")
        per_env = isinstance(value, (np.ndarray, list, tuple)) and len(value) == n
        for i in range(n):
            if per_env:
                if mask is None or mask[i]:
                    infos[i][key] = value[i]
            else:
                infos[i][key] = value
    return infos


def sample_actions(policy: Any, sampling: Any, rng: np.random.Generator, observations: Sequence[str],
                   deterministic: bool) -> list[str]:
    """`act` for an agent that answers with its policy: one completion per prompt with `sampling` (greedy when
    `deterministic`), seeded from `rng`. The seed is drawn either way, so `deterministic` does not shift the rng
    stream."""
    seed = int(rng.integers(2**63 - 1))
    return policy.sample(list(observations), sampling.greedy() if deterministic else sampling, seed=seed).completions


def check_batch(observations: Any) -> None:
    """Refuse one prompt passed where a batch is expected (a string is a sequence: it would be read as characters)."""
    if isinstance(observations, (str, bytes)):
        raise TypeError("act and predict take a batch of observations (a list of prompts), not one string; wrap it: "
                        "agent.act([prompt])")


class Agent(ABC):
    """Base class of llm_gym agents."""

    num_timesteps: int = 0
    """Environment steps (completions, comparisons) trained on so far; SB3 callbacks read it."""

    @abstractmethod
    def learn(self, total_steps: int, callback: CallbackLike = None) -> Agent:
        """Train for `total_steps` environment steps (completions, for LM agents); return `self`.

        `callback` is a plain `callback(agent, step) -> bool`, an SB3 `BaseCallback` or a list of
        them (see the module docstring); it is told after each update and stops `learn` by returning False.
        """

    def act(self, observations: Sequence[Any], deterministic: bool = False) -> list[Any]:
        """Answer a batch of observations (prompts, for LM agents): one action (completion) each.

        `deterministic=True` asks for the most likely action: greedy decoding for the LM agents
        that sample (top_k=1), the policy's mode for SB3 algorithms; an agent that has no such
        action raises `ValueError` saying so rather than ignoring the flag.
        """
        check_batch(observations)
        return self._act(observations, deterministic)

    @abstractmethod
    def _act(self, observations: Sequence[Any], deterministic: bool) -> list[Any]:
        """`act` after its checks: what each agent implements."""

    def predict(
        self,
        observation: Sequence[Any],
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = False,
    ) -> tuple[Any, Any]:
        """Stable-Baselines3's name for `act`: `(actions, None)` for a batch of observations.

        Unlike SB3's `predict`, which also takes one observation, this takes only a batch: a single
        string is refused with a `TypeError` (a string is a sequence, and would be read as a batch
        of characters); wrap it in a list, `predict([prompt])`, and take `actions[0]`.
        `state` and `episode_start` are ignored, as SB3's non-recurrent policies ignore them: these
        agents keep no state between calls. `deterministic` is `act`'s.
        """
        return self.act(observation, deterministic=deterministic), None

    def get_env(self) -> Any:
        """The environment the agent trains on (SB3 callbacks read it as `training_env`); None when it has none.

        An agent that trains without an environment returns a `StandInEnv` instead of None, so
        that callbacks reading `training_env.num_envs` work.
        """
        return None

    @contextmanager
    def _training_callback(self, callback: CallbackLike, total_steps: int) -> Iterator[BaseCallback]:
        """SB3's callback protocol around a `learn` loop (see the module docstring for the per-iteration part).

        `init_callback(self)` and `on_training_start` (whose locals hold `self` and `total_timesteps`)
        come first; `on_training_end` follows when the loop ends or a callback stops it (not when it
        raises, as in SB3). The loop brackets each iteration with `on_rollout_start()` and
        `_end_of_step`.
        """
        cb = as_callback(callback, self)
        cb.init_callback(self)  # type: ignore[arg-type]  # an llm_gym agent stands in for SB3's BaseAlgorithm
        cb.on_training_start({"self": self, "total_timesteps": total_steps}, {})
        yield cb
        cb.on_training_end()

    @staticmethod
    def _end_of_step(cb: BaseCallback, locals_: dict[str, Any]) -> bool:
        """The end of an iteration for the callback: `update_locals(locals_)`, `on_step()`, then, unless it stopped
        training, `on_rollout_end()`; returns `on_step`'s answer (False: stop).

        `locals_` holds SB3's names (`dones`, `infos`, ...); `num_timesteps` must already count the iteration.
        """
        cb.update_locals(locals_)
        if not cb.on_step():
            return False  # as SB3's collect_rollouts: a stop skips on_rollout_end
        cb.on_rollout_end()
        return True

    @abstractmethod
    def save(self, path: str | PathLike[str]) -> None:
        """Write everything needed to resume into the folder `path`."""

    @classmethod
    @abstractmethod
    def load(cls, path: str | PathLike[str], **components: Any) -> Agent:
        """Restore an agent saved with `save`; components that are not saved (env, logger) are passed in."""
