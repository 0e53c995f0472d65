"""Preference oracles: calibrated synthetic noise, dataset replay, a scripted human at the terminal, `collect`."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from chat_fixtures import GEMMA_LIKE_TEMPLATE, llama_chat_tokenizer

from llm_gym.core.data import DatasetError
from llm_gym.feedback.oracles import PreferenceOracle, RecordedOracle, SyntheticOracle, TerminalOracle, collect
from llm_gym.core.preferences import Answer, Comparison, Query
from llm_gym.feedback.store import PreferenceStore


def float_scorer(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
    """A scorer whose score is written in the completion: lets a test fix every score exactly."""
    return [float(c) for c in completions]


def pair_queries(diffs: np.ndarray) -> list[Query]:
    """Pairwise queries whose score difference (first - second) is each of `diffs`."""
    return [Query(f"p{i}", (repr(d / 2), repr(-d / 2))) for i, d in enumerate(diffs.tolist())]


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[PreferenceStore]:
    with PreferenceStore(tmp_path / "prefs.sqlite") as s:
        yield s


# --------------------------------------------------------------------------------------
# SyntheticOracle
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_bradley_terry_calibration(temperature: float) -> None:
    """The empirical first-preferred rate matches sigmoid(d / T) in every probability bin.

    40,000 pairwise queries with score differences d spread evenly so that sigmoid(d / T)
    spans 0.018 to 0.982, split into 8 bins of 5,000 by that probability. Tolerance: the
    bin's empirical rate is within 0.025 of the bin's mean Bradley-Terry probability; the
    binomial standard error is at most sqrt(0.25 / 5000) = 0.0071, so 0.025 is > 3.5 sigma.
    """
    n, bins = 40_000, 8
    diffs = np.linspace(-4.0, 4.0, n) * temperature
    oracle = SyntheticOracle(float_scorer, rng=np.random.default_rng(0), temperature=temperature)
    answers = list(oracle.answer(pair_queries(diffs)))
    first = np.array([a.ranks == (0, 1) for a in answers])
    assert not any(a.is_tie for a in answers)
    p = sigmoid(diffs / temperature)
    for idx in np.array_split(np.argsort(p), bins):
        assert abs(first[idx].mean() - p[idx].mean()) < 0.025, (p[idx].mean(), first[idx].mean())
    # A wrong temperature would be caught: the calibration curve is not sigmoid(d).
    if temperature != 1.0:
        idx = np.array_split(np.argsort(p), bins)[2]
        assert abs(first[idx].mean() - sigmoid(diffs[idx]).mean()) > 0.1


def test_flip_half_is_chance() -> None:
    """flip_prob = 0.5 makes a noiseless oracle answer at chance: 0.5 +- 0.02 over 10,000 (sigma 0.005)."""
    oracle = SyntheticOracle(float_scorer, rng=np.random.default_rng(1), temperature=0.0, flip_prob=0.5)
    answers = list(oracle.answer(pair_queries(np.full(10_000, 3.0))))
    rate = np.mean([a.choice == "first" for a in answers])
    assert abs(rate - 0.5) < 0.02


@pytest.mark.parametrize("flip_prob", [0.1, 0.05])
def test_flip_gives_that_rate_of_wrong_labels(flip_prob: float) -> None:
    """With temperature 0 every wrong label is a flip: rate within 0.01 of flip_prob over 20,000 (sigma <= 0.0021)."""
    diffs = np.random.default_rng(7).uniform(0.1, 3.0, 20_000) * np.random.default_rng(8).choice([-1, 1], 20_000)
    oracle = SyntheticOracle(float_scorer, rng=np.random.default_rng(2), temperature=0.0, flip_prob=flip_prob)
    answers = list(oracle.answer(pair_queries(diffs)))
    wrong = np.mean([(a.choice == "first") != (d > 0) for a, d in zip(answers, diffs)])
    assert abs(wrong - flip_prob) < 0.01


def test_flip_one_is_an_adversary() -> None:
    oracle = SyntheticOracle(float_scorer, rng=np.random.default_rng(3), temperature=0.0, flip_prob=1.0)
    assert {a.choice for a in oracle.answer(pair_queries(np.full(200, 1.0)))} == {"second"}


def test_tie_margin_makes_ties_and_flips_leave_them() -> None:
    diffs = np.linspace(-1.0, 1.0, 2001)
    oracle = SyntheticOracle(float_scorer, rng=np.random.default_rng(4), tie_margin=0.3, flip_prob=0.5)
    answers = list(oracle.answer(pair_queries(diffs)))
    ties = np.array([a.ranks == (0, 0) for a in answers])
    expected = np.abs(np.array([float(q.completions[0]) - float(q.completions[1]) for q in pair_queries(diffs)])) <= 0.3
    assert ties.sum() > 500
    assert np.array_equal(ties, expected)
    # Exactly equal scores tie even with the default margin 0.
    same = SyntheticOracle(float_scorer, rng=np.random.default_rng(5))
    assert [a.choice for a in same.answer([Query("p", ("1.0", "1.0"))])] == ["tie"]


@pytest.mark.parametrize("flip_prob", [0.0, 0.1, 0.5])
def test_plackett_luce_top_choice_rate(flip_prob: float) -> None:
    """K=4: the best completion is ranked first with probability (1 - 2f) softmax(s/T)_best + 2f / K.

    The scores are shuffled into random positions per query (so position bias would show).
    20,000 queries; tolerance 0.015 (binomial sigma <= 0.0035, > 4 sigma).
    """
    n, temperature = 20_000, 0.8
    scores = np.array([1.0, 0.5, 0.0, -0.5])
    perm_rng = np.random.default_rng(11)
    queries, best_pos = [], []
    for i in range(n):
        perm = perm_rng.permutation(4)
        queries.append(Query(f"p{i}", tuple(repr(float(x)) for x in scores[perm])))
        best_pos.append(int(np.flatnonzero(perm == 0)[0]))
    oracle = SyntheticOracle(float_scorer, rng=np.random.default_rng(6), temperature=temperature, flip_prob=flip_prob)
    answers = list(oracle.answer(queries))
    assert all(sorted(a.ranks) == [0, 1, 2, 3] for a in answers)  # K-way rankings are strict
    rate = np.mean([a.ranks[b] == 0 for a, b in zip(answers, best_pos)])
    softmax = np.exp(scores / temperature) / np.exp(scores / temperature).sum()
    expected = (1 - 2 * flip_prob) * softmax[0] + 2 * flip_prob / 4
    assert abs(rate - expected) < 0.015, (rate, expected)


def test_kway_temperature_zero_ranks_by_score_and_breaks_ties_at_random() -> None:
    oracle = SyntheticOracle(float_scorer, rng=np.random.default_rng(0), temperature=0.0)
    [a] = oracle.answer([Query("p", ("0.1", "3.0", "-2.0", "1.0"))])
    assert a.ranks == (2, 0, 3, 1)
    answers = list(oracle.answer([Query(f"p{i}", ("1.0", "1.0", "0.0")) for i in range(2000)]))
    assert {a.ranks[2] for a in answers} == {2}
    assert 0.45 < np.mean([a.ranks[0] == 0 for a in answers]) < 0.55


def test_same_seed_same_answers_and_clock_injected() -> None:
    queries = pair_queries(np.linspace(-2, 2, 300)) + [Query("k", ("0.0", "0.5", "1.0", "0.2"))] * 20
    ticks = iter(range(1000))

    def run(seed: int) -> list[Answer]:
        oracle = SyntheticOracle(float_scorer, rng=np.random.default_rng(seed), flip_prob=0.1, clock=lambda: 42.0)
        return list(oracle.answer(queries))

    assert run(3) == run(3)
    assert [a.ranks for a in run(3)] != [a.ranks for a in run(4)]
    assert {a.answered_at for a in run(3)} == {42.0}
    oracle = SyntheticOracle(float_scorer, rng=np.random.default_rng(0), clock=lambda: float(next(ticks)), name="sim-1")
    answers = list(oracle.answer(queries[:3]))
    assert [a.answered_at for a in answers] == [0.0, 1.0, 2.0]
    assert {a.labeller for a in answers} == {"sim-1"}


def test_scorer_called_once_per_batch() -> None:
    calls: list[int] = []

    def scorer(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        calls.append(len(completions))
        assert len(prompts) == len(completions)
        return [float(c) for c in completions]

    oracle = SyntheticOracle(scorer, rng=np.random.default_rng(0))
    queries = pair_queries(np.linspace(-1, 1, 10)) + [Query("k", ("1", "2", "3", "4", "5"))]
    assert len(list(oracle.answer(queries))) == 11
    assert calls == [25]
    assert list(oracle.answer([])) == [] and calls == [25]  # an empty batch calls nothing


def test_synthetic_oracle_validates_arguments() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(TypeError, match="default_rng"):
        SyntheticOracle(float_scorer, rng=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="default_rng"):
        SyntheticOracle(float_scorer, rng=np.random.RandomState(0))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="reward function"):
        SyntheticOracle("gold", rng=rng)  # type: ignore[arg-type]
    for kwargs, match in [
        ({"temperature": -1.0}, "temperature must be >= 0"),
        ({"temperature": math.nan}, "temperature"),
        ({"flip_prob": 1.5}, r"flip_prob must be \[0.0, 1.0\]"),
        ({"tie_margin": -0.1}, "tie_margin"),
        ({"name": ""}, "name"),
    ]:
        with pytest.raises(ValueError, match=match):
            SyntheticOracle(float_scorer, rng=rng, **kwargs)
    with pytest.raises(TypeError, match="temperature must be a number"):
        SyntheticOracle(float_scorer, rng=rng, temperature="hot")  # type: ignore[arg-type]
    adversary = SyntheticOracle(float_scorer, rng=rng, flip_prob=0.7)
    with pytest.raises(ValueError, match="pairwise queries only"):
        list(adversary.answer([Query("p", ("1", "2", "3"))]))


def test_broken_scorer_fails_loudly() -> None:
    oracle = SyntheticOracle(lambda p, c: [math.nan] * len(c), rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="non-finite"):
        list(oracle.answer(pair_queries(np.ones(2))))


# --------------------------------------------------------------------------------------
# collect
# --------------------------------------------------------------------------------------


def test_collect_stores_every_answer(store: PreferenceStore) -> None:
    oracle = SyntheticOracle(float_scorer, rng=np.random.default_rng(0))
    queries = pair_queries(np.linspace(-2, 2, 50))
    answers = collect(oracle, queries, store)
    assert store.answers() == answers
    assert store.counts() == {"queries": 50, "answers": 50, "pending": 0}


class _ScriptedOracle(PreferenceOracle):
    """Yields the given answers, then raises (stands in for an oracle that crashes mid-batch)."""

    name = "scripted"

    def __init__(self, answers: list[Answer], error: BaseException | None = None) -> None:
        self.answers, self.error = answers, error

    def answer(self, queries: Sequence[Query]) -> Iterator[Answer]:
        yield from self.answers
        if self.error is not None:
            raise self.error


def test_collect_keeps_answers_given_before_a_crash_and_validates(store: PreferenceStore) -> None:
    qs = pair_queries(np.linspace(-1, 1, 4))
    given = [Answer(qs[0].query_id, (0, 1), "scripted"), Answer(qs[2].query_id, (1, 0), "scripted")]
    with pytest.raises(KeyboardInterrupt):
        collect(_ScriptedOracle(given, KeyboardInterrupt()), qs, store)
    assert store.answers() == given
    assert [q.query_id for q in store.pending()] == [qs[1].query_id, qs[3].query_id]

    with pytest.raises(ValueError, match="which it was not asked"):
        collect(_ScriptedOracle([Answer("other", (0, 1), "scripted")]), qs, store)
    with pytest.raises(ValueError, match="3 ranks for query .* with 2 completions"):
        collect(_ScriptedOracle([Answer(qs[1].query_id, (0, 1, 2), "scripted")]), qs, store)
    assert store.answers() == given
    with pytest.raises(TypeError, match="Query"):
        collect(_ScriptedOracle([]), ["a prompt"], store)  # type: ignore[list-item]


# --------------------------------------------------------------------------------------
# TerminalOracle
# --------------------------------------------------------------------------------------


class ScriptedInput:
    """Plays the keyboard: returns the scripted replies in turn; an exception in the script is raised."""

    def __init__(self, replies: list[str | BaseException]) -> None:
        self.replies = list(replies)
        self.prompts: list[str] = []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        reply = self.replies.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        return reply


def _human_queries() -> list[Query]:
    return [
        Query("Review: the film was", (" great", " line one\nline two")),
        Query("p2", ("a", "b")),
        Query("p3 <b>", ("w", "x", "y", "")),
        Query("p4", ("a", "b")),
        Query("p5", ("a", "b")),
        Query("p6", ("a", "b")),
    ]


def test_terminal_oracle_scripted_session() -> None:
    qs = _human_queries()
    keys = ScriptedInput(["x", "3", " 2 ", "TIE", "12", "1 1 2 3", "2 1 4 3", "s", "q"])
    out = io.StringIO()
    oracle = TerminalOracle(input_fn=keys, output=out, name="alice", clock=lambda: 7.0)
    answers = list(oracle.answer(qs))
    assert [(a.query_id, a.ranks) for a in answers] == [
        (qs[0].query_id, (1, 0)),
        (qs[1].query_id, (0, 0)),
        (qs[2].query_id, (1, 0, 3, 2)),  # "2 1 4 3": completion 2 best, then 1, 4, 3
    ]
    assert {(a.labeller, a.answered_at) for a in answers} == {("alice", 7.0)}
    assert keys.replies == []  # stopped at "q": p5 and p6 were never asked
    text = out.getvalue()
    assert "Review: the film was" in text and "    line one\n    line two" in text  # raw text, indented
    assert "p3 <b>" in text and "(empty)" in text
    assert "'x' is not a valid answer: type 1 or 2" in text and "'3' is not a valid answer" in text
    assert "'1 1 2 3' is not a valid answer: type each of the numbers 1 to 4 once" in text
    assert "p6" not in text
    assert "Answered 3, skipped 1 of 6" in text
    assert "t=tie" in keys.prompts[0] and "best first" in keys.prompts[4]


def test_terminal_oracle_compact_ranking_eof_quits_and_ctrl_c_interrupts() -> None:
    qs = [Query("p", ("a", "b", "c")), Query("p2", ("a", "b"))]
    answers = list(TerminalOracle(input_fn=ScriptedInput(["312", EOFError()]), output=io.StringIO()).answer(qs))
    assert [a.ranks for a in answers] == [(1, 2, 0)]
    assert answers[0].labeller == "human"
    # Ctrl-C: the answer given before it is yielded, then the interrupt goes on to the caller (a quit would let a
    # pipeline train on the half-labelled set and call the stage done)
    answers, out = [], io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        for a in TerminalOracle(input_fn=ScriptedInput(["1", KeyboardInterrupt()]), output=out).answer(qs[::-1]):
            answers.append(a)
    assert [a.ranks for a in answers] == [(0, 1)] and "Interrupted after 1 answers; they are kept." in out.getvalue()


@pytest.mark.parametrize("stdin", [None, "closed"])
def test_terminal_oracle_with_stdin_closed_asks_nothing_and_says_why(monkeypatch, stdin, store: PreferenceStore) -> None:
    """`input()` raises RuntimeError("lost sys.stdin") (or ValueError on a closed file): a traceback before."""
    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr("sys.stdin", None if stdin is None else closed)
    out = io.StringIO()
    qs = _human_queries()
    assert collect(TerminalOracle(output=out), qs, store) == []
    assert "standard input is closed" in out.getvalue() and "the 6 queries stay pending" in out.getvalue()
    assert store.counts()["pending"] == 6


def test_terminal_oracle_answering_only_ties_says_they_teach_nothing() -> None:
    qs = [Query("p", ("a", "b")), Query("p2", ("c", "d"))]
    out = io.StringIO()
    answers = list(TerminalOracle(input_fn=ScriptedInput(["t", "tie"]), output=out).answer(qs))
    assert [a.ranks for a in answers] == [(0, 0), (0, 0)]  # stored as given: a tie is an answer
    assert "Every answer was a tie" in out.getvalue()
    out = io.StringIO()
    list(TerminalOracle(input_fn=ScriptedInput(["t", "1"]), output=out).answer(qs))
    assert "Every answer was a tie" not in out.getvalue()


def test_terminal_oracle_with_collect_loses_nothing(store: PreferenceStore) -> None:
    qs = _human_queries()
    answers = collect(TerminalOracle(input_fn=ScriptedInput(["1", "s", "quit"]), output=io.StringIO()), qs, store)
    assert len(answers) == 1 and store.answers() == answers
    assert len(store.pending()) == 5  # the skipped and never-shown queries stay pending

    # An exception inside input_fn (a broken terminal) propagates, but earlier answers are stored.
    qs2 = [Query(f"again {i}", ("a", "b")) for i in range(4)]
    keys = ScriptedInput(["2", "t", RuntimeError("terminal went away")])
    with pytest.raises(RuntimeError, match="terminal went away"):
        collect(TerminalOracle(input_fn=keys, output=io.StringIO(), name="bob"), qs2, store)
    assert [(a.query_id, a.ranks) for a in store.answers() if a.labeller == "bob"] == [
        (qs2[0].query_id, (1, 0)),
        (qs2[1].query_id, (0, 0)),
    ]


# --------------------------------------------------------------------------------------
# RecordedOracle
# --------------------------------------------------------------------------------------


def _write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    return path


def test_recorded_oracle_reads_all_three_layouts(tmp_path: Path, store: PreferenceStore) -> None:
    path = _write_jsonl(
        tmp_path / "prefs.jsonl",
        [
            {"prompt": "the film was", "chosen": " great\n<b>", "rejected": " bad", "id": 17},
            "",
            {"prompt": "p2", "completions": ["x", "y"], "preference": "second", "labeller": "carol"},
            {"prompt": "p3", "completions": ["a", "b", "c", "d"], "ranks": [2, 0, 3, 1]},
            {"prompt": "p4 ✓", "completions": ["a", "b"], "preference": "tie"},
        ],
    )
    oracle = RecordedOracle.from_file(path)
    assert [(c.prompt, c.completions, c.ranks, c.labeller) for c in oracle.comparisons] == [
        ("the film was", (" great\n<b>", " bad"), (0, 1), "recorded"),
        ("p2", ("x", "y"), (1, 0), "carol"),
        ("p3", ("a", "b", "c", "d"), (2, 0, 3, 1), "recorded"),
        ("p4 ✓", ("a", "b"), (0, 0), "recorded"),
    ]
    answers = collect(oracle, oracle.queries(), store)  # import the whole dataset
    assert len(answers) == 4 and store.counts()["pending"] == 0
    assert [(c.prompt, c.completions, c.ranks) for c in store.comparisons()] == [
        (c.prompt, c.completions, c.ranks) for c in oracle.comparisons
    ]


def test_recorded_oracle_matches_reordered_completions_and_skips_unknown() -> None:
    oracle = RecordedOracle(
        [Comparison("p", ("good", "bad"), (0, 1)), Comparison("k", ("a", "b", "c"), (1, 2, 0), labeller="dan")],
        clock=lambda: 1.0,
    )
    asked = [
        Query("p", ("bad", "good")),  # the recorded pair in the opposite order
        Query("p", ("good", "other")),  # no record
        Query("k", ("c", "a", "b")),
        Query("p", ("good", "bad")),  # the same comparison again: its one record is used up
    ]
    answers = list(oracle.answer(asked))
    assert [(a.query_id, a.ranks, a.labeller) for a in answers] == [
        (asked[0].query_id, (1, 0), "recorded"),
        (asked[2].query_id, (0, 1, 2), "dan"),
    ]
    assert [(a.query_id, a.ranks) for a in oracle.answer(asked[3:])] == [(asked[3].query_id, (0, 1))]
    with pytest.raises(ValueError, match="no comparisons"):
        RecordedOracle([])


def test_recorded_contradictory_labels_are_kept(tmp_path: Path, store: PreferenceStore) -> None:
    path = _write_jsonl(
        tmp_path / "two_labellers.jsonl",
        [
            {"prompt": "p", "chosen": "a", "rejected": "b", "labeller": "ann"},
            {"prompt": "p", "chosen": "b", "rejected": "a", "labeller": "ben"},
        ],
    )
    oracle = RecordedOracle.from_file(path)
    query = oracle.queries()[0]
    collect(oracle, [query], store)
    assert sorted((a.labeller, a.ranks) for a in store.answers()) == [("ann", (0, 1)), ("ben", (1, 0))]
    assert store.agreement()["unanimous_rate"] == 0.0


def test_a_pair_recorded_in_both_orders_is_one_query_with_one_answer_per_record(tmp_path: Path) -> None:
    """Issue 15 item 4: (p, a > b, alice) and (p, b > a, bob) gave 4 comparisons (each record answered the
    query of each order); three records gave 5. Each record is one answer to one query."""
    records = [
        {"prompt": "p", "chosen": "a", "rejected": "b", "labeller": "alice"},
        {"prompt": "p", "chosen": "b", "rejected": "a", "labeller": "bob"},
        {"prompt": "p", "completions": ["b", "a"], "preference": "second", "labeller": "carol"},
    ]
    for n in (2, 3):
        oracle = RecordedOracle.from_file(_write_jsonl(tmp_path / f"both_orders_{n}.jsonl", records[:n]))
        (query,) = oracle.queries()
        assert query.completions == ("a", "b")  # as the first record shows it
        with PreferenceStore(tmp_path / f"prefs_{n}.sqlite") as store:
            collect(oracle, oracle.queries(), store)
            assert store.counts() == {"queries": 1, "answers": n, "pending": 0}
            assert len(store.comparisons()) == n
            assert [(a.labeller, a.ranks) for a in store.answers()] == [("alice", (0, 1)), ("bob", (1, 0)),
                                                                          ("carol", (0, 1))][:n]
            assert store.agreement()["queries"] == 1
        # asked in both orders at once, still one answer per record
        both = [query, Query("p", ("b", "a"))]
        assert len(list(oracle.answer(both))) == n


def test_a_record_of_a_text_against_itself_is_refused() -> None:
    with pytest.raises(ValueError, match=r"comparison 1: completions 1 and 2 are the same text 'a' but ranked apart"):
        RecordedOracle([Comparison("p", ("a", "b"), (0, 1)), Comparison("p", ("a", "a"), (0, 1))])
    tie = RecordedOracle([Comparison("p", ("a", "a"), (0, 0))])  # a tie between equal texts is true
    assert len(list(tie.answer(tie.queries()))) == 1


GOOD_LINE = {"prompt": "p", "chosen": "a", "rejected": "b"}


@pytest.mark.parametrize(
    ("bad_line", "match"),
    [
        ('{"prompt": "p", "chosen": "a"', r"line 2: invalid JSON"),
        ('["p", "a", "b"]', r"line 2: expected a JSON object, found list"),
        ({"chosen": "a", "rejected": "b"}, r"line 2: missing field 'prompt'"),
        ({"prompt": "p", "chosen": "a"}, r"line 2: missing field 'rejected'"),
        ({"prompt": "p", "chosen": "a", "rejected": 3}, r"line 2: 'rejected' must be a string"),
        ({"prompt": "p"}, r"line 2: no completions"),
        (
            {"prompt": "p", "completions": ["a", "b"], "preference": "better"},
            r"line 2: unknown pairwise answer 'better'; use one of \['first', 'second', 'tie'\]",
        ),
        ({"prompt": "p", "completions": ["a", "b"], "ranks": [0, 1, 2]}, r"line 2: .*3 ranks for 2 completions"),
        ({"prompt": "p", "completions": ["a", "b"], "ranks": [0, 5]}, r"line 2: .*rank 5 is not an int in \[0, 1\]"),
        ({"prompt": "p", "completions": ["a", "b"], "ranks": [0, 1], "preference": "first"}, r"line 2: .*exactly one of"),
        ({"prompt": "p", "completions": ["a", "b", "c"], "preference": "first"}, r"line 2: 'preference' is for 2"),
        ({"prompt": "p", "completions": ["a"], "ranks": [0]}, r"line 2: a query compares 2 to 9 completions"),
        ({"prompt": "p", "completions": "ab", "ranks": [0, 1]}, r"line 2: 'completions' must be a list of strings"),
        ({"prompt": "p", "chosen": "a", "rejected": "b", "labeller": ""}, r"line 2: 'labeller' must be a non-empty"),
        ({"prompt": "p", "chosen": " same", "rejected": " same"}, r"line 2: 'chosen' and 'rejected' are the same text"),
        ({"prompt": "p", "completions": ["a", "a"], "preference": "second"}, r"line 2: completions 1 and 2 are the same"),
        ({"prompt": "p", "completions": ["a", "b", "a"], "ranks": [0, 1, 2]}, r"line 2: completions 1 and 3 are the same"),
    ],
)
def test_recorded_oracle_bad_lines_name_file_and_line(tmp_path: Path, bad_line: object, match: str) -> None:
    path = _write_jsonl(tmp_path / "bad.jsonl", [GOOD_LINE, bad_line, GOOD_LINE])
    with pytest.raises(DatasetError, match=match) as info:
        RecordedOracle.from_file(path)
    assert str(path) in str(info.value)


def test_recorded_oracle_bad_files(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.jsonl"
    bad = '{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}'.encode("latin-1")
    latin1.write_bytes(json.dumps(GOOD_LINE).encode() + b"\n" + bad)
    with pytest.raises(DatasetError, match=r"latin1.jsonl line 2: not valid UTF-8"):
        RecordedOracle.from_file(latin1)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DatasetError, match="no comparisons"):
        RecordedOracle.from_file(empty)
    with pytest.raises(DatasetError, match="does not exist"):
        RecordedOracle.from_file(tmp_path / "missing.jsonl")


# --------------------------------------------------------------------------------------
# Recorded preferences in every common layout and format


PAIRS = [
    {"prompt": "the film was", "chosen": " great .", "rejected": " bad ."},
    {"prompt": "the hotel was", "chosen": " clean .", "rejected": " dirty ."},
]
EXPECTED_PAIRS = [("the film was", (" great .", " bad ."), (0, 1)), ("the hotel was", (" clean .", " dirty ."), (0, 1))]


def _as_tuples(oracle: RecordedOracle) -> list[tuple]:
    return [(c.prompt, c.completions, c.ranks) for c in oracle.comparisons]


def test_recorded_pairs_from_every_format(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps(PAIRS))
    pd.DataFrame(PAIRS).to_csv(tmp_path / "p.csv", index=False)
    pq.write_table(pa.Table.from_pylist(PAIRS), tmp_path / "p.parquet")
    files = [_write_jsonl(tmp_path / "p.jsonl", PAIRS), tmp_path / "p.json", tmp_path / "p.csv", tmp_path / "p.parquet"]
    for path in files:
        assert _as_tuples(RecordedOracle.from_file(path)) == EXPECTED_PAIRS, path
    assert _as_tuples(RecordedOracle.from_jsonl(tmp_path / "p.parquet")) == EXPECTED_PAIRS  # the old name still works
    for records in (PAIRS, datasets.Dataset.from_list(PAIRS), pd.DataFrame(PAIRS)):
        oracle = RecordedOracle.from_records(records, name="import")
        assert _as_tuples(oracle) == EXPECTED_PAIRS and {c.labeller for c in oracle.comparisons} == {"import"}
    with pytest.raises(TypeError, match="use RecordedOracle.from_records"):
        RecordedOracle.from_file(PAIRS)  # type: ignore[arg-type]


def test_recorded_completions_preference_and_ranks_from_parquet(tmp_path: Path) -> None:
    """List columns (completions, ranks) come back from Parquet and pandas as arrays; they read as lists."""
    rows = [
        {"prompt": "p1", "completions": ["x", "y"], "preference": "second", "ranks": None, "labeller": "carol"},
        {"prompt": "p2", "completions": ["a", "b", "c"], "preference": None, "ranks": [2, 0, 1], "labeller": None},
    ]
    path = tmp_path / "k.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    expected = [("p1", ("x", "y"), (1, 0), "carol"), ("p2", ("a", "b", "c"), (2, 0, 1), "recorded")]
    for oracle in (RecordedOracle.from_file(path), RecordedOracle.from_records(pd.read_parquet(path))):
        assert [(c.prompt, c.completions, c.ranks, c.labeller) for c in oracle.comparisons] == expected


def test_implicit_prompt_layout_hh_rlhf() -> None:
    """HH-RLHF keeps only full `chosen`/`rejected` texts: the prompt is their common start, less a trailing space."""
    record = {"chosen": "\n\nHuman: is tea hot?\n\nAssistant: Yes, usually.",
              "rejected": "\n\nHuman: is tea hot?\n\nAssistant: No idea."}
    (c,) = RecordedOracle.from_records([record]).comparisons
    assert c.prompt == "\n\nHuman: is tea hot?\n\nAssistant:"
    assert c.completions == (" Yes, usually.", " No idea.") and c.ranks == (0, 1)
    assert c.prompt + c.completions[0] == record["chosen"] and c.prompt + c.completions[1] == record["rejected"]
    with pytest.raises(DatasetError, match=r"list row 1: 'chosen' and 'rejected' are the same text"):
        RecordedOracle.from_records([record, {"chosen": "same", "rejected": "same"}])
    with pytest.raises(DatasetError, match=r"list row 0: missing field 'prompt' \(found \['chosen', 'rejected'\]\), and "
                                           r"'chosen' and 'rejected' share no leading text"):
        RecordedOracle.from_records([{"chosen": "yes", "rejected": "no"}])


def test_field_mapping(tmp_path: Path) -> None:
    """Stack-Exchange-style columns (question, response_j better than response_k) read with field names."""
    rows = [{"question": "q?", "response_j": " good", "response_k": " bad", "who": "ann"}]
    path = tmp_path / "se.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(DatasetError, match=r"se\.parquet row 0: no completions.*found \['question', 'response_j', "
                                           r"'response_k', 'who'\]; pass prompt_field=\"question\", chosen_field=\"response_j\", "
                                           r"rejected_field=\"response_k\""):
        RecordedOracle.from_file(path)
    oracle = RecordedOracle.from_file(path, prompt_field="question", chosen_field="response_j", rejected_field="response_k",
                                      labeller_field="who")
    assert [(c.prompt, c.completions, c.labeller) for c in oracle.comparisons] == [("q?", (" good", " bad"), "ann")]
    ranked = [{"q": "p", "outs": ["a", "b", "c"], "order": [1, 0, 2]}]
    (c,) = RecordedOracle.from_records(ranked, prompt_field="q", completions_field="outs", ranks_field="order").comparisons
    assert c.ranks == (1, 0, 2)


def test_conversational_preferences_are_rendered_with_the_tokenizer(tmp_path: Path) -> None:
    tok = llama_chat_tokenizer()
    prompt = [{"role": "user", "content": "hi"}]
    good, bad = [{"role": "assistant", "content": "hello"}], [{"role": "assistant", "content": "go"}]
    rendered = ("<s><|user|>\nhi</s>\n<|assistant|>\n", ("hello</s>", "go</s>"))  # cut after the EOS
    explicit = [{"prompt": prompt, "chosen": good, "rejected": bad}]
    implicit = [{"chosen": prompt + good, "rejected": prompt + bad}]
    ranked = [{"prompt": prompt, "completions": [bad, good], "ranks": [1, 0]}]
    pq.write_table(pa.Table.from_pylist(explicit), tmp_path / "c.parquet")
    for source in (explicit, implicit, _write_jsonl(tmp_path / "c.jsonl", implicit), tmp_path / "c.parquet",
                   datasets.Dataset.from_list(implicit)):
        load = RecordedOracle.from_file if isinstance(source, Path) else RecordedOracle.from_records
        (c,) = load(source, tokenizer=tok).comparisons
        assert (c.prompt, c.completions, c.ranks) == (*rendered, (0, 1)), source
    (c,) = RecordedOracle.from_records(ranked, tokenizer=tok).comparisons
    assert (c.prompt, c.completions, c.ranks) == (rendered[0], rendered[1][::-1], (1, 0))


def test_conversational_preference_errors(tmp_path: Path) -> None:
    prompt = [{"role": "user", "content": "hi"}]
    good = [{"role": "assistant", "content": "hello"}]
    path = _write_jsonl(tmp_path / "c.jsonl", [GOOD_LINE, {"prompt": prompt, "chosen": good, "rejected": good[:0]}])
    with pytest.raises(DatasetError, match=r"c\.jsonl line 2: 'prompt' holds chat messages.*tokenizer=policy\.tokenizer"):
        RecordedOracle.from_file(path)
    tok = llama_chat_tokenizer()
    with pytest.raises(DatasetError, match=r"c\.jsonl line 2: 'rejected': the list of chat messages is empty"):
        RecordedOracle.from_file(path, tokenizer=tok)
    with pytest.raises(DatasetError, match=r"list row 0: 'chosen' must be a list of assistant messages like its prompt"):
        RecordedOracle.from_records([{"prompt": prompt, "chosen": "hello", "rejected": good}], tokenizer=tok)
    with pytest.raises(DatasetError, match=r"list row 0: 'chosen' and 'rejected' must both be strings or both chat "
                                           r"message lists, got str and messages"):
        RecordedOracle.from_records([{"chosen": "hi", "rejected": prompt + good}], tokenizer=tok)
    with pytest.raises(DatasetError, match=r"list row 0: missing field 'prompt'.*share no leading messages"):
        RecordedOracle.from_records([{"chosen": good, "rejected": prompt}], tokenizer=tok)
    with pytest.raises(DatasetError, match=r"list row 0: the conversations in 'chosen' and 'rejected' are the same"):
        RecordedOracle.from_records([{"chosen": prompt + good, "rejected": prompt + good}], tokenizer=tok)
    with pytest.raises(DatasetError, match=r"list row 0: 'prompt': the tokenizer .* has no chat template"):
        RecordedOracle.from_records([{"prompt": prompt, "chosen": good, "rejected": prompt}],
                                    tokenizer=llama_chat_tokenizer(template=None))


def test_recorded_errors_name_row_line_and_columns(tmp_path: Path) -> None:
    pq.write_table(pa.Table.from_pylist([*PAIRS, {"prompt": "p", "chosen": "a", "rejected": None}]), tmp_path / "n.parquet")
    with pytest.raises(DatasetError, match=r"n\.parquet row 2: 'rejected' is empty \(null"):
        RecordedOracle.from_file(tmp_path / "n.parquet")
    (tmp_path / "bad.csv").write_text("prompt,chosen,rejected\np,a,b\np,a\n")
    with pytest.raises(DatasetError, match=r"bad\.csv line 3: row has fewer columns than the header"):
        RecordedOracle.from_file(tmp_path / "bad.csv")
    (tmp_path / "bad.json").write_text(json.dumps([GOOD_LINE, {"prompt": "p", "text": "a"}]))
    with pytest.raises(DatasetError, match=r"bad\.json row 1: no completions.*found \['prompt', 'text'\]"):
        RecordedOracle.from_file(tmp_path / "bad.json")
    with pytest.raises(DatasetError, match=r"Dataset row 0: missing field 'prompt' \(found \['completions', 'ranks'\]\)"):
        RecordedOracle.from_records(datasets.Dataset.from_list([{"completions": ["a", "b"], "ranks": [0, 1]}]))
    with pytest.raises(DatasetError, match=r"list row 0: expected a record \(a dict of fields\), found str"):
        RecordedOracle.from_records(["p, a, b"])
    with pytest.raises(DatasetError, match=r"list: no comparisons"):
        RecordedOracle.from_records([])


# --------------------------------------------------------------------------------------
# Review fixes: blank cells, empty texts, HH word boundaries, template errors


def test_tables_with_mixed_layouts_and_blank_cells(tmp_path: Path) -> None:
    records = [{"prompt": "p", "chosen": "a", "rejected": "b"},
               {"prompt": "q", "completions": ["x", "y"], "ranks": [1, 0]}]
    expected = [("p", ("a", "b"), (0, 1)), ("q", ("x", "y"), (1, 0))]
    pq.write_table(pa.Table.from_pandas(pd.DataFrame(records), preserve_index=False), tmp_path / "mixed.parquet")
    frame = pd.DataFrame(records)  # NaN where a record has no such field
    for source in (frame, datasets.Dataset.from_pandas(frame), tmp_path / "mixed.parquet"):
        load = RecordedOracle.from_file if isinstance(source, Path) else RecordedOracle.from_records
        assert _as_tuples(load(source)) == expected, type(source)
    (tmp_path / "lab.csv").write_text("prompt,chosen,rejected,labeller\np,a,b,ann\nq,c,d,\n")
    assert [c.labeller for c in RecordedOracle.from_file(tmp_path / "lab.csv", name="import").comparisons] == ["ann",
                                                                                                              "import"]


def test_empty_texts_are_refused(tmp_path: Path) -> None:
    bad = [
        ({"prompt": "", "chosen": "a", "rejected": "b"}, r"line 2: 'prompt' is empty or whitespace"),
        ({"prompt": "p", "chosen": "", "rejected": "b"}, r"line 2: 'chosen' is empty \(\"\"\)"),
        ({"prompt": "p", "completions": ["a", ""], "ranks": [0, 1]}, r"line 2: 'completions' item 1 is empty"),
        ({"chosen": "abc", "rejected": "abcd"}, r"line 2: 'chosen' is the start of 'rejected', so .* it is empty"),
    ]
    for record, match in bad:
        with pytest.raises(DatasetError, match=match):
            RecordedOracle.from_file(_write_jsonl(tmp_path / "e.jsonl", [GOOD_LINE, record]))
    (tmp_path / "e.csv").write_text("prompt,chosen,rejected\np,a,b\np,a,\n")
    with pytest.raises(DatasetError, match=r"e\.csv line 3: 'rejected' is empty \(null or a blank cell\)"):
        RecordedOracle.from_file(tmp_path / "e.csv")


def test_hh_implicit_prompt_is_cut_at_a_word_boundary() -> None:
    human = "\n\nHuman: Can you help me write a letter?\n\nAssistant:"
    cases = [
        (" I can help with that, sure.", " I can't.", human + " I", (" can help with that, sure.", " can't.")),
        (" Hello there", " Hello", human, (" Hello there", " Hello")),  # a prefix no longer leaves an empty answer
        (" Yes.", " No.", human, (" Yes.", " No.")),
    ]
    for chosen, rejected, prompt, completions in cases:
        (c,) = RecordedOracle.from_records([{"chosen": human + chosen, "rejected": human + rejected}]).comparisons
        assert (c.prompt, c.completions) == (prompt, completions)
        assert c.prompt + c.completions[0] == human + chosen


def test_implicit_conversations_compare_role_and_content_only() -> None:
    tok = llama_chat_tokenizer()
    user = {"role": "user", "content": "hi"}
    chosen = [{**user, "tool_calls": None}, {"role": "assistant", "content": "hello"}]  # ragged Parquet structs
    (c,) = RecordedOracle.from_records([{"chosen": chosen, "rejected": [user, {"role": "assistant", "content": "go"}]}],
                                       tokenizer=tok).comparisons
    assert c.completions == ("hello</s>", "go</s>")


def test_template_errors_name_the_file_and_line(tmp_path: Path) -> None:
    system = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    record = {"prompt": system, "chosen": [{"role": "assistant", "content": "a"}],
              "rejected": [{"role": "assistant", "content": "b"}]}
    with pytest.raises(DatasetError, match=r"s\.jsonl line 2: 'prompt': the chat template refused these messages "
                                           r"\(roles \['system', 'user'\]\): System role not supported"):
        RecordedOracle.from_file(_write_jsonl(tmp_path / "s.jsonl", [GOOD_LINE, record]),
                                 tokenizer=llama_chat_tokenizer(GEMMA_LIKE_TEMPLATE))
