"""Reward functions: the `RewardFn` protocol and the check every reward passes through.

A reward function scores a batch of (prompt, completion) pairs and returns one float per
pair. Anything with that call signature works: the built-in gold scorer, a reward model
(a later stage), or a plain Python function. The environments call `score_batch`, which
validates what comes back, so a broken reward (NaN, wrong shape, strings) fails loudly at
the step that produced it rather than silently poisoning a training run.
"""

from __future__ import annotations

import importlib
import reprlib
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["RewardFn", "check_reward_fn", "resolve_reward_fn", "score_batch", "validate_rewards"]


@runtime_checkable
class RewardFn(Protocol):
    """Scores completions: `reward_fn(prompts, completions) -> array of floats`, one per pair."""

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> Sequence[float] | np.ndarray: ...


def _name(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__qualname__


def validate_rewards(values: object, n: int, source: str = "reward_fn") -> np.ndarray:
    """Check that `values` are `n` finite numbers and return them as a float64 array.

    Raises:
        TypeError: if `values` is not real numbers (strings, objects, None, complex numbers).
        ValueError: if the shape is not `(n,)` or a value is NaN or infinite.
    """
    if isinstance(values, (str, bytes)) or values is None:
        raise TypeError(f"{source} returned {type(values).__name__}; it must return a sequence of {n} floats")
    try:
        arr = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values)
    except Exception as exc:  # ragged lists and other things numpy cannot hold
        raise TypeError(f"{source} returned a value numpy cannot read as numbers ({exc}); return {n} floats") from exc
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(
            f"{source} returned values of type {arr.dtype}; it must return {n} floats, one per (prompt, completion) pair"
        )
    if np.issubdtype(arr.dtype, np.complexfloating):  # float64 would keep the real part and drop the rest in silence
        raise TypeError(
            f"{source} returned complex values ({arr.dtype}); a reward is one real number per pair: return "
            "`.real` or `abs(...)` of them, whichever you mean"
        )
    if arr.shape != (n,):
        if arr.size == n and arr.ndim > 1 and max(arr.shape) == n:
            hint = f"; flatten it (shape {arr.shape} -> ({n},))"
        else:
            hint = ""
        raise ValueError(f"{source} returned shape {arr.shape} for {n} (prompt, completion) pairs; expected ({n},){hint}")
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = np.flatnonzero(bad)
        raise ValueError(
            f"{source} returned {int(bad.sum())} non-finite value(s) (NaN or inf) at index {idx[:5].tolist()}: "
            f"{arr[idx[:5]].tolist()}; fix the reward function (a division by zero or log(0) is the usual cause)"
        )
    return arr


def score_batch(reward_fn: RewardFn, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
    """Call `reward_fn` on one batch and validate its output (see `validate_rewards`)."""
    if len(prompts) != len(completions):
        raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions; they must pair up")
    return validate_rewards(reward_fn(list(prompts), list(completions)), len(prompts), source=_name(reward_fn))


def resolve_reward_fn(reward_fn: RewardFn | str, what: str = "reward_fn") -> RewardFn:
    """A reward function, or an import path to one: ``"package.module:name"`` (how config files name code).

    The object at the path is used as it is when it is a function or another callable; a class
    is instantiated with no arguments (``"llm_gym.tasks.review:GoldScorer"``).

    Raises:
        ValueError: a string that is not ``module:name``, a module that cannot be imported, or a
            name the module lacks (the message says which).
        TypeError: the result is not callable.
    """
    if isinstance(reward_fn, str):
        module_name, sep, attr = reward_fn.partition(":")
        if not sep or not module_name or not attr:
            raise ValueError(f'{what}: {reward_fn!r} is not an import path; write it as "package.module:name"')
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"{what}: cannot import module {module_name!r} ({exc}); check the name and that it is installed") from exc
        obj: object = module
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise ValueError(f"{what}: module {module_name!r} has no {attr!r}; check the name after the colon")
            obj = getattr(obj, part)
        reward_fn = obj() if isinstance(obj, type) else obj  # type: ignore[assignment]
    if not callable(reward_fn):
        raise TypeError(f"{what} must be callable as {what}(prompts, completions) -> array of floats, got {type(reward_fn).__name__}")
    return reward_fn


def check_reward_fn(reward_fn: RewardFn, prompts: Sequence[str], completions: Sequence[str], what: str = "reward_fn") -> np.ndarray:
    """Try `reward_fn` on a first batch, before anything trains on it, and return its scores.

    A reward named in a config file is user code met for the first time: one that returns a
    single number, strings or NaN should stop the run before pretraining, not at its first PPO step.

    Raises:
        ValueError: it raised an exception (chained), or returned numbers of the wrong shape or non-finite ones.
        TypeError: it returned something that is not numbers.
        Each message says what it returned.
    """
    n = len(prompts)
    try:
        values = reward_fn(list(prompts), list(completions))
    except Exception as exc:
        raise ValueError(f"{what} raised {type(exc).__name__}: {exc} when tried on a first batch of {n} (prompt, "
                         f"completion) pairs, e.g. {prompts[0]!r} -> {completions[0]!r}; fix it and rerun") from exc
    shown = reprlib.repr(values.tolist() if hasattr(values, "tolist") else values)
    try:
        return validate_rewards(values, n, source=what)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{what} returned {shown} ({type(values).__name__}) for a first batch of {n} (prompt, completion) "
                        f"pairs; it must return one finite float per completion, e.g. a list of {n} floats ({exc})") from exc
