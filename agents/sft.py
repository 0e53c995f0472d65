"""Supervised fine-tuning (InstructGPT stage 1): full fine-tuning on demonstrations, loss on the answer only.

Each demonstration is `prompt + completion + EOS`; the loss is the next-token
cross-entropy on the completion tokens and the EOS (so the model learns to stop), with
the prompt tokens masked out (Ouyang et al. 2022, §3.5). A held-out split is evaluated
after every epoch and logged as `train/sft_heldout_loss`.

Data parallel (`distributed=`, see `llm_gym.infra.distributed`): `batch_size` is the global
batch; each process trains on its shard of every batch, the loss is normalised by the
global count of answer tokens, so N processes compute the single-process update.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from llm_gym.agents.base import resolve_rng
from llm_gym.core.task import Demonstration
from llm_gym.infra.configio import check_finite
from llm_gym.infra.distributed import Distributed, MixedPrecision, check_training_options
from llm_gym.infra.logger import Logger
from llm_gym.infra.update import UpdateStep
from llm_gym.models.lm import labelled_tokens, lm_loss
from llm_gym.models.policy import Policy
from llm_gym.models.text import TokenBatch, append_eos, encode, pad_right

__all__ = ["SFTConfig", "SFTTrainer", "SFTBatch", "sft_batch"]


@dataclass(frozen=True)
class SFTConfig:
    """Hyperparameters of supervised fine-tuning."""

    epochs: int = 2
    """Passes over the training demonstrations."""
    batch_size: int = 16
    """Demonstrations per optimizer step."""
    learning_rate: float = 5e-4
    """Peak AdamW learning rate (linear decay to 10% over training)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip."""
    heldout_fraction: float = 0.1
    """Share of demonstrations kept out of training to measure the held-out loss (0 = none)."""
    mixed_precision: MixedPrecision = "no"
    """"bf16" runs forward passes under bf16 autocast where the device supports it (CUDA with bf16,
    CPU); elsewhere training falls back to float32 with a logged warning. "no" = float32."""
    gradient_accumulation_steps: int = 1
    """Each batch of `batch_size` is processed in this many micro-batches before one optimizer step
    (less memory; the same update, since the loss is normalised by the whole batch's token count)."""

    def __post_init__(self) -> None:
        check_finite(self)
        check_training_options("SFTConfig", self.mixed_precision, self.gradient_accumulation_steps)
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"SFTConfig.{name} must be a positive int, got {v!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"SFTConfig.learning_rate must be > 0, got {self.learning_rate!r}")
        if self.weight_decay < 0 or not self.max_grad_norm > 0:
            raise ValueError("SFTConfig.weight_decay must be >= 0 and max_grad_norm > 0")
        if not 0 <= self.heldout_fraction < 1:
            raise ValueError(f"SFTConfig.heldout_fraction must be in [0, 1), got {self.heldout_fraction!r}")


SFTBatch = TokenBatch
"""What `sft_batch` returns: right-padded ids, attention mask and labels (-100 on prompt and padding)."""


def sft_batch(policy: Policy, demos: Sequence[Demonstration]) -> TokenBatch:
    """Tokenize `prompt + completion + EOS` per demonstration; only completion and EOS are labelled.

    The prompt is tokenized exactly as `Policy.sample` tokenizes it (BOS convention
    included) and the completion separately, so training sees the token boundary the policy
    will see when it continues a prompt. A sequence longer than the context keeps its last
    `context_length` tokens (the whole answer when it fits; unlike the policy's and the reward
    model's cut, this one does not keep a leading BOS).
    """
    tok = policy.tokenizer
    prompts = encode(tok, [d.prompt for d in demos])
    # a chat-rendered answer already ends with the template's end-of-turn EOS: end it with exactly one
    answers = append_eos(encode(tok, [d.completion for d in demos], special_tokens=False), tok.eos_token_id,
                         unless_present=True)
    rows = [(p + a)[-policy.context_length :] for p, a in zip(prompts, answers)]  # keep the answer if a prompt is too long
    batch = pad_right(rows, tok.pad_token_id, label_from=[len(r) - min(len(a), len(r)) for r, a in zip(rows, answers)])
    return TokenBatch(*(t.to(policy.device) for t in batch))


def _answer_loss(model: torch.nn.Module, batch: TokenBatch) -> tuple[torch.Tensor, int]:
    """Summed next-token NLL over answer tokens (the only labelled ones), and their count."""
    nll = lm_loss(model, batch.input_ids, batch.attention_mask, batch.labels, reduction="sum")
    return nll, labelled_tokens(batch.labels)


class SFTTrainer:
    """Fine-tunes a `Policy` in place on demonstrations.

    Args:
        config: hyperparameters.
        rng: shuffles and splits the demonstrations (randomness is passed in); or `seed=s`, the same as
            `rng=np.random.default_rng(s)`.
        logger: receives `train/sft_loss`, `train/sft_heldout_loss` (values already reduced over
            processes; give non-main processes an in-memory logger: `distributed.make_logger`).
        distributed: the process group (data parallel); None = a single process. Every process
            must pass an rng with the same seed.

    Example:
        >>> trainer = SFTTrainer(SFTConfig(epochs=1), rng=np.random.default_rng(0))  # doctest: +SKIP
        >>> metrics = trainer.fit(policy, task.demonstrations)  # doctest: +SKIP
        >>> policy.save_pretrained("runs/sft")  # doctest: +SKIP
    """

    def __init__(
        self,
        config: SFTConfig,
        rng: np.random.Generator | None = None,
        logger: Logger | None = None,
        distributed: Distributed | None = None,
        *,
        seed: int | None = None,
    ) -> None:
        self.config = config
        self.rng = resolve_rng(rng, seed, "SFTTrainer")
        self.logger = logger if logger is not None else Logger(None)
        self.dist = distributed if distributed is not None else Distributed()

    @torch.no_grad()
    def heldout_loss(self, policy: Policy, demos: Sequence[Demonstration]) -> float:
        """Mean per-token NLL of the answers in `demos` (each process scores its shard; the sums are reduced)."""
        was_training = policy.model.training
        policy.model.eval()
        total, count = 0.0, 0
        for start in range(0, len(demos), self.config.batch_size):
            part = self.dist.shard(demos[start : start + self.config.batch_size])
            if part:
                nll, n = _answer_loss(policy.model, sft_batch(policy, part))
                total, count = total + float(nll), count + n
        policy.model.train(was_training)
        total, count = self.dist.sum_floats(total, count)
        return total / max(count, 1)

    def fit(self, policy: Policy, demonstrations: Sequence[Demonstration]) -> dict[str, float]:
        """Fine-tune `policy` on `demonstrations`; returns the final train and held-out losses."""
        demos = list(demonstrations)
        if not demos:
            raise ValueError("SFT needs at least one demonstration")
        order = self.rng.permutation(len(demos))
        n_heldout = int(round(self.config.heldout_fraction * len(demos)))
        if n_heldout >= len(demos):
            raise ValueError(f"heldout_fraction={self.config.heldout_fraction} leaves no training demonstrations")
        heldout = [demos[i] for i in order[:n_heldout]]
        train = [demos[i] for i in order[n_heldout:]]

        cfg, dist = self.config, self.dist
        steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
        total_steps = steps_per_epoch * cfg.epochs
        opt = torch.optim.AdamW(policy.model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - 0.9 * s / max(1, total_steps))
        model, _ = dist.prepare(policy.model)
        update = UpdateStep(opt, [model], distributed=dist, max_grad_norm=cfg.max_grad_norm,
                            mixed_precision=cfg.mixed_precision, scheduler=sched, hint="lower learning_rate")
        metrics: dict[str, float] = {}
        if heldout:
            metrics["sft_heldout_loss_before"] = self.heldout_loss(policy, heldout)
            self.logger.record("train/sft_heldout_loss", metrics["sft_heldout_loss_before"])
            self.logger.dump(0)
        step = 0
        policy.model.train()
        for epoch in range(cfg.epochs):
            perm = self.rng.permutation(len(train))
            epoch_nll, epoch_tokens = 0.0, 0
            for start in range(0, len(train), cfg.batch_size):
                global_batch = [train[i] for i in perm[start : start + cfg.batch_size]]
                # this process's shard, in micro-batches (zero-weighted stand-ins for empty pieces)
                batches = [(sft_batch(policy, p), w) for p, w in dist.micro_shards(global_batch, cfg.gradient_accumulation_steps)]
                n_global = dist.sum_float(sum(labelled_tokens(b.labels) for b, w in batches if w))
                update.context = f"at SFT step {step}"
                with update.accumulate():
                    for k, (batch, weight) in enumerate(batches):
                        with update.micro(sync=k + 1 == len(batches)):
                            with update.autocast():
                                nll, n = _answer_loss(model, batch)
                            # the global token mean (a zero-weighted stand-in adds nothing)
                            update.backward(nll * update.scale(n_global) * weight, {"sft_loss": nll})
                        if weight:
                            epoch_nll, epoch_tokens = epoch_nll + nll.item(), epoch_tokens + n
                step += 1
            epoch_nll, epoch_tokens = dist.sum_floats(epoch_nll, epoch_tokens)
            metrics["sft_loss"] = epoch_nll / max(epoch_tokens, 1)
            self.logger.record("train/sft_loss", metrics["sft_loss"])
            if heldout:
                metrics["sft_heldout_loss"] = self.heldout_loss(policy, heldout)
                self.logger.record("train/sft_heldout_loss", metrics["sft_heldout_loss"])
            self.logger.dump(step)
        policy.model.eval()
        return metrics

    def train(self, policy: Policy, demonstrations: Sequence[Demonstration]) -> dict[str, float]:
        """Deprecated name of `fit` (a module's `train(mode)` sets training mode; trainers `fit`)."""
        warnings.warn("SFTTrainer.train(policy, demonstrations) is now SFTTrainer.fit(policy, demonstrations)",
                      DeprecationWarning, stacklevel=2)
        return self.fit(policy, demonstrations)
