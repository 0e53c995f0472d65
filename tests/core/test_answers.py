"""Answer checking: extraction rules, exact / numeric / regex matching, the AnswerChecker reward and its bad input."""

from __future__ import annotations

import doctest
import json
import time
from decimal import Decimal

import numpy as np
import pytest

from llm_gym.core import answers
from llm_gym.core.answers import (AnswerChecker, Check, CheckStats, PatternReward, checker_from_spec, exact_match,
                                  extract_answer, numeric_match, parse_number, regex_match)
from llm_gym.core.data import DatasetError, PromptDataset
from llm_gym.core.reward import score_batch


def test_the_module_examples_run() -> None:
    result = doctest.testmod(answers)
    assert result.attempted > 0 and result.failed == 0


# --- extraction -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("completion", "rule", "expected"), [
    ("  42 \n", "whole", "42"),
    ("   \n", "whole", None),
    ("", "whole", None),
    ("Let me think. answer: 3\nAnswer: 4\nthat's it", "marker", "4"),  # last marker, case-insensitive, to end of line
    ("ANSWER:   12  ", "marker", "12"),
    ("the answer is 4", "marker", None),
    ("Answer:\n5", "marker", None),  # nothing on the marker's line
    ("Answer:", "marker", None),
    ("<answer>3</answer> wait <answer> 4 </answer>", "tag", "4"),
    ("<answer>\nmulti\nline\n</answer>", "tag", "multi\nline"),
    ("<answer>4", "tag", None),  # never closed
    ("<answer>  </answer>", "tag", None),
    ("no tags", "tag", None),
    (" 7 - 2 + 7 = 5 + 7 = 12", "last_number", "12"),  # a sum worked step by step: its result
    (" 14", "last_number", "14"),
    ("so it is = -3.", "last_number", "-3"),  # a sign after a space is the number's
    ("7 - 2", "last_number", "2"),  # "- 2" is an operator and a number
    ("a-3", "last_number", "3"),  # a hyphen after a word is not a sign
    ("about 1,234.5 in all", "last_number", "1,234.5"),
    ("٣ + ٤ = ٧", "last_number", "٧"),  # digits of any script; numeric matching reads them
    ("no digits here", "last_number", None),
    ("the answer is .5", "last_number", ".5"),  # not the "5" of ".5"
    ("x = 1e5", "last_number", "1e5"),  # not the "5" of "1e5"
    ("= \u22123", "last_number", "-3"),  # the minus sign U+2212 is a sign
    ("1,0005", "last_number", None),  # not a number, and not its tail "005"
    ("12,34", "last_number", None),
    ("x2 and y3", "last_number", None),  # identifiers, not numbers
    ("", "last_number", None),
])
def test_extraction_rules(completion: str, rule: str, expected: str | None) -> None:
    assert extract_answer(completion, rule) == expected


def test_last_number_in_a_huge_completion() -> None:
    huge = "1" * (answers.MAX_NUMBER_CHARS * 3) + " = 5"
    assert extract_answer(huge, "last_number") == "5"
    assert AnswerChecker({"p": "5"}, "numeric", rule="last_number")(["p"], [huge]).tolist() == [1.0]
    # a huge last number is read whole and refused as a number, never cut to a tail that happens to be right
    cut = "1" + "0" * answers.MAX_NUMBER_CHARS + "12"
    assert AnswerChecker({"p": "12"}, "numeric", rule="last_number")(["p"], [cut]).tolist() == [0.0]


def test_extraction_marker_and_tag_are_configurable() -> None:
    assert extract_answer("#### 17", "marker", marker="####") == "17"  # GSM8K's marker
    assert extract_answer("<final>x</final>", "tag", tag="final") == "x"


def test_extraction_configuration_errors() -> None:
    with pytest.raises(ValueError, match="unknown extraction rule 'last'.*whole.*last number"):
        extract_answer("x", "last")
    with pytest.raises(ValueError, match="marker must be a non-empty"):
        extract_answer("x", "marker", marker="")
    with pytest.raises(ValueError, match="tag must be a tag name"):
        extract_answer("x", "tag", tag="<a>")
    with pytest.raises(TypeError, match="must be a str"):
        extract_answer([1, 2], "whole")  # type: ignore[arg-type]


# --- matching ---------------------------------------------------------------------------------------------------------


def test_exact_match_normalises_whitespace_and_optionally_case() -> None:
    assert exact_match("  New\n  York ", "New York")
    assert not exact_match("new york", "New York")
    assert exact_match("new york", "New York", case_sensitive=False)
    assert not exact_match("NewYork", "New York")


@pytest.mark.parametrize(("text", "value"), [
    ("42", Decimal(42)), ("+42", Decimal(42)), ("-42", Decimal(-42)), ("3.50", Decimal("3.5")), (".5", Decimal("0.5")),
    ("42.", Decimal(42)), ("1,234", Decimal(1234)), ("-1,234,567.25", Decimal("-1234567.25")),
    ("6.02e23", Decimal("6.02e23")), ("1E-3", Decimal("0.001")), ("3/4", Decimal("0.75")), ("-1 / 2", Decimal("-0.5")),
    (" 7 ", Decimal(7)),
])
def test_parse_number_reads_the_documented_forms(text: str, value: Decimal) -> None:
    assert parse_number(text) == value


@pytest.mark.parametrize("text", ["", "-", ".", "1,23", "12,3456", "1.2.3", "50%", "$3", "three", "inf", "nan",
                                  "Infinity", "1/0", "0x10", "1_000", "3 apples", "4 5"])
def test_parse_number_refuses_what_is_not_a_number(text: str) -> None:
    assert parse_number(text) is None


def test_numeric_match_with_tolerance() -> None:
    assert numeric_match("1,000", "1000") and numeric_match("1000.0", 1000) and numeric_match("0.75", "3/4")
    assert numeric_match("0.3333333", "1/3")  # within rel_tol=1e-6
    assert not numeric_match("0.333", "1/3")
    assert numeric_match("0.333", "1/3", rel_tol=1e-2)
    assert numeric_match("1e-12", "0")  # abs_tol
    assert not numeric_match("1e-12", "0", abs_tol=0)
    assert not numeric_match("four", "4") and not numeric_match("4", "four")


def test_non_ascii_decimal_digits_are_read_as_digits() -> None:
    # Arabic-Indic, Devanagari and full-width digits are decimal digits (Unicode Nd), as Python's int() reads them
    assert parse_number("٣") == 3 and parse_number("١٢٣") == 123 and parse_number("३") == 3
    assert parse_number("３.５") == Decimal("3.5") and parse_number("-٤/٢") == -2
    assert numeric_match("٤٢", "42")
    # digit-like characters that are not how numbers are written are refused
    assert parse_number("²") is None and parse_number("2²") is None and parse_number("③") is None
    assert parse_number("½") is None


def test_huge_numbers_neither_hang_nor_raise() -> None:
    big = "9" * 5000  # past Python's 4300-digit int-conversion limit: int(big) raises ValueError
    with pytest.raises(ValueError):
        int(big)
    start = time.perf_counter()
    assert parse_number(big) == Decimal(big)
    assert numeric_match(big, big)
    assert not numeric_match(big, "9" * 4999)  # ten times smaller
    assert numeric_match("1e999999999", "1e999999999") and not numeric_match("1e999999999", "2e999999999")
    assert numeric_match("1e-999999999", "0")
    assert parse_number("1e99999999999999999999") is None  # an exponent past decimal's range is not a number
    assert parse_number("1" * (answers.MAX_NUMBER_CHARS + 1)) is None
    assert numeric_match(10 ** 5000, "1e5000")  # an int reference of any size
    assert time.perf_counter() - start < 2.0


def test_regex_match_is_a_full_match() -> None:
    assert regex_match("3.14159", r"3\.14\d*")
    assert not regex_match("x = 3.14", r"3\.14\d*")
    assert regex_match("  Paris ", r"paris", case_sensitive=False)
    assert not regex_match("Paris", r"paris")


# --- the reward -------------------------------------------------------------------------------------------------------


def test_answer_checker_scores_and_counts_the_unextractable() -> None:
    checker = AnswerChecker({"2 + 2 =": "4", "3 * 3 =": 9, "big": "9" * 5000}, match="numeric")
    prompts = ["2 + 2 =", "3 * 3 =", "2 + 2 =", "big", "3 * 3 ="]
    completions = ["so Answer: 4", "Answer: 9.0", "no idea", "Answer: " + "9" * 5000, "Answer: ٩"]
    rewards = score_batch(checker, prompts, completions)  # what the environment calls: validated floats
    assert rewards.tolist() == [1.0, 1.0, 0.0, 1.0, 1.0]
    assert checker.last_stats == CheckStats(n=5, correct=4, unextractable=1)
    assert checker.last_stats.accuracy == pytest.approx(0.8)
    assert checker.last_checks[2] == Check(None, "4", False)
    assert checker.last_checks[1] == Check("9.0", "9", True)
    assert AnswerChecker.verifies_answers is True and checker.verifies_answers


def test_answer_checker_exact_regex_and_rules() -> None:
    exact = AnswerChecker({"capital of France?": "Paris"}, "exact", rule="tag", case_sensitive=False)
    assert exact(["capital of France?"] * 3, ["<answer>paris</answer>", "<answer>Lyon</answer>", "Paris"]).tolist() \
        == [1.0, 0.0, 0.0]
    assert exact.last_stats.unextractable == 1
    regex = AnswerChecker({"name a prime below 10": r"[2357]"}, "regex", rule="whole")
    assert regex(["name a prime below 10"] * 3, [" 7 ", "9", "2 or 3"]).tolist() == [1.0, 0.0, 0.0]


def test_answer_checker_never_raises_on_model_output() -> None:
    checker = AnswerChecker({"q": "1/3"}, "numeric", rule="whole")
    odd = ["", "\x00", "9" * 100_000, "1e99999999999999999999", "ñ" * 1000, "<answer>", "1/0", "٣/٩", "nan", "∞"]
    rewards = checker(["q"] * len(odd), odd)
    assert rewards.tolist() == [0.0] * 7 + [1.0, 0.0, 0.0]
    assert checker.last_stats.unextractable == 1


def test_answer_checker_bad_setup_is_loud() -> None:
    checker = AnswerChecker({"2 + 2 =": "4"})
    with pytest.raises(KeyError, match="no reference answer for prompt '5 - 1 ='"):
        checker(["2 + 2 =", "5 - 1 ="], ["4", "4"])
    with pytest.raises(ValueError, match="reference answer of prompt 'q' is 'four', not a number"):
        AnswerChecker({"q": "four"}, "numeric")
    with pytest.raises(ValueError, match="reference answer of prompt 'q' is not a valid regular expression"):
        AnswerChecker({"q": "(unclosed"}, "regex")
    with pytest.raises(ValueError, match="reference answer of prompt 'q' is blank"):
        AnswerChecker({"q": "  "})
    with pytest.raises(ValueError, match="reference answer of prompt 'q' is NoneType"):
        AnswerChecker({"q": None})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="answers is empty"):
        AnswerChecker({})
    with pytest.raises(ValueError, match="unknown match 'fuzzy'"):
        AnswerChecker({"q": "a"}, "fuzzy")
    with pytest.raises(ValueError, match="unknown extraction rule"):
        AnswerChecker({"q": "a"}, rule="first")
    with pytest.raises(TypeError, match="mapping prompt -> reference"):
        AnswerChecker([("q", "a")])  # type: ignore[arg-type]


def _jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def test_from_dataset_reads_prompt_and_answer_fields(tmp_path) -> None:
    path = _jsonl(tmp_path / "problems.jsonl", [{"prompt": "2 + 2 =", "answer": 4}, {"prompt": "1/2 + 1/4 =",
                                                                                     "answer": "3/4"}])
    checker = AnswerChecker.from_dataset(path, "numeric")
    assert checker(["1/2 + 1/4 =", "2 + 2 ="], ["Answer: 0.75", "Answer: 5"]).tolist() == [1.0, 0.0]
    renamed = AnswerChecker.from_dataset([{"question": "q", "solution": "a"}], prompt_field="question",
                                         answer_field="solution")
    assert renamed.answers == {"q": "a"}


def test_from_dataset_errors_name_the_line(tmp_path) -> None:
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "answer": "1"}, {"prompt": "b", "solution": "2"}])
    with pytest.raises(DatasetError, match=r"p.jsonl line 2: no 'answer' value .*'solution'.*answer_field=\"solution\""):
        AnswerChecker.from_dataset(path)
    path = _jsonl(tmp_path / "dup.jsonl", [{"prompt": "a", "answer": "1"}, {"prompt": "a", "answer": "2"}])
    with pytest.raises(DatasetError, match="dup.jsonl line 2: prompt 'a' already has the answer '1'"):
        AnswerChecker.from_dataset(path)
    path = _jsonl(tmp_path / "nan.jsonl", [{"prompt": "a", "answer": "one"}])
    with pytest.raises(DatasetError, match="nan.jsonl: the reference answer of prompt 'a' is 'one', not a number"):
        AnswerChecker.from_dataset(path, "numeric")
    for prompts_only in (["a", "b"], PromptDataset.from_list(["a", "b"])):
        with pytest.raises(DatasetError, match="list of prompts only"):
            AnswerChecker.from_dataset(prompts_only)


def test_checker_from_spec_names_match_and_rule() -> None:
    data = [{"prompt": "q", "answer": "Paris"}]
    checker = checker_from_spec("answer:exact_nocase:tag", data)
    assert (checker.match, checker.rule, checker.case_sensitive) == ("exact", "tag", False)
    assert checker(["q"], ["<answer>PARIS</answer>"]).tolist() == [1.0]
    assert checker_from_spec("answer:numeric", [{"prompt": "q", "answer": 1}]).rule == "marker"
    for bad in ("answer:", "answer:fuzzy", "answer:exact:first", "answer:exact:tag:x"):
        with pytest.raises(ValueError, match="does not name an answer checker.*'answer:numeric'"):
            checker_from_spec(bad, data)


def test_pattern_reward_is_a_format_reward() -> None:
    fmt = PatternReward(r"<think>.*</think>\s*<answer>.*</answer>")
    rewards = fmt(["q", "q"], ["<think>2+2</think>\n<answer>4</answer>", "4"])
    assert isinstance(rewards, np.ndarray) and rewards.tolist() == [1.0, 0.0]
    assert not hasattr(fmt, "verifies_answers")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        PatternReward("(")
