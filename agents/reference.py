"""The frozen reference policy every KL penalty is measured against (the SFT policy in InstructGPT).

`frozen_copy(policy)` is the reference an agent makes for itself when none is passed in: a
copy of the policy as it is when training starts, in eval mode, with no gradients. Its
log-probs of a rollout's completions, under the same sampling settings as the rollout, are
what `llm_gym.agents.kl.kl_estimate` compares with the policy's.
"""

from __future__ import annotations

import copy

import torch

from llm_gym.models.policy import Policy, Rollout, SamplingConfig

__all__ = ["frozen_copy", "reference_log_probs"]


def frozen_copy(policy: Policy) -> Policy:
    """A frozen copy of `policy` (same tokenizer, device and overflow rule), in eval mode, without gradients."""
    ref = Policy(copy.deepcopy(policy.model), policy.tokenizer, device=policy.device, overflow=policy.overflow)
    ref.model.eval()
    for p in ref.model.parameters():
        p.requires_grad_(False)
    return ref


@torch.no_grad()
def reference_log_probs(reference: Policy, rollout: Rollout, sampling: SamplingConfig) -> torch.Tensor:
    """(B, T) log-probs of the rollout's completion tokens under `reference` (0 where masked)."""
    return reference.log_probs(rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_mask,
                               sampling)
