"""The control-task parts of the Christiano loop: any Stable-Baselines3 algorithm as the inner agent.

Deep RL from Human Preferences (Christiano et al. 2017) on ordinary Gymnasium control
tasks, with the same coordinator (`PreferenceLoop`) as the language-model loop. The parts:

* `LearnedRewardWrapper`: a `gymnasium.Wrapper` that pays the learned reward, keeps the
  env's own reward in ``info["true_reward"]`` (so the true return stays measurable), tracks
  both episode returns, and records what the agent did into a `SegmentBuffer`;
* `SegmentBuffer`: recent episodes, and the fixed-length segments cut from them, each
  known by a string id (``"seg-17"``) so that a segment pair fits the ordinary `Query`
  (``prompt=env_id, completions=(id1, id2)``) and `PreferenceStore`;
* `SegmentSource`: the `QuerySource`: pairs of random segments of recent behaviour;
* `segment_oracle`: a `SyntheticOracle` whose gold score is a segment's true return (the
  same noise knobs as the text oracle: Bradley-Terry temperature, flips, ties);
* `RewardNet` / `MLPRewardLearner`: an ensemble of MLPs over (observation, action), each
  trained on a bootstrap resample with the Bradley-Terry loss on segment return sums, warm
  started; it is the `RewardLearner` and also the reward function the wrapper calls;
* `SB3Agent`: the adapter that makes any SB3 algorithm (PPO, A2C, SAC, ...) an llm_gym
  `Agent` with cumulative `learn`, logging ``rollout/true_return`` next to
  ``rollout/learned_return``.

Terminations (DESIGN.md §7). CartPole pays +1 per step, so equal-length segments of an
episode that does not end have equal true return. We treat a termination as entering an
*absorbing state* that lasts forever and whose reward is 0, for both rewards:

* segments may run past the end of a terminated episode; the steps after it are absorbing
  steps (mask 0) with true reward `absorbing_reward` (0 by default) and learned reward 0;
  so a segment containing a fall has lower true return than one that does not, and
  every segment has the same length L (length leaks nothing);
* the learned reward is anchored so that the absorbing state scores exactly 0: the reward
  model scores only real steps, and its output is rescaled (divided by its RMS on recent
  steps) but never shifted. The agent's env still terminates as usual; for an RL agent
  (which bootstraps with 0 after a termination) that *is* an absorbing state of reward 0
  forever, so the agent and the reward model agree on what a termination is worth, and no
  environment steps are spent stepping an absorbing state (unlike seals' fixed-horizon
  variants, which pad the episodes themselves).

Because Bradley-Terry on equal-length segments is blind to a constant added to every
step, fixing the absorbing score at 0 is what makes "staying alive is good" learnable: it is
learnt only from comparisons between segments with different numbers of absorbing steps.
Truncated episodes (time limits) are not padded: segments cut from them stay inside them.
"""

from __future__ import annotations

import copy
import itertools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import nn

from llm_gym.agents.base import Agent, Callback
from llm_gym.infra.logger import Logger
from llm_gym.feedback.oracles import SyntheticOracle
from llm_gym.core.preferences import Comparison, Query

__all__ = [
    "LearnedRewardWrapper",
    "MLPRewardLearner",
    "MLPRewardLearnerConfig",
    "RewardNet",
    "SB3Agent",
    "Segment",
    "SegmentBuffer",
    "SegmentSource",
    "action_features",
    "segment_oracle",
]


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


# --------------------------------------------------------------------------------------
# Segments
# --------------------------------------------------------------------------------------


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
    each as its own `stream`). `cut(n, rng)` cuts `n` new segments from the most recent
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


# --------------------------------------------------------------------------------------
# Reward model
# --------------------------------------------------------------------------------------


class RewardNet(nn.Module):
    """An MLP reward r(obs, action) for flat observations and action features."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: Sequence[int] = (64, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = obs_dim + action_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        layers.append(nn.Linear(d, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Rewards of shape obs.shape[:-1]."""
        return self.mlp(torch.cat([obs, act], dim=-1)).squeeze(-1)


@dataclass(frozen=True)
class MLPRewardLearnerConfig:
    """How the reward-model ensemble is trained."""

    ensemble_size: int = 3
    """Members, each trained on its own bootstrap resample of the comparisons."""
    hidden: tuple[int, ...] = (64, 64)
    """Hidden layer widths of each member's MLP."""
    learning_rate: float = 1e-3
    """Adam learning rate (the optimiser state is kept across fits: warm start)."""
    weight_decay: float = 1e-4
    """Adam L2 penalty."""
    batch_size: int = 64
    """Comparisons per gradient step."""
    epochs: int = 4
    """Passes over the comparisons per fit (at least `min_steps` gradient steps)."""
    min_steps: int = 50
    """Gradient steps per fit at least, per member."""

    def __post_init__(self) -> None:
        for name in ("ensemble_size", "batch_size", "epochs", "min_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"MLPRewardLearnerConfig.{name} must be a positive int, got {v!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"MLPRewardLearnerConfig.learning_rate must be > 0, got {self.learning_rate!r}")


class MLPRewardLearner:
    """The `RewardLearner` for control tasks, and the learned reward function the wrapper calls.

    Trains an ensemble of `RewardNet`s with the Bradley-Terry loss on segment return sums
    (``P(a preferred to b) = sigmoid(sum_t r(a_t) - sum_t r(b_t))``, absorbing steps scoring
    0; ties are a label of 1/2). Each fit goes on from the current weights (warm start);
    ``fresh=True`` restores the initial weights first. `reward(obs, act)` is the ensemble
    mean divided by its RMS over recent real steps (no shift: the absorbing state stays 0).

    `fit` reports ``heldout_accuracy``: the accuracy, before training on them, on comparisons
    it had not seen yet (a prequential held-out score that costs no labels), and
    ``train_accuracy`` after the fit. Comparisons whose segments are no longer in the buffer
    are skipped (``skipped``).

    Args:
        buffer: where the compared segments (and recent steps, for normalisation) are.
        config: training settings.
        seed: seeds the members' initial weights; `rng` draws bootstrap resamples and batches.
    """

    def __init__(
        self, buffer: SegmentBuffer, rng: np.random.Generator, config: MLPRewardLearnerConfig | None = None, seed: int = 0
    ) -> None:
        self.buffer, self.rng = buffer, rng
        self.config = config if config is not None else MLPRewardLearnerConfig()
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.members = [RewardNet(buffer.obs_dim, buffer.action_dim, self.config.hidden) for _ in range(self.config.ensemble_size)]
        torch.random.set_rng_state(gen_state)
        self._initial = [copy.deepcopy(m.state_dict()) for m in self.members]
        self._optims = [self._optimizer(m) for m in self.members]
        self._seen: set[str] = set()
        self.scale = 1.0

    def _optimizer(self, m: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(m.parameters(), lr=self.config.learning_rate, weight_decay=self.config.weight_decay)

    # -- data
    def _tensors(self, comparisons: Sequence[Comparison]) -> tuple[torch.Tensor, ...] | None:
        obs, act, mask, target, ids = [], [], [], [], []
        for c in comparisons:
            if len(c.completions) != 2 or not all(s in self.buffer for s in c.completions):
                continue
            a, b = (self.buffer.get(s) for s in c.completions)
            obs.append(np.stack([a.obs, b.obs]))
            act.append(np.stack([a.act, b.act]))
            mask.append(np.stack([a.mask, b.mask]))
            target.append({(0, 1): 1.0, (1, 0): 0.0}.get(tuple(c.ranks), 0.5))
            ids.append(c.query_id)
        if not obs:
            return None
        t = lambda x: torch.as_tensor(np.stack(x), dtype=torch.float32)  # noqa: E731
        return t(obs), t(act), t(mask), torch.tensor(target, dtype=torch.float32), ids  # type: ignore[return-value]

    @staticmethod
    def _logits(net: RewardNet, obs: torch.Tensor, act: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """logit of P(first preferred) = R(first) - R(second), R = sum of rewards over real steps."""
        returns = (net(obs, act) * mask).sum(-1)  # (N, 2)
        return returns[:, 0] - returns[:, 1]

    @staticmethod
    def _accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
        strict = target != 0.5
        if not strict.any():
            return float("nan")
        return float(((logits[strict] > 0).float() == target[strict]).float().mean())

    # -- RewardLearner
    def fit(self, comparisons: Sequence[Comparison], fresh: bool = False) -> dict[str, float]:
        """Train every member on a bootstrap resample of all `comparisons` (warm start unless `fresh`)."""
        if fresh:
            for m, state in zip(self.members, self._initial):
                m.load_state_dict(state)
            self._optims = [self._optimizer(m) for m in self.members]
        data = self._tensors(comparisons)
        if data is None:
            return {"skipped": float(len(comparisons))}
        obs, act, mask, target, ids = data
        n = len(target)
        new = torch.tensor([q not in self._seen for q in ids])
        metrics: dict[str, float] = {"comparisons": float(n), "skipped": float(len(comparisons) - n)}
        with torch.no_grad():
            if new.any():
                logits = torch.stack([self._logits(m, obs[new], act[new], mask[new]) for m in self.members]).mean(0)
                metrics["heldout_accuracy"] = self._accuracy(logits, target[new])
        cfg = self.config
        steps = max(cfg.min_steps, cfg.epochs * -(-n // cfg.batch_size))
        losses = []
        for m, opt in zip(self.members, self._optims):
            boot = torch.as_tensor(self.rng.integers(n, size=n))
            for _ in range(steps):
                idx = boot[torch.as_tensor(self.rng.integers(n, size=min(cfg.batch_size, n)))]
                loss = F.binary_cross_entropy_with_logits(self._logits(m, obs[idx], act[idx], mask[idx]), target[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            losses.append(float(loss.detach()))
        with torch.no_grad():
            logits = torch.stack([self._logits(m, obs, act, mask) for m in self.members]).mean(0)
        metrics["train_accuracy"] = self._accuracy(logits, target)
        metrics["loss"] = float(np.mean(losses))
        self._seen.update(ids)
        self._normalise()
        return metrics

    def disagreement(self, queries: Sequence[Query]) -> np.ndarray:
        """Per query: std across members of P(first preferred); zeros for a single member."""
        if len(self.members) < 2 or not queries:
            return np.zeros(len(queries))
        data = self._tensors([Comparison(q.prompt, q.completions, (0, 1), query_id=q.query_id) for q in queries])
        if data is None or len(data[3]) != len(queries):
            raise KeyError("disagreement: some queries' segments are not in the buffer")
        obs, act, mask = data[:3]
        with torch.no_grad():
            p = torch.stack([torch.sigmoid(self._logits(m, obs, act, mask)) for m in self.members])
        return p.std(0).numpy().astype(np.float64)

    # -- the reward function
    def raw(self, obs: np.ndarray, act_features: np.ndarray) -> np.ndarray:
        """Ensemble-mean reward of (N, obs_dim) observations and (N, action_dim) action features, unscaled."""
        with torch.no_grad():
            o = torch.as_tensor(np.asarray(obs, np.float32).reshape(len(obs), -1))
            a = torch.as_tensor(np.asarray(act_features, np.float32))
            return torch.stack([m(o, a) for m in self.members]).mean(0).numpy()

    def reward(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """The learned reward the agent sees, for a batch of observations and env actions."""
        return self.raw(obs, action_features(self.buffer.action_space, actions)) * self.scale

    def _normalise(self) -> None:
        obs, act = self.buffer.recent_obs_act()
        if len(obs):
            rms = float(np.sqrt(np.mean(self.raw(obs, act) ** 2)))
            self.scale = 1.0 / max(rms, 1e-8)

    def state_dict(self) -> dict[str, Any]:
        return {"members": [m.state_dict() for m in self.members], "scale": self.scale, "seen": sorted(self._seen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for m, s in zip(self.members, state["members"]):
            m.load_state_dict(s)
        self.scale, self._seen = float(state["scale"]), set(state["seen"])


# --------------------------------------------------------------------------------------
# The reward wrapper
# --------------------------------------------------------------------------------------


class LearnedRewardWrapper(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Pays a learned reward; keeps the env's own reward in ``info["true_reward"]``.

    Each step calls ``reward_fn(obs[None], action[None])`` on the observation the action was
    taken in (`MLPRewardLearner.reward`); with ``reward_fn=None`` the env's reward passes
    through unchanged (the true-reward baseline, measured the same way). Every step is
    recorded into `buffer` (if given) so segments are cut from what the agent actually did.
    Terminations are left as they are: a termination is the absorbing state of reward 0
    (see the module docstring). Finished episodes' true and learned returns are kept until
    `pop_episode_stats` takes them.
    """

    _streams = itertools.count()

    def __init__(
        self,
        env: gym.Env,
        reward_fn: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
        buffer: SegmentBuffer | None = None,
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
            self.buffer._open.pop(self.stream, None)  # an unfinished episode cut short by reset
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


# --------------------------------------------------------------------------------------
# The SB3 adapter
# --------------------------------------------------------------------------------------


class SB3Agent(Agent):
    """Any Stable-Baselines3 algorithm as an llm_gym `Agent` (the inner agent of `PreferenceLoop`).

    Build the SB3 model on envs wrapped in `LearnedRewardWrapper`
    (``PPO("MlpPolicy", DummyVecEnv([lambda: LearnedRewardWrapper(gym.make(id), learner.reward, buffer)]))``).
    `learn(total_steps)` is cumulative (it trains up to `total_steps` env steps in all; SB3
    may overshoot to finish a rollout). After each `learn` it logs the mean true and learned
    return of the episodes finished meanwhile (``rollout/true_return``,
    ``rollout/learned_return``, ``rollout/episodes``) and dumps at the step count.

    Off-policy algorithms (SAC, TD3, DQN) keep old rewards in their replay buffer; with
    `relabel` (the learned reward function) every stored reward is recomputed with the
    current reward model before each `learn`, so the critic never trains on stale rewards.

    SB3 schedules (learning rate, clip range) run on the progress of one `model.learn` call;
    in chunks they would restart every chunk. With `planned_steps` (the run's total) they run
    over the whole run instead: progress is ``1 - num_timesteps / planned_steps``.
    """

    def __init__(
        self,
        model: Any,
        logger: Logger | None = None,
        relabel: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
        planned_steps: int | None = None,
    ) -> None:
        self.model = model
        self.logger = logger if logger is not None else Logger(None)
        self.relabel = relabel
        self.planned_steps = planned_steps

    @property
    def num_timesteps(self) -> int:
        return int(self.model.num_timesteps)

    def learn(self, total_steps: int, callback: Callback | None = None) -> SB3Agent:
        if not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
        remaining = total_steps - self.num_timesteps
        if remaining > 0:
            if self.relabel is not None:
                self._relabel()
            sb3_callback = None
            if callback is not None:
                from stable_baselines3.common.callbacks import BaseCallback

                agent = self

                class _Stop(BaseCallback):
                    def _on_step(self) -> bool:
                        return callback(agent, agent.num_timesteps) is not False

                sb3_callback = _Stop()
            if self.planned_steps is not None:
                planned, model = self.planned_steps, self.model

                def progress(num_timesteps: int, total_timesteps: int) -> None:
                    model._current_progress_remaining = max(0.0, 1.0 - num_timesteps / planned)

                model._update_current_progress_remaining = progress  # instance attribute, removed below (never saved)
            try:
                self.model.learn(remaining, reset_num_timesteps=False, callback=sb3_callback)
            finally:
                self.model.__dict__.pop("_update_current_progress_remaining", None)
        self._log()
        return self

    def _relabel(self) -> None:
        rb = getattr(self.model, "replay_buffer", None)
        if rb is None:
            return
        n = rb.buffer_size if rb.full else rb.pos
        if n == 0:
            return
        obs = rb.observations[:n].reshape(n * rb.n_envs, -1)
        actions = rb.actions[:n].reshape(n * rb.n_envs, *rb.action_space.shape) if rb.action_space.shape else rb.actions[:n].reshape(-1)
        if isinstance(self.model.action_space, spaces.Box):
            actions = self.model.policy.unscale_action(actions)  # the replay buffer stores actions scaled to [-1, 1]
        rb.rewards[:n] = np.asarray(self.relabel(obs, actions), dtype=np.float32).reshape(n, rb.n_envs)

    def episode_stats(self) -> tuple[list[float], list[float]]:
        """(true, learned) returns of the episodes finished since the last call, over all envs."""
        env = self.model.get_env()
        true, learned = [], []
        for t, lr in env.env_method("pop_episode_stats"):
            true += t
            learned += lr
        return true, learned

    def _log(self) -> None:
        true, learned = self.episode_stats()
        if true:
            self.logger.record("rollout/true_return", float(np.mean(true)))
            self.logger.record("rollout/learned_return", float(np.mean(learned)))
            self.logger.record("rollout/episodes", len(true))

    def act(self, observations: Sequence[Any]) -> list[Any]:
        """Deterministic actions for a batch of observations."""
        actions, _ = self.model.predict(np.asarray(observations), deterministic=True)
        return list(actions)

    def save(self, path: str | PathLike[str]) -> None:
        """Save the SB3 model as ``path/model.zip`` (SB3's own format)."""
        Path(path).mkdir(parents=True, exist_ok=True)
        self.model.save(Path(path) / "model.zip")

    @classmethod
    def load(cls, path: str | PathLike[str], **components: Any) -> SB3Agent:
        """Load with ``algorithm=PPO`` (the SB3 class), and optionally ``env``, ``logger``, ``relabel``."""
        algorithm = components.pop("algorithm", None)
        if algorithm is None:
            raise TypeError("SB3Agent.load needs algorithm=<the SB3 class>, e.g. SB3Agent.load(path, algorithm=PPO, env=env)")
        env = components.pop("env", None)
        model = algorithm.load(Path(path) / "model.zip", env=env)
        return cls(model, **components)
