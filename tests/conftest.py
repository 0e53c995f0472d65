"""Shared fixtures: a seconds-to-build tiny model (through the real save/from_pretrained path), a seeded rng."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llm_gym import Policy, PretrainReport, TinyLMConfig, build_builtin_model


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
