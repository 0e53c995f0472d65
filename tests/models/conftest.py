"""Fixtures of the reward-model tests: the smoke task, a fresh reward model, comparisons labelled by the gold scorer."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from llm_gym.core.preferences import Comparison
from llm_gym.models.reward_model import RewardModel
from llm_gym.tasks.review import GoldScorer, ReviewTask, generate_review_task
from llm_gym.tasks.tiny_lm import PretrainReport, TinyLMConfig


@pytest.fixture(scope="module")
def task() -> ReviewTask:
    return generate_review_task(TinyLMConfig.smoke().task)


@pytest.fixture()
def rm(tiny_model: PretrainReport) -> RewardModel:
    return RewardModel.from_pretrained(tiny_model.path, device="cpu", head_seed=0)


@pytest.fixture()
def gold_comparisons(task: ReviewTask) -> Callable[..., list[Comparison]]:
    """`gold_comparisons(n, seed=0)`: pairs (demonstration, corpus continuation) of one prompt, labelled by the gold scorer."""

    def make(n: int, seed: int = 0) -> list[Comparison]:
        gold = GoldScorer()
        rng = np.random.default_rng(seed)
        fragments = [" " + t.split(" . ", 1)[-1] for t in task.pretrain_texts]
        out = []
        for i in range(n):
            demo = task.demonstrations[i % len(task.demonstrations)]
            pair = (demo.completion, fragments[int(rng.integers(len(fragments)))])
            if rng.random() < 0.5:
                pair = pair[::-1]
            g = gold([demo.prompt] * 2, list(pair))
            ranks = (0, 0) if g[0] == g[1] else ((0, 1) if g[0] > g[1] else (1, 0))
            out.append(Comparison(demo.prompt, pair, ranks, labeller="gold"))
        return out

    return make
