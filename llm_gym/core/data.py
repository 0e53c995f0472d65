"""Prompt datasets (the prompts a `PromptBanditEnv` hands out) and SFT demonstrations, from whatever users keep data in.

A *source* is a path or data in memory:

* ``.jsonl``: one JSON value per line (blank lines skipped), read line by line; errors name
  ``file line N`` (1-based).
* ``.json``: a top-level list, an object holding one list (``{"data": [...]}``), an object of
  equal-length column lists, pandas' ``df.to_json()`` (``{"prompt": {"0": ...}}``), or JSON
  Lines (what ``datasets.Dataset.to_json`` writes); ``file row i`` (0-based), ``file line N``
  for JSON Lines.
* ``.csv``: one row per record, the header names the columns; ``file line N`` (1-based).
* ``.parquet``: one row per record (needs pyarrow: ``pip install llm-gym[data]``); ``file row i``.
* ``.txt``: one prompt per non-blank line (prompts only); ``file line N``.
* a ``datasets.Dataset``, a pandas DataFrame: one row per record; ``Dataset row i``, ``DataFrame row i``.
* a pandas Series, a numpy array, a list or tuple, a dict of column lists: one item per record;
  ``list row i``...

Blank cells. A table with blank cells or mixed layouts gives every row every column, so a field
a record lacks arrives as None, NaN or ``pd.NA`` (and as "" in a CSV, read as None): `is_absent`
treats all of them as a field that is not there. Column names and record keys are strings
(``pd.read_csv(header=None)``'s columns 0, 1... are ``prompt_field="0"``...).

Memory. JSONL, Parquet and ``datasets.Dataset`` rows are read one at a time (Parquet and a
Dataset only in the columns the loader reads), so a large source is not held twice.

A record is a string (a prompt), a mapping (a row: the prompt under `prompt_field`, a
demonstration's answer under `completion_field`) or a list of chat messages. Chat messages
(TRL's conversational layout, a list of ``{"role", "content"}`` dicts, see `llm_gym.core.chat`)
become text through the policy's chat template, so a `tokenizer=` is needed for them:

* a prompt: ``{"prompt": [messages]}`` or the messages alone, rendered with the generation prompt;
* a demonstration: ``{"prompt": [messages], "completion": [assistant messages]}`` (TRL's
  conversational prompt-completion layout), or one conversation ``{"messages": [...]}`` whose
  last turn, the assistant's, is the completion. The completion is the text the answer adds
  after the rendered prompt (`llm_gym.core.chat.render_completion`).

Every loader reports bad input with the file and line or row at fault, and the columns it
found, and says how to fix it: a missing or empty file, a line that is not UTF-8, malformed JSON, a
missing field (``no 'prompt' column; found ['text', 'label']; pass prompt_field="text"``), an
empty prompt or completion, text no tokenizer can encode (a lone UTF-16 surrogate such as JSON's
``"\\ud800"``), chat messages without a tokenizer, an empty dataset or one that a filter
emptied. Nothing is dropped silently: `filter` records how many prompts it removed, and an
all-removing filter is an error.

>>> load_prompts([{"text": "the film was"}, {"text": "the hotel was"}], prompt_field="text").prompts
('the film was', 'the hotel was')
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, NamedTuple

from llm_gym.core.chat import (ChatError, ChatTokenizer, check_messages, looks_like_messages, render_completion,
                               render_prompt)
from llm_gym.core.task import Demonstration

__all__ = ["PromptDataset", "DatasetError", "Records", "check_text", "completion_text", "field", "is_absent",
           "load_demonstrations", "load_prompts", "prompt_text", "read_records", "suggest_field"]

FILE_TYPES = (".jsonl", ".json", ".csv", ".parquet", ".txt")
"""The file suffixes a path source may have."""


class DatasetError(ValueError):
    """A prompt dataset could not be built; the message names the file/line and the fix."""


def is_absent(value: Any) -> bool:
    """True for a field that holds nothing: None, a float NaN or pandas' NA/NaT (a blank table cell).

    A DataFrame, Dataset or Parquet file with blank cells or mixed layouts gives every row every
    column, so a field that a record lacks arrives as one of these (a CSV's blank cell, "", is read
    as None); loaders treat it as a field that is not there.

    >>> [is_absent(x) for x in (None, float("nan"), "", "a", 0)]
    [True, True, False, False, False]
    """
    if value is None:
        return True
    if isinstance(value, float):  # numpy's float64 NaN too
        return math.isnan(value)
    return type(value).__name__ in ("NAType", "NaTType")  # pandas' missing scalars, without importing pandas


def field(record: Mapping[str, Any], name: str) -> Any:
    """``record[name]``, or None when the record lacks it or it is blank (`is_absent`)."""
    value = record.get(name)
    return None if is_absent(value) else value


def check_text(text: str, where: str) -> None:
    """Refuse text that is not valid Unicode: a lone UTF-16 surrogate (U+D800..U+DFFF).

    JSON can spell one (``"\\ud800"``, half of an escaped pair whose other half was lost, often
    by a cut at a fixed length), Python strings hold it, and everything passes until a tokenizer
    fails on it, after hours of earlier stages. UTF-8 files cannot hold one, so only escapes and
    in-memory text need the check.

    Raises:
        DatasetError: naming `where` and the character's position.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DatasetError(
            f"{where}: holds the lone surrogate {text[exc.start]!r} at character {exc.start + 1}, which is not a "
            "character (half of a UTF-16 pair; in JSON an escape like \\ud800 without its partner); fix or "
            "remove that text"
        ) from exc


@dataclass(frozen=True)
class PromptDataset(Sequence[str]):
    """An immutable, non-empty list of prompts with where they came from.

    Attributes:
        prompts: the prompt texts (each a non-empty string).
        source: a human-readable origin ("list", a file path) used in error messages.
        num_filtered: how many prompts `filter` removed on the way here.
    """

    prompts: tuple[str, ...]
    source: str = "list"
    num_filtered: int = 0

    def __post_init__(self) -> None:
        if len(self.prompts) == 0:
            if self.num_filtered:
                raise DatasetError(
                    f"dataset from {self.source} is empty after filtering: all {self.num_filtered} prompts were "
                    "removed; loosen the filter (for example raise the length limit)"
                )
            raise DatasetError(f"dataset from {self.source} is empty; give at least one prompt")
        for i, p in enumerate(self.prompts):
            if not isinstance(p, str):
                raise DatasetError(f"{self.source}: prompt {i} is {type(p).__name__}, not str")
            if not p.strip():
                raise DatasetError(f"{self.source}: prompt {i} is empty or whitespace; remove it or fill it in")
            check_text(p, f"{self.source}: prompt {i}")

    @classmethod
    def from_list(cls, prompts: Iterable[str], source: str = "list") -> PromptDataset:
        """Build a dataset from strings in memory."""
        return cls(tuple(prompts), source=source)

    @classmethod
    def from_file(cls, path: str | PathLike[str], field: str = "prompt", *,
                  tokenizer: ChatTokenizer | None = None) -> PromptDataset:
        """Load prompts from a ``.jsonl``, ``.json``, ``.csv``, ``.parquet`` or ``.txt`` file.

        Records are read as the module docstring says: the prompt is under `field` (a string,
        or chat messages rendered with `tokenizer`'s chat template); a ``.txt`` file holds one
        prompt per line.
        """
        return _prompts_from_records(read_records(path, "prompt", [field]), field, tokenizer)

    def filter(self, keep: Callable[[str], bool], reason: str = "filter") -> PromptDataset:
        """Keep the prompts for which `keep(prompt)` is true; the count removed is recorded."""
        kept = tuple(x for x in self.prompts if keep(x))
        removed = len(self.prompts) - len(kept)
        return PromptDataset(kept, source=f"{self.source} ({reason})", num_filtered=self.num_filtered + removed)

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i):  # type: ignore[override]
        return self.prompts[i]

    def __iter__(self) -> Iterator[str]:
        return iter(self.prompts)


def load_prompts(source: Any, *, prompt_field: str = "prompt", tokenizer: ChatTokenizer | None = None) -> PromptDataset:
    """Prompts from what users naturally pass: a `PromptDataset`, a path, or data in memory.

    Args:
        source: a `PromptDataset` (returned as it is), a path (``.jsonl``, ``.json``, ``.csv``,
            ``.parquet``, ``.txt``), a list of strings, of records or of conversations, a
            ``datasets.Dataset``, a pandas DataFrame or Series, a numpy array of strings (see the
            module docstring).
        prompt_field: the field or column holding the prompt in records.
        tokenizer: the policy's tokenizer, needed when prompts are chat messages (its chat
            template renders them).

    Raises:
        DatasetError: naming the file and line or row, for anything that is not a usable prompt.
        TypeError: `source` is none of the above.
    """
    if isinstance(source, PromptDataset):
        return source
    if isinstance(source, (list, tuple)) and all(isinstance(x, str) for x in source):
        return PromptDataset.from_list(source)
    return _prompts_from_records(read_records(source, "prompt", [prompt_field]), prompt_field, tokenizer)


def load_demonstrations(
    source: Any,
    *,
    prompt_field: str = "prompt",
    completion_field: str = "completion",
    messages_field: str = "messages",
    tokenizer: ChatTokenizer | None = None,
) -> list[Demonstration]:
    """Demonstrations for SFT: (prompt, completion) pairs from a path or data in memory.

    Each record is one of:

    * ``{"prompt": str, "completion": str}`` (the completion carries its own leading space);
    * ``{"prompt": [messages], "completion": [assistant messages]}``: TRL's conversational
      layout, rendered with `tokenizer`'s chat template;
    * ``{"messages": [...]}`` or the message list alone: one conversation whose last turn, the
      assistant's, is the completion and whose earlier turns are the prompt.

    A list of `Demonstration` objects is returned as a list. Sources are those of `load_prompts`
    except ``.txt``.

    Raises:
        DatasetError: naming the file and line or row, for a missing file, text that is not
            UTF-8, invalid JSON, a missing or mistyped field (with the fields found), chat
            messages without a tokenizer, or no demonstrations at all.
    """
    if isinstance(source, (list, tuple)) and source and all(isinstance(d, Demonstration) for d in source):
        return list(source)
    if isinstance(source, (str, PathLike)) and Path(source).suffix.lower() == ".txt":
        raise DatasetError(f"{source}: a .txt file holds prompts only; demonstrations need a prompt and a completion "
                           "each: use .jsonl lines like {\"prompt\": ..., \"completion\": ...}")
    records = read_records(source, "demonstration", [prompt_field, completion_field, messages_field])
    if records.columns is not None and messages_field not in records.columns:
        for name, kwarg in ((prompt_field, "prompt_field"), (completion_field, "completion_field")):
            if name not in records.columns:
                raise _missing(records.header, name, records.columns, "column", kwarg)
    demos = [_demonstration(value, where, records, prompt_field, completion_field, messages_field, tokenizer)
             for where, value in records.rows]
    if not demos:
        raise DatasetError(f"{records.source} holds no demonstrations; add records like "
                           "{\"prompt\": \"the film was\", \"completion\": \" great .\"}")
    return demos


# --------------------------------------------------------------------------------------
# Records: every source as (where, value) rows
# --------------------------------------------------------------------------------------


class Records(NamedTuple):
    """A source read into rows, each with the place an error about it should name."""

    source: str
    """What the rows came from: the path as given, or "list", "Dataset", "DataFrame"..."""
    rows: Iterable[tuple[str, Any]]
    """``(where, value)``: ``where`` is like ``"data.jsonl line 3"`` or ``"data.parquet row 2"``; ``value`` is a
    string, a dict (a row, with string keys) or a list (chat messages), with numpy arrays made plain lists. A list,
    or for JSONL, Parquet and a Dataset an iterator that reads the rows as it goes: iterate it once."""
    columns: list[str] | None
    """The columns of the table (CSV, Parquet, a Dataset or DataFrame), all of them even where only some were read;
    None where each record has its own keys."""
    header: str
    """Where to point for a column missing from all rows (a CSV header is line 1)."""
    noun: str
    """``"column"`` for tables, ``"field"`` for JSON objects: the word errors use."""

    def found(self, row: Mapping[str, Any]) -> list[str]:
        """The fields an error about `row` should list: its non-blank ones and the table's columns left unread."""
        present = [k for k, v in row.items() if not is_absent(v)]
        return present + [c for c in self.columns or () if c not in row]


def read_records(source: Any, what: str = "record", fields: Iterable[str] | None = None) -> Records:
    """Read `source` (a path or data in memory, see the module docstring) into rows; `what` names it in errors.

    `fields`, when given, are the field names the caller reads: a Parquet file, a Dataset or a
    DataFrame is read in those of its columns only (all of them when it has none of them, so
    that the error can list them).

    Raises:
        DatasetError: a missing, empty or unreadable file, an unknown suffix, bad UTF-8, invalid
            JSON, Parquet without pyarrow.
        TypeError: `source` is not a path or a kind of data llm_gym reads.
    """
    wanted = None if fields is None else set(fields)
    if isinstance(source, (str, PathLike)):
        return _file_records(Path(source), what, wanted)
    return _memory_records(source, what, wanted)


def _wanted_columns(columns: Sequence[Any], wanted: set[str] | None) -> list[Any] | None:
    """The `columns` to read (in table order), or None for all of them."""
    keep = [c for c in columns if str(c) in wanted] if wanted is not None else []
    return keep if keep and len(keep) < len(columns) else None


def _file_records(p: Path, what: str, wanted: set[str] | None) -> Records:
    if not p.exists():
        raise DatasetError(f"{what} file {p} does not exist; check the path (cwd is {Path.cwd()})")
    if not p.is_file():
        raise DatasetError(f"{what} file {p} is not a regular file")
    suffix = p.suffix.lower()
    if suffix not in FILE_TYPES:
        raise DatasetError(f"{p}: unknown {what} file type {suffix!r}; use {', '.join(FILE_TYPES)}")
    if suffix == ".parquet":
        return _parquet_records(p, wanted)
    if suffix == ".jsonl":
        with p.open("rb") as f:
            if f.read(4) == b"PAR1":  # checked first: the lines are read lazily, so no decode error would say it
                raise DatasetError(f"{p}: not valid UTF-8 JSON Lines (it starts with b'PAR1'); it looks like a "
                                   "Parquet file: name it .parquet")
        return Records(str(p), _jsonl_rows(p, _iter_lines(p, what)), None, f"{p}", "field")
    lines = _read_lines(p, what)
    if suffix in (".json", ".csv") and not "".join(lines).strip():
        needs = "a JSON list of records" if suffix == ".json" else "a header line and one row per record"
        raise DatasetError(f"{what} file {p} is empty; it needs {needs}")
    if suffix == ".json":
        return _json_file_records(p, lines)
    if suffix == ".csv":
        return _csv_records(p, lines)
    rows = [(f"{p} line {n}", line.rstrip("\r\n")) for n, line in enumerate(lines, start=1) if line.strip()]
    return Records(str(p), rows, None, f"{p}", "field")


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from exc


def _jsonl_rows(p: Path, lines: Iterable[tuple[int, str]]) -> Iterator[tuple[str, Any]]:
    """JSON Lines parsed one line at a time, so the raw text and the parsed records are never both held."""
    for lineno, line in lines:
        if line.strip():
            yield f"{p} line {lineno}", _json(line, f"{p} line {lineno}")


def _json_file_records(p: Path, lines: list[str]) -> Records:
    try:
        obj = json.loads("".join(lines))
    except json.JSONDecodeError as exc:
        if exc.msg != "Extra data":
            raise DatasetError(f"{p} line {exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
        # one JSON value per line, as datasets' Dataset.to_json and pandas' to_json(lines=True) write .json files
        try:
            rows = list(_jsonl_rows(p, enumerate(lines, start=1)))
        except DatasetError as as_lines:
            raise DatasetError(
                f"{p} line {exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno}), and read as JSON Lines (one "
                f"object per line; if it is, name it .jsonl) it fails too: {as_lines}"
            ) from exc
        return Records(str(p), rows, None, f"{p}", "field")
    if isinstance(obj, list):
        return Records(str(p), [(f"{p} row {i}", v) for i, v in enumerate(obj)], None, f"{p}", "field")
    if isinstance(obj, dict):
        lists = [k for k, v in obj.items() if isinstance(v, list)]
        if len(lists) == 1:  # {"data": [...]}: the one list is the records
            key = lists[0]
            rows = [(f"{p} row {i} of {key!r}", v) for i, v in enumerate(obj[key])]
            return Records(str(p), rows, None, f"{p}", "field")
        if lists and len(lists) == len(obj) and len({len(obj[k]) for k in lists}) == 1:
            return _column_records(obj, str(p), f"{p} row")
        index = _pandas_index(obj)
        if index is not None:  # pandas' df.to_json() default, orient="columns": {"prompt": {"0": "a", "1": "b"}}
            return _column_records({k: [v[i] for i in index] for k, v in obj.items()}, str(p), f"{p} row")
    found = f"an object with keys {list(obj)}" if isinstance(obj, dict) else type(obj).__name__
    raise DatasetError(f"{p}: expected a JSON list of records (or an object holding one list, like "
                       f"{{\"data\": [...]}}), found {found}; from pandas, write df.to_json(path, orient=\"records\")")


def _pandas_index(obj: Mapping[str, Any]) -> list[str] | None:
    """The row labels of pandas' column-oriented JSON (every value an object with the same keys), or None."""
    if not obj or not all(isinstance(v, dict) for v in obj.values()):
        return None
    index = list(next(iter(obj.values())))
    return index if all(set(v) == set(index) for v in obj.values()) else None


def _csv_records(p: Path, lines: list[str]) -> Records:
    reader = csv.DictReader(io.StringIO("".join(lines)))
    columns = list(reader.fieldnames or [])
    rows = []
    for row in reader:
        where = f"{p} line {reader.line_num}"
        if None in row:  # DictReader files extra cells under the key None
            raise DatasetError(f"{where}: row has more columns than the header {columns}; quote cells that hold commas")
        if any(v is None for v in row.values()):
            raise DatasetError(f"{where}: row has fewer columns than the header {columns}")
        rows.append((where, {k: None if v == "" else v for k, v in row.items()}))  # a blank cell is an absent field
    return Records(str(p), rows, columns, f"{p} line 1", "column")


def _parquet_records(p: Path, wanted: set[str] | None) -> Records:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise DatasetError(f"{p}: reading Parquet needs pyarrow, which is not installed; pip install pyarrow "
                           "(or pip install llm-gym[data])") from exc
    try:
        parquet = pq.ParquetFile(p)
        columns = list(parquet.schema_arrow.names)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError...: all mean the same to the user
        raise DatasetError(f"{p}: not a readable Parquet file ({exc}); check that it was written as Parquet") from exc

    def rows() -> Iterator[tuple[str, Any]]:
        i = 0
        batches = parquet.iter_batches(batch_size=1024, columns=_wanted_columns(columns, wanted))
        while True:
            try:
                batch = next(batches, None)
            except Exception as exc:
                raise DatasetError(f"{p}: cannot read row {i} on ({exc}); check that the file is complete") from exc
            if batch is None:
                return
            for row in batch.to_pylist():
                yield f"{p} row {i}", _plain(row)
                i += 1

    return Records(str(p), rows(), columns, f"{p} row 0", "column")


def _memory_records(source: Any, what: str, wanted: set[str] | None) -> Records:
    """Rows of data in memory, recognised by what it has (no pandas or datasets import is needed)."""
    if isinstance(source, bytes):
        raise TypeError(f"a {what} dataset must be text, not bytes; decode it first (data.decode('utf-8'))")
    columns = getattr(source, "column_names", None)
    if columns is not None:  # a datasets.Dataset (a DataFrame has no column_names)
        if isinstance(columns, Mapping):
            raise TypeError(f"got a DatasetDict with splits {list(columns)}; pass one split, e.g. dataset['train']")
        name = type(source).__name__
        keep = _wanted_columns(columns, wanted)
        rows = source.select_columns(keep) if keep is not None and hasattr(source, "select_columns") else source
        return Records(name, ((f"{name} row {i}", _plain(r)) for i, r in enumerate(rows)), [str(c) for c in columns],
                       f"{name} row 0", "column")
    if hasattr(source, "columns") and hasattr(source, "to_dict") and hasattr(source, "iloc"):  # a pandas DataFrame
        columns = [str(c) for c in source.columns]
        keep = _wanted_columns(list(source.columns), wanted)
        frame = source if keep is None else source[keep]
        rows = [(f"DataFrame row {i}", _plain(r)) for i, r in enumerate(frame.to_dict(orient="records"))]
        return Records("DataFrame", rows, columns, "DataFrame row 0", "column")
    if hasattr(source, "tolist") and hasattr(source, "dtype"):  # a pandas Series or a numpy array
        name = type(source).__name__
        if getattr(source, "ndim", 1) != 1:
            raise DatasetError(f"a {what} array must be one-dimensional (one {what} per item), "
                               f"got shape {source.shape}")
        return Records(name, [(f"{name} row {i}", _plain(v)) for i, v in enumerate(source.tolist())], None,
                       f"{name} row 0", "field")
    if isinstance(source, Mapping):
        lengths = {len(v) for v in source.values() if isinstance(v, (list, tuple))}
        if source and len(lengths) == 1 and all(isinstance(v, (list, tuple)) for v in source.values()):
            return _column_records(source, "dict", "dict row")
        raise TypeError(f"a {what} dataset given as a dict must map column names to equal-length lists "
                        f"(like {{'prompt': [...]}}), got keys {list(source)}; or give a list of records")
    if isinstance(source, Iterable):
        name = "list" if isinstance(source, (list, tuple)) else type(source).__name__
        rows = [(f"{name} row {i}", _plain(v)) for i, v in enumerate(source)]
        return Records(name, rows, None, f"{name} row 0", "field")
    raise TypeError(
        f"a {what} dataset must be a path to a {'/'.join(FILE_TYPES)} file, a list of strings or of records, a "
        f"datasets.Dataset, or a pandas DataFrame/Series, got {type(source).__name__}"
    )


def _column_records(columns: Mapping[str, Sequence[Any]], source: str, where: str) -> Records:
    names = list(columns)
    n = len(columns[names[0]])
    rows = [(f"{where} {i}", {str(k): _plain(columns[k][i]) for k in names}) for i in range(n)]
    return Records(source, rows, [str(k) for k in names], f"{where} 0", "column")


def _plain(value: Any) -> Any:
    """`value` with numpy arrays as lists, blank cells (NaN, pd.NA) as None and keys as strings, so records read alike.

    Keys become strings as column names do: ``pd.read_csv(header=None)`` names its columns 0, 1...
    """
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if is_absent(value):
        return None
    if not isinstance(value, (str, bytes)) and hasattr(value, "tolist"):
        return _plain(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------------------
# Records to prompts and demonstrations
# --------------------------------------------------------------------------------------

_ALTERNATIVES = {
    "prompt_field": ("text", "question", "instruction", "input", "query", "content", "messages"),
    "completion_field": ("response", "answer", "output", "target", "text"),
    "chosen_field": ("response_j", "chosen_response", "better", "preferred"),
    "rejected_field": ("response_k", "rejected_response", "worse", "dispreferred"),
}
"""Column names people use instead of ours, for the "pass prompt_field=..." hint."""


def suggest_field(found: Sequence[str], kwarg: str, name: str | None = None) -> str | None:
    """Which of the `found` field names probably means `kwarg` (e.g. ``"text"`` for ``prompt_field``), or None.

    >>> suggest_field(["text", "label"], "prompt_field")
    'text'
    """
    return next((c for c in _ALTERNATIVES.get(kwarg, ()) if c in found and c != name), None)


def _missing(where: str, name: str, found: Sequence[str], noun: str, kwarg: str) -> DatasetError:
    """The error for a record or table without the field `name`, with the fields found and which to pass instead."""
    if noun == "column":
        message = f"{where}: no {name!r} column; found {list(found)}"
    else:
        message = f"{where}: expected an object with a {name!r} field, found {list(found)}"
    guess = suggest_field(found, kwarg, name)
    if {"role", "content"} <= set(found):
        message += ("; this is a chat message: give a list of conversations (each a list of messages), "
                    "not one conversation")
    elif guess is not None:
        message += f'; pass {kwarg}="{guess}"'
    else:
        message += f"; rename the {noun} or pass {kwarg}= naming the {noun} that holds it"
    return DatasetError(message)


def _prompts_from_records(records: Records, field: str, tokenizer: ChatTokenizer | None) -> PromptDataset:
    if records.columns is not None and field not in records.columns:
        raise _missing(records.header, field, records.columns, "column", "prompt_field")
    prompts = []
    for where, value in records.rows:
        label = where
        if isinstance(value, Mapping):
            if field not in value:
                raise _missing(where, field, records.found(value), records.noun, "prompt_field")
            value, label = value[field], f"{where}: {field!r}"
        elif not (is_absent(value) or isinstance(value, str) or looks_like_messages(value)):
            raise DatasetError(f"{where}: expected a prompt string, a record with a {field!r} {records.noun} or a list "
                               f"of chat messages, got {type(value).__name__}")
        if is_absent(value) or (isinstance(value, str) and not value.strip()):
            blank = " (null or a blank cell)" if is_absent(value) else ""
            raise DatasetError(f"{where}: the prompt is empty or whitespace{blank}; remove the line or fill it in")
        prompts.append(prompt_text(value, label, tokenizer))
    return PromptDataset(tuple(prompts), source=records.source)


def prompt_text(value: Any, label: str, tokenizer: ChatTokenizer | None) -> str:
    """A prompt as text: a string as it is, chat messages rendered with the generation prompt; errors name `label`.

    Raises:
        DatasetError: `value` is neither, is blank (null, "", whitespace), holds a lone surrogate, or is messages
            without a tokenizer.
    """
    if isinstance(value, str):
        check_text(value, label)
        if not value.strip():
            raise DatasetError(f"{label} is empty or whitespace; a prompt needs text: fill it in or drop the record")
        return value
    messages = _messages(value, label, tokenizer)
    try:
        return render_prompt(tokenizer, messages)  # type: ignore[arg-type]  # _messages checked the tokenizer
    except ChatError as exc:
        raise DatasetError(f"{label}: {exc}") from exc


def completion_text(prompt: Any, completion: Any, label: str, tokenizer: ChatTokenizer | None) -> str:
    """A completion as text: a string as it is (the prompt must be a string too), or the text assistant messages add
    after the rendered prompt messages; errors name `label` (for example ``"data.jsonl line 3: 'chosen'"``).

    Raises:
        DatasetError: the two are not both text or both messages, a blank completion (null, a blank cell, ""), or
            messages without a tokenizer.
    """
    if is_absent(completion):
        raise DatasetError(f"{label} is empty (null or a blank cell); fill it in or drop the record")
    if isinstance(prompt, str):
        if isinstance(completion, str):
            check_text(completion, label)
            if not completion:
                raise DatasetError(f"{label} is empty (\"\"); a completion needs at least one character (the answer): "
                                   "fill it in or drop the record")
            return completion
        kind = "chat messages" if looks_like_messages(completion) else type(completion).__name__
        raise DatasetError(f"{label} must be a string like its prompt, got {kind}; give both as text or both as "
                           "chat messages")
    if not looks_like_messages(completion):
        kind = type(completion).__name__
        raise DatasetError(f"{label} must be a list of assistant messages like its prompt, got {kind}; give both as "
                           "text or both as chat messages")
    prompt_messages = _messages(prompt, f"{label} (its prompt)", tokenizer)
    completion_messages = _messages(completion, label, tokenizer)
    try:
        return render_completion(tokenizer, prompt_messages, completion_messages)  # type: ignore[arg-type]
    except ChatError as exc:
        raise DatasetError(f"{label}: {exc}") from exc


def _messages(value: Any, label: str, tokenizer: ChatTokenizer | None) -> list[dict[str, Any]]:
    """`value` checked as chat messages (each content checked as text), and the tokenizer that will render them."""
    if is_absent(value):
        raise DatasetError(f"{label} is empty (null or a blank cell); fill it in or drop the record")
    if not looks_like_messages(value):
        raise DatasetError(f"{label} must be a string or a list of chat messages, got {type(value).__name__}")
    try:
        messages = check_messages(value, label)
    except ChatError as exc:
        raise DatasetError(str(exc)) from exc
    for i, m in enumerate(messages):
        check_text(m["content"], f"{label} message {i}")
    if tokenizer is None:
        raise DatasetError(
            f"{label} holds chat messages, which become text through the model's chat template; pass the policy's "
            "tokenizer: tokenizer=policy.tokenizer (or give the text as plain strings)"
        )
    return messages


def _demonstration(value: Any, where: str, records: Records, prompt_field: str, completion_field: str,
                   messages_field: str, tokenizer: ChatTokenizer | None) -> Demonstration:
    if isinstance(value, Mapping):
        # a table row holds every column: a blank prompt next to a blank messages cell is a blank prompt
        if field(value, prompt_field) is not None or (prompt_field in value and field(value, messages_field) is None):
            if completion_field not in value:
                raise _missing(where, completion_field, records.found(value), records.noun, "completion_field")
            prompt, completion = field(value, prompt_field), field(value, completion_field)
            return Demonstration(prompt_text(prompt, f"{where}: {prompt_field!r}", tokenizer),
                                 completion_text(prompt, completion, f"{where}: {completion_field!r}", tokenizer))
        if messages_field not in value:
            raise _missing(where, prompt_field, records.found(value), records.noun, "prompt_field")
        conversation, label = value[messages_field], f"{where}: {messages_field!r}"
    elif looks_like_messages(value):
        conversation, label = value, where
    else:
        raise DatasetError(f"{where}: expected an object with {prompt_field!r} and {completion_field!r} fields or a "
                           f"conversation, got {type(value).__name__}")
    messages = _messages(conversation, label, tokenizer)
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        roles = [m["role"] for m in messages]
        raise DatasetError(f"{label}: a demonstration conversation ends with the assistant's answer after at least one "
                           f"prompt turn; its roles are {roles}")
    return Demonstration(prompt_text(messages[:-1], label, tokenizer),
                         completion_text(messages[:-1], messages[-1:], label, tokenizer))


# --------------------------------------------------------------------------------------
# Reading text files
# --------------------------------------------------------------------------------------


def _decode_error(path: Path, lineno: int, line: bytes, exc: UnicodeDecodeError, head: bytes) -> DatasetError:
    """The error for a line that is not UTF-8, with what the file's first bytes say it is."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):  # a UTF-16 byte-order mark (Windows "Unicode" text)
        fix = "the file is UTF-16 (it starts with a UTF-16 byte-order mark): re-encode it as UTF-8 (for example " \
              "`iconv -f utf-16 -t utf-8`)"
    else:
        fix = "re-encode the file as UTF-8 (for example `iconv -f latin1 -t utf-8`)"
        if head.startswith(b"PAR1"):
            fix += "; it looks like a Parquet file: name it .parquet"
    return DatasetError(f"{path} line {lineno}: not valid UTF-8 (byte 0x{line[exc.start]:02x} at column "
                        f"{exc.start + 1}); {fix}")


def _decode_lines(raw: bytes, path: Path) -> list[str]:
    out: list[str] = []
    for lineno, line in enumerate(raw.splitlines(keepends=True), start=1):
        try:
            out.append(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise _decode_error(path, lineno, line, exc, raw[:4]) from exc
    if out and out[0].startswith("\ufeff"):  # a UTF-8 byte-order mark is not part of the first prompt
        out[0] = out[0][1:]
    return out


def _iter_lines(p: Path, what: str) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of a UTF-8 file, read one line at a time; lines split as `_decode_lines` splits them."""
    try:
        f = p.open("rb")
    except OSError as exc:
        raise DatasetError(f"cannot read {what} file {p}: {exc.strerror}; check its permissions") from exc
    with f:
        head = f.read(4)
        f.seek(0)
        lineno = 0
        for chunk in f:  # chunks end at b"\n"; splitlines also splits at a lone b"\r", as reading the whole file does
            for line in chunk.splitlines(keepends=True):
                lineno += 1
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise _decode_error(p, lineno, line, exc, head) from exc
                yield lineno, text[1:] if lineno == 1 and text.startswith("\ufeff") else text


def _read_lines(p: Path, what: str) -> list[str]:
    """The lines of the regular file `p` (`_file_records` has checked it is one), decoded as UTF-8."""
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read {what} file {p}: {exc.strerror}; check its permissions") from exc
    return _decode_lines(raw, p)
