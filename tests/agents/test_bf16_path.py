"""PPO's `mixed_precision="bf16"` path on CPU: the sampling, reference and training forwards run in bf16 while the
parameters, gradients and optimizer state stay float32, the update is finite, and one iteration's parameters are
within a measured tolerance of float32's on the same batch.

The learning result over a whole run (the gold-score curve, fp32 vs bf16 over seeds) is
`experiments/bf16_learning.py`'s; these tests check the mechanics in a few seconds on the smoke model.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch
from transformers.pytorch_utils import Conv1D

from llm_gym import Logger, Policy, PretrainReport, SamplingConfig
from llm_gym.agents.ppo import PPO, PPOConfig
from llm_gym.envs import PromptBanditVecEnv
from llm_gym.models.policy import Rollout

PROMPTS = ["the film was", "review of the blender :", "i bought this laptop and", "the hotel is", "this novel"]

REL_TOLERANCE = 0.15
"""Bound on ||theta_bf16 - theta_fp32|| / ||theta_fp32 - theta_0|| after one iteration on the same batch (2 epochs x
2 minibatches: 4 AdamW steps). Measured on an AVX512-BF16/AMX CPU, torch 2.13, seeds 0-7 on a shared batch:
0.012-0.054 (seed 0, the test's: 0.015). Adam's first steps are about lr * sign(gradient), so bf16 moves mainly the
elements whose gradient is near zero. Letting each precision sample its own batch gave the same figures where the
completions agreed (7 seeds of 8) and 0.34 where bf16 drew 1 completion of 8 differently: hence the shared batch."""


def count_letter(letter: str) -> Callable[[Any, list[str]], np.ndarray]:
    """How often `letter` occurs in each completion: a reward with a spread on the smoke model's text."""

    def reward(prompts: Any, completions: list[str]) -> np.ndarray:
        return np.array([c.count(letter) for c in completions], dtype=np.float64)

    return reward


def make_agent(policy: Policy, mixed_precision: str, seed: int = 0) -> PPO:
    """PPO on 8 prompts x 10 tokens, 2 epochs of minibatch 4, with a KL penalty (so the reference pass matters)."""
    config = PPOConfig(sampling=SamplingConfig(max_new_tokens=10), learning_rate=1e-3, n_epochs=2, minibatch_size=4,
                       kl_coef=0.05, log_samples_every=0, mixed_precision=mixed_precision)
    env = PromptBanditVecEnv(PROMPTS, count_letter("e"), num_envs=8)
    return PPO(policy, env, config, rng=np.random.default_rng(seed), logger=Logger(None))


@contextmanager
def recorded_forwards(agent: PPO) -> Iterator[list[dict[str, Any]]]:
    """Record every Linear/Conv1D forward of the policy, the reference and the value head during the block.

    Each record: which model, the phase ("sample" inside `policy.sample`, else "train" with gradients on, else
    "no_grad"), the output's dtype, and whether CPU autocast was on with bf16 as its dtype.
    """
    records: list[dict[str, Any]] = []
    phase = {"sampling": False}

    def hook_for(owner: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: Any, output: torch.Tensor) -> None:
            where = "sample" if phase["sampling"] else ("train" if torch.is_grad_enabled() else "no_grad")
            records.append({"model": owner, "phase": where, "dtype": output.dtype,
                            "autocast_bf16": torch.is_autocast_enabled("cpu")
                            and torch.get_autocast_dtype("cpu") == torch.bfloat16})
        return hook

    handles = []
    for owner, module in (("policy", agent.policy.model), ("reference", agent.reference.model),
                          ("value_head", agent.value_head)):
        for m in module.modules():
            if isinstance(m, (torch.nn.Linear, Conv1D)):
                handles.append(m.register_forward_hook(hook_for(owner)))
    sample = agent.policy.sample

    def sampling(*args: Any, **kwargs: Any) -> Rollout:
        phase["sampling"] = True
        try:
            return sample(*args, **kwargs)
        finally:
            phase["sampling"] = False

    agent.policy.sample = sampling  # type: ignore[method-assign]
    try:
        yield records
    finally:
        del agent.policy.sample
        for h in handles:
            h.remove()


def floating_state(agent: PPO) -> dict[str, torch.Tensor]:
    """Every floating tensor the update owns: parameters, gradients, optimizer state (policy and value head)."""
    out: dict[str, torch.Tensor] = {}
    for owner, module in (("policy", agent.policy.model), ("value_head", agent.value_head)):
        for name, p in module.named_parameters():
            out[f"{owner}.{name}"] = p.detach()
            if p.grad is not None:
                out[f"{owner}.{name}.grad"] = p.grad
    for i, state in enumerate(agent.optimizer.state.values()):
        for key, v in state.items():
            if torch.is_tensor(v) and v.is_floating_point():
                out[f"optimizer[{i}].{key}"] = v
    return out


def test_bf16_forwards_run_in_bf16_and_the_state_stays_float32(policy: Policy) -> None:
    agent = make_agent(policy, "bf16")
    before = [p.detach().clone() for p in policy.model.parameters()]
    reference_before = [p.detach().clone() for p in agent.reference.model.parameters()]
    with recorded_forwards(agent) as records:
        stats = agent.train_iteration()

    phases = {(r["model"], r["phase"]) for r in records}
    assert {("policy", "sample"), ("reference", "no_grad"), ("policy", "no_grad"), ("policy", "train"),
            ("value_head", "train")} <= phases, f"a forward of the iteration was not seen: {sorted(phases)}"
    not_bf16 = {(r["model"], r["phase"], str(r["dtype"])) for r in records if r["dtype"] != torch.bfloat16}
    assert not not_bf16, f"forwards that did not run in bf16: {sorted(not_bf16)}"
    assert all(r["autocast_bf16"] for r in records), "every forward runs inside CPU autocast to bf16"

    state = floating_state(agent)
    assert any(k.startswith("optimizer") for k in state) and any(k.endswith(".grad") for k in state)
    wrong = {k: str(v.dtype) for k, v in state.items() if v.dtype != torch.float32}
    assert not wrong, f"parameters, gradients and optimizer state stay float32: {wrong}"
    assert all(bool(torch.isfinite(v).all()) for v in state.values()), "the update is finite"
    assert all(math.isfinite(v) for v in stats.values()), {k: v for k, v in stats.items() if not math.isfinite(v)}
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.model.parameters())), "the policy was updated"
    assert all(p.dtype == torch.float32 and torch.equal(a, p)
               for a, p in zip(reference_before, agent.reference.model.parameters())), "the reference is frozen, fp32"


def test_one_bf16_iteration_is_close_to_float32_on_the_same_batch(tiny_model: PretrainReport) -> None:
    """The same start, rng and batch; fp32 forwards stay fp32 and bf16's update lands within REL_TOLERANCE."""
    fp32 = make_agent(Policy.from_pretrained(tiny_model.path, device="cpu"), "no")
    bf16 = make_agent(Policy.from_pretrained(tiny_model.path, device="cpu"), "bf16")
    start = [p.detach().clone() for p in fp32.policy.model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(start, bf16.policy.model.parameters()))

    drawn: list[Rollout] = []
    sample = fp32.policy.sample

    def keep(*args: Any, **kwargs: Any) -> Rollout:
        drawn.append(sample(*args, **kwargs))
        return copy.deepcopy(drawn[-1])

    fp32.policy.sample = keep  # type: ignore[method-assign]
    with recorded_forwards(fp32) as records:
        fp32_stats = fp32.train_iteration()
    assert records and all(r["dtype"] == torch.float32 and not r["autocast_bf16"] for r in records)

    def replay(prompts: list[str], *args: Any, **kwargs: Any) -> Rollout:
        assert list(prompts) == fp32._last_experience.prompts, "the same rng draws the same prompt batch"
        return copy.deepcopy(drawn[0])

    # bf16's own sampling can pick another token where two are nearly tied; the batch is shared so that what is
    # compared is the arithmetic of the reference pass and the update (the first test covers bf16 sampling)
    bf16.policy.sample = replay  # type: ignore[method-assign]
    bf16_stats = bf16.train_iteration()

    update = torch.cat([(a.detach() - s).flatten() for a, s in zip(fp32.policy.model.parameters(), start)])
    diff = torch.cat([(b.detach() - a.detach()).flatten()
                      for a, b in zip(fp32.policy.model.parameters(), bf16.policy.model.parameters())])
    rel = float(diff.norm() / update.norm())
    assert update.norm() > 0
    assert rel < REL_TOLERANCE, f"bf16's parameters after one iteration differ from fp32's by {rel:.3f} of the update"
    assert bf16_stats["objective/rm_score"] == fp32_stats["objective/rm_score"]
    assert bf16_stats["objective/kl"] == pytest.approx(fp32_stats["objective/kl"], abs=0.05)
