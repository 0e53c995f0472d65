"""Preference oracles: whoever answers "which of these completions is better?".

An oracle takes comparison queries (a prompt and 2 to 9 completions) and yields answers
(`Answer`: a rank per completion, who answered, when). It may answer all of them, some,
or none: a human skips a query or stops for lunch, a remote labeller has not replied yet.
Answers are *yielded one at a time* so that `collect` can commit each to the
`PreferenceStore` the moment it is given: a crash, Ctrl-C or "quit" halfway through a
batch loses nothing already answered.

Oracles here:

* `SyntheticOracle`: a gold scorer plays the human, with calibrated noise (Bradley-Terry
  temperature, random flips as in Christiano et al. 2017, ties).
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
from collections.abc import Callable, Iterator, Sequence
from os import PathLike
from typing import Any, TextIO

import numpy as np

from llm_gym.core.chat import ChatTokenizer
from llm_gym.core.preferences import PAIRWISE_CHOICES, Answer, Comparison, Query
from llm_gym.core.reward import RewardFn, score_batch
from llm_gym.feedback.recorded import load_comparisons, self_comparison
from llm_gym.feedback.store import PreferenceStore

__all__ = ["NoAnswersError", "PreferenceOracle", "SyntheticOracle", "RecordedOracle", "TerminalOracle", "collect"]


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

    Every query gets an answer. All completions of a batch are scored in one call to
    `scorer` (a reward model runs on batches).

    Args:
        scorer: any `RewardFn`, e.g. `llm_gym.GoldScorer()`.
        rng: the source of all randomness (required: a run must be reproducible).
        temperature: Bradley-Terry / Plackett-Luce temperature in score units; 0 = noiseless.
        flip_prob: probability in [0, 1] of inverting a pairwise label (see above).
        tie_margin: pairwise score differences up to this are answered as ties.
        name: the labeller id written into answers.
        clock: time source for ``answered_at``.
    """

    def __init__(
        self,
        scorer: RewardFn,
        *,
        rng: np.random.Generator,
        temperature: float = 1.0,
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
        _check_number("temperature", temperature, 0.0, math.inf, "0 means noiseless, 1.0 is the default")
        flip_hint = "it is a probability; 0.05 matches Christiano et al.'s 10% random answers"
        _check_number("flip_prob", flip_prob, 0.0, 1.0, flip_hint)
        _check_number("tie_margin", tie_margin, 0.0, math.inf, "0 makes only exactly equal scores tie")
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string (the labeller id), got {name!r}")
        self.scorer = scorer
        self.rng = rng
        self.temperature = float(temperature)
        self.flip_prob = float(flip_prob)
        self.tie_margin = float(tie_margin)
        self.name = name
        self.clock = clock

    def __repr__(self) -> str:
        return (
            f"SyntheticOracle({self.scorer!r}, temperature={self.temperature}, flip_prob={self.flip_prob}, "
            f"tie_margin={self.tie_margin}, name={self.name!r})"
        )

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
        prompts = [q.prompt for q in queries for _ in q.completions]
        completions = [c for q in queries for c in q.completions]
        scores = score_batch(self.scorer, prompts, completions)  # one batched call for the whole batch
        start = 0
        for q in queries:
            s = scores[start : start + q.k]
            start += q.k
            ranks = self._pairwise(s) if q.k == 2 else self._ranking(s)
            yield Answer(q.query_id, ranks, self.name, answered_at=self.clock())

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
