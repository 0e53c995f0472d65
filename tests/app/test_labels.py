"""A person's labels in a run folder: never overwritten, never asked twice, and `llm-gym label`'s errors."""

from __future__ import annotations

import io
import sqlite3
import sys
from pathlib import Path

import pytest

from doubles import tiny_experiment_dict
from llm_gym.app.cli import main
from llm_gym.app.config import ExperimentConfig
from llm_gym.app.pipeline import Pipeline
from llm_gym.app.stages import store_for
from llm_gym.core.preferences import Answer, Query
from llm_gym.feedback.store import PreferenceStore
from llm_gym.infra.configio import apply_overrides, from_dict


class CountingKeyboard:
    """A person at the terminal who always types `reply`; `asked` counts the questions shown."""

    def __init__(self) -> None:
        self.reply, self.asked = "1", 0

    def __call__(self, prompt: str) -> str:
        self.asked += 1
        return self.reply


def _labelled_by_hand(model_cache: Path, queries: int) -> ExperimentConfig:
    data = tiny_experiment_dict(model_cache)
    data["ppo"], data["preference_loop"] = {}, {}
    return from_dict(ExperimentConfig, apply_overrides(data, [
        "stages=['pretrain','sft','reward_model']", "oracle.kind=terminal", f"reward_model.queries={queries}"]))


def _stores(folder: Path) -> dict[str, list[tuple[int, ...]]]:
    """Every store file in `folder`: its name and the ranks of its answers."""
    out = {}
    for path in sorted(folder.glob("labels*.sqlite")):
        with PreferenceStore(path) as store:
            out[path.name] = [a.ranks for a in store.answers()]
    return out


def test_labels_survive_settings_that_go_back_and_forth(tmp_path, model_cache, tiny_model) -> None:
    """Issue 15 item 1: queries 16, 20, 16, 20 into one run folder, a person answering at the terminal.

    Before: the third run asked its 16 queries again (their answers sat in a store moved aside), and the
    fourth moved the store aside onto that file with os.replace, so the first run's answers were in no file.
    """
    out = tmp_path / "run"
    keyboard = CountingKeyboard()
    asked = []
    for queries, reply in [(16, "1"), (20, "2"), (16, "2"), (20, "1")]:  # the last two runs must ask nothing
        keyboard.reply, keyboard.asked = reply, 0
        Pipeline(_labelled_by_hand(model_cache, queries), out, input_fn=keyboard).run()
        asked.append(keyboard.asked)
    assert asked == [16, 20, 0, 0], "a rerun whose inputs match a store moved aside reuses its answers"
    stores = _stores(out)
    assert len(stores) == 2, stores  # the two label settings, each in one file: no copies pile up
    assert stores["labels.sqlite"] == [(1, 0)] * 20
    (aside,) = set(stores) - {"labels.sqlite"}
    assert stores[aside] == [(0, 1)] * 16, "the first run's answers are kept"


def _store_with(path: Path, labeller: str, n: int = 2) -> list[Query]:
    queries = [Query(f"prompt {i}", (" good", " bad")) for i in range(n)]
    with PreferenceStore(path) as store:
        store.add_queries(queries)
        store.add_answers(Answer(q.query_id, (0, 1), labeller, 1.0) for q in queries)
    return queries


def test_a_store_moved_aside_never_replaces_another(tmp_path) -> None:
    path = tmp_path / "labels.sqlite"
    store_for(path, "aaaa")
    _store_with(path, "first")
    (tmp_path / "labels.aaaa.sqlite").write_bytes(b"")  # a name already taken (here by an empty file)
    store_for(path, "bbbb")  # the store of aaaa goes aside under the next free name
    assert (tmp_path / "labels.aaaa.sqlite").read_bytes() == b""
    with PreferenceStore(tmp_path / "labels.aaaa.2.sqlite") as kept:
        assert {a.labeller for a in kept.answers()} == {"first"}
    assert not path.exists()


def test_every_store_aside_under_the_same_inputs_is_reused(tmp_path) -> None:
    """Two stores aside under one fingerprint (a lost marker file, a copy put back by hand): the first comes
    back, the other's answers are copied into it, and the other file stays."""
    path = tmp_path / "labels.sqlite"
    first = _store_with(tmp_path / "labels.aaaa.sqlite", "alice")
    second = _store_with(tmp_path / "labels.aaaa.2.sqlite", "bob", n=3)
    assert store_for(path, "aaaa") == path
    with PreferenceStore(path) as store:
        assert sorted((a.query_id, a.labeller) for a in store.answers()) == sorted(
            [(q.query_id, "alice") for q in first] + [(q.query_id, "bob") for q in second])
    assert not (tmp_path / "labels.aaaa.sqlite").exists(), "moved back, not copied"
    with PreferenceStore(tmp_path / "labels.aaaa.2.sqlite") as other:
        assert len(other.answers()) == 3
    store_for(path, "aaaa")  # the same inputs again: nothing moves
    assert sorted(p.name for p in tmp_path.glob("labels*.sqlite")) == ["labels.aaaa.2.sqlite", "labels.sqlite"]


@pytest.mark.parametrize("sqlite_can_open_it", [True, False])
def test_a_store_moved_aside_takes_its_unsaved_journal_along(tmp_path, monkeypatch, sqlite_can_open_it) -> None:
    """A store whose last answers are only in its write-ahead log (its process was killed) keeps them through
    the move: folded into the file first, or, where SQLite cannot open it then, moved with it."""
    live, crashed = tmp_path / "live.sqlite", tmp_path / "run" / "labels.sqlite"
    crashed.parent.mkdir()
    query = Query("p", (" a", " b"))
    with PreferenceStore(live) as store:
        store.add_queries([query])
        store.add_answer(Answer(query.query_id, (1, 0), "carol", 1.0))
        for suffix in ("", "-wal"):  # the files as a kill leaves them: the answer is in the log only
            Path(f"{crashed}{suffix}").write_bytes(Path(f"{live}{suffix}").read_bytes())
    assert Path(f"{crashed}-wal").stat().st_size > 0
    crashed.with_suffix(".fingerprint").write_text("aaaa")
    if not sqlite_can_open_it:
        monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: (_ for _ in ()).throw(sqlite3.OperationalError("busy")))
    store_for(crashed, "bbbb")
    monkeypatch.undo()
    assert not crashed.exists() and not Path(f"{crashed}-wal").exists()
    assert Path(f"{crashed.parent / 'labels.aaaa.sqlite'}-wal").exists() == (not sqlite_can_open_it)
    with PreferenceStore(crashed.parent / "labels.aaaa.sqlite") as kept:
        assert [a.labeller for a in kept.answers()] == ["carol"]


# --------------------------------------------------------------------------------------
# llm-gym label: errors are one line and exit code 2
# --------------------------------------------------------------------------------------


def test_label_refuses_a_foreign_sqlite_file_with_an_error_line(tmp_path, capsys) -> None:
    other = tmp_path / "notes.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE notes (text TEXT)")
    conn.commit()
    conn.close()
    before = other.read_bytes()
    assert main(["label", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not an llm_gym preference store" in err and "Traceback" not in err
    assert other.read_bytes() == before


def test_label_with_stdin_closed_says_so(tmp_path, capsys, monkeypatch) -> None:
    path = tmp_path / "labels.sqlite"
    _store_with(path, "alice")
    with PreferenceStore(path) as store:
        store.add_queries([Query("unanswered", (" a", " b"))])
    monkeypatch.setattr(sys, "stdin", None)  # what `llm-gym label ... <&-` gives Python
    assert main(["label", str(path)]) == 2
    assert "error: standard input is closed" in capsys.readouterr().err
    with PreferenceStore(path) as store:
        assert store.counts() == {"queries": 3, "answers": 2, "pending": 1}


def test_label_answering_only_ties_stores_them_and_says_they_teach_nothing(tmp_path, capsys, monkeypatch) -> None:
    path = tmp_path / "labels.sqlite"
    with PreferenceStore(path) as store:
        store.add_queries([Query(f"p{i}", (" a", " b")) for i in range(2)])
    monkeypatch.setattr(sys, "stdin", io.StringIO("t\nt\n"))
    assert main(["label", str(path)]) == 0
    text = capsys.readouterr().out
    assert "saved 2 answers; 0 queries still pending" in text and "Every answer was a tie" in text


def test_label_refuses_a_damaged_store_naming_it(tmp_path, capsys) -> None:
    path = tmp_path / "labels.sqlite"
    with PreferenceStore(path) as store:
        store.add_queries([Query(f"prompt {i} " + "x" * 300, (" a", " b")) for i in range(100)])
    data = bytearray(path.read_bytes())
    data[4 * 4096: 5 * 4096] = bytes(range(256)) * 16  # one page in the middle, overwritten
    path.write_bytes(bytes(data))
    assert main(["label", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path} ") and "damaged" in err
    assert path.read_bytes() == bytes(data), "left unchanged"


@pytest.mark.parametrize(("reply", "match"), [("s", "answered none of the 4 queries"), ("t", "all 4 answers are ties")])
def test_a_reward_model_with_nothing_to_learn_says_what_to_do_and_keeps_the_answers(
        tmp_path, model_cache, tiny_model, reply, match) -> None:
    from llm_gym.feedback.oracles import NoAnswersError

    keyboard = CountingKeyboard()
    keyboard.reply = reply
    with pytest.raises(NoAnswersError, match=f"{match}.*llm-gym label"):
        Pipeline(_labelled_by_hand(model_cache, 4), tmp_path / "run", input_fn=keyboard).run()
    with PreferenceStore(tmp_path / "run" / "labels.sqlite") as store:
        assert store.counts()["answers"] == (4 if reply == "t" else 0)  # every tie given is kept


def test_ctrl_c_while_labelling_keeps_the_answers_and_the_rerun_asks_only_the_rest(tmp_path, model_cache, tiny_model) -> None:
    class Interrupting(CountingKeyboard):
        def __call__(self, prompt: str) -> str:
            if self.asked == 2:
                raise KeyboardInterrupt
            return super().__call__(prompt)

    keyboard = Interrupting()
    with pytest.raises(KeyboardInterrupt):
        Pipeline(_labelled_by_hand(model_cache, 6), tmp_path / "run", input_fn=keyboard).run()
    state = tmp_path / "run" / "state.json"
    assert not state.exists() or "reward_model" not in state.read_text()  # the stage is not done
    again = CountingKeyboard()
    summary = Pipeline(_labelled_by_hand(model_cache, 6), tmp_path / "run", input_fn=again).run()
    assert again.asked == summary["rows"]["reward_model"]["labels"] - 2  # the two answers given were kept
