"""The frozen reference policy every KL penalty is measured against (the SFT policy in InstructGPT).

`make_reference(policy)` is the reference an agent makes for itself when none is passed in: the
policy as it is when training starts, in eval mode, with no gradients. Its log-probs of a
rollout's completions, under the same sampling settings as the rollout, are what
`llm_gym.agents.kl.kl_estimate` compares with the policy's.

For a plain policy that is a deep copy. For a PEFT policy (a frozen base with a trainable
adapter, `Policy.is_peft`) the base *is* the policy as it was before training, so the reference
is the same module run with its adapter switched off (`AdapterDisabledReference`): no second set
of base weights, and a reference that cannot drift, since the weights it reads never train. An
adapter that also trains base weights (LoRA's `bias="all"` or `"lora_only"`) would move that
reference, so `AdapterDisabledReference` refuses it and `make_reference` falls back, with a
logged warning, to a frozen plain copy of the base (`frozen_base_copy`: a second set of weights).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from os import PathLike
from typing import Any

import torch
from torch import nn

from llm_gym.models.policy import Policy, Rollout, SamplingConfig, base_state_dict, is_adapter_param

__all__ = ["AdapterDisabledReference", "frozen_base_copy", "is_base_reference", "make_reference",
           "reference_log_probs"]

_log = logging.getLogger(__name__)


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

    Only valid while the adapter is all that trains: the constructor raises `ValueError` for an
    adapter that also trains base weights (LoRA's `bias="all"` or `"lora_only"`), which would move
    the reference; `make_reference` then makes a frozen copy of the base instead. While the
    reference runs, the shared model's adapter is off; do not run the policy from another thread
    at the same time.
    """

    def __init__(self, policy: Policy) -> None:
        if not policy.is_peft:
            raise ValueError("AdapterDisabledReference needs a PEFT policy (policy.is_peft); "
                             "use make_reference(policy)")
        trained_base = _trained_base_weights(policy)
        if trained_base:
            raise ValueError(
                f"the adapter also trains base weights ({', '.join(trained_base[:3])}...), so the base with the "
                "adapter off would not stay the policy it started as; use make_reference(policy), which makes a "
                "frozen copy of the base (frozen_base_copy(policy)), or an adapter that trains only its own weights "
                "(LoRA with bias='none')"
            )
        super().__init__(_BaseOfAdapter(policy.model), policy.tokenizer, device=policy.device, overflow=policy.overflow)
        self.model.eval()

    def save_pretrained(self, path: str | PathLike[str], *, merged: bool = False) -> None:
        """Save the base model (its own weights, without the adapter) and the tokenizer, as a plain `Policy` folder.

        `merged` is accepted for the `Policy` signature and ignored: this reference has no adapter
        switched on, so its plain save already is the model it computes.
        """
        base = self.model.peft_model.get_base_model()
        base.save_pretrained(path, state_dict=base_state_dict(self.model.peft_model))
        self.tokenizer.save_pretrained(path)


def _trained_base_weights(policy: Policy) -> list[str]:
    """Names of the PEFT policy's trainable parameters that are not its adapter's (LoRA's bias="all" trains biases)."""
    return [n for n, p in policy.model.named_parameters() if p.requires_grad and not is_adapter_param(policy.model, n)]


def _frozen(policy: Policy) -> Policy:
    """`policy`, put in eval mode with gradients off (what makes a copy a reference)."""
    policy.model.eval()
    for p in policy.model.parameters():
        p.requires_grad_(False)
    return policy


def frozen_base_copy(policy: Policy) -> Policy:
    """A frozen plain `Policy` holding a copy of a PEFT policy's base weights as they are now (the adapter left out).

    The reference for an adapter that trains base weights as well (LoRA's `bias="all"`), which
    `AdapterDisabledReference` refuses: it costs a second set of base weights in memory.
    """
    base = policy.model.get_base_model()
    model = type(base)(copy.deepcopy(base.config)).to(base.dtype)  # the base's class, without peft's layers in it
    model.load_state_dict(base_state_dict(policy.model))  # copies the values: later training does not reach them
    return _frozen(Policy(model, policy.tokenizer, device=policy.device, overflow=policy.overflow))


def make_reference(policy: Policy) -> Policy:
    """The frozen reference for `policy`, equal to it as it is now for a plain policy, to its base for a PEFT one.

    A PEFT policy gets its own model with the adapter off (`AdapterDisabledReference`, no second
    copy of the base), or, when its adapter also trains base weights, a frozen copy of the base
    (`frozen_base_copy`, with a logged warning about the memory); a plain policy a frozen deep
    copy. Always in eval mode and without gradients.
    """
    if policy.is_peft:
        trained_base = _trained_base_weights(policy)
        if not trained_base:
            return AdapterDisabledReference(policy)
        _log.warning("the adapter also trains base weights (%s...), so the KL reference is a frozen copy of the base "
                     "(a second set of base weights in memory); train LoRA with bias='none' to share them",
                     ", ".join(trained_base[:3]))
        return frozen_base_copy(policy)
    return _frozen(Policy(copy.deepcopy(policy.model), policy.tokenizer, device=policy.device,
                          overflow=policy.overflow))


def is_base_reference(reference: Policy, policy: Policy) -> bool:
    """Whether `reference` is `policy`'s own base with the adapter off (what a checkpoint need not save twice)."""
    return isinstance(reference, AdapterDisabledReference) and reference.model.peft_model is policy.model


@torch.no_grad()
def reference_log_probs(reference: Policy, rollout: Rollout, sampling: SamplingConfig) -> torch.Tensor:
    """(B, T) log-probs of the rollout's completion tokens under `reference` (0 where masked)."""
    return reference.log_probs(rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_mask,
                               sampling)
