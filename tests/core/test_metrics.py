"""pass@k (Chen et al. 2021's unbiased estimator) against hand computation and brute-force enumeration."""

from __future__ import annotations

import doctest
import itertools
import math

import numpy as np
import pytest

from llm_gym.core import metrics
from llm_gym.core.metrics import estimate_pass_at_k, pass_at_k, verifies_answers


def test_doctests() -> None:
    assert doctest.testmod(metrics).failed == 0


def test_hand_computed_values() -> None:
    assert pass_at_k(5, 2, 1) == pytest.approx(2 / 5)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))  # 0.7
    assert pass_at_k(8, 1, 4) == pytest.approx(0.5)  # one correct of 8: in half the 4-subsets
    assert pass_at_k(8, 8, 8) == 1.0 and pass_at_k(8, 0, 1) == 0.0


@pytest.mark.parametrize("n", range(1, 8))
def test_matches_brute_force_over_subsets(n: int) -> None:
    """The share of k-subsets of the n samples that hold a correct one, counted subset by subset."""
    for c in range(n + 1):
        samples = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(samples, k))
            expected = sum(any(s) for s in subsets) / len(subsets)
            assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12), (n, c, k)


def test_stable_for_large_n() -> None:
    """The product form neither overflows nor loses the small values the binomial ratio would round away."""
    value = pass_at_k(2000, 3, 10)
    assert value == pytest.approx(1 - math.comb(1997, 10) / math.comb(2000, 10), rel=1e-9)
    assert 0 < pass_at_k(10**6, 1, 1) == pytest.approx(1e-6)


def test_vectorised_form_is_the_per_problem_value() -> None:
    correct = [0, 1, 3, 8]
    for k in (1, 4, 8):
        assert estimate_pass_at_k(8, correct, k).tolist() == pytest.approx([pass_at_k(8, c, k) for c in correct])
    assert estimate_pass_at_k([4, 8], [2, 2], 2).tolist() == pytest.approx([pass_at_k(4, 2, 2), pass_at_k(8, 2, 2)])
    assert estimate_pass_at_k(4, np.array([1, 2]), 1).mean() == pytest.approx(3 / 8)
    assert estimate_pass_at_k(4, [], 1).shape == (0,)


@pytest.mark.parametrize(("n", "c", "k", "match"), [
    (5, 6, 1, r"c \(correct samples\) must be in \[0, n=5\]"),
    (5, -1, 1, "c"),
    (5, 2, 6, r"k must be in \[1, n=5\].*at least k samples"),
    (5, 2, 0, "k must be"),
    (0, 0, 1, "n .* must be >= 1"),
])
def test_refuses_impossible_counts(n: int, c: int, k: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        pass_at_k(n, c, k)


def test_refuses_non_integers_and_names_the_problem() -> None:
    with pytest.raises(TypeError, match="k must be an int"):
        pass_at_k(5, 2, 1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="c must be an int"):
        pass_at_k(5, True, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="problem 1: .*k must be in"):
        estimate_pass_at_k([8, 2], [1, 1], 4)
    with pytest.raises(ValueError, match="one per problem"):
        estimate_pass_at_k([8, 8], [1], 1)


def test_verifies_answers_only_when_declared_true() -> None:
    class Checker:
        verifies_answers = True

    class Truthy:
        verifies_answers = 1  # not the declaration

    assert verifies_answers(Checker) and verifies_answers(Checker())
    assert not verifies_answers(Truthy()) and not verifies_answers(len) and not verifies_answers(None)
