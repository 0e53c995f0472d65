"""Prompt-bandit environments: a prompt is a one-step episode, a completion is the action.

`PromptBanditEnv` is a plain `gymnasium.Env`: `reset` hands out a prompt from a dataset,
`step(completion)` pays `reward_fn([prompt], [completion])[0]` and ends the episode with
`terminated=True, truncated=False` (a bandit has no time limit; Gymnasium's checker
insists on the difference). `PromptBanditVecEnv` is the batched form for agents that
generate many completions at once: a `gymnasium.vector.VectorEnv` whose `step` scores the
whole batch in one `reward_fn` call (a reward model wants batches) and, since every
episode ends after one step, immediately hands out the next prompts (`SAME_STEP` autoreset).

Spaces. Observations and actions are `gymnasium.spaces.Text`. Gymnasium's default Text
charset is alphanumeric with `min_length=1`, which rejects any prompt with a space, so
the charset here is printable ASCII plus every character that occurs in the dataset's
prompts, and `max_length` is the longest prompt. The action space uses the same charset,
`min_length=0` (an empty completion is a legal answer: a model can emit EOS at once) and
`max_length=max_completion_chars`. It describes what a random agent samples; `step`
accepts any `str` (a model can produce characters outside it, and the reward function,
not the space, judges them).

Async vectorisation. `gymnasium.make_vec(..., vectorization_mode="async")` needs
`vector_kwargs={"shared_memory": False}`: Gymnasium 1.4's `AsyncVectorEnv` decodes `Text`
observations from its shared memory once, when it is created, so with shared memory every
reset and step returns the same empty strings. The observation space here refuses shared
memory with that fix in the message, before any worker starts. (The batched form, a plain
`make_vec`, scores a batch in one reward call and needs no worker processes.)

The environment pays the reward function's score only: KL penalties and pretraining
terms depend on the policy and belong to the agent (as in Ziegler et al. 2019 and InstructGPT,
where the KL penalty is part of the RL objective, not of the reward model). If a `gold_fn` is
given (the built-in gold scorer plays the human), its score goes in `info["gold"]`, so
the true objective stays visible when the reward is a learned model.

Verifiable rewards. ``reward_fn="answer:numeric"`` (or ``"answer:exact"``, ``"answer:exact_nocase"``,
``"answer:regex"``, with an optional extraction rule: ``"answer:exact:tag"``) pays 1 for a right
answer: an `llm_gym.core.answers.AnswerChecker` built from the reference answers the dataset's
records carry under `answer_field` (a JSONL of ``{"prompt": ..., "answer": ...}``). It is also
the task's `gold` unless a `gold_fn` is given, and ``gold_fn="answer:..."`` works the same way
(a learned reward paid, correctness reported). With a judge that checks answers, `info` also holds
what it found: the reference ``"answer"``, the ``"extracted"`` answer (None where the completion
had none) and ``"unextractable"`` (such a completion scores 0; a batch never raises because of
what a model wrote).
"""

from __future__ import annotations

import multiprocessing
import string
from collections.abc import Iterable, Iterator, Mapping, Sequence
from os import PathLike
from types import ModuleType
from typing import Any, NoReturn, TypeAlias

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space, create_shared_memory

from llm_gym.core.answers import checker_from_spec, is_answer_spec
from llm_gym.core.chat import ChatTokenizer
from llm_gym.core.data import PromptDataset, load_prompts
from llm_gym.core.metrics import verifies_answers
from llm_gym.core.reward import RewardFn, resolve_reward_fn, score_batch
from llm_gym.core.task import PromptTask, Task

__all__ = ["PromptBanditEnv", "PromptBanditVecEnv", "PromptText"]

DatasetLike: TypeAlias = (PromptDataset | str | PathLike[str] | Sequence[str] | Mapping[str, Sequence[Any]]
                          | Iterable[Any])
"""What `load_prompts` reads: a `PromptDataset`, a path, a list of prompts, a dict of column lists, or another iterable
of prompts or records (a list of dicts or conversations, a ``datasets.Dataset``, a pandas DataFrame or Series, a
numpy array); see `llm_gym.core.data`."""


class PromptText(spaces.Text):
    """The prompts' observation space: a `Text` space that refuses `AsyncVectorEnv`'s shared memory.

    Gymnasium 1.4 reads `Text` observations out of the shared memory only when the vector env
    is created, so every later observation would be the same empty strings; see the module
    docstring. Everything else is `spaces.Text`.
    """


@create_shared_memory.register(PromptText)
def _refuse_shared_memory(space: PromptText, n: int = 1, ctx: ModuleType = multiprocessing) -> NoReturn:
    raise ValueError(
        "AsyncVectorEnv with shared memory garbles Text observations in Gymnasium 1.4 (every prompt comes back "
        'empty); pass vector_kwargs={"shared_memory": False}: gymnasium.make_vec(..., vectorization_mode="async", '
        'vector_kwargs={"shared_memory": False}), or use the batched env (make_vec without vectorization_mode)'
    )


def _text_spaces(dataset: PromptDataset, max_completion_chars: int) -> tuple[spaces.Text, spaces.Text]:
    if not isinstance(max_completion_chars, int) or max_completion_chars < 1:
        raise ValueError(f"max_completion_chars must be a positive int, got {max_completion_chars!r}")
    charset = frozenset(string.printable).union(*(set(p) for p in dataset))
    obs = PromptText(max_length=max(len(p) for p in dataset), min_length=1, charset=charset)
    act = spaces.Text(max_length=max_completion_chars, min_length=0, charset=charset)
    return obs, act


class _PromptSource:
    """What both environment forms share: the dataset, the reward and gold functions, the spaces, the task."""

    task: Task
    """The data behind the environment as a `Task` (what `llm-gym run` reads from a registered environment):
    its prompts and gold judge here; subclasses over richer tasks (the built-in review task) give more."""

    def _setup(
        self, dataset: DatasetLike, reward_fn: RewardFn | str, gold_fn: RewardFn | str | None,
        max_completion_chars: int, prompt_field: str = "prompt", tokenizer: ChatTokenizer | None = None,
        answer_field: str = "answer",
    ) -> tuple[spaces.Text, spaces.Text]:
        if isinstance(dataset, Iterator) and (is_answer_spec(reward_fn) or is_answer_spec(gold_fn)):
            dataset = list(dataset)  # read twice below: once for the prompts, once for their answers
        self.dataset = load_prompts(dataset, prompt_field=prompt_field, tokenizer=tokenizer)
        checkers: dict[str, RewardFn] = {}

        def resolve(fn: RewardFn | str, what: str) -> RewardFn:
            if not is_answer_spec(fn):
                return resolve_reward_fn(fn, what)
            if fn not in checkers:  # one checker when reward and gold name the same one (scored once per step)
                checkers[fn] = checker_from_spec(fn, dataset, prompt_field=prompt_field,  # type: ignore[arg-type]
                                                 answer_field=answer_field, tokenizer=tokenizer)
            return checkers[fn]  # type: ignore[index]

        self.reward_fn = resolve(reward_fn, "reward_fn")
        if gold_fn is None and is_answer_spec(reward_fn):
            gold_fn = reward_fn  # a verifiable reward is the task's judge: evaluation reports accuracy from it
        self.gold_fn = resolve(gold_fn, "gold_fn") if gold_fn is not None else None
        self.task = PromptTask(prompts=self.dataset.prompts, gold=self.gold_fn)
        return _text_spaces(self.dataset, max_completion_chars)

    def _answer_info(self, n: int) -> dict[str, np.ndarray]:
        """For a judge that checks answers (an `AnswerChecker`, reasoning-gym's scorer), what it found in the `n`
        completions just scored: the reference `answer`, the `extracted` answer (None where there was none) and
        `unextractable` (and the `dataset` each came from, where the judge knows it); {} for any other judge."""
        judge = self.gold_fn if verifies_answers(self.gold_fn) else self.reward_fn  # a checker paid, another gold
        checks = getattr(judge, "last_checks", None)
        if not verifies_answers(judge) or not isinstance(checks, list) or len(checks) != n:
            return {}
        info = {"answer": np.array([c.reference for c in checks], dtype=object),
                "extracted": np.array([c.extracted for c in checks], dtype=object),
                "unextractable": np.array([c.extracted is None for c in checks], dtype=np.bool_)}
        if all(hasattr(c, "dataset") for c in checks):
            info["dataset"] = np.array([c.dataset for c in checks], dtype=object)
        return info

    def _score(self, prompts: list[str], completions: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
        for i, c in enumerate(completions):
            if not isinstance(c, str):
                raise TypeError(f"action {i} is {type(c).__name__}; a completion must be a str "
                                "(decode token ids first)")
        rewards = score_batch(self.reward_fn, prompts, completions)
        if self.gold_fn is None:
            return rewards, None
        gold = rewards if self.gold_fn is self.reward_fn else score_batch(self.gold_fn, prompts, completions)
        return rewards, gold


class PromptBanditEnv(_PromptSource, gym.Env[str, str]):
    """One prompt per episode; the completion is scored by `reward_fn` and the episode ends.

    Args:
        dataset: prompts: a `PromptDataset`, a list of strings or records, a `.jsonl`/`.json`/`.csv`/`.parquet`/
            `.txt` path, a `datasets.Dataset` or a pandas DataFrame (anything `load_prompts` reads).
        reward_fn: `reward_fn(prompts, completions) -> array of floats` (a gold scorer, a reward model...),
            or its import path `"package.module:name"` (how a config file names it), or `"answer:MATCH[:RULE]"`:
            an answer checker built from the records' `answer_field` (see the module docstring).
        gold_fn: optional true objective (or its import path, or `"answer:..."`), reported as `info["gold"]` but
            not paid; with an `"answer:..."` reward and no `gold_fn`, the answer checker.
        max_completion_chars: `max_length` of the action space.
        render_mode: `"ansi"` returns the last prompt and completion as text.
        prompt_field: the field or column of the dataset's records that holds the prompt.
        tokenizer: the policy's tokenizer, when the prompts are chat messages: its chat template renders
            them (with the generation prompt) into the prompt strings the environment hands out.
        answer_field: the field of the records holding each prompt's reference answer (for `"answer:..."`).

    Example:
        >>> import gymnasium, llm_gym
        >>> env = gymnasium.make("llm_gym/PromptBandit-v0", dataset=["the film was"],
        ...                      reward_fn=lambda p, c: [len(x) for x in c])
        >>> prompt, info = env.reset(seed=0)
        >>> env.step(" great .")[1:4]
        (8.0, True, False)
    """

    # render_fps is nominal (text rendering has no frame rate) but Gymnasium's checker asks for it
    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(
        self,
        dataset: DatasetLike,
        reward_fn: RewardFn | str,
        gold_fn: RewardFn | str | None = None,
        max_completion_chars: int = 1024,
        render_mode: str | None = None,
        prompt_field: str = "prompt",
        tokenizer: ChatTokenizer | None = None,
        answer_field: str = "answer",
    ) -> None:
        self.observation_space, self.action_space = self._setup(
            dataset, reward_fn, gold_fn, max_completion_chars, prompt_field, tokenizer, answer_field
        )
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.render_mode = render_mode
        self._index: int | None = None
        self._done = True
        self._last: tuple[str, str, float] | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """Hand out a prompt: uniformly at random from the seeded `np_random`, or `options={"index": i}`."""
        super().reset(seed=seed)
        if options and "index" in options:
            index = int(options["index"])
            if not 0 <= index < len(self.dataset):
                raise ValueError(f"options['index']={index} is out of range for a dataset of "
                                 f"{len(self.dataset)} prompts")
        else:
            index = int(self.np_random.integers(len(self.dataset)))
        self._index, self._done = index, False
        return self.dataset[index], {"prompt_index": index}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """Score the completion; the episode always terminates (`terminated=True, truncated=False`)."""
        if self._index is None or self._done:
            raise RuntimeError("the episode is over (one step per prompt); call reset() for the next prompt")
        prompt = self.dataset[self._index]
        rewards, gold = self._score([prompt], [action])
        reward = float(rewards[0])
        info: dict[str, Any] = {"prompt": prompt, "completion": action, "prompt_index": self._index}
        if gold is not None:
            info["gold"] = float(gold[0])
        info.update({k: v[0].item() if isinstance(v[0], np.generic) else v[0] for k, v in self._answer_info(1).items()})
        self._done = True
        self._last = (prompt, action, reward)
        return prompt, reward, True, False, info

    def render(self) -> str | None:
        """With `render_mode="ansi"`: the current prompt, and the completion and reward once answered."""
        if self.render_mode != "ansi":
            return None
        if self._index is None:
            return ""
        prompt = self.dataset[self._index]
        if not self._done or self._last is None:
            return f"{prompt}|"
        _, completion, reward = self._last
        return f"{prompt}|{completion}  -> reward {reward:.4f}"


class PromptBanditVecEnv(_PromptSource, VectorEnv):
    """`num_envs` prompts per step, scored in one `reward_fn` call; the next prompts come back at once.

    Observations and actions are tuples of `num_envs` strings (`batch_space` of the Text
    spaces). `step` returns the *next* prompts (every episode terminated, `SAME_STEP`
    autoreset) and an info dict of arrays: `prompt`, `completion`, `prompt_index` and, with
    a `gold_fn`, `gold` — all about the prompts just answered.

    Grouped prompts (`group_size=G`): each batch holds `num_envs / G` prompts, each handed out
    `G` times in a row (slots `[g*G, (g+1)*G)` share a prompt), which is what the group-sampling
    algorithms need: RLOO's leave-one-out baseline and GRPO's group-normalised advantage compare
    the `G` completions of one prompt. `info["group"]` gives each slot's group number.

    Made by `gymnasium.make_vec("llm_gym/PromptBandit-v0", num_envs=16, dataset=..., reward_fn=...)`; `dataset`,
    `reward_fn`, `gold_fn`, `prompt_field`, `tokenizer` and `answer_field` are read as `PromptBanditEnv` reads them.
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(
        self,
        dataset: DatasetLike,
        reward_fn: RewardFn | str,
        num_envs: int = 16,
        gold_fn: RewardFn | str | None = None,
        max_completion_chars: int = 1024,
        group_size: int = 1,
        prompt_field: str = "prompt",
        tokenizer: ChatTokenizer | None = None,
        answer_field: str = "answer",
    ) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"group_size must be a positive int (completions per prompt), got {group_size!r}")
        if num_envs % group_size:
            raise ValueError(
                f"group_size={group_size} must divide num_envs={num_envs} (each of num_envs / group_size prompts "
                f"is handed out group_size times); use num_envs={num_envs - num_envs % group_size or group_size}"
            )
        self.num_envs = num_envs
        self.group_size = group_size
        self.single_observation_space, self.single_action_space = self._setup(
            dataset, reward_fn, gold_fn, max_completion_chars, prompt_field, tokenizer, answer_field
        )
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._indices: np.ndarray | None = None

    def _draw(self) -> tuple[tuple[str, ...], np.ndarray]:
        drawn = self.np_random.integers(len(self.dataset), size=self.num_envs // self.group_size)
        self._indices = np.repeat(drawn, self.group_size) if self.group_size > 1 else drawn
        return tuple(self.dataset[int(i)] for i in self._indices), self._indices.copy()

    def _info(self, indices: np.ndarray) -> dict[str, Any]:
        info: dict[str, Any] = {"prompt_index": indices}
        if self.group_size > 1:
            info["group"] = np.arange(self.num_envs) // self.group_size
        return info

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[tuple[str, ...], dict[str, Any]]:
        """Hand out `num_envs` prompts (`num_envs / group_size` distinct draws, uniform with replacement, from the
        seeded `np_random`, each repeated `group_size` times)."""
        super().reset(seed=seed)
        prompts, indices = self._draw()
        return prompts, self._info(indices)

    def step(
        self, actions: Sequence[str]
    ) -> tuple[tuple[str, ...], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Score one completion per current prompt, then hand out the next batch of prompts."""
        if self._indices is None:
            raise RuntimeError("call reset() before step()")
        if isinstance(actions, (str, bytes)) or not isinstance(actions, (Sequence, np.ndarray)):
            got = "a single str" if isinstance(actions, str) else type(actions).__name__
            raise TypeError(f"step() takes a sequence of {self.num_envs} completions (one str per environment), "
                            f"got {got}")
        if len(actions) != self.num_envs:
            raise ValueError(f"step() takes one completion per environment ({self.num_envs}), "
                             f"got {len(actions)} actions")
        prompts = [self.dataset[int(i)] for i in self._indices]
        rewards, gold = self._score(prompts, list(actions))
        info: dict[str, Any] = {
            "prompt": np.array(prompts, dtype=object),
            "completion": np.array(list(actions), dtype=object),
            **self._info(self._indices.copy()),
        }
        if gold is not None:
            info["gold"] = gold
        info.update(self._answer_info(len(prompts)))
        next_prompts, next_indices = self._draw()
        info["next_prompt_index"] = next_indices
        terminated = np.ones(self.num_envs, dtype=np.bool_)
        truncated = np.zeros(self.num_envs, dtype=np.bool_)
        return next_prompts, rewards, terminated, truncated, info
