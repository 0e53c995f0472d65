"""The data of preference learning: comparison queries, answers, and labelled comparisons.

One representation serves pairwise and K-way feedback: an answer gives each completion a
*rank* (0 = best); equal ranks are ties. A pairwise answer "first is better" is
`ranks=(0, 1)`, "second is better" is `(1, 0)`, a tie is `(0, 0)`; an InstructGPT K-way
ranking of four completions is, say, `(2, 0, 3, 1)`. `Comparison.pairs()` turns any of
them into the C(K,2) (winner, loser) pairs that the Bradley-Terry loss consumes.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["Query", "Answer", "Comparison", "PAIRWISE_CHOICES", "ranks_from_choice"]

MIN_COMPLETIONS, MAX_COMPLETIONS = 2, 9  # InstructGPT ranked 4 <= K <= 9; 2 is the pairwise case

PAIRWISE_CHOICES = {"first": (0, 1), "second": (1, 0), "tie": (0, 0)}
"""The three answers to a pairwise query, as ranks."""


def ranks_from_choice(choice: str) -> tuple[int, int]:
    """`"first"`, `"second"` or `"tie"` as ranks; anything else is a `ValueError` naming the valid values."""
    try:
        return PAIRWISE_CHOICES[choice]
    except (KeyError, TypeError):
        raise ValueError(f"unknown pairwise answer {choice!r}; use one of {sorted(PAIRWISE_CHOICES)}") from None


def _check_ranks(ranks: Sequence[int], k: int, where: str) -> tuple[int, ...]:
    ranks = tuple(ranks)
    if len(ranks) != k:
        raise ValueError(f"{where}: {len(ranks)} ranks for {k} completions; give one rank per completion (0 = best)")
    for r in ranks:
        if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r < k:
            raise ValueError(f"{where}: rank {r!r} is not an int in [0, {k - 1}] (0 = best, equal ranks = tie)")
    return ranks


@dataclass(frozen=True)
class Query:
    """A question to an oracle: which of these completions of `prompt` is better (or: rank them).

    Attributes:
        prompt: the prompt all completions answer.
        completions: 2 to 9 completions.
        query_id: a stable id; by default a hash of prompt and completions, so posing the same
            query twice is idempotent in a preference store.
    """

    prompt: str
    completions: tuple[str, ...]
    query_id: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise TypeError(f"Query.prompt must be a str, got {type(self.prompt).__name__}")
        comps = tuple(self.completions) if not isinstance(self.completions, str) else None
        if comps is None:
            raise TypeError("Query.completions must be a sequence of strings, not one string")
        if not MIN_COMPLETIONS <= len(comps) <= MAX_COMPLETIONS:
            raise ValueError(f"a query compares {MIN_COMPLETIONS} to {MAX_COMPLETIONS} completions, got {len(comps)}")
        for c in comps:
            if not isinstance(c, str):
                raise TypeError(f"Query.completions must be strings, got {type(c).__name__}")
        object.__setattr__(self, "completions", comps)
        if not self.query_id:
            blob = json.dumps([self.prompt, list(comps)], ensure_ascii=False).encode()
            object.__setattr__(self, "query_id", hashlib.sha256(blob).hexdigest()[:24])

    @property
    def k(self) -> int:
        """How many completions are compared."""
        return len(self.completions)


@dataclass(frozen=True)
class Answer:
    """An oracle's answer to one query: a rank per completion (0 = best, equal = tie), who, and when."""

    query_id: str
    ranks: tuple[int, ...]
    labeller: str
    answered_at: float = field(default_factory=time.time)
    """Unix time of the answer."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "ranks", _check_ranks(self.ranks, len(tuple(self.ranks)), f"answer to {self.query_id}"))
        if len(self.ranks) < MIN_COMPLETIONS:
            raise ValueError(f"answer to {self.query_id}: needs at least {MIN_COMPLETIONS} ranks")
        if not self.labeller:
            raise ValueError("Answer.labeller must name who answered (e.g. 'synthetic', 'alice')")

    @property
    def is_tie(self) -> bool:
        """True when every completion got the same rank (nothing to learn from it)."""
        return len(set(self.ranks)) == 1

    @property
    def choice(self) -> str:
        """For a pairwise answer: `"first"`, `"second"` or `"tie"`."""
        if len(self.ranks) != 2:
            raise ValueError(f"answer to {self.query_id} ranks {len(self.ranks)} completions; choice is for pairwise answers")
        return {(0, 1): "first", (1, 0): "second"}.get(self.ranks, "tie")  # type: ignore[arg-type]


@dataclass(frozen=True)
class Comparison:
    """A labelled query: the unit of reward-model training data.

    `pairs()` gives the (winner, loser) index pairs of the ranking: C(K,2) of them for a
    strict ranking, fewer where there are ties (tied pairs are listed by `tied_pairs()`).
    """

    prompt: str
    completions: tuple[str, ...]
    ranks: tuple[int, ...]
    labeller: str = "unknown"
    query_id: str = ""

    def __post_init__(self) -> None:
        q = Query(self.prompt, tuple(self.completions), self.query_id)
        object.__setattr__(self, "completions", q.completions)
        object.__setattr__(self, "query_id", q.query_id)
        object.__setattr__(self, "ranks", _check_ranks(self.ranks, q.k, f"comparison {q.query_id}"))

    @classmethod
    def from_query(cls, query: Query, answer: Answer) -> Comparison:
        """Join a query and its answer."""
        if answer.query_id != query.query_id:
            raise ValueError(f"answer is for query {answer.query_id}, not {query.query_id}")
        return cls(query.prompt, query.completions, answer.ranks, answer.labeller, query.query_id)

    def pairs(self) -> list[tuple[int, int]]:
        """(winner, loser) index pairs: every i, j with rank[i] < rank[j]."""
        k = len(self.ranks)
        return [(i, j) for i in range(k) for j in range(k) if self.ranks[i] < self.ranks[j]]

    def tied_pairs(self) -> list[tuple[int, int]]:
        """(i, j), i < j, with equal ranks."""
        k = len(self.ranks)
        return [(i, j) for i in range(k) for j in range(i + 1, k) if self.ranks[i] == self.ranks[j]]

    @property
    def is_tie(self) -> bool:
        """True when all completions tie (no pair to learn from)."""
        return not self.pairs()
