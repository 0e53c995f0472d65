"""GRPO: group-relative policy optimisation (Shao et al. 2024, DeepSeekMath), and Dr. GRPO (Liu et al. 2025).

For each prompt q the agent samples a group of G completions `o_1..o_G` (`group_size`) and
scores them; with outcome rewards every token of `o_i` gets the group-normalised advantage

    A_i = (r_i - mean(r)) / (std(r) + eps)                              (DeepSeekMath §4.1.2)

and the objective (eq. 3) is PPO's clipped surrogate with the KL to the reference in the
*loss* rather than in the reward:

    J = E[ 1/G sum_i 1/|o_i| sum_t ( min(rho_t A_i, clip(rho_t, 1-eps, 1+eps) A_i) - beta * k3_t ) ]

with `k3 = pi_ref/pi - log(pi_ref/pi) - 1` (`agents/kl.py`; its gradient in the loss is the
forward KL's, see there) and beta = 0.04, G = 64 in the paper.

Dr. GRPO ("Understanding R1-Zero-like training", Liu et al. 2025) removes two biases:
the `1/|o_i|` length normalisation, which makes long wrong answers cheap, and the division
by `std(r)`, which up-weights prompts that are too easy or too hard. `scale_rewards=False`
and `loss_type="dr_grpo"` (the token sum over a constant) give it; `loss_type="token"` is the
token-level mean (DAPO).

A group whose rewards are all equal has zero advantage (no NaN: `eps` guards the division).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from llm_gym.agents.kl import KLEstimator, kl_estimate
from llm_gym.agents.on_policy import LossReduction, OnPolicyAgent, OnPolicyConfig, Snapshot
from llm_gym.agents.ppo_math import clipped_policy_loss, reduce_tokens

__all__ = ["GRPO", "GRPOConfig", "group_advantages"]

_REDUCTIONS: dict[str, LossReduction] = {"grpo": "sequence", "dr_grpo": "constant", "token": "token"}


def group_advantages(rewards: np.ndarray, group_size: int, scale: bool = True, eps: float = 1e-4) -> np.ndarray:
    """`(r_i - mean(r)) / (std(r) + eps)` within each consecutive group of `group_size` rewards; `scale=False`
    leaves out the division (Dr. GRPO). The std is the sample std (n - 1), as TRL's GRPO computes it.

    >>> group_advantages(np.array([0.0, 1.0, 2.0, 3.0, 3.0, 3.0]), 3, eps=0.0).tolist()
    [-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    """
    if group_size < 2:
        raise ValueError(f"a group baseline needs group_size >= 2 completions per prompt, got {group_size}")
    r = np.asarray(rewards, dtype=np.float64).reshape(-1, group_size)
    centred = r - r.mean(axis=1, keepdims=True)
    if scale:
        centred = centred / (r.std(axis=1, ddof=1, keepdims=True) + eps)
    return centred.reshape(-1)


@dataclass(frozen=True)
class GRPOConfig(OnPolicyConfig):
    """Hyperparameters of GRPO / Dr. GRPO (the shared ones are `OnPolicyConfig`'s)."""

    group_size: int = 4
    """G: completions per prompt (>= 2; 64 in DeepSeekMath). The environment is made with the same `group_size`."""
    n_epochs: int = 1
    """Passes over each batch (the paper's mu; the ratio is 1 on the batch's first minibatch, and the clip bounds how
    far the later ones may move it)."""
    kl_coef: float = 0.04
    """beta, the weight of the KL to the reference in the loss (0.04 in DeepSeekMath)."""
    kl_estimator: KLEstimator = "k3"
    """The per-token KL estimate added to the loss: k3, as the paper (its gradient is the forward KL's), or k2 (the
    reverse KL's gradient); k1 is refused, its expected gradient in the loss being zero (`agents/kl.py`)."""
    clip_range: float = 0.2
    """Ratio clip epsilon."""
    scale_rewards: bool = True
    """Divide the group-centred rewards by the group's std (False: Dr. GRPO)."""
    loss_type: Literal["grpo", "dr_grpo", "token"] = "grpo"
    """"grpo": each completion's token mean, then the mean over completions (the paper's 1/|o_i|); "dr_grpo":
    the token sum over completions x max_new_tokens (no length bias); "token": the mean over all tokens (DAPO)."""
    eps: float = 1e-4
    """Added to the group std before dividing (keeps a group of equal rewards at zero advantage)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.group_size < 2:
            raise ValueError(f"GRPOConfig.group_size must be >= 2 (a group baseline needs another completion of the "
                             f"same prompt), got {self.group_size}")
        if not self.clip_range > 0 or not self.eps > 0:
            raise ValueError(f"GRPOConfig.clip_range and eps must be > 0, got {self.clip_range!r}, {self.eps!r}")
        if self.kl_estimator == "k1":
            raise ValueError("GRPOConfig.kl_estimator='k1' in the loss has an expected gradient of zero (the penalty would "
                             "do nothing); use 'k3' (the paper's) or 'k2' (the reverse KL's gradient)")
        if self.loss_type not in _REDUCTIONS:
            raise ValueError(f"GRPOConfig.loss_type must be one of {sorted(_REDUCTIONS)}, got {self.loss_type!r}")


class GRPO(OnPolicyAgent):
    """Group-relative policy optimisation (see the module docstring); arguments as `OnPolicyAgent`.

    Example:
        >>> env = gymnasium.make_vec("llm_gym/ReviewSentiment-v0", num_envs=16, group_size=4)  # doctest: +SKIP
        >>> dr_grpo = GRPOConfig(group_size=4, scale_rewards=False, loss_type="dr_grpo")  # doctest: +SKIP
        >>> agent = GRPO(policy, env, dr_grpo, rng=np.random.default_rng(0)).learn(4096)  # doctest: +SKIP
    """

    config: GRPOConfig
    config_class = GRPOConfig
    algorithm = "grpo"
    kl_penalty = "loss"

    def _reduction(self) -> LossReduction:
        return _REDUCTIONS[self.config.loss_type]

    def _advantages(self, snapshot: Snapshot, extra: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg, mask = self.config, snapshot.mask
        advantages = group_advantages(snapshot.paid_all, cfg.group_size, cfg.scale_rewards, cfg.eps)
        per_sequence = torch.as_tensor(np.asarray(self.dist.shard(advantages)), dtype=torch.float32, device=mask.device)
        return {"advantages": per_sequence[:, None] * mask}  # outcome supervision: A_i on every token of o_i

    def _loss(self, out: Any, mb: dict[str, torch.Tensor],
              mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        cfg, reduction = self.config, self._reduction()
        max_len = cfg.sampling.max_new_tokens
        pg = clipped_policy_loss(out.logprobs, mb["old_logprobs"], mb["advantages"], mask, cfg.clip_range, reduction, max_len)
        # beta * KL in the loss, differentiated through the current log-probs (eq. 3)
        kl = reduce_tokens(kl_estimate(out.logprobs, mb["ref_logprobs"], cfg.kl_estimator), mask, reduction, max_len)
        loss = pg.loss + self.kl_ctl.value * kl
        parts = {"policy_loss": pg.loss, "kl_loss": kl, "loss": loss}
        return loss, parts, {"clipfrac": pg.clipfrac, "approx_kl": pg.approx_kl}
