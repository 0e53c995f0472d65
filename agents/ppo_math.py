"""The formulas of PPO for language models, as small pure functions tested against hand computation.

Sources: Schulman et al. 2017 (clipped objective, GAE from Schulman et al. 2016), Ziegler
et al. 2019 (per-token KL penalty to the reference, adaptive KL coefficient), Ouyang et
al. 2022 (InstructGPT: the same objective plus the ptx pretraining term). The clipped
surrogate and its reductions serve RLOO and GRPO too (`agents/rloo.py`, `agents/grpo.py`);
the KL estimators and controllers are `agents/kl.py`.

Shapes: (B, T) per completion token, with a (B, T) mask that is 1 for real tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from llm_gym.agents.kl import AdaptiveKLController, FixedKLController, KLEstimator, kl_estimate  # noqa: F401 (the controllers are re-exported)

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "PolicyLoss",
    "clipped_policy_loss",
    "clipped_value_loss",
    "compute_gae",
    "kl_penalized_rewards",
    "masked_mean",
    "masked_whiten",
    "reduce_tokens",
]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `x` over positions where `mask` is 1."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(
    x: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Normalise `x` to unit variance (and zero mean if `shift_mean`) over masked positions.

    `all_reduce` (a sum over data-parallel processes, e.g. `Distributed.all_reduce_sum`) makes
    the mean and variance those of every process's positions together, so all processes
    whiten alike and the result equals whitening the concatenated batch.
    """
    if all_reduce is None:
        mean = masked_mean(x, mask)
        var = masked_mean((x - mean) ** 2, mask)
    else:
        sums = all_reduce(torch.stack([(x * mask).sum(), mask.sum().to(x.dtype)]))
        count = sums[1].clamp(min=1)
        mean = sums[0] / count
        var = all_reduce(((x - mean) ** 2 * mask).sum()) / count
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def kl_penalized_rewards(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float,
    estimator: KLEstimator = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards `-beta * kl_t` plus the score on the last real token.

    This is the reward of Ziegler et al. 2019 eq. (2) / InstructGPT: the environment's
    score arrives once, at the end of the completion; the KL penalty (by default the
    single-sample estimate `k1 = log pi(y_t) - log pi_ref(y_t)`; see `llm_gym.agents.kl`)
    is paid at every token.

    Returns:
        (rewards, kl): both (B, T), zero where masked.
    """
    kl = kl_estimate(logprobs, ref_logprobs, estimator) * mask
    rewards = -kl_coef * kl
    last = (mask.sum(-1).long() - 1).clamp(min=0)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    has_tokens = mask.sum(-1) > 0
    rewards[rows[has_tokens], last[has_tokens]] += scores[has_tokens].to(rewards.dtype)
    return rewards * mask, kl


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over completion tokens (Schulman et al. 2016).

    `delta_t = r_t + gamma * V_{t+1} - V_t`, `A_t = delta_t + gamma * lam * A_{t+1}`, with
    `V` and `A` zero after the last real token (the episode ends with the completion).

    Returns:
        (advantages, returns) with `returns = advantages + values`; zero where masked.
    """
    steps = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(steps)):
        next_mask = mask[:, t + 1] if t + 1 < steps else torch.zeros_like(mask[:, t])
        next_value = values[:, t + 1] * next_mask if t + 1 < steps else torch.zeros_like(values[:, t])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = delta + gamma * lam * next_mask * last_gae
        advantages[:, t] = last_gae
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


class PolicyLoss(NamedTuple):
    """The clipped surrogate loss and its diagnostics."""

    loss: torch.Tensor
    clipfrac: torch.Tensor
    approx_kl: torch.Tensor


def reduce_tokens(x: torch.Tensor, mask: torch.Tensor, reduction: str = "token", max_len: int | None = None) -> torch.Tensor:
    """A per-token loss (B, T) as one number, the way each algorithm averages it.

    * "token": the mean over all real tokens of the batch (PPO; DAPO's token-level loss);
    * "sequence": the mean over sequences of each sequence's token mean (GRPO, Shao et al. 2024
      eq. 3: the `1/|o_i|` that gives a short answer's tokens more weight than a long one's);
    * "constant": the sum over tokens divided by `B * max_len`, a constant (Dr. GRPO, Liu et al.
      2025: no length normalisation, so no length bias).
    """
    if reduction == "token":
        return masked_mean(x, mask)
    if reduction == "sequence":
        return ((x * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    if reduction == "constant":
        if not max_len:
            raise ValueError("the 'constant' reduction needs max_len (the sampling's max_new_tokens)")
        return (x * mask).sum() / (x.shape[0] * max_len)
    raise ValueError(f"reduction must be 'token', 'sequence' or 'constant', got {reduction!r}")


def clipped_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_range: float,
    reduction: str = "token", max_len: int | None = None,
) -> PolicyLoss:
    """PPO's clipped surrogate: `max(-A * r, -A * clip(r, 1 - eps, 1 + eps))` per token, `r = pi / pi_old`, reduced
    by `reduce_tokens` (the mean over tokens by default).

    `approx_kl` is `0.5 * mean((log r)^2)`; `clipfrac` the share of tokens where clipping bites.
    """
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = reduce_tokens(torch.maximum(unclipped, clipped), mask, reduction, max_len)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    approx_kl = 0.5 * masked_mean(log_ratio**2, mask)
    return PolicyLoss(loss, clipfrac.detach(), approx_kl.detach())


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip_range: float | None
) -> torch.Tensor:
    """`0.5 * mean(max((V - R)^2, (V_clipped - R)^2))` with `V_clipped = V_old + clip(V - V_old, -eps, eps)`.

    `clip_range=None` turns value clipping off (plain squared error).
    """
    unclipped = (values - returns) ** 2
    if clip_range is None:
        return 0.5 * masked_mean(unclipped, mask)
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    return 0.5 * masked_mean(torch.maximum(unclipped, (clipped_values - returns) ** 2), mask)
