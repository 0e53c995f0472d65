"""The MLP reward learner of the control-task Christiano loop.

    RewardNet                an MLP reward r(observation, action features)
    MLPRewardLearnerConfig   how the ensemble is trained (one documented field each)
    MLPRewardLearner         the `RewardLearner` of `agents/preference_loop.py`: an ensemble of
                             `RewardNet`s fitted to segment comparisons, and the reward function
                             `llm_gym.envs.wrappers.LearnedRewardWrapper` pays the agent with

The reward model of Christiano et al. 2017 ("Deep reinforcement learning from human
preferences"): Bradley-Terry on segment return sums, an ensemble whose members each see a
bootstrap resample, disagreement across members for active query selection, output
normalised to a fixed scale. The segments and the absorbing state after a termination, which
the learned reward scores 0 (rescaled, never shifted), are `agents/segments.py`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llm_gym.agents.segments import SegmentBuffer, action_features
from llm_gym.core.preferences import Comparison, Query
from llm_gym.infra.configio import check_finite

__all__ = ["MLPRewardLearner", "MLPRewardLearnerConfig", "RewardNet"]


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
        check_finite(self)
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

