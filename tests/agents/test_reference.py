"""The frozen reference on its own: a copy without gradients, in eval mode, equal to the policy at the start; for a
LoRA policy, the same model with its adapter off."""

from __future__ import annotations

import copy
import logging
import warnings

import pytest
import torch

from llm_gym import Policy, SamplingConfig
from llm_gym.agents.reference import make_reference, reference_log_probs


def test_a_frozen_copy_scores_as_the_policy_did_and_does_not_move(policy: Policy) -> None:
    sampling = SamplingConfig(max_new_tokens=6, top_k=20)
    ref = make_reference(policy)
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


def test_the_reference_of_a_lora_policy_is_its_base_with_the_adapter_off(policy: Policy, tmp_path) -> None:
    pytest.importorskip("peft")
    from llm_gym.agents.reference import AdapterDisabledReference

    sampling = SamplingConfig(max_new_tokens=6, top_k=20)
    base = make_reference(policy)  # a plain policy: a deep copy, as before
    assert type(base) is Policy and base.model is not policy.model
    with warnings.catch_warnings():  # peft's own use of deprecated transformers names
        warnings.simplefilter("ignore", FutureWarning)
        lora = Policy(policy.model, policy.tokenizer, device="cpu", peft_config={"r": 4, "target_modules": ["c_attn"],
                                                                                           "fan_in_fan_out": True})
    ref = make_reference(lora)
    assert isinstance(ref, AdapterDisabledReference) and ref.tokenizer is lora.tokenizer
    assert not ref.model.training and not any(p.requires_grad for p in ref.model.parameters())
    with torch.no_grad():
        for name, p in lora.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)  # a trained adapter (LoRA's B starts at zero)
    rollout = lora.sample(["the film was", "the hotel is"], sampling, seed=0)
    expected = reference_log_probs(base, rollout, sampling)
    assert not torch.allclose(lora.log_probs(rollout, sampling), expected, atol=1e-3)
    assert torch.allclose(reference_log_probs(ref, rollout, sampling), expected, atol=1e-6)
    ref.save_pretrained(tmp_path / "reference")  # the base alone (GPT-2 ties its unembedding to the embedding)
    loaded = Policy.from_pretrained(tmp_path / "reference", device="cpu")
    assert not loaded.is_peft
    assert torch.allclose(reference_log_probs(loaded, rollout, sampling), expected, atol=1e-6)


def test_a_reference_is_the_base_only_for_its_own_lora_policy(policy: Policy, tmp_path) -> None:
    from llm_gym.agents.reference import is_base_reference

    ref = make_reference(policy)
    assert type(ref) is Policy and not is_base_reference(ref, policy)
    pytest.importorskip("peft")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        lora = Policy(policy.model, policy.tokenizer, device="cpu",
                      peft_config={"r": 4, "target_modules": ["c_attn"], "fan_in_fan_out": True})
    lora_ref = make_reference(lora)
    assert is_base_reference(lora_ref, lora) and not is_base_reference(make_reference(lora), ref)
    lora_ref.save_pretrained(tmp_path / "reference", merged=True)  # accepted (and ignored) as on a Policy
    assert not Policy.from_pretrained(tmp_path / "reference", device="cpu").is_peft


def test_an_adapter_that_trains_biases_gets_a_frozen_copy_of_its_base(policy: Policy, caplog) -> None:
    """LoRA with bias="all" trains base weights, which the adapter-off reference cannot survive: a frozen copy it is."""
    pytest.importorskip("peft")
    from llm_gym.agents.reference import AdapterDisabledReference, frozen_base_copy

    sampling = SamplingConfig(max_new_tokens=6)
    base = Policy(copy.deepcopy(policy.model), policy.tokenizer, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        lora = Policy(policy.model, policy.tokenizer, device="cpu",
                      peft_config={"r": 4, "target_modules": ["c_attn"], "fan_in_fan_out": True, "bias": "all"})
    with pytest.raises(ValueError, match=r"use make_reference\(policy\), which makes a frozen copy of the base"):
        AdapterDisabledReference(lora)
    with caplog.at_level(logging.WARNING, logger="llm_gym.agents.reference"):
        ref = make_reference(lora)
    assert "frozen copy of the base" in caplog.text and "bias='none'" in caplog.text
    assert type(ref) is Policy and not any(p.requires_grad for p in ref.model.parameters()) and not ref.model.training
    rollout = base.sample(["the film was", "the hotel is"], sampling, seed=0)
    expected = reference_log_probs(base, rollout, sampling)
    with torch.no_grad():
        for name, p in lora.model.named_parameters():
            if p.requires_grad:
                p.add_(0.05)  # the adapter and the biases train
    assert not torch.allclose(lora.log_probs(rollout, sampling), expected, atol=1e-3)
    # the reference did not move
    assert torch.allclose(reference_log_probs(ref, rollout, sampling), expected, atol=1e-6)
    assert type(frozen_base_copy(lora)) is Policy  # the recipe the error names
