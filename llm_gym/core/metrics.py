"""Metrics of tasks with verifiable answers: pass@k with the unbiased estimator, and which judges verify answers.

pass@k is the probability that at least one of k completions sampled for a problem is correct.
Drawing exactly k completions per problem and counting successes estimates it with high
variance; Chen et al. 2021 ("Evaluating Large Language Models Trained on Code", eq. 1) draw
n >= k completions, count the c correct ones and average over problems

    pass@k = E_problems[ 1 - C(n - c, k) / C(n, k) ],

the chance that a random k-subset of the n samples holds a correct one: unbiased for every
k <= n. The binomial coefficients overflow for moderate n, so, as in their Figure 3, the ratio
is computed as the product `prod_{i = n - c + 1}^{n} (1 - k / i)`.

pass@1 is the mean of c / n: the accuracy of a sampled completion.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["estimate_pass_at_k", "pass_at_k", "verifies_answers"]


def verifies_answers(judge: object) -> bool:
    """Whether `judge` (a gold reward function) checks answers: it says so with `verifies_answers = True`.

    Such a judge returns 1.0 for a correct completion and 0.0 for a wrong one, so evaluation can
    report accuracy and pass@k besides the mean reward (`llm_gym.app.evaluation.evaluate_policy`).

    >>> class Exact:
    ...     verifies_answers = True
    ...     def __call__(self, prompts, completions):
    ...         return [float(c.strip() == "4") for c in completions]
    >>> verifies_answers(Exact()), verifies_answers(lambda p, c: [0.0] * len(c)), verifies_answers(None)
    (True, False, False)
    """
    return getattr(judge, "verifies_answers", False) is True


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"pass@k: {name} must be an int, got {value!r}")
    return int(value)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with `n` samples of which `c` are correct (Chen et al. 2021, eq. 1).

    `1 - C(n - c, k) / C(n, k)`, computed as `1 - prod_{i=n-c+1}^{n} (1 - k / i)` (their Figure 3),
    which neither overflows nor loses precision for large n.

    >>> round(pass_at_k(5, 2, 1), 12)  # c / n
    0.4
    >>> round(pass_at_k(5, 2, 2), 12)  # 1 - C(3, 2) / C(5, 2) = 1 - 3 / 10
    0.7
    >>> pass_at_k(5, 3, 3), pass_at_k(5, 0, 3)  # fewer than k wrong samples: every k-subset holds a correct one
    (1.0, 0.0)

    Raises:
        TypeError: a non-integer argument.
        ValueError: unless 0 <= c <= n and 1 <= k <= n.
    """
    n, c, k = _check_int("n", n), _check_int("c", c), _check_int("k", k)
    if n < 1:
        raise ValueError(f"pass@k: n (samples per problem) must be >= 1, got {n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass@k: c (correct samples) must be in [0, n={n}], got {c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@k: k must be in [1, n={n}] (pass@k needs at least k samples per problem), got {k}")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def estimate_pass_at_k(num_samples: int | Sequence[int], num_correct: Sequence[int], k: int) -> np.ndarray:
    """Unbiased pass@k of each problem (Chen et al. 2021); its mean is the benchmark's pass@k.

    Args:
        num_samples: n, one for every problem or one per problem.
        num_correct: c per problem.
        k: the k of pass@k, at most every problem's n.

    >>> estimate_pass_at_k(5, [2, 0, 5], 2).round(12).tolist()
    [0.7, 0.0, 1.0]
    >>> estimate_pass_at_k([4, 5], [1, 2], 1).round(12).tolist()
    [0.25, 0.4]

    Raises:
        ValueError: lengths that differ, or a problem whose n, c, k `pass_at_k` refuses (named by index).
    """
    correct = list(num_correct)
    samples = [num_samples] * len(correct) if isinstance(num_samples, (int, np.integer)) else list(num_samples)
    if len(samples) != len(correct):
        raise ValueError(f"pass@k: got {len(samples)} sample counts but {len(correct)} correct counts; give one per problem")
    out = np.empty(len(correct))
    for i, (n, c) in enumerate(zip(samples, correct)):
        try:
            out[i] = pass_at_k(n, c, k)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"problem {i}: {exc}") from exc
    return out
