"""Prompt datasets (the prompts a `PromptBanditEnv` hands out, from a list, JSONL or CSV) and SFT demonstrations (JSONL).

Every loader reports bad input with the file and line at fault and says how to fix it:
a missing file, a line that is not UTF-8, a malformed JSON line, a missing field, an
empty prompt, text no tokenizer can encode (a lone UTF-16 surrogate such as JSON's
``"\\ud800"``), an empty dataset or one that a filter emptied. Nothing is dropped
silently: `filter` records how many prompts it removed, and an all-removing filter is an
error.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

from llm_gym.core.task import Demonstration

__all__ = ["PromptDataset", "DatasetError", "check_text", "load_demonstrations", "load_prompts"]


class DatasetError(ValueError):
    """A prompt dataset could not be built; the message names the file/line and the fix."""


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
    def from_file(cls, path: str | PathLike[str], field: str = "prompt") -> PromptDataset:
        """Load prompts from a `.jsonl` (one object per line, key `field`) or `.csv` (column `field`) file.

        A `.txt` file holds one prompt per line.
        """
        p, lines = _read_lines(path, "prompt")
        suffix = p.suffix.lower()
        if suffix == ".jsonl":
            prompts = list(_parse_jsonl(lines, p, field))
        elif suffix == ".csv":
            prompts = list(_parse_csv(lines, p, field))
        elif suffix == ".txt":
            prompts = [line.rstrip("\r\n") for line in lines if line.strip()]
        else:
            raise DatasetError(f"{p}: unknown prompt file type {suffix!r}; use .jsonl, .csv or .txt")
        return cls(tuple(prompts), source=str(p))

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


def load_prompts(dataset: PromptDataset | Sequence[str] | str | PathLike[str]) -> PromptDataset:
    """Accept what users naturally pass as a dataset: a `PromptDataset`, a list of strings, or a file path."""
    if isinstance(dataset, PromptDataset):
        return dataset
    if isinstance(dataset, (str, PathLike)):
        return PromptDataset.from_file(dataset)
    if isinstance(dataset, Sequence):
        return PromptDataset.from_list(dataset)
    raise TypeError(
        f"dataset must be a PromptDataset, a list of prompt strings or a path to a .jsonl/.csv/.txt file, "
        f"got {type(dataset).__name__}"
    )


def _decode_lines(raw: bytes, path: Path) -> list[str]:
    out: list[str] = []
    for lineno, line in enumerate(raw.splitlines(keepends=True), start=1):
        try:
            out.append(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise DatasetError(
                f"{path} line {lineno}: not valid UTF-8 (byte 0x{line[exc.start]:02x} at column {exc.start + 1}); "
                "re-encode the file as UTF-8 (for example `iconv -f latin1 -t utf-8`)"
            ) from exc
    if out and out[0].startswith("\ufeff"):  # a UTF-8 byte-order mark is not part of the first prompt
        out[0] = out[0][1:]
    return out


def _jsonl_records(lines: list[str], path: Path, keys: Sequence[str]) -> Iterator[tuple[int, dict]]:
    """The objects of a JSONL file and their line numbers, each checked to have text under `keys` (errors name the line)."""
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path} line {lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
        for key in keys:
            if not isinstance(obj, dict) or key not in obj:
                found = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
                raise DatasetError(f"{path} line {lineno}: expected an object with a {key!r} field, found {found}")
            if not isinstance(obj[key], str):
                raise DatasetError(f"{path} line {lineno}: {key!r} must be a string, got {type(obj[key]).__name__}")
            check_text(obj[key], f"{path} line {lineno}: {key!r}")
        yield lineno, obj


def _parse_jsonl(lines: list[str], path: Path, key: str) -> Iterator[str]:
    for lineno, obj in _jsonl_records(lines, path, (key,)):
        _check_prompt(obj[key], f"{path} line {lineno}")
        yield obj[key]


def _check_prompt(prompt: str, where: str) -> None:
    if not prompt.strip():
        raise DatasetError(f"{where}: the prompt is empty or whitespace; remove the line or fill it in")


def _read_lines(path: str | PathLike[str], what: str) -> tuple[Path, list[str]]:
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{what} file {p} does not exist; check the path (cwd is {Path.cwd()})")
    if not p.is_file():
        raise DatasetError(f"{what} file {p} is not a regular file")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read {what} file {p}: {exc.strerror}; check its permissions") from exc
    return p, _decode_lines(raw, p)


def load_demonstrations(path: str | PathLike[str]) -> list[Demonstration]:
    """Demonstrations for SFT from a JSONL file: one ``{"prompt": str, "completion": str}`` object per line.

    Raises:
        DatasetError: naming the file and line, for a missing file, text that is not UTF-8,
            invalid JSON, a missing or non-string field, or a file with no demonstrations.
    """
    p, lines = _read_lines(path, "demonstration")
    if p.suffix.lower() != ".jsonl":
        raise DatasetError(f"{p}: demonstrations must be a .jsonl file of {{\"prompt\": ..., \"completion\": ...}} lines")
    demos = [Demonstration(obj["prompt"], obj["completion"]) for _, obj in _jsonl_records(lines, p, ("prompt", "completion"))]
    if not demos:
        raise DatasetError(f"{p} holds no demonstrations; add lines like {{\"prompt\": \"the film was\", \"completion\": \" great .\"}}")
    return demos


def _parse_csv(lines: list[str], path: Path, key: str) -> Iterator[str]:
    reader = csv.DictReader(io.StringIO("".join(lines)))
    if reader.fieldnames is None or key not in reader.fieldnames:
        raise DatasetError(f"{path} line 1: no {key!r} column in the header {reader.fieldnames}; add one or pass field=")
    for row in reader:
        value = row.get(key)
        if value is None:
            raise DatasetError(f"{path} line {reader.line_num}: row has fewer columns than the header")
        _check_prompt(value, f"{path} line {reader.line_num}")
        yield value
