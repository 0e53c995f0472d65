"""The built-in verifiable task: chain sums ("7 - 2 + 9 =") whose answers a checker verifies.

Reinforcement learning from verifiable rewards in miniature (DeepSeekMath's GRPO on GSM8K,
Shao et al. 2024; reasoning-gym's `chain_sum`, of which this is a small, dependency-free
copy). A prompt is a sum of `min_terms`..`max_terms` whole numbers from 0 to `max_value`
joined by ``+`` and ``-``, written as ``"3 + 4 - 2 ="``; the right completion is the result,
``" 5"``, and nothing else: the gold judge is an `AnswerChecker` that knows every prompt's
answer and compares the *whole* completion with it as a number.

The pretraining corpus is worksheets: 1..`sums_per_document` sums with their results, one per
line, as arithmetic appears in text. So the pretrained model, having answered, usually goes on
to the next line's sum; the SFT demonstrations (the answer, then end of text) teach it to stop,
and its arithmetic is right only some of the time. Whatever a verifier that pays exactly the
right answer can teach it (to stop where it should, to prefer the answers it gets right) is the
room the task leaves for RL.

No worksheet holds a training or a held-out prompt, and the two lists are disjoint: the RL runs
train on sums the model has never read, and are evaluated on others, so held-out accuracy
measures arithmetic, not recall.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from llm_gym.core.answers import AnswerChecker
from llm_gym.core.task import Demonstration
from llm_gym.infra.configio import check_finite

__all__ = ["ArithmeticTask", "ArithmeticTaskConfig", "generate_arithmetic_task"]


@dataclass(frozen=True)
class ArithmeticTaskConfig:
    """Sizes, difficulty and seed of the built-in chain-sum task (the same config always gives the same task)."""

    seed: int = 0
    """Seed from which every list is derived, each from its own random stream. The worksheets leave out every prompt,
    so `n_prompts` and `n_eval_prompts` (and `seed` and the difficulty) change the corpus, hence the built-in model
    pretrained on it; `n_demonstrations` changes only the demonstrations."""
    min_terms: int = 2
    """Fewest numbers in a sum."""
    max_terms: int = 3
    """Most numbers in a sum."""
    max_value: int = 9
    """Each number is drawn from 0..max_value (each sum uniformly among all distinct sums of min..max terms)."""
    sums_per_document: int = 6
    """Each pretraining document is a worksheet of 1..sums_per_document sums, one per line (1 = one sum each)."""
    n_pretrain: int = 10000
    """Worksheets the built-in model is pretrained on."""
    n_heldout: int = 200
    """Worksheets from a separate stream, for held-out perplexity."""
    n_prompts: int = 1500
    """Training prompts (RL rollouts)."""
    n_eval_prompts: int = 300
    """Held-out prompts: sums in none of the other lists."""
    n_demonstrations: int = 300
    """SFT demonstrations (prompt and right answer), drawn from the training prompts."""

    def __post_init__(self) -> None:
        check_finite(self)
        low = {"seed": None, "min_terms": 2, "max_terms": 2, "max_value": 1, "sums_per_document": 1, "n_pretrain": 1, "n_heldout": 0,
               "n_prompts": 1, "n_eval_prompts": 0, "n_demonstrations": 0}
        for name, least in low.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"ArithmeticTaskConfig.{name} must be an int, got {value!r}")
            if least is not None and value < least:
                raise ValueError(f"ArithmeticTaskConfig.{name} must be >= {least}, got {value}")
        if self.max_terms < self.min_terms:
            raise ValueError(f"ArithmeticTaskConfig.max_terms ({self.max_terms}) must be >= min_terms ({self.min_terms})")
        distinct = sum(_sums_of(k, self.max_value) for k in range(self.min_terms, self.max_terms + 1))
        needed = self.n_prompts + self.n_eval_prompts
        if needed > distinct // 2:
            raise ValueError(f"ArithmeticTaskConfig: {needed} distinct prompts asked of only {distinct} possible sums; "
                             "raise max_value or max_terms, or ask for fewer prompts")


def _sums_of(terms: int, max_value: int) -> int:
    """How many distinct sums of `terms` numbers from 0..max_value there are (each of the terms - 1 signs + or -)."""
    return 2 ** (terms - 1) * (max_value + 1) ** terms


def _answer(problem: str) -> int:
    """The value of ``"a + b - c"`` (only + and - between whole numbers)."""
    tokens = problem.split()
    total = int(tokens[0])
    for op, number in zip(tokens[1::2], tokens[2::2]):
        total = total + int(number) if op == "+" else total - int(number)
    return total


def _problems(rng: random.Random, config: ArithmeticTaskConfig) -> Iterator[str]:
    """An endless stream of random sums ``"a + b - c"``, uniform over every distinct sum (so a k-term sum is drawn as
    often as there are k-term sums: every list, and every split of one, has the same mix of lengths)."""
    sizes = range(config.min_terms, config.max_terms + 1)
    weights = [_sums_of(k, config.max_value) for k in sizes]
    while True:
        k = rng.choices(sizes, weights)[0]
        parts = [str(rng.randint(0, config.max_value))]
        for _ in range(k - 1):
            parts += [rng.choice("+-"), str(rng.randint(0, config.max_value))]
        yield " ".join(parts)


def _distinct(stream: Iterator[str], n: int, exclude: set[str]) -> list[str]:
    """`n` problems from `stream`, none in `exclude` and none twice (adds them to `exclude`)."""
    out: list[str] = []
    while len(out) < n:
        problem = next(stream)
        if problem not in exclude:
            exclude.add(problem)
            out.append(problem)
    return out


@dataclass(frozen=True)
class ArithmeticTask:
    """Everything the chain-sum task provides (a `Task`); build it with `generate_arithmetic_task`."""

    config: ArithmeticTaskConfig
    prompts: list[str]
    """Training prompts, ``"a + b - c ="``."""
    eval_prompts: list[str]
    """Held-out prompts, in no other list and not in the corpus."""
    demonstrations: list[Demonstration]
    """Training prompts with their right answers (``" 14"``)."""
    pretrain_texts: list[str]
    """Worksheets: 1..`sums_per_document` lines ``"a + b - c = r"``."""
    heldout_texts: list[str]
    """Worksheets from a separate stream, for perplexity."""
    answers: Mapping[str, int] = field(repr=False)
    """Every prompt's (training and held-out) right answer."""

    @property
    def gold(self) -> AnswerChecker:
        """1.0 when the whole completion is the prompt's answer as a number (``" 14"``, ``"14.0"``; not
        ``" 14\n3 + 4 = 7"``, which went on to the next line of a worksheet), else 0.

        Exact (``rel_tol=0``): a relative tolerance would pay ``3745008`` for ``3745007``. A new checker on each
        access, so that two environments over one task keep their own `last_checks`."""
        return AnswerChecker(self.answers, match="numeric", rule="whole", rel_tol=0.0)


def generate_arithmetic_task(config: ArithmeticTaskConfig | None = None) -> ArithmeticTask:
    """Generate the chain-sum task from `config` (defaults: `ArithmeticTaskConfig`); well under a second.

    >>> task = generate_arithmetic_task(ArithmeticTaskConfig(n_pretrain=2, n_prompts=2, n_eval_prompts=1))
    >>> p = task.prompts[0]
    >>> p.endswith(" ="), task.gold([p], [" " + str(task.answers[p])]).tolist()
    (True, [1.0])
    """
    config = ArithmeticTaskConfig() if config is None else config

    def stream(name: str) -> random.Random:  # str seeds are hashed with SHA-512: stable across processes
        return random.Random(f"llm_gym.arithmetic/{config.seed}/{name}")

    # every prompt, held-out or training, goes into `asked`; the corpus holds none of them, so the RL runs train on
    # sums the model has not read, as it is evaluated
    asked: set[str] = set()
    eval_problems = _distinct(_problems(stream("eval_prompts"), config), config.n_eval_prompts, asked)
    train_problems = _distinct(_problems(stream("prompts"), config), config.n_prompts, asked)

    def worksheets(name: str, n: int) -> list[str]:
        rng, problems, texts = stream(name), _problems(stream(name + "/problems"), config), []
        while len(texts) < n:
            sheet: list[str] = []
            for _ in range(rng.randint(1, config.sums_per_document)):
                problem = next(problems)
                while problem in asked:
                    problem = next(problems)
                sheet.append(f"{problem} = {_answer(problem)}")
            texts.append("\n".join(sheet))
        return texts

    demo_rng = stream("demonstrations")
    demo_problems = demo_rng.sample(train_problems, min(config.n_demonstrations, len(train_problems)))
    return ArithmeticTask(
        config=config,
        prompts=[f"{p} =" for p in train_problems],
        eval_prompts=[f"{p} =" for p in eval_problems],
        demonstrations=[Demonstration(f"{p} =", f" {_answer(p)}") for p in demo_problems],
        pretrain_texts=worksheets("pretrain", config.n_pretrain),
        heldout_texts=worksheets("heldout", config.n_heldout),
        answers={f"{p} =": _answer(p) for p in eval_problems + train_problems},
    )
