"""The loop every on-policy language-model agent shares; each algorithm (PPO, RLOO, GRPO) supplies only its maths.

Modelled on Stable-Baselines3's `OnPolicyAlgorithm` (the loop) and `ppo.py` (the maths). One
iteration of `OnPolicyAgent.train_iteration`:

1. rollout (`agents/rollout.py`): a prompt batch from the environment (grouped when
   `group_size > 1`), a completion each, the environment's score;
2. reference (`agents/reference.py`): the frozen reference's log-probs, the policy's own
   (the "old" log-probs of the ratio) and whatever else the algorithm needs before updating
   (`_before_update`: PPO's values);
3. advantages (`_advantages`, the algorithm's equations): from the scores, the KL to the
   reference (`agents/kl.py`, paid in the reward or in the loss) and the group structure;
4. update: `n_epochs` passes over the batch in minibatches of `minibatch_size`, each one
   optimizer step (`llm_gym/infra/update.py`) over micro-batches, with the algorithm's loss
   (`_loss`) normalised over the global minibatch (per token, per sequence, or per a
   constant, by `loss_reduction`) and, for ptx, InstructGPT's pretraining term (`agents/ptx.py`);
5. statistics, the KL controller's update, health checks (`agents/monitors.py`) and, every
   `checkpoint_every` iterations, an atomic checkpoint from which `load` resumes exactly.

Data parallel (`distributed=`): the environment's batch and `minibatch_size` are global.
Every process draws the same prompt batch and scores the whole batch (see rollout.py), so
scores, advantages computed from them, and the KL fed to the controller are identical on
every process. Each process takes its own completions in the order of one permutation of the
batch (drawn as a single process draws it) and a global minibatch is every process's next
`minibatch_size / W` of them, its losses normalised by global counts: with one minibatch per
epoch (`minibatch_size == num_envs`) DDP's gradient average is exactly the single-process
gradient; with several, the minibatches are stratified by process (the same sizes, other
members) and the runs agree in distribution, not to the float. Only the main process writes
checkpoints.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from os import PathLike
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

import numpy as np
import torch
from gymnasium.vector import VectorEnv
from safetensors.torch import load_file, save_file

from llm_gym.agents.base import Agent, CallbackLike, resolve_rng, sample_actions, vector_infos
from llm_gym.agents.checkpoint import (CheckpointError, load_policy_and_reference, open_checkpoint, read_json, reading,
                                      save_policy_and_reference, write_checkpoint)
from llm_gym.agents.kl import FixedKLController, KLEstimator, KLPenalty, kl_estimate, make_kl_controller
from llm_gym.agents.monitors import HealthMonitor
from llm_gym.agents.ptx import PtxMixer
from llm_gym.agents.reference import make_reference, reference_log_probs
from llm_gym.agents.rollout import Experience, collect_experience
from llm_gym.infra.atomic import recover_dir
from llm_gym.infra.configio import check_finite
from llm_gym.infra.distributed import Distributed, MixedPrecision, check_training_options
from llm_gym.infra.logger import Logger
from llm_gym.infra.update import UpdateStep
from llm_gym.models.lm import checkpointable_layers, checkpointed_layers
from llm_gym.models.policy import Evaluation, Policy, Rollout, SamplingConfig

__all__ = ["LossReduction", "OnPolicyAgent", "OnPolicyConfig", "RunningMoments"]

_FORMAT_VERSION = 1

LossReduction = Literal["token", "sequence", "constant"]
"""How a minibatch's per-token losses become one number: the mean over all its tokens ("token": PPO, DAPO),
the mean over sequences of each sequence's token mean ("sequence": GRPO), or the sum over tokens divided by
(sequences x max_new_tokens), a constant ("constant": Dr. GRPO, no length normalisation)."""


@dataclass(frozen=True)
class OnPolicyConfig:
    """What every on-policy agent is configured by; each algorithm's config adds its own fields."""

    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=24))
    """How completions are sampled; the log-probs (and so the KL) are those of this distribution."""
    learning_rate: float = 5e-5
    """AdamW learning rate of the policy (suits the built-in tiny model; ~1e-5 suits Hub-sized models)."""
    n_epochs: int = 4
    """Passes over each rollout batch."""
    minibatch_size: int = 8
    """Completions per gradient step; must divide the environment's batch size."""
    group_size: int = 1
    """Completions per prompt: the environment must be made with the same `group_size`."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip."""
    kl_coef: float = 0.05
    """Initial beta of the KL penalty to the reference."""
    kl_estimator: KLEstimator = "k1"
    """The per-token estimate of KL(pi || ref) the penalty uses (`agents/kl.py`); where it is paid is the algorithm's
    (PPO and RLOO: in the reward, where only k1 gives the reverse KL's gradient; GRPO: in the loss)."""
    adaptive_kl: bool = False
    """Steer beta toward `target_kl` (Ziegler et al. 2019) instead of keeping it fixed."""
    target_kl: float = 6.0
    """Target KL (nats per completion) of the adaptive controller."""
    kl_horizon: int = 10_000
    """Horizon (completions) of the adaptive controller."""
    ptx_coef: float = 0.0
    """InstructGPT's gamma: weight of the pretraining log-likelihood term (0 = none)."""
    ptx_batch_size: int = 8
    """Pretraining texts per ptx term."""
    score_scale: float = 1.0
    """Multiply the environment's score by this before it enters the reward."""
    whiten_scores: bool = False
    """Normalise scores by a running mean and std (kept in checkpoints) before scaling."""
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
    supports it (CUDA with bf16, CPU); elsewhere training falls back to float32 with a logged warning. On CPU attention
    runs on PyTorch's math kernel (the flash kernel's bf16 backward is slow there; `Distributed.autocast`). Load
    the environment's reward model with `dtype=torch.bfloat16` to score in bf16 too."""
    gradient_accumulation_steps: int = 1
    """Each minibatch is processed in this many micro-batches before one optimizer step (less memory;
    the same update: losses are normalised by the whole minibatch)."""
    gradient_checkpointing: bool = False
    """Recompute each transformer layer's activations in the backward pass instead of keeping them (Hugging Face's
    gradient checkpointing, through `torch.utils.checkpoint` on each layer): less memory in the update for a second
    forward pass of each layer (at 124M on CPU: 1.12x the time, a quarter of a minibatch's memory rise;
    `experiments/README.md`); the same gradients. The update still runs with dropout off, in every architecture."""
    fused_adamw: bool = False
    """AdamW as one fused kernel per step (torch's `fused=True`; on CPU it needs torch >= 2.4): 0.18x-0.20x the
    step of torch's default at 124M on CPU, and results that differ from the default's in the last bit, so it is an
    option (its learning result matches the default's within seed noise: `experiments/README.md`)."""

    def __post_init__(self) -> None:
        check_finite(self, allow_inf=("kl_explosion",))  # kl_explosion = inf: never warn
        name = type(self).__name__
        check_training_options(name, self.mixed_precision, self.gradient_accumulation_steps)
        for key in ("n_epochs", "minibatch_size", "group_size", "ptx_batch_size", "kl_horizon", "overopt_window",
                    "overopt_patience"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}.{key} must be a positive int, got {v!r}")
        for key in ("learning_rate", "max_grad_norm", "target_kl", "score_scale", "kl_explosion"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{name}.{key} must be > 0, got {getattr(self, key)!r}")
        for key in ("adaptive_kl", "whiten_scores", "fused_adamw", "gradient_checkpointing"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{name}.{key} must be true or false, got {getattr(self, key)!r}")
        if self.kl_estimator not in ("k1", "k2", "k3"):
            raise ValueError(f"{name}.kl_estimator must be 'k1', 'k2' or 'k3', got {self.kl_estimator!r}")
        for key in ("kl_coef", "ptx_coef"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"{name}.{key} must be >= 0, got {getattr(self, key)!r}")
        if self.overopt_window < 2:
            raise ValueError(f"{name}.overopt_window must be >= 2 (a trend needs a spread), got {self.overopt_window}")
        for key in ("log_samples_every", "checkpoint_every"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name}.{key} must be an int >= 0, got {v!r}")
        if not isinstance(self.sampling, SamplingConfig):
            raise TypeError(f"{name}.sampling must be a SamplingConfig")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (for checkpoints and hparams)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OnPolicyConfig:
        """The config back from `to_dict` (a checkpoint written before a field existed takes its default)."""
        data = dict(data)
        data["sampling"] = SamplingConfig(**data["sampling"])
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class RunningMoments:
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


class Snapshot(NamedTuple):
    """The batch as it was before the update: what every algorithm's loss compares against."""

    experience: Experience
    """Prompts, completions, this process's rollout shard, the scores."""
    own: Evaluation
    """The policy's log-probs (the ratio's pi_old), entropies and, when asked for, hidden states, on this shard."""
    ref_logprobs: torch.Tensor
    """(b, T) the reference's log-probs on this shard."""
    mask: torch.Tensor
    """(b, T) float completion mask."""
    paid: torch.Tensor
    """(b,) this shard's scores as paid (whitened if asked, scaled)."""
    paid_all: np.ndarray
    """(B,) the whole batch's scores as paid (every process)."""


class OnPolicyAgent(Agent):
    """The shared loop (see the module docstring); subclasses implement `_advantages` and `_loss`.

    Args:
        policy: the policy to train (starts from SFT in the InstructGPT pipeline).
        env: a batched prompt-bandit environment (`gymnasium.make_vec("llm_gym/...", num_envs=B)`, with
            `group_size=G` when the config's group size is G); its reward is the score; `info["gold"]`,
            when present, is logged as `objective/gold`.
        config: hyperparameters.
        rng: the run's randomness (prompt batches, sampling seeds, minibatch order, ptx batches).
        seed: instead of `rng`, an int as in Stable-Baselines3: `seed=s` is `rng=np.random.default_rng(s)`
            and gives the same run (pass one of the two, not both).
        reference: the frozen reference; by default a frozen copy of `policy` as it is now.
        ptx_texts: pretraining texts for ptx (required when `config.ptx_coef > 0`).
        logger: where metrics go.
        checkpoint_dir: where `checkpoint_every` writes `checkpoint/` (atomically).
        distributed: the process group (data parallel); None = a single process. Every process
            passes an rng with the same seed, the same environment and its own device's policy.

    `learn`'s callback may be a plain `callback(agent, step)`, an SB3 `BaseCallback` or a list of
    them (`agents/base.py`): `on_rollout_start()` precedes every iteration and `on_step()` and
    `on_rollout_end()` follow it (`num_envs` one-step episodes; see `learn`).
    """

    config_class: ClassVar[type[OnPolicyConfig]] = OnPolicyConfig
    algorithm: ClassVar[str] = ""
    """The name written into checkpoints, so that one algorithm's checkpoint is not loaded as another's."""
    kl_penalty: ClassVar[KLPenalty] = "reward"
    """Where the algorithm pays the KL: in the reward (logged as `objective/non_score_reward`) or in its loss."""
    needs_hidden: ClassVar[bool] = False
    """Whether the snapshot keeps the policy's hidden states (a value head reads them)."""
    divergence_hint: ClassVar[str] = "lower learning_rate, check the reward for extreme values, or enable whiten_scores"

    @property
    def entropy_in_loss(self) -> bool:
        """Whether the loss uses the policy's entropy (PPO's bonus, when `ent_coef` is not 0): only then is the
        full-vocabulary entropy differentiated; otherwise it is computed for the logs alone, without a graph."""
        return False

    def __init__(
        self,
        policy: Policy,
        env: VectorEnv,
        config: OnPolicyConfig,
        rng: np.random.Generator | None = None,
        reference: Policy | None = None,
        ptx_texts: Sequence[str] | None = None,
        logger: Logger | None = None,
        checkpoint_dir: str | PathLike[str] | None = None,
        distributed: Distributed | None = None,
        *,
        seed: int | None = None,
    ) -> None:
        dist = distributed if distributed is not None else Distributed()
        if not isinstance(config, self.config_class):
            raise TypeError(f"config must be a {self.config_class.__name__}, got {type(config).__name__}")
        rng = resolve_rng(rng, seed, type(self).__name__)
        num_envs = getattr(env, "num_envs", None)
        if not isinstance(env, VectorEnv) or not num_envs:
            raise TypeError(
                "env must be a batched environment: gymnasium.make_vec('llm_gym/PromptBandit-v0', num_envs=16, ...)"
            )
        env_group = getattr(env.unwrapped, "group_size", 1)
        if env_group != config.group_size:
            raise ValueError(
                f"the config's group_size is {config.group_size} but the environment hands out each prompt {env_group} "
                f"time(s); make it with gymnasium.make_vec(..., num_envs={num_envs}, group_size={config.group_size})"
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
        self.ptx = PtxMixer(self.ptx_texts, config.ptx_coef, config.ptx_batch_size, policy, dist) if config.ptx_coef > 0 else None
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.reference = reference if reference is not None else make_reference(policy)
        for p in self.reference.model.parameters():
            p.requires_grad_(False)
        self.kl_ctl: FixedKLController = make_kl_controller(config.kl_coef, config.adaptive_kl, config.target_kl,
                                                            config.kl_horizon)
        self._build_modules()
        if config.gradient_checkpointing:
            checkpointable_layers(policy.model)  # a model without such layers is refused now, not at the first update
        # torch's own choice unless fused: the per-parameter loop on CPU, the multi-tensor form on CUDA (on CPU the
        # multi-tensor form measured 0.84x-0.95x the loop's step at 124M, once 2.27x: not worth its temporaries)
        fast = {"fused": True} if config.fused_adamw else {}
        try:
            self.optimizer = torch.optim.AdamW(self._param_groups(), eps=1e-5, **fast)
        except (RuntimeError, ValueError) as exc:
            if not config.fused_adamw:
                raise
            raise ValueError(f"{type(config).__name__}.fused_adamw: this torch ({torch.__version__}) has no fused AdamW "
                             f"for these parameters ({exc}); set fused_adamw = false, or use torch >= 2.4 on CPU") from exc
        # training forwards go through the data-parallel wrappers (the modules themselves otherwise)
        self._train_model, _ = dist.prepare(policy.model)
        self.update_step = UpdateStep(self.optimizer, [self._train_model, *self._prepare_modules()], distributed=dist,
                                      max_grad_norm=config.max_grad_norm, mixed_precision=config.mixed_precision,
                                      hint=self.divergence_hint)
        self.loss_reduction = self._reduction()
        self.score_moments = RunningMoments()
        self.monitor = HealthMonitor(config.kl_explosion, config.overopt_window, config.overopt_patience)
        self.num_timesteps = 0
        self.iteration = 0
        self._last_experience: Experience | None = None
        """The last batch `train_iteration` collected, as the environment saw it (for the callbacks' locals)."""

    # ------------------------------------------------------------------ what an algorithm adds
    def _reduction(self) -> LossReduction:
        """How `_loss`'s mean is taken (it decides the global count that normalises each micro-batch)."""
        return "token"

    def _build_modules(self) -> None:
        """Create the algorithm's own trainable modules (PPO's value head); none by default."""

    def _param_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups: the policy's trainable parameters at `learning_rate`, plus the algorithm's own.

        Frozen parameters (a LoRA policy's base) get no optimizer entry; a plain model's are all
        trainable and keep their order (checkpointed optimizer states index them by position).
        """
        trainable = [p for p in self.policy.model.parameters() if p.requires_grad]
        return [{"params": trainable, "lr": self.config.learning_rate}]

    def _prepare_modules(self) -> list[torch.nn.Module]:
        """The algorithm's own modules wrapped for data parallelism (they join the update step's gradient sync)."""
        return []

    def _modules_to_save(self) -> dict[str, torch.nn.Module]:
        """The algorithm's own modules a checkpoint holds, by file stem (`value_head` -> value_head.safetensors)."""
        return {}

    def _before_update(self, snapshot: Snapshot) -> dict[str, torch.Tensor]:
        """Tensors to compute from the snapshot without gradients, before any update (PPO's old values)."""
        return {}

    def _advantages(self, snapshot: Snapshot, extra: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The per-completion or per-token tensors the loss needs (advantages, returns...), on this process's shard.

        Each value is indexed by completion along its first dimension; `_loss` receives them indexed
        by a micro-batch."""
        raise NotImplementedError

    def _forward(self, ro: Rollout, idx: torch.Tensor) -> Any:
        """The forward pass of one micro-batch, with gradients, under mixed precision: the policy's evaluation
        (through the data-parallel wrapper) by default; PPO adds its values."""
        return self.policy.evaluate(ro.prompt_ids[idx], ro.prompt_mask[idx], ro.completion_ids[idx],
                                    ro.completion_mask[idx], self.config.sampling, with_hidden=self.needs_hidden,
                                    model=self._train_model, entropy="grad" if self.entropy_in_loss else "value")

    def _loss(self, out: Any, mb: dict[str, torch.Tensor],
              mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The algorithm's loss on one micro-batch, averaged as `loss_reduction` says.

        Args:
            out: what `_forward` returned for the micro-batch (with gradients; its entropy has them only when
                `entropy_in_loss` is True: a loss that uses the entropy overrides that property).
            mb: the tensors `_advantages` returned, plus `old_logprobs` and `ref_logprobs`, indexed by the micro-batch.
            mask: (b, T) float completion mask of the micro-batch.

        Returns:
            (loss, parts that must be finite, diagnostics): `parts` includes "loss".
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ agent interface
    def _act(self, observations: Sequence[str], deterministic: bool) -> list[str]:
        """One completion per prompt with the training sampling settings (greedy, top_k=1, when `deterministic`)."""
        return sample_actions(self.policy, self.config.sampling, self.rng, observations, deterministic)

    def get_env(self) -> VectorEnv:
        """The batched prompt environment the agent trains on."""
        return self.env

    def learn(self, total_steps: int, callback: CallbackLike = None) -> OnPolicyAgent:
        """Train until `total_steps` completions have been generated in total (across resumes).

        An SB3 callback sees, per iteration (SB3's protocol for one-step episodes, `agents/base.py`):
        `on_rollout_start()`; the rollout and update; `num_timesteps` advanced by the batch
        (`num_envs` completions); `update_locals` with `dones` (`num_envs` Trues: every episode ends
        after one step), `infos` (the env step's info, one dict per completion), `rewards` (the
        env's scores), `actions` (the completions), `obs` (the prompts) and `stats` (what the
        iteration logged); then `on_step()`, whose False stops `learn`, and `on_rollout_end()`.
        So `ProgressBarCallback` advances by `num_envs` per iteration and
        `StopTrainingOnMaxEpisodes(max_episodes=N)` stops after N iterations (`N * num_envs` completions).
        """
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
        with self._training_callback(callback, total_steps) as cb:
            while self.num_timesteps < total_steps:
                cb.on_rollout_start()
                self._last_experience = None
                stats = self.train_iteration()  # the public step: what a subclass (or a test) overrides runs
                exp = self._last_experience
                if self.config.checkpoint_every and self.iteration % self.config.checkpoint_every == 0:
                    self.save(self.checkpoint_dir / "checkpoint")
                n = len(exp.scores) if exp is not None else self.env.num_envs  # the whole batch, on every process
                rollout_locals: dict[str, Any] = {"dones": np.ones(n, dtype=bool), "stats": stats}
                if exp is not None:
                    rollout_locals.update(obs=exp.prompts, actions=exp.completions, rewards=exp.scores,
                                          infos=vector_infos(exp.info, n))
                if not self._end_of_step(cb, rollout_locals):
                    break
        return self

    # ------------------------------------------------------------------ one iteration
    def train_iteration(self) -> dict[str, float]:
        """Rollout, scoring, reference pass, advantages and update on one batch; returns the logged stats.

        The batch as the environment saw it stays in `_last_experience` (for the callbacks' locals).
        """
        cfg, dist = self.config, self.dist
        self.policy.model.eval()  # dropout off: pi/pi_old = 1 before the first update
        amp = self.update_step.autocast()
        experience = collect_experience(self.policy, self.env, cfg.sampling, self.rng, dist, amp)
        timings = dict(experience.timings)
        ro = experience.rollout

        t = time.perf_counter()
        with torch.no_grad(), self.update_step.autocast():
            ref_logprobs = reference_log_probs(self.reference, ro, cfg.sampling)
            own = self.policy.evaluate(ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask,
                                       cfg.sampling, with_hidden=self.needs_hidden)
        mask = ro.completion_mask.float()
        paid = experience.scores
        if cfg.whiten_scores:
            self.score_moments.update(paid)  # global scores: every process keeps the same moments
            paid = self.score_moments.normalize(paid)
        paid = paid * cfg.score_scale
        paid_t = torch.as_tensor(np.asarray(dist.shard(paid)), dtype=torch.float32, device=self.policy.device)
        snapshot = Snapshot(experience, own, ref_logprobs, mask, paid_t, paid)
        with torch.no_grad(), self.update_step.autocast():
            extra = self._before_update(snapshot)
        timings["reference"] = time.perf_counter() - t

        t = time.perf_counter()
        prepared = self._advantages(snapshot, extra)
        with checkpointed_layers(self.policy.model, cfg.gradient_checkpointing):
            train_stats = self._update(snapshot, prepared, len(experience.scores))
        timings["update"] = time.perf_counter() - t
        self._last_experience = experience
        return self._finish_iteration(snapshot, train_stats, timings)

    def _finish_iteration(self, snapshot: Snapshot, train_stats: dict[str, float], timings: dict[str, float]) -> dict[str, float]:
        """Statistics, the KL controller, logging, samples and health checks after an update."""
        cfg, dist, exp = self.config, self.dist, snapshot.experience
        mask = snapshot.mask
        kl = kl_estimate(snapshot.own.logprobs, snapshot.ref_logprobs, "k1") * mask
        paid = kl_estimate(snapshot.own.logprobs, snapshot.ref_logprobs, cfg.kl_estimator) * mask
        # per-completion KL (k1, and the estimate paid), entropy and length of the whole batch, on every process
        local = torch.stack([kl.sum(-1), paid.sum(-1), (snapshot.own.entropy * mask).sum(-1), mask.sum(-1)], dim=1)
        gathered = torch.cat([torch.as_tensor(part) for part in dist.gather_object(local.tolist())]) if dist.world_size > 1 else local
        kl_per_completion, paid_per_completion, entropy_sum, lengths = gathered.unbind(1)
        mean_kl = float(kl_per_completion.mean())
        kl_coef = self.kl_ctl.value
        n = len(exp.scores)
        self.kl_ctl.update(mean_kl, n_steps=n)  # the global KL: every process steers beta alike
        self.iteration += 1
        self.num_timesteps += n
        stats = {
            "objective/rm_score": float(exp.scores.mean()),
            "objective/kl": mean_kl,
            "objective/kl_coef": kl_coef,
            "objective/entropy": float(entropy_sum.sum() / lengths.sum().clamp(min=1) * lengths.mean()),
            "rollout/completion_tokens": float(lengths.mean()),
            "rollout/truncated_prompts": dist.sum_float(exp.rollout.num_truncated_prompts),
            **{f"train/{k}": v for k, v in dist.reduce_mean(train_stats).items()},
            **{f"time/{k}": v for k, v in dist.reduce_mean(timings).items()},
        }
        if self.kl_penalty == "reward":  # what the reward paid for the KL, beside the score
            stats["objective/non_score_reward"] = float((-kl_coef * paid_per_completion).mean())
        gold = exp.info.get("gold")
        if gold is not None:
            stats["objective/gold"] = float(np.mean(gold))
        self.logger.record_dict(stats)
        self.logger.dump(self.num_timesteps)
        if cfg.log_samples_every and (self.iteration - 1) % cfg.log_samples_every == 0:
            lines = [f"{p} |{c}   [{s:+.3f}]" for p, c, s in zip(exp.prompts, exp.completions, exp.scores)]
            self.logger.log_text("rollout/samples", "\n".join(lines[:8]), step=self.num_timesteps)
        self.monitor.check(self.iteration, kl_per_completion.cpu().numpy(), stats["objective/rm_score"], stats.get("objective/gold"))
        return stats

    def _update(self, snapshot: Snapshot, prepared: dict[str, torch.Tensor], global_size: int) -> dict[str, float]:
        """`n_epochs` passes of minibatch steps over this process's shard; returns the mean of each statistic."""
        cfg, dist, ro = self.config, self.dist, snapshot.experience.rollout
        n = ro.completion_ids.shape[0]
        offset = dist.rank * n  # this process holds completions offset .. offset + n - 1 of the batch
        local_minibatch = cfg.minibatch_size // dist.world_size
        tensors = {**prepared, "old_logprobs": snapshot.own.logprobs, "ref_logprobs": snapshot.ref_logprobs}
        update = self.update_step
        sums: dict[str, float] = {}
        count = 0
        for _ in range(cfg.n_epochs):
            # one permutation of the whole batch, drawn as a single process draws it; each process
            # takes its own completions in that order (with one process: the permutation itself)
            perm = self.rng.permutation(global_size)
            local = perm[(perm >= offset) & (perm < offset + n)] - offset
            order = torch.as_tensor(local, device=self.policy.device)
            for start in range(0, n, local_minibatch):
                mb = order[start : start + local_minibatch]
                micro = [m for m in torch.tensor_split(mb, cfg.gradient_accumulation_steps) if len(m)]
                ptx_batches = self.ptx.draw(self.rng, len(micro)) if self.ptx is not None else []
                units, ptx_tokens = dist.sum_floats(self._units(ro, mb), PtxMixer.tokens(ptx_batches))
                local_units = max(self._units(ro, mb), 1.0)
                update.context = f"at iteration {self.iteration + 1}"
                step_parts: dict[str, float] = {}
                with update.accumulate():
                    for k, idx in enumerate(micro):
                        ptx = torch.zeros((), device=self.policy.device)
                        if k < len(ptx_batches):
                            ptx = self.ptx.backward(update, self._train_model, ptx_batches[k], ptx_tokens)
                        mask = ro.completion_mask[idx].float()
                        with update.micro(sync=k + 1 == len(micro)):
                            with update.autocast():
                                out = self._forward(ro, idx)
                            loss, parts, diagnostics = self._loss(out, {key: v[idx] for key, v in tensors.items()}, mask)
                            micro_units = self._units(ro, idx)
                            update.backward(loss * micro_units * update.scale(units), {**parts, "ptx_loss": ptx})
                        weight = micro_units / local_units
                        logged = {**parts, "ptx_loss": ptx, "loss": loss + cfg.ptx_coef * ptx, **diagnostics}
                        for key, v in logged.items():
                            step_parts[key] = step_parts.get(key, 0.0) + weight * float(v.detach())
                for key, v in {**step_parts, "grad_norm": update.grad_norm}.items():
                    sums[key] = sums.get(key, 0.0) + v
                count += 1
        return {k: v / count for k, v in sums.items()}

    def _units(self, ro: Rollout, idx: torch.Tensor) -> float:
        """What `loss_reduction` averages over, in these completions: tokens, sequences, or sequences x max length."""
        if self.loss_reduction == "token":
            return float(ro.completion_mask[idx].sum())
        if self.loss_reduction == "sequence":
            return float(len(idx))
        return float(len(idx) * self.config.sampling.max_new_tokens)

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | PathLike[str]) -> None:
        """Write policy, reference, the algorithm's modules, optimizer, KL controller and rng states to `path`, atomically.

        Everything goes to a temporary folder beside `path`, sealed by a manifest of sha256
        hashes written last (`agents/checkpoint.py`), which then replaces `path`, so a crash
        mid-save leaves the previous checkpoint intact (`load` repairs a save cut short between
        its final renames). Under data parallelism every process calls it, the main process
        writes (the unwrapped modules: the checkpoint loads with any process count) and the
        others wait for it.
        """
        self.dist.main_process_only(self._write)(Path(path))

    def _write(self, path: Path) -> None:
        with write_checkpoint(path) as tmp:
            models = save_policy_and_reference(self.policy, self.reference, tmp)
            for stem, module in self._modules_to_save().items():
                save_file(module.state_dict(), str(tmp / f"{stem}.safetensors"))
            torch.save({"optimizer": self.optimizer.state_dict(), "torch_rng": torch.get_rng_state()}, tmp / "optimizer.pt")
            state = {
                "format_version": _FORMAT_VERSION,
                "algorithm": self.algorithm,
                "config": self.config.to_dict(),
                "num_timesteps": self.num_timesteps,
                "iteration": self.iteration,
                "kl_controller": self.kl_ctl.state_dict(),
                "rng": self.rng.bit_generator.state,
                "score_moments": vars(self.score_moments),
                **self.monitor.state_dict(),
                **models,
            }
            (tmp / _STATE_FILE).write_text(json.dumps(state, indent=2, default=_json_default))

    @classmethod
    def checkpoint_iteration(cls, path: str | PathLike[str]) -> int | None:
        """The iteration the checkpoint at `path` was saved after, or None when there is none (for deciding to resume).

        A save cut short by a crash is repaired first, as `load` does, so the last good
        checkpoint is found even when the crash came between the final renames.

        Raises:
            CheckpointError: the folder exists but its `trainer_state.json` is missing or damaged.
        """
        path = recover_dir(path)
        if not path.exists():
            return None
        state = _read_state(path, cls.algorithm)
        with reading(path / _STATE_FILE, fix=_fix(path, cls.algorithm)):
            return int(state["iteration"])

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
    ) -> OnPolicyAgent:
        """Resume from a checkpoint written by `save`.

        The environment, pretraining texts and logger are passed in again (they are not
        saved); the rng state is restored into `rng` (a fresh Generator by default). The
        logger is rewound to the checkpoint's step, so its curves continue without duplicates.
        A checkpoint loads the same with any process count: pass `distributed` (and each
        process's `device`) to resume data-parallel.

        The folder is checked before anything is restored: a save interrupted by a crash is
        finished or rolled back (`llm_gym.infra.atomic.recover_dir`), and every file must match
        the manifest of sha256 hashes written with it. A checkpoint saved before manifests
        existed has none: it loads unverified, with a logged warning, and its weights must
        still fit its `config.json`.

        Raises:
            FileNotFoundError: no checkpoint at `path`.
            CheckpointError: (a `ValueError`) a file is damaged, missing, added or inconsistent
                with the others, or the checkpoint is another algorithm's; the message names the
                file and says what to do. The checkpoint's files are left as they are.
        """
        path = Path(path)
        fix = _fix(path, cls.algorithm)
        open_checkpoint(path, marker=_STATE_FILE, kind=f"{cls.__name__} checkpoint", fix=fix)
        state = _read_state(path, cls.algorithm)
        if env is None:
            raise ValueError(f"{cls.__name__}.load needs the environment: {cls.__name__}.load(path, env=gymnasium.make_vec(...))")
        with reading(path / _STATE_FILE, fix=fix):
            config = cls.config_class.from_dict(state["config"])
        if device is None and distributed is not None:
            device = distributed.device
        policy, reference = load_policy_and_reference(path, state, device=device, fix=fix)
        module_states = {}
        for stem in cls._saved_module_stems():
            file = path / f"{stem}.safetensors"
            with reading(file, fix=fix):
                module_states[stem] = load_file(str(file), device=str(policy.device))
        extra_file = path / "optimizer.pt"
        with reading(extra_file, fix=fix):
            extra = torch.load(extra_file, map_location=policy.device, weights_only=True)
        rng = rng if rng is not None else np.random.default_rng()
        agent = cls(policy, env, config, rng, reference=reference, ptx_texts=ptx_texts, logger=logger,
                    checkpoint_dir=checkpoint_dir, distributed=distributed)
        for stem, module in agent._modules_to_save().items():
            with reading(path / f"{stem}.safetensors", fix=fix):
                module.load_state_dict(module_states[stem])
        with reading(extra_file, fix=fix):
            agent.optimizer.load_state_dict(extra["optimizer"])
            torch_rng = extra["torch_rng"].cpu()
        with reading(path / _STATE_FILE, fix=fix):
            rng.bit_generator.state = state["rng"]
            agent.kl_ctl.load_state_dict(state["kl_controller"])
            vars(agent.score_moments).update(state["score_moments"])
            agent.num_timesteps, agent.iteration = int(state["num_timesteps"]), int(state["iteration"])
            agent.monitor.load_state_dict(state)
        torch.set_rng_state(torch_rng)
        agent.logger.resume_at(agent.num_timesteps + 1)
        return agent

    @classmethod
    def _saved_module_stems(cls) -> tuple[str, ...]:
        """The file stems of `_modules_to_save`, known before an agent exists (to read them before building it)."""
        return ()


_STATE_FILE = "trainer_state.json"


def _fix(path: Path, algorithm: str) -> str:
    """What to do about a damaged checkpoint at `path` (the end of every error `load` raises about it)."""
    return f"delete {path} to train from the start (a pipeline rerun then starts that {algorithm} run again from iteration 0)"


def _read_state(path: Path, algorithm: str) -> dict[str, Any]:
    """A checkpoint's trainer_state.json, checked to be a JSON object of this format version, written by `algorithm`."""
    file = path / _STATE_FILE
    state = read_json(file, fix=_fix(path, algorithm))
    version = state.get("format_version") if isinstance(state, dict) else None
    if version != _FORMAT_VERSION:
        raise CheckpointError(f"{file}: checkpoint format {version!r} is not {_FORMAT_VERSION}, the one this llm_gym "
                              "reads; resume it with the llm_gym version that wrote it")
    written_by = state.get("algorithm", "ppo")  # checkpoints from before the shared loop are PPO's
    if written_by != algorithm:
        raise CheckpointError(f"{path} is a {written_by} checkpoint; load it with that algorithm's class (not {algorithm})")
    return state


def _json_default(obj: object) -> object:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")
