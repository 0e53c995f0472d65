"""The language-model parts of the preference loop: what gets compared and how the reward model learns.

`CompletionSource` proposes queries of K completions of one prompt, sampled from the
current policy (the policy the inner agent is training, so queries follow it).
`RewardModelLearner` trains a `RewardModel` or a `RewardEnsemble` (either a `LearnedReward`)
on all comparisons so far, warm-started (Christiano) or from its initial weights (rounds),
re-normalises it on a reference set, and measures ensemble disagreement for active query
selection.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np

from llm_gym.models.policy import Policy, SamplingConfig
from llm_gym.core.preferences import Comparison, Query
from llm_gym.core.reward import RewardFn
from llm_gym.models.reward_model import LearnedReward, RewardModel
from llm_gym.models.reward_trainer import RewardTrainer

__all__ = ["CompletionSource", "RewardModelLearner"]


class CompletionSource:
    """Queries of `k` completions of the same prompt, sampled from `policy` as it is now.

    The preference loop calls `propose(n)` (prompts drawn at random); the pipeline's
    reward-model stage calls `queries(prompts, seed_of)` on prompts it chose, with seeds it
    fixes per column and batch, so its labels do not depend on how many were asked before.

    Args:
        policy: the policy being trained (shared with the inner agent).
        prompts: where the query prompts are drawn from (uniformly, with replacement).
        sampling: how completions are sampled.
        rng: draws prompts and sampling seeds.
        k: completions per query (2 = pairwise; 4 to 9 = InstructGPT rankings).
    """

    def __init__(
        self, policy: Policy, prompts: Sequence[str], sampling: SamplingConfig, rng: np.random.Generator, k: int = 2
    ) -> None:
        if not 2 <= k <= 9:
            raise ValueError(f"k must be in [2, 9] completions per query, got {k}")
        if len(prompts) == 0:
            raise ValueError("CompletionSource needs at least one prompt")
        self.policy, self.prompts, self.sampling, self.rng, self.k = policy, list(prompts), sampling, rng, k

    def propose(self, n: int) -> list[Query]:
        """`n` queries on prompts drawn at random; completions that come out identical are dropped."""
        chosen = [self.prompts[i] for i in self.rng.integers(len(self.prompts), size=n)]
        seeds = [int(self.rng.integers(2**63 - 1)) for _ in range(self.k)]
        return self.queries(chosen, lambda column, start: seeds[column], batch_size=max(n, 1))

    def queries(self, prompts: Sequence[str], seed_of: Callable[[int, int], int], batch_size: int = 64) -> list[Query]:
        """One query per prompt: `k` independent samples of it, batch by batch.

        Column `j` (the j-th completion of every prompt) is sampled in batches of `batch_size`
        prompts; the batch starting at prompt `start` uses the seed `seed_of(j, start)`.
        A query whose completions are not all distinct says nothing and is dropped.
        """
        columns = []
        for j in range(self.k):
            column: list[str] = []
            for start in range(0, len(prompts), batch_size):
                batch = list(prompts[start : start + batch_size])
                column += self.policy.sample(batch, self.sampling, seed=seed_of(j, start)).completions
            columns.append(column)
        return [Query(prompt, tuple(completions)) for prompt, *completions in zip(prompts, *columns)
                if len(set(completions)) == self.k]


def _state(models: Sequence[RewardModel]) -> list[dict]:
    return [copy.deepcopy(m.net.state_dict()) for m in models]


class RewardModelLearner:
    """Trains a reward model (or ensemble) on every comparison so far.

    Args:
        model: a `RewardModel` or a `RewardEnsemble` (the object the environment calls: it is
            trained in place, so the agent always optimises the current reward model).
        trainer: the `RewardTrainer` (its rng draws splits and shuffles).
        rng: draws an ensemble's bootstrap resamples (`RewardTrainer.fit`'s `bootstrap_rng`).
        gold_fn: the true reward when known, for `gold_agreement`.
        reference: (prompts, completions) that should score 0 on average after each fit
            (InstructGPT normalises on demonstrations).
    """

    def __init__(
        self,
        model: LearnedReward,
        trainer: RewardTrainer,
        rng: np.random.Generator,
        gold_fn: RewardFn | None = None,
        reference: tuple[Sequence[str], Sequence[str]] | None = None,
    ) -> None:
        self.model, self.trainer, self.rng, self.gold_fn, self.reference = model, trainer, rng, gold_fn, reference
        self._initial = _state(model.members)

    def fit(self, comparisons: Sequence[Comparison], fresh: bool = False) -> dict[str, float]:
        """Train on `comparisons`; `fresh=True` first restores the initial weights (Stiennon's rounds)."""
        if fresh:
            for member, state in zip(self.model.members, self._initial):
                member.net.load_state_dict(state)
        metrics = self.trainer.fit(self.model, comparisons, self.gold_fn, bootstrap_rng=self.rng)
        if self.reference is not None:
            self.model.normalize(*self.reference)
        return metrics

    def disagreement(self, queries: Sequence[Query]) -> np.ndarray:
        """Per query: std across members of the predicted preference.

        For K completions the prediction is the Plackett-Luce probability of each being ranked
        first (softmax of the rewards); disagreement is its std across members, averaged over
        the completions. With a single model there is nothing to disagree: all zeros.
        """
        members = self.model.members
        if len(members) < 2 or not queries:
            return np.zeros(len(queries))
        prompts = [q.prompt for q in queries for _ in q.completions]
        completions = [c for q in queries for c in q.completions]
        scores = np.stack([m.score(prompts, completions) for m in members])  # (members, total)
        out, start = np.empty(len(queries)), 0
        for i, q in enumerate(queries):
            r = scores[:, start : start + q.k]
            p = np.exp(r - r.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            out[i] = float(p.std(axis=0).mean())
            start += q.k
        return out
