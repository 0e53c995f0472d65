"""Leases: each pending query to one labelling session at a time, expiry, replayed and conflicting closes, skips."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_gym.core.preferences import Answer, Query
from llm_gym.feedback.leases import LeaseConflict, active_leases, close_lease, lease_next
from llm_gym.feedback.store import PreferenceStore

from doubles import run_in_threads


def _pair(i: int) -> Query:
    return Query(f"prompt {i}", (f" good {i}", f" bad {i}"))


class _Clock:
    """A clock the test moves by hand (lease expiry without sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def clocked(tmp_path: Path):
    clock = _Clock()
    with PreferenceStore(tmp_path / "prefs.sqlite", clock=clock) as s:
        s.add_queries([_pair(i) for i in range(3)])
        yield s, clock


def _lease(store: PreferenceStore, holder: str, seconds: float = 60.0):
    return lease_next(store, holder, labeller=f"{holder}-name", lease_seconds=seconds)


def test_leases_hand_each_pending_query_to_one_holder(clocked) -> None:
    store, _ = clocked
    qs = store.queries()
    store.add_answer(Answer(qs[0].query_id, (0, 1), "terminal"))  # answered: never handed out
    a, b = _lease(store, "tab-a"), _lease(store, "tab-b")
    assert (a.query, b.query) == (qs[1], qs[2]), "oldest pending first, a different one each"
    assert _lease(store, "tab-c") is None, "everything pending is held"
    assert _lease(store, "tab-a").lease_id == a.lease_id, "a holder asking again (a reloaded page) keeps its lease"
    assert active_leases(store) == 2 and store.counts()["pending"] == 2


def test_closing_a_lease_stores_the_answer_once(clocked) -> None:
    store, clock = clocked
    lease = _lease(store, "tab-a")
    clock.now += 5
    done = close_lease(store, lease.lease_id, (1, 0), query_id=lease.query.query_id)
    assert done.outcome == "answered" and done.ranks == (1, 0)
    assert store.answers() == [Answer(lease.query.query_id, (1, 0), "tab-a-name", 1005.0)]
    clock.now += 5
    assert close_lease(store, lease.lease_id, [1, 0]) == done, "a replay gets the same outcome"
    with pytest.raises(LeaseConflict, match="already closed with ranks \\[1, 0\\]"):
        close_lease(store, lease.lease_id, (0, 0))
    with pytest.raises(LeaseConflict, match="already closed"):
        close_lease(store, lease.lease_id, None)
    assert len(store.answers()) == 1 and active_leases(store) == 0


def test_bad_closes_write_nothing(clocked) -> None:
    store, _ = clocked
    lease = _lease(store, "tab-a")
    with pytest.raises(KeyError, match="no lease 'nope'"):
        close_lease(store, "nope", (0, 1))
    with pytest.raises(ValueError, match="3 ranks"):
        close_lease(store, lease.lease_id, (0, 1, 2))
    with pytest.raises(ValueError, match="rank 5"):
        close_lease(store, lease.lease_id, (0, 5))
    with pytest.raises(ValueError, match="handed out for query"):
        close_lease(store, lease.lease_id, (0, 1), query_id=store.queries()[2].query_id)
    assert store.answers() == [] and active_leases(store) == 1
    for bad in (0, -1, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="lease_seconds"):
            lease_next(store, "tab-b", labeller="b", lease_seconds=bad)
    with pytest.raises(ValueError, match="holder"):
        lease_next(store, "", labeller="b", lease_seconds=1)


def test_an_expired_lease_goes_back_to_the_queue(clocked) -> None:
    store, clock = clocked
    a = _lease(store, "tab-a", seconds=30)
    _lease(store, "tab-b"), _lease(store, "tab-c")  # the other two queries are held
    assert _lease(store, "tab-d") is None
    clock.now += 31
    assert active_leases(store) == 2
    d = _lease(store, "tab-d")
    assert d.query == a.query, "the expired query is pending again"
    with pytest.raises(LeaseConflict, match="expired and query .* was handed to another labeller"):
        close_lease(store, a.lease_id, (0, 1))
    close_lease(store, d.lease_id, (1, 0))
    assert [x.labeller for x in store.answers()] == ["tab-d-name"]


def test_a_late_answer_is_kept_while_no_one_else_took_the_query(clocked) -> None:
    store, clock = clocked
    a = _lease(store, "tab-a", seconds=30)
    clock.now += 300
    assert close_lease(store, a.lease_id, (0, 0)).outcome == "answered"
    assert store.answers()[0].ranks == (0, 0)


def test_a_skipped_query_comes_after_the_others_for_that_holder(clocked) -> None:
    store, _ = clocked
    qs = store.queries()
    first = _lease(store, "tab-a")
    assert close_lease(store, first.lease_id, None).outcome == "skipped"
    assert store.answers() == [] and store.counts()["pending"] == 3
    assert _lease(store, "tab-b").query == qs[0], "another holder gets it at once (oldest first)"
    second = _lease(store, "tab-a")
    assert second.query == qs[1], "the holder who skipped it is handed the others first"
    close_lease(store, second.lease_id, (0, 1))
    third = _lease(store, "tab-a")
    assert third.query == qs[2]
    close_lease(store, third.lease_id, None)
    again = _lease(store, "tab-a")
    assert again.query == qs[2] and again.lease_id != third.lease_id, "skipped queries come back when nothing else is left"


def test_concurrent_holders_never_share_a_query(tmp_path: Path) -> None:
    """Four connections (as four processes would have) lease and answer until the queue is empty."""
    path = tmp_path / "prefs.sqlite"
    with PreferenceStore(path) as s:
        s.add_queries([_pair(i) for i in range(60)])
    got: dict[str, list[str]] = {}

    def work(holder: str) -> None:
        with PreferenceStore(path) as store:
            while (lease := _lease(store, holder)) is not None:
                got.setdefault(holder, []).append(lease.query.query_id)
                close_lease(store, lease.lease_id, (0, 1))

    run_in_threads(work, [f"tab-{i}" for i in range(4)])
    handed = [qid for ids in got.values() for qid in ids]
    assert len(handed) == len(set(handed)) == 60
    with PreferenceStore(path) as s:
        assert s.counts() == {"queries": 60, "answers": 60, "pending": 0}
