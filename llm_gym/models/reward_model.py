"""Learned reward models: a Hugging Face backbone with a scalar head, its losses, trainer and ensemble.

InstructGPT (Ouyang et al. 2022, §3.5) trains the reward model from the SFT model with
its unembedding replaced by a scalar head, on K ranked completions per prompt (4 <= K <= 9);
each prompt's C(K,2) pairs are one batch element, weighted 1/C(K,2), because spreading
the pairs of one prompt over batches makes the model over-fit. The pairwise form is the
Bradley-Terry model of Christiano et al. 2017. Ziegler et al. 2019 initialise the head
with std 1/sqrt(d_model + 1) and normalise the reward; InstructGPT normalises it so that
demonstrations score 0 on average.

The pieces:

- `RewardModel`: scores (prompt, completion) pairs. It is a plain object, not an
  `nn.Module`, so that calling it is scoring: `rm(prompts, completions) -> float64 array`
  makes it a `RewardFn`, usable as `gymnasium.make("llm_gym/ReviewSentiment-v0",
  reward_fn=rm)`. The trainable module is `rm.net` (backbone + head + offset).
- `pairwise_loss` and `ranking_loss`: the Bradley-Terry losses as plain functions.
- `RewardTrainerConfig` + `RewardTrainer`: trains a reward model on `Comparison`s and
  logs loss / accuracy / margin on train and held-out comparisons (and agreement with a
  gold scorer when one is known).
- `RewardEnsemble`: members trained on bootstrap resamples; its disagreement (std across
  members) is the query-selection signal of Christiano et al. 2017.

Encoding. A pair is read as the text `prompt + completion` tokenized the way the
tokenizer does it on its own (so a BOS is prepended where the tokenizer's convention
adds one), with an EOS token appended: the reward is read from the hidden state of that
final EOS, which has attended to the whole completion and marks where it ends. Sequences
longer than `max_length` are cut on the LEFT (a leading BOS is kept), so the end of the
completion is always seen; such cuts are counted in `RewardModel.num_truncated`.
Batches are left-padded with position ids that count real tokens only (as in
`llm_gym.models.policy`), so the last real token is always at index -1 and padding does not
change a score.

Checkpoints are a folder: `model.safetensors` (no pickle anywhere), `reward_model.json`
(format version, backbone config, head shape, max length, offset, the sha256 of the
weights file) and the tokenizer files. A checkpoint whose weights changed after saving,
or whose tensors do not fit the saved config, is refused with a `ValueError`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from llm_gym.infra.atomic import atomic_dir
from llm_gym.infra.distributed import Distributed, MixedPrecision, check_training_options, resolve_mixed_precision
from llm_gym.infra.logger import Logger
from llm_gym.models.policy import default_device, truncate_left
from llm_gym.core.preferences import Comparison
from llm_gym.core.reward import RewardFn, score_batch

__all__ = [
    "RewardModel",
    "RewardEnsemble",
    "RewardTrainer",
    "RewardTrainerConfig",
    "pairwise_loss",
    "ranking_loss",
]

_log = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Version of the checkpoint layout written by `RewardModel.save`."""
_WEIGHTS = "model.safetensors"
_META = "reward_model.json"
_ENSEMBLE_META = "reward_ensemble.json"
TiesMode = Literal["skip", "half"]


# ======================================================================================
# Losses
# ======================================================================================


def pairwise_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry loss of pairwise preferences: `mean(-log sigmoid(r_w - r_l))`.

    The probability that the chosen completion wins is `sigmoid(r_w - r_l)` (Christiano et
    al. 2017, eq. 1; Ziegler et al. 2019); this is its negative log-likelihood, averaged
    over the pairs. `-logsigmoid` is computed stably (no `log(sigmoid(.))`).

    Args:
        r_chosen: rewards of the preferred completions, any shape.
        r_rejected: rewards of the other completions, same shape.

    >>> round(float(pairwise_loss(torch.tensor([1.0]), torch.tensor([0.0]))), 6)  # log(1 + e^-1)
    0.313262
    """
    if r_chosen.shape != r_rejected.shape:
        raise ValueError(f"r_chosen {tuple(r_chosen.shape)} and r_rejected {tuple(r_rejected.shape)} must have the same shape")
    if r_chosen.numel() == 0:
        raise ValueError("pairwise_loss got no pairs; pass at least one (chosen, rejected) pair")
    return -F.logsigmoid(r_chosen - r_rejected).mean()


class _PairStats(NamedTuple):
    loss: torch.Tensor  # scalar
    accuracy: torch.Tensor  # scalar: fraction of strict (w, l) pairs with r_w > r_l
    margin: torch.Tensor  # scalar: mean r_w - r_l over strict pairs
    num_pairs: int  # strict (w, l) pairs
    num_elements: int  # batch elements that contributed to the loss


def _ranking_stats(rewards: torch.Tensor, ranks: torch.Tensor, k_mask: torch.Tensor | None, ties: TiesMode) -> _PairStats:
    if rewards.dim() != 2 or ranks.shape != rewards.shape:
        raise ValueError(f"rewards and ranks must both be (B, K); got {tuple(rewards.shape)} and {tuple(ranks.shape)}")
    if ties not in ("skip", "half"):
        raise ValueError(f"ties must be 'skip' or 'half', got {ties!r}")
    if k_mask is None:
        k_mask = torch.ones_like(ranks, dtype=torch.bool)
    elif k_mask.shape != rewards.shape:
        raise ValueError(f"k_mask must be (B, K) like rewards, got {tuple(k_mask.shape)}")
    k_mask = k_mask.bool()
    valid = k_mask[:, :, None] & k_mask[:, None, :]  # (B, K, K): both completions exist
    diff = rewards[:, :, None] - rewards[:, None, :]  # diff[b, i, j] = r_i - r_j
    wins = (ranks[:, :, None] < ranks[:, None, :]) & valid  # i ranked above j (0 = best)
    zero = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    # InstructGPT eq. 1: -log sigmoid(r(x, y_w) - r(x, y_l)) for every pair of the ranking
    pair_loss = torch.where(wins, -F.logsigmoid(diff), zero)
    total = pair_loss.sum(dim=(1, 2))
    count = wins.sum(dim=(1, 2))
    if ties == "half":
        # a tie as a soft label 0.5 (cross-entropy with target 1/2), each unordered pair once
        upper = torch.ones_like(valid[0]).triu(diagonal=1)
        tied = (ranks[:, :, None] == ranks[:, None, :]) & valid & upper
        tie_loss = -0.5 * (F.logsigmoid(diff) + F.logsigmoid(-diff))
        total = total + torch.where(tied, tie_loss, zero).sum(dim=(1, 2))
        count = count + tied.sum(dim=(1, 2))
    keep = count > 0  # an element with no pair to learn from (all ties, "skip") is excluded
    if keep.any():
        # 1/(pair count) per element (= 1/C(K,2) for a strict ranking), then mean over elements
        loss = (total[keep] / count[keep]).mean()
    else:
        loss = rewards.sum() * 0.0  # nothing to learn; a zero that keeps the graph
    n_pairs = int(wins.sum())
    if n_pairs:
        accuracy = ((diff > 0) & wins).sum().to(rewards.dtype) / n_pairs
        margin = torch.where(wins, diff, zero).sum() / n_pairs
    else:
        accuracy = margin = torch.tensor(float("nan"), device=rewards.device)
    return _PairStats(loss, accuracy.detach(), margin.detach(), n_pairs, int(keep.sum()))


def ranking_loss(
    rewards: torch.Tensor,
    ranks: torch.Tensor,
    k_mask: torch.Tensor | None = None,
    ties: TiesMode = "skip",
) -> torch.Tensor:
    """InstructGPT's K-way ranking loss: all pairs of one prompt's ranking in one batch element.

    For batch element b with completions i, j (rank 0 = best)::

        loss_b = -1/N_b * sum over pairs with ranks[i] < ranks[j] of log sigmoid(r_i - r_j)

    and the result is the mean of `loss_b` over elements. For a strict ranking of K
    completions `N_b = C(K,2)`, which is InstructGPT's normalisation (Ouyang et al. 2022,
    eq. 1); with K = 2 it is `pairwise_loss`.

    Ties (equal ranks):
        - `"skip"` (default): tied pairs carry no term and are not counted in `N_b`; an
          element whose completions all tie has no pair and is excluded from the mean.
        - `"half"`: a tied pair is a Bradley-Terry label of 0.5 and adds
          `-0.5 * log sigmoid(r_i - r_j) - 0.5 * log sigmoid(r_j - r_i)` (minimal when the
          rewards are equal); it counts in `N_b`, so `N_b = C(K,2)` for every ranking.

    If no element has a pair at all, the loss is a zero connected to `rewards` (a training
    step on it changes nothing).

    Args:
        rewards: (B, K) rewards; padded entries are ignored.
        ranks: (B, K) integer ranks, 0 = best, equal = tie.
        k_mask: (B, K) bool, True for real completions (batches that mix K are padded to
            the largest K); None = all real.
        ties: `"skip"` or `"half"`, see above.
    """
    return _ranking_stats(rewards, ranks, k_mask, ties).loss


# ======================================================================================
# The model
# ======================================================================================


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
    of per-token contributions -- a strong inductive bias when the true reward is roughly
    additive over words (sentiment lexicons, repetition), and a help when labels are few.
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
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
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


def _as_generator(seed: int | torch.Generator | None) -> torch.Generator | None:
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"head_seed must be an int, a torch.Generator or None, got {type(seed).__name__}")
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


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
            all real tokens: a reward additive over tokens, which learns from fewer labels).

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
        self.device = torch.device(device) if device is not None else default_device()
        self.net = _RewardNet(backbone, _as_generator(head_seed), pooling).to(self.device)
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
        **model_kwargs: object,
    ) -> RewardModel:
        """A new reward model on a pretrained backbone (Hub name or local path) with a fresh head.

        This is how InstructGPT initialises the RM from the SFT model: pass the SFT (or
        pretrained) policy's folder. The backbone is loaded with `AutoModel`, which takes
        the base transformer out of a causal-LM checkpoint (the LM head is dropped).
        """
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        if dtype is not None:
            model_kwargs["dtype"] = dtype
        backbone = AutoModel.from_pretrained(name_or_path, **model_kwargs)
        return cls(backbone, tokenizer, device=device, max_length=max_length, head_seed=head_seed, pooling=pooling)

    # ------------------------------------------------------------------ nn.Module-like delegation
    def parameters(self) -> Iterator[nn.Parameter]:
        """The trainable parameters (backbone and head)."""
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
        eos, bos, limit = tok.eos_token_id, tok.bos_token_id, self.max_length
        encoded = tok([p + c for p, c in zip(prompts, completions)])["input_ids"]
        seqs: list[torch.Tensor] = []
        truncated = 0
        for ids in encoded:
            if not ids or ids[-1] != eos or len(ids) == 1:  # a tokenizer that adds EOS itself keeps one EOS
                ids = ids + [eos]
            if len(ids) > limit:
                ids = truncate_left(ids, limit, bos)
                truncated += 1
            seqs.append(torch.tensor(ids, dtype=torch.long))
        if truncated:
            self.num_truncated += truncated
            _log.warning(
                "reward model: cut %d sequence(s) on the left to %d tokens (total so far: %d)", truncated, limit, self.num_truncated
            )
        ids = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=tok.pad_token_id, padding_side="left")
        lengths = torch.tensor([len(s) for s in seqs])
        mask = (torch.arange(ids.shape[1])[None, :] >= ids.shape[1] - lengths[:, None]).long()
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

        An existing folder at `path` is replaced only if it is a reward-model checkpoint.
        """
        path = Path(path)
        _check_replaceable(path, _META)
        with atomic_dir(path) as tmp:
            self._write(tmp)
        return path

    def _write(self, folder: Path) -> None:
        weights = folder / _WEIGHTS
        save_model(self.net, str(weights), metadata={"format": "pt", "llm_gym": "reward_model"})
        meta = {
            "format_version": FORMAT_VERSION,
            "backbone_class": type(self.net.backbone).__name__,
            "backbone_config": self.net.backbone.config.to_dict(),
            "backbone_dtype": str(next(self.net.backbone.parameters()).dtype).removeprefix("torch."),
            "head": {"in_features": self.net.head.in_features, "out_features": self.net.head.out_features},
            "max_length": self.max_length,
            "pooling": self.net.pooling,
            "offset": self.offset,
            "sha256": _sha256(weights),
        }
        (folder / _META).write_text(json.dumps(meta, indent=2, default=str))
        self.tokenizer.save_pretrained(folder)

    @classmethod
    def load(cls, path: str | PathLike[str], device: torch.device | str | None = None) -> RewardModel:
        """Load a reward model written by `save`.

        Raises:
            FileNotFoundError: no checkpoint at `path`.
            ValueError: unknown format version, weights modified after saving (sha256
                mismatch), or tensors that do not fit the saved configuration.
        """
        path = Path(path)
        meta_file, weights = path / _META, path / _WEIGHTS
        if not meta_file.is_file() or not weights.is_file():
            raise FileNotFoundError(f"{path} is not a reward-model checkpoint (needs {_META} and {_WEIGHTS}); write one with RewardModel.save")
        try:
            meta = json.loads(meta_file.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"checkpoint {path}: {_META} is not valid JSON ({exc}); re-save the model") from exc
        version = meta.get("format_version") if isinstance(meta, dict) else None
        if version != FORMAT_VERSION:
            raise ValueError(
                f"checkpoint {path} has format version {version!r}, this llm_gym reads version {FORMAT_VERSION}; "
                "re-save it with a matching llm_gym version"
            )
        if _sha256(weights) != meta.get("sha256"):
            raise ValueError(
                f"checkpoint {path} was modified after saving (sha256 mismatch): {_WEIGHTS} is not the file "
                "that was saved; re-save it or restore the original"
            )
        try:
            config_dict = dict(meta["backbone_config"])
            config = AutoConfig.for_model(**config_dict)
            head_in = int(meta["head"]["in_features"])
            max_length = int(meta["max_length"])
            dtype = getattr(torch, str(meta.get("backbone_dtype", "float32")))
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"unknown backbone_dtype {meta.get('backbone_dtype')!r}")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"mismatched checkpoint {path}: {_META} is incomplete or invalid ({exc!r}); re-save the model") from exc
        backbone = AutoModel.from_config(config).to(dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
        if _hidden_size(backbone) != head_in:
            raise ValueError(
                f"mismatched checkpoint {path}: the backbone config has hidden size {_hidden_size(backbone)} "
                f"but the head takes {head_in}; the config and the weights come from different models"
            )
        rm = cls(backbone, tokenizer, device="cpu", max_length=max_length, pooling=meta.get("pooling", "last"))
        try:
            missing, unexpected = load_model(rm.net, str(weights), strict=False)
        except RuntimeError as exc:  # shape mismatches
            raise ValueError(f"mismatched checkpoint {path}: its tensors do not fit the saved config ({exc}); re-save the model") from exc
        if missing or unexpected:
            raise ValueError(
                f"mismatched checkpoint {path}: missing tensors {sorted(missing)[:5]}, unexpected tensors "
                f"{sorted(unexpected)[:5]}; the weights do not belong to this backbone config"
            )
        return rm.to(device if device is not None else default_device())


def _sha256(file: Path) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_replaceable(path: Path, marker: str) -> None:
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not (path / marker).is_file())):
        raise ValueError(f"{path} exists and is not a checkpoint of this kind; choose another path or remove it yourself")


# ======================================================================================
# Training
# ======================================================================================


@dataclass(frozen=True)
class RewardTrainerConfig:
    """How `RewardTrainer` fits a reward model to comparisons."""

    epochs: int = 2
    """Passes over the training comparisons (InstructGPT trained its RM for a single epoch; small data needs more)."""
    batch_size: int = 16
    """Comparisons per optimizer step; a K-way comparison is one element (all its pairs together)."""
    learning_rate: float = 3e-4
    """AdamW learning rate: the built-in tiny models learn well at 3e-4 to 1e-3; Hub-sized backbones want
    about 1e-5 (InstructGPT used 9e-6 for its 6B reward model)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    heldout_fraction: float = 0.1
    """Fraction of the comparisons held out for evaluation, in [0, 1); 0 = no held-out set."""
    max_grad_norm: float | None = 1.0
    """Clip the gradient norm to this; None = no clipping."""
    ties: TiesMode = "skip"
    """Tied completions: `"skip"` (no term) or `"half"` (Bradley-Terry label 0.5); see `ranking_loss`."""
    eval_batch_size: int = 64
    """Sequences per forward pass when scoring held-out completions."""
    disable_dropout: bool = True
    """Train with the backbone's dropout off (as TRL's reward trainer does by default): the two
    completions of a pair are then scored by the same function, and train metrics are not noisy."""
    mixed_precision: MixedPrecision = "no"
    """"bf16" runs training forward passes under bf16 autocast where the device supports it (CUDA
    with bf16, CPU); elsewhere training falls back to float32 with a logged warning. "no" = float32."""
    gradient_accumulation_steps: int = 1
    """Each batch of `batch_size` comparisons is processed in this many micro-batches before one
    optimizer step (less memory; the same update: the loss is normalised by the whole batch)."""

    def __post_init__(self) -> None:
        check_training_options("RewardTrainerConfig", self.mixed_precision, self.gradient_accumulation_steps)
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"RewardTrainerConfig.{name} must be a positive int, got {value!r}")
        if not (isinstance(self.learning_rate, (int, float)) and math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"RewardTrainerConfig.learning_rate must be a finite number > 0, got {self.learning_rate!r} (try 3e-4)")
        if not (isinstance(self.weight_decay, (int, float)) and math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"RewardTrainerConfig.weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if not (isinstance(self.heldout_fraction, (int, float)) and 0 <= self.heldout_fraction < 1):
            raise ValueError(f"RewardTrainerConfig.heldout_fraction must be in [0, 1), got {self.heldout_fraction!r} (0 = no held-out set)")
        if self.max_grad_norm is not None and not (
            isinstance(self.max_grad_norm, (int, float)) and math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0
        ):
            raise ValueError(f"RewardTrainerConfig.max_grad_norm must be > 0 or None (no clipping), got {self.max_grad_norm!r}")
        if self.ties not in ("skip", "half"):
            raise ValueError(f"RewardTrainerConfig.ties must be 'skip' or 'half', got {self.ties!r}")
        if not isinstance(self.disable_dropout, bool):
            raise ValueError(f"RewardTrainerConfig.disable_dropout must be True or False, got {self.disable_dropout!r}")


class _Padded(NamedTuple):
    """Comparisons flattened for one forward pass, and their (B, K) layout."""

    prompts: list[str]  # one entry per completion, comparison by comparison
    completions: list[str]
    ranks: torch.Tensor  # (B, K) long, padded entries 0
    k_mask: torch.Tensor  # (B, K) bool
    index: torch.Tensor  # (B, K) long: position in the flat lists, padded entries 0


def _pad(comparisons: Sequence[Comparison]) -> _Padded:
    k_max = max(len(c.completions) for c in comparisons)
    b = len(comparisons)
    ranks = torch.zeros((b, k_max), dtype=torch.long)
    k_mask = torch.zeros((b, k_max), dtype=torch.bool)
    index = torch.zeros((b, k_max), dtype=torch.long)
    prompts: list[str] = []
    completions: list[str] = []
    for row, c in enumerate(comparisons):
        k = len(c.completions)
        ranks[row, :k] = torch.tensor(c.ranks)
        k_mask[row, :k] = True
        index[row, :k] = torch.arange(len(prompts), len(prompts) + k)
        prompts.extend([c.prompt] * k)
        completions.extend(c.completions)
    return _Padded(prompts, completions, ranks, k_mask, index)


def _num_elements(padded: _Padded, ties: TiesMode) -> int:
    """How many batch elements of `padded` carry a pair to learn from (known before any forward pass)."""
    return _ranking_stats(torch.zeros(padded.ranks.shape), padded.ranks, padded.k_mask, ties).num_elements


def _check_comparisons(comparisons: Sequence[Comparison]) -> None:
    if isinstance(comparisons, Comparison):
        raise TypeError("pass a sequence of Comparison objects, not one Comparison; wrap it: [comparison]")
    if len(comparisons) == 0:
        raise ValueError("the comparison set is empty; collect labelled comparisons first (nothing to train on)")
    for i, c in enumerate(comparisons):
        if not isinstance(c, Comparison):
            raise TypeError(f"comparison {i} is a {type(c).__name__}, not an llm_gym Comparison")
    if all(c.is_tie for c in comparisons):
        raise ValueError(f"all {len(comparisons)} comparisons are ties; nothing to learn (collect comparisons with a preference)")


class RewardTrainer:
    """Fits a `RewardModel` to labelled comparisons with the K-way Bradley-Terry loss.

    Every `Comparison` (pairwise or a K-way ranking) is one batch element: all its pairs
    go into the same step with the 1/C(K,2) normalisation (InstructGPT). Contradictory
    labels (the same query answered both ways) are kept as they are: they are the noise a
    Bradley-Terry model expects. Calling `train` again on the same model continues from
    its weights (a warm start, as the preference loop needs); the optimizer is fresh per
    call and the logging step keeps counting.

    Logged every epoch (at step = optimizer steps so far): `reward_model/train_loss`,
    `train_accuracy` (fraction of (winner, loser) pairs with r_w > r_l), `train_margin`
    (mean r_w - r_l) over the epoch's batches; the same with `heldout_` on the held-out
    comparisons after the epoch; and `gold_agreement` when a gold scorer is given.

    Args:
        config: the training settings.
        logger: receives the metrics; None = no logging.
        rng: shuffles and splits the data (and seeds dropout, if on), so a run is reproducible.
        distributed: the process group (data parallel): `batch_size` is the global batch, each
            process trains on its shard of every batch, the loss is normalised by the global
            number of comparisons, and metrics are reduced over processes before logging.
            None = a single process. Every process must pass an rng with the same seed.
    """

    def __init__(
        self,
        config: RewardTrainerConfig | None = None,
        logger: Logger | None = None,
        rng: np.random.Generator | None = None,
        distributed: Distributed | None = None,
    ) -> None:
        self.config = config if config is not None else RewardTrainerConfig()
        if not isinstance(self.config, RewardTrainerConfig):
            raise TypeError(f"config must be a RewardTrainerConfig, got {type(self.config).__name__}")
        self.logger = logger
        self.rng = rng if rng is not None else np.random.default_rng()
        self.num_updates = 0
        """Optimizer steps taken over all `train` calls (the logging step)."""
        self.dist = distributed if distributed is not None else Distributed()

    def split(self, comparisons: Sequence[Comparison]) -> tuple[list[Comparison], list[Comparison]]:
        """Shuffle with the trainer's rng and split into (train, held-out) by `config.heldout_fraction`."""
        n = len(comparisons)
        order = self.rng.permutation(n)
        n_held = int(round(self.config.heldout_fraction * n))
        if self.config.heldout_fraction > 0 and n >= 2:
            n_held = min(max(n_held, 1), n - 1)
        else:
            n_held = 0
        held = [comparisons[i] for i in order[:n_held]]
        train = [comparisons[i] for i in order[n_held:]]
        return train, held

    def train(
        self,
        rm: RewardModel,
        comparisons: Sequence[Comparison],
        gold_fn: RewardFn | None = None,
        *,
        heldout: Sequence[Comparison] | None = None,
        log_prefix: str = "reward_model/",
    ) -> dict[str, float]:
        """Train `rm` on `comparisons` and return the final metrics.

        Args:
            rm: the reward model (trained in place; warm-started from its current weights).
            comparisons: labelled comparisons; split into train and held-out unless
                `heldout` is given.
            gold_fn: the true reward when known (the built-in `GoldScorer`): logs how often
                the RM orders held-out pairs as the gold scorer does (gold ties excluded).
            heldout: an explicit held-out set; then all of `comparisons` is trained on.
            log_prefix: key prefix of the logged metrics (a `Logger` group, e.g.
                `"reward_model/member0/"`).

        Returns:
            `train_loss`, `train_accuracy`, `train_margin` of the last epoch, `heldout_loss`,
            `heldout_accuracy`, `heldout_margin` (when there is a held-out set),
            `gold_agreement` (when `gold_fn` is given: on the held-out comparisons, or on the
            training ones when there are none held out), `num_train`, `num_heldout`.

        Raises:
            ValueError: empty comparison set, or every comparison a tie.
        """
        _check_comparisons(comparisons)
        cfg = self.config
        if heldout is None:
            train_set, held = self.split(comparisons)
        else:
            train_set, held = list(comparisons), list(heldout)
        if all(c.is_tie for c in train_set):
            raise ValueError(f"all {len(train_set)} training comparisons are ties; nothing to learn (lower heldout_fraction or add data)")
        gold_set = held if held else train_set
        gold_pairs = self._gold_pairs(gold_set, gold_fn) if gold_fn is not None else None
        held_padded = _pad(held) if held else None

        opt = torch.optim.AdamW(rm.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        net, _ = self.dist.prepare(rm.net)
        metrics: dict[str, float] = {"num_train": float(len(train_set)), "num_heldout": float(len(held))}
        devices = [rm.device] if rm.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # dropout draws from torch's rng: seed it from ours, leave the global state
            torch.manual_seed(int(self.rng.integers(2**62)))
            for _epoch in range(cfg.epochs):
                metrics.update(self._epoch(rm, net, opt, train_set))
                if held_padded is not None or gold_pairs is not None:
                    metrics.update(self._evaluate(rm, held_padded, gold_set, gold_pairs))
                if self.logger is not None:
                    for key, value in metrics.items():
                        if not key.startswith("num_"):
                            self.logger.record(log_prefix + key, value)
                    self.logger.dump(self.num_updates)
        rm.eval()
        return metrics

    def _epoch(self, rm: RewardModel, net: nn.Module, opt: torch.optim.Optimizer, train_set: list[Comparison]) -> dict[str, float]:
        """One pass over `train_set`; `net` is `rm.net` as `Distributed.prepare` returned it."""
        cfg, dist = self.config, self.dist
        rm.train(not cfg.disable_dropout)
        amp = resolve_mixed_precision(cfg.mixed_precision, rm.device)
        order = self.rng.permutation(len(train_set))
        loss_sum, elements, correct, margin_sum, pairs = 0.0, 0, 0.0, 0.0, 0
        for start in range(0, len(order), cfg.batch_size):
            global_batch = [train_set[i] for i in order[start : start + cfg.batch_size]]
            # this process's shard, in micro-batches (zero-weighted stand-ins for empty pieces)
            work = [(_pad(p), w) for p, w in dist.micro_shards(global_batch, cfg.gradient_accumulation_steps)]
            n_global = dist.sum_float(sum(_num_elements(b, cfg.ties) for b, w in work if w))
            if n_global == 0:
                continue  # only ties in this batch (ties="skip"), on every process: nothing to learn
            opt.zero_grad(set_to_none=True)
            results = []
            for k, (batch, weight) in enumerate(work):
                ids, mask = rm.encode(batch.prompts, batch.completions)
                with dist.no_sync(net, enabled=k + 1 < len(work)):
                    with Distributed.autocast(amp, rm.device):
                        flat = net(ids, mask).float()
                    rewards = flat[batch.index.to(flat.device)]
                    stats = _ranking_stats(rewards, batch.ranks.to(flat.device), batch.k_mask.to(flat.device), cfg.ties)
                    # per-element mean over the global batch: DDP averages over processes, hence world_size
                    dist.backward(stats.loss * (weight * stats.num_elements * dist.world_size / n_global))
                results.append((stats, weight))
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(rm.net.parameters(), cfg.max_grad_norm)
            opt.step()
            self.num_updates += 1
            for stats, weight in results:
                if not weight:
                    continue
                loss_sum += float(stats.loss.detach()) * stats.num_elements
                elements += stats.num_elements
                if stats.num_pairs:
                    correct += float(stats.accuracy) * stats.num_pairs
                    margin_sum += float(stats.margin) * stats.num_pairs
                    pairs += stats.num_pairs
        rm.eval()
        loss_sum, elements, correct, margin_sum, pairs = dist.sum_floats(loss_sum, elements, correct, margin_sum, pairs)
        nan = float("nan")
        return {
            "train_loss": loss_sum / elements if elements else nan,
            "train_accuracy": correct / pairs if pairs else nan,
            "train_margin": margin_sum / pairs if pairs else nan,
        }

    @staticmethod
    def _gold_pairs(comparisons: list[Comparison], gold_fn: RewardFn) -> list[tuple[int, int, float]]:
        """(flat i, flat j, sign of gold_i - gold_j) for every pair i < j of each comparison with distinct gold scores."""
        padded = _pad(comparisons)
        gold = score_batch(gold_fn, padded.prompts, padded.completions)
        out: list[tuple[int, int, float]] = []
        for row, c in enumerate(comparisons):
            base = int(padded.index[row, 0])
            for i in range(len(c.completions)):
                for j in range(i + 1, len(c.completions)):
                    d = gold[base + i] - gold[base + j]
                    if d != 0:
                        out.append((base + i, base + j, float(np.sign(d))))
        return out

    def _evaluate(
        self, rm: RewardModel, held: _Padded | None, gold_set: list[Comparison], gold_pairs: list[tuple[int, int, float]] | None
    ) -> dict[str, float]:
        out: dict[str, float] = {}
        bs = self.config.eval_batch_size
        if held is not None:
            flat = torch.from_numpy(rm.score(held.prompts, held.completions, batch_size=bs))
            stats = _ranking_stats(flat[held.index], held.ranks, held.k_mask, self.config.ties)
            out["heldout_loss"] = float(stats.loss) if stats.num_elements else float("nan")
            out["heldout_accuracy"] = float(stats.accuracy)
            out["heldout_margin"] = float(stats.margin)
            gold_flat = flat.numpy()
        else:
            gold_flat = None
        if gold_pairs is not None:
            if gold_flat is None:  # no held-out set: gold agreement on the training comparisons
                padded = _pad(gold_set)
                gold_flat = rm.score(padded.prompts, padded.completions, batch_size=bs)
            if gold_pairs:
                i, j, s = (np.array(v) for v in zip(*gold_pairs))
                out["gold_agreement"] = float(np.mean(np.sign(gold_flat[i] - gold_flat[j]) == s))
            else:
                out["gold_agreement"] = float("nan")
        return out


# ======================================================================================
# Ensemble
# ======================================================================================


class RewardEnsemble:
    """Several reward models; scores are their mean, disagreement their standard deviation.

    Christiano et al. 2017 trained an ensemble of reward predictors, each on a bootstrap
    resample of the comparisons, and queried where they disagree most. Calling the
    ensemble returns the mean (so it is a `RewardFn`); `score_with_std` also returns the
    disagreement. Each member is a full model (memory grows with the number of members).
    """

    def __init__(self, members: Sequence[RewardModel]) -> None:
        members = list(members)
        if not members:
            raise ValueError("an ensemble needs at least one member; build them with RewardEnsemble.from_pretrained")
        for i, m in enumerate(members):
            if not isinstance(m, RewardModel):
                raise TypeError(f"member {i} is a {type(m).__name__}, not a RewardModel")
        self.members = members

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | PathLike[str], num_members: int, *, seed: int = 0, **kwargs: object
    ) -> RewardEnsemble:
        """`num_members` reward models on the same pretrained backbone, heads initialised with seeds `seed + i`."""
        if isinstance(num_members, bool) or not isinstance(num_members, int) or num_members < 1:
            raise ValueError(f"num_members must be a positive int, got {num_members!r}")
        return cls([RewardModel.from_pretrained(name_or_path, head_seed=seed + i, **kwargs) for i in range(num_members)])  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.members)

    def score_with_std(self, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) across members, each a float64 array of shape (n,); std (ddof 0) is the disagreement."""
        scores = np.stack([m.score(prompts, completions, batch_size=batch_size) for m in self.members])
        return scores.mean(axis=0), scores.std(axis=0)

    def score(self, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Mean score across members, float64 array of shape (n,)."""
        return self.score_with_std(prompts, completions, batch_size)[0]

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """`score(prompts, completions)`: the ensemble mean as a `RewardFn`."""
        return self.score(prompts, completions)

    def normalize(self, prompts: Sequence[str], completions: Sequence[str]) -> None:
        """Normalise every member so that these pairs score 0 on average (see `RewardModel.normalize`)."""
        for m in self.members:
            m.normalize(prompts, completions)

    def train(
        self,
        trainer: RewardTrainer,
        comparisons: Sequence[Comparison],
        rng: np.random.Generator,
        gold_fn: RewardFn | None = None,
    ) -> dict[str, float]:
        """Train each member on its own bootstrap resample of the comparisons.

        The held-out split is drawn once (by the trainer) and shared; each member then
        trains on a resample with replacement, of the same size, of the training part,
        drawn from `rng`. Members log under `reward_model/member{i}/`. Returns the members'
        final metrics averaged (keys as in `RewardTrainer.train`).
        """
        _check_comparisons(comparisons)
        train_set, held = trainer.split(comparisons)
        results: list[dict[str, float]] = []
        for i, member in enumerate(self.members):
            sample = [train_set[j] for j in rng.integers(0, len(train_set), size=len(train_set))]
            if all(c.is_tie for c in sample):  # a resample of mostly-tie data can miss every preference
                sample = train_set
            results.append(trainer.train(member, sample, gold_fn, heldout=held, log_prefix=f"reward_model/member{i}/"))
        keys = results[0].keys()
        return {k: float(np.mean([r[k] for r in results])) for k in keys}

    def save(self, path: str | PathLike[str]) -> Path:
        """Write the members to `path/member_{i}` and an index file, atomically."""
        path = Path(path)
        _check_replaceable(path, _ENSEMBLE_META)
        with atomic_dir(path) as tmp:
            for i, m in enumerate(self.members):
                (tmp / f"member_{i}").mkdir()
                m._write(tmp / f"member_{i}")
            (tmp / _ENSEMBLE_META).write_text(json.dumps({"format_version": FORMAT_VERSION, "num_members": len(self.members)}))
        return path

    @classmethod
    def load(cls, path: str | PathLike[str], device: torch.device | str | None = None) -> RewardEnsemble:
        """Load an ensemble written by `save` (each member checked as in `RewardModel.load`)."""
        path = Path(path)
        meta_file = path / _ENSEMBLE_META
        if not meta_file.is_file():
            raise FileNotFoundError(f"{path} is not a reward-ensemble checkpoint (no {_ENSEMBLE_META}); write one with RewardEnsemble.save")
        meta = json.loads(meta_file.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"ensemble {path} has format version {meta.get('format_version')!r}, expected {FORMAT_VERSION}; re-save it")
        return cls([RewardModel.load(path / f"member_{i}", device=device) for i in range(int(meta["num_members"]))])
