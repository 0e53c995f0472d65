"""Test doubles shared by the preference-loop tests."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from llm_gym import Answer, Query
from llm_gym.oracles import PreferenceOracle


class SlowOracle(PreferenceOracle):
    """A slow labeller: answers nothing on its first call, then only every other query it is shown."""

    name = "slow-human"

    def __init__(self, inner: PreferenceOracle) -> None:
        self.inner, self.calls = inner, 0

    def answer(self, queries: Sequence[Query]) -> Iterator[Answer]:
        self.calls += 1
        if self.calls == 1:
            return iter(())
        return (a for i, a in enumerate(self.inner.answer(queries)) if i % 2 == 0)
