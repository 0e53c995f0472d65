"""Reward wrappers: swap a learned reward into any Gymnasium env, keeping the env's own reward.

    LearnedRewardWrapper   a `gymnasium.Wrapper` that pays ``reward_fn(obs, action)`` instead of
                           the env's reward, keeps the env's reward in ``info["true_reward"]``,
                           tracks both episode returns, and can record every step
    StepRewardFn           the learned reward's shape: a batch of observations and actions in,
                           one reward each out (`llm_gym.agents.mlp_reward.MLPRewardLearner.reward`)
    StepRecorder           where steps are recorded (`llm_gym.agents.segments.SegmentBuffer`)

In the Christiano et al. 2017 loop ("Deep reinforcement learning from human preferences")
it sits between the agent and the env: the agent learns from the learned reward while the
true return stays measurable. It is an ordinary environment wrapper: any agent can train
behind it (`llm_gym.agents.sb3.SB3Agent` is the one this project uses).

    >>> import gymnasium as gym
    >>> env = LearnedRewardWrapper(gym.make("CartPole-v1"), lambda obs, actions: -obs[:, 0])
    >>> obs, _ = env.reset(seed=0)
    >>> _, reward, terminated, truncated, info = env.step(0)
    >>> reward == -float(obs[0]), info["true_reward"]
    (True, 1.0)
"""

from __future__ import annotations

import itertools
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

__all__ = ["LearnedRewardWrapper", "StepRecorder", "StepRewardFn"]


class StepRewardFn(Protocol):
    """A learned reward: (N, ...) observations and (N, ...) env actions -> (N,) rewards."""

    def __call__(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray: ...


class StepRecorder(Protocol):
    """Takes the steps of one or more envs, each env as its own `stream`."""

    def record(self, stream: int, obs: Any, action: Any, true_reward: float, terminated: bool, truncated: bool) -> None:
        """One step: the observation the action was taken in, the action, the env's reward."""

    def discard(self, stream: int) -> None:
        """Forget `stream`'s unfinished episode (the env was reset before it ended)."""


class LearnedRewardWrapper(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Pays a learned reward; keeps the env's own reward in ``info["true_reward"]``.

    Each step calls ``reward_fn(obs[None], action[None])`` on the observation the action was
    taken in (e.g. `MLPRewardLearner.reward`); with ``reward_fn=None`` the env's reward passes
    through unchanged (the true-reward baseline, measured the same way). Every step is
    recorded into `buffer` (if given; a `SegmentBuffer` in the Christiano loop) so segments
    are cut from what the agent actually did. Terminations are left as they are: for the
    reward model a termination is an absorbing state of reward 0 (`agents/segments.py`).
    Finished episodes' true and learned returns are kept until `pop_episode_stats` takes them.
    """

    _streams = itertools.count()

    def __init__(
        self,
        env: gym.Env,
        reward_fn: StepRewardFn | None = None,
        buffer: StepRecorder | None = None,
    ) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, reward_fn=reward_fn, buffer=buffer)
        gym.Wrapper.__init__(self, env)
        self.reward_fn, self.buffer = reward_fn, buffer
        self.stream = next(LearnedRewardWrapper._streams)
        self._obs: Any = None
        self._true = self._learned = 0.0
        self.episode_true_returns: list[float] = []
        self.episode_learned_returns: list[float] = []

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._obs, self._true, self._learned = obs, 0.0, 0.0
        if self.buffer is not None:
            self.buffer.discard(self.stream)  # an unfinished episode cut short by reset
        return obs, info

    def step(self, action: Any):
        obs, true_reward, terminated, truncated, info = self.env.step(action)
        if self.reward_fn is None:
            reward = float(true_reward)
        else:
            reward = float(np.asarray(self.reward_fn(np.asarray(self._obs)[None], np.asarray(action)[None])).reshape(-1)[0])
        if self.buffer is not None:
            self.buffer.record(self.stream, self._obs, action, float(true_reward), terminated, truncated)
        info = dict(info, true_reward=float(true_reward))
        self._true += float(true_reward)
        self._learned += reward
        if terminated or truncated:
            self.episode_true_returns.append(self._true)
            self.episode_learned_returns.append(self._learned)
        self._obs = obs
        return obs, reward, terminated, truncated, info

    def pop_episode_stats(self) -> tuple[list[float], list[float]]:
        """(true returns, learned returns) of the episodes finished since the last call."""
        out = (self.episode_true_returns, self.episode_learned_returns)
        self.episode_true_returns, self.episode_learned_returns = [], []
        return out

