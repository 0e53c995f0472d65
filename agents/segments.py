"""Trajectory segments: what the control-task Christiano loop compares, and the oracle that compares them.

    action_features   actions as float features: one-hot for `Discrete`, flattened for `Box`
    Segment           L consecutive steps of one episode; steps after a termination are absorbing
    SegmentBuffer     recent episodes (recorded step by step by `llm_gym.envs.wrappers.LearnedRewardWrapper`)
                      and the fixed-length segments cut from them, each known by a string id
                      (``"seg-17"``), so that a pair fits the ordinary `Query`
                      (``prompt=env_id, completions=(id1, id2)``) and `PreferenceStore`
    SegmentSource     the `QuerySource`: pairs of random segments of recent behaviour
    segment_oracle    a `SyntheticOracle` whose gold score is a segment's true return

The learner that fits these comparisons is `agents/mlp_reward.py`; the agent that produces
the episodes is `agents/sb3.py`; the coordinator is `agents/preference_loop.py`.

Terminations (Christiano et al. 2017, "Deep reinforcement learning from human preferences";
the experiment's account is `experiments/christiano_control.md`, "Terminations").
CartPole pays +1 per step, so equal-length segments of an episode that does not end have
equal true return. We treat a termination as entering an *absorbing state* that lasts
forever and whose reward is 0, for both rewards:

* segments may run past the end of a terminated episode; the steps after it are absorbing
  steps (mask 0) with true reward `absorbing_reward` (0 by default) and learned reward 0;
  so a segment containing a fall has lower true return than one that does not, and
  every segment has the same length L (length leaks nothing);
* the learned reward is anchored so that the absorbing state scores exactly 0: the reward
  model scores only real steps, and its output is rescaled (divided by its RMS on recent
  steps) but never shifted (`MLPRewardLearner`). The agent's env still terminates as usual;
  for an RL agent (which bootstraps with 0 after a termination) that *is* an absorbing state
  of reward 0 forever, so the agent and the reward model agree on what a termination is
  worth, and no environment steps are spent stepping an absorbing state (unlike seals'
  fixed-horizon variants, which pad the episodes themselves).

Because Bradley-Terry on equal-length segments is blind to a constant added to every
step, fixing the absorbing score at 0 is what makes "staying alive is good" learnable: it is
learnt only from comparisons between segments with different numbers of absorbing steps.
Truncated episodes (time limits) are not padded: segments cut from them stay inside them.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence
from os import PathLike
from typing import Any, NamedTuple

import numpy as np
from gymnasium import spaces

from llm_gym.core.preferences import Query
from llm_gym.feedback.oracles import SyntheticOracle

__all__ = ["Segment", "SegmentBuffer", "SegmentSource", "action_features", "segment_oracle"]


def action_features(space: spaces.Space, actions: np.ndarray) -> np.ndarray:
    """Actions as float features: one-hot for `Discrete`, flattened for `Box`; shape (N, action_dim)."""
    actions = np.asarray(actions)
    if isinstance(space, spaces.Discrete):
        a = actions.reshape(-1).astype(np.int64) - int(space.start)
        return np.eye(int(space.n), dtype=np.float32)[a]
    if isinstance(space, spaces.Box):
        return actions.reshape(len(actions) if actions.ndim > 1 else -1, -1).astype(np.float32)
    raise TypeError(f"action space {space} is not supported: use a Discrete or Box action space")


def _action_dim(space: spaces.Space) -> int:
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    if isinstance(space, spaces.Box):
        return int(np.prod(space.shape))
    raise TypeError(f"action space {space} is not supported: use a Discrete or Box action space")


class Segment(NamedTuple):
    """L consecutive steps of one episode; steps after a termination are absorbing (mask 0)."""

    obs: np.ndarray  # (L, obs_dim) float32; zeros on absorbing steps
    act: np.ndarray  # (L, action_dim) float32 action features; zeros on absorbing steps
    true_reward: np.ndarray  # (L,) the env's reward; `absorbing_reward` on absorbing steps
    mask: np.ndarray  # (L,) 1.0 on real steps, 0.0 on absorbing steps

    @property
    def true_return(self) -> float:
        return float(self.true_reward.sum())


class SegmentBuffer:
    """Recent episodes of the agent, and the fixed-length segments cut from them, by id.

    Wrappers `record` every step (several wrappers, one per vectorised env, share one buffer,
    each as its own `stream`, and `discard` a stream's unfinished episode when they reset: the
    `llm_gym.envs.wrappers.StepRecorder` protocol). `cut(n, rng)` cuts `n` new segments from the most recent
    finished episodes and gives their ids; `get(id)` returns one. Both are bounded: the last
    `max_episodes` episodes and the last `max_segments` segments are kept (a query whose
    segments were dropped can no longer be trained on; the learner skips it and counts it).

    Args:
        observation_space, action_space: the env's spaces (flat Box observations).
        segment_length: L, steps per segment.
        absorbing_reward: true reward of an absorbing step (after a termination); 0 for
            CartPole, whose +1 per step is "being alive".
        max_episodes: finished episodes kept to cut segments from.
        max_segments: segments kept by id.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        segment_length: int = 50,
        absorbing_reward: float = 0.0,
        max_episodes: int = 200,
        max_segments: int = 20_000,
    ) -> None:
        if not isinstance(observation_space, spaces.Box):
            raise TypeError(f"SegmentBuffer needs a Box observation space, got {observation_space}")
        if not isinstance(segment_length, int) or segment_length < 1:
            raise ValueError(f"segment_length must be a positive int, got {segment_length!r}")
        self.observation_space, self.action_space = observation_space, action_space
        self.obs_dim = int(np.prod(observation_space.shape))
        self.action_dim = _action_dim(action_space)
        self.segment_length = segment_length
        self.absorbing_reward = float(absorbing_reward)
        self.max_segments = max_segments
        self.episodes: deque[tuple[np.ndarray, np.ndarray, np.ndarray, bool]] = deque(maxlen=max_episodes)
        self._open: dict[int, tuple[list, list, list]] = {}
        self._segments: dict[str, Segment] = {}
        self._counter = itertools.count()

    # -- recording
    def record(self, stream: int, obs: np.ndarray, action: Any, true_reward: float, terminated: bool, truncated: bool) -> None:
        """One step of stream `stream`: the observation the action was taken in, the action, its true reward."""
        o, a, r = self._open.setdefault(stream, ([], [], []))
        o.append(np.asarray(obs, dtype=np.float32).reshape(-1))
        a.append(action_features(self.action_space, np.asarray(action)[None])[0])
        r.append(float(true_reward))
        if terminated or truncated:
            self.episodes.append((np.stack(o), np.stack(a), np.asarray(r, dtype=np.float32), bool(terminated)))
            del self._open[stream]

    def discard(self, stream: int) -> None:
        """Forget stream `stream`'s unfinished episode (a reset cut it short); nothing if it has none."""
        self._open.pop(stream, None)

    def recent_obs_act(self, max_steps: int = 5000) -> tuple[np.ndarray, np.ndarray]:
        """Observations and action features of the most recent real steps (for reward normalisation)."""
        obs, act, n = [], [], 0
        for o, a, _, _ in reversed(self.episodes):
            obs.append(o)
            act.append(a)
            n += len(o)
            if n >= max_steps:
                break
        if not obs:
            return np.zeros((0, self.obs_dim), np.float32), np.zeros((0, self.action_dim), np.float32)
        return np.concatenate(obs), np.concatenate(act)

    # -- segments
    def cut(self, n: int, rng: np.random.Generator, recent: int = 50) -> list[str]:
        """Cut `n` segments from the `recent` latest finished episodes (uniformly); return their ids.

        A segment starts at a uniformly random step of its episode; from a terminated episode
        it may run past the end (the rest is absorbing), from a truncated one it must fit in it
        (episodes shorter than L are then skipped).
        """
        L = self.segment_length
        pool = [e for e in list(self.episodes)[-recent:] if e[3] or len(e[0]) >= L]
        if not pool:
            return []
        ids = []
        for i in rng.integers(len(pool), size=n):
            o, a, r, terminated = pool[i]
            T = len(o)
            start = int(rng.integers(T if terminated else T - L + 1))
            k = min(L, T - start)  # real steps in the segment
            seg = Segment(
                obs=np.zeros((L, self.obs_dim), np.float32),
                act=np.zeros((L, self.action_dim), np.float32),
                true_reward=np.full(L, self.absorbing_reward, np.float32),
                mask=np.zeros(L, np.float32),
            )
            seg.obs[:k], seg.act[:k], seg.true_reward[:k], seg.mask[:k] = o[start : start + k], a[start : start + k], r[start : start + k], 1.0
            ids.append(self.add(seg))
        return ids

    def add(self, segment: Segment) -> str:
        """Keep `segment` under a new id and return the id (the oldest segment goes beyond `max_segments`)."""
        sid = f"seg-{next(self._counter)}"
        self._segments[sid] = segment
        while len(self._segments) > self.max_segments:
            del self._segments[next(iter(self._segments))]
        return sid

    def get(self, segment_id: str) -> Segment:
        """The segment with this id (`KeyError` naming the id if it was never cut or was dropped)."""
        try:
            return self._segments[segment_id]
        except KeyError:
            raise KeyError(f"no segment {segment_id!r} in the buffer (never cut, or dropped beyond max_segments)") from None

    def __contains__(self, segment_id: object) -> bool:
        return segment_id in self._segments

    def __len__(self) -> int:
        return len(self._segments)

    def save(self, path: str | PathLike[str]) -> None:
        """Write the segments (not the episodes) to an .npz file."""
        ids = list(self._segments)
        stack = lambda f: np.stack([getattr(self._segments[i], f) for i in ids]) if ids else np.zeros((0,))  # noqa: E731
        np.savez_compressed(path, ids=np.asarray(ids), counter=next(self._counter), **{f: stack(f) for f in Segment._fields})

    def load(self, path: str | PathLike[str]) -> None:
        """Add the segments saved with `save` (ids kept; new ids continue after them)."""
        data = np.load(path)
        for j, sid in enumerate(data["ids"].tolist()):
            self._segments[sid] = Segment(*(data[f][j] for f in Segment._fields))
        self._counter = itertools.count(max(int(data["counter"]), next(self._counter)))


class SegmentSource:
    """The `QuerySource` for control tasks: `n` pairs of random segments of recent behaviour."""

    def __init__(self, buffer: SegmentBuffer, env_id: str, rng: np.random.Generator, recent: int = 50) -> None:
        self.buffer, self.env_id, self.rng, self.recent = buffer, env_id, rng, recent

    def propose(self, n: int) -> list[Query]:
        ids = self.buffer.cut(2 * n, self.rng, self.recent)
        return [Query(self.env_id, (ids[2 * i], ids[2 * i + 1])) for i in range(len(ids) // 2)]


def segment_oracle(
    buffer: SegmentBuffer,
    rng: np.random.Generator,
    temperature: float = 0.0,
    flip_prob: float = 0.0,
    tie_margin: float = 0.0,
    name: str = "synthetic-return",
) -> SyntheticOracle:
    """A `SyntheticOracle` comparing segments by their true return (Christiano's synthetic labels).

    The noise knobs are the text oracle's: Bradley-Terry `temperature` in return units,
    `flip_prob` (0.05 = Christiano's 10% random answers), `tie_margin`.
    """

    def true_return(prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        return np.array([buffer.get(c).true_return for c in completions], dtype=np.float64)

    return SyntheticOracle(true_return, rng=rng, temperature=temperature, flip_prob=flip_prob, tie_margin=tie_margin, name=name)

