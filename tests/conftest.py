"""Shared fixtures: a seconds-to-build tiny model (through the real save/from_pretrained path), a seeded rng."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from llm_gym import Policy, PretrainReport, TinyLMConfig, build_builtin_model

# tests that call the `llm-gym` command in this process must not change its malloc (keep_freed_memory) for the rest
os.environ.setdefault("LLM_GYM_KEEP_FREED_MEMORY", "0")


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """The test models are too small to gain from threads, and two OpenMP threads on a busy
    2-core machine can run 10-30x slower (spin-waiting); restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model_cache")


@pytest.fixture(scope="session")
def tiny_model(model_cache: Path) -> PretrainReport:
    """The smoke-sized built-in model, built once per test session into a temporary cache."""
    return build_builtin_model(TinyLMConfig.smoke(), cache_dir=model_cache)


@pytest.fixture()
def policy(tiny_model: PretrainReport) -> Policy:
    """A fresh Policy loaded with from_pretrained (tests may change it freely)."""
    return Policy.from_pretrained(tiny_model.path, device="cpu")


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
