"""KL to the reference policy: the three single-sample estimators, where they are paid, and the coefficient.

With `r = pi_ref(y) / pi(y)` on samples `y ~ pi` (Schulman, "Approximating KL divergence", 2020):

    k1 = -log r                   unbiased for KL(pi || ref); high variance; negative on some samples
    k2 = (log r)^2 / 2            biased (it is exact only to second order); low variance; >= 0
    k3 = (r - 1) - log r          unbiased for KL(pi || ref); >= 0 on every sample

Where an estimator sits decides the gradient it gives, not only its value:

* *in the reward* (Ziegler et al. 2019, InstructGPT, RLOO): `-beta * k1` per token joins the
  score and is treated as a reward, so the policy-gradient estimator sees
  `-beta * E_pi[log(pi/ref) grad log pi] = -beta * grad KL(pi || ref)`: the true gradient.
  Only k1 does this: `-beta * k3` in the reward gives `-beta * (grad KL(pi || ref) -
  grad KL(ref || pi))`, and `-beta * k2` a gradient with no closed form; both are biased
  (they can be chosen, `kl_estimator`, and are tested, but k1 is the default for a reason);
* *in the loss* (GRPO, Shao et al. 2024): `beta * k(y)` is differentiated through `log pi(y)`
  on fixed samples. Its expected gradient is
  k1: `E_pi[grad log pi] = 0` (no penalty at all);
  k2: `E_pi[log(pi/ref) grad log pi] = grad KL(pi || ref)` (the true gradient);
  k3: `E_pi[(1 - ref/pi) grad log pi] = -E_ref[grad log pi] = grad KL(ref || pi)`: the
  gradient of the *forward* KL, a biased step for the reverse KL GRPO means to penalise
  (the bias TRL #4967 and verl PR #2953 report). `tests/agents/test_kl.py` checks each value
  and each gradient on a small categorical distribution against these formulas.

Shapes: per-token log-probs (B, T) with a (B, T) mask, 1 on real tokens.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["AdaptiveKLController", "FixedKLController", "KLEstimator", "KLPenalty", "kl_estimate", "make_kl_controller"]

KLEstimator = Literal["k1", "k2", "k3"]
"""Which single-sample estimator of KL(pi || ref) (see the module docstring)."""
KLPenalty = Literal["reward", "loss"]
"""Where the KL is paid: subtracted from the reward (no gradient through it), or added to the loss."""


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from the log-probs of the sampled tokens under pi and ref.

    Differentiable through `logprobs` (and `ref_logprobs`, which callers pass without grad).
    Multiply by the mask: padded positions carry no meaning.

    >>> lp, ref = torch.tensor([-1.0]), torch.tensor([-2.0])   # log r = ref - lp = -1
    >>> [round(float(kl_estimate(lp, ref, k)), 4) for k in ("k1", "k2", "k3")]
    [1.0, 0.5, 0.3679]
    """
    log_r = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r**2
    if estimator == "k3":
        # (r - 1) - log r, computed as expm1 for accuracy when r is near 1
        return torch.expm1(log_r) - log_r
    raise ValueError(f"estimator must be 'k1', 'k2' or 'k3', got {estimator!r}")


class FixedKLController:
    """A constant KL coefficient beta."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to adapt."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """Ziegler et al. 2019's controller: steers beta so the measured KL approaches `target`.

    `e = clip(KL / target - 1, -0.2, 0.2)`, `beta <- beta * (1 + e * n_steps / horizon)`,
    where `n_steps` is the number of completions in the batch that measured `KL`.
    """

    def __init__(self, kl_coef: float, target: float, horizon: int) -> None:
        super().__init__(kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value, self.target, self.horizon = float(state["value"]), float(state["target"]), int(state["horizon"])


def make_kl_controller(kl_coef: float, adaptive: bool, target: float, horizon: int) -> FixedKLController:
    """The controller a config asks for: adaptive (Ziegler et al.) or fixed."""
    return AdaptiveKLController(kl_coef, target, horizon) if adaptive else FixedKLController(kl_coef)
