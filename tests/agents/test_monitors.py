"""The health checks any agent runs: a negative or exploding KL, and the reward model rising while gold falls."""

from __future__ import annotations

import warnings

import pytest
import torch

from llm_gym.agents.monitors import HealthMonitor, KLWarning, OverOptimizationWarning


def test_kl_guards_warn() -> None:
    agent = HealthMonitor(kl_explosion=5.0)
    with pytest.warns(KLWarning, match="negative"):
        agent.check(1, torch.tensor([-0.5, -0.6, -0.4, -0.55]), 0.0, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        agent.check(1, torch.tensor([0.05, -0.08, 0.02, -0.01]), 0.0, None)  # noise around zero is fine
    with pytest.warns(KLWarning, match="running away"):
        agent.check(1, torch.tensor([7.0, 9.0, 8.0]), 0.0, None)


def test_rm_up_gold_down_warns_of_over_optimisation() -> None:
    agent = HealthMonitor(window=3, patience=2)
    kl = torch.tensor([0.1, 0.2])
    rm = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    gold = [0.5, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0, -0.1]
    with pytest.warns(OverOptimizationWarning, match="sign is flipped"):
        for r, g in zip(rm, gold):
            agent.check(1, kl, r, g)
    # both rising, or gold flat with noise: no warning
    healthy = HealthMonitor(window=3, patience=2)
    noisy = HealthMonitor(window=3, patience=2)
    flat_gold = [0.74, 0.70, 0.75, 0.72, 0.73, 0.71, 0.74, 0.72]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for r, g in zip(rm, flat_gold):
            healthy.check(1, kl, r, r)
            noisy.check(1, kl, r, g)


def test_the_monitor_resumes_with_its_histories() -> None:
    rm = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    gold = [0.5, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0, -0.1]
    first = HealthMonitor(window=3, patience=2)
    for r, g in zip(rm[:6], gold[:6]):
        first.check(1, torch.tensor([0.1, 0.2]), r, g)
    resumed = HealthMonitor(window=3, patience=2)
    resumed.load_state_dict(first.state_dict())
    with pytest.warns(OverOptimizationWarning):  # the streak continues where it stopped
        for r, g in zip(rm[6:], gold[6:]):
            resumed.check(1, torch.tensor([0.1, 0.2]), r, g)
    with pytest.raises(ValueError, match="window must be >= 2"):
        HealthMonitor(window=1)
