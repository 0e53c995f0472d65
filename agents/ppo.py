"""PPO for language models on prompt-bandit environments, with a KL penalty to a frozen reference and PPO-ptx.

One iteration (Ziegler et al. 2019; Ouyang et al. 2022, "InstructGPT"); the loop, the
rollout, the reference, ptx and checkpoints are the shared parts of `agents/on_policy.py`,
and this file is the algorithm's maths:

1. reward: per token `-beta * kl_t` (`kl_t = log pi(y_t) - log pi_ref(y_t)`, the k1 estimate of
   `agents/kl.py`, paid in the reward), plus the environment's score on the last token
   (`ppo_math.kl_penalized_rewards`);
2. advantages: GAE over the completion's tokens with a learned value (`ppo_math.compute_gae`),
   whitened per batch;
3. loss: the clipped surrogate, a clipped value loss, an entropy bonus (and, for PPO-ptx,
   the shared ptx term), averaged over the minibatch's tokens.

The value function is a linear head on the policy's final hidden state: one forward pass
gives log-probs, entropies and values. The head reads the hidden state *detached*, so the
value loss trains only the head and never pulls the language model's trunk toward
predicting returns (a freshly initialised value head's large early errors otherwise
disturb the policy, which Ziegler et al. 2019 avoided with separate networks).
Dropout is off during PPO (the model is kept in eval mode, as TRL does), so the ratio
pi/pi_old is exactly 1 before the first update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from llm_gym.agents.monitors import KLWarning, OverOptimizationWarning
from llm_gym.agents.on_policy import OnPolicyAgent, OnPolicyConfig, Snapshot
from llm_gym.agents.ppo_math import (
    clipped_policy_loss,
    clipped_value_loss,
    compute_gae,
    kl_penalized_rewards,
    masked_mean,
    masked_whiten,
)
from llm_gym.infra.update import TrainingDivergedError
from llm_gym.models.policy import Rollout

__all__ = ["PPO", "PPOConfig", "TrainingDivergedError", "OverOptimizationWarning", "KLWarning", "ValueHead"]


@dataclass(frozen=True)
class PPOConfig(OnPolicyConfig):
    """Hyperparameters of LM PPO (the shared ones are `OnPolicyConfig`'s); every field is validated on construction."""

    vf_learning_rate: float = 1e-3
    """AdamW learning rate of the value head (a linear probe on detached features: it can learn fast)."""
    gamma: float = 1.0
    """Discount across completion tokens (1: the score counts fully at every token)."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    clip_range: float = 0.2
    """PPO ratio clip epsilon."""
    clip_range_vf: float | None = 0.2
    """Value clip around the old values (None: no value clipping)."""
    vf_coef: float = 0.5
    """Weight of the value loss (it trains only the value head, which reads detached hidden states)."""
    ent_coef: float = 0.0
    """Weight of the entropy bonus."""
    whiten_advantages: bool = True
    """Whiten advantages per batch."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("vf_learning_rate", "clip_range"):
            if not getattr(self, name) > 0:
                raise ValueError(f"PPOConfig.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("vf_coef", "ent_coef"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"PPOConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0 <= self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ValueError(f"PPOConfig.gamma and gae_lambda must be in [0, 1], got {self.gamma}, {self.gae_lambda}")
        if self.clip_range_vf is not None and not self.clip_range_vf > 0:
            raise ValueError(f"PPOConfig.clip_range_vf must be > 0 or None, got {self.clip_range_vf!r}")


class ValueHead(torch.nn.Module):
    """A scalar value per token from the policy's final hidden state.

    Initialised to zero: a random head over layer-normed features predicts values of order
    one that differ from token to token, and those differences enter every TD error
    `r_t + V_{t+1} - V_t`, drowning a score whose spread is a few tenths. Starting at
    V = 0, the first advantages are the (discounted) scores themselves.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.detach().float()).squeeze(-1)


class PPO(OnPolicyAgent):
    """PPO with a KL penalty to a frozen reference policy, optional adaptive KL and the ptx term.

    Arguments as `OnPolicyAgent` (policy, env, config, rng or seed=, reference, ptx_texts, logger,
    checkpoint_dir, distributed).

    Example:
        >>> env = gymnasium.make_vec("llm_gym/ReviewSentiment-v0", num_envs=16)  # doctest: +SKIP
        >>> agent = PPO(policy, env, PPOConfig(), rng=np.random.default_rng(0)).learn(4096)  # doctest: +SKIP
    """

    config: PPOConfig
    config_class = PPOConfig
    algorithm = "ppo"
    needs_hidden = True

    @property
    def entropy_in_loss(self) -> bool:
        return self.config.ent_coef != 0

    def _build_modules(self) -> None:
        self.value_head = ValueHead(self.policy.model.config.hidden_size).to(self.policy.device)

    def _param_groups(self) -> list[dict[str, Any]]:
        return [*super()._param_groups(),
                {"params": list(self.value_head.parameters()), "lr": self.config.vf_learning_rate}]

    def _prepare_modules(self) -> list[torch.nn.Module]:
        self._train_value_head, _ = self.dist.prepare(self.value_head)
        return [self._train_value_head]

    def _modules_to_save(self) -> dict[str, torch.nn.Module]:
        return {"value_head": self.value_head}

    @classmethod
    def _saved_module_stems(cls) -> tuple[str, ...]:
        return ("value_head",)

    def _before_update(self, snapshot: Snapshot) -> dict[str, torch.Tensor]:
        return {"old_values": self.value_head(snapshot.own.hidden).float()}

    def _advantages(self, snapshot: Snapshot, extra: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg, mask = self.config, snapshot.mask
        # Ziegler et al. eq. (2): r_t = -beta * KL_t, plus the score at the last token
        rewards, _ = kl_penalized_rewards(snapshot.paid, snapshot.own.logprobs, snapshot.ref_logprobs, mask,
                                          self.kl_ctl.value, cfg.kl_estimator)
        old_values = extra["old_values"] * mask
        advantages, returns = compute_gae(rewards, old_values, mask, cfg.gamma, cfg.gae_lambda)
        if cfg.whiten_advantages:
            all_reduce = self.dist.all_reduce_sum if self.dist.world_size > 1 else None
            advantages = masked_whiten(advantages, mask, all_reduce=all_reduce)
        return {"advantages": advantages, "returns": returns, "old_values": old_values}

    def _forward(self, ro: Rollout, idx: torch.Tensor) -> Any:
        ev = super()._forward(ro, idx)
        return ev, self._train_value_head(ev.hidden).float()

    def _loss(self, out: Any, mb: dict[str, torch.Tensor],
              mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        cfg = self.config
        ev, values = out
        values = values * mask
        pg = clipped_policy_loss(ev.logprobs, mb["old_logprobs"], mb["advantages"], mask, cfg.clip_range)
        vf_loss = clipped_value_loss(values, mb["old_values"], mb["returns"], mask, cfg.clip_range_vf)
        entropy = masked_mean(ev.entropy, mask)
        loss = pg.loss + cfg.vf_coef * vf_loss - cfg.ent_coef * entropy
        parts = {"policy_loss": pg.loss, "value_loss": vf_loss, "entropy": entropy, "loss": loss}
        return loss, parts, {"clipfrac": pg.clipfrac, "approx_kl": pg.approx_kl}

