"""Preference oracles: whoever answers "which of these completions is better?".

An oracle takes comparison queries (a prompt and 2 to 9 completions) and yields answers
(`Answer`: a rank per completion, who answered, when). It may answer all of them, some,
or none: a human skips a query or stops for lunch, a remote labeller has not replied yet.
Answers are *yielded one at a time* so that `collect` can commit each to the
`PreferenceStore` the moment it is given: a crash, Ctrl-C or "quit" halfway through a
batch loses nothing already answered.

Oracles here:

* `SyntheticOracle`: a gold scorer plays the human, with calibrated noise (Bradley-Terry
  temperature, random flips as in Christiano et al. 2017, ties); the temperature is given, or
  chosen so that the labels agree with the gold order as often as people agree with each other
  (``agreement=0.73``, `HUMAN_AGREEMENT`: InstructGPT, Stiennon et al.).
* `RecordedOracle`: replays labelled comparisons from a file or records in memory, in the
  common layouts (``prompt/chosen/rejected``, HH-RLHF's implicit prompt, TRL's conversational
  records, K-way ranks; see `llm_gym.feedback.recorded`).
* `TerminalOracle`: a person at the keyboard.

>>> from llm_gym.core.preferences import Query
>>> from llm_gym.feedback.store import PreferenceStore
>>> scorer = lambda prompts, completions: [len(c) for c in completions]  # longer is better
>>> oracle = SyntheticOracle(scorer, rng=np.random.default_rng(0), temperature=0.0)
>>> with PreferenceStore(":memory:") as store:
...     answers = collect(oracle, [Query("the film was", (" ok", " really great"))], store)
...     [a.choice for a in answers], store.counts()["answers"]
(['second'], 1)
"""

from __future__ import annotations

import math
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from collections.abc import Callable, Iterator, Sequence
from os import PathLike
from typing import Any, TextIO

import numpy as np

from llm_gym.core.chat import ChatTokenizer
from llm_gym.core.preferences import PAIRWISE_CHOICES, Answer, Comparison, Query
from llm_gym.core.reward import RewardFn, score_batch
from llm_gym.feedback.recorded import load_comparisons, self_comparison
from llm_gym.feedback.store import PreferenceStore

__all__ = ["HUMAN_AGREEMENT", "Calibration", "NoAnswersError", "PreferenceOracle", "SyntheticOracle", "RecordedOracle",
           "TerminalOracle", "collect", "expected_agreement", "temperature_for_agreement"]


class NoAnswersError(ValueError):
    """A stage that learns from labels got none it can learn from (no answers, or only ties); the message says what
    to do. The answers that were given stay in the store."""


class PreferenceOracle(ABC):
    """Answers comparison queries, possibly only some of them.

    Subclasses implement `answer` as a generator. `name` is the labeller id recorded in the
    answers (a person's handle, ``"synthetic"``, a dataset's name).
    """

    name: str
    store: PreferenceStore | None = None
    """The store this oracle keeps queries and answers in itself (None for most oracles). An oracle with a
    store adds the queries it is asked to it and yields only answers already stored there, as `WebOracle`
    does with the page's store: `collect` into that same store then writes neither again."""

    @abstractmethod
    def answer(self, queries: Sequence[Query]) -> Iterator[Answer]:
        """Yield answers to some or all of `queries`, one at a time, in any order.

        An oracle may skip queries (no answer is yielded for them) and may stop early.
        Every yielded answer's ``query_id`` is one of the queries' and its ranks have one
        entry per completion of that query.
        """


def collect(oracle: PreferenceOracle, queries: Sequence[Query], store: PreferenceStore) -> list[Answer]:
    """Pose `queries` to `oracle` and commit each answer to `store` the moment it arrives.

    The queries are added to the store first (idempotent), so the ones left unanswered stay
    `pending` for a later session or another labeller. If the oracle raises (or the user
    presses Ctrl-C) halfway, every answer yielded before that is already stored. When the
    oracle's own `PreferenceOracle.store` is `store` (the same database), the oracle has
    written both, so each query and answer is written once, not again here.

    Returns:
        The answers the oracle gave, in the order it gave them.

    Raises:
        ValueError: if the oracle yields an answer to a query it was not asked, or with the
            wrong number of ranks (answers before it are kept).
    """
    queries = list(queries)
    for q in queries:
        if not isinstance(q, Query):
            raise TypeError(f"collect takes Query objects, got {type(q).__name__}; "
                            "build them with Query(prompt, completions)")
    own_store = getattr(oracle, "store", None)
    written_by_oracle = isinstance(own_store, PreferenceStore) and own_store.same_database(store)
    if not written_by_oracle:
        store.add_queries(queries)
    asked = {q.query_id: q for q in queries}
    oracle_name = getattr(oracle, "name", type(oracle).__name__)
    answers: list[Answer] = []
    for a in oracle.answer(queries):
        if not isinstance(a, Answer):
            raise TypeError(f"oracle {oracle_name!r} yielded {type(a).__name__}; an oracle must yield Answer objects")
        q = asked.get(a.query_id)
        if q is None:
            raise ValueError(
                f"oracle {oracle_name!r} answered query {a.query_id!r}, which it was not asked; "
                "an answer's query_id must be one of the queries passed to it"
            )
        if len(a.ranks) != q.k:
            raise ValueError(
                f"oracle {oracle_name!r} gave {len(a.ranks)} ranks for query {q.query_id} with {q.k} completions; "
                "give one rank per completion (0 = best)"
            )
        if not written_by_oracle:
            store.add_answer(a)
        answers.append(a)
    return answers


# --------------------------------------------------------------------------------------
# Synthetic oracle
# --------------------------------------------------------------------------------------


HUMAN_AGREEMENT = 0.73
"""How often human labellers agree with one another, the agreement a synthetic labeller is calibrated to when it
stands in for people: 72.6 +- 1.5% between InstructGPT's labellers (Ouyang et al. 2022), 73 +- 4% between
researchers in Stiennon et al. 2020 (labeller-researcher 77 +- 2%)."""


@dataclass(frozen=True)
class Calibration:
    """What a `SyntheticOracle` built from a target agreement chose, and on what (its `calibration`).

    Attributes:
        target: the agreement with the gold order asked for.
        temperature: the Bradley-Terry / Plackett-Luce temperature that gives it, in gold-score units (0 = noiseless).
        expected_agreement: the exact expected agreement at `temperature` on the calibration queries (within 1e-6 of
            `target`; no Monte Carlo).
        pairs: the implied pairs it was measured on: one per pairwise query, C(K,2) per K-way query, ties left out.
        ties: the implied pairs left out because the gold order does not order them: a pairwise query whose gold
            scores are within `tie_margin` (it is answered as a tie), or two completions of a K-way query with exactly
            equal gold scores.
        queries: the calibration queries.
    """

    target: float
    temperature: float
    expected_agreement: float
    pairs: int
    ties: int
    queries: int


class SyntheticOracle(PreferenceOracle):
    """A gold scorer playing the human labeller, with calibrated noise.

    This is the standard stand-in for people (Christiano et al. 2017 used "synthetic
    labels" from the true reward): it scores every completion with `scorer` and answers
    from the scores.

    **Pairwise queries** (scores ``s1``, ``s2``, ``d = s1 - s2``):

    1. tie, ranks ``(0, 0)``, when ``|d| <= tie_margin`` (so exactly equal scores tie even
       with the default margin 0);
    2. otherwise the first is preferred with the Bradley-Terry probability
       ``P = sigmoid(d / temperature)`` (the preference model of Christiano et al. 2017 and
       of reward-model training); ``temperature=0`` prefers the higher score always;
    3. then the label is inverted with probability `flip_prob`. So ``flip_prob`` is the
       rate of *wrong* labels added on top of the Bradley-Terry noise: ``0.5`` is pure
       chance, ``1.0`` an adversary that always picks the worse one (a reward-sign bug,
       Ziegler et al. 2019). Christiano et al. assumed 10% of human answers are *uniformly
       random*; half of those land right by luck, so that assumption is ``flip_prob=0.05``.
       Ties are not flipped.

    **K-way queries** (K > 2) get a strict ranking (no ties: `tie_margin` applies to
    pairwise queries only), drawn from the Plackett-Luce model, the K-way generalisation of
    Bradley-Terry used for InstructGPT-style rankings: rank by ``s / temperature + Gumbel
    noise``, so P(completion i ranked first) = softmax(s / temperature)_i, and K=2 reduces to
    step 2 above. ``temperature=0`` ranks by score, equal scores in random order. Then, with
    probability ``2 * flip_prob``, the ranking is replaced by a uniformly random
    permutation; for K=2 that is the same as inverting with probability ``flip_prob``, and
    ``flip_prob=0.5`` gives rankings that carry no information. ``flip_prob > 0.5`` has no
    K-way meaning and is refused for K-way queries.

    **Calibrated by agreement.** A temperature is in gold-score units, so what it means depends on the scorer
    (on the built-in task, ``temperature=1`` with 10% flips gives labels that agree with the gold order only 63%
    of the time). Built with ``agreement=`` instead, the oracle chooses the temperature at which its labels agree
    with the gold order on that share of the comparisons it is asked: human labellers agree with one another
    about 73% of the time (`HUMAN_AGREEMENT`: InstructGPT 72.6 +- 1.5%, Ouyang et al. 2022; Stiennon et al. 2020
    73 +- 4%). `calibrate` scores a sample of the queries (e.g. all a stage will ask, or the policy's own
    completions) and solves for the temperature; without it, the first batch given to `answer` is that sample.
    The agreement counted is that of every implied pair the gold order orders: a pair with gold difference ``d``
    agrees with probability ``(1 - f) sigmoid(|d| / T) + f (1 - sigmoid(|d| / T))``, for a pairwise query and
    for each of the C(K,2) pairs of a K-way ranking alike (with Gumbel noise every implied pair has the
    Bradley-Terry marginal, and a random permutation orders it right half the time); see `expected_agreement`.
    Pairwise queries within `tie_margin` (answered as ties) and K-way pairs with equal gold scores are left out.
    Calibrating draws no random numbers, so the answers do not depend on whether `calibrate` was called or
    `answer` calibrated on its first batch.

    Every query gets an answer. All completions of a batch are scored in one call to
    `scorer` (a reward model runs on batches).

    Args:
        scorer: any `RewardFn`, e.g. `llm_gym.GoldScorer()`.
        rng: the source of all randomness (required: a run must be reproducible).
        temperature: Bradley-Terry / Plackett-Luce temperature in score units; 0 = noiseless. 1.0 when neither it
            nor `agreement` is given (this class's own default, kept for code written against it; the pipeline's
            labeller, `OracleSpec`, defaults to ``agreement=HUMAN_AGREEMENT`` instead).
        agreement: instead of `temperature`: the share, in (0.5, 1 - flip_prob], of the pairs the gold order orders
            on which the labels should agree with it (`HUMAN_AGREEMENT` = 0.73 for a human-like labeller).
        flip_prob: probability in [0, 1] of inverting a pairwise label (see above).
        tie_margin: pairwise score differences up to this are answered as ties.
        name: the labeller id written into answers.
        clock: time source for ``answered_at``.

    Attributes:
        temperature: the temperature answers are drawn at; with `agreement`, None until calibrated.
        calibration: the `Calibration` that chose it (None for the temperature form and before calibrating).

    >>> from llm_gym.core.preferences import Query
    >>> scorer = lambda prompts, completions: [float(c) for c in completions]  # the score is the text
    >>> oracle = SyntheticOracle(scorer, rng=np.random.default_rng(0), agreement=0.73)
    >>> report = oracle.calibrate([Query("p", ("1.0", "0.0")), Query("p", ("0.0", "3.0"))])
    >>> round(report.temperature, 3), round(report.expected_agreement, 4), report.pairs
    (1.887, 0.73, 2)
    """

    def __init__(
        self,
        scorer: RewardFn,
        *,
        rng: np.random.Generator,
        temperature: float | None = None,
        agreement: float | None = None,
        flip_prob: float = 0.0,
        tie_margin: float = 0.0,
        name: str = "synthetic",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not callable(scorer):
            raise TypeError(f"scorer must be a reward function scorer(prompts, completions) -> floats, got {scorer!r}")
        if not isinstance(rng, np.random.Generator):
            raise TypeError(
                f"rng must be a numpy Generator, got {type(rng).__name__}; pass rng=np.random.default_rng(seed)"
            )
        if temperature is not None and agreement is not None:
            raise ValueError(
                f"give temperature or agreement, not both (got temperature={temperature!r}, agreement={agreement!r}): "
                "agreement chooses the temperature that makes the labels agree with the gold order that often"
            )
        if agreement is None:
            temperature = 1.0 if temperature is None else temperature
            _check_number("temperature", temperature, 0.0, math.inf, "0 means noiseless, 1.0 is the default")
        flip_hint = "it is a probability; 0.05 matches Christiano et al.'s 10% random answers"
        _check_number("flip_prob", flip_prob, 0.0, 1.0, flip_hint)
        _check_number("tie_margin", tie_margin, 0.0, math.inf, "0 makes only exactly equal scores tie")
        if agreement is not None:
            _check_agreement(agreement, float(flip_prob))
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string (the labeller id), got {name!r}")
        self.scorer = scorer
        self.rng = rng
        self.agreement = None if agreement is None else float(agreement)
        self.temperature: float | None = None if temperature is None else float(temperature)  # None: not calibrated yet
        self.calibration: Calibration | None = None
        self.flip_prob = float(flip_prob)
        self.tie_margin = float(tie_margin)
        self.name = name
        self.clock = clock

    def __repr__(self) -> str:
        if self.agreement is None:
            noise = f"temperature={self.temperature}"
        else:
            noise = f"agreement={self.agreement}"
        text = (f"SyntheticOracle({self.scorer!r}, {noise}, flip_prob={self.flip_prob}, tie_margin={self.tie_margin}, "
                f"name={self.name!r}")
        if self.agreement is not None:
            text += f", calibration={self.calibration!r}"
        return text + ")"

    def calibrate(self, queries: Sequence[Query]) -> Calibration:
        """Choose the temperature at which the labels agree with the gold order as often as `agreement` asks.

        Scores `queries` with the scorer (one batched call) and solves for the temperature by bisection on its
        logarithm (the expected agreement falls as the temperature grows), exactly, without drawing random
        numbers. Calling it again recalibrates on the new queries. `answer` calls it on its first batch when it
        was not called before.

        Returns:
            The `Calibration`, also kept as `calibration` (and the temperature as `temperature`).

        Raises:
            ValueError: the oracle was built with a fixed temperature; no queries; or no pair of them is ordered
                by the gold scores (every one a tie).
        """
        if self.agreement is None:
            raise ValueError(
                f"this oracle was built with a fixed temperature={self.temperature}; build it with agreement=... "
                f"(e.g. {HUMAN_AGREEMENT}, human labellers' agreement) to have the temperature chosen"
            )
        queries = list(queries)
        if not queries:
            raise ValueError("calibrate needs queries to measure the agreement on; got none")
        return self._calibrate(queries, self._score(queries))

    def agreement_of(self, comparisons: Sequence[Comparison]) -> tuple[float, int]:
        """How often the labels of `comparisons` order their completions as this oracle's gold scorer does.

        Counts the implied pairs the gold order orders, as `calibrate` does (a pairwise comparison within
        `tie_margin`, and K-way pairs with equal gold scores, are left out); a tied label on such a pair counts as
        a disagreement. Labels from any labeller can be measured, the oracle's own included.

        Returns:
            (the share of agreeing pairs, NaN when no pair is counted; the number of pairs counted).
        """
        comparisons = list(comparisons)
        if not comparisons:
            return math.nan, 0
        prompts = [c.prompt for c in comparisons for _ in c.completions]
        completions = [x for c in comparisons for x in c.completions]
        scores = score_batch(self.scorer, prompts, completions)
        agree = total = start = 0
        for c in comparisons:
            s = scores[start : start + len(c.completions)]
            start += len(c.completions)
            ranks = np.asarray(c.ranks)
            i, j = np.triu_indices(len(s), k=1)
            gap = s[i] - s[j]
            counted = np.abs(gap) > self.tie_margin if len(s) == 2 else gap != 0
            label = np.sign(ranks[j] - ranks[i])  # +1: the label puts i above j
            agree += int(np.sum(counted & (label == np.sign(gap))))
            total += int(np.sum(counted))
        return (agree / total if total else math.nan), total

    def answer(self, queries: Sequence[Query]) -> Iterator[Answer]:
        """Yield an answer to every query, in order (see the class docstring for the noise model)."""
        queries = list(queries)
        if not queries:
            return
        if self.flip_prob > 0.5 and any(q.k > 2 for q in queries):
            raise ValueError(
                f"flip_prob={self.flip_prob} > 0.5 is defined for pairwise queries only (it inverts labels); "
                "for K-way rankings use flip_prob <= 0.5 (0.5 = uniformly random rankings)"
            )
        scores = self._score(queries)  # one batched call for the whole batch
        if self.agreement is not None and self.calibration is None:
            self._calibrate(queries, scores)  # draws no random numbers: the answers are those after calibrate()
        start = 0
        for q in queries:
            s = scores[start : start + q.k]
            start += q.k
            ranks = self._pairwise(s) if q.k == 2 else self._ranking(s)
            yield Answer(q.query_id, ranks, self.name, answered_at=self.clock())

    def _score(self, queries: list[Query]) -> np.ndarray:
        prompts = [q.prompt for q in queries for _ in q.completions]
        completions = [c for q in queries for c in q.completions]
        return score_batch(self.scorer, prompts, completions)

    def _calibrate(self, queries: list[Query], scores: np.ndarray) -> Calibration:
        assert self.agreement is not None
        gaps, ties = _ordered_gaps(scores, [q.k for q in queries], self.tie_margin)
        if not len(gaps):
            raise ValueError(
                f"cannot calibrate on these {len(queries)} queries: the gold scores order none of their {ties} pairs "
                f"(every pairwise difference is within tie_margin={self.tie_margin}, every K-way score equal); "
                "calibrate on queries whose completions differ, or lower tie_margin"
            )
        temperature = temperature_for_agreement(gaps, self.agreement, self.flip_prob)
        self.temperature = temperature
        self.calibration = Calibration(
            target=self.agreement, temperature=temperature,
            expected_agreement=expected_agreement(gaps, temperature, self.flip_prob),
            pairs=len(gaps), ties=ties, queries=len(queries))
        return self.calibration

    def _pairwise(self, s: np.ndarray) -> tuple[int, ...]:
        # Draw both numbers for every query, so the random stream does not depend on the scores.
        u, flip = self.rng.random(2)
        d = float(s[0] - s[1])
        if abs(d) <= self.tie_margin:
            return PAIRWISE_CHOICES["tie"]
        if self.temperature == 0.0:
            first = d > 0
        else:
            first = u < _sigmoid(d / self.temperature)  # Bradley-Terry (Christiano et al. 2017, eq. 1)
        if flip < self.flip_prob:  # random wrong labels (Christiano et al. 2017 assumed 10% random answers)
            first = not first
        return PAIRWISE_CHOICES["first" if first else "second"]

    def _ranking(self, s: np.ndarray) -> tuple[int, ...]:
        k = len(s)
        noise = self.rng.gumbel(size=k)
        tiebreak = self.rng.random(k)
        replace = self.rng.random() < 2 * self.flip_prob
        random_order = self.rng.permutation(k)
        if replace:
            order = random_order
        elif self.temperature == 0.0:
            order = np.lexsort((tiebreak, -s))  # by score, equal scores in random order
        else:
            order = np.argsort(-(s / self.temperature + noise))  # Plackett-Luce via the Gumbel-max trick
        ranks = np.empty(k, dtype=int)
        ranks[order] = np.arange(k)
        return tuple(int(r) for r in ranks)


def expected_agreement(gaps: Sequence[float] | np.ndarray, temperature: float, flip_prob: float) -> float:
    """The expected share of pairs a `SyntheticOracle` orders as the gold scores do, each pair given by its gold gap.

    A pair with gold difference ``|d| > 0`` is ordered right by Bradley-Terry with probability
    ``sigmoid(|d| / T)``, and the label is then inverted with probability ``f``, so it agrees with
    ``(1 - f) sigmoid(|d| / T) + f (1 - sigmoid(|d| / T))``. The same holds for each implied pair of a K-way
    ranking: with Plackett-Luce's Gumbel noise two completions are ordered by the difference of two Gumbels, which
    is logistic (the Bradley-Terry marginal), and the random permutation that replaces the ranking with
    probability ``2f`` orders them right half the time: ``(1 - 2f) sigmoid + f``, the same. The result is the mean
    over the pairs. ``temperature=0`` orders every pair right before the flips: ``1 - f``.

    >>> round(expected_agreement([1.0, 2.0], temperature=1.0, flip_prob=0.1), 6)  # (0.684847 + 0.804638) / 2
    0.744742
    """
    g = np.asarray(gaps, dtype=np.float64)
    if g.ndim != 1 or not len(g) or not np.all(g > 0) or not np.all(np.isfinite(g)):
        raise ValueError("gaps must be a non-empty list of finite gold differences |d| > 0 (ties left out)")
    if temperature == 0.0:
        right = np.ones_like(g)
    else:
        right = 1.0 / (1.0 + np.exp(-g / temperature))
    return float(np.mean(flip_prob + (1.0 - 2.0 * flip_prob) * right))


def temperature_for_agreement(gaps: Sequence[float] | np.ndarray, agreement: float, flip_prob: float) -> float:
    """The temperature at which `expected_agreement` on `gaps` is `agreement` (within 1e-6), by bisection on log T.

    For ``flip_prob < 0.5`` the expected agreement falls monotonically from ``1 - flip_prob`` at ``T = 0`` towards
    0.5 as T grows, so every target in (0.5, 1 - flip_prob] has one temperature; ``1 - flip_prob`` itself is
    ``T = 0``.

    >>> round(temperature_for_agreement([1.0, 2.0], agreement=0.744742, flip_prob=0.1), 4)
    1.0

    Raises:
        ValueError: `agreement` out of that range (the message says how to reach it), or no gaps.
    """
    _check_agreement(agreement, flip_prob)
    g = np.asarray(gaps, dtype=np.float64)
    ceiling = 1.0 - flip_prob

    def mean_agreement(t: float) -> float:
        return expected_agreement(g, t, flip_prob)

    if agreement >= ceiling - 1e-12 or mean_agreement(float(np.min(g)) / 60) < agreement:  # sigmoid(60) = 1 - 9e-27
        return 0.0
    lo = hi = float(np.median(g))  # agreement(lo) >= target >= agreement(hi)
    while mean_agreement(lo) < agreement:
        lo /= 2
    while mean_agreement(hi) > agreement:
        hi *= 2
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        value = mean_agreement(mid)
        if abs(value - agreement) < 1e-7 or hi / lo < 1 + 1e-12:
            return mid
        if value > agreement:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


def _ordered_gaps(scores: np.ndarray, ks: Sequence[int], tie_margin: float) -> tuple[np.ndarray, int]:
    """|gold difference| of every implied pair the gold order orders, and how many pairs it does not (ties).

    A pairwise query within `tie_margin` is answered as a tie; a K-way ranking is strict (`tie_margin` does not
    apply), so only its pairs with equal scores are ties."""
    gaps, ties, start = [], 0, 0
    for k in ks:
        s = scores[start : start + k]
        start += k
        i, j = np.triu_indices(k, k=1)
        gap = np.abs(s[i] - s[j])
        ordered = gap > tie_margin if k == 2 else gap > 0
        gaps.append(gap[ordered])
        ties += int(np.sum(~ordered))
    return np.concatenate(gaps) if gaps else np.empty(0), ties


def _check_agreement(agreement: object, flip_prob: float) -> None:
    hint = f"it is the share of pairs the labels order as the gold scores do; {HUMAN_AGREEMENT} is human labellers'"
    _check_number("agreement", agreement, 0.5, 1.0, hint)
    assert isinstance(agreement, (int, float, np.integer, np.floating))
    if agreement == 0.5:
        raise ValueError(f"agreement must be in (0.5, 1], got 0.5: that is chance, a labeller whose answers carry no "
                         f"information; {hint}")
    ceiling = 1.0 - flip_prob
    if ceiling <= 0.5:
        raise ValueError(f"agreement={agreement} is out of reach with flip_prob={flip_prob}: a labeller that inverts "
                         f"that share of its labels agrees with the gold order at most half the time; lower flip_prob "
                         f"below {1 - agreement:.4g}")
    if agreement > ceiling + 1e-12:
        raise ValueError(
            f"agreement={agreement} is out of reach with flip_prob={flip_prob}: the labels agree with the gold order "
            f"on at most 1 - flip_prob = {ceiling:.4g} of the pairs (temperature 0, every flip a wrong label) and "
            f"on 0.5 as the temperature grows, so the reachable agreements are (0.5, {ceiling:.4g}]; lower flip_prob "
            f"to at most {1 - agreement:.4g}, or ask for agreement <= {ceiling:.4g}")


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _check_number(name: str, value: object, lo: float, hi: float, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}; {hint}")
    if math.isnan(value) or not lo <= value <= hi:
        bounds = f"[{lo}, {hi}]" if math.isfinite(hi) else f">= {lo}"
        raise ValueError(f"{name} must be {bounds}, got {value!r}; {hint}")


# --------------------------------------------------------------------------------------
# Recorded oracle
# --------------------------------------------------------------------------------------


class RecordedOracle(PreferenceOracle):
    """Replays recorded comparisons: a labelled dataset answers the queries it has a label for.

    A query matches a record when its prompt and completions are the same; the completions
    may be in another order (the pair shown as (B, A) when (A, B) was recorded), and the
    ranks are permuted to match. Queries without a record are skipped (left pending). A
    query with several records (several labellers, contradictory labels, the pair recorded
    in both orders) gets one answer per record. Each record is one answer: in one call to
    `answer`, a record answers the first query it matches only (the same comparison asked
    twice, in either order, is answered once). Each answer's labeller is the record's
    labeller, or `name` when the record has none.

    `queries()` gives the recorded queries themselves, one per comparison (a pair recorded as
    (A, B) by one labeller and as (B, A) by another is one query with two answers), so
    ``collect(oracle, oracle.queries(), store)`` imports a whole dataset into a store, one
    answer per record.

    Args:
        comparisons: the recorded labels (a record with labeller ``"unknown"``, the
            `Comparison` default, is attributed to `name`).
        name: the labeller id for records without one.
        clock: time source for ``answered_at`` (recorded data has no answer time).
    """

    def __init__(
        self, comparisons: Sequence[Comparison], name: str = "recorded", *, clock: Callable[[], float] = time.time
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string (the labeller id), got {name!r}")
        comparisons = list(comparisons)
        for i, c in enumerate(comparisons):
            if not isinstance(c, Comparison):
                raise TypeError(f"RecordedOracle takes Comparison objects, got {type(c).__name__}")
            problem = self_comparison(c)
            if problem:
                raise ValueError(f"comparison {i}: {problem}")
        if not comparisons:
            raise ValueError("RecordedOracle got no comparisons; give at least one labelled comparison")
        self.comparisons = comparisons
        self.name = name
        self.clock = clock
        self._index: dict[tuple[str, tuple[str, ...]], list[tuple[int, Comparison]]] = {}
        for i, c in enumerate(comparisons):
            self._index.setdefault(_content_key(c.prompt, c.completions), []).append((i, c))

    @classmethod
    def from_file(
        cls,
        path: str | PathLike[str],
        name: str = "recorded",
        *,
        clock: Callable[[], float] = time.time,
        tokenizer: ChatTokenizer | None = None,
        **fields: str,
    ) -> RecordedOracle:
        """Load recorded comparisons from a ``.jsonl``, ``.json``, ``.csv`` or ``.parquet`` file.

        Each record is one comparison in any of the layouts of `llm_gym.feedback.recorded`:
        ``prompt/chosen/rejected``; ``chosen/rejected`` full texts whose common start is the
        prompt (HH-RLHF); TRL's conversational records (chat messages, rendered with
        `tokenizer`'s chat template); ``completions`` with ``preference`` or K-way ``ranks``.
        Any may add ``"labeller": str``; without it the labeller is `name`.

        Args:
            path: the file.
            name: the labeller id for records without one.
            clock: time source for ``answered_at``.
            tokenizer: the policy's tokenizer, for records that hold chat messages.
            **fields: other names for the fields: ``prompt_field``, ``chosen_field``,
                ``rejected_field``, ``completions_field``, ``preference_field``, ``ranks_field``,
                ``labeller_field`` (e.g. ``chosen_field="response_j"``).

        Raises:
            DatasetError: naming the file and line (JSONL, CSV) or row (JSON, Parquet), for a
                missing file, text that is not UTF-8, invalid JSON, a missing or mistyped field
                (with the fields found), an unknown preference value, invalid ranks, or a file
                with no comparisons.
        """
        if not isinstance(path, (str, PathLike)):
            raise TypeError(f"from_file takes a path, got {type(path).__name__}; use RecordedOracle.from_records for "
                            "records in memory")
        return cls(load_comparisons(path, name=name, tokenizer=tokenizer, **fields), name, clock=clock)

    from_jsonl = from_file
    """Deprecated alias of `from_file` (its name when it read JSONL only), kept so existing code and configs work;
    new code uses `from_file`, which reads every format."""

    @classmethod
    def from_records(
        cls,
        records: Any,
        name: str = "recorded",
        *,
        clock: Callable[[], float] = time.time,
        tokenizer: ChatTokenizer | None = None,
        **fields: str,
    ) -> RecordedOracle:
        """Recorded comparisons from records in memory: a list of dicts, a ``datasets.Dataset``, a pandas DataFrame.

        The layouts, field names and errors are those of `from_file` (rows are named by index).
        """
        return cls(load_comparisons(records, name=name, tokenizer=tokenizer, **fields), name, clock=clock)

    def queries(self) -> list[Query]:
        """The recorded queries, in file order, each comparison once (in the order its first record shows it)."""
        seen: dict[tuple[str, tuple[str, ...]], Query] = {}
        for c in self.comparisons:
            seen.setdefault(_content_key(c.prompt, c.completions), Query(c.prompt, c.completions, c.query_id))
        return list(seen.values())

    def answer(self, queries: Sequence[Query]) -> Iterator[Answer]:
        """Yield the recorded answers to those of `queries` that have a record, one per record; skip the rest."""
        used: set[int] = set()  # records already answered in this call, by position in `comparisons`
        for q in queries:
            for i, c in self._index.get(_content_key(q.prompt, q.completions), ()):
                if i in used:
                    continue
                used.add(i)
                ranks = _permute_ranks(c.completions, c.ranks, q.completions)
                labeller = self.name if c.labeller == "unknown" else c.labeller
                yield Answer(q.query_id, ranks, labeller, answered_at=self.clock())


def _content_key(prompt: str, completions: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    return prompt, tuple(sorted(completions))


def _permute_ranks(recorded: Sequence[str], ranks: Sequence[int], shown: Sequence[str]) -> tuple[int, ...]:
    """The ranks of `shown`, a reordering of `recorded` (identical texts are matched in order)."""
    slots: dict[str, list[int]] = {}
    for i, text in enumerate(recorded):
        slots.setdefault(text, []).append(i)
    return tuple(ranks[slots[text].pop(0)] for text in shown)


# --------------------------------------------------------------------------------------
# Terminal oracle
# --------------------------------------------------------------------------------------


class TerminalOracle(PreferenceOracle):
    """A person answering at the terminal.

    For each query it writes the prompt and the numbered completions to `output` (raw text,
    every line indented, so completions with newlines stay readable) and reads the answer
    with `input_fn`:

    * pairwise: ``1`` or ``2`` (the better one), ``t``/``tie``, ``s``/``skip``, ``q``/``quit``;
    * K-way: the completion numbers best first, e.g. ``2 1 4 3`` or ``2143`` (a strict
      ranking: every number once), or ``s``/``q``.

    Anything else is explained and asked again. End of input (EOFError) and Ctrl-C
    (KeyboardInterrupt) count as quit; so does a closed standard input when `input_fn` is
    `input` (nothing is asked, and a line says why); other exceptions of `input_fn`
    propagate. Each answer is yielded as soon as it is typed, so with `collect` it is in
    the store before the next query is shown. A session whose answers were all ties ends
    with a line saying that ties teach a reward model nothing.

    Args:
        input_fn: reads one line given a prompt string (`input` by default; tests pass a fake).
        output: where queries are written (default `sys.stdout`).
        name: the labeller id written into answers (use the person's handle).
        clock: time source for ``answered_at``.
    """

    def __init__(
        self,
        *,
        input_fn: Callable[[str], str] = input,
        output: TextIO | None = None,
        name: str = "human",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not callable(input_fn):
            raise TypeError(f"input_fn must be callable like input(prompt) -> str, got {input_fn!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string (the labeller id), got {name!r}")
        self.input_fn = input_fn
        self.output = output
        self.name = name
        self.clock = clock

    def answer(self, queries: Sequence[Query]) -> Iterator[Answer]:
        """Show each query, read the person's choice, and yield it at once; skipped queries yield nothing."""
        out = self.output if self.output is not None else sys.stdout
        queries = list(queries)
        if queries and self.input_fn is input and (sys.stdin is None or sys.stdin.closed):
            # `input` would raise RuntimeError("lost sys.stdin") or ValueError: say what is wrong instead
            out.write(f"No answer can be typed: standard input is closed. Run the command at a terminal to answer; "
                      f"the {len(queries)} queries stay pending.\n")
            _flush(out)
            return
        answered = skipped = ties = 0
        for n, q in enumerate(queries, start=1):
            out.write(_render(q, n, len(queries)))
            try:
                ranks = self._read_answer(q, out)
            except EOFError:  # end of input: as "q"
                ranks = None
                out.write("\n")
            except KeyboardInterrupt:
                # Ctrl-C interrupts, it does not quit: every answer given is already yielded (and stored by `collect`);
                # the caller stops, and a rerun asks only the rest (a pipeline does not train on a half-labelled set)
                out.write(f"\nInterrupted after {answered} answers; they are kept.\n")
                _flush(out)
                raise
            if ranks is None:  # quit
                break
            if ranks == "skip":
                skipped += 1
                continue
            answer = Answer(q.query_id, ranks, self.name, answered_at=self.clock())
            answered += 1
            ties += answer.is_tie
            yield answer
        out.write(f"Answered {answered}, skipped {skipped} of {len(queries)} queries.\n")
        if answered and ties == answered:
            out.write("Every answer was a tie: a tie says neither completion is better, so a reward model learns "
                      "nothing from these; answer 1 or 2 where one is better.\n")
        _flush(out)

    def _read_answer(self, q: Query, out: TextIO) -> tuple[int, ...] | str | None:
        """The ranks typed, ``"skip"``, or None for quit."""
        if q.k == 2:
            question = "Which is better? [1/2, t=tie, s=skip, q=quit]: "
            valid = "type 1 or 2 for the better completion, t for a tie, s to skip, q to quit"
        else:
            example = " ".join(str(i) for i in range(q.k, 0, -1))
            question = f"Rank them, best first (e.g. {example}) [s=skip, q=quit]: "
            valid = f"type each of the numbers 1 to {q.k} once, best first (e.g. {example}), s to skip, q to quit"
        while True:
            _flush(out)
            reply = self.input_fn(question).strip().lower()
            if reply in ("q", "quit"):
                return None
            if reply in ("s", "skip"):
                return "skip"
            ranks = _parse_reply(reply, q.k)
            if ranks is not None:
                return ranks
            out.write(f"{reply!r} is not a valid answer: {valid}.\n")


def _parse_reply(reply: str, k: int) -> tuple[int, ...] | None:
    if k == 2:
        return {"1": (0, 1), "2": (1, 0), "t": (0, 0), "tie": (0, 0)}.get(reply)
    parts = reply.replace(",", " ").split()
    if len(parts) == 1 and len(parts[0]) == k:  # "2143"
        parts = list(parts[0])
    if not all(p.isdigit() for p in parts):
        return None
    order = [int(p) for p in parts]
    if sorted(order) != list(range(1, k + 1)):
        return None
    ranks = [0] * k
    for position, number in enumerate(order):
        ranks[number - 1] = position
    return tuple(ranks)


def _render(q: Query, n: int, total: int) -> str:
    lines = [f"\n=== Query {n}/{total} ===", "Prompt:", _indent(q.prompt)]
    for i, c in enumerate(q.completions, start=1):
        lines += [f"[{i}]", _indent(c)]
    return "\n".join(lines) + "\n"


def _indent(text: str) -> str:
    if text == "":
        return "    (empty)"
    return "\n".join("    " + line for line in text.split("\n"))


def _flush(out: TextIO) -> None:
    flush = getattr(out, "flush", None)
    if flush is not None:
        flush()
