"""Prompts and demonstrations from everything users keep data in: every file type, in-memory table and layout.

The older file tests (JSONL/CSV/TXT errors through `gymnasium.make`) are in tests/envs/test_envs.py.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import datasets
import gymnasium
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from chat_fixtures import GEMMA_LIKE_TEMPLATE, USER_HI, llama_chat_tokenizer
from gymnasium.utils.env_checker import check_env

import llm_gym  # noqa: F401  (registers the environments)
from llm_gym.core.data import DatasetError, PromptDataset, load_demonstrations, load_prompts, read_records
from llm_gym.core.task import Demonstration

PROMPTS = ["the film was", 'a, "quoted" prompt', "café ✓ was"]


@pytest.fixture(scope="module")
def tok():
    return llama_chat_tokenizer()


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# ----------------------------------------------------------------------------- one test per format
def test_the_same_prompts_from_every_source_give_the_same_dataset(tmp_path: Path) -> None:
    rows = [{"prompt": p, "id": i} for i, p in enumerate(PROMPTS)]
    csv_file = tmp_path / "p.csv"
    pd.DataFrame(rows).to_csv(csv_file, index=False)
    (tmp_path / "p.txt").write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    (tmp_path / "list.json").write_text(json.dumps(rows), encoding="utf-8")
    (tmp_path / "strings.json").write_text(json.dumps(PROMPTS), encoding="utf-8")
    (tmp_path / "wrapped.json").write_text(json.dumps({"version": 2, "data": rows}), encoding="utf-8")
    (tmp_path / "columns.json").write_text(json.dumps({"prompt": PROMPTS, "id": [0, 1, 2]}), encoding="utf-8")
    sources = {
        "jsonl": write_jsonl(tmp_path / "p.jsonl", rows),
        "json list": tmp_path / "list.json",
        "json strings": tmp_path / "strings.json",
        "json {data: [...]}": tmp_path / "wrapped.json",
        "json columns": tmp_path / "columns.json",
        "csv": csv_file,
        "txt": tmp_path / "p.txt",
        "parquet": write_parquet(tmp_path / "p.parquet", rows),
        "parquet as str": str(tmp_path / "p.parquet"),
        "Dataset": datasets.Dataset.from_list(rows),
        "DataFrame": pd.DataFrame(rows),
        "Series": pd.Series(PROMPTS, name="prompt"),
        "numpy": np.array(PROMPTS),
        "list": list(PROMPTS),
        "tuple": tuple(PROMPTS),
        "list of dicts": rows,
        "dict of columns": {"prompt": PROMPTS, "id": [0, 1, 2]},
        "generator": (p for p in PROMPTS),
    }
    for name, source in sources.items():
        assert load_prompts(source).prompts == tuple(PROMPTS), name
    assert PromptDataset.from_file(tmp_path / "p.parquet").prompts == tuple(PROMPTS)
    assert load_prompts(tmp_path / "p.parquet").source == str(tmp_path / "p.parquet")


def test_prompt_field_picks_the_column_in_every_format(tmp_path: Path) -> None:
    rows = [{"text": p, "label": i % 2} for i, p in enumerate(PROMPTS)]
    pd.DataFrame(rows).to_csv(tmp_path / "p.csv", index=False)
    (tmp_path / "p.json").write_text(json.dumps(rows), encoding="utf-8")
    for source in (write_jsonl(tmp_path / "p.jsonl", rows), tmp_path / "p.json", tmp_path / "p.csv",
                   write_parquet(tmp_path / "p.parquet", rows), datasets.Dataset.from_list(rows), pd.DataFrame(rows), rows):
        assert load_prompts(source, prompt_field="text").prompts == tuple(PROMPTS), source
    assert PromptDataset.from_file(tmp_path / "p.jsonl", field="text").prompts == tuple(PROMPTS)


# ----------------------------------------------------------------------------- errors name the place and the columns
@pytest.mark.parametrize("kind", ["parquet", "jsonl", "csv", "json", "Dataset", "DataFrame", "list"])
def test_a_missing_prompt_column_names_the_columns_found_and_the_fix(tmp_path: Path, kind: str) -> None:
    rows = [{"text": p, "label": 1} for p in PROMPTS]
    where = {
        "parquet": (lambda: write_parquet(tmp_path / "data.parquet", rows), r"data\.parquet row 0: no 'prompt' column"),
        "jsonl": (lambda: write_jsonl(tmp_path / "data.jsonl", rows), r"data\.jsonl line 1: expected an object with a 'prompt' field"),
        "csv": (lambda: pd.DataFrame(rows).to_csv(tmp_path / "data.csv", index=False) or tmp_path / "data.csv",
                r"data\.csv line 1: no 'prompt' column"),
        "json": (lambda: (tmp_path / "data.json").write_text(json.dumps(rows)) and tmp_path / "data.json",
                 r"data\.json row 0: expected an object with a 'prompt' field"),
        "Dataset": (lambda: datasets.Dataset.from_list(rows), r"Dataset row 0: no 'prompt' column"),
        "DataFrame": (lambda: pd.DataFrame(rows), r"DataFrame row 0: no 'prompt' column"),
        "list": (lambda: rows, r"list row 0: expected an object with a 'prompt' field"),
    }
    make, match = where[kind]
    with pytest.raises(DatasetError, match=match + r".*found \['text', 'label'\]; pass prompt_field=\"text\""):
        load_prompts(make())


def test_row_errors_name_the_row(tmp_path: Path) -> None:
    rows = [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"}, {"prompt": None}]
    with pytest.raises(DatasetError, match=r"data\.parquet row 3: the prompt is empty or whitespace \(null or a blank cell\)"):
        load_prompts(write_parquet(tmp_path / "data.parquet", rows))
    with pytest.raises(DatasetError, match=r"DataFrame row 3: the prompt is empty or whitespace \(null"):  # pandas' NaN is a null
        load_prompts(pd.DataFrame({"prompt": ["a", "b", "c", np.nan]}))
    (tmp_path / "data.json").write_text(json.dumps([{"prompt": "a"}, {"prompt": "  "}]))
    with pytest.raises(DatasetError, match=r"data\.json row 1: the prompt is empty or whitespace"):
        load_prompts(tmp_path / "data.json")
    with pytest.raises(DatasetError, match=r"Dataset row 0: 'prompt' must be a string or a list of chat messages, got int"):
        load_prompts(datasets.Dataset.from_dict({"prompt": [3, 7]}))
    with pytest.raises(DatasetError, match=r"list row 1: 'prompt': holds the lone surrogate"):
        load_prompts([{"prompt": "a"}, {"prompt": "b\ud800"}])


def test_json_file_errors(tmp_path: Path) -> None:
    jsonl_named_json = tmp_path / "lines.json"
    jsonl_named_json.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    assert load_prompts(jsonl_named_json).prompts == ("a", "b")  # JSON Lines named .json (Dataset.to_json) is read
    neither = tmp_path / "neither.json"
    neither.write_text('{"prompt": "a"}\n{"prompt": "b",\n "x": 1}\n')
    with pytest.raises(DatasetError, match=r"neither\.json line 2: invalid JSON \(Extra data.*name it \.jsonl\) it fails "
                                           r"too: .*neither\.json line 2: invalid JSON"):
        load_prompts(neither)
    two_lists = tmp_path / "two.json"
    two_lists.write_text(json.dumps({"train": ["a"], "test": ["b", "c"]}))
    with pytest.raises(DatasetError, match=r"two\.json: expected a JSON list of records .* keys \['train', 'test'\]"):
        load_prompts(two_lists)


def test_parquet_needs_pyarrow_and_is_never_read_as_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_parquet(tmp_path / "data.parquet", [{"prompt": "a"}])
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # an import of a None module raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DatasetError, match=r"data\.parquet: reading Parquet needs pyarrow.*pip install pyarrow.*llm-gym\[data\]") as info:
        load_prompts(path)
    assert "UTF-8" not in str(info.value)
    monkeypatch.undo()
    misnamed = tmp_path / "data.jsonl"
    misnamed.write_bytes(path.read_bytes())
    with pytest.raises(DatasetError, match=r"not valid UTF-8 .*looks like a Parquet file: name it \.parquet"):
        load_prompts(misnamed)
    broken = tmp_path / "broken.parquet"
    broken.write_text("not parquet")
    with pytest.raises(DatasetError, match=r"broken\.parquet: not a readable Parquet file"):
        load_prompts(broken)


def test_sources_that_are_not_data() -> None:
    with pytest.raises(TypeError, match="dataset must be a path"):
        load_prompts(42)
    with pytest.raises(TypeError, match=r"DatasetDict with splits \['train'\]; pass one split"):
        load_prompts(datasets.DatasetDict({"train": datasets.Dataset.from_list([{"prompt": "a"}])}))
    with pytest.raises(DatasetError, match=r"one-dimensional.*shape \(1, 2\)"):
        load_prompts(np.array([["a", "b"]]))
    with pytest.raises(DatasetError, match="this is a chat message: give a list of conversations"):
        load_prompts(USER_HI)  # one conversation where a list of them was meant
    assert read_records(["a"]).rows == [("list row 0", "a")]


# ----------------------------------------------------------------------------- chat prompts
def test_chat_prompts_are_rendered_with_the_tokenizer(tmp_path: Path, tok) -> None:
    convo = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    rendered = "<s><|system|>\nbe brief</s>\n<|user|>\nhi</s>\n<|assistant|>\n"
    rows = [{"prompt": convo}, {"prompt": "plain text"}]
    expected = (rendered, "plain text")
    parquet = write_parquet(tmp_path / "chat.parquet", [{"prompt": convo}])
    for source in (write_jsonl(tmp_path / "chat.jsonl", rows), rows, [convo, "plain text"]):
        assert load_prompts(source, tokenizer=tok).prompts == expected
    for source in (parquet, datasets.Dataset.from_list([{"prompt": convo}]), pd.read_parquet(parquet)):
        assert load_prompts(source, tokenizer=tok).prompts == (rendered,), type(source)
    assert load_prompts([{"messages": convo}], prompt_field="messages", tokenizer=tok).prompts == (rendered,)


def test_chat_prompts_without_a_tokenizer_or_template(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "chat.jsonl", [{"prompt": "ok"}, {"prompt": USER_HI}])
    with pytest.raises(DatasetError, match=r"chat\.jsonl line 2: 'prompt' holds chat messages.*tokenizer=policy\.tokenizer"):
        load_prompts(path)
    with pytest.raises(DatasetError, match=r"chat\.jsonl line 2: 'prompt': the tokenizer .* has no chat template"):
        load_prompts(path, tokenizer=llama_chat_tokenizer(template=None))
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": [{"role": "user", "content": 3}]}])
    with pytest.raises(DatasetError, match=r"bad\.jsonl line 1: 'prompt': message 0: 'content' must be a string"):
        load_prompts(bad, tokenizer=llama_chat_tokenizer())
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"prompt": []}])
    with pytest.raises(DatasetError, match=r"empty\.jsonl line 1: 'prompt': the list of chat messages is empty"):
        load_prompts(empty, tokenizer=llama_chat_tokenizer())


# ----------------------------------------------------------------------------- demonstrations
DEMOS = [Demonstration("the film was", " great ."), Demonstration("the hotel was", " clean, quiet .")]


def test_demonstrations_from_every_source(tmp_path: Path) -> None:
    rows = [{"prompt": d.prompt, "completion": d.completion} for d in DEMOS]
    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    (tmp_path / "d.json").write_text(json.dumps(rows))
    for source in (write_jsonl(tmp_path / "d.jsonl", rows), tmp_path / "d.json", tmp_path / "d.csv",
                   write_parquet(tmp_path / "d.parquet", rows), datasets.Dataset.from_list(rows), pd.DataFrame(rows),
                   rows, DEMOS):
        assert load_demonstrations(source) == DEMOS, source
    renamed = [{"question": d.prompt, "answer": d.completion} for d in DEMOS]
    assert load_demonstrations(write_parquet(tmp_path / "r.parquet", renamed), prompt_field="question",
                               completion_field="answer") == DEMOS


def test_demonstration_errors_name_place_and_columns(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "d.parquet", [{"prompt": "a", "response": " b"}])
    with pytest.raises(DatasetError, match=r"d\.parquet row 0: no 'completion' column; found \['prompt', 'response'\]; "
                                           r"pass completion_field=\"response\""):
        load_demonstrations(path)
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "completion": " b"}, {"prompt": "a", "output": " b"}])
    with pytest.raises(DatasetError, match=r"d\.jsonl line 2: expected an object with a 'completion' field, found "
                                           r"\['prompt', 'output'\]; pass completion_field=\"output\""):
        load_demonstrations(path)
    (tmp_path / "d.txt").write_text("a\n")
    with pytest.raises(DatasetError, match=r"a \.txt file holds prompts only"):
        load_demonstrations(tmp_path / "d.txt")
    with pytest.raises(DatasetError, match=r"list holds no demonstrations"):
        load_demonstrations([])
    with pytest.raises(DatasetError, match=r"list row 0: 'completion' must be a list of assistant messages like its prompt"):
        load_demonstrations([{"prompt": USER_HI, "completion": " b"}], tokenizer=llama_chat_tokenizer())


def test_chat_demonstrations_in_both_trl_layouts(tmp_path: Path, tok) -> None:
    answer = [{"role": "assistant", "content": "hello"}]
    prompt_completion = [{"prompt": USER_HI, "completion": answer}]
    conversation = [{"messages": USER_HI + answer}]
    expected = [Demonstration("<s><|user|>\nhi</s>\n<|assistant|>\n", "hello</s>")]
    for source in (prompt_completion, conversation, [USER_HI + answer], write_jsonl(tmp_path / "c.jsonl", conversation),
                   write_parquet(tmp_path / "c.parquet", prompt_completion), datasets.Dataset.from_list(conversation)):
        assert load_demonstrations(source, tokenizer=tok) == expected, source
    # the whole conversation, less the template's newline after the EOS
    assert tok.apply_chat_template(USER_HI + answer, tokenize=False) == expected[0].prompt + expected[0].completion + "\n"
    with pytest.raises(DatasetError, match=r"c\.jsonl line 1: 'messages' holds chat messages.*tokenizer=policy\.tokenizer"):
        load_demonstrations(tmp_path / "c.jsonl")
    with pytest.raises(DatasetError, match=r"list row 0: 'messages': a demonstration conversation ends with the assistant's "
                                           r"answer .* roles are \['user'\]"):
        load_demonstrations([{"messages": USER_HI}], tokenizer=tok)


# ----------------------------------------------------------------------------- the environment reads the same sources
def test_prompt_bandit_takes_prompt_field_and_tokenizer(tmp_path: Path, tok) -> None:
    def reward(prompts, completions):
        return [float(len(c)) for c in completions]

    other = [{"role": "user", "content": "bye"}]
    path = write_parquet(tmp_path / "chat.parquet", [{"conversation": USER_HI}, {"conversation": other}])
    env = gymnasium.make("llm_gym/PromptBandit-v0", dataset=path, reward_fn=reward, prompt_field="conversation",
                         tokenizer=tok)
    assert env.unwrapped.dataset.prompts == ("<s><|user|>\nhi</s>\n<|assistant|>\n", "<s><|user|>\nbye</s>\n<|assistant|>\n")
    assert env.reset(options={"index": 0})[0].endswith("<|assistant|>\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped, skip_render_check=False)
    vec = gymnasium.make_vec("llm_gym/PromptBandit-v0", num_envs=2, dataset=pd.DataFrame({"q": PROMPTS}),
                             reward_fn=reward, prompt_field="q")
    assert set(vec.reset(seed=0)[0]) <= set(PROMPTS)
    with pytest.raises(DatasetError, match=r"chat\.parquet row 0: 'conversation' holds chat messages"):
        gymnasium.make("llm_gym/PromptBandit-v0", dataset=path, reward_fn=reward, prompt_field="conversation")


# ----------------------------------------------------------------------------- blank cells, writers, memory
def test_blank_cells_and_mixed_layouts_count_as_absent(tok) -> None:
    conversation = [*USER_HI, {"role": "assistant", "content": "hello"}]
    frame = pd.DataFrame([{"prompt": "p", "completion": " c"}, {"messages": conversation}])  # NaN where a row has none
    chat = Demonstration("<s><|user|>\nhi</s>\n<|assistant|>\n", "hello</s>")
    assert load_demonstrations(frame, tokenizer=tok) == [Demonstration("p", " c"), chat]
    for blank in (None, float("nan"), pd.NA):
        with pytest.raises(DatasetError, match=r"DataFrame row 1: 'completion' is empty \(null or a blank cell\)"):
            completions = pd.Series([" c", blank], dtype=object)
            load_demonstrations(pd.DataFrame({"prompt": ["p", "q"], "completion": completions}))
    with pytest.raises(DatasetError, match=r"Series row 1: the prompt is empty or whitespace \(null"):
        load_prompts(pd.Series(["a", pd.NA], dtype="string"))


def test_numeric_column_names_are_strings(tmp_path: Path) -> None:
    (tmp_path / "no_header.csv").write_text("the film was, great\nthe hotel was, bad\n")
    frame = pd.read_csv(tmp_path / "no_header.csv", header=None)  # columns 0 and 1
    assert load_prompts(frame, prompt_field="0").prompts == ("the film was", "the hotel was")
    demos = load_demonstrations(frame, prompt_field="0", completion_field="1")
    assert demos[1] == Demonstration("the hotel was", " bad")


def test_json_files_written_by_datasets_and_pandas(tmp_path: Path) -> None:
    datasets.Dataset.from_list([{"prompt": "a"}, {"prompt": "b"}]).to_json(tmp_path / "hf.json")  # JSON Lines
    pd.DataFrame({"prompt": ["a", "b"], "id": [3, 4]}).to_json(tmp_path / "pd.json")  # {"prompt": {"0": "a", ...}}
    for name in ("hf.json", "pd.json"):
        assert load_prompts(tmp_path / name).prompts == ("a", "b"), name
    (tmp_path / "index.json").write_text(json.dumps({"version": 2, "name": "x"}))
    with pytest.raises(DatasetError, match=r"orient=\"records\""):
        load_prompts(tmp_path / "index.json")


def test_empty_files_and_utf16_say_what_they_are(tmp_path: Path) -> None:
    for name in ("e.json", "e.csv"):
        (tmp_path / name).write_text("\n")
        with pytest.raises(DatasetError, match=rf"{name.replace('.', '[.]')} is empty"):
            load_prompts(tmp_path / name)
    for name in ("u.jsonl", "u.csv"):
        (tmp_path / name).write_text('{"prompt": "café"}\n' if name.endswith("jsonl") else "prompt\ncafé\n",
                                     encoding="utf-16")
        with pytest.raises(DatasetError, match=r"line 1: not valid UTF-8 .*UTF-16.*iconv -f utf-16 -t utf-8") as info:
            load_prompts(tmp_path / name)
        assert "latin1" not in str(info.value)


def test_empty_demonstration_texts_are_refused(tmp_path: Path) -> None:
    bad = [({"prompt": "", "completion": " c"}, r"line 2: 'prompt' is empty or whitespace"),
           ({"prompt": "p", "completion": ""}, r"line 2: 'completion' is empty \(\"\"\)")]
    for record, match in bad:
        with pytest.raises(DatasetError, match=match):
            load_demonstrations(write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "completion": " c"}, record]))
    (tmp_path / "d.csv").write_text("prompt,completion\np, c\nq,\n")
    with pytest.raises(DatasetError, match=r"d\.csv line 3: 'completion' is empty \(null or a blank cell\)"):
        load_demonstrations(tmp_path / "d.csv")


def test_template_errors_name_the_file_and_line(tmp_path: Path) -> None:
    tok = llama_chat_tokenizer(GEMMA_LIKE_TEMPLATE)
    system = [{"role": "system", "content": "be brief"}, *USER_HI]
    path = write_jsonl(tmp_path / "s.jsonl", [{"prompt": USER_HI}, {"prompt": system}])
    with pytest.raises(DatasetError, match=r"s\.jsonl line 2: 'prompt': the chat template refused .*System role not "
                                           r"supported"):
        load_prompts(path, tokenizer=tok)
    with pytest.raises(DatasetError, match=r"list row 0: 'messages': the chat template refused .*System role"):
        load_demonstrations([{"messages": [*system, {"role": "assistant", "content": "hello"}]}], tokenizer=tok)


def test_large_sources_are_read_in_the_needed_columns_and_jsonl_line_by_line(tmp_path: Path) -> None:
    rows = [{"prompt": f"p{i}", "meta": "m" * 100, "completion": " c"} for i in range(3)]
    parquet = write_parquet(tmp_path / "big.parquet", rows)
    for source in (parquet, datasets.Dataset.from_list(rows), pd.DataFrame(rows)):
        records = read_records(source, fields=["prompt", "messages"])
        assert records.columns == ["prompt", "meta", "completion"]  # errors still list every column
        assert [value for _, value in records.rows] == [{"prompt": f"p{i}"} for i in range(3)], source
    jsonl = read_records(write_jsonl(tmp_path / "big.jsonl", rows)).rows
    assert not isinstance(jsonl, list) and next(iter(jsonl)) == (f"{tmp_path / 'big.jsonl'} line 1", rows[0])
