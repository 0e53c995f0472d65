"""DPO: preference optimisation without a reward model (Rafailov et al. 2023), with IPO (Azar et al. 2023) and cDPO.

The KL-regularised RLHF objective `max_pi E[r(x, y)] - beta KL(pi || pi_ref)` has the optimum
`pi*(y|x) = pi_ref(y|x) exp(r(x, y) / beta) / Z(x)`, so every reward is the *implicit reward* of
its optimal policy (Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model
is Secretly a Reward Model", eq. 5):

    r(x, y) = beta * (log pi(y|x) - log pi_ref(y|x))        (+ beta log Z(x), which cancels in a comparison)

Put into the Bradley-Terry model of a preference `y_w > y_l`, the reward model's loss becomes a
loss on the policy itself (eq. 7), with the log-ratio difference

    h = (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))

    L_DPO = -log sigmoid(beta * h)            dL/dh = -beta * sigmoid(-beta * h)

that is, the reward model's pairwise loss on the implicit rewards (`r_w - r_l = beta * h`); a
pair weighs as much as the implicit reward orders it wrongly.

IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
Preferences", eq. 17, with `tau = beta`) regresses `h` onto a fixed target instead, so that a
pair always preferred the same way cannot push `h` to infinity (DPO's over-fitting):

    L_IPO = (h - 1/(2 beta))^2                dL/dh = 2 h - 1/beta

**Noisy labels and ties.** Both losses are a loss of one direction, `l(h)` (the loss of "y_w
is preferred": the two lines above), mixed by the label `p = P(y_w > y_l)`:

    L(h; p) = p l(h) + (1 - p) l(-h)

* A strict preference has `p = 1 - eps`, where `eps = label_smoothing` is the probability
  that a label is flipped (cDPO, Mitchell 2023, "A note on DPO with noisy preferences"):
  sigmoid: `-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)`;
  IPO: `(h - (1 - 2 eps) / (2 beta))^2 + eps (1 - eps) / beta^2`.
* A tie, with `ties="half"`, has `p = 1/2`:
  sigmoid: `-1/2 log sigmoid(beta h) - 1/2 log sigmoid(-beta h)`, least (log 2) at `h = 0`;
  IPO: `h^2 + 1/(4 beta^2)`: target 0 and gradient `2 h`.
  With `ties="skip"` a tied pair carries no term, as in the reward model.

For IPO, with `c = 1/(2 beta)`: `p (h - c)^2 + (1 - p)(h + c)^2 = (h - (2p - 1) c)^2 + 4 p (1 - p) c^2`,
so a label `p` regresses `h` onto `(p - 1/2) / beta`, Azar et al.'s `tau^-1 (p - 1/2)`, plus a
constant that changes no gradient (and makes every IPO pair worth `1/(4 beta^2)` at `h = 0`).

**K-way rankings** are grouped as the reward model groups them (InstructGPT, Ouyang et al. 2022,
eq. 1; `llm_gym.models.reward_losses.ranking_loss`): each `Comparison` is one batch element, its
C(K,2) pairs `(i, j)` with `rank_i < rank_j` (and, with "half", its tied pairs) each weigh
`1/N_b` (`N_b` its pair count), and the loss is the mean over elements. With
`loss_type="sigmoid"` and no label smoothing, `dpo_loss` is `ranking_loss` applied to the
implicit rewards (`tests/agents/test_dpo.py` checks it).

**Sequence log-probs** `log pi(y|x)` are sums over the completion's tokens and its EOS,
tokenised after the prompt as SFT tokenises an answer (`Policy.encode_pairs`), under the
model's own distribution (temperature 1, no top-k or top-p, whatever `sampling` says: a
completion outside a nucleus would have log-prob -inf). A pair of *identical* completions has
`h = 0` whatever the policy: it carries no term and is not counted (a strict label on it
contradicts itself; a warning counts them).

**Training** (`DPO.learn`): the comparisons are split into train and held-out; each step
takes `batch_size` comparisons of a shuffled epoch (reshuffled when one ends) and is one
optimizer step through `llm_gym.infra.update.UpdateStep`: micro-batches, data parallelism with
the loss normalised by the global count of comparisons that carry a term, mixed precision,
clipping, and the NaN guard (a non-finite loss stops the step before the optimizer runs).
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from os import PathLike
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from llm_gym.agents.base import Agent, CallbackLike, StandInEnv, resolve_rng, sample_actions
from llm_gym.agents.checkpoint import (CheckpointError, load_policy_and_reference, open_checkpoint, read_json, reading,
                                      save_policy_and_reference, write_checkpoint)
from llm_gym.agents.reference import make_reference
from llm_gym.core.preferences import Comparison
from llm_gym.infra.configio import check_finite
from llm_gym.infra.distributed import Distributed, MixedPrecision, check_training_options
from llm_gym.infra.logger import Logger
from llm_gym.infra.update import UpdateStep
from llm_gym.models.policy import Policy, SamplingConfig
from llm_gym.models.reward_losses import TiesMode
from llm_gym.models.text import encode

__all__ = ["DPO", "DPOConfig", "DPOLossType", "DPOStats", "dpo_loss", "dpo_stats"]

DPOLossType = Literal["sigmoid", "ipo"]
"""`"sigmoid"`: DPO's logistic loss (Rafailov et al. 2023); `"ipo"`: IPO's squared loss (Azar et al. 2023)."""

_MODEL_DISTRIBUTION = SamplingConfig()
"""The distribution DPO's log-probs are taken under: the model's own (temperature 1, no filtering)."""


# ---------------------------------------------------------------------------------------------- the loss
class DPOStats(NamedTuple):
    """`dpo_loss` with what a trainer logs beside it (all but `loss` detached)."""

    loss: torch.Tensor
    """Scalar: the mean over batch elements of each element's mean pair loss."""
    accuracy: torch.Tensor
    """Fraction of strict pairs whose implicit rewards order them as labelled (r_w > r_l); NaN without one."""
    margin: torch.Tensor
    """Mean r_w - r_l (= beta * h) over strict pairs."""
    chosen_reward: torch.Tensor
    """Mean implicit reward beta * (log pi - log pi_ref) of the preferred completions of strict pairs."""
    rejected_reward: torch.Tensor
    """Mean implicit reward of the other completions of strict pairs."""
    num_pairs: int
    """Strict pairs counted."""
    num_elements: int
    """Batch elements (comparisons) that carry a term."""


def _one_way(h: torch.Tensor, beta: float, loss_type: DPOLossType) -> torch.Tensor:
    """`l(h)`: the loss of "the first completion is preferred", for log-ratio differences `h`."""
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * h)  # Rafailov et al. 2023, eq. 7
    return (h - 1.0 / (2.0 * beta)) ** 2  # Azar et al. 2023, eq. 17 (tau = beta)


def dpo_stats(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    ranks: torch.Tensor,
    k_mask: torch.Tensor | None = None,
    pair_mask: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
    loss_type: DPOLossType = "sigmoid",
    label_smoothing: float = 0.0,
    ties: TiesMode = "skip",
) -> DPOStats:
    """The DPO (or IPO) loss of ranked completions, with accuracy, margin and implicit rewards (module docstring).

    Args:
        policy_logps: (B, K) sequence log-probs `log pi(y|x)` of each element's K completions (with gradients).
        reference_logps: (B, K) the same under the frozen reference.
        ranks: (B, K) integer ranks, 0 = best, equal = tie.
        k_mask: (B, K) bool, True for real completions (elements with fewer are padded); None = all real.
        pair_mask: (B, K, K) bool, True where a pair may carry a term (False for identical completions);
            None = every pair.
        beta: the KL coefficient of the implicit reward (IPO's tau).
        loss_type: "sigmoid" (DPO) or "ipo".
        label_smoothing: eps, the probability that a strict label is flipped (cDPO); 0 = off.
        ties: "skip" (a tied pair carries no term) or "half" (a label of 1/2).

    Returns:
        `DPOStats`. An element without a pair is left out of the mean; if none has one, the loss
        is a zero connected to `policy_logps` (a step on it changes nothing).

    >>> pi, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.5]])  # h = 0.5 - (-0.5) = 1
    >>> round(float(dpo_loss(pi, ref, torch.tensor([[0, 1]]), beta=1.0)), 6)  # -log sigmoid(1)
    0.313262
    """
    if policy_logps.dim() != 2 or reference_logps.shape != policy_logps.shape or ranks.shape != policy_logps.shape:
        shapes = ", ".join(str(tuple(t.shape)) for t in (policy_logps, reference_logps, ranks))
        raise ValueError(f"policy_logps, reference_logps and ranks must all be (B, K); got {shapes}")
    if not beta > 0 or not math.isfinite(beta):
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    if loss_type not in ("sigmoid", "ipo"):
        raise ValueError(f"loss_type must be 'sigmoid' or 'ipo', got {loss_type!r}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing!r}")
    if ties not in ("skip", "half"):
        raise ValueError(f"ties must be 'skip' or 'half', got {ties!r}")
    b, k = policy_logps.shape
    k_mask = torch.ones_like(ranks, dtype=torch.bool) if k_mask is None else k_mask.bool()
    valid = k_mask[:, :, None] & k_mask[:, None, :]  # both completions exist
    if pair_mask is not None:
        if pair_mask.shape != (b, k, k):
            raise ValueError(f"pair_mask must be (B, K, K) = {(b, k, k)}, got {tuple(pair_mask.shape)}")
        valid = valid & pair_mask.bool()

    logratio = policy_logps - reference_logps  # log pi(y|x) - log pi_ref(y|x); beta times it is the implicit reward
    h = logratio[:, :, None] - logratio[:, None, :]  # h[b, i, j]: completion i over completion j
    forward, backward = _one_way(h, beta, loss_type), _one_way(-h, beta, loss_type)
    wins = (ranks[:, :, None] < ranks[:, None, :]) & valid  # i ranked above j
    zero = h.new_zeros(())
    # L(h; p) = p l(h) + (1 - p) l(-h): a strict preference has p = 1 - eps (cDPO)
    strict = forward if label_smoothing == 0 else (1 - label_smoothing) * forward + label_smoothing * backward
    total = torch.where(wins, strict, zero).sum(dim=(1, 2))
    count = wins.sum(dim=(1, 2))
    if ties == "half":
        # a tie has p = 1/2; each unordered pair once
        upper = torch.ones_like(valid[0]).triu(diagonal=1)
        tied = (ranks[:, :, None] == ranks[:, None, :]) & valid & upper
        total = total + torch.where(tied, 0.5 * (forward + backward), zero).sum(dim=(1, 2))
        count = count + tied.sum(dim=(1, 2))
    keep = count > 0
    # 1/N_b per element (1/C(K,2) for a strict ranking), then the mean over the elements that have a pair
    loss = (total[keep] / count[keep]).mean() if keep.any() else logratio.sum() * 0.0

    n_pairs = int(wins.sum())
    rewards = beta * logratio.detach()
    if n_pairs:
        chosen = rewards[:, :, None].expand(b, k, k)[wins]
        rejected = rewards[:, None, :].expand(b, k, k)[wins]
        accuracy = (chosen > rejected).to(rewards.dtype).mean()
        chosen_mean, rejected_mean = chosen.mean(), rejected.mean()
    else:
        accuracy = chosen_mean = rejected_mean = torch.tensor(float("nan"), device=rewards.device)
    return DPOStats(loss, accuracy, chosen_mean - rejected_mean, chosen_mean, rejected_mean, n_pairs, int(keep.sum()))


def dpo_loss(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    ranks: torch.Tensor,
    k_mask: torch.Tensor | None = None,
    pair_mask: torch.Tensor | None = None,
    **options: Any,
) -> torch.Tensor:
    """The scalar loss of `dpo_stats` (same arguments; `beta`, `loss_type`, `label_smoothing`, `ties` by keyword)."""
    return dpo_stats(policy_logps, reference_logps, ranks, k_mask, pair_mask, **options).loss


# ---------------------------------------------------------------------------------------------- the config
@dataclass(frozen=True)
class DPOConfig:
    """Hyperparameters of `DPO`."""

    beta: float = 0.1
    """KL coefficient of the implicit reward `beta * (log pi - log pi_ref)` (IPO's tau); > 0. Smaller stays
    less close to the reference (Rafailov et al. used 0.1, and 0.5 for summarisation)."""
    loss_type: DPOLossType = "sigmoid"
    """"sigmoid": DPO's `-log sigmoid(beta h)`; "ipo": IPO's `(h - 1/(2 beta))^2`."""
    label_smoothing: float = 0.0
    """eps in [0, 0.5): the assumed probability that a label is flipped (cDPO); 0 = off. The label of a strict
    preference becomes 1 - eps for either loss (see the module docstring)."""
    ties: TiesMode = "skip"
    """Tied completions: "skip" (no term) or "half" (a label of 1/2: `h` is pulled toward 0)."""
    learning_rate: float = 1e-4
    """AdamW learning rate (constant). Suits the built-in tiny model; Hub-sized models want ~5e-7 to 1e-6
    (Rafailov et al. used 1e-6)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    epochs: int = 1
    """Passes over the training comparisons when `learn` is called without `total_steps`."""
    batch_size: int = 16
    """Comparisons per optimizer step (global over processes); a K-way comparison is one element, all its pairs
    together."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this; None = no clipping."""
    heldout_fraction: float = 0.1
    """Share of the comparisons kept out of training to report held-out preference accuracy, loss and reward
    margins, in [0, 1); 0 = none (or pass `heldout=` to `DPO`)."""
    eval_every: int = 10
    """Evaluate on the held-out comparisons every this many steps (0 = only when `learn` starts at step 0 and
    when it ends)."""
    disable_dropout: bool = True
    """Train with the policy's dropout off (as TRL does by default), so that `h` is 0 before the first step and
    the loss is not noisy."""
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=24))
    """How `act` samples completions (training log-probs always use the model's own distribution)."""
    mixed_precision: MixedPrecision = "no"
    """"bf16" runs the forward passes under bf16 autocast where the device supports it (CUDA with bf16, CPU);
    elsewhere training falls back to float32 with a logged warning. "no" = float32."""
    gradient_accumulation_steps: int = 1
    """Each batch is processed in this many micro-batches before one optimizer step (less memory; the same
    update: the loss is normalised by the whole batch's comparisons)."""

    def __post_init__(self) -> None:
        check_finite(self)
        check_training_options("DPOConfig", self.mixed_precision, self.gradient_accumulation_steps)
        if not self.beta > 0:
            raise ValueError(f"DPOConfig.beta must be > 0, got {self.beta!r} (try 0.1)")
        if self.loss_type not in ("sigmoid", "ipo"):
            raise ValueError(f"DPOConfig.loss_type must be 'sigmoid' (DPO) or 'ipo', got {self.loss_type!r}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"DPOConfig.label_smoothing must be in [0, 0.5) (0 = off; 0.5 would make every label a "
                             f"coin flip), got {self.label_smoothing!r}")
        if self.ties not in ("skip", "half"):
            raise ValueError(f"DPOConfig.ties must be 'skip' or 'half', got {self.ties!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"DPOConfig.learning_rate must be > 0, got {self.learning_rate!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"DPOConfig.weight_decay must be >= 0, got {self.weight_decay!r}")
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"DPOConfig.{name} must be a positive int, got {v!r}")
        if isinstance(self.eval_every, bool) or not isinstance(self.eval_every, int) or self.eval_every < 0:
            raise ValueError(f"DPOConfig.eval_every must be an int >= 0 (0 = at the start and end only), got "
                             f"{self.eval_every!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"DPOConfig.max_grad_norm must be > 0 or None (no clipping), got {self.max_grad_norm!r}")
        if not 0 <= self.heldout_fraction < 1:
            raise ValueError(f"DPOConfig.heldout_fraction must be in [0, 1) (0 = no held-out set), got "
                             f"{self.heldout_fraction!r}")
        if not isinstance(self.disable_dropout, bool):
            raise TypeError(f"DPOConfig.disable_dropout must be True or False, got {self.disable_dropout!r}")
        if not isinstance(self.sampling, SamplingConfig):
            raise TypeError(f"DPOConfig.sampling must be a SamplingConfig, got {type(self.sampling).__name__}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (for checkpoints and hparams)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DPOConfig:
        """The config back from `to_dict` (a checkpoint written before a field existed takes its default)."""
        data = dict(data)
        if isinstance(data.get("sampling"), dict):
            data["sampling"] = SamplingConfig(**data["sampling"])
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# ---------------------------------------------------------------------------------------------- batches
class _Batch(NamedTuple):
    """Comparisons laid out for one forward pass of all their (prompt, completion) pairs."""

    tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # Policy.encode_pairs of the flat pairs
    index: torch.Tensor  # (B, K) long: each completion's position in the flat list (padded entries 0)
    ranks: torch.Tensor  # (B, K) long, padded entries 0
    k_mask: torch.Tensor  # (B, K) bool
    pair_mask: torch.Tensor  # (B, K, K) bool: the two completions differ


def _layout(comparisons: Sequence[Comparison]) -> tuple[list[str], list[str], torch.Tensor, torch.Tensor, torch.Tensor,
                                                         torch.Tensor]:
    """(flat prompts, flat completions, index, ranks, k_mask, pair_mask) of `comparisons`, on the CPU."""
    b, k = len(comparisons), max(len(c.completions) for c in comparisons)
    index = torch.zeros((b, k), dtype=torch.long)
    ranks = torch.zeros((b, k), dtype=torch.long)
    k_mask = torch.zeros((b, k), dtype=torch.bool)
    pair_mask = torch.zeros((b, k, k), dtype=torch.bool)
    prompts: list[str] = []
    completions: list[str] = []
    for row, c in enumerate(comparisons):
        n = len(c.completions)
        index[row, :n] = torch.arange(len(prompts), len(prompts) + n)
        ranks[row, :n] = torch.tensor(c.ranks)
        k_mask[row, :n] = True
        pair_mask[row, :n, :n] = torch.tensor([[a != z for z in c.completions] for a in c.completions])
        prompts.extend([c.prompt] * n)
        completions.extend(c.completions)
    return prompts, completions, index, ranks, k_mask, pair_mask


def _terms(comparisons: Sequence[Comparison], ties: TiesMode) -> int:
    """How many of `comparisons` carry a term under `ties` (known before any forward pass)."""
    if not comparisons:
        return 0
    _, _, _, ranks, k_mask, pair_mask = _layout(comparisons)
    zeros = torch.zeros(ranks.shape)
    return dpo_stats(zeros, zeros, ranks, k_mask, pair_mask, ties=ties).num_elements


def _key(c: Comparison) -> str:
    """What training reads of a comparison, hashed: checkpoints name their train and held-out sets by these."""
    blob = json.dumps([c.prompt, list(c.completions), list(c.ranks)], ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def _check_comparisons(comparisons: Sequence[Comparison], name: str, allow_empty: bool = False) -> list[Comparison]:
    if isinstance(comparisons, Comparison):
        raise TypeError(f"{name} must be a sequence of Comparison objects, not one Comparison; wrap it: [comparison]")
    out = list(comparisons)
    if not out and not allow_empty:
        raise ValueError(f"{name} is empty: DPO needs labelled comparisons (PreferenceStore.comparisons(), or collect "
                         "some with an oracle first)")
    for i, c in enumerate(out):
        if not isinstance(c, Comparison):
            raise TypeError(f"{name}[{i}] is a {type(c).__name__}, not an llm_gym Comparison")
    return out


# ---------------------------------------------------------------------------------------------- the agent
class DPO(Agent):
    """Trains a policy directly on labelled comparisons with the DPO or IPO loss (see the module docstring).

    Args:
        policy: the policy to train (the SFT policy in the InstructGPT pipeline), trained in place.
        comparisons: labelled comparisons (`PreferenceStore.comparisons()`): pairwise or K-way, ties allowed.
            Split into train and held-out by `config.heldout_fraction` with `rng`, unless `heldout` is given.
        config: hyperparameters.
        rng: the run's randomness (the split, the epoch shuffles, `act`'s sampling seeds).
        seed: instead of `rng`, an int as in Stable-Baselines3: `seed=s` is `rng=np.random.default_rng(s)` and gives
            the same run (pass one of the two, not both).
        reference: the frozen reference pi_ref; by default a frozen copy of `policy` as it is now (the SFT
            policy, `agents.reference.make_reference`). It must share the policy's tokenizer.
        logger: receives `train/dpo_loss`, `train/dpo_accuracy`, `train/dpo_margin`, `train/chosen_reward`,
            `train/rejected_reward`, `train/grad_norm` every step and `train/dpo_heldout_loss`,
            `train/dpo_heldout_accuracy`, `train/dpo_heldout_margin`, `train/heldout_chosen_reward`,
            `train/heldout_rejected_reward` on the held-out comparisons, at step = comparisons used so far
            (values already reduced over processes).
        distributed: the process group (data parallel); None = a single process. Every process passes the same
            comparisons, an rng with the same seed, and its own device's policy.
        heldout: an explicit held-out set; then all of `comparisons` is trained on.

    Raises:
        ValueError: no comparisons; no training comparison with a pair to learn from (only ties with
            ties="skip", or only identical completions); a completion too long for the context.

    Example:
        >>> agent = DPO(policy, store.comparisons(), DPOConfig(), rng=np.random.default_rng(0))  # doctest: +SKIP
        >>> agent.learn(2 * len(agent.train_set)).save("runs/dpo")  # doctest: +SKIP
    """

    def __init__(
        self,
        policy: Policy,
        comparisons: Sequence[Comparison],
        config: DPOConfig,
        rng: np.random.Generator | None = None,
        reference: Policy | None = None,
        logger: Logger | None = None,
        distributed: Distributed | None = None,
        *,
        heldout: Sequence[Comparison] | None = None,
        seed: int | None = None,
    ) -> None:
        if not isinstance(policy, Policy):
            raise TypeError(f"policy must be an llm_gym Policy, got {type(policy).__name__}")
        if not isinstance(config, DPOConfig):
            raise TypeError(f"config must be a DPOConfig, got {type(config).__name__}")
        rng = resolve_rng(rng, seed, "DPO")
        data = _check_comparisons(comparisons, "comparisons")
        self.policy, self.config, self.rng = policy, config, rng
        self.dist = distributed if distributed is not None else Distributed()
        self.logger = logger if logger is not None else Logger(None)
        if heldout is None:
            self.train_set, self.heldout_set = self._split(data)
        else:
            self.train_set, self.heldout_set = data, _check_comparisons(heldout, "heldout", allow_empty=True)
        self._warn_identical(self.train_set + self.heldout_set)
        self._check_learnable()
        self._check_lengths(self.train_set + self.heldout_set)

        if reference is None:
            reference = make_reference(policy)
        elif not isinstance(reference, Policy):
            raise TypeError(f"reference must be an llm_gym Policy, got {type(reference).__name__}")
        elif reference is policy or reference.model is policy.model:
            raise ValueError("the reference must be a frozen copy of the policy, not the policy itself; pass "
                             "llm_gym.agents.reference.make_reference(policy), or nothing (the default makes one)")
        elif reference.tokenizer.get_vocab() != policy.tokenizer.get_vocab():
            raise ValueError("the reference's tokenizer differs from the policy's; DPO compares log-probs of the same "
                             "token ids, so load the reference from the policy's SFT checkpoint")
        reference.model.eval()
        for p in reference.model.parameters():
            p.requires_grad_(False)
        self.reference = reference

        # only trainable parameters: a LoRA policy's frozen base gets no optimizer entry (a plain model's order is kept)
        self.optimizer = torch.optim.AdamW([p for p in policy.model.parameters() if p.requires_grad],
                                           lr=config.learning_rate, weight_decay=config.weight_decay)
        self._train_model, _ = self.dist.prepare(policy.model)
        self.update_step = UpdateStep(self.optimizer, [self._train_model], distributed=self.dist,
                                      max_grad_norm=config.max_grad_norm, mixed_precision=config.mixed_precision,
                                      hint="lower learning_rate, or check the reference's weights (its log-probs "
                                           "enter every term)")
        self.num_timesteps = 0
        """Comparisons trained on so far (counting repeats over epochs; `learn`'s `total_steps` counts these)."""
        self.iteration = 0
        """Steps (batches) taken so far."""
        self.epoch = 0
        """Epochs begun so far."""
        self._order = np.zeros(0, dtype=np.int64)  # the current epoch's permutation of the training set
        self._cursor = 0  # how much of it has been used
        self._last_batch = 0  # comparisons in the latest step (the stand-in env's num_envs; 0 before the first)
        self._env = StandInEnv(lambda: self._last_batch or self.config.batch_size, "DPO's comparisons per step")

    # ------------------------------------------------------------------ data checks
    def _split(self, data: list[Comparison]) -> tuple[list[Comparison], list[Comparison]]:
        """(train, held-out), shuffled with the rng; at least one of each when heldout_fraction > 0 and n >= 2."""
        n = len(data)
        order = self.rng.permutation(n)
        n_held = 0
        if self.config.heldout_fraction > 0 and n >= 2:
            n_held = min(max(round(self.config.heldout_fraction * n), 1), n - 1)
        return [data[i] for i in order[n_held:]], [data[i] for i in order[:n_held]]

    def _check_learnable(self) -> None:
        """Refuse a training set in which no comparison carries a term, saying why and what to do."""
        if _terms(self.train_set, self.config.ties):
            return
        everything = self.train_set + self.heldout_set
        if all(c.is_tie for c in everything) and self.config.ties == "skip":
            raise ValueError(
                f"all {len(everything)} comparisons are ties, and ties='skip' gives a tie no term: DPO has nothing to "
                "learn. Use DPOConfig(ties='half') to train on ties as half-preferences (pulling the two completions' "
                "implicit rewards together), or add comparisons with a strict preference"
            )
        if _terms(self.heldout_set, self.config.ties):
            raise ValueError(
                f"none of the {len(self.train_set)} training comparisons carries a DPO term (ties with ties='skip', or "
                "identical completions) and the held-out set holds every one that does; lower "
                f"DPOConfig.heldout_fraction (now {self.config.heldout_fraction}), or move some to training"
            )
        raise ValueError(
            f"none of the {len(everything)} comparisons carries a DPO term: every pair compares a completion with an "
            "identical copy of itself (h = 0 whatever the policy) or is a tie with ties='skip'. Collect comparisons "
            "of different completions with a strict preference (or use ties='half' for ties)"
        )

    @staticmethod
    def _warn_identical(data: list[Comparison]) -> None:
        """Warn about strict preferences between identical completions (contradictory labels that carry no term)."""
        bad = [c for c in data if any(c.completions[i] == c.completions[j] for i, j in c.pairs())]
        if bad:
            warnings.warn(
                f"{len(bad)} comparison(s) rank a completion above an identical copy of itself (first: query "
                f"{bad[0].query_id}); such a pair has h = 0 whatever the policy, so DPO gives it no term and does "
                "not count it. Check the oracle or drop those comparisons",
                UserWarning,
                stacklevel=3,
            )

    def _check_lengths(self, data: list[Comparison]) -> None:
        """Refuse, before training, a completion that leaves no room for its prompt in the context."""
        texts = sorted({t for c in data for t in c.completions})
        context = self.policy.context_length
        for text, ids in zip(texts, encode(self.policy.tokenizer, texts, special_tokens=False)):
            if len(ids) + 1 >= context:  # its EOS, and at least one prompt token
                owner = next(c for c in data if text in c.completions)
                raise ValueError(
                    f"comparison {owner.query_id}: a completion has {len(ids)} tokens, which with its EOS leaves no "
                    f"room for its prompt in the policy's context of {context} tokens; shorten it or drop the "
                    "comparison"
                )

    # ------------------------------------------------------------------ agent interface
    def _act(self, observations: Sequence[str], deterministic: bool) -> list[str]:
        """One completion per prompt with `config.sampling` (the seed is drawn from the agent's rng); greedy
        (top_k=1) when `deterministic`."""
        return sample_actions(self.policy, self.config.sampling, self.rng, observations, deterministic)

    def get_env(self) -> StandInEnv:
        """What SB3 callbacks see as `training_env`: DPO has no environment, so a stand-in whose `num_envs` is the
        comparisons in a step (`batch_size`; the latest step's count once one is taken, as an epoch's last batch may
        be shorter). Each comparison counts as a one-step episode."""
        return self._env

    def learn(self, total_steps: int | None = None, callback: CallbackLike = None) -> DPO:
        """Train until `total_steps` comparisons have been used in total (across resumes); return `self`.

        Each step takes the next `batch_size` comparisons of a shuffled epoch (a new permutation when
        one ends, so the last batch of an epoch may be shorter), so the count may overshoot
        `total_steps` by less than a batch, as Stable-Baselines3's does. None = `config.epochs`
        passes over the training comparisons. The held-out set is evaluated when training starts
        (step 0), every `eval_every` steps and when `learn` returns. The callback (a plain
        `callback(agent, num_timesteps)`, an SB3 `BaseCallback` or a list of them, `agents/base.py`)
        is told after each step; returning False stops.

        For an SB3 callback a step is one batch of one-step episodes (one per comparison):
        `on_rollout_start()`; the update; `num_timesteps` advanced by the batch; `update_locals` with
        `dones` (one True per comparison), `infos` (`{"query_id": ...}` per comparison), `comparisons`
        (the batch) and `stats` (the step's statistics); `on_step()`; `on_rollout_end()` unless it
        stopped. `training_env` is `get_env()`'s stand-in, so `ProgressBarCallback` advances by the
        comparisons of each step and `StopTrainingOnMaxEpisodes(max_episodes=N)` stops after the
        step that brings the comparisons trained on to `N * batch_size` or more (N steps when every
        batch is full; one more where an epoch's shorter last batch came in between).

        Raises:
            TrainingDivergedError: a loss or gradient became NaN or infinite; the step was stopped before the
                optimizer ran (the weights, and any checkpoint, are as they were).
        """
        if total_steps is None:
            total_steps = self.config.epochs * len(self.train_set)
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be a positive int (comparisons to train on), got {total_steps!r}")
        evaluated_at = -1 if self.num_timesteps < total_steps else self.num_timesteps  # nothing to do: no evaluation
        if self.num_timesteps == 0 and self.heldout_set:
            self._log_heldout()
            self.logger.dump(0)
            evaluated_at = 0
        with self._training_callback(callback, total_steps) as cb:
            while self.num_timesteps < total_steps:
                cb.on_rollout_start()
                batch = self._next_batch()
                stats = self._train_step(batch)
                self.num_timesteps += len(batch)
                self._last_batch = len(batch)
                self.iteration += 1
                if stats:
                    self.logger.record_dict({f"train/{k}": v for k, v in stats.items()})
                if self.heldout_set and self.config.eval_every and self.iteration % self.config.eval_every == 0:
                    self._log_heldout()
                    evaluated_at = self.num_timesteps
                self.logger.dump(self.num_timesteps)
                step_locals = {"comparisons": batch, "stats": stats, "dones": np.ones(len(batch), dtype=bool),
                               "infos": [{"query_id": c.query_id} for c in batch]}
                if not self._end_of_step(cb, step_locals):
                    break
            if self.heldout_set and evaluated_at != self.num_timesteps:
                self._log_heldout()
                self.logger.dump(self.num_timesteps)
        self.policy.model.eval()
        return self

    def _next_batch(self) -> list[Comparison]:
        """The next `batch_size` comparisons of the current epoch (a new shuffle when it is used up)."""
        if self._cursor >= len(self._order):
            self._order = self.rng.permutation(len(self.train_set))  # the same draw on every process
            self._cursor = 0
            self.epoch += 1
        picked = self._order[self._cursor : self._cursor + self.config.batch_size]
        self._cursor += len(picked)
        return [self.train_set[i] for i in picked]

    # ------------------------------------------------------------------ the maths of a step
    def _encode(self, comparisons: Sequence[Comparison]) -> _Batch:
        prompts, completions, index, ranks, k_mask, pair_mask = _layout(comparisons)
        device = self.policy.device
        return _Batch(self.policy.encode_pairs(prompts, completions), index.to(device), ranks.to(device),
                      k_mask.to(device), pair_mask.to(device))

    def _sequence_logps(self, batch: _Batch, model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K) `log pi(y|x)` by `model` (the policy's, or its data-parallel wrapper) and `log pi_ref(y|x)`."""
        policy_tokens = self.policy.evaluate(*batch.tensors, _MODEL_DISTRIBUTION, model=model, entropy="none").logprobs
        with torch.no_grad():
            ref_batch = (t.to(self.reference.device) for t in batch.tensors)
            ref_tokens = self.reference.evaluate(*ref_batch, _MODEL_DISTRIBUTION, entropy="none").logprobs
        # the sum over the completion's tokens and its EOS (masked positions are 0)
        return policy_tokens.sum(-1)[batch.index], ref_tokens.sum(-1).to(policy_tokens.device)[batch.index]

    def _stats(self, batch: _Batch, model: torch.nn.Module) -> DPOStats:
        cfg = self.config
        with self.update_step.autocast():
            policy_logps, reference_logps = self._sequence_logps(batch, model)
        return dpo_stats(policy_logps.float(), reference_logps.float(), batch.ranks, batch.k_mask, batch.pair_mask,
                         beta=cfg.beta, loss_type=cfg.loss_type, label_smoothing=cfg.label_smoothing, ties=cfg.ties)

    def _train_step(self, comparisons: list[Comparison]) -> dict[str, float]:
        """One optimizer step on a global batch; returns its statistics ({} when no comparison in it carries a term)."""
        cfg, dist, update = self.config, self.dist, self.update_step
        # this process's shard, in micro-batches (zero-weighted stand-ins for empty pieces)
        pieces = dist.micro_shards(comparisons, cfg.gradient_accumulation_steps)
        n_global = dist.sum_float(sum(_terms(p, cfg.ties) for p, w in pieces if w))
        if n_global == 0:
            return {}  # only ties ("skip") or identical completions, on every process: nothing to learn
        self.policy.model.train(not cfg.disable_dropout)
        sums = _Sums()
        update.context = f"at DPO step {self.iteration} ({self.num_timesteps} comparisons trained on)"
        with update.accumulate():
            for k, (piece, weight) in enumerate(pieces):
                with update.micro(sync=k + 1 == len(pieces)):
                    stats = self._stats(self._encode(piece), self._train_model)
                    # the per-comparison mean over the global batch (a zero-weighted stand-in adds nothing)
                    update.backward(stats.loss * stats.num_elements * weight * update.scale(n_global),
                                    {"dpo_loss": stats.loss})
                if weight:
                    sums.add(stats)
        return {**sums.reduce(dist, "dpo_loss", "dpo_accuracy", "dpo_margin", "chosen_reward", "rejected_reward"),
                "grad_norm": update.grad_norm}

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate_preferences(self, comparisons: Sequence[Comparison] | None = None) -> dict[str, float]:
        """DPO loss, preference accuracy, margin and mean implicit rewards on `comparisons` (default: the held-out set).

        Returns:
            `loss`, `accuracy` (fraction of strict pairs with r_w > r_l), `margin` (mean r_w - r_l),
            `chosen_reward`, `rejected_reward` (mean implicit rewards), each NaN when nothing counts;
            reduced over processes (each scores its shard).
        """
        data = self.heldout_set if comparisons is None else _check_comparisons(comparisons, "comparisons")
        was_training = self.policy.model.training
        self.policy.model.eval()
        sums = _Sums()
        for start in range(0, len(data), self.config.batch_size):
            part = self.dist.shard(data[start : start + self.config.batch_size])
            if part:  # the plain module: a process with nothing to score joins no collective of the wrapper's
                sums.add(self._stats(self._encode(part), self.policy.model))
        self.policy.model.train(was_training)
        return sums.reduce(self.dist, "loss", "accuracy", "margin", "chosen_reward", "rejected_reward")

    def _log_heldout(self) -> dict[str, float]:
        m = self.evaluate_preferences()
        self.logger.record_dict({
            "train/dpo_heldout_loss": m["loss"], "train/dpo_heldout_accuracy": m["accuracy"],
            "train/dpo_heldout_margin": m["margin"], "train/heldout_chosen_reward": m["chosen_reward"],
            "train/heldout_rejected_reward": m["rejected_reward"],
        })
        return m

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | PathLike[str]) -> None:
        """Write policy, reference, optimizer, rng states and the data position to `path`, atomically.

        The folder is sealed by a manifest of sha256 hashes and replaces `path` only when complete
        (`llm_gym.agents.checkpoint`), so a crash mid-save leaves the previous checkpoint. The
        comparisons themselves are not saved (they are data, passed to `load` again); the
        checkpoint names its train and held-out sets by hash, and where the current epoch is.
        Under data parallelism every process calls it and the main process writes.
        """
        self.dist.main_process_only(self._write)(Path(path))

    def _write(self, path: Path) -> None:
        with write_checkpoint(path) as tmp:
            models = save_policy_and_reference(self.policy, self.reference, tmp)
            extra = {"optimizer": self.optimizer.state_dict(), "torch_rng": torch.get_rng_state()}
            torch.save(extra, tmp / _EXTRA_FILE)
            state = {
                "format_version": _FORMAT_VERSION,
                "algorithm": "dpo",
                "config": self.config.to_dict(),
                "num_timesteps": self.num_timesteps,
                "iteration": self.iteration,
                "epoch": self.epoch,
                "order": [int(i) for i in self._order],
                "cursor": self._cursor,
                "rng": self.rng.bit_generator.state,
                "train_keys": [_key(c) for c in self.train_set],
                "heldout_keys": [_key(c) for c in self.heldout_set],
                **models,
            }
            (tmp / _STATE_FILE).write_text(json.dumps(state, indent=1))

    @classmethod
    def load(
        cls,
        path: str | PathLike[str],
        comparisons: Sequence[Comparison] | None = None,
        *,
        heldout: Sequence[Comparison] | None = None,
        rng: np.random.Generator | None = None,
        logger: Logger | None = None,
        device: torch.device | str | None = None,
        distributed: Distributed | None = None,
    ) -> DPO:
        """Resume from a checkpoint written by `save`: training continues exactly as if it had not stopped.

        Args:
            path: the checkpoint folder.
            comparisons: the comparisons the run was built from (with a `heldout=` set, that too), in any
                order; they are matched to the saved train and held-out sets by content.
            heldout: the explicit held-out set, if the run was given one.
            rng: receives the saved rng state (a fresh Generator by default).
            logger: where metrics go; it is rewound to the checkpoint's step.
            device: where to load the policy (default: the distributed device, else CUDA when present).
            distributed: the process group to resume in (a checkpoint loads with any process count).

        Raises:
            FileNotFoundError: no DPO checkpoint at `path`.
            CheckpointError: a file is damaged, missing or added (the message names it and what to do).
            ValueError: the comparisons passed are not the ones the run trained on.
        """
        path = Path(path)
        fix = _fix(path)
        open_checkpoint(path, marker=_STATE_FILE, kind="DPO checkpoint", fix=fix)
        state = read_json(path / _STATE_FILE, fix=fix)
        version = state.get("format_version") if isinstance(state, dict) else None
        if version != _FORMAT_VERSION:
            raise CheckpointError(f"{path / _STATE_FILE}: checkpoint format {version!r} is not {_FORMAT_VERSION}, the "
                                  "one this llm_gym reads; resume it with the llm_gym version that wrote it")
        if state.get("algorithm") != "dpo":
            raise ValueError(f"{path} is a {state.get('algorithm')} checkpoint, not DPO's; load it with that agent's "
                             "class")
        if comparisons is None:
            raise ValueError("DPO.load needs the comparisons the run trained on: DPO.load(path, store.comparisons())")
        given = _check_comparisons(comparisons, "comparisons") + _check_comparisons(heldout or [], "heldout", True)
        with reading(path / _STATE_FILE, fix=fix):
            config = DPOConfig.from_dict(state["config"])
            train, held = _match(given, state["train_keys"], state["heldout_keys"])
        if device is None and distributed is not None:
            device = distributed.device
        policy, reference = load_policy_and_reference(path, state, device=device, fix=fix)
        with reading(path / _EXTRA_FILE, fix=fix):
            extra = torch.load(path / _EXTRA_FILE, map_location=policy.device, weights_only=True)
        rng = rng if rng is not None else np.random.default_rng()
        with warnings.catch_warnings():  # the constructor's data warnings were given when the run started
            warnings.simplefilter("ignore", UserWarning)
            agent = cls(policy, train, config, rng, reference=reference, logger=logger, distributed=distributed,
                        heldout=held)
        with reading(path / _EXTRA_FILE, fix=fix):
            agent.optimizer.load_state_dict(extra["optimizer"])
            torch_rng = extra["torch_rng"].cpu()
        with reading(path / _STATE_FILE, fix=fix):
            rng.bit_generator.state = state["rng"]
            agent.num_timesteps, agent.iteration = int(state["num_timesteps"]), int(state["iteration"])
            agent.epoch, agent._cursor = int(state["epoch"]), int(state["cursor"])
            agent._order = np.asarray(state["order"], dtype=np.int64)
        torch.set_rng_state(torch_rng)
        agent.logger.resume_at(agent.num_timesteps + 1)
        return agent


_STATE_FILE = "trainer_state.json"
_EXTRA_FILE = "optimizer.pt"
_FORMAT_VERSION = 1


def _fix(path: Path) -> str:
    """What to do about a damaged DPO checkpoint at `path` (ends every error `load` raises about it)."""
    return f"delete {path} to train DPO from the start"


def _match(given: list[Comparison], train_keys: list[str], heldout_keys: list[str]) -> tuple[list[Comparison],
                                                                                            list[Comparison]]:
    """The saved train and held-out sets, in their saved order, rebuilt from the comparisons passed to `load`."""
    pool: dict[str, list[Comparison]] = defaultdict(list)
    for c in given:
        pool[_key(c)].append(c)
    missing = 0
    sets: list[list[Comparison]] = []
    for keys in (train_keys, heldout_keys):
        found = []
        for key in keys:
            if pool.get(key):
                found.append(pool[key].pop())
            else:
                missing += 1
        sets.append(found)
    extra = sum(len(v) for v in pool.values())
    if missing or extra:
        raise ValueError(
            f"the comparisons passed to DPO.load are not the ones this run trained on ({missing} of its "
            f"{len(train_keys) + len(heldout_keys)} are missing, {extra} were not part of it); pass the same "
            "comparisons as when it started (with a store that has grown since, the first ones of "
            "store.comparisons()), or start a new run"
        )
    return sets[0], sets[1]


class _Sums:
    """Running sums of `DPOStats` over micro-batches, for metrics weighted by comparisons and by pairs."""

    def __init__(self) -> None:
        self.loss = self.elements = self.correct = self.chosen = self.rejected = self.pairs = 0.0

    def add(self, stats: DPOStats) -> None:
        self.loss += float(stats.loss.detach()) * stats.num_elements
        self.elements += stats.num_elements
        if stats.num_pairs:
            self.correct += float(stats.accuracy) * stats.num_pairs
            self.chosen += float(stats.chosen_reward) * stats.num_pairs
            self.rejected += float(stats.rejected_reward) * stats.num_pairs
            self.pairs += stats.num_pairs

    def reduce(self, dist: Distributed, *names: str) -> dict[str, float]:
        """(loss, accuracy, margin, chosen, rejected) over every process, under `names`; NaN where nothing counted."""
        loss, elements, correct, chosen, rejected, pairs = dist.sum_floats(
            self.loss, self.elements, self.correct, self.chosen, self.rejected, self.pairs)
        nan = float("nan")
        per_pair = [correct, chosen - rejected, chosen, rejected] if pairs else [nan] * 4
        per_pair = [v / pairs for v in per_pair] if pairs else per_pair
        return dict(zip(names, [loss / elements if elements else nan, *per_pair]))
