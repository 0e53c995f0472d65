"""The preference store: a durable, append-only SQLite file that every oracle's answers go into.

Human labels are the most expensive data of RLHF (Christiano et al. 2017 learned from a
few hundred to a few thousand; Stiennon et al. 2020 paid trained labellers for each), so
none may be lost to a crash, a Ctrl-C or a double-clicked submit button. The store keeps
two tables of data:

``queries(query_id, prompt, completions, created_at)``
    every comparison query ever posed (completions as a JSON list).
``answers(answer_id, query_id, ranks, labeller, answered_at)``
    one row per answer (ranks as a JSON list, 0 = best, equal ranks = tie).

and one of bookkeeping for labelling sessions (the web page, `llm_gym.feedback.web`):

``leases(lease_id, query_id, holder, labeller, leased_at, expires_at, outcome, answer_id, closed_at)``
    a pending query handed to one labeller for a limited time, closed by an answer or a
    skip (which fills in ``outcome``, ``answer_id`` and ``closed_at``: the only rows that
    ever change). `llm_gym.feedback.leases` holds the logic that hands them out and
    closes them; this module only creates the table. Store files from before this table
    get it when they are first opened (``CREATE TABLE IF NOT EXISTS``); older versions of
    llm_gym ignore it.

Guarantees:

* **Append-only.** Queries and answers are never updated or deleted. A second,
  *different* answer to a query (another labeller, or the same labeller changing their
  mind) is a new row, so contradictory labels are kept and measured (`agreement`), not
  silently resolved.
* **Idempotent.** ``answer_id`` is a hash of (query_id, labeller, ranks): submitting the
  same answer again (a retried request, a replayed file) inserts nothing. Adding a query
  that is already there inserts nothing.
* **Crash-safe.** Every write is one SQLite transaction in WAL mode with
  ``synchronous=FULL``: after a crash or power loss an answer is either fully stored or
  absent, and a batch passed to `add_answers` is stored whole or not at all.
* **Exact text.** Prompts and completions round-trip byte for byte (non-ASCII, newlines,
  HTML such as ``<script>``, empty strings): they are stored as JSON with
  ``ensure_ascii=False`` in TEXT columns, never escaped or stripped.
* **Shareable.** One connection per store object, guarded by a lock and opened with
  ``check_same_thread=False``, so a web-server thread can share the store with a training
  loop; several processes may open the same file (SQLite locks it; writers wait up to
  ``timeout`` seconds).

`pending` (queries with no answer yet, oldest first) is the work list of a labelling UI,
and `comparisons` is the training set of a reward model.

>>> from llm_gym.core.preferences import Answer, Query
>>> with PreferenceStore(":memory:") as store:
...     q = Query("the film was", (" great .", " bad ."))
...     store.add_queries([q])
...     [p.query_id for p in store.pending()] == [q.query_id]
...     store.add_answer(Answer(q.query_id, (0, 1), "alice", answered_at=0.0))
...     store.add_answer(Answer(q.query_id, (0, 1), "alice", answered_at=5.0))  # same answer again
...     store.counts()
1
True
True
False
{'queries': 1, 'answers': 1, 'pending': 0}
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from llm_gym.core.preferences import Answer, Comparison, Query

T = TypeVar("T")

__all__ = ["PreferenceStore", "StoreError", "SCHEMA_VERSION", "answer_id", "move_store", "store_files"]

SCHEMA_VERSION = 1
"""Stored in ``PRAGMA user_version``; a file from a newer llm_gym is refused, not rewritten."""

_APPLICATION_ID = 0x6C6C6D67  # "llmg" in ``PRAGMA application_id``: marks the file as an llm_gym store
_SQLITE_MAGIC = b"SQLite format 3\x00"

_SCHEMA = """
CREATE TABLE queries (
    query_id    TEXT PRIMARY KEY,
    prompt      TEXT NOT NULL,
    completions TEXT NOT NULL,          -- JSON list of strings
    created_at  REAL NOT NULL
);
CREATE TABLE answers (
    answer_id   TEXT PRIMARY KEY,       -- hash(query_id, labeller, ranks): idempotent resubmission
    query_id    TEXT NOT NULL REFERENCES queries(query_id),
    ranks       TEXT NOT NULL,          -- JSON list of ints, 0 = best, equal = tie
    labeller    TEXT NOT NULL,
    answered_at REAL NOT NULL
);
CREATE INDEX answers_by_query ON answers(query_id);
"""

# The table `llm_gym.feedback.leases` works on. Added after schema version 1 shipped; created on open where
# missing, so version-1 files still open (and older llm_gym versions, which do not know the table, ignore it).
_LEASE_SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    lease_id    TEXT PRIMARY KEY,       -- random, an answer is submitted with it (replays are recognised)
    query_id    TEXT NOT NULL REFERENCES queries(query_id),
    holder      TEXT NOT NULL,          -- the labelling session holding the lease
    labeller    TEXT NOT NULL,          -- written into the answer
    leased_at   REAL NOT NULL,
    expires_at  REAL NOT NULL,
    outcome     TEXT,                   -- NULL while open, then 'answered' or 'skipped'
    answer_id   TEXT,                   -- the answer row stored under this lease
    closed_at   REAL
);
CREATE INDEX IF NOT EXISTS leases_by_query ON leases(query_id);
CREATE INDEX IF NOT EXISTS leases_by_holder ON leases(holder);
"""


class StoreError(ValueError):
    """The file cannot be used as a preference store; the message says why and what to do."""


def answer_id(answer: Answer) -> str:
    """The id of an answer row: the same labeller giving the same ranks to the same query is one row."""
    blob = json.dumps([answer.query_id, answer.labeller, list(answer.ranks)], ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


class PreferenceStore:
    """An append-only SQLite store of comparison queries and the answers oracles give them.

    Args:
        path: the database file (created if missing), or ``":memory:"`` for a throwaway store.
            An existing file that is not an llm_gym preference store is refused with a
            `StoreError` and left untouched.
        timeout: seconds a write waits for another process holding the file's lock.
        clock: the time source for ``created_at`` of new queries (inject one in tests).
    """

    def __init__(
        self, path: str | PathLike[str], *, timeout: float = 30.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = str(path)
        self._clock = clock
        self._timeout = timeout
        self._lock = threading.RLock()
        memory = self.path == ":memory:"
        if not memory:
            _check_is_sqlite_or_new(Path(self.path))
            if Path(self.path).is_file() and not os.access(self.path, os.W_OK):
                # SQLite would open it read-only without a word and fail at the first answer, after a person typed it
                raise StoreError(f"cannot open preference store {self.path}: the file is read-only; make it writable "
                                 f"(chmod u+w {self.path}) or open a copy of it. The store was left unchanged.")
        try:
            # isolation_level=None: no implicit transactions; `_transaction` opens each one explicitly.
            self._conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
        except sqlite3.OperationalError as exc:
            raise StoreError(
                f"cannot open preference store {self.path}: {exc}; check that its folder exists and is writable"
            ) from exc
        try:
            self._open_schema()
        except BaseException:
            self._conn.close()
            raise

    # -- opening -------------------------------------------------------------------------

    def _open_schema(self) -> None:
        # Several processes may open the same new file at once (the ranks of a launcher, a web
        # server and a training loop): the header is read as one snapshot, creation happens under
        # the write lock, and the first process in creates the schema for all.
        conn = self._conn
        try:
            app_id, version, n_objects = self._retry_busy(self._header_snapshot)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and _is_busy(exc):
                # a valid file someone else holds: say so, or a user may abandon their labels
                raise StoreError(
                    f"{self.path} is locked by another process for longer than the {self._timeout:g} s timeout; "
                    "close the other program (or pass a longer timeout) and open it again"
                ) from exc
            # the file starts like SQLite (checked before connecting): say what stops it, never "use another file"
            # for what may be a store of labels that a permission or a damaged page keeps out of reach
            raise StoreError(_unreadable(Path(self.path), exc)) from exc
        if app_id == 0 and n_objects == 0 and version == 0:
            # A new, empty database: nothing above wrote to it; now make it a store.
            with self._transaction():
                app_id, version, n_objects = self._header()  # another process may have created it meanwhile
                if app_id == 0 and n_objects == 0:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA application_id={_APPLICATION_ID}")
                    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                    app_id, version = _APPLICATION_ID, SCHEMA_VERSION
        if app_id != _APPLICATION_ID:
            raise StoreError(
                f"{self.path} is an SQLite database but not an llm_gym preference store "
                f"(application_id={app_id}, {n_objects} tables/indexes); it was left unchanged. "
                "Pass a new file name for the store."
            )
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} is a preference store of schema version {version}, written by a newer llm_gym "
                f"(this one reads version {SCHEMA_VERSION}); upgrade llm_gym to open it"
            )
        if version < 1:
            raise StoreError(f"{self.path}: preference store with invalid schema version {version}; it was left unchanged")
        self._quick_check()
        self._retry_busy(lambda: conn.execute("PRAGMA journal_mode=WAL"))  # persistent in the file; a no-op when already set
        conn.execute("PRAGMA synchronous=FULL")  # fsync at every commit: a committed answer survives power loss
        conn.execute("PRAGMA foreign_keys=ON")
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'leases'").fetchone():
            with self._transaction():
                for statement in _LEASE_SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)

    def _quick_check(self) -> None:
        """Refuse a store with a damaged page now, naming the file, rather than on the first read that reaches it.

        SQLite's ``quick_check`` reads every page of the file (the b-trees, not the index contents): about
        a second per few hundred MB, once per open. It only reads.
        """
        try:
            problems = [row[0] for row in self._retry_busy(lambda: self._read("PRAGMA quick_check(5)"))]
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and _is_busy(exc):
                raise  # a lock, not damage: the caller of open reports it
            problems = [str(exc)]
        if problems != ["ok"]:
            raise StoreError(_damaged(Path(self.path), "; ".join(problems)))

    def _header_snapshot(self) -> tuple[int, int, int]:
        """`_header` read in one read transaction, so that a schema another process commits halfway
        through is seen whole or not at all (three autocommit reads could mix before and after)."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                return self._header()
            finally:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")  # it only read

    def _retry_busy(self, fn: Callable[[], T]) -> T:
        """`fn()`, retried while another process holds a lock SQLite does not wait for by itself
        (switching the journal mode, reading while a schema is being created), up to the timeout."""
        deadline = time.monotonic() + self._timeout
        delay = 0.001
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(2 * delay, 0.1)

    def _header(self) -> tuple[int, int, int]:
        conn = self._conn
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        n_objects = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        return app_id, version, n_objects

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed whole on success, rolled back whole on any exception."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")  # take the write lock now, not halfway through
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:  # SQLite may already have rolled back (e.g. disk full)
                    self._conn.execute("ROLLBACK")
                raise

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # -- writing -------------------------------------------------------------------------

    def add_queries(self, queries: Iterable[Query]) -> int:
        """Record comparison queries; returns how many were new (a query already stored is skipped).

        Raises:
            TypeError: if an item is not a `Query`.
            ValueError: if a stored query has the same id but different text (nothing is written).
        """
        queries = list(queries)
        for q in queries:
            if not isinstance(q, Query):
                raise TypeError(f"add_queries takes Query objects, got {type(q).__name__}")
        now = self._clock()
        added = 0
        with self._transaction() as conn:
            for q in queries:
                completions = json.dumps(list(q.completions), ensure_ascii=False)
                row = conn.execute("SELECT prompt, completions FROM queries WHERE query_id = ?", (q.query_id,)).fetchone()
                if row is not None:
                    if row != (q.prompt, completions):
                        raise ValueError(
                            f"query {q.query_id} is already stored with a different prompt or completions; "
                            "give the new query another query_id (or leave query_id empty to use the content hash)"
                        )
                    continue
                conn.execute(
                    "INSERT INTO queries (query_id, prompt, completions, created_at) VALUES (?, ?, ?, ?)",
                    (q.query_id, q.prompt, completions, now),
                )
                added += 1
        return added

    def add_answer(self, answer: Answer) -> bool:
        """Record one answer; returns False when the identical answer (same labeller and ranks) was already stored.

        Raises:
            ValueError: for an answer to an unknown query or with the wrong number of ranks.
        """
        return self.add_answers([answer]) == 1

    def add_answers(self, answers: Iterable[Answer]) -> int:
        """Record answers in one transaction (all or none); returns how many rows were new.

        Raises:
            TypeError: if an item is not an `Answer`.
            ValueError: for an answer to an unknown query (add the query first with
                `add_queries`) or whose ranks do not match the query's number of completions.
                Nothing of the batch is written then.
        """
        answers = list(answers)
        for a in answers:
            if not isinstance(a, Answer):
                raise TypeError(f"add_answers takes Answer objects, got {type(a).__name__}")
        inserted = 0
        with self._transaction() as conn:
            for a in answers:
                row = conn.execute("SELECT completions FROM queries WHERE query_id = ?", (a.query_id,)).fetchone()
                if row is None:
                    raise ValueError(
                        f"answer for unknown query {a.query_id!r}; add the query with add_queries() before its answers"
                    )
                k = len(json.loads(row[0]))
                if len(a.ranks) != k:
                    raise ValueError(
                        f"answer to query {a.query_id} has {len(a.ranks)} ranks but the query has {k} completions; "
                        "give one rank per completion (0 = best)"
                    )
                inserted += _insert_answer(conn, a)
        return inserted

    def add_from(self, other: PreferenceStore) -> int:
        """Copy every query and answer of `other` into this store (what is here already is kept as it is);
        returns how many answers were new. Both stay usable; `other` is only read."""
        self.add_queries(other.queries())
        return self.add_answers(other.answers())

    # -- reading -------------------------------------------------------------------------

    def get_query(self, query_id: str) -> Query:
        """The stored query with this id; `KeyError` if there is none."""
        rows = self._read("SELECT query_id, prompt, completions FROM queries WHERE query_id = ?", (query_id,))
        if not rows:
            raise KeyError(f"no query {query_id!r} in preference store {self.path}")
        return _query(rows[0])

    def queries(self) -> list[Query]:
        """All stored queries, in the order they were added."""
        return [_query(r) for r in self._read("SELECT query_id, prompt, completions FROM queries ORDER BY rowid")]

    def pending(self, limit: int | None = None) -> list[Query]:
        """Queries that no one has answered yet, oldest first (at most `limit` of them)."""
        sql = (
            "SELECT q.query_id, q.prompt, q.completions FROM queries q "
            "WHERE NOT EXISTS (SELECT 1 FROM answers a WHERE a.query_id = q.query_id) ORDER BY q.rowid"
        )
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
            return [_query(r) for r in self._read(sql + " LIMIT ?", (limit,))]
        return [_query(r) for r in self._read(sql)]

    def answers(self, query_id: str | None = None) -> list[Answer]:
        """All answers (or those to one query), in the order they were stored."""
        sql = "SELECT query_id, ranks, labeller, answered_at FROM answers"
        if query_id is None:
            rows = self._read(sql + " ORDER BY rowid")
        else:
            rows = self._read(sql + " WHERE query_id = ? ORDER BY rowid", (query_id,))
        return [Answer(qid, tuple(json.loads(ranks)), labeller, at) for qid, ranks, labeller, at in rows]

    def comparisons(self, include_ties: bool = True) -> list[Comparison]:
        """The training set: one `Comparison` per answer row, in the order answers were stored.

        Contradictory answers to the same query are all present (a Bradley-Terry reward model
        fits their proportions, which is what noisy labels mean). With ``include_ties=False``
        answers in which every completion ties are left out (they carry no pair to learn from).
        """
        rows = self._read(
            "SELECT q.query_id, q.prompt, q.completions, a.ranks, a.labeller "
            "FROM answers a JOIN queries q ON q.query_id = a.query_id ORDER BY a.rowid"
        )
        out = []
        for qid, prompt, completions, ranks, labeller in rows:
            c = Comparison(prompt, tuple(json.loads(completions)), tuple(json.loads(ranks)), labeller, qid)
            if include_ties or not c.is_tie:
                out.append(c)
        return out

    def agreement(self) -> dict[str, float | int | None]:
        """How often answers to the same query agree (Stiennon et al. 2020 report labeller agreement).

        Only queries with more than one answer count. Returns:

        * ``"queries"``: the number of queries with more than one answer;
        * ``"unanimous"``: how many of them got identical ranks in every answer;
        * ``"unanimous_rate"``: ``unanimous / queries`` (None when ``queries`` is 0);
        * ``"pair_agreement"``: over every two answers to the same query and every pair of
          its completions, the fraction ordered the same way (both "i better", both "j
          better", or both tied); for pairwise queries this is the usual inter-labeller
          agreement rate (None when ``queries`` is 0).
        """
        by_query: dict[str, list[tuple[int, ...]]] = {}
        for qid, ranks in self._read("SELECT query_id, ranks FROM answers ORDER BY rowid"):
            by_query.setdefault(qid, []).append(tuple(json.loads(ranks)))
        multi = [rs for rs in by_query.values() if len(rs) > 1]
        unanimous = sum(len(set(rs)) == 1 for rs in multi)
        same = total = 0
        for rs in multi:
            k = len(rs[0])
            for a, b in itertools.combinations(rs, 2):
                for i, j in itertools.combinations(range(k), 2):
                    total += 1
                    same += _sign(a[i] - a[j]) == _sign(b[i] - b[j])
        return {
            "queries": len(multi),
            "unanimous": unanimous,
            "unanimous_rate": unanimous / len(multi) if multi else None,
            "pair_agreement": same / total if total else None,
        }

    def counts(self) -> dict[str, int]:
        """How many queries, answers and pending (unanswered) queries are stored."""
        (row,) = self._read(
            "SELECT (SELECT count(*) FROM queries), (SELECT count(*) FROM answers), "
            "(SELECT count(*) FROM queries q WHERE NOT EXISTS (SELECT 1 FROM answers a WHERE a.query_id = q.query_id))"
        )
        return {"queries": row[0], "answers": row[1], "pending": row[2]}

    def same_database(self, other: PreferenceStore) -> bool:
        """Whether `other` is this store: the same object, or another connection to the same file."""
        if other is self:
            return True
        if ":memory:" in (self.path, other.path):  # each connection to ":memory:" is a database of its own
            return False
        try:
            return os.path.samefile(self.path, other.path)
        except OSError:  # a file removed since it was opened
            return False

    # -- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (idempotent). Everything written is already committed."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> PreferenceStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PreferenceStore({self.path!r})"


_COMPANIONS = ("-shm", "-wal", "")
"""The files of one store, in the order `move_store` renames them: the database file last."""


def store_files(path: str | PathLike[str]) -> list[Path]:
    """The files of the store at `path` that exist: the database and SQLite's ``-wal`` and ``-shm`` beside it."""
    return [Path(f"{path}{suffix}") for suffix in reversed(_COMPANIONS) if Path(f"{path}{suffix}").exists()]


def move_store(source: str | PathLike[str], target: str | PathLike[str]) -> None:
    """Give the store file `source` (with its journal) the name `target`, never replacing anything there.

    The write-ahead log is first folded into the file where SQLite can, so normally one file moves, in
    one atomic rename. Otherwise the journal is renamed before the database file: a kill in between
    leaves the database under its old name and its log under the new one (both kept; a new store is
    never created beside an old log).

    Raises:
        FileExistsError: `target` or one of its journal files exists (nothing was moved).
    """
    source, target = Path(source), Path(target)
    taken = store_files(target)
    if taken:
        raise FileExistsError(f"cannot move preference store {source} to {target}: {taken[0]} exists; pick a free name")
    if source.exists():  # (connecting to a missing file would create one)
        try:  # fold the log into the file; a file SQLite cannot open now is moved as it is, with its log
            conn = sqlite3.connect(source, timeout=5.0)
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                conn.close()  # the last connection to close removes the emptied log
        except sqlite3.Error:
            pass
    for suffix in _COMPANIONS:
        old, new = Path(f"{source}{suffix}"), Path(f"{target}{suffix}")
        if old.exists():
            os.rename(old, new)  # `new` was free above; os.replace would hide a file appearing since


def _insert_answer(conn: sqlite3.Connection, answer: Answer) -> int:
    """Insert one checked answer row inside an open transaction: 1 if it is new, 0 if the identical answer is stored."""
    return conn.execute(
        "INSERT OR IGNORE INTO answers (answer_id, query_id, ranks, labeller, answered_at) VALUES (?, ?, ?, ?, ?)",
        (answer_id(answer), answer.query_id, json.dumps(list(answer.ranks)), answer.labeller, float(answer.answered_at)),
    ).rowcount


def _query(row: tuple) -> Query:
    query_id, prompt, completions = row
    return Query(prompt, tuple(json.loads(completions)), query_id)


def _sign(x: int) -> int:
    return (x > 0) - (x < 0)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY / SQLITE_LOCKED: another connection holds a lock (by error code where Python gives it)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (5, 6)
    return "locked" in str(exc) or "busy" in str(exc)


_SQLITE_READONLY, _SQLITE_CANTOPEN = 8, 14


def _unreadable(path: Path, exc: sqlite3.DatabaseError) -> str:
    """Why an existing file that starts like an SQLite database could not be opened as one, and what to do."""
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    if code in (_SQLITE_READONLY, _SQLITE_CANTOPEN) or "readonly" in str(exc):
        folder = path.parent
        if not os.access(folder, os.W_OK):
            return (
                f"cannot open preference store {path}: its folder {folder} is not writable, and SQLite keeps the "
                f"store's journal beside it ({path.name}-wal, {path.name}-shm); make the folder writable "
                f"(chmod u+w {folder}) or copy the store to a writable folder and open the copy. "
                "The store was left unchanged."
            )
        if not os.access(path, os.W_OK):
            return (
                f"cannot open preference store {path}: the file is read-only; make it writable (chmod u+w {path}) "
                "or open a copy of it. The store was left unchanged."
            )
        return f"cannot open preference store {path} ({exc}); check that the file and its folder are writable"
    return _damaged(path, str(exc))


def _damaged(path: Path, problem: str) -> str:
    return (
        f"{path} is an SQLite file that SQLite cannot read whole ({problem}): it is damaged. It was left unchanged; "
        f"restore it from a backup, or save what is readable with `sqlite3 {path} .recover | sqlite3 recovered.sqlite` "
        "and open the recovered copy"
    )


def _check_is_sqlite_or_new(path: Path) -> None:
    """Refuse, before SQLite touches it, a path that is a folder or a non-empty non-SQLite file."""
    if path.is_dir():
        raise StoreError(f"{path} is a folder; pass a file path for the preference store (e.g. {path / 'prefs.sqlite'})")
    if not path.exists():
        if not path.parent.exists():
            raise StoreError(f"cannot create preference store {path}: folder {path.parent} does not exist; create it first")
        return
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise StoreError(f"cannot read preference store {path}: {exc.strerror}; check its permissions") from exc
    if head and head != _SQLITE_MAGIC:
        raise StoreError(
            f"{path} exists and is not an SQLite database (it starts with {head[:8]!r}); it was left unchanged. "
            "Pass a new file name for the preference store."
        )
