"""Leases: the work queue that lets several labellers share one preference store.

A labelling session (a browser tab of the web page, `llm_gym.feedback.web`) is handed a
pending query under a *lease* and holds it for a limited time, so that several labellers
(tabs, processes) never do the same query twice. The leases live in the store's
``leases`` table (its schema is in `llm_gym.feedback.store`, with the file's other
tables); this module is all the logic that reads and writes it, through the store's own
lock and transactions:

* `lease_next(store, holder, ...)` hands out the oldest pending query that no one holds, in
  one ``BEGIN IMMEDIATE`` transaction, so two labellers never get the same query at once;
  a lease not closed within its time expires and the query goes back to the queue.
* `close_lease(store, lease_id, ranks)` stores the answer and closes the lease in one
  transaction; closing it again with the same answer (a replayed request) stores nothing
  and returns the same `LeaseOutcome`. A holder who skipped a query is handed the other
  pending queries before it again (it comes back once nothing else is left).
* `active_leases(store)` counts the queries being labelled now.

>>> from llm_gym.core.preferences import Query
>>> from llm_gym.feedback.store import PreferenceStore
>>> with PreferenceStore(":memory:") as store:
...     store.add_queries([Query("the film was", (" great .", " bad ."))])
...     lease = lease_next(store, "tab-1", labeller="alice", lease_seconds=60)
...     lease_next(store, "tab-2", labeller="bob", lease_seconds=60) is None  # the only query is held
...     close_lease(store, lease.lease_id, (0, 1)).outcome, store.answers()[0].labeller
1
True
('answered', 'alice')
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from llm_gym.core.preferences import Answer, Query
from llm_gym.feedback.store import PreferenceStore, _insert_answer, _query, answer_id

__all__ = ["Lease", "LeaseOutcome", "LeaseConflict", "lease_next", "close_lease", "active_leases"]

_MAX_NAME = 100  # characters of a lease holder or labeller name


class LeaseConflict(ValueError):
    """A lease cannot be closed this way: it was already closed with another answer, or it
    expired and its query was handed to someone else. Nothing was written."""


@dataclass(frozen=True)
class Lease:
    """A pending query handed to one labelling session until `expires_at` (store clock time)."""

    lease_id: str
    query: Query
    holder: str
    labeller: str
    expires_at: float


@dataclass(frozen=True)
class LeaseOutcome:
    """How a lease was closed: ``"answered"`` with `ranks`, or ``"skipped"`` (ranks None).

    A replayed close (same lease, same answer) returns an equal `LeaseOutcome`.
    """

    lease_id: str
    query_id: str
    outcome: str
    ranks: tuple[int, ...] | None


def lease_next(store: PreferenceStore, holder: str, *, labeller: str, lease_seconds: float) -> Lease | None:
    """Hand the oldest pending query that no one holds to `holder` for `lease_seconds`; None when none is left.

    Atomic across threads and processes (one ``BEGIN IMMEDIATE`` transaction): two
    holders never get the same query while a lease on it is open and unexpired. A holder
    that still has an open, unexpired lease on an unanswered query gets that lease back
    (its expiry pushed out, and its labeller now `labeller`: the answer goes under the
    name the holder gave last), so a reloaded page does not strand its query. Queries
    this holder skipped come after every other pending query.

    Args:
        store: the preference store whose pending queries are handed out.
        holder: the labelling session (e.g. one browser tab), at most 100 characters.
        labeller: the name written into the answer given under this lease.
        lease_seconds: how long the holder may take; after that the query is pending for others again.
    """
    _check_name("holder", holder)
    _check_name("labeller", labeller)
    if isinstance(lease_seconds, bool) or not isinstance(lease_seconds, (int, float)) or not (
        0 < lease_seconds < math.inf
    ):
        raise ValueError(f"lease_seconds must be a positive number of seconds, got {lease_seconds!r}")
    with store._transaction() as conn:
        now = store._clock()
        held = conn.execute(
            "SELECT l.lease_id, q.query_id, q.prompt, q.completions FROM leases l "
            "JOIN queries q ON q.query_id = l.query_id "
            "WHERE l.holder = ? AND l.outcome IS NULL AND l.expires_at > ? "
            "AND NOT EXISTS (SELECT 1 FROM answers a WHERE a.query_id = l.query_id) "
            "ORDER BY l.rowid LIMIT 1",
            (holder, now),
        ).fetchone()
        if held is not None:
            lease_id, *query_row = held
            conn.execute("UPDATE leases SET expires_at = ?, labeller = ? WHERE lease_id = ?",
                         (now + lease_seconds, labeller, lease_id))
            return Lease(lease_id, _query(tuple(query_row)), holder, labeller, now + lease_seconds)
        row = conn.execute(
            "SELECT q.query_id, q.prompt, q.completions FROM queries q "
            "WHERE NOT EXISTS (SELECT 1 FROM answers a WHERE a.query_id = q.query_id) "
            "AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.query_id = q.query_id "
            "                AND l.outcome IS NULL AND l.expires_at > ?) "
            "ORDER BY EXISTS (SELECT 1 FROM leases s WHERE s.query_id = q.query_id "
            "                 AND s.holder = ? AND s.outcome = 'skipped'), q.rowid "
            "LIMIT 1",
            (now, holder),
        ).fetchone()
        if row is None:
            return None
        lease = Lease(secrets.token_urlsafe(16), _query(row), holder, labeller, now + lease_seconds)
        conn.execute(
            "INSERT INTO leases (lease_id, query_id, holder, labeller, leased_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
            (lease.lease_id, lease.query.query_id, holder, labeller, now, lease.expires_at),
        )
        return lease


def close_lease(
    store: PreferenceStore, lease_id: str, ranks: Sequence[int] | None, *, query_id: str | None = None
) -> LeaseOutcome:
    """Answer the leased query with `ranks` (stored under the lease's labeller), or skip it (None).

    The answer row and the closed lease are one transaction. Closing a lease again the
    same way (a replayed request) writes nothing and returns an equal outcome. A lease
    past its expiry is still honoured while no one else has been handed its query.
    Pass `query_id` to check that the lease is the one handed out for that query.

    Raises:
        KeyError: no lease has this id.
        ValueError: the ranks do not fit the query, or the lease is for another query
            than `query_id` (nothing is written).
        LeaseConflict: the lease was already closed differently, or it expired and its
            query went to another holder (nothing is written).
    """
    if ranks is not None:
        ranks = tuple(ranks)
    with store._transaction() as conn:
        row = conn.execute(
            "SELECT l.query_id, l.labeller, l.outcome, a.ranks, q.completions, "
            "       EXISTS (SELECT 1 FROM leases n WHERE n.query_id = l.query_id AND n.rowid > l.rowid) "
            "FROM leases l JOIN queries q ON q.query_id = l.query_id "
            "LEFT JOIN answers a ON a.answer_id = l.answer_id WHERE l.lease_id = ?",
            (lease_id,),
        ).fetchone()
        if row is None:
            raise KeyError(f"no lease {lease_id!r} in preference store {store.path}")
        leased_query, labeller, outcome, stored_ranks, completions, superseded = row
        if query_id is not None and query_id != leased_query:
            raise ValueError(f"lease {lease_id} was handed out for query {leased_query}, not {query_id}")
        query_id = leased_query
        asked = LeaseOutcome(lease_id, query_id, "skipped" if ranks is None else "answered", ranks)
        if outcome is not None:
            done = LeaseOutcome(lease_id, query_id, outcome, None if stored_ranks is None else tuple(json.loads(stored_ranks)))
            if done != asked:
                given = "a skip" if done.ranks is None else f"ranks {list(done.ranks)}"
                raise LeaseConflict(f"lease {lease_id} was already closed with {given}; a lease takes one answer")
            return done
        if superseded:
            raise LeaseConflict(
                f"lease {lease_id} expired and query {query_id} was handed to another labeller; "
                "ask for the next query"
            )
        now = store._clock()
        answer = None
        if ranks is not None:
            answer = Answer(query_id, ranks, labeller, answered_at=now)
            k = len(json.loads(completions))
            if len(answer.ranks) != k:
                raise ValueError(f"{len(ranks)} ranks for query {query_id} with {k} completions; give one rank per completion")
            _insert_answer(conn, answer)
        conn.execute(
            "UPDATE leases SET outcome = ?, answer_id = ?, closed_at = ? WHERE lease_id = ?",
            (asked.outcome, None if answer is None else answer_id(answer), now, lease_id),
        )
        return asked


def active_leases(store: PreferenceStore) -> int:
    """How many leases are open and unexpired on queries still without an answer (being labelled now)."""
    (row,) = store._read(
        "SELECT count(DISTINCT l.query_id) FROM leases l WHERE l.outcome IS NULL AND l.expires_at > ? "
        "AND NOT EXISTS (SELECT 1 FROM answers a WHERE a.query_id = l.query_id)",
        (store._clock(),),
    )
    return row[0]


def _check_name(what: str, name: object) -> None:
    if not isinstance(name, str) or not name.strip() or len(name) > _MAX_NAME:
        raise ValueError(f"{what} must be a non-empty string of at most {_MAX_NAME} characters, got {name!r}")
