"""Tests of the built-in verifiable task (llm_gym/tasks/arithmetic.py): generator, worksheet corpus, config, gold."""

from __future__ import annotations

import dataclasses
import doctest
import math
import re
from collections import Counter

import pytest

import llm_gym
from llm_gym.core.answers import AnswerChecker
from llm_gym.tasks.arithmetic import (
    ArithmeticTask,
    ArithmeticTaskConfig,
    generate_arithmetic_task,
)

SMALL = ArithmeticTaskConfig(seed=5, n_pretrain=600, n_heldout=100, n_prompts=200, n_eval_prompts=80,
                             n_demonstrations=50)
_SUM = re.compile(r"\d+(?: [+-] \d+)*")
_LINE = re.compile(r"(\d+(?: [+-] \d+)*) = (-?\d+)")


def value_of(problem: str) -> int:
    """The value of ``"a + b - c"``, computed without eval: signed terms added up."""
    assert _SUM.fullmatch(problem), f"not a chain sum: {problem!r}"
    terms = re.findall(r"([+-]?) ?(\d+)", problem)
    return sum(-int(n) if sign == "-" else int(n) for sign, n in terms)


def problem_of(prompt: str) -> str:
    assert prompt.endswith(" ="), prompt
    return prompt[: -len(" =")]


def lines_of(worksheet: str) -> list[tuple[str, int]]:
    """A worksheet's lines ``"a + b = r"`` as (``"a + b"``, r); fails on any other shape."""
    assert worksheet, "a worksheet is never empty"
    out = []
    for line in worksheet.split("\n"):
        m = _LINE.fullmatch(line)
        assert m, f"bad worksheet line {line!r} in {worksheet!r}"
        out.append((m[1], int(m[2])))
    return out


def corpus_problems(texts: list[str]) -> set[str]:
    return {problem for sheet in texts for problem, _ in lines_of(sheet)}


@pytest.fixture(scope="module")
def task() -> ArithmeticTask:
    return generate_arithmetic_task(SMALL)


def test_helpers_are_right() -> None:
    assert value_of("12 + 7 - 5") == 14
    assert value_of("3 - 20") == -17
    assert value_of("0 - 0 + 9") == 9
    assert lines_of("3 + 4 = 7\n9 - 9 - 1 = -1") == [("3 + 4", 7), ("9 - 9 - 1", -1)]
    with pytest.raises(AssertionError):
        lines_of("3 + 4 = 7\n")  # a trailing empty line is not a worksheet line


def test_defaults() -> None:
    c = ArithmeticTaskConfig()
    assert (c.seed, c.min_terms, c.max_terms, c.max_value, c.sums_per_document) == (0, 2, 3, 9, 6)
    assert (c.n_pretrain, c.n_heldout, c.n_prompts, c.n_eval_prompts, c.n_demonstrations) == (10000, 200, 1500, 300, 300)


def test_same_config_same_task_other_seed_other_task(task: ArithmeticTask) -> None:
    again = generate_arithmetic_task(SMALL)
    assert again == task
    assert again.pretrain_texts == task.pretrain_texts and again.demonstrations == task.demonstrations
    other = generate_arithmetic_task(dataclasses.replace(SMALL, seed=6))
    assert other.prompts != task.prompts
    assert other.eval_prompts != task.eval_prompts
    assert other.pretrain_texts != task.pretrain_texts


def test_each_list_has_its_own_stream(task: ArithmeticTask) -> None:
    """A bigger corpus extends the old one and moves no prompt; more demonstrations move no prompt."""
    bigger = generate_arithmetic_task(dataclasses.replace(SMALL, n_pretrain=900, n_demonstrations=80))
    assert bigger.prompts == task.prompts and bigger.eval_prompts == task.eval_prompts
    assert bigger.pretrain_texts[:600] == task.pretrain_texts
    assert bigger.heldout_texts == task.heldout_texts


def test_sizes_and_no_repeats(task: ArithmeticTask) -> None:
    assert len(task.prompts) == 200 and len(set(task.prompts)) == 200
    assert len(task.eval_prompts) == 80 and len(set(task.eval_prompts)) == 80
    assert len(task.demonstrations) == 50
    assert len(task.pretrain_texts) == 600 and len(task.heldout_texts) == 100


def test_every_answer_is_right(task: ArithmeticTask) -> None:
    assert set(task.answers) == set(task.prompts) | set(task.eval_prompts)
    for prompt in [*task.prompts, *task.eval_prompts]:
        assert task.answers[prompt] == value_of(problem_of(prompt)), prompt


def test_demonstrations_are_right_and_from_training_prompts(task: ArithmeticTask) -> None:
    train = set(task.prompts)
    assert len({d.prompt for d in task.demonstrations}) == len(task.demonstrations), "no demonstration twice"
    for d in task.demonstrations:
        assert d.prompt in train
        assert re.fullmatch(r" -?\d+", d.completion), f"completion {d.completion!r} is ' <number>' and nothing else"
        assert int(d.completion) == value_of(problem_of(d.prompt))


def test_demonstrations_capped_by_training_prompts() -> None:
    small = generate_arithmetic_task(ArithmeticTaskConfig(n_pretrain=5, n_heldout=0, n_prompts=4, n_eval_prompts=2,
                                                          n_demonstrations=10))
    assert sorted(d.prompt for d in small.demonstrations) == sorted(small.prompts)
    assert small.heldout_texts == []


def test_eval_prompts_are_disjoint_from_training_prompts(task: ArithmeticTask) -> None:
    held_out = {problem_of(p) for p in task.eval_prompts}
    assert not held_out & {problem_of(p) for p in task.prompts}
    assert not held_out & {problem_of(d.prompt) for d in task.demonstrations}


def test_no_prompt_of_either_list_is_in_any_worksheet(task: ArithmeticTask) -> None:
    prompts = {problem_of(p) for p in [*task.prompts, *task.eval_prompts]}
    for texts in (task.pretrain_texts, task.heldout_texts):
        seen = corpus_problems(texts)
        assert not prompts & seen
        # the same at the level of text: no line starts with a prompt and its answer slot
        starts = tuple(p + " " for p in [*task.prompts, *task.eval_prompts])
        assert not [line for sheet in texts for line in sheet.split("\n") if line.startswith(starts)]
    # the corpus is not degenerate: it holds many distinct sums, from outside both lists
    assert len(corpus_problems(task.pretrain_texts)) > 500


def test_worksheets_have_one_to_sums_per_document_lines_uniformly(task: ArithmeticTask) -> None:
    counts = Counter(len(lines_of(sheet)) for sheet in task.pretrain_texts)
    assert set(counts) == set(range(1, SMALL.sums_per_document + 1)), counts
    expected = len(task.pretrain_texts) / SMALL.sums_per_document  # 100 each; binomial sd about 9
    for n in counts.values():
        assert n == pytest.approx(expected, abs=40), counts
    heldout_counts = Counter(len(lines_of(sheet)) for sheet in task.heldout_texts)
    assert set(heldout_counts) <= set(range(1, SMALL.sums_per_document + 1))
    assert len(heldout_counts) >= 4, "held-out worksheets vary in length too"


def test_every_worksheet_line_is_right(task: ArithmeticTask) -> None:
    n = 0
    for sheet in [*task.pretrain_texts, *task.heldout_texts]:
        for problem, result in lines_of(sheet):
            assert result == value_of(problem), f"{problem} = {result}"
            n += 1
    assert n > 2 * (len(task.pretrain_texts) + len(task.heldout_texts))  # about 3.5 lines a sheet


@pytest.mark.parametrize("per_document", [1, 3])
def test_sums_per_document_bounds_the_lines(per_document: int) -> None:
    t = generate_arithmetic_task(dataclasses.replace(SMALL, sums_per_document=per_document, n_pretrain=200,
                                                     n_heldout=20))
    counts = Counter(len(lines_of(sheet)) for sheet in [*t.pretrain_texts, *t.heldout_texts])
    assert set(counts) == set(range(1, per_document + 1)), counts
    if per_document == 1:
        assert not any("\n" in sheet for sheet in [*t.pretrain_texts, *t.heldout_texts]), "one sum per document"
    for sheet in t.pretrain_texts:
        for problem, result in lines_of(sheet):
            assert result == value_of(problem)


def test_terms_and_values_in_range() -> None:
    config = ArithmeticTaskConfig(seed=2, min_terms=3, max_terms=5, max_value=12, n_pretrain=100, n_heldout=20,
                                  n_prompts=150, n_eval_prompts=50, n_demonstrations=10)
    t = generate_arithmetic_task(config)
    problems = [problem_of(p) for p in [*t.prompts, *t.eval_prompts]]
    worked = [line for sheet in [*t.pretrain_texts, *t.heldout_texts] for line in lines_of(sheet)]
    problems += [problem for problem, _ in worked]
    lengths = Counter()
    for problem in problems:
        numbers = [int(n) for n in problem.split()[::2]]
        assert all(0 <= n <= 12 for n in numbers), problem
        lengths[len(numbers)] += 1
    assert set(lengths) <= {3, 4, 5} and lengths.most_common(1)[0][0] == 5  # uniform over sums: most have 5 terms
    assert {n for p in problems for n in map(int, p.split()[::2])} == set(range(13)), "every value 0..12 occurs"


def test_every_list_has_the_mix_of_lengths_of_the_space_of_sums() -> None:
    """A k-term sum is drawn as often as there are k-term sums, so the training prompts, the held-out prompts and the
    corpus hold the same share of 2-term sums (200 of the 4,200 distinct sums with the defaults: 4.8%)."""
    t = generate_arithmetic_task()

    def share_of_two_terms(problems: list[str]) -> float:
        return sum(len(p.split()) == 3 for p in problems) / len(problems)

    corpus = [problem for sheet in t.pretrain_texts for problem, _ in lines_of(sheet)]
    expected = 200 / 4200
    for problems in ([problem_of(p) for p in t.prompts], [problem_of(p) for p in t.eval_prompts], corpus):
        assert abs(share_of_two_terms(problems) - expected) < 0.025


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"seed": True}, r"ArithmeticTaskConfig\.seed must be an int"),
        ({"min_terms": 2.0}, r"ArithmeticTaskConfig\.min_terms must be an int"),
        ({"n_prompts": "10"}, r"ArithmeticTaskConfig\.n_prompts must be an int"),
        ({"max_value": False}, r"ArithmeticTaskConfig\.max_value must be an int"),
        ({"min_terms": 1}, r"ArithmeticTaskConfig\.min_terms must be >= 2"),
        ({"n_pretrain": 0}, r"ArithmeticTaskConfig\.n_pretrain must be >= 1"),
        ({"n_eval_prompts": -1}, r"ArithmeticTaskConfig\.n_eval_prompts must be >= 0"),
        ({"min_terms": 4, "max_terms": 3}, r"ArithmeticTaskConfig\.max_terms \(3\) must be >= min_terms \(4\)"),
        ({"sums_per_document": 0}, r"ArithmeticTaskConfig\.sums_per_document must be >= 1, got 0"),
        ({"sums_per_document": -2}, r"ArithmeticTaskConfig\.sums_per_document must be >= 1, got -2"),
        ({"sums_per_document": 2.0}, r"ArithmeticTaskConfig\.sums_per_document must be an int"),
        ({"sums_per_document": True}, r"ArithmeticTaskConfig\.sums_per_document must be an int"),
        ({"sums_per_document": "3"}, r"ArithmeticTaskConfig\.sums_per_document must be an int"),
        ({"sums_per_document": math.nan}, r"sums_per_document must be a finite number"),
        # 8 two-term sums of 0..1: at most 4 prompts in all
        ({"max_value": 1, "max_terms": 2, "n_prompts": 4, "n_eval_prompts": 1},
         r"5 distinct prompts.*only 8 possible.*raise max_value or max_terms"),
        ({"max_value": 1, "max_terms": 2, "n_prompts": 5, "n_eval_prompts": 0}, r"5 distinct prompts.*only 8 possible"),
        # 8 two-term and 4 * 8 three-term sums: at most 20
        ({"max_value": 1, "max_terms": 3, "n_prompts": 16, "n_eval_prompts": 5}, r"21 distinct prompts.*only 40 possible"),
        # the defaults' space: 2 * 10**2 + 4 * 10**3 = 4200 sums, at most 2100 prompts
        ({"n_prompts": 1801}, r"2101 distinct prompts.*only 4200 possible"),
        ({"n_eval_prompts": 601}, r"2101 distinct prompts.*only 4200 possible"),
    ],
)
def test_config_validation_names_the_field(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ArithmeticTaskConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [
    {"max_value": 1, "max_terms": 2, "n_prompts": 4, "n_eval_prompts": 0},
    {"max_value": 1, "max_terms": 2, "n_prompts": 3, "n_eval_prompts": 1},
    {"max_value": 1, "max_terms": 3, "n_prompts": 15, "n_eval_prompts": 5},
    {"n_prompts": 1800, "n_eval_prompts": 300},
    {"sums_per_document": 1},
])
def test_config_at_the_limits_is_accepted(kwargs: dict) -> None:
    config = ArithmeticTaskConfig(**kwargs)
    assert all(getattr(config, k) == v for k, v in kwargs.items())


def test_smallest_space_that_fits_generates() -> None:
    """Half of the 8 two-term sums of 0..1 may be asked for; generation finds them all, each once, and the
    worksheets are made of the other half only."""
    t = generate_arithmetic_task(ArithmeticTaskConfig(max_value=1, max_terms=2, n_prompts=3, n_eval_prompts=1,
                                                      n_pretrain=20, n_heldout=5, n_demonstrations=3))
    asked = {problem_of(p) for p in [*t.prompts, *t.eval_prompts]}
    assert len(asked) == 4
    every = {f"{a} {op} {b}" for a in "01" for op in "+-" for b in "01"}
    assert asked < every
    assert corpus_problems(t.pretrain_texts) == every - asked


def test_gold_is_a_new_exact_whole_numeric_checker_each_time(task: ArithmeticTask) -> None:
    first, second = task.gold, task.gold
    assert isinstance(first, AnswerChecker) and isinstance(second, AnswerChecker)
    assert first is not second, "task.gold is not cached: each caller gets its own checker"
    for gold in (first, second):
        assert (gold.match, gold.rule, gold.rel_tol) == ("numeric", "whole", 0.0)
        assert gold.verifies_answers is True
        assert set(gold.answers) == set(task.prompts) | set(task.eval_prompts)
    assert first.fingerprint() == second.fingerprint()


def test_gold_pays_the_number_and_nothing_else(task: ArithmeticTask) -> None:
    gold = task.gold
    prompt = task.prompts[0]
    a = value_of(problem_of(prompt))
    next_line = task.pretrain_texts[0].split("\n")[0]  # what a model trained on worksheets writes after its answer
    completions = [f" {a}", f"{a}", f"{a}.0", f" {a} \n",  # right
                   f" {a}\n{next_line}", f" {a}\n3 + 4 = 7", f" {a} = {a}", f"{prompt} {a}",  # went on: wrong
                   f" {a + 1}", f" {a - 10}", "", "   ", "fourteen", f"{a} apples"]
    scores = gold([prompt] * len(completions), completions)
    assert scores.tolist() == [1.0] * 4 + [0.0] * 10
    stats = gold.last_stats
    assert (stats.n, stats.correct, stats.unextractable) == (14, 4, 2)
    # rule="whole": the whole completion is the answer, so a worksheet's next line is part of it (and it is wrong)
    assert gold.last_checks[5].extracted == f"{a}\n3 + 4 = 7" and not gold.last_checks[5].correct
    assert gold.last_checks[12].extracted == "fourteen" and not gold.last_checks[12].correct


def test_two_checkers_keep_their_own_last_checks(task: ArithmeticTask) -> None:
    one, two = task.gold, task.gold
    p, q = task.prompts[0], task.eval_prompts[0]
    one([p], [f" {task.answers[p]}"])
    two([q, q, q], [" x", "", f" {task.answers[q] + 1}"])
    assert len(one.last_checks) == 1 and one.last_checks[0].correct
    assert (one.last_stats.n, one.last_stats.correct) == (1, 1)
    assert len(two.last_checks) == 3 and not any(c.correct for c in two.last_checks)
    assert (two.last_stats.n, two.last_stats.correct, two.last_stats.unextractable) == (3, 0, 1)


def test_gold_knows_the_eval_prompts_and_not_others(task: ArithmeticTask) -> None:
    prompts = list(task.eval_prompts[:20])
    right = [f" {value_of(problem_of(p))}" for p in prompts]
    assert task.gold(prompts, right).tolist() == [1.0] * 20
    with pytest.raises(KeyError, match="no reference answer"):
        task.gold(["1000 + 1 ="], [" 1001"])


def test_negative_answers_are_checked() -> None:
    t = generate_arithmetic_task(ArithmeticTaskConfig(seed=0, n_pretrain=10, n_heldout=0, n_prompts=200,
                                                      n_eval_prompts=0, n_demonstrations=0))
    negative = [p for p in t.prompts if t.answers[p] < 0]
    assert negative, "with '-' between numbers some sums are negative"
    p = negative[0]
    assert t.gold([p, p], [f" {t.answers[p]}", f" {-t.answers[p]}"]).tolist() == [1.0, 0.0]


def test_gold_is_exact_for_large_answers() -> None:
    """rel_tol=0: a relative tolerance of 1e-6 would pay 3745008 for 3745007."""
    t = generate_arithmetic_task(ArithmeticTaskConfig(max_value=3_000_000, n_pretrain=10, n_heldout=0, n_prompts=5,
                                                      n_eval_prompts=0, n_demonstrations=0))
    p = max(t.prompts, key=lambda q: abs(t.answers[q]))
    a = value_of(problem_of(p))
    assert abs(a) > 1_000_000
    assert t.gold([p, p, p, p], [f" {a}", f" {a + 1}", f" {a - 1}", f" {a}.0"]).tolist() == [1.0, 0.0, 0.0, 1.0]
    exact = AnswerChecker({"x =": 3745007}, match="numeric", rule="whole", rel_tol=t.gold.rel_tol)
    assert exact(["x =", "x ="], [" 3745007", " 3745008"]).tolist() == [1.0, 0.0]


def test_is_a_task(task: ArithmeticTask) -> None:
    assert isinstance(task, llm_gym.Task)
    assert llm_gym.generate_arithmetic_task is generate_arithmetic_task
    assert llm_gym.ArithmeticTaskConfig is ArithmeticTaskConfig
    assert isinstance(generate_arithmetic_task(ArithmeticTaskConfig(n_pretrain=2, n_prompts=2, n_eval_prompts=1,
                                                                    n_heldout=1, n_demonstrations=1)), llm_gym.Task)


def test_doctests() -> None:
    from llm_gym.tasks import arithmetic

    result = doctest.testmod(arithmetic)
    assert result.attempted > 0 and result.failed == 0
