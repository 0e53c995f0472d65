"""The policy: KV-cached sampling, log-prob recomputation, seeding, overflow policy, logits processing."""

from __future__ import annotations

import pytest
import torch

from llm_gym import Policy, SamplingConfig, process_logits

PROMPTS = [
    "the film was",
    "review of the blender : the motor is very",
    "i bought this laptop and",
    "the",
    "review of the hotel :",
    "my sister loved this novel , but the ending",
    "the headphones",
    "this camera is",
] * 2


@pytest.mark.parametrize(
    "config",
    [
        SamplingConfig(max_new_tokens=32),
        SamplingConfig(max_new_tokens=32, temperature=0.7, top_k=40),
        SamplingConfig(max_new_tokens=32, temperature=1.3, top_p=0.9),
    ],
    ids=["plain", "temp-topk", "temp-topp"],
)
def test_sampled_logprobs_match_recomputed(policy: Policy, config: SamplingConfig) -> None:
    rollout = policy.sample(PROMPTS, config, seed=0)
    # the batch really exercises left padding and completions that stop early at EOS
    assert (rollout.prompt_mask == 0).any(), "prompts of different lengths must be left-padded"
    assert (rollout.prompt_mask[:, -1] == 1).all(), "padding is on the left"
    lengths = rollout.completion_mask.sum(-1)
    assert (lengths < rollout.completion_ids.shape[1]).any(), "some completion must stop early at EOS"
    assert (lengths == config.max_new_tokens).any() or lengths.max() == rollout.completion_ids.shape[1]

    recomputed = policy.log_probs(
        rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_mask, config
    )
    assert recomputed.dtype == torch.float32
    assert (recomputed - rollout.logprobs).abs().max().item() < 1e-4
    assert (rollout.logprobs[rollout.completion_mask == 1] < 0).all()
    assert (rollout.logprobs[rollout.completion_mask == 0] == 0).all()


def test_completion_layout_and_eos(policy: Policy) -> None:
    tok = policy.tokenizer
    rollout = policy.sample(PROMPTS, SamplingConfig(max_new_tokens=32), seed=1)
    for row, mask, text in zip(rollout.completion_ids, rollout.completion_mask, rollout.completions):
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any(), "mask is 1 then 0 (right padding)"
        assert (row[n:] == tok.pad_token_id).all()
        stopped = n < len(row)
        if stopped:
            assert row[n - 1] == tok.eos_token_id, "an early stop ends with EOS, which is part of the completion"
        assert (row[: n - 1] != tok.eos_token_id).all(), "no EOS inside a completion"
        assert text == tok.decode(row[:n], skip_special_tokens=True)
        assert "<|endoftext|>" not in text


def test_same_seed_same_samples(policy: Policy) -> None:
    a = policy.sample(PROMPTS, SamplingConfig(max_new_tokens=16), seed=7)
    b = policy.sample(PROMPTS, SamplingConfig(max_new_tokens=16), seed=7)
    c = policy.sample(PROMPTS, SamplingConfig(max_new_tokens=16), seed=8)
    assert a.completions == b.completions
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.logprobs, b.logprobs)
    assert a.completions != c.completions
    gen1, gen2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert policy.sample(PROMPTS[:4], seed=gen1).completions == policy.sample(PROMPTS[:4], seed=gen2).completions


def test_sampling_respects_max_new_tokens_and_top_k(policy: Policy) -> None:
    config = SamplingConfig(max_new_tokens=5, top_k=1, stop_at_eos=False)
    rollout = policy.sample(PROMPTS[:4], config, seed=0)
    assert rollout.completion_ids.shape == (4, 5)
    assert rollout.completion_mask.all()
    # top_k=1 is greedy: every sampled token is the argmax, so its log-prob under the filtered distribution is 0
    assert torch.allclose(rollout.logprobs, torch.zeros_like(rollout.logprobs))
    again = policy.sample(PROMPTS[:4], config, seed=123)
    assert again.completions == rollout.completions


def test_process_logits_by_hand() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    out = process_logits(logits, SamplingConfig(temperature=2.0))
    assert torch.allclose(out, logits / 2)
    out = process_logits(logits, SamplingConfig(top_k=2))
    assert torch.isinf(out[0, [0, 3]]).all() and torch.equal(out[0, 1:3], logits[0, 1:3])
    # probabilities of [ln .5, ln .3, ln .2]: top_p=0.6 keeps .5 and .3 (the mass before .3 is .5 < .6)
    probs = torch.tensor([[0.5, 0.3, 0.2]])
    out = process_logits(probs.log(), SamplingConfig(top_p=0.6))
    assert torch.isfinite(out[0, :2]).all() and torch.isinf(out[0, 2])
    kept = torch.softmax(out, -1)
    assert torch.allclose(kept, torch.tensor([[0.625, 0.375, 0.0]]))
    # top_p=0.5 keeps only the top token (its mass alone reaches 0.5)
    out = process_logits(probs.log(), SamplingConfig(top_p=0.5))
    assert torch.isinf(out[0, 1:]).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
    ],
)
def test_sampling_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SamplingConfig(**kwargs)


def test_overflow_reject_and_truncate(tiny_model) -> None:
    long_prompt = "the film was great and the actors were very good , " * 40
    strict = Policy.from_pretrained(tiny_model.path, device="cpu", overflow="reject")
    with pytest.raises(ValueError, match="prompt 1 has .* tokens.*shorten it"):
        strict.sample(["the film was", long_prompt], SamplingConfig(max_new_tokens=8), seed=0)

    lenient = Policy.from_pretrained(tiny_model.path, device="cpu", overflow="truncate_left")
    rollout = lenient.sample(["the film was", long_prompt], SamplingConfig(max_new_tokens=8), seed=0)
    assert rollout.num_truncated_prompts == 1 and lenient.num_truncated_prompts == 1
    assert rollout.prompt_ids.shape[1] == lenient.context_length - 8
    assert rollout.prompt_ids[1, 0] == lenient.tokenizer.bos_token_id, "truncation keeps the leading BOS"
    lenient.sample([long_prompt], SamplingConfig(max_new_tokens=8), seed=0)
    assert lenient.num_truncated_prompts == 2, "the running count is kept"
    with pytest.raises(ValueError, match="overflow"):
        Policy.from_pretrained(tiny_model.path, device="cpu", overflow="drop")


def test_bad_prompts(policy: Policy) -> None:
    with pytest.raises(TypeError, match="list of strings"):
        policy.sample("the film was")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        policy.sample([])
    with pytest.raises(ValueError, match="no room"):
        policy.sample(["the"], SamplingConfig(max_new_tokens=policy.context_length))


def test_save_and_load_round_trip(policy: Policy, tmp_path) -> None:
    policy.save_pretrained(tmp_path / "copy")
    again = Policy.from_pretrained(tmp_path / "copy", device="cpu")
    a = policy.sample(PROMPTS[:3], SamplingConfig(max_new_tokens=8), seed=5)
    b = again.sample(PROMPTS[:3], SamplingConfig(max_new_tokens=8), seed=5)
    assert a.completions == b.completions
    assert torch.allclose(a.logprobs, b.logprobs)


def test_policy_uses_cpu_without_cuda(policy: Policy) -> None:
    from llm_gym import default_device

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert default_device().type == expected
    assert next(policy.model.parameters()).device.type == "cpu"


def test_encode_pairs_reads_an_answer_as_sft_does(policy: Policy) -> None:
    from llm_gym.agents.sft import sft_batch
    from llm_gym.core.task import Demonstration
    from llm_gym.models.lm import lm_loss

    demos = [Demonstration("the film was", " great , i loved it ."), Demonstration("review of the hotel : the", " bad"),
             Demonstration("the", "")]
    prompt_ids, prompt_mask, completion_ids, completion_mask = policy.encode_pairs(
        [d.prompt for d in demos], [d.completion for d in demos])
    assert (prompt_mask[:, -1] == 1).all() and (prompt_mask == 0).any(), "prompts are left-padded"
    eos = policy.tokenizer.eos_token_id
    with torch.no_grad():
        logps = policy.log_probs(prompt_ids, prompt_mask, completion_ids, completion_mask).sum(-1)
    for i, demo in enumerate(demos):
        n = int(completion_mask[i].sum())
        assert completion_mask[i, :n].all() and not completion_mask[i, n:].any(), "completions are right-padded"
        assert completion_ids[i, n - 1] == eos, "each completion ends with its EOS"
        batch = sft_batch(policy, [demo])
        row = torch.cat([prompt_ids[i][prompt_mask[i] == 1], completion_ids[i, :n]])
        assert torch.equal(row, batch.input_ids[0]), "the same token ids as SFT's prompt + answer + EOS"
        with torch.no_grad():
            nll = lm_loss(policy.model, batch.input_ids, batch.attention_mask, batch.labels, reduction="sum")
        assert float(logps[i]) == pytest.approx(-float(nll), abs=1e-4), "log pi(answer + EOS | prompt) = -SFT loss"


def test_encode_pairs_overflow_and_bad_input(tiny_model) -> None:
    long_prompt = "the film was great and the actors were very good , " * 40
    strict = Policy.from_pretrained(tiny_model.path, device="cpu", overflow="reject")
    with pytest.raises(ValueError, match="prompt 1 has .* tokens.*shorten it"):
        strict.encode_pairs(["the film was", long_prompt], [" good .", " bad ."])
    lenient = Policy.from_pretrained(tiny_model.path, device="cpu")
    prompt_ids, _, completion_ids, _ = lenient.encode_pairs([long_prompt], [" good ."])
    assert lenient.num_truncated_prompts == 1
    assert prompt_ids.shape[1] + completion_ids.shape[1] == lenient.context_length, "cut to fit its completion"
    assert prompt_ids[0, 0] == lenient.tokenizer.bos_token_id, "truncation keeps the leading BOS"
    with pytest.raises(ValueError, match="completion 0 .* no room"):
        lenient.encode_pairs(["the"], [" good ." * 80])
    with pytest.raises(ValueError, match="pair up"):
        lenient.encode_pairs(["the", "a"], [" good ."])
    with pytest.raises(ValueError, match="at least one"):
        lenient.encode_pairs([], [])
    with pytest.raises(TypeError, match="not one string"):
        lenient.encode_pairs("the", [" good ."])  # type: ignore[arg-type]


def test_log_probs_accepts_a_rollout(policy: Policy) -> None:
    config = SamplingConfig(max_new_tokens=8, temperature=0.7)
    rollout = policy.sample(PROMPTS[:4], config, seed=0)
    tensors = (rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_mask)
    expected = policy.log_probs(*tensors, config)
    assert torch.equal(policy.log_probs(rollout, config), expected)
    assert torch.equal(policy.log_probs(rollout, config=config), expected)
    assert (policy.log_probs(rollout, config) - rollout.logprobs).abs().max() < 1e-4
    assert torch.equal(policy.log_probs(rollout), policy.log_probs(*tensors)), "default: the model's own distribution"
    with pytest.raises(TypeError, match="not both"):
        policy.log_probs(rollout, rollout.prompt_mask)
    with pytest.raises(TypeError, match="two sampling configs"):
        policy.log_probs(rollout, config, config=config)
    with pytest.raises(TypeError, match="four tensors"):
        policy.log_probs(rollout.prompt_ids, rollout.prompt_mask)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "llama-lora"])
def test_sampling_uses_the_current_cache_api_without_deprecation_warnings(policy: Policy, arch: str, monkeypatch) -> None:
    """The KV cache goes in and out under the name the model reads (`cache` in current transformers), so no
    deprecation is raised, and the cache is really used: sampled log-probs match a cache-free recomputation."""
    import warnings

    from transformers.utils import generic

    from doubles import tiny_llama

    if arch != "gpt2":
        if arch == "llama-lora":
            pytest.importorskip("peft")
        with warnings.catch_warnings():  # peft's own use of deprecated transformers names is not ours
            warnings.simplefilter("ignore", FutureWarning)
            policy = Policy(tiny_llama(policy.tokenizer), policy.tokenizer, device="cpu",
                            peft_config={"r": 4, "target_modules": ["q_proj", "v_proj"]} if arch == "llama-lora" else None)
    logged: list[str] = []
    # transformers reports the deprecated `past_key_values` output field through its logger, once per process
    monkeypatch.setattr(generic.logger, "warning_once", lambda msg, *a, **k: logged.append(str(msg)))
    config = SamplingConfig(max_new_tokens=8, stop_at_eos=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        rollout = policy.sample(PROMPTS[:4], config, seed=0)
    assert logged == []
    assert rollout.completion_ids.shape == (4, 8)
    assert torch.allclose(rollout.logprobs, policy.log_probs(rollout, config), atol=1e-5)


@pytest.mark.parametrize("config", [SamplingConfig(max_new_tokens=5), SamplingConfig(max_new_tokens=5, top_k=5, top_p=0.9)],
                         ids=["full", "top-k-top-p"])
def test_evaluate_computes_the_entropy_only_as_far_as_asked(policy: Policy, config: SamplingConfig) -> None:
    """"grad": differentiable (an entropy bonus in the loss); "value": the same numbers without a graph (for the logs,
    so no backward pass runs through the vocabulary), filtered tokens included; "none": not computed (log-probs
    alone, as the reference's)."""
    ro = policy.sample(["the film was", "my phone"], config, seed=0)
    tensors = (ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask, config)
    grad = policy.evaluate(*tensors, entropy="grad")
    value = policy.evaluate(*tensors, entropy="value")
    none = policy.evaluate(*tensors, entropy="none")
    assert grad.entropy.requires_grad and not value.entropy.requires_grad
    assert torch.equal(grad.entropy.detach(), value.entropy) and bool((value.entropy > 0).any())
    assert bool(torch.isfinite(value.entropy).all())
    assert torch.equal(none.entropy, torch.zeros_like(none.entropy))
    for ev in (value, none):  # the log-probs are the same, and differentiable, whatever the entropy
        assert torch.equal(ev.logprobs.detach(), grad.logprobs.detach()) and ev.logprobs.requires_grad
    assert torch.equal(policy.log_probs(ro, config), grad.logprobs.detach())
    with pytest.raises(ValueError, match="entropy must be 'grad', 'value' or 'none'"):
        policy.evaluate(*tensors, entropy="yes")  # type: ignore[arg-type]
