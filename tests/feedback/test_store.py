"""The preference store: exact text, idempotence, append-only contradictions, crash safety, refusing foreign files."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from llm_gym.core.preferences import Answer, Comparison, Query
from llm_gym.feedback.leases import lease_next
from llm_gym.feedback.store import SCHEMA_VERSION, PreferenceStore, StoreError, move_store

from doubles import run_in_threads

TRICKY = [
    "naïve café — 東京 ✓",
    "line one\nline two\n\n  indented\r\nwindows line",
    "<script>alert(1)</script> &amp; <b>bold</b> ' \" \\ %s {0}",
    "emoji 👍🏽 and zero-width\u200bjoiner, nul-free tab\t end ",
    "",
    "   ",
]


def _ticker():
    t = iter(range(10**6))
    return lambda: float(next(t))


@pytest.fixture()
def store(tmp_path: Path):
    with PreferenceStore(tmp_path / "prefs.sqlite", clock=_ticker()) as s:
        yield s


def _pair(i: int) -> Query:
    return Query(f"prompt {i}", (f" good {i}", f" bad {i}"))


def test_tricky_text_round_trips_exactly(tmp_path: Path) -> None:
    path = tmp_path / "prefs.sqlite"
    queries = [Query(p, (c, TRICKY[(i + 1) % len(TRICKY)], "plain")) for i, (p, c) in enumerate(zip(TRICKY, TRICKY[::-1]))]
    with PreferenceStore(path) as s:
        assert s.add_queries(queries) == len(queries)
        s.add_answers(Answer(q.query_id, (2, 0, 1), "ünïcödé labeller <x>") for q in queries)
    with PreferenceStore(path) as s:  # reopened from disk
        assert s.queries() == queries
        for q in queries:
            got = s.get_query(q.query_id)
            assert got.prompt == q.prompt and got.completions == q.completions
        comps = s.comparisons()
        assert [(c.prompt, c.completions) for c in comps] == [(q.prompt, q.completions) for q in queries]
        assert {c.labeller for c in comps} == {"ünïcödé labeller <x>"}
    # Stored as real UTF-8 text, not \u escapes (readable by other tools).
    raw = sqlite3.connect(path).execute("SELECT completions FROM queries").fetchall()
    assert any("東京" in r[0] for r in raw)


def test_pending_counts_and_order(store: PreferenceStore) -> None:
    qs = [_pair(i) for i in range(5)]
    assert store.add_queries(qs) == 5
    assert store.add_queries(qs[:3]) == 0  # idempotent
    assert [q.query_id for q in store.pending()] == [q.query_id for q in qs]
    assert [q.query_id for q in store.pending(limit=2)] == [qs[0].query_id, qs[1].query_id]
    store.add_answer(Answer(qs[1].query_id, (0, 1), "alice"))
    assert [q.query_id for q in store.pending()] == [qs[i].query_id for i in (0, 2, 3, 4)]
    assert store.counts() == {"queries": 5, "answers": 1, "pending": 4}
    with pytest.raises(ValueError, match="limit"):
        store.pending(limit=-1)


def test_repeated_submission_is_idempotent(store: PreferenceStore) -> None:
    q = _pair(0)
    store.add_queries([q])
    a = Answer(q.query_id, (0, 1), "alice", answered_at=1.0)
    assert store.add_answer(a) is True
    assert store.add_answer(Answer(q.query_id, (0, 1), "alice", answered_at=99.0)) is False  # a retried submit
    assert store.add_answers([a, a, a]) == 0
    assert store.answers() == [a]
    assert store.counts()["answers"] == 1


def test_contradictory_answers_are_kept_and_agreement_reported(store: PreferenceStore) -> None:
    q1, q2, q3, q4 = _pair(1), _pair(2), _pair(3), Query("k", ("a", "b", "c"))
    store.add_queries([q1, q2, q3, q4])
    store.add_answers(
        [
            Answer(q1.query_id, (0, 1), "alice"),
            Answer(q1.query_id, (1, 0), "bob"),  # contradicts alice
            Answer(q1.query_id, (1, 0), "alice"),  # alice changed her mind: also kept
            Answer(q2.query_id, (0, 1), "alice"),
            Answer(q2.query_id, (0, 1), "bob"),  # agrees
            Answer(q3.query_id, (0, 1), "alice"),  # single answer: not in agreement stats
            Answer(q4.query_id, (0, 1, 2), "alice"),
            Answer(q4.query_id, (0, 2, 1), "bob"),  # agrees on 2 of 3 completion pairs
        ]
    )
    assert len(store.answers(q1.query_id)) == 3
    assert [c.ranks for c in store.comparisons() if c.query_id == q1.query_id] == [(0, 1), (1, 0), (1, 0)]
    agreement = store.agreement()
    assert agreement["queries"] == 3 and agreement["unanimous"] == 1
    assert agreement["unanimous_rate"] == pytest.approx(1 / 3)
    # q1: answer pairs (a,b) differ, (a,c) differ, (b,c) agree -> 1/3 of 3; q2: 1/1; q4: 2/3.
    assert agreement["pair_agreement"] == pytest.approx((1 + 1 + 2) / (3 + 1 + 3))


def test_agreement_with_no_repeated_queries(store: PreferenceStore) -> None:
    assert store.agreement() == {"queries": 0, "unanimous": 0, "unanimous_rate": None, "pair_agreement": None}


def test_comparisons_are_the_training_set(store: PreferenceStore) -> None:
    q1, q2 = _pair(1), Query("p", ("w", "x", "y", "z"))
    store.add_queries([q1, q2])
    store.add_answers([Answer(q1.query_id, (0, 0), "alice"), Answer(q2.query_id, (2, 0, 3, 1), "alice")])
    comps = store.comparisons()
    assert comps == [Comparison(q1.prompt, q1.completions, (0, 0), "alice", q1.query_id),
                     Comparison(q2.prompt, q2.completions, (2, 0, 3, 1), "alice", q2.query_id)]
    assert [c.query_id for c in store.comparisons(include_ties=False)] == [q2.query_id]
    assert len(comps[1].pairs()) == 6


def test_unknown_query_and_wrong_k_rejected_and_nothing_written(store: PreferenceStore) -> None:
    q = _pair(0)
    store.add_queries([q])
    good = Answer(q.query_id, (0, 1), "alice")
    with pytest.raises(ValueError, match="answer for unknown query 'nope'.*add_queries"):
        store.add_answers([good, Answer("nope", (0, 1), "alice")])
    with pytest.raises(ValueError, match="3 ranks but the query has 2 completions"):
        store.add_answers([good, Answer(q.query_id, (0, 1, 2), "alice")])
    assert store.answers() == []  # the batches were atomic: `good` was rolled back too
    with pytest.raises(TypeError, match="Answer"):
        store.add_answers([("x", (0, 1))])  # type: ignore[list-item]


def test_same_query_id_different_text_rejected(store: PreferenceStore) -> None:
    store.add_queries([Query("p", ("a", "b"), query_id="q1")])
    with pytest.raises(ValueError, match="different prompt"):
        store.add_queries([Query("p", ("a", "c"), query_id="q1")])
    assert store.get_query("q1").completions == ("a", "b")
    with pytest.raises(KeyError):
        store.get_query("missing")


def test_reopen_after_close_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "prefs.sqlite"
    qs = [_pair(i) for i in range(4)]
    s = PreferenceStore(path)
    s.add_queries(qs)
    s.add_answers([Answer(qs[0].query_id, (0, 1), "alice", 1.5), Answer(qs[2].query_id, (0, 0), "bob", 2.5)])
    answers, comps = s.answers(), s.comparisons()
    s.close()
    s.close()  # idempotent
    with PreferenceStore(path) as s2:
        assert s2.answers() == answers and s2.comparisons() == comps
        assert s2.counts() == {"queries": 4, "answers": 2, "pending": 2}
        assert s2._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s2._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert s2._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_foreign_files_are_refused_and_left_unchanged(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("these are my notes\n")
    before = text.read_bytes()
    with pytest.raises(StoreError, match="not an SQLite database.*left unchanged"):
        PreferenceStore(text)
    assert text.read_bytes() == before

    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.execute("INSERT INTO users VALUES ('x')")
    conn.commit()
    conn.close()
    before = other.read_bytes()
    with pytest.raises(StoreError, match="not an llm_gym preference store"):
        PreferenceStore(other)
    assert other.read_bytes() == before

    tagged = tmp_path / "tagged.db"  # another program's database with no tables yet, only its version tag
    conn = sqlite3.connect(tagged)
    conn.execute("PRAGMA user_version=7")
    conn.close()
    before = tagged.read_bytes()
    with pytest.raises(StoreError, match="not an llm_gym preference store"):
        PreferenceStore(tagged)
    assert tagged.read_bytes() == before

    with pytest.raises(StoreError, match="is a folder"):
        PreferenceStore(tmp_path)
    with pytest.raises(StoreError, match="does not exist"):
        PreferenceStore(tmp_path / "no" / "such" / "dir.sqlite")


def test_a_store_locked_too_long_is_reported_as_locked_not_as_foreign(tmp_path: Path) -> None:
    path = tmp_path / "prefs.sqlite"
    PreferenceStore(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")  # in WAL mode only this keeps readers out
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="locked by another process") as info:
            PreferenceStore(path, timeout=0.2)
        assert "not an SQLite database" not in str(info.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with PreferenceStore(path) as store:  # the file itself was fine all along
        assert store.counts()["queries"] == 0


def test_newer_schema_refused(tmp_path: Path) -> None:
    path = tmp_path / "prefs.sqlite"
    PreferenceStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer llm_gym"):
        PreferenceStore(path)


def test_empty_existing_file_becomes_a_store(tmp_path: Path) -> None:
    path = tmp_path / "empty.sqlite"
    path.touch()
    with PreferenceStore(path) as s:
        assert s.counts() == {"queries": 0, "answers": 0, "pending": 0}


def _open_and_close(path: str, start, errors) -> None:
    start.wait()
    try:
        PreferenceStore(path).close()
    except Exception as exc:  # reported to the parent, which fails the test with it
        errors.put(repr(exc))


def test_processes_opening_one_new_file_at_once_all_succeed(tmp_path: Path) -> None:
    """The ranks of a launcher (or a web server and a loop) may open the same new store together.

    Regression: the header was read as three autocommit statements, so a process could see the
    tables another had just committed but not its application_id, and refuse the file as foreign
    (~1 round in 8 with 4 processes). One failing rank then deadlocked a `torchrun` pipeline.
    """
    import multiprocessing

    ctx = multiprocessing.get_context("fork")  # the children touch only sqlite3
    errors = ctx.Queue()
    for i in range(20):
        path = str(tmp_path / f"s{i}.sqlite")
        start = ctx.Barrier(4)
        procs = [ctx.Process(target=_open_and_close, args=(path, start, errors)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
        assert all(p.exitcode == 0 for p in procs)
        assert errors.empty(), f"round {i}: {errors.get()}"
        with PreferenceStore(path) as store:
            assert store.counts()["queries"] == 0


def test_threads_share_one_store(store: PreferenceStore) -> None:
    qs = [_pair(i) for i in range(40)]
    store.add_queries(qs)

    def label(who: str) -> None:
        for q in qs:
            store.add_answer(Answer(q.query_id, (0, 1), who))
            store.pending(limit=1)

    run_in_threads(label, [f"labeller{i}" for i in range(3)])
    assert store.counts() == {"queries": 40, "answers": 120, "pending": 0}


# The writer imports only the store (not the whole llm_gym package, which loads torch and
# takes seconds): a stub package object points `llm_gym.*` imports at the source folder.
_WRITER = textwrap.dedent(
    """
    import sys, types
    pkg = types.ModuleType("llm_gym"); pkg.__path__ = [sys.argv[2]]; sys.modules["llm_gym"] = pkg
    from llm_gym.core.preferences import Answer, Query
    from llm_gym.feedback.store import PreferenceStore
    store = PreferenceStore(sys.argv[1])
    queries = [Query("prompt %d" % i, ("line\\n<a> ü %d" % i, "other %d" % i)) for i in range(100000)]
    i = 0
    while True:
        batch = queries[i : i + BATCH]
        store.add_queries(batch)
        store.add_answers(Answer(q.query_id, (0, 1), "writer", float(i)) for q in batch)
        i += BATCH
        print(i, flush=True)  # reported only after the commit returned
    """
).replace("BATCH", "10")


def test_crash_mid_write_leaves_only_whole_answers(tmp_path: Path) -> None:
    """SIGKILL a process that writes answer batches of 10 in a loop: committed batches survive, whole."""
    path = tmp_path / "prefs.sqlite"
    package_dir = str(Path(__import__("llm_gym").__file__).parent)
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), package_dir], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        reported = 0
        assert proc.stdout is not None
        for line in proc.stdout:
            reported = int(line)
            if reported >= 300:
                break
        proc.send_signal(signal.SIGKILL)  # mid-way: the writer is busy in its next transactions
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert reported >= 300, proc.stderr.read() if proc.stderr else ""

    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = conn.execute("SELECT answer_id, query_id, ranks, labeller, answered_at FROM answers").fetchall()
    conn.close()
    assert len(rows) >= reported  # everything reported as committed is there
    assert len(rows) % 10 == 0  # batches are atomic: never a partial batch
    for answer_id, query_id, ranks, labeller, answered_at in rows:
        assert answer_id and query_id and labeller == "writer" and isinstance(answered_at, float)
        assert json.loads(ranks) == [0, 1]
    with PreferenceStore(path) as s:  # still opens as a store, and every answer joins its query
        assert len(s.comparisons()) == len(rows)
        assert all(c.completions[0].startswith("line\n<a> ü ") for c in s.comparisons())


def test_same_database_is_the_same_file_or_object(tmp_path: Path) -> None:
    with PreferenceStore(tmp_path / "a.sqlite") as a, PreferenceStore(tmp_path / "a.sqlite") as again, \
            PreferenceStore(tmp_path / "b.sqlite") as b, PreferenceStore(":memory:") as m1, PreferenceStore(":memory:") as m2:
        assert a.same_database(a) and a.same_database(again) and again.same_database(a)
        assert not a.same_database(b) and not a.same_database(m1)
        assert m1.same_database(m1) and not m1.same_database(m2), "each :memory: store is a database of its own"


def test_a_store_file_from_before_leases_opens_and_gains_them(tmp_path: Path) -> None:
    path = tmp_path / "prefs.sqlite"
    with PreferenceStore(path) as s:
        s.add_queries([_pair(0)])
        s.add_answer(Answer(_pair(0).query_id, (0, 1), "alice", 1.0))
    conn = sqlite3.connect(path)  # make it a file as the first version wrote it: no leases table
    conn.executescript("DROP TABLE leases")
    conn.close()
    with PreferenceStore(path) as s:
        assert s.answers() == [Answer(_pair(0).query_id, (0, 1), "alice", 1.0)]
        s.add_queries([_pair(1)])
        assert lease_next(s, "tab-a", labeller="tab-a-name", lease_seconds=60.0).query == _pair(1)


# --------------------------------------------------------------------------------------
# Files SQLite cannot use: a folder that is not writable, a damaged page
# --------------------------------------------------------------------------------------

def _open_as_nobody(path: str, errors) -> None:
    """In a forked child: become the user nobody, open the store, report its error ('' if it opened)."""
    os.setgid(65534)
    os.setuid(65534)
    try:
        PreferenceStore(path).close()
        errors.put("")
    except StoreError as exc:
        errors.put(str(exc))


def _open_as_someone_who_cannot_write(folder: Path, path: Path) -> str:
    """The error of opening `path` while `folder` is read-only to the one opening it ('' if it opened).

    As root (who may write anyway) the store is opened in a forked child that runs as the user nobody."""
    if not hasattr(os, "geteuid"):
        pytest.skip("needs POSIX permissions")
    folder.chmod(0o555)
    try:
        if os.geteuid() != 0:
            try:
                PreferenceStore(path).close()
            except StoreError as exc:
                return str(exc)
            return ""
        os.chown(path, 65534, 65534)  # the file is nobody's own: only the folder is closed to them
        return _error_opening_as_nobody(path)
    finally:
        folder.chmod(0o755)


def _error_opening_as_nobody(path: Path) -> str:
    """The error of opening `path` in a forked child that runs as the user nobody ('' if it opened)."""
    ctx = multiprocessing.get_context("fork")
    errors = ctx.Queue()
    child = ctx.Process(target=_open_as_nobody, args=(str(path), errors))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    return errors.get(timeout=5)


def _one_query_store(prefix: str) -> tuple[Path, Path, Path]:
    """(base, folder, path): a store holding one query in `base/run/labels.sqlite`, under /tmp where nobody may look."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o755)
    folder = base / "run"
    folder.mkdir()
    path = folder / "labels.sqlite"
    with PreferenceStore(path) as store:
        store.add_queries([_pair(0)])
    return base, folder, path


def test_a_store_in_a_folder_that_is_not_writable_says_so(tmp_path_factory) -> None:
    """Issue 15 item 11: SQLite needs to write its journal beside the store; the error said 'not an SQLite database
    ... pass a new file name', which invites a person to abandon their labels."""
    base, folder, path = _one_query_store("llm_gym_ro_")
    try:
        error = _open_as_someone_who_cannot_write(folder, path)
        assert f"its folder {folder} is not writable" in error, error
        assert "not an SQLite database" not in error and "new file name" not in error
        with PreferenceStore(path) as store:  # nothing lost
            assert store.queries() == [_pair(0)]
    finally:
        shutil.rmtree(base)


def _damage_a_middle_page(path: Path) -> bytes:
    data = bytearray(path.read_bytes())
    page = len(data) // 4096 // 2
    data[page * 4096 : (page + 1) * 4096] = bytes(range(256)) * 16
    path.write_bytes(bytes(data))
    return bytes(data)


def test_a_damaged_page_is_refused_on_open_naming_the_file(tmp_path: Path) -> None:
    """Issue 15 item 11: a damaged page in the middle of the file passed the open, then a read failed with a
    bare sqlite3.DatabaseError that did not name the file. SQLite's quick_check runs on open."""
    path = tmp_path / "prefs.sqlite"
    with PreferenceStore(path) as store:
        store.add_queries([Query(f"prompt {i} " + "x" * 300, (f" a {i}", f" b {i}")) for i in range(200)])
    damaged = _damage_a_middle_page(path)
    with pytest.raises(StoreError, match="is an SQLite file that SQLite cannot read whole") as info:
        PreferenceStore(path)
    assert str(path) in str(info.value) and ".recover" in str(info.value)
    assert path.read_bytes() == damaged, "left unchanged"


def test_add_from_copies_queries_and_answers_once(tmp_path: Path) -> None:
    with PreferenceStore(tmp_path / "a.sqlite") as a, PreferenceStore(tmp_path / "b.sqlite") as b:
        a.add_queries([_pair(0), _pair(1)])
        a.add_answer(Answer(_pair(0).query_id, (0, 1), "alice", 1.0))
        b.add_queries([_pair(1), _pair(2)])
        b.add_answer(Answer(_pair(1).query_id, (1, 0), "bob", 2.0))
        assert b.add_from(a) == 1 and b.add_from(a) == 0
        assert b.counts() == {"queries": 3, "answers": 2, "pending": 1}
        assert a.counts() == {"queries": 2, "answers": 1, "pending": 1}, "the source is only read"


def test_move_store_never_replaces_a_file(tmp_path: Path) -> None:
    with PreferenceStore(tmp_path / "a.sqlite") as a:
        a.add_queries([_pair(0)])
    (tmp_path / "b.sqlite-wal").write_bytes(b"someone's log")
    with pytest.raises(FileExistsError, match="b.sqlite-wal exists"):
        move_store(tmp_path / "a.sqlite", tmp_path / "b.sqlite")
    assert (tmp_path / "b.sqlite-wal").read_bytes() == b"someone's log"
    move_store(tmp_path / "a.sqlite", tmp_path / "c.sqlite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.sqlite-wal", "c.sqlite"]
    with PreferenceStore(tmp_path / "c.sqlite") as c:
        assert c.queries() == [_pair(0)]


def test_a_read_only_store_file_is_refused_on_open_not_at_the_first_answer() -> None:
    """SQLite opens a read-only file without a word and fails at the first write, after a person typed an answer."""
    if not hasattr(os, "geteuid"):
        pytest.skip("needs POSIX permissions")
    base, folder, path = _one_query_store("llm_gym_ro_file_")
    try:
        path.chmod(0o444)
        if os.geteuid() != 0:
            with pytest.raises(StoreError) as info:
                PreferenceStore(path)
            error = str(info.value)
        else:  # root may write anyway: open it as the user nobody, whose folder it is and whose file it is not
            os.chown(folder, 65534, 65534)
            error = _error_opening_as_nobody(path)
        assert "the file is read-only; make it writable" in error, error
        path.chmod(0o644)
        with PreferenceStore(path) as store:  # nothing lost
            assert store.queries() == [_pair(0)]
    finally:
        shutil.rmtree(base)
