"""PPO for language models on prompt-bandit environments, with a KL penalty to a frozen reference and PPO-ptx.

One iteration (Ziegler et al. 2019; Ouyang et al. 2022, "InstructGPT"):

1. rollout: the policy samples one completion per prompt of a batched environment;
2. scoring: the environment pays the reward-model score (only the score: KL and ptx are
   the agent's business, since they depend on the policy);
3. reference: the frozen starting policy (SFT) gives log pi_ref per token; per-token
   reward = -beta * (log pi - log pi_ref), plus the score on the last token;
4. update: GAE advantages, then `n_epochs` of minibatch PPO on the clipped surrogate, a
   clipped value loss, an entropy bonus and, for PPO-ptx, `ptx_coef` times the negative
   log-likelihood of a batch of pretraining text.

The value function is a linear head on the policy's final hidden state: one forward pass
gives log-probs, entropies and values. The head reads the hidden state *detached*, so the
value loss trains only the head and never pulls the language model's trunk toward
predicting returns (a freshly initialised value head's large early errors otherwise
disturb the policy, which Ziegler et al. 2019 avoided with separate networks).
Dropout is off during PPO (the model is kept in eval mode, as TRL does), so the ratio
pi/pi_old is exactly 1 before the first update.

Data parallel (`distributed=`, see `llm_gym.infra.distributed`): the environment's batch
(`num_envs`) and `minibatch_size` are global. Every process draws the same prompt batch
(same rng), samples completions for its contiguous shard with its own seed (rank 0 uses
the single-process seed), and the completions are gathered so that every process scores
the whole batch: score whitening, metrics and the KL fed to the controller are then global
and identical everywhere. Advantage whitening uses all-reduced sums; each global minibatch
is the processes' shards of one permutation drawn as a single process draws it, and its
losses are normalised by the global token count, so DDP's gradient average is the
single-process gradient. Only the main process writes checkpoints.
"""

from __future__ import annotations

import copy
import json
import math
import time
import warnings
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium.vector import VectorEnv
from safetensors.torch import load_file, save_file

from llm_gym.agents.base import Agent, Callback
from llm_gym.agents.ppo_math import (
    AdaptiveKLController,
    FixedKLController,
    clipped_policy_loss,
    clipped_value_loss,
    compute_gae,
    kl_penalized_rewards,
    masked_mean,
    masked_whiten,
)
from llm_gym.infra.atomic import atomic_dir
from llm_gym.infra.distributed import Distributed, MixedPrecision, check_training_options, resolve_mixed_precision
from llm_gym.infra.logger import Logger
from llm_gym.models.policy import Policy, Rollout, SamplingConfig
from llm_gym.models.lm import document_batch, labelled_tokens, lm_loss

__all__ = ["PPO", "PPOConfig", "TrainingDivergedError", "OverOptimizationWarning", "KLWarning"]

_FORMAT_VERSION = 1


class TrainingDivergedError(FloatingPointError):
    """A loss became NaN or infinite; the update was stopped before the optimizer step."""


class OverOptimizationWarning(UserWarning):
    """The reward-model score rises while the gold score falls: the policy is gaming the reward."""


class KLWarning(UserWarning):
    """The measured KL to the reference is negative (samples and log-probs disagree) or exploding."""


@dataclass(frozen=True)
class PPOConfig:
    """Hyperparameters of LM PPO; every field is validated on construction."""

    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=24))
    """How completions are sampled; the log-probs (and so the KL) are those of this distribution."""
    learning_rate: float = 5e-5
    """AdamW learning rate of the policy (suits the built-in tiny model; ~1e-5 suits Hub-sized models)."""
    vf_learning_rate: float = 1e-3
    """AdamW learning rate of the value head (a linear probe on detached features: it can learn fast)."""
    n_epochs: int = 4
    """PPO epochs over each rollout batch."""
    minibatch_size: int = 8
    """Completions per gradient step; must divide the environment's batch size."""
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
    max_grad_norm: float = 1.0
    """Gradient-norm clip."""
    kl_coef: float = 0.05
    """Initial beta of the per-token KL penalty to the reference."""
    adaptive_kl: bool = False
    """Steer beta toward `target_kl` (Ziegler et al. 2019) instead of keeping it fixed."""
    target_kl: float = 6.0
    """Target KL (nats per completion) of the adaptive controller."""
    kl_horizon: int = 10_000
    """Horizon (completions) of the adaptive controller."""
    ptx_coef: float = 0.0
    """InstructGPT's gamma: weight of the pretraining log-likelihood term (0 = plain PPO)."""
    ptx_batch_size: int = 8
    """Pretraining texts per ptx term."""
    score_scale: float = 1.0
    """Multiply the environment's score by this before it enters the reward."""
    whiten_scores: bool = False
    """Normalise scores by a running mean and std (kept in checkpoints) before scaling."""
    whiten_advantages: bool = True
    """Whiten advantages per batch."""
    kl_explosion: float = 50.0
    """Warn when the mean KL per completion exceeds this many nats."""
    overopt_window: int = 5
    """Iterations per window when comparing RM and gold trends (the last two windows are compared)."""
    overopt_patience: int = 3
    """Consecutive iterations of RM-up/gold-down before warning about over-optimisation."""
    log_samples_every: int = 10
    """Write sample completions to TensorBoard every this many iterations (0 = never)."""
    checkpoint_every: int = 0
    """Write a checkpoint every this many iterations into `checkpoint_dir` (0 = only on request)."""
    mixed_precision: MixedPrecision = "no"
    """"bf16" runs sampling, reference and training forward passes under bf16 autocast where the device
    supports it (CUDA with bf16, CPU); elsewhere PPO falls back to float32 with a logged warning."""
    gradient_accumulation_steps: int = 1
    """Each minibatch is processed in this many micro-batches before one optimizer step (less memory;
    the same update: losses are normalised by the whole minibatch's token count)."""

    def __post_init__(self) -> None:
        check_training_options("PPOConfig", self.mixed_precision, self.gradient_accumulation_steps)
        def positive(name: str, integer: bool = False) -> None:
            v = getattr(self, name)
            if integer and (not isinstance(v, int) or isinstance(v, bool)):
                raise ValueError(f"PPOConfig.{name} must be an int, got {v!r}")
            if not v > 0:
                raise ValueError(f"PPOConfig.{name} must be > 0, got {v!r}")

        for name in ("n_epochs", "minibatch_size", "ptx_batch_size", "kl_horizon", "overopt_window", "overopt_patience"):
            positive(name, integer=True)
        for name in ("learning_rate", "vf_learning_rate", "clip_range", "max_grad_norm", "target_kl", "score_scale", "kl_explosion"):
            positive(name)
        for name in ("vf_coef", "ent_coef", "kl_coef", "ptx_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"PPOConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0 <= self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ValueError(f"PPOConfig.gamma and gae_lambda must be in [0, 1], got {self.gamma}, {self.gae_lambda}")
        if self.clip_range_vf is not None and not self.clip_range_vf > 0:
            raise ValueError(f"PPOConfig.clip_range_vf must be > 0 or None, got {self.clip_range_vf!r}")
        if self.overopt_window < 2:
            raise ValueError(f"PPOConfig.overopt_window must be >= 2 (a trend needs a spread), got {self.overopt_window}")
        for name in ("log_samples_every", "checkpoint_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"PPOConfig.{name} must be an int >= 0, got {v!r}")
        if not isinstance(self.sampling, SamplingConfig):
            raise TypeError("PPOConfig.sampling must be a SamplingConfig")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (for checkpoints and hparams)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PPOConfig:
        data = dict(data)  # checkpoints written before mixed_precision existed load with the defaults
        data["sampling"] = SamplingConfig(**data["sampling"])
        return cls(**data)


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


class _RunningMoments:
    """Running mean and std of scores (Welford/Chan), for `whiten_scores`."""

    def __init__(self) -> None:
        self.mean, self.var, self.count = 0.0, 1.0, 1e-4

    def update(self, x: np.ndarray) -> None:
        batch_mean, batch_var, n = float(np.mean(x)), float(np.var(x)), len(x)
        delta, total = batch_mean - self.mean, self.count + n
        self.mean += delta * n / total
        self.var = (self.var * self.count + batch_var * n + delta**2 * self.count * n / total) / total
        self.count = total

    def normalize(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / math.sqrt(self.var + 1e-8)


class _Batch(NamedTuple):
    """Everything one iteration's update needs, on the policy's device."""

    rollout: Rollout
    old_logprobs: torch.Tensor
    old_values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


class PPO(Agent):
    """PPO with a KL penalty to a frozen reference policy, optional adaptive KL and the ptx term.

    Args:
        policy: the policy to train (starts from SFT in the InstructGPT pipeline).
        env: a batched prompt-bandit environment (`gymnasium.make_vec("llm_gym/...", num_envs=B)`);
            its reward is the score; `info["gold"]`, when present, is logged as `objective/gold`.
        config: hyperparameters.
        rng: the run's randomness (minibatch order, ptx batches, sampling seeds).
        reference: the frozen reference; by default a frozen copy of `policy` as it is now.
        ptx_texts: pretraining texts for PPO-ptx (required when `config.ptx_coef > 0`).
        logger: where metrics go.
        checkpoint_dir: where `checkpoint_every` writes `checkpoint/` (atomically).
        distributed: the process group (data parallel); None = a single process. Every process
            passes an rng with the same seed, the same environment and its own device's policy.

    Example:
        >>> env = gymnasium.make_vec("llm_gym/ReviewSentiment-v0", num_envs=16)  # doctest: +SKIP
        >>> agent = PPO(policy, env, PPOConfig(), rng=np.random.default_rng(0)).learn(4096)  # doctest: +SKIP
    """

    def __init__(
        self,
        policy: Policy,
        env: VectorEnv,
        config: PPOConfig,
        rng: np.random.Generator,
        reference: Policy | None = None,
        ptx_texts: Sequence[str] | None = None,
        logger: Logger | None = None,
        checkpoint_dir: str | PathLike[str] | None = None,
        distributed: Distributed | None = None,
    ) -> None:
        dist = distributed if distributed is not None else Distributed()
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
        num_envs = getattr(env, "num_envs", None)
        if not isinstance(env, VectorEnv) or not num_envs:
            raise TypeError(
                "env must be a batched environment: gymnasium.make_vec('llm_gym/PromptBandit-v0', num_envs=16, ...)"
            )
        if num_envs % config.minibatch_size:
            raise ValueError(
                f"minibatch_size={config.minibatch_size} must divide the environment's batch (num_envs={num_envs})"
            )
        if num_envs % dist.world_size or config.minibatch_size % dist.world_size:
            raise ValueError(
                f"num_envs={num_envs} and minibatch_size={config.minibatch_size} are global batches: both must be "
                f"divisible by the number of processes ({dist.world_size})"
            )
        if config.ptx_coef > 0 and not ptx_texts:
            raise ValueError("ptx_coef > 0 needs ptx_texts (pretraining text); pass ptx_texts=... or set ptx_coef=0")
        if config.checkpoint_every and checkpoint_dir is None:
            raise ValueError("checkpoint_every > 0 needs checkpoint_dir")
        self.policy, self.env, self.config, self.rng, self.dist = policy, env, config, rng, dist
        self.logger = logger if logger is not None else Logger(None)
        self.ptx_texts = list(ptx_texts) if ptx_texts else []
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.reference = reference if reference is not None else _frozen_copy(policy)
        for p in self.reference.model.parameters():
            p.requires_grad_(False)
        self.value_head = ValueHead(policy.model.config.hidden_size).to(policy.device)
        self.kl_ctl: FixedKLController = (
            AdaptiveKLController(config.kl_coef, config.target_kl, config.kl_horizon)
            if config.adaptive_kl
            else FixedKLController(config.kl_coef)
        )
        self.optimizer = torch.optim.AdamW(
            [
                {"params": list(policy.model.parameters()), "lr": config.learning_rate},
                {"params": list(self.value_head.parameters()), "lr": config.vf_learning_rate},
            ],
            eps=1e-5,
        )
        # training forwards go through the data-parallel wrappers (the modules themselves otherwise)
        self._train_model, _ = dist.prepare(policy.model)
        self._train_value_head, _ = dist.prepare(self.value_head)
        self._amp = resolve_mixed_precision(config.mixed_precision, policy.device)
        self.score_moments = _RunningMoments()
        self.num_timesteps = 0
        self.iteration = 0
        self._rm_history: deque[float] = deque(maxlen=2 * config.overopt_window)
        self._gold_history: deque[float] = deque(maxlen=2 * config.overopt_window)
        self._overopt_streak = 0

    # ------------------------------------------------------------------ agent interface
    def act(self, observations: Sequence[str]) -> list[str]:
        """Sample one completion per prompt with the training sampling settings."""
        seed = int(self.rng.integers(2**63 - 1))
        return self.policy.sample(list(observations), self.config.sampling, seed=seed).completions

    def learn(self, total_steps: int, callback: Callback | None = None) -> PPO:
        """Train until `total_steps` completions have been generated in total (across resumes)."""
        if not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
        while self.num_timesteps < total_steps:
            self.train_iteration()
            if self.config.checkpoint_every and self.iteration % self.config.checkpoint_every == 0:
                self.save(self.checkpoint_dir / "checkpoint")
            if callback is not None and callback(self, self.num_timesteps) is False:
                break
        return self

    # ------------------------------------------------------------------ one iteration
    def train_iteration(self) -> dict[str, float]:
        """Rollout, scoring, reference pass and PPO update on one batch; returns the logged stats."""
        cfg, timings = self.config, {}
        self.policy.model.eval()  # dropout off: pi/pi_old = 1 before the first update
        # the prompt batch is drawn by a reset seeded from the agent's rng, so a resumed run
        # (rng restored from the checkpoint) sees exactly the prompts an uninterrupted run would
        prompts, _ = self.env.reset(seed=int(self.rng.integers(2**31 - 1)))
        dist, amp = self.dist, Distributed.autocast(self._amp, self.policy.device)

        t = time.perf_counter()
        seed = _rank_seed(int(self.rng.integers(2**63 - 1)), dist.rank)
        with amp:
            rollout = self.policy.sample(dist.shard(list(prompts)), cfg.sampling, seed=seed)
        completions = [c for part in dist.gather_object(rollout.completions) for c in part]
        timings["generation"] = time.perf_counter() - t

        t = time.perf_counter()
        _, scores, _, _, info = self.env.step(completions)
        scores = np.asarray(scores, dtype=np.float64)  # the whole batch's scores, on every process
        timings["scoring"] = time.perf_counter() - t

        t = time.perf_counter()
        batch_args = (rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_mask, cfg.sampling)
        with torch.no_grad(), amp:
            ref_logprobs = self.reference.log_probs(*batch_args)
            own = self.policy.evaluate(*batch_args, with_hidden=True)
            old_values = self.value_head(own.hidden).float()
        timings["reference"] = time.perf_counter() - t

        t = time.perf_counter()
        mask = rollout.completion_mask.float()
        paid = scores
        if cfg.whiten_scores:
            self.score_moments.update(scores)  # global scores: every process keeps the same moments
            paid = self.score_moments.normalize(scores)
        paid_t = torch.as_tensor(np.asarray(dist.shard(paid * cfg.score_scale)), dtype=torch.float32, device=self.policy.device)
        rewards, kl = kl_penalized_rewards(paid_t, own.logprobs, ref_logprobs, mask, self.kl_ctl.value)
        old_values = old_values * mask
        advantages, returns = compute_gae(rewards, old_values, mask, cfg.gamma, cfg.gae_lambda)
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, mask, all_reduce=dist.all_reduce_sum if dist.world_size > 1 else None)
        batch = _Batch(rollout, own.logprobs, old_values, advantages, returns)
        train_stats = self._update(batch, len(scores))
        timings["update"] = time.perf_counter() - t

        # per-completion KL, entropy and length of the whole batch (in batch order), on every process
        local = torch.stack([kl.sum(-1), (own.entropy * mask).sum(-1), mask.sum(-1)], dim=1)
        gathered = torch.cat([torch.as_tensor(part) for part in dist.gather_object(local.tolist())]) if dist.world_size > 1 else local
        kl_per_completion, entropy_sum, lengths = gathered.unbind(1)
        mean_kl = float(kl_per_completion.mean())
        kl_coef = self.kl_ctl.value
        self.kl_ctl.update(mean_kl, n_steps=len(scores))  # the global KL: every process steers beta alike
        self.iteration += 1
        self.num_timesteps += len(scores)

        stats = {
            "objective/rm_score": float(scores.mean()),
            "objective/kl": mean_kl,
            "objective/kl_coef": kl_coef,
            "objective/non_score_reward": float((-kl_coef * kl_per_completion).mean()),
            "objective/entropy": float(entropy_sum.sum() / lengths.sum().clamp(min=1) * lengths.mean()),
            "rollout/completion_tokens": float(lengths.mean()),
            "rollout/truncated_prompts": dist.sum_float(rollout.num_truncated_prompts),
            **{f"train/{k}": v for k, v in dist.reduce_mean(train_stats).items()},
            **{f"time/{k}": v for k, v in dist.reduce_mean(timings).items()},
        }
        gold = info.get("gold")
        if gold is not None:
            stats["objective/gold"] = float(np.mean(gold))
        self.logger.record_dict(stats)
        self.logger.dump(self.num_timesteps)
        if cfg.log_samples_every and (self.iteration - 1) % cfg.log_samples_every == 0:
            lines = [f"{p} |{c}   [{s:+.3f}]" for p, c, s in zip(prompts, completions, scores)]
            self.logger.log_text("rollout/samples", "\n".join(lines[:8]), step=self.num_timesteps)
        self._health_checks(kl_per_completion, stats["objective/rm_score"], stats.get("objective/gold"))
        return stats

    def _ptx_batches(self, steps: int) -> list[tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], float]]:
        """This process's share of a random batch of pretraining texts (InstructGPT's ptx), as `steps`
        micro-batches `((ids, mask, labels), weight)`; weight 0 marks a stand-in for an empty share."""
        idx = self.rng.integers(len(self.ptx_texts), size=self.config.ptx_batch_size)  # the same draw on every process
        texts = [self.ptx_texts[i] for i in idx]
        tok, length = self.policy.tokenizer, self.policy.context_length
        return [(document_batch(tok, p, length), w) for p, w in self.dist.micro_shards(texts, steps)]

    def _update(self, batch: _Batch, global_size: int) -> dict[str, float]:
        cfg, ro, dist = self.config, batch.rollout, self.dist
        n = ro.completion_ids.shape[0]
        offset = dist.rank * n  # this process holds completions offset .. offset + n - 1 of the batch
        local_minibatch = cfg.minibatch_size // dist.world_size
        amp = Distributed.autocast(self._amp, self.policy.device)
        sums: dict[str, float] = {}
        count = 0
        params = list(self.policy.model.parameters()) + list(self.value_head.parameters())
        models = (self._train_model, self._train_value_head)
        for _ in range(cfg.n_epochs):
            # one permutation of the whole batch, drawn as a single process draws it; each process
            # takes its own completions in that order (with one process: the permutation itself)
            perm = self.rng.permutation(global_size)
            local = perm[(perm >= offset) & (perm < offset + n)] - offset
            order = torch.as_tensor(local, device=self.policy.device)
            for start in range(0, n, local_minibatch):
                mb = order[start : start + local_minibatch]
                micro = [m for m in torch.tensor_split(mb, cfg.gradient_accumulation_steps) if len(m)]
                ptx_batches = self._ptx_batches(len(micro)) if cfg.ptx_coef > 0 else []
                tokens, ptx_tokens = dist.sum_floats(  # global counts that normalise the two losses
                    float(ro.completion_mask[mb].sum()), sum(labelled_tokens(b[2]) for b, w in ptx_batches if w))
                self.optimizer.zero_grad(set_to_none=True)
                step_parts: dict[str, float] = {}
                for k in range(len(micro)):
                    last = k + 1 == len(micro)
                    ptx = torch.zeros((), device=self.policy.device)
                    if k < len(ptx_batches):
                        (ids, pmask, labels), w = ptx_batches[k]
                        with dist.no_sync(*models), amp:
                            ptx_sum = lm_loss(self._train_model, ids, pmask, labels, reduction="sum")
                            ptx = ptx_sum / max(labelled_tokens(labels), 1)
                            if not torch.isfinite(ptx):
                                self._diverged({"ptx_loss": ptx})
                            # maximise gamma * log-likelihood = minimise gamma * NLL (global token mean)
                            dist.backward(cfg.ptx_coef * ptx_sum * (w * dist.world_size / max(ptx_tokens, 1.0)))
                    idx = micro[k]
                    mask = ro.completion_mask[idx].float()
                    with dist.no_sync(*models, enabled=not last):
                        with amp:
                            ev = self.policy.evaluate(
                                ro.prompt_ids[idx], ro.prompt_mask[idx], ro.completion_ids[idx], ro.completion_mask[idx],
                                cfg.sampling, with_hidden=True, model=self._train_model,
                            )
                            values = self._train_value_head(ev.hidden).float() * mask
                        pg = clipped_policy_loss(ev.logprobs, batch.old_logprobs[idx], batch.advantages[idx], mask, cfg.clip_range)
                        vf_loss = clipped_value_loss(values, batch.old_values[idx], batch.returns[idx], mask, cfg.clip_range_vf)
                        entropy = masked_mean(ev.entropy, mask)
                        loss = pg.loss + cfg.vf_coef * vf_loss - cfg.ent_coef * entropy
                        parts = {"policy_loss": pg.loss, "value_loss": vf_loss, "ptx_loss": ptx, "entropy": entropy, "loss": loss}
                        if not all(torch.isfinite(v) for v in parts.values()):
                            self._diverged(parts)
                        # token mean over the global minibatch: DDP averages over processes, hence world_size
                        share = float(mask.sum()) * dist.world_size / max(tokens, 1.0)
                        dist.backward(loss * share)
                    weight = float(mask.sum()) / max(float(ro.completion_mask[mb].sum()), 1.0)
                    for key, v in {**parts, "loss": loss + cfg.ptx_coef * ptx, "clipfrac": pg.clipfrac, "approx_kl": pg.approx_kl}.items():
                        step_parts[key] = step_parts.get(key, 0.0) + weight * float(v.detach())
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                if not torch.isfinite(grad_norm):
                    self.optimizer.zero_grad(set_to_none=True)
                    raise TrainingDivergedError(
                        f"non-finite gradient norm at iteration {self.iteration + 1}; the optimizer step was skipped"
                    )
                self.optimizer.step()
                for key, v in {**step_parts, "grad_norm": float(grad_norm)}.items():
                    sums[key] = sums.get(key, 0.0) + v
                count += 1
        return {k: v / count for k, v in sums.items()}

    def _diverged(self, parts: dict[str, torch.Tensor]) -> None:
        bad = [k for k, v in parts.items() if not torch.isfinite(v)]
        raise TrainingDivergedError(
            f"non-finite {', '.join(bad)} at iteration {self.iteration + 1} "
            f"({', '.join(f'{k}={float(v.detach())}' for k, v in parts.items())}); the update was stopped before "
            "the optimizer step and the last checkpoint is untouched. Lower learning_rate, check the "
            "reward for extreme values, or enable whiten_scores."
        )

    # ------------------------------------------------------------------ health guards
    def _health_checks(self, kl_per_completion: torch.Tensor, rm_score: float, gold: float | None) -> None:
        cfg = self.config
        mean_kl = float(kl_per_completion.mean())
        # the single-sample estimate log pi - log pi_ref averages to KL >= 0 only in expectation: a
        # batch mean near zero can dip below it by noise, so warn when it is significantly negative
        sem = float(kl_per_completion.std()) / math.sqrt(len(kl_per_completion)) if len(kl_per_completion) > 1 else 0.0
        if mean_kl + 3 * sem < 0:
            warnings.warn(
                f"mean KL to the reference is negative ({mean_kl:.4f} +- {sem:.4f}) at iteration {self.iteration}: the "
                "samples do not come from the distribution the log-probs describe (top-k/top-p, a minimum length or "
                "EOS suppression applied when sampling but not when scoring; see llm_gym/models/policy.py)",
                KLWarning,
                stacklevel=3,
            )
        if mean_kl > cfg.kl_explosion:
            warnings.warn(
                f"mean KL to the reference is {mean_kl:.1f} nats (> kl_explosion={cfg.kl_explosion}) at iteration "
                f"{self.iteration}: the policy is running away; raise kl_coef, use adaptive_kl or lower learning_rate",
                KLWarning,
                stacklevel=3,
            )
        if gold is None:
            return
        self._rm_history.append(rm_score)
        self._gold_history.append(gold)
        w = cfg.overopt_window
        if len(self._rm_history) < 2 * w:
            return
        rm, gd = np.array(self._rm_history), np.array(self._gold_history)
        # a trend counts only when the two windows' means differ by more than two standard errors
        # of their difference: per-iteration scores are noisy, and a warning that cries wolf is ignored
        rm_up = _clear_change(rm[:w], rm[w:]) > 0
        gold_down = _clear_change(gd[:w], gd[w:]) < 0
        self._overopt_streak = self._overopt_streak + 1 if (rm_up and gold_down) else 0
        if self._overopt_streak == cfg.overopt_patience:
            warnings.warn(
                f"over-optimisation: over the last {w + cfg.overopt_patience - 1} iterations the reward-model score "
                f"rose ({np.mean(rm[:w]):+.3f} -> {np.mean(rm[w:]):+.3f}) while the gold score fell "
                f"({np.mean(gd[:w]):+.3f} -> {np.mean(gd[w:]):+.3f}). The policy is gaming the reward model -- or the "
                "reward's sign is flipped. Stop early, raise kl_coef, or retrain the reward model.",
                OverOptimizationWarning,
                stacklevel=3,
            )

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | PathLike[str]) -> None:
        """Write policy, reference, value head, optimizer, KL controller and rng states to `path`, atomically.

        Everything goes to a temporary folder beside `path`, which then replaces it, so a
        crash mid-save leaves the previous checkpoint intact. Under data parallelism every
        process calls it, the main process writes (the unwrapped modules: the checkpoint loads
        with any process count) and the others wait for it.
        """
        self.dist.main_process_only(self._write)(Path(path))

    def _write(self, path: Path) -> None:
        with atomic_dir(path) as tmp:
            self.policy.save_pretrained(tmp / "policy")
            self.reference.save_pretrained(tmp / "reference")
            save_file(self.value_head.state_dict(), str(tmp / "value_head.safetensors"))
            torch.save(
                {"optimizer": self.optimizer.state_dict(), "torch_rng": torch.get_rng_state()},
                tmp / "optimizer.pt",
            )
            state = {
                "format_version": _FORMAT_VERSION,
                "config": self.config.to_dict(),
                "num_timesteps": self.num_timesteps,
                "iteration": self.iteration,
                "kl_controller": self.kl_ctl.state_dict(),
                "rng": self.rng.bit_generator.state,
                "score_moments": vars(self.score_moments),
                "rm_history": list(self._rm_history),
                "gold_history": list(self._gold_history),
                "overopt_streak": self._overopt_streak,
            }
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2, default=_json_default))

    @classmethod
    def load(
        cls,
        path: str | PathLike[str],
        env: VectorEnv | None = None,
        rng: np.random.Generator | None = None,
        ptx_texts: Sequence[str] | None = None,
        logger: Logger | None = None,
        checkpoint_dir: str | PathLike[str] | None = None,
        device: torch.device | str | None = None,
        distributed: Distributed | None = None,
    ) -> PPO:
        """Resume from a checkpoint written by `save`.

        The environment, pretraining texts and logger are passed in again (they are not
        saved); the rng state is restored into `rng` (a fresh Generator by default). The
        logger is rewound to the checkpoint's step, so its curves continue without duplicates.
        A checkpoint loads the same with any process count: pass `distributed` (and each
        process's `device`) to resume data-parallel.
        """
        path = Path(path)
        state_file = path / "trainer_state.json"
        if not state_file.exists():
            raise FileNotFoundError(f"{path} is not a PPO checkpoint (no trainer_state.json)")
        state = json.loads(state_file.read_text())
        if state.get("format_version") != _FORMAT_VERSION:
            raise ValueError(f"{path}: checkpoint format {state.get('format_version')} is not {_FORMAT_VERSION}")
        if env is None:
            raise ValueError("PPO.load needs the environment: PPO.load(path, env=gymnasium.make_vec(...))")
        config = PPOConfig.from_dict(state["config"])
        if device is None and distributed is not None:
            device = distributed.device
        policy = Policy.from_pretrained(path / "policy", device=device)
        reference = Policy.from_pretrained(path / "reference", device=policy.device)
        rng = rng if rng is not None else np.random.default_rng()
        agent = cls(policy, env, config, rng, reference=reference, ptx_texts=ptx_texts, logger=logger,
                    checkpoint_dir=checkpoint_dir, distributed=distributed)
        rng.bit_generator.state = state["rng"]
        agent.value_head.load_state_dict(load_file(str(path / "value_head.safetensors"), device=str(policy.device)))
        extra = torch.load(path / "optimizer.pt", map_location=policy.device, weights_only=True)
        agent.optimizer.load_state_dict(extra["optimizer"])
        torch.set_rng_state(extra["torch_rng"].cpu())
        agent.kl_ctl.load_state_dict(state["kl_controller"])
        vars(agent.score_moments).update(state["score_moments"])
        agent.num_timesteps, agent.iteration = state["num_timesteps"], state["iteration"]
        agent._rm_history.extend(state["rm_history"])
        agent._gold_history.extend(state["gold_history"])
        agent._overopt_streak = state["overopt_streak"]
        agent.logger.resume_at(agent.num_timesteps + 1)
        return agent


def _rank_seed(seed: int, rank: int) -> int:
    """Process `rank`'s sampling seed for an iteration: rank 0 keeps `seed` (the single-process seed)."""
    return seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def _clear_change(before: np.ndarray, after: np.ndarray) -> int:
    """+1 / -1 when `after`'s mean is clearly above / below `before`'s (beyond 2 standard errors), else 0."""
    diff = float(np.mean(after) - np.mean(before))
    se = math.sqrt(np.var(before, ddof=1) / len(before) + np.var(after, ddof=1) / len(after))
    return int(np.sign(diff)) if abs(diff) > 2 * se else 0


def _frozen_copy(policy: Policy) -> Policy:
    ref = Policy(copy.deepcopy(policy.model), policy.tokenizer, device=policy.device, overflow=policy.overflow)
    ref.model.eval()
    return ref


def _json_default(obj: object) -> object:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")
