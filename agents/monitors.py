"""Health checks any agent can run each iteration: a negative or exploding KL, and over-optimisation.

* *Negative KL.* The single-sample estimate `log pi - log pi_ref` averages to KL >= 0 only in
  expectation; a batch mean significantly below zero (beyond 3 standard errors) means the
  samples did not come from the distribution the log-probs describe (top-k/top-p, a minimum
  length or EOS suppression when sampling but not when scoring: `llm_gym/models/policy.py`).
* *Exploding KL.* A mean KL per completion above `kl_explosion` nats: the policy runs away.
* *Over-optimisation* (Gao et al. 2022; Stiennon et al. 2020): the reward-model score rises
  while the gold score falls, for `patience` consecutive iterations, comparing the means of
  the last two windows of `window` iterations; a trend counts only beyond two standard
  errors. A flipped reward sign (Ziegler et al. 2019's bug) makes exactly this pattern.

The monitor keeps its histories in `state_dict()`, so a resumed run warns as an
uninterrupted one would.
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from typing import Any

import numpy as np

__all__ = ["HealthMonitor", "KLWarning", "OverOptimizationWarning"]


class OverOptimizationWarning(UserWarning):
    """The reward-model score rises while the gold score falls: the policy is gaming the reward."""


class KLWarning(UserWarning):
    """The measured KL to the reference is negative (samples and log-probs disagree) or exploding."""


def _clear_change(before: np.ndarray, after: np.ndarray) -> int:
    """+1 / -1 when `after`'s mean is clearly above / below `before`'s (beyond 2 standard errors), else 0."""
    diff = float(np.mean(after) - np.mean(before))
    se = math.sqrt(np.var(before, ddof=1) / len(before) + np.var(after, ddof=1) / len(after))
    return int(np.sign(diff)) if abs(diff) > 2 * se else 0


class HealthMonitor:
    """Warns (`KLWarning`, `OverOptimizationWarning`) when an iteration's figures look wrong; see the module docstring.

    Args:
        kl_explosion: warn when the mean KL per completion exceeds this many nats.
        window: iterations per window when comparing the RM and gold trends (>= 2).
        patience: consecutive iterations of RM-up / gold-down before warning.
    """

    def __init__(self, kl_explosion: float = 50.0, window: int = 5, patience: int = 3) -> None:
        if window < 2:
            raise ValueError(f"window must be >= 2 (a trend needs a spread), got {window}")
        self.kl_explosion, self.window, self.patience = kl_explosion, window, patience
        self.rm_history: deque[float] = deque(maxlen=2 * window)
        self.gold_history: deque[float] = deque(maxlen=2 * window)
        self.streak = 0

    def check(self, iteration: int, kl_per_completion: np.ndarray | Any, rm_score: float, gold: float | None) -> None:
        """Look at one iteration: the KL of each completion, the mean reward-model score and mean gold score (if known)."""
        kl = np.asarray(kl_per_completion, dtype=np.float64)
        mean_kl = float(kl.mean())
        sem = float(kl.std(ddof=1)) / math.sqrt(len(kl)) if len(kl) > 1 else 0.0
        if mean_kl + 3 * sem < 0:
            warnings.warn(
                f"mean KL to the reference is negative ({mean_kl:.4f} +- {sem:.4f}) at iteration {iteration}: the "
                "samples do not come from the distribution the log-probs describe (top-k/top-p, a minimum length or "
                "EOS suppression applied when sampling but not when scoring; see llm_gym/models/policy.py)",
                KLWarning, stacklevel=3)
        if mean_kl > self.kl_explosion:
            warnings.warn(
                f"mean KL to the reference is {mean_kl:.1f} nats (> kl_explosion={self.kl_explosion}) at iteration "
                f"{iteration}: the policy is running away; raise kl_coef, use adaptive_kl or lower learning_rate",
                KLWarning, stacklevel=3)
        if gold is None:
            return
        self.rm_history.append(rm_score)
        self.gold_history.append(gold)
        w = self.window
        if len(self.rm_history) < 2 * w:
            return
        rm, gd = np.array(self.rm_history), np.array(self.gold_history)
        rm_up = _clear_change(rm[:w], rm[w:]) > 0
        gold_down = _clear_change(gd[:w], gd[w:]) < 0
        self.streak = self.streak + 1 if (rm_up and gold_down) else 0
        if self.streak == self.patience:
            warnings.warn(
                f"over-optimisation: over the last {w + self.patience - 1} iterations the reward-model score "
                f"rose ({np.mean(rm[:w]):+.3f} -> {np.mean(rm[w:]):+.3f}) while the gold score fell "
                f"({np.mean(gd[:w]):+.3f} -> {np.mean(gd[w:]):+.3f}). The policy is gaming the reward model -- or the "
                "reward's sign is flipped. Stop early, raise kl_coef, or retrain the reward model.",
                OverOptimizationWarning, stacklevel=3)

    def state_dict(self) -> dict[str, Any]:
        """The histories and streak (plain JSON), for a checkpoint."""
        return {"rm_history": list(self.rm_history), "gold_history": list(self.gold_history), "overopt_streak": self.streak}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rm_history.clear()
        self.gold_history.clear()
        self.rm_history.extend(state["rm_history"])
        self.gold_history.extend(state["gold_history"])
        self.streak = int(state["overopt_streak"])
