"""Answer checking: rewards that extract an answer from a completion and compare it with a reference.

This is reinforcement learning from *verifiable* rewards: the prompt is a problem, the reward is 1
when the completion's answer is right and 0 otherwise (DeepSeekMath's GRPO on GSM8K/MATH, Shao et
al. 2024; TRL's GRPO reward functions, which are plain ``reward(prompts, completions) -> floats``
callables, as every llm_gym reward is). Checking happens in two steps, each configurable.

**Extraction** (`extract_answer`): which part of the completion is the answer.

| rule | the answer is | nothing to extract (None) when |
|---|---|---|
| ``"whole"`` | the whole completion, stripped | it is blank |
| ``"marker"`` | the text after the *last* ``marker`` (default ``"Answer:"``, matched case-insensitively) up to the end of that line, stripped | no marker, or nothing after it |
| ``"tag"`` | the text inside the *last* ``<answer>...</answer>`` pair (the tag name is configurable), stripped | no closed pair, or an empty one |
| ``"last_number"`` | the last number written (``"7 - 2 = 5"`` -> ``"5"``; a ``-`` or ``−`` right before digits and after a space or the start is its sign: ``"= -3"`` -> ``"-3"``; ``.5``, ``1e5`` and ``1,234.5`` are whole numbers, never their tails), as GSM8K graders read a worked answer | no number (digits inside a word, ``"x2"``, are not one) |

The last occurrence counts because a model that reasons first may write a tentative answer
before its final one (reasoning-gym's `extract_answer` also takes the last ``<answer>`` tag).

**Matching** (`exact_match`, `numeric_match`, `regex_match`): how the extracted answer is compared.

* ``"exact"``: equal after whitespace normalisation (runs of whitespace become one space, ends
  stripped); ``case_sensitive=False`` also folds case.
* ``"numeric"``: both sides parse as numbers (`parse_number`) and agree within
  ``rel_tol``/``abs_tol`` (`math.isclose`'s rule, in exact decimal arithmetic). A number is an
  optional ``+``/``-``, digits with an optional decimal part (``"3"``, ``"3.50"``, ``".5"``,
  ``"42."``), optionally grouped by thousands with commas (``"1,234,567"``: groups of exactly
  three), an optional exponent (``"6.02e23"``), or a fraction of two such numbers (``"3/4"``,
  ``"-1/2"``). Anything else (``"50%"``, ``"$3"``, ``"three"``, ``"1,23"``, ``"inf"``,
  ``"1/0"``) is not a number and scores 0.

  *Non-ASCII digits* are read as the digits they are: every Unicode decimal digit (category
  Nd: Arabic-Indic ``"٣"``, Devanagari ``"३"``, full-width ``"３"``...) is mapped to its ASCII
  digit with `unicodedata.decimal`, which is what Python's own ``int()`` and ``float()`` accept.
  Digit-like characters that are not decimal digits (superscript ``"²"``, circled ``"③"``) are
  not numbers (`unicodedata.digit` would read ``"x²"`` as ``x2``).

  *Huge numbers* never hang or raise: numbers are parsed with `decimal.Decimal`, which has no
  digit limit (Python's ``int("9" * 5000)`` raises ValueError past its 4300-digit conversion
  limit) and keeps exponents symbolic (``"1e999999999"`` is not expanded; an exponent past ``decimal.MAX_EMAX``,
  about 10**18, is not a number), and compared in a
  context wide enough for any exponent; a completion longer than `MAX_NUMBER_CHARS` is not a number.
* ``"regex"``: the reference answer is a regular expression that the extracted answer must match
  as a whole (`re.fullmatch`, after whitespace normalisation; ``case_sensitive=False`` adds
  ``re.IGNORECASE``). `PatternReward` is the other way round: one pattern for every prompt, a
  format reward (e.g. DeepSeek-R1's ``<think>...</think><answer>...</answer>`` check).

`AnswerChecker` puts both together as a `RewardFn` that knows each prompt's reference answer;
an environment builds one from its dataset when ``reward_fn="answer:numeric"`` (see `checker_from_spec`).
"""

from __future__ import annotations

import decimal
import hashlib
import json
import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple, TypeAlias

import numpy as np

from llm_gym.core.chat import ChatTokenizer
from llm_gym.core.data import DatasetError, PromptDataset, field, prompt_text, read_records

__all__ = ["ANSWER_SPEC_PREFIX", "AnswerChecker", "Check", "CheckStats", "MATCHES", "MAX_NUMBER_CHARS", "PatternReward",
           "RULES", "checker_from_spec", "exact_match", "extract_answer", "is_answer_spec", "numeric_match", "parse_number",
           "regex_match"]

Rule: TypeAlias = Literal["whole", "marker", "tag", "last_number"]
Match: TypeAlias = Literal["exact", "numeric", "regex"]
RULES: tuple[str, ...] = ("whole", "marker", "tag", "last_number")
"""The extraction rules (see the module docstring)."""
MATCHES: tuple[str, ...] = ("exact", "numeric", "regex")
"""The ways to compare an extracted answer with its reference."""
ANSWER_SPEC_PREFIX = "answer:"
"""How an environment's `reward_fn` string names an answer checker: ``"answer:numeric"``, ``"answer:exact:tag"``."""
MAX_NUMBER_CHARS = 100_000
"""Longer text is not read as a number (a bound on the work one completion can cost)."""

# ---------------------------------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------------------------------


# a number that is not the tail of a longer token ("x2", ".5" read as "5", "1e5" as "5", "1,0005" as "005"): a sign
# only where it cannot be an operator ("= -3", "= −3" with U+2212; not the "- 2" of "7 - 2"), digits in any script
# (\d is Unicode-aware; parse_number maps them), thousands groups, a decimal part, an exponent
_LAST_NUMBER_RE = re.compile(r"(?<![\w.,])(?:(?<![\w.,\-−])[-−])?(?:\d+(?:,\d{3})*(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?(?!\w)(?![,.]\d)")


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"unknown extraction rule {rule!r}; use one of {list(RULES)} (whole completion, text after a "
                         "marker such as 'Answer:', an <answer>...</answer> tag, or the last number written)")


def extract_answer(completion: str, rule: Rule | str = "marker", *, marker: str = "Answer:",
                   tag: str = "answer") -> str | None:
    """The answer part of `completion` under `rule`, stripped, or None when there is none (see the module docstring).

    >>> extract_answer("2 + 2 is 4.\\nAnswer: 4\\nDone.")
    '4'
    >>> extract_answer("<answer>3</answer> no, <answer> 4 </answer>", rule="tag")
    '4'
    >>> extract_answer("I don't know") is None
    True

    Raises:
        ValueError: an unknown rule, or an empty marker or tag name (configuration errors, not bad completions).
        TypeError: `completion` is not a str.
    """
    _check_rule(rule)
    if not isinstance(completion, str):
        raise TypeError(f"a completion must be a str, got {type(completion).__name__} (decode token ids first)")
    if rule == "whole":
        text = completion.strip()
        return text or None
    if rule == "last_number":
        last = None
        for last in _LAST_NUMBER_RE.finditer(completion):  # linear in the completion; a huge number is then refused
            pass                                             # by parse_number, whole, never read cut short
        return last.group().replace("−", "-") if last else None
    if rule == "marker":
        if not marker:
            raise ValueError("marker must be a non-empty string such as 'Answer:'")
        # casefold() can change lengths (ß -> ss), so search case-insensitively with a regex, not on a folded copy
        hits = list(re.finditer(re.escape(marker), completion, flags=re.IGNORECASE))
        if not hits:
            return None
        rest = completion[hits[-1].end():]
        text = rest.splitlines()[0].strip() if rest.strip() else ""
        return text or None
    if not tag or not re.fullmatch(r"[\w.-]+", tag):
        raise ValueError(f"tag must be a tag name such as 'answer' (letters, digits, '_', '-', '.'), got {tag!r}")
    # the last opening tag, then the first closing tag after it: "<answer>a</answer> <answer>b</answer>" -> "b"
    opens = list(re.finditer(f"<{re.escape(tag)}>", completion))
    if not opens:
        return None
    end = completion.find(f"</{tag}>", opens[-1].end())
    if end < 0:
        return None
    text = completion[opens[-1].end():end].strip()
    return text or None


# ---------------------------------------------------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------------------------------------------------


def _normalise_space(text: str) -> str:
    return " ".join(text.split())


def exact_match(answer: str, reference: str, *, case_sensitive: bool = True) -> bool:
    """Whether `answer` equals `reference` after whitespace normalisation (and case folding when not case-sensitive).

    >>> exact_match(" New   York ", "new york", case_sensitive=False)
    True
    """
    a, b = _normalise_space(answer), _normalise_space(reference)
    return a == b if case_sensitive else a.casefold() == b.casefold()


_NUMBER = r"[+-]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_NUMBER_RE = re.compile(rf"({_NUMBER})(?:\s*/\s*({_NUMBER}))?", re.ASCII)
# wide enough that no exponent a parsed number can carry over- or underflows, and no trap raises mid-comparison
_CONTEXT = decimal.Context(prec=50, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, traps=[])


def _ascii_digits(text: str) -> str | None:
    """`text` with every Unicode decimal digit made ASCII; None when it holds another kind of digit (e.g. "²")."""
    if text.isascii():
        return text
    out = []
    for ch in text:
        if ch.isascii():
            out.append(ch)
        elif (d := unicodedata.decimal(ch, None)) is not None:
            out.append(str(d))
        elif unicodedata.digit(ch, None) is not None or unicodedata.numeric(ch, None) is not None:
            return None  # superscripts, circled digits, vulgar fractions: digit-like, but not how numbers are written
        else:
            out.append(ch)
    return "".join(out)


def parse_number(text: str | int | float) -> decimal.Decimal | None:
    """`text` as an exact `Decimal` when it is a number (see the module docstring for the forms read), else None.

    Fractions are divided out to 50 significant digits. Never raises on a string, however long or odd.

    >>> parse_number("1,234.5"), parse_number("-3/4"), parse_number("٣"), parse_number("3 apples")
    (Decimal('1234.5'), Decimal('-0.75'), Decimal('3'), None)
    """
    if isinstance(text, bool):
        return None  # True is an int to Python, not an answer
    if isinstance(text, int):
        return decimal.Decimal(text)
    if isinstance(text, float):
        return decimal.Decimal(repr(text)) if math.isfinite(text) else None
    if not isinstance(text, str) or len(text) > MAX_NUMBER_CHARS:
        return None
    ascii_text = _ascii_digits(text.strip())
    if ascii_text is None:
        return None
    m = _NUMBER_RE.fullmatch(ascii_text)
    if m is None:
        return None
    try:  # construction from a string is exact, with no digit limit
        num = decimal.Decimal(m.group(1).replace(",", ""))
        den = decimal.Decimal(m.group(2).replace(",", "")) if m.group(2) is not None else None
    except decimal.InvalidOperation:  # an exponent past decimal.MAX_EMAX (about 1e18): not a number we can compare
        return None
    if den is None:
        return num
    if den == 0:
        return None
    return _CONTEXT.divide(num, den)


def numeric_match(answer: str | int | float, reference: str | int | float, *, rel_tol: float = 1e-6,
                  abs_tol: float = 1e-9) -> bool:
    """Whether both are numbers (`parse_number`) within ``max(rel_tol * max(|a|, |b|), abs_tol)`` of each other.

    >>> numeric_match("1,000", 1000), numeric_match("0.75", "3/4"), numeric_match("9" * 5000, "9" * 5000)
    (True, True, True)
    """
    a, b = parse_number(answer), parse_number(reference)
    if a is None or b is None:
        return False
    diff = _CONTEXT.abs(_CONTEXT.subtract(a, b))
    scale = _CONTEXT.max_mag(a, b).copy_abs()
    return diff <= max(_CONTEXT.multiply(decimal.Decimal(rel_tol), scale), decimal.Decimal(abs_tol))


def regex_match(answer: str, pattern: str | re.Pattern[str], *, case_sensitive: bool = True) -> bool:
    """Whether the whole of `answer` (whitespace-normalised) matches `pattern`.

    >>> regex_match("3.14", r"3\\.14\\d*"), regex_match("the answer is 3", r"3")
    (True, False)
    """
    if isinstance(pattern, str):
        pattern = re.compile(pattern, 0 if case_sensitive else re.IGNORECASE)
    return pattern.fullmatch(_normalise_space(answer)) is not None


# ---------------------------------------------------------------------------------------------------------------------
# Reward functions
# ---------------------------------------------------------------------------------------------------------------------


class Check(NamedTuple):
    """What an answer checker found for one completion."""

    extracted: str | None
    """The extracted answer; None when the completion had none (scored 0)."""
    reference: str
    """The prompt's reference answer (or pattern)."""
    correct: bool
    """Whether the extracted answer matches the reference."""


class CheckStats(NamedTuple):
    """Counts over the last batch an answer checker scored."""

    n: int
    correct: int
    unextractable: int
    """Completions with no answer to extract (scored 0, not an error)."""

    @property
    def accuracy(self) -> float:
        """The fraction correct (0 for an empty batch)."""
        return self.correct / self.n if self.n else 0.0


def _check_match(match: str) -> None:
    if match not in MATCHES:
        raise ValueError(f"unknown match {match!r}; use one of {list(MATCHES)}")


class AnswerChecker:
    """A `RewardFn` paying 1.0 for a completion whose extracted answer matches its prompt's reference, else 0.0.

    Args:
        answers: the reference answer of each prompt (a string, or an int/float for ``match="numeric"``); for
            ``match="regex"`` each is a pattern the extracted answer must fully match.
        match: ``"exact"``, ``"numeric"`` or ``"regex"`` (see the module docstring).
        rule, marker, tag: the extraction rule and its marker or tag name (`extract_answer`).
        case_sensitive: for ``"exact"`` and ``"regex"``.
        rel_tol, abs_tol: for ``"numeric"``.

    A completion with nothing to extract scores 0 and is counted (`last_stats.unextractable`); a batch
    never raises because of what a model wrote. `last_checks` holds, for the last batch, each
    completion's `Check` (extracted answer, reference, correct): what an environment puts in `info`.
    `verifies_answers = True` tells the evaluation that its scores are correctness, so it reports
    accuracy and pass@k.

    Example:
        >>> checker = AnswerChecker({"2 + 2 =": "4", "3 * 3 =": "9"}, match="numeric")
        >>> checker(["2 + 2 =", "3 * 3 ="], ["Answer: 4", "I think 9"]).tolist(), checker.last_stats
        ([1.0, 0.0], CheckStats(n=2, correct=1, unextractable=1))

    Raises:
        ValueError: an empty mapping, a reference that cannot be used (not a number for ``"numeric"``, not a
            valid pattern for ``"regex"``), an unknown match or rule. The message names the prompt.
    """

    verifies_answers = True
    """Its scores are 1.0 (right) or 0.0 (wrong): evaluation reports accuracy and pass@k for it."""

    def __init__(self, answers: Mapping[str, str | int | float], match: Match | str = "exact", *,
                 rule: Rule | str = "marker", marker: str = "Answer:", tag: str = "answer",
                 case_sensitive: bool = True, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> None:
        _check_match(match)
        _check_rule(rule)
        extract_answer("", rule, marker=marker, tag=tag)  # a bad marker or tag fails here, not at the first step
        if not isinstance(answers, Mapping):
            raise TypeError(f"answers must be a mapping prompt -> reference answer, got {type(answers).__name__}; "
                            "to read them from a file use AnswerChecker.from_dataset(path)")
        if not answers:
            raise ValueError("answers is empty; give each prompt's reference answer: {prompt: answer}")
        self.match, self.rule, self.marker, self.tag = match, rule, marker, tag
        self.case_sensitive, self.rel_tol, self.abs_tol = case_sensitive, rel_tol, abs_tol
        self.answers: dict[str, str] = {}
        self._patterns: dict[str, re.Pattern[str]] = {}
        for prompt, answer in answers.items():
            self.answers[prompt] = self._reference(prompt, answer)
        self.last_checks: list[Check] = []
        self.last_stats = CheckStats(0, 0, 0)

    def fingerprint(self) -> str:
        """The reference answers and the matching settings as a hash: what a run's fingerprint holds for this judge, so
        that editing an answer in the data reruns what it scored (`llm_gym.app.stages.code_fingerprint`)."""
        settings = [self.match, self.rule, self.marker, self.tag, self.case_sensitive, self.rel_tol, self.abs_tol]
        blob = json.dumps([settings, sorted(self.answers.items())], ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def _reference(self, prompt: str, answer: Any) -> str:
        """`answer` checked as a usable reference for this match, as a string."""
        if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
            raise ValueError(f"the reference answer of prompt {prompt!r} is {type(answer).__name__}; give a string "
                             "(or a number)")
        if self.match == "numeric":
            if parse_number(answer) is None:
                raise ValueError(f"the reference answer of prompt {prompt!r} is {answer!r}, not a number; numeric "
                                 "matching needs numbers like 42, -3.5, 1,234 or 3/4 (use match='exact' otherwise)")
            return answer if isinstance(answer, str) else repr(answer)
        text = answer if isinstance(answer, str) else repr(answer)
        if not text.strip():
            raise ValueError(f"the reference answer of prompt {prompt!r} is blank; fill it in or drop the prompt")
        if self.match == "regex":
            try:
                self._patterns[prompt] = re.compile(text, 0 if self.case_sensitive else re.IGNORECASE)
            except re.error as exc:
                raise ValueError(f"the reference answer of prompt {prompt!r} is not a valid regular expression "
                                 f"({exc}): {text!r}") from exc
        return text

    @classmethod
    def from_dataset(cls, source: Any, match: Match | str = "exact", *, prompt_field: str = "prompt",
                     answer_field: str = "answer", tokenizer: ChatTokenizer | None = None,
                     **options: Any) -> AnswerChecker:
        """A checker from records holding a prompt and its answer: a ``.jsonl``/``.json``/``.csv``/``.parquet``
        path, a list of dicts, a DataFrame... (what `llm_gym.core.data.read_records` reads).

        Prompts become text as `load_prompts` makes them (chat messages through `tokenizer`'s template), so they
        are the strings the environment hands out. `options` are the constructor's keywords (rule, tolerances...).

        Raises:
            DatasetError: a record without the answer field (naming the line and the fields found), a blank answer,
                or one prompt given two different answers.
        """
        if isinstance(source, PromptDataset) or (isinstance(source, (list, tuple)) and source
                                                  and all(isinstance(x, str) for x in source)):
            raise DatasetError(f"answer checking needs each prompt's reference answer, but the dataset is a list of "
                               f"prompts only; give records with {prompt_field!r} and {answer_field!r} fields (a "
                               f"JSONL of {{\"{prompt_field}\": ..., \"{answer_field}\": ...}}) or pass "
                               "AnswerChecker({prompt: answer})")
        records = read_records(source, "answer", [prompt_field, answer_field])
        answers: dict[str, Any] = {}
        where_of: dict[str, str] = {}
        for where, value in records.rows:
            if not isinstance(value, Mapping):
                raise DatasetError(f"{where}: expected a record with {prompt_field!r} and {answer_field!r} fields, "
                                   f"got {type(value).__name__}")
            for name, kwarg in ((prompt_field, "prompt_field"), (answer_field, "answer_field")):
                if field(value, name) is None:
                    found = records.found(value)
                    hint = next((f for f in ("answer", "solution", "target", "label", "output") if f in found
                                 and f != name), None) if kwarg == "answer_field" else None
                    fix = f'pass {kwarg}="{hint}"' if hint else f"fill it in, or pass {kwarg}= naming the field"
                    raise DatasetError(f"{where}: no {name!r} value (found {found}); {fix}")
            prompt = prompt_text(value[prompt_field], f"{where}: {prompt_field!r}", tokenizer)
            answer = value[answer_field]
            if prompt in answers and answers[prompt] != answer:
                raise DatasetError(f"{where}: prompt {prompt!r} already has the answer {answers[prompt]!r} "
                                   f"({where_of[prompt]}), here {answer!r}; a prompt needs one reference answer")
            answers[prompt], where_of[prompt] = answer, where
        if not answers:
            raise DatasetError(f"{records.source} holds no records; add lines like "
                               f"{{\"{prompt_field}\": \"2 + 2 =\", \"{answer_field}\": \"4\"}}")
        try:
            return cls(answers, match, **options)
        except ValueError as exc:
            raise DatasetError(f"{records.source}: {exc}") from exc

    def correct(self, answer: str, reference: str, prompt: str) -> bool:
        """Whether an extracted `answer` matches `reference` (the reference of `prompt`) under this checker's match."""
        if self.match == "numeric":
            return numeric_match(answer, reference, rel_tol=self.rel_tol, abs_tol=self.abs_tol)
        if self.match == "regex":
            return self._patterns[prompt].fullmatch(_normalise_space(answer)) is not None
        return exact_match(answer, reference, case_sensitive=self.case_sensitive)

    def check(self, prompts: Sequence[str], completions: Sequence[str]) -> list[Check]:
        """Each completion's `Check` (also kept as `last_checks`, with counts in `last_stats`).

        Raises:
            KeyError: a prompt with no reference answer (a setup error: the checker was built for other prompts).
        """
        missing = [p for p in prompts if p not in self.answers]
        if missing:
            raise KeyError(f"no reference answer for prompt {missing[0]!r} ({len(missing)} of {len(prompts)} prompts "
                           f"in this batch have none); build the AnswerChecker from the dataset the prompts come from")
        checks = []
        for prompt, completion in zip(prompts, completions, strict=True):
            extracted = extract_answer(completion, self.rule, marker=self.marker, tag=self.tag)
            reference = self.answers[prompt]
            ok = extracted is not None and self.correct(extracted, reference, prompt)
            checks.append(Check(extracted, reference, ok))
        self.last_checks = checks
        self.last_stats = CheckStats(len(checks), sum(c.correct for c in checks),
                                     sum(c.extracted is None for c in checks))
        return checks

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """1.0 for each completion whose answer is right, else 0.0."""
        return np.array([float(c.correct) for c in self.check(prompts, completions)], dtype=np.float64)

    def __repr__(self) -> str:
        return (f"AnswerChecker({len(self.answers)} answers, match={self.match!r}, rule={self.rule!r}, "
                f"marker={self.marker!r}, tag={self.tag!r})")


class PatternReward:
    """A `RewardFn` paying 1.0 when a completion's extracted part fully matches one `pattern`, for every prompt.

    A format reward (DeepSeek-R1 and TRL's GRPO examples pay one for
    ``<think>...</think><answer>...</answer>``), usually added to an answer reward. With ``rule="whole"``
    the stripped completion must match; with ``"marker"``/``"tag"`` the extracted answer must (no answer: 0).
    It checks form, not correctness, so it has no `verifies_answers`.

    >>> PatternReward(r"-?\\d+", rule="marker")(["q", "q"], ["Answer: 12", "Answer: twelve"]).tolist()
    [1.0, 0.0]
    """

    def __init__(self, pattern: str, *, rule: Rule | str = "whole", marker: str = "Answer:", tag: str = "answer",
                 flags: int = re.DOTALL) -> None:
        _check_rule(rule)
        extract_answer("", rule, marker=marker, tag=tag)
        try:
            self.pattern = re.compile(pattern, flags)
        except re.error as exc:
            raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {exc}") from exc
        self.rule, self.marker, self.tag = rule, marker, tag

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """1.0 for each completion whose extracted part matches the pattern, else 0.0."""
        out = []
        for c in completions:
            text = extract_answer(c, self.rule, marker=self.marker, tag=self.tag)
            out.append(float(text is not None and self.pattern.fullmatch(text) is not None))
        return np.array(out, dtype=np.float64)


def checker_from_spec(spec: str, dataset: Any, *, prompt_field: str = "prompt", answer_field: str = "answer",
                      tokenizer: ChatTokenizer | None = None) -> AnswerChecker:
    """The `AnswerChecker` an environment's ``reward_fn`` string names, built from its dataset's answers.

    `spec` is ``"answer:MATCH"`` or ``"answer:MATCH:RULE"``: MATCH is ``exact``, ``exact_nocase``
    (case-insensitive), ``numeric`` or ``regex``; RULE is ``marker`` (the default: after ``Answer:``),
    ``tag`` (``<answer>...</answer>``) or ``whole``. For other options build an `AnswerChecker` in code.

    Raises:
        ValueError: a spec that is not of this form (the message lists the choices).
        DatasetError: from `AnswerChecker.from_dataset`.
    """
    parts = spec[len(ANSWER_SPEC_PREFIX):].split(":") if spec.startswith(ANSWER_SPEC_PREFIX) else []
    kinds = [*MATCHES, "exact_nocase"]
    if not 1 <= len(parts) <= 2 or parts[0] not in kinds or (len(parts) == 2 and parts[1] not in RULES):
        raise ValueError(f"{spec!r} does not name an answer checker; write 'answer:MATCH' or 'answer:MATCH:RULE' with "
                         f"MATCH in {kinds} and RULE in {list(RULES)}, e.g. 'answer:numeric' or 'answer:exact:tag'")
    match, rule = parts[0], parts[1] if len(parts) == 2 else "marker"
    case_sensitive = match != "exact_nocase"
    return AnswerChecker.from_dataset(dataset, "exact" if match == "exact_nocase" else match,
                                      prompt_field=prompt_field, answer_field=answer_field, tokenizer=tokenizer,
                                      rule=rule, case_sensitive=case_sensitive)


def is_answer_spec(value: object) -> bool:
    """Whether `value` is an ``"answer:..."`` string naming an answer checker (not an import path)."""
    return isinstance(value, str) and value.startswith(ANSWER_SPEC_PREFIX)
