"""What the built-in environments over a generated task share: the task for a config, generated once, and a split's prompts.

`llm_gym/ReviewSentiment-v0` and `llm_gym/Arithmetic-v0` each take a `task_config` (their generator's config
dataclass, or its fields as a table from an experiment file) and a `split`; the task is generated once per config
and process, since every environment of a vector env, and every stage of a run, asks for the same one.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from functools import lru_cache
from typing import Any, TypeVar

__all__ = ["generated_task", "split_prompts"]

T = TypeVar("T")
C = TypeVar("C", bound=Hashable)

_SPLITS = ("train", "eval")


@lru_cache(maxsize=8)
def _generate(generate: Callable[[Any], Any], config: Hashable) -> Any:
    return generate(config)


def generated_task(config_class: type[C], generate: Callable[[C], T], task_config: C | Mapping[str, Any] | None) -> T:
    """`generate(config)` for `task_config` (a `config_class`, its fields as a table, or None for the defaults),
    generated once per config.

    Raises:
        TypeError: a table with a field `config_class` does not have (the message lists the ones it has).
    """
    if isinstance(task_config, Mapping):
        try:
            task_config = config_class(**task_config)
        except TypeError as exc:
            fields = list(getattr(config_class, "__dataclass_fields__", {}))
            raise TypeError(f"task_config: {exc}; {config_class.__name__} takes {fields}") from exc
    return _generate(generate, task_config if task_config is not None else config_class())


def split_prompts(task: Any, split: str) -> list[str]:
    """The task's training (`"train"`) or held-out (`"eval"`) prompts."""
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    return task.prompts if split == "train" else task.eval_prompts
