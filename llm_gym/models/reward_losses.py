"""The Bradley-Terry losses of reward modelling, as plain functions of rewards and ranks.

The probability that completion i is preferred to j is `sigmoid(r_i - r_j)` (the
Bradley-Terry model of Christiano et al. 2017, eq. 1; Ziegler et al. 2019). InstructGPT
(Ouyang et al. 2022, §3.5, eq. 1) trains on K ranked completions per prompt (4 <= K <= 9):
each prompt's C(K,2) pairs are one batch element, weighted 1/C(K,2), because spreading the
pairs of one prompt over batches makes the model over-fit. `RewardTrainer`
(`llm_gym/models/reward_trainer.py`) trains with `ranking_stats`, which also gives the
accuracy and margin it logs.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["RankingStats", "TiesMode", "pairwise_loss", "ranking_loss", "ranking_stats"]

TiesMode = Literal["skip", "half"]


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


class RankingStats(NamedTuple):
    """`ranking_loss` with what a trainer logs beside it."""

    loss: torch.Tensor  # scalar
    accuracy: torch.Tensor  # scalar: fraction of strict (w, l) pairs with r_w > r_l
    margin: torch.Tensor  # scalar: mean r_w - r_l over strict pairs
    num_pairs: int  # strict (w, l) pairs
    num_elements: int  # batch elements that contributed to the loss


def ranking_stats(rewards: torch.Tensor, ranks: torch.Tensor, k_mask: torch.Tensor | None = None,
                  ties: TiesMode = "skip", *, label_smoothing: float = 0.0) -> RankingStats:
    """`ranking_loss` (arguments as there), its pair accuracy and margin (detached), and the counts behind them."""
    if rewards.dim() != 2 or ranks.shape != rewards.shape:
        raise ValueError(f"rewards and ranks must both be (B, K); got {tuple(rewards.shape)} and {tuple(ranks.shape)}")
    if ties not in ("skip", "half"):
        raise ValueError(f"ties must be 'skip' or 'half', got {ties!r}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing!r} (0 = the plain Bradley-Terry loss)")
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
    nll = -F.logsigmoid(diff)
    if label_smoothing:  # cross-entropy with the soft target 1 - eps (label smoothing, as cDPO)
        nll = (1.0 - label_smoothing) * nll + label_smoothing * -F.logsigmoid(-diff)
    pair_loss = torch.where(wins, nll, zero)
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
    return RankingStats(loss, accuracy.detach(), margin.detach(), n_pairs, int(keep.sum()))


def ranking_loss(
    rewards: torch.Tensor,
    ranks: torch.Tensor,
    k_mask: torch.Tensor | None = None,
    ties: TiesMode = "skip",
    *,
    label_smoothing: float = 0.0,
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
        label_smoothing: eps in [0, 0.5): each strict pair's target is `1 - eps` instead of 1, i.e. the term is
            `-(1 - eps) log sigmoid(r_w - r_l) - eps log sigmoid(r_l - r_w)` (label smoothing; cDPO's
            conservative target for labels that are wrong with probability eps). 0 = the plain loss above.
    """
    return ranking_stats(rewards, ranks, k_mask, ties, label_smoothing=label_smoothing).loss
