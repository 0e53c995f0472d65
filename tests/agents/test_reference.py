"""The frozen reference on its own: a copy without gradients, in eval mode, equal to the policy at the start."""

from __future__ import annotations

import torch

from llm_gym import Policy, SamplingConfig
from llm_gym.agents.reference import frozen_copy, reference_log_probs


def test_a_frozen_copy_scores_as_the_policy_did_and_does_not_move(policy: Policy) -> None:
    sampling = SamplingConfig(max_new_tokens=6, top_k=20)
    ref = frozen_copy(policy)
    assert not ref.model.training and not any(p.requires_grad for p in ref.model.parameters())
    assert ref.tokenizer is policy.tokenizer and ref.model is not policy.model
    rollout = policy.sample(["the film was", "the hotel is"], sampling, seed=0)
    logp = reference_log_probs(ref, rollout, sampling)
    assert not logp.requires_grad
    assert torch.allclose(logp, rollout.logprobs, atol=1e-5)  # the same distribution the samples came from
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(0.01)  # training the policy leaves the reference where it was
    assert torch.allclose(reference_log_probs(ref, rollout, sampling), logp)
