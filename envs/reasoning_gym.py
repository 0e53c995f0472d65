"""`llm_gym/ReasoningGym-v0`: reasoning-gym's procedural problems as a prompt bandit with a verifiable reward.

reasoning-gym (Stojanovski et al. 2025, https://github.com/open-thought/reasoning-gym; ``pip install
llm-gym[reasoning]``) generates 100+ task families (chain sums, arithmetic, letter counting, word
sorting, puzzles...), each item a dict with a ``question``, a reference ``answer`` and ``metadata``,
and each dataset with its own ``score_answer(answer, entry) -> [0, 1]``. This environment hands
out the questions as prompts and pays that score on the answer extracted from the completion,
which is RL from verifiable rewards as DeepSeekMath's GRPO does it on GSM8K/MATH.

    >>> import gymnasium, llm_gym
    >>> env = gymnasium.make("llm_gym/ReasoningGym-v0", dataset="chain_sum", size=50, seed=0, max_terms=3)
    >>> vec = gymnasium.make_vec("llm_gym/ReasoningGym-v0", num_envs=8, group_size=4, dataset="chain_sum")

Data. ``dataset="chain_sum"`` with ``**task_config`` (that dataset's config fields, e.g.
``max_terms=3``), or a weighted mixture: ``dataset={"chain_sum": {"weight": 2, "max_terms": 3},
"letter_counting": {}}`` (reasoning-gym's own ``composite`` dataset draws each item's family by
weight; a list of names with ``weights=[...]`` works too). The training prompts are items
``0..size-1`` of the dataset generated with `seed`; the held-out prompts (`task.eval_prompts`) are
``eval_size`` items generated with `eval_seed`, less any whose question is also a training
question (small problem spaces repeat; `eval_overlap` says how many were dropped).

Prompts. Each prompt is the item's question, a newline and an instruction saying where the answer
goes, matching the extraction rule (`DEFAULT_INSTRUCTIONS`; ``instruction=""`` for none, or your own
text). Extraction (`llm_gym.core.answers.extract_answer`): ``rule="marker"`` (the default: the text
after the last ``Answer:``), ``"tag"`` (the last ``<answer>...</answer>``, reasoning-gym's own
format) or ``"whole"`` (the whole completion).

Reward and info. The reward is `ReasoningGymScorer`: reasoning-gym's ``score_answer`` on the
extracted answer, 0 when nothing can be extracted (counted, not raised). It is also the task's
`gold` (``verifies_answers = True``: evaluation reports accuracy and pass@k), and is reported in
``info["gold"]``; pass ``reward_fn=`` to pay another reward (a learned one) while the score stays
the judge. ``info`` carries, for each completion, ``answer`` (the reference), ``extracted`` (None
when unextractable), ``unextractable`` and ``dataset`` (the family the item came from); in the
vector form these are arrays.

Errors. Without reasoning-gym: an ImportError with the install command. An unknown dataset name:
a ValueError listing close names. A config the dataset refuses: its own message, naming the field
(an unknown field lists the dataset's fields).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np

from llm_gym.core.answers import RULES, extract_answer
from llm_gym.core.reward import RewardFn
from llm_gym.core.task import PromptTask

from .prompt_bandit import PromptBanditEnv, PromptBanditVecEnv

__all__ = ["DEFAULT_INSTRUCTIONS", "ReasoningGymEnv", "ReasoningGymScorer", "ReasoningGymVecEnv", "ScoredAnswer",
           "build_reasoning_task", "dataset_names"]

DEFAULT_INSTRUCTIONS: dict[str, str] = {
    "marker": "Give your final answer on the last line, after '{marker}'.",
    "tag": "Give your final answer between <{tag}> and </{tag}>.",
    "whole": "Reply with the final answer only.",
}
"""The instruction appended to each question, per extraction rule (``{marker}``/``{tag}`` filled in), so the model
is told where the answer goes."""

INSTALL_HINT = "pip install reasoning-gym (or pip install llm-gym[reasoning])"
_ENV_OPTIONS = ("dataset", "size", "seed", "eval_size", "eval_seed", "weights", "rule", "marker", "tag", "instruction",
                "reward_fn", "max_completion_chars", "render_mode", "num_envs", "group_size")


def _reasoning_gym() -> ModuleType:
    """The reasoning_gym package, imported only when an environment is made (``import llm_gym`` stays light)."""
    try:
        import reasoning_gym
    except ImportError as exc:
        raise ImportError(f"llm_gym/ReasoningGym-v0 needs the reasoning-gym package ({exc}); install it: "
                          f"{INSTALL_HINT}") from exc
    return reasoning_gym


def _registry() -> dict[str, tuple[type, type]]:
    _reasoning_gym()
    from reasoning_gym.factory import DATASETS
    return DATASETS


def dataset_names() -> list[str]:
    """The reasoning-gym datasets this environment can be made from (its registry, less ``composite``)."""
    return sorted(name for name in _registry() if name != "composite")


def _check_name(name: Any) -> str:
    names = dataset_names()
    if not isinstance(name, str) or name not in names:
        if name == "composite":
            raise ValueError('for a mixture give dataset={"chain_sum": {"weight": 2}, "letter_counting": {}} (or a '
                             'list of names with weights=[...]), not dataset="composite"')
        close = difflib.get_close_matches(str(name), names, n=5, cutoff=0.5)
        hint = f"did you mean {' or '.join(map(repr, close))}?" if close else f"the {len(names)} datasets are {names}"
        raise ValueError(f"reasoning-gym has no dataset {name!r}; {hint}")
    return name


def _check_config(name: str, config: Mapping[str, Any]) -> None:
    """Build `name`'s config dataclass from `config` now, so a refused field is reported with the dataset's fields."""
    config_cls = _registry()[name][1]
    fields = [f.name for f in dataclasses.fields(config_cls)]
    unknown = [k for k in config if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, [*fields, *_ENV_OPTIONS], n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise ValueError(f"reasoning-gym dataset {name!r} has no config field {key!r}; {hint}its fields are {fields} "
                         f"({config_cls.__name__}); the environment's own options are {list(_ENV_OPTIONS)}")
    try:
        cfg = config_cls(**config)
        if callable(getattr(cfg, "validate", None)):
            cfg.validate()
    except (AssertionError, TypeError, ValueError) as exc:  # reasoning-gym validates with assert
        # the field the message is about is the first one it names ("max_terms must be >= min_terms")
        hits = [(m.start(), k) for k in config if (m := re.search(rf"\b{re.escape(k)}\b", str(exc)))]
        which = f"field {min(hits)[1]!r}" if hits else f"config {dict(config)}"
        raise ValueError(f"reasoning-gym dataset {name!r} refused its {which}: {exc or type(exc).__name__} "
                         f"({config_cls.__name__}; given {dict(config)})") from exc


class _Spec(NamedTuple):
    name: str
    weight: float
    config: dict[str, Any]


def _specs(dataset: str | Sequence[str] | Mapping[str, Mapping[str, Any]], weights: Sequence[float] | None,
           task_config: Mapping[str, Any]) -> list[_Spec]:
    """The datasets asked for, each with its weight and config, checked."""
    if isinstance(dataset, str):
        if weights is not None:
            raise ValueError("weights are for a mixture of several datasets: give dataset as a list of names or a "
                             "table name -> config")
        specs = [_Spec(_check_name(dataset), 1.0, dict(task_config))]
    else:
        if task_config:
            raise ValueError(f"with several datasets, give each one's config in its entry: dataset={{'chain_sum': "
                             f"{{'weight': 1, ...}}}}, not as keywords ({sorted(task_config)})")
        if isinstance(dataset, Mapping):
            items = [(k, dict(v or {})) for k, v in dataset.items()]
            if any(not isinstance(v, Mapping) for v in dataset.values() if v is not None):
                raise ValueError("dataset as a table maps each dataset name to its config, e.g. {'chain_sum': "
                                 "{'weight': 2, 'max_terms': 3}}")
        elif isinstance(dataset, Sequence) and dataset:
            items = [(k, {}) for k in dataset]
        else:
            raise ValueError(f"dataset must be a reasoning-gym dataset name, a list of names or a table name -> config,"
                             f" got {dataset!r}")
        if weights is not None:
            if len(weights) != len(items) or any(isinstance(c, Mapping) and "weight" in c for _, c in items):
                raise ValueError(f"weights must give one weight per dataset ({len(items)}) and the entries no "
                                 "'weight' of their own")
            for (_, cfg), w in zip(items, weights, strict=True):
                cfg["weight"] = w
        specs = []
        for name, cfg in items:
            weight = cfg.pop("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
                raise ValueError(f"the weight of dataset {name!r} must be a positive number, got {weight!r}")
            specs.append(_Spec(_check_name(name), float(weight), cfg))
        if len({s.name for s in specs}) != len(specs):
            raise ValueError(f"a dataset is named twice in {[s.name for s in specs]}; name each once")
    for s in specs:
        _check_config(s.name, {k: v for k, v in s.config.items() if k not in ("seed", "size")} if len(specs) > 1
                      else s.config)
    return specs


def _make(specs: list[_Spec], size: int, seed: int) -> Any:
    """The reasoning-gym dataset (a composite for several) of `size` items generated with `seed`."""
    rg = _reasoning_gym()
    if len(specs) == 1:
        (spec,) = specs
        return rg.create_dataset(spec.name, **{**spec.config, "size": size, "seed": seed})
    from reasoning_gym.composite import DatasetSpec
    return rg.create_dataset("composite", size=size, seed=seed,
                             datasets=[DatasetSpec(s.name, s.weight, dict(s.config)) for s in specs])


class ScoredAnswer(NamedTuple):
    """What the scorer found for one completion."""

    extracted: str | None
    """The extracted answer; None when there was none (score 0)."""
    reference: str
    """The item's reference answer (one right answer: `score_answer` may accept others)."""
    score: float
    """reasoning-gym's score in [0, 1] (1 = right; some datasets give partial credit)."""
    dataset: str
    """The reasoning-gym dataset the item came from."""
    error: str | None = None
    """The exception `score_answer` raised on this answer, if any (scored 0)."""


class ScoreStats(NamedTuple):
    """Counts over the last batch scored."""

    n: int
    correct: int
    """Completions scored 1."""
    unextractable: int
    errors: int
    """Answers `score_answer` raised on (scored 0)."""


def _describe_source(source: Any) -> list[Any]:
    """A reasoning-gym dataset as stable, JSON-able data: its class and its config's fields."""
    config = getattr(source, "config", None)
    fields = dataclasses.asdict(config) if dataclasses.is_dataclass(config) and not isinstance(config, type) else None
    return [f"{type(source).__module__}.{type(source).__qualname__}", fields]


class ReasoningGymScorer:
    """A `RewardFn`: reasoning-gym's ``score_answer(extracted_answer, entry)`` for each prompt's item.

    Args:
        entries: prompt -> (the reasoning-gym dataset that made the item, the item).
        rule, marker, tag: how the answer is extracted (`llm_gym.core.answers.extract_answer`).

    `last_checks` holds the last batch's `ScoredAnswer` per completion, `last_stats` its counts. A
    completion's answer never raises: nothing to extract scores 0, and so does an answer that
    ``score_answer`` raises on (counted in `last_stats.errors`).
    """

    verifies_answers = True
    """Its scores say whether the answer is right: evaluation reports accuracy and pass@k for it."""

    def __init__(self, entries: Mapping[str, tuple[Any, dict[str, Any]]], *, rule: str = "marker",
                 marker: str = "Answer:", tag: str = "answer") -> None:
        extract_answer("", rule, marker=marker, tag=tag)  # a bad rule, marker or tag fails here
        self.entries = dict(entries)
        self.rule, self.marker, self.tag = rule, marker, tag
        self.last_checks: list[ScoredAnswer] = []
        self.last_stats = ScoreStats(0, 0, 0, 0)

    def fingerprint(self) -> str:
        """The items (their datasets and entries) and the extraction settings as a hash, for run fingerprints: the same
        in every process for the same items (a dataset by its class and config, never by its address in memory)."""
        items = sorted((p, _describe_source(s), e) for p, (s, e) in self.entries.items())
        blob = json.dumps([[self.rule, self.marker, self.tag], items], ensure_ascii=False, default=str, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def _score(self, prompt: str, completion: str) -> ScoredAnswer:
        source, entry = self.entries[prompt]
        name = str(entry.get("metadata", {}).get("source_dataset", "?"))
        extracted = extract_answer(completion, self.rule, marker=self.marker, tag=self.tag)
        if extracted is None:
            return ScoredAnswer(None, str(entry["answer"]), 0.0, name)
        try:
            score = float(source.score_answer(extracted, entry))
        except Exception as exc:  # a scorer choking on odd model output costs the answer, not the batch
            return ScoredAnswer(extracted, str(entry["answer"]), 0.0, name, f"{type(exc).__name__}: {exc}")
        score = min(max(score, 0.0), 1.0) if math.isfinite(score) else 0.0
        return ScoredAnswer(extracted, str(entry["answer"]), score, name)

    def check(self, prompts: Sequence[str], completions: Sequence[str]) -> list[ScoredAnswer]:
        """Each completion's `ScoredAnswer` (kept as `last_checks`, counts in `last_stats`).

        Raises:
            KeyError: a prompt that is none of this scorer's items (a setup error).
        """
        missing = [p for p in prompts if p not in self.entries]
        if missing:
            raise KeyError(f"no reasoning-gym item for prompt {missing[0]!r} ({len(missing)} of {len(prompts)} "
                           "prompts); score the prompts the environment handed out")
        checks = [self._score(p, c) for p, c in zip(prompts, completions, strict=True)]
        self.last_checks = checks
        self.last_stats = ScoreStats(len(checks), sum(c.score >= 1.0 for c in checks),
                                     sum(c.extracted is None for c in checks), sum(c.error is not None for c in checks))
        return checks

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """reasoning-gym's score of each completion's extracted answer (0 when there is none)."""
        return np.array([c.score for c in self.check(prompts, completions)], dtype=np.float64)

    def __repr__(self) -> str:
        return f"ReasoningGymScorer({len(self.entries)} items, rule={self.rule!r})"


class ReasoningTask(NamedTuple):
    """What `build_reasoning_task` makes: the prompts, the held-out prompts and the scorer of both."""

    prompts: list[str]
    eval_prompts: list[str]
    scorer: ReasoningGymScorer
    eval_overlap: int
    """Held-out items dropped because their question is also a training question."""


def build_reasoning_task(
    dataset: str | Sequence[str] | Mapping[str, Mapping[str, Any]] = "chain_sum", size: int = 200, seed: int = 0, *,
    eval_size: int | None = None, eval_seed: int | None = None, weights: Sequence[float] | None = None,
    rule: str = "marker", marker: str = "Answer:", tag: str = "answer", instruction: str | None = None,
    **task_config: Any,
) -> ReasoningTask:
    """Generate the training and held-out items and their scorer (the arguments are the environment's).

    Raises:
        ImportError: reasoning-gym is not installed (with the install command).
        ValueError: an unknown dataset (with close names), a refused config (naming the field), bad sizes or rule.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {list(RULES)}, got {rule!r}")
    for what, value in (("size", size), ("eval_size", eval_size if eval_size is not None else 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{what} must be a positive int (how many items to generate), got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    specs = _specs(dataset, weights, task_config)
    # far from the training seeds of neighbouring runs (seed 0, 1, 2...), so one run's held-out set is no other's
    # training set
    eval_seed = seed + 1_000_003 if eval_seed is None else eval_seed
    eval_size = min(size, 100) if eval_size is None else eval_size
    text = DEFAULT_INSTRUCTIONS[rule].format(marker=marker, tag=tag) if instruction is None else instruction

    def prompt(item: dict[str, Any]) -> str:
        question = str(item["question"]).rstrip()
        return f"{question}\n{text}" if text else question

    entries: dict[str, tuple[Any, dict[str, Any]]] = {}
    prompts = []
    train = _make(specs, size, seed)
    for i in range(size):
        item = train[i]
        p = prompt(item)
        prompts.append(p)
        entries.setdefault(p, (train, item))  # a repeated question has the same answer: its first item scores it
    held_out = _make(specs, eval_size, eval_seed)
    eval_prompts, overlap = [], 0
    for i in range(eval_size):
        item = held_out[i]
        p = prompt(item)
        if p in entries and entries[p][0] is train:
            overlap += 1
            continue
        eval_prompts.append(p)
        entries.setdefault(p, (held_out, item))
    scorer = ReasoningGymScorer(entries, rule=rule, marker=marker, tag=tag)
    return ReasoningTask(prompts, eval_prompts, scorer, overlap)


class ReasoningGymEnv(PromptBanditEnv):
    """One reasoning-gym problem per episode, paid reasoning-gym's score of the extracted answer.

    Args:
        dataset: a reasoning-gym dataset name, a list of names (with `weights`), or a table name -> config
            (each config may hold a ``weight``).
        size: training items; seed: the seed they are generated with.
        eval_size: held-out items (default ``min(size, 100)``); eval_seed: their seed (default ``seed + 1000003``).
        weights: one per dataset, for a list of names.
        rule, marker, tag: how the answer is extracted (see the module docstring).
        instruction: appended to each question; None = the rule's default (`DEFAULT_INSTRUCTIONS`), "" = none.
        reward_fn: the reward paid; reasoning-gym's score (the `gold`) by default.
        max_completion_chars, render_mode: as in `PromptBanditEnv`.
        **task_config: the dataset's own config fields (one dataset only), e.g. ``max_terms=3`` for chain_sum.
    """

    def __init__(
        self,
        dataset: str | Sequence[str] | Mapping[str, Mapping[str, Any]] = "chain_sum",
        size: int = 200,
        seed: int = 0,
        *,
        eval_size: int | None = None,
        eval_seed: int | None = None,
        weights: Sequence[float] | None = None,
        rule: str = "marker",
        marker: str = "Answer:",
        tag: str = "answer",
        instruction: str | None = None,
        reward_fn: RewardFn | str | None = None,
        max_completion_chars: int = 1024,
        render_mode: str | None = None,
        **task_config: Any,
    ) -> None:
        built = build_reasoning_task(dataset, size, seed, eval_size=eval_size, eval_seed=eval_seed, weights=weights,
                                     rule=rule, marker=marker, tag=tag, instruction=instruction, **task_config)
        super().__init__(built.prompts, reward_fn=built.scorer if reward_fn is None else reward_fn,
                         gold_fn=built.scorer, max_completion_chars=max_completion_chars, render_mode=render_mode)
        self.scorer, self.eval_overlap = built.scorer, built.eval_overlap
        self.task = PromptTask(prompts=built.prompts, eval_prompts=built.eval_prompts, gold=built.scorer)


class ReasoningGymVecEnv(PromptBanditVecEnv):
    """Batched form of `ReasoningGymEnv` (`gymnasium.make_vec("llm_gym/ReasoningGym-v0", num_envs=...)`).

    ``info["answer"]``, ``["extracted"]``, ``["unextractable"]`` and ``["dataset"]`` are arrays over the
    completions just scored; ``group_size`` is `PromptBanditVecEnv`'s (G completions per prompt, for GRPO/RLOO).
    """

    def __init__(
        self,
        dataset: str | Sequence[str] | Mapping[str, Mapping[str, Any]] = "chain_sum",
        size: int = 200,
        seed: int = 0,
        num_envs: int = 16,
        *,
        group_size: int = 1,
        eval_size: int | None = None,
        eval_seed: int | None = None,
        weights: Sequence[float] | None = None,
        rule: str = "marker",
        marker: str = "Answer:",
        tag: str = "answer",
        instruction: str | None = None,
        reward_fn: RewardFn | str | None = None,
        max_completion_chars: int = 1024,
        **task_config: Any,
    ) -> None:
        built = build_reasoning_task(dataset, size, seed, eval_size=eval_size, eval_seed=eval_seed, weights=weights,
                                     rule=rule, marker=marker, tag=tag, instruction=instruction, **task_config)
        super().__init__(built.prompts, reward_fn=built.scorer if reward_fn is None else reward_fn,
                         num_envs=num_envs, gold_fn=built.scorer, max_completion_chars=max_completion_chars,
                         group_size=group_size)
        self.scorer, self.eval_overlap = built.scorer, built.eval_overlap
        self.task = PromptTask(prompts=built.prompts, eval_prompts=built.eval_prompts, gold=built.scorer)
