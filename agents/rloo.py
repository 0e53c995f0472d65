"""RLOO: REINFORCE with a leave-one-out baseline over k completions per prompt (Ahmadian et al. 2024).

"Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human Feedback in
LLMs" treats a whole completion as one action and drops PPO's value network. For each prompt
the agent samples k completions `y_1..y_k` (`group_size`), and each completion's reward is the
KL-penalised sequence reward

    R_i = score(x, y_i) - beta * sum_t kl_t(y_i)        (kl_t: the k1 estimate log pi - log pi_ref)

with the advantage the reward minus the mean of the *other* k - 1 rewards (eq. 4)

    A_i = R_i - 1/(k-1) * sum_{j != i} R_j  =  k/(k-1) * (R_i - mean_j R_j).

The loss is REINFORCE, `-A_i * log pi(y_i | x)`, spread over the completion's tokens; with
`n_epochs > 1` it becomes PPO's clipped surrogate on the same sequence-level advantage (the
ratio is 1 on the batch's first minibatch, so one epoch in one minibatch, `minibatch_size ==
num_envs`, is exactly REINFORCE; later minibatches of an epoch see a ratio moved by the steps
before them, which the clip bounds). The paper's Table 1: on TL;DR,
RLOO (k=4) won 77.9% against the reference, PPO 67.6%, DPO 66.6%; PPO's clipping fired in
fewer than 5% of its batches, the bandit being nearly on-policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from llm_gym.agents.kl import kl_estimate
from llm_gym.agents.on_policy import LossReduction, OnPolicyAgent, OnPolicyConfig, Snapshot
from llm_gym.agents.ppo_math import clipped_policy_loss, masked_whiten

__all__ = ["RLOO", "RLOOConfig", "leave_one_out_advantages"]


def leave_one_out_advantages(rewards: np.ndarray, group_size: int) -> np.ndarray:
    """`A_i = R_i - mean_{j != i} R_j` within each consecutive group of `group_size` rewards (Ahmadian et al. eq. 4).

    A group whose rewards are all equal gets zero advantages (nothing to prefer), never NaN.

    >>> leave_one_out_advantages(np.array([1.0, 2.0, 3.0, 5.0, 5.0, 5.0]), 3).tolist()
    [-1.5, 0.0, 1.5, 0.0, 0.0, 0.0]
    """
    if group_size < 2:
        raise ValueError(f"a leave-one-out baseline needs group_size >= 2 completions per prompt, got {group_size}")
    r = np.asarray(rewards, dtype=np.float64).reshape(-1, group_size)
    others = (r.sum(axis=1, keepdims=True) - r) / (group_size - 1)
    return (r - others).reshape(-1)


@dataclass(frozen=True)
class RLOOConfig(OnPolicyConfig):
    """Hyperparameters of RLOO (the shared ones are `OnPolicyConfig`'s)."""

    group_size: int = 4
    """k: completions per prompt (>= 2; the paper's best was k = 4). The environment is made with the same
    `group_size`, and its `num_envs` holds num_envs / k prompts per batch."""
    n_epochs: int = 1
    """Passes over each batch: 1 with minibatch_size == num_envs = REINFORCE (the ratio is 1); more = PPO-style clipped
    updates."""
    clip_range: float = 0.2
    """Ratio clip epsilon for every step after the batch's first (inactive with one epoch in one minibatch)."""
    loss_reduction: LossReduction = "token"
    """How the per-token loss is averaged: over the minibatch's tokens ("token", as PPO and TRL: the step then
    shrinks as completions grow), per sequence ("sequence") or over sequences x max_new_tokens ("constant": the
    paper's REINFORCE on the sequence log-prob, scaled by the constant 1 / max_new_tokens)."""
    whiten_advantages: bool = False
    """Whiten the advantages over the batch (off: the leave-one-out baseline already centres them)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.group_size < 2:
            raise ValueError(f"RLOOConfig.group_size must be >= 2 (a leave-one-out baseline needs another completion "
                             f"of the same prompt), got {self.group_size}")
        if not self.clip_range > 0:
            raise ValueError(f"RLOOConfig.clip_range must be > 0, got {self.clip_range!r}")
        if self.loss_reduction not in ("token", "sequence", "constant"):
            raise ValueError(f"RLOOConfig.loss_reduction must be 'token', 'sequence' or 'constant', got {self.loss_reduction!r}")


class RLOO(OnPolicyAgent):
    """REINFORCE Leave-One-Out (see the module docstring); arguments as `OnPolicyAgent`.

    Example:
        >>> env = gymnasium.make_vec("llm_gym/ReviewSentiment-v0", num_envs=16, group_size=4)  # doctest: +SKIP
        >>> agent = RLOO(policy, env, RLOOConfig(group_size=4), rng=np.random.default_rng(0)).learn(4096)  # doctest: +SKIP
    """

    config: RLOOConfig
    config_class = RLOOConfig
    algorithm = "rloo"

    def _reduction(self) -> LossReduction:
        return self.config.loss_reduction

    def _advantages(self, snapshot: Snapshot, extra: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg, dist, mask = self.config, self.dist, snapshot.mask
        kl = (kl_estimate(snapshot.own.logprobs, snapshot.ref_logprobs, cfg.kl_estimator) * mask).sum(-1)
        kl_all = np.asarray([x for part in dist.gather_object(kl.tolist()) for x in part]) if dist.world_size > 1 \
            else kl.cpu().numpy().astype(np.float64)
        rewards = snapshot.paid_all - self.kl_ctl.value * kl_all  # R_i = score - beta * KL(y_i)
        advantages = torch.as_tensor(np.asarray(dist.shard(leave_one_out_advantages(rewards, cfg.group_size))),
                                     dtype=torch.float32, device=mask.device)
        per_token = advantages[:, None] * mask  # the sequence's advantage on every one of its tokens
        if cfg.whiten_advantages:
            per_token = masked_whiten(per_token, mask, all_reduce=dist.all_reduce_sum if dist.world_size > 1 else None)
        return {"advantages": per_token}

    def _loss(self, out: Any, mb: dict[str, torch.Tensor],
              mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        cfg = self.config
        pg = clipped_policy_loss(out.logprobs, mb["old_logprobs"], mb["advantages"], mask, cfg.clip_range,
                                 cfg.loss_reduction, cfg.sampling.max_new_tokens)
        return pg.loss, {"policy_loss": pg.loss, "loss": pg.loss}, {"clipfrac": pg.clipfrac, "approx_kl": pg.approx_kl}

