"""The frozen reference policy every KL penalty is measured against (the SFT policy in InstructGPT).

`frozen_copy(policy)` is the reference an agent makes for itself when none is passed in: the
policy as it is when training starts, in eval mode, with no gradients. Its log-probs of a
rollout's completions, under the same sampling settings as the rollout, are what
`llm_gym.agents.kl.kl_estimate` compares with the policy's.

For a plain policy that is a deep copy. For a PEFT policy (a frozen base with a trainable
adapter, `Policy.is_peft`) the base *is* the policy as it was before training, so the reference
is the same module run with its adapter switched off (`AdapterDisabledReference`): no second set
of base weights, and a reference that cannot drift, since the weights it reads never train.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from os import PathLike
from typing import Any

import torch
from torch import nn

from llm_gym.models.policy import Policy, Rollout, SamplingConfig, base_state_dict, is_adapter_param

__all__ = ["AdapterDisabledReference", "frozen_copy", "make_reference", "reference_log_probs"]


class _BaseOfAdapter(nn.Module):
    """The base model inside a PEFT model, as a module of its own: forward runs the shared model with its adapter off.

    The PEFT model is held without registering it as a submodule, so that what agents do to
    a reference's module (`.eval()`, `requires_grad_(False)` on its `.parameters()`) reaches
    neither the policy's training mode nor its adapter. `parameters()` are the frozen base
    weights, the very tensors the policy holds. The forward pass runs in this module's mode
    (eval for a reference: no dropout), whatever mode the policy is in, and restores it.
    """

    def __init__(self, peft_model: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "peft_model", peft_model)  # not a submodule (see the class docstring)
        self._frozen = [p for p in peft_model.parameters() if not p.requires_grad]

    @property
    def config(self) -> Any:
        """The base model's config (context length, vocabulary)."""
        return self.peft_model.config

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        """The frozen base weights (shared with the policy); never the adapter's."""
        return iter(self._frozen)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        model = self.peft_model
        was_training = model.training
        if was_training != self.training:
            model.train(self.training)
        try:
            with model.disable_adapter():
                return model(*args, **kwargs)
        finally:
            if was_training != self.training:
                model.train(was_training)


class AdapterDisabledReference(Policy):
    """The reference of a PEFT policy: the policy's own model with its adapter disabled, in eval mode.

    A `Policy` in every respect (`log_probs`, `evaluate`, `sample`, `.model`, `.tokenizer`,
    `.device`), sharing the policy's base weights and tokenizer. `save_pretrained` writes the
    base model as a plain checkpoint (full weights, no adapter), so the folder loads back with
    `Policy.from_pretrained` as the same reference.

    Only valid while the adapter is all that trains: `make_reference` refuses an adapter that
    also trains base weights (LoRA's `bias="all"` or `"lora_only"`), which would move the reference.
    While the reference runs, the shared model's adapter is off; do not run the policy from
    another thread at the same time.
    """

    def __init__(self, policy: Policy) -> None:
        if not policy.is_peft:
            raise ValueError("AdapterDisabledReference needs a PEFT policy (policy.is_peft); use frozen_copy(policy)")
        trained_base = [n for n, p in policy.model.named_parameters() if p.requires_grad and not is_adapter_param(policy.model, n)]
        if trained_base:
            raise ValueError(
                f"the adapter also trains base weights ({', '.join(trained_base[:3])}...), so the base with the adapter off "
                "would not stay the policy it started as; use an adapter that trains only its own weights (LoRA with "
                "bias='none'), or pass reference=frozen_copy_of_the_base explicitly"
            )
        super().__init__(_BaseOfAdapter(policy.model), policy.tokenizer, device=policy.device, overflow=policy.overflow)
        self.model.eval()

    def save_pretrained(self, path: str | PathLike[str]) -> None:
        """Save the base model (its own weights, without the adapter) and the tokenizer, as a plain `Policy` folder."""
        base = self.model.peft_model.get_base_model()
        base.save_pretrained(path, state_dict=base_state_dict(self.model.peft_model))
        self.tokenizer.save_pretrained(path)


def make_reference(policy: Policy) -> Policy:
    """The frozen reference for `policy`: the base with the adapter off for a PEFT policy, else a frozen deep copy.

    Either way in eval mode and without gradients, equal to the policy as it is now.
    """
    if policy.is_peft:
        return AdapterDisabledReference(policy)
    ref = Policy(copy.deepcopy(policy.model), policy.tokenizer, device=policy.device, overflow=policy.overflow)
    ref.model.eval()
    for p in ref.model.parameters():
        p.requires_grad_(False)
    return ref


frozen_copy = make_reference
"""The name agents call `make_reference` by (for a PEFT policy it is not a copy: see `make_reference`)."""


@torch.no_grad()
def reference_log_probs(reference: Policy, rollout: Rollout, sampling: SamplingConfig) -> torch.Tensor:
    """(B, T) log-probs of the rollout's completion tokens under `reference` (0 where masked)."""
    return reference.log_probs(rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_mask,
                               sampling)
