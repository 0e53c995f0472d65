"""A learned reward model: a Hugging Face backbone with a scalar head, scoring (prompt, completion) pairs.

InstructGPT (Ouyang et al. 2022, §3.5) trains the reward model from the SFT model with its
unembedding replaced by a scalar head. Ziegler et al. 2019 initialise the head with std
1/sqrt(d_model + 1) and normalise the reward; InstructGPT normalises it so that
demonstrations score 0 on average (`RewardModel.normalize`).

`RewardModel` is a plain object, not an `nn.Module`, so that calling it is scoring:
`rm(prompts, completions) -> float64 array` makes it a `RewardFn`, usable as
`gymnasium.make("llm_gym/ReviewSentiment-v0", reward_fn=rm)`. The trainable module is
`rm.net` (backbone + head + offset).

`LearnedReward` is what a single model and a `RewardEnsemble` (`reward_ensemble.py`) both
are, so that code which trains, normalises, scores or saves one needs no branch for the
other. The other parts live beside this file: the losses in `reward_losses.py`, the
checkpoint format in `reward_checkpoint.py`, training in `reward_trainer.py`.

Encoding (`llm_gym/models/text.py`). A pair is read as the text `prompt + completion`
tokenized the way the tokenizer does it on its own (so a BOS is prepended where the
tokenizer's convention adds one), with an EOS token appended: the reward is read from the
hidden state of that final EOS, which has attended to the whole completion and marks where
it ends. Sequences longer than `max_length` are cut on the LEFT (a leading BOS is kept), so
the end of the completion is always seen; such cuts are counted in `RewardModel.num_truncated`.
Batches are left-padded with position ids that count real tokens only (as in
`llm_gym.models.policy`), so the last real token is always at index -1 and padding does not
change a score.

LoRA (`peft_config=`, the optional `peft` package) puts an adapter on the backbone only: the
scalar head sits outside the PEFT wrapper, so it is always trained in full, and the checkpoint
holds base, adapter and head together with the adapter's config.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from llm_gym.models import reward_checkpoint
from llm_gym.models.policy import add_peft_adapter, as_generator, default_device, is_peft_model

if TYPE_CHECKING:
    from peft import PeftConfig
from llm_gym.models.text import append_eos, encode, pad_left, position_ids, truncate_left_all

__all__ = ["LearnedReward", "Pooling", "RewardModel"]

_log = logging.getLogger(__name__)


def _hidden_size(backbone: PreTrainedModel) -> int:
    size = getattr(backbone.config, "hidden_size", None)
    if size is None:
        size = backbone.get_input_embeddings().embedding_dim
    return int(size)


def _context_length(backbone: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    cfg = backbone.config
    n = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
    if n:
        return int(n)
    tok_max = getattr(tokenizer, "model_max_length", None)
    return int(tok_max) if tok_max and tok_max < 1_000_000 else 1024


Pooling = Literal["last", "mean"]


class _RewardNet(nn.Module):
    """Backbone + scalar head + normalisation offset: `head(pooled hidden state) - offset`.

    `pooling="last"` reads the hidden state of the appended EOS (the usual RM design);
    `pooling="mean"` averages the hidden states of all real tokens, so the reward is a mean
    of per-token contributions -- an inductive bias meant for rewards that are roughly additive
    over words (sentiment lexicons, repetition). Measured on the built-in task (2,000 labels at 73%
    agreement, `experiments/reward_model_quality.py --ablation`) it orders held-out pairs worse than
    "last": 0.727 +- 0.035 against 0.778 +- 0.008.
    """

    def __init__(self, backbone: PreTrainedModel, generator: torch.Generator | None = None, pooling: Pooling = "last") -> None:
        super().__init__()
        if pooling not in ("last", "mean"):
            raise ValueError(f"pooling must be 'last' or 'mean', got {pooling!r}")
        self.pooling = pooling
        self.backbone = backbone
        hidden = _hidden_size(backbone)
        self.head = nn.Linear(hidden, 1)
        # Ziegler et al. 2019 (and TRL): reward head initialised with std 1/sqrt(d_model + 1), bias 0
        with torch.no_grad():
            self.head.weight.normal_(0.0, 1.0 / math.sqrt(hidden + 1), generator=generator)
            self.head.bias.zero_()
        self.register_buffer("offset", torch.zeros(()))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # position ids count real tokens only, so left padding leaves the scores unchanged
        positions = position_ids(attention_mask)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).last_hidden_state
        if self.pooling == "mean":
            weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        else:
            pooled = hidden[:, -1]  # left padding: the last real token is at -1
        return self.head(pooled.to(self.head.weight.dtype)).squeeze(-1) - self.offset


def _check_pairs(prompts: Sequence[str], completions: Sequence[str]) -> None:
    for name, texts in (("prompts", prompts), ("completions", completions)):
        if isinstance(texts, str):
            raise TypeError(f"{name} must be a list of strings, not one string; wrap it: [{name[:-1]}]")
    if len(prompts) != len(completions):
        raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions; pass one completion per prompt")



class RewardModel:
    """A reward model `r(prompt, completion) -> float`: a Hugging Face backbone with a scalar head.

    Calling it scores a batch (`rm(prompts, completions)` is `rm.score(...)`), so it is a
    `RewardFn` and plugs into any environment as `reward_fn`. The trainable `nn.Module`
    is `rm.net`; `parameters()`, `train()`, `eval()` and `to()` delegate to it.

    Args:
        backbone: the base transformer (`AutoModel`, e.g. `GPT2Model`) whose last hidden
            state feeds the head.
        tokenizer: its tokenizer; a missing pad token is set to EOS (pads are masked).
        device: where to run; CUDA when present by default.
        max_length: longest encoded sequence in tokens (longer ones are cut on the left);
            the backbone's context length by default.
        head_seed: an int or `torch.Generator` for the head's initialisation (ensemble
            members differ by it); None uses torch's global generator.
        pooling: `"last"` (the appended EOS's hidden state) or `"mean"` (the average over
            all real tokens: a reward additive over tokens; on the built-in task it holds out worse).
        peft_config: train a PEFT adapter on the backbone instead of all its weights: a
            `peft.LoraConfig` (any `PeftConfig`) or a dict of LoRA fields (`{"r": 8,
            "target_modules": ["q_proj", "v_proj"]}`). The backbone's own weights are frozen;
            the head always trains. Needs `pip install llm-gym[peft]`.

    Example:
        >>> rm = RewardModel.from_pretrained("path/to/sft_model")  # doctest: +SKIP
        >>> env = gymnasium.make("llm_gym/ReviewSentiment-v0", reward_fn=rm)  # doctest: +SKIP
    """

    def __init__(
        self,
        backbone: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        device: torch.device | str | None = None,
        max_length: int | None = None,
        head_seed: int | torch.Generator | None = None,
        pooling: Pooling = "last",
        peft_config: PeftConfig | dict[str, Any] | None = None,
    ) -> None:
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token; set tokenizer.eos_token (the reward is read at the appended EOS)")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token  # GPT-2 convention; pads are always masked out
        context = _context_length(backbone, tokenizer)
        if max_length is None:
            max_length = context
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
        if max_length > context:
            raise ValueError(f"max_length={max_length} exceeds the backbone's context of {context} tokens; pass max_length<={context}")
        if peft_config is not None:
            # a bare backbone (no LM head): no task type, so the PEFT model passes every argument through
            backbone = add_peft_adapter(backbone, peft_config, task_type=None)
        self.device = torch.device(device) if device is not None else default_device()
        self.net = _RewardNet(backbone, as_generator(head_seed, "cpu", "head_seed"), pooling).to(self.device)
        self.net.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.num_truncated = 0
        """Running count of (prompt, completion) pairs cut on the left to fit `max_length`."""

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | PathLike[str],
        *,
        device: torch.device | str | None = None,
        max_length: int | None = None,
        dtype: torch.dtype | None = None,
        head_seed: int | torch.Generator | None = None,
        pooling: Pooling = "last",
        peft_config: PeftConfig | dict[str, Any] | None = None,
        **model_kwargs: object,
    ) -> RewardModel:
        """A new reward model on a pretrained backbone (Hub name or local path) with a fresh head.

        This is how InstructGPT initialises the RM from the SFT model: pass the SFT (or
        pretrained) policy's folder. The backbone is loaded with `AutoModel`, which takes
        the base transformer out of a causal-LM checkpoint (the LM head is dropped).
        `peft_config` trains a LoRA adapter on it instead of all its weights (see `RewardModel`).
        """
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        if dtype is not None:
            model_kwargs["dtype"] = dtype
        backbone = AutoModel.from_pretrained(name_or_path, **model_kwargs)
        return cls(backbone, tokenizer, device=device, max_length=max_length, head_seed=head_seed, pooling=pooling,
                   peft_config=peft_config)

    # ------------------------------------------------------------------ nn.Module-like delegation
    def parameters(self) -> Iterator[nn.Parameter]:
        """The parameters (backbone and head); with an adapter, the backbone's own weights are frozen (no gradient)."""
        return self.net.parameters()

    def train(self, mode: bool = True) -> RewardModel:
        """Set training mode (dropout on) and return self."""
        self.net.train(mode)
        return self

    def eval(self) -> RewardModel:
        """Set evaluation mode and return self."""
        self.net.eval()
        return self

    def to(self, device: torch.device | str) -> RewardModel:
        """Move to `device` and return self."""
        self.device = torch.device(device)
        self.net.to(self.device)
        return self

    @property
    def is_peft(self) -> bool:
        """Whether the backbone carries a PEFT adapter (frozen base weights, trainable adapter and head)."""
        return is_peft_model(self.net.backbone)

    @property
    def members(self) -> list[RewardModel]:
        """`[self]`: a single model is its own only member (see `LearnedReward`)."""
        return [self]

    bootstrap = False
    """A single model trains on the comparisons themselves (see `LearnedReward.bootstrap`)."""

    @property
    def offset(self) -> float:
        """The normalisation constant subtracted from the head's output (see `normalize`)."""
        return float(self.net.offset)

    def __repr__(self) -> str:
        return (
            f"RewardModel(backbone={type(self.net.backbone).__name__}, hidden={self.net.head.in_features}, "
            f"max_length={self.max_length}, offset={self.offset:.4g}, device={self.device})"
        )

    # ------------------------------------------------------------------ encoding and scoring
    def encode(self, prompts: Sequence[str], completions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize pairs as `prompt + completion` + EOS, left-padded; returns (ids, mask) on the device.

        One batched call of the (fast) tokenizer; sequences over `max_length` keep their
        end (and a leading BOS) and are counted in `num_truncated`.
        """
        _check_pairs(prompts, completions)
        if len(prompts) == 0:
            raise ValueError("nothing to encode; pass at least one (prompt, completion) pair")
        tok = self.tokenizer
        # a tokenizer that adds an EOS itself keeps one EOS
        seqs = append_eos(encode(tok, [p + c for p, c in zip(prompts, completions)]), tok.eos_token_id, unless_present=True)
        seqs, truncated = truncate_left_all(seqs, self.max_length, tok.bos_token_id)
        if truncated:
            self.num_truncated += truncated
            _log.warning(
                "reward model: cut %d sequence(s) on the left to %d tokens (total so far: %d)", truncated, self.max_length,
                self.num_truncated
            )
        ids, mask = pad_left(seqs, tok.pad_token_id)
        return ids.to(self.device), mask.to(self.device)

    def forward_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B,) float32 rewards of encoded, left-padded sequences, with gradients (for training)."""
        return self.net(input_ids, attention_mask)

    @torch.no_grad()
    def score(self, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Rewards of (prompt, completion) pairs as a float64 array of shape (n,); no gradients, eval mode.

        Pairs are scored `batch_size` at a time (sorted by length so that batches carry
        little padding, which does not change the scores anyway).
        """
        _check_pairs(prompts, completions)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        n = len(prompts)
        if n == 0:
            return np.zeros(0, dtype=np.float64)
        was_training = self.net.training
        self.net.eval()
        try:
            if n <= batch_size:
                ids, mask = self.encode(prompts, completions)
                return self.net(ids, mask).double().cpu().numpy()
            order = np.argsort([len(p) + len(c) for p, c in zip(prompts, completions)], kind="stable")
            out = np.empty(n, dtype=np.float64)
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                ids, mask = self.encode([prompts[i] for i in idx], [completions[i] for i in idx])
                out[idx] = self.net(ids, mask).double().cpu().numpy()
            return out
        finally:
            self.net.train(was_training)

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """`score(prompts, completions)`: what makes a reward model a `RewardFn`."""
        return self.score(prompts, completions)

    def normalize(self, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 64) -> float:
        """Shift the reward so that these pairs (demonstrations, or a reference set) score 0 on average.

        InstructGPT: "the reward is normalised so that demonstrations score 0 on average".
        Only the offset changes (rankings and losses do not); it is saved with the model.
        Call it after training: training moves the scores. Returns the new offset.
        """
        if len(prompts) == 0:
            raise ValueError("normalize needs at least one (prompt, completion) pair, e.g. the demonstrations")
        mean = float(self.score(prompts, completions, batch_size=batch_size).mean())
        self.net.offset.add_(mean)
        return self.offset

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | PathLike[str]) -> Path:
        """Write the reward model to the folder `path` (atomically: a temporary folder, then a rename).

        An existing folder at `path` is replaced only if it is a reward-model checkpoint. The
        layout is described in `llm_gym/models/reward_checkpoint.py`.
        """
        return reward_checkpoint.save_model(self, path)

    @classmethod
    def load(cls, path: str | PathLike[str], device: torch.device | str | None = None) -> RewardModel:
        """Load a reward model written by `save` (`load_reward_model` loads a model or an ensemble).

        Raises:
            FileNotFoundError: no checkpoint at `path`.
            ValueError: unknown format version, weights modified after saving (sha256
                mismatch), or tensors that do not fit the saved configuration.
        """
        path = Path(path)
        saved = reward_checkpoint.read_model(path)
        if _hidden_size(saved.backbone) != saved.head_in:
            raise ValueError(
                f"mismatched checkpoint {path}: the backbone config has hidden size {_hidden_size(saved.backbone)} "
                f"but the head takes {saved.head_in}; the config and the weights come from different models"
            )
        rm = cls(saved.backbone, saved.tokenizer, device="cpu", max_length=saved.max_length, pooling=saved.pooling,  # type: ignore[arg-type]
                 peft_config=saved.peft_config)
        reward_checkpoint.load_weights(rm.net, path)
        return rm.to(device if device is not None else default_device())


@runtime_checkable
class LearnedReward(Protocol):
    """A learned reward: one `RewardModel`, or a `RewardEnsemble` of them.

    Both score, normalise and save the same way, and both list the models that are trained:
    a model's `members` is `[itself]`, an ensemble's its members. `RewardTrainer.fit` trains
    either (an ensemble member by member on bootstrap resamples), `load_reward_model` loads
    whichever a folder holds, and `reward_model_from_pretrained` builds one or the other
    from a number of members.
    """

    @property
    def members(self) -> Sequence[RewardModel]:
        """The trained models: `[self]` for a `RewardModel`."""
        ...

    @property
    def bootstrap(self) -> bool:
        """Whether each member trains on its own bootstrap resample of the comparisons (an ensemble, as
        Christiano et al. 2017) rather than on the comparisons themselves (a single model)."""
        ...

    def score(self, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Rewards of (prompt, completion) pairs, float64 of shape (n,)."""
        ...

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """`score(prompts, completions)`: a learned reward is a `RewardFn`."""
        ...

    def normalize(self, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 64) -> object:
        """Shift the reward so that these pairs score 0 on average."""
        ...

    def save(self, path: str | PathLike[str]) -> Path:
        """Write a checkpoint folder that `load_reward_model` reads back."""
        ...

