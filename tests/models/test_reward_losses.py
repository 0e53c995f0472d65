"""Bradley-Terry losses against hand computation: pairwise, K-way rankings, ties, mixed K, label smoothing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llm_gym.models.reward_losses import pairwise_loss, ranking_loss, ranking_stats


def _nls(x: float) -> float:
    """-log sigmoid(x), by hand."""
    return math.log1p(math.exp(-x))


def test_pairwise_loss_matches_hand_computation() -> None:
    assert float(pairwise_loss(torch.tensor([1.0]), torch.tensor([0.0]))) == pytest.approx(math.log(1 + math.exp(-1)))
    loss = pairwise_loss(torch.tensor([1.0, 0.5]), torch.tensor([0.0, 2.0]))
    assert float(loss) == pytest.approx((_nls(1.0) + _nls(-1.5)) / 2)
    with pytest.raises(ValueError, match="same shape"):
        pairwise_loss(torch.zeros(2), torch.zeros(3))


def test_ranking_loss_k4_strict_is_mean_over_six_pairs() -> None:
    rewards = torch.tensor([[0.3, -1.2, 2.0, 0.7], [1.0, 0.0, -0.5, 0.25]])
    ranks = torch.tensor([[2, 0, 3, 1], [0, 1, 2, 3]])
    per_element = []
    for b in range(2):
        total, count = 0.0, 0
        for i in range(4):
            for j in range(4):
                if ranks[b, i] < ranks[b, j]:
                    total += _nls(float(rewards[b, i] - rewards[b, j]))
                    count += 1
        assert count == 6  # C(4, 2)
        per_element.append(total / 6)
    assert float(ranking_loss(rewards, ranks)) == pytest.approx(np.mean(per_element), rel=1e-6)


def test_ranking_loss_k2_equals_pairwise_loss() -> None:
    rewards = torch.tensor([[1.0, 0.0], [0.2, 0.9]])
    ranks = torch.tensor([[0, 1], [1, 0]])
    expected = pairwise_loss(torch.tensor([1.0, 0.9]), torch.tensor([0.0, 0.2]))
    assert float(ranking_loss(rewards, ranks)) == pytest.approx(float(expected))


def test_ranking_loss_ties_skip_and_half() -> None:
    r = [0.5, 1.5, -0.5]
    rewards = torch.tensor([r])
    ranks = torch.tensor([[0, 0, 1]])  # 0 and 1 tie, both beat 2
    strict = _nls(r[0] - r[2]) + _nls(r[1] - r[2])
    assert float(ranking_loss(rewards, ranks, ties="skip")) == pytest.approx(strict / 2)
    d = r[0] - r[1]
    tie = -0.5 * math.log(1 / (1 + math.exp(-d))) - 0.5 * math.log(1 / (1 + math.exp(d)))
    assert float(ranking_loss(rewards, ranks, ties="half")) == pytest.approx((strict + tie) / 3)
    with pytest.raises(ValueError, match="ties"):
        ranking_loss(rewards, ranks, ties="drop")  # type: ignore[arg-type]


def test_ranking_loss_k_mask_mixed_k() -> None:
    rewards = torch.tensor([[0.3, -1.2, 2.0, 0.7], [1.0, 0.0, 99.0, -99.0]])
    ranks = torch.tensor([[2, 0, 3, 1], [1, 0, 0, 0]])
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    four = float(ranking_loss(rewards[:1], ranks[:1]))
    two = _nls(0.0 - 1.0)
    assert float(ranking_loss(rewards, ranks, mask)) == pytest.approx((four + two) / 2, rel=1e-6)
    changed = rewards.clone()
    changed[1, 2:] = torch.tensor([-5.0, 5.0])  # padded entries do not matter
    assert float(ranking_loss(changed, ranks, mask)) == pytest.approx(float(ranking_loss(rewards, ranks, mask)))


def test_ranking_loss_all_tie_element_excluded() -> None:
    rewards = torch.tensor([[1.0, 0.0], [3.0, -3.0]], requires_grad=True)
    ranks = torch.tensor([[0, 1], [0, 0]])
    assert float(ranking_loss(rewards, ranks).detach()) == pytest.approx(_nls(1.0))
    only_ties = ranking_loss(rewards[1:], ranks[1:])
    assert float(only_ties.detach()) == 0.0
    only_ties.backward()  # a zero connected to the graph: a step on it is a no-op
    assert rewards.grad is not None and float(rewards.grad.abs().sum()) == 0.0


def test_ranking_stats_accuracy_and_margin_by_hand() -> None:
    rewards = torch.tensor([[0.3, -1.2, 2.0], [1.0, 0.0, 0.0]])
    ranks = torch.tensor([[2, 0, 1], [0, 1, 1]])  # pairs (w, l): (1,0) (1,2) (2,0); (0,1) (0,2); a tie skipped
    diffs = [-1.2 - 0.3, -1.2 - 2.0, 2.0 - 0.3, 1.0, 1.0]
    stats = ranking_stats(rewards, ranks)
    assert stats.num_pairs == 5 and stats.num_elements == 2
    assert float(stats.accuracy) == pytest.approx(3 / 5)
    assert float(stats.margin) == pytest.approx(np.mean(diffs))
    assert float(stats.loss) == pytest.approx(float(ranking_loss(rewards, ranks)))


def test_label_smoothing_is_a_soft_target() -> None:
    rewards = torch.tensor([[0.3, -1.2, 2.0]])
    ranks = torch.tensor([[1, 2, 0]])
    eps = 0.1
    r = rewards[0].tolist()
    pairs = [(i, j) for i in range(3) for j in range(3) if ranks[0, i] < ranks[0, j]]
    expected = sum((1 - eps) * _nls(r[i] - r[j]) + eps * _nls(r[j] - r[i]) for i, j in pairs) / len(pairs)
    assert float(ranking_loss(rewards, ranks, label_smoothing=eps)) == pytest.approx(expected, rel=1e-6)
    assert float(ranking_loss(rewards, ranks, label_smoothing=0.0)) == pytest.approx(float(ranking_loss(rewards, ranks)))
    with pytest.raises(ValueError, match="label_smoothing"):
        ranking_loss(rewards, ranks, label_smoothing=0.5)
