"""Evaluation helpers: gold/RM scores on the policy's samples, KL to a reference, win rate, perplexity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llm_gym import (
    GoldScorer,
    Policy,
    PretrainReport,
    SamplingConfig,
    SyntheticOracle,
    TinyLMConfig,
    evaluate_policy,
    generate_review_task,
    kl_to_reference,
    perplexity,
    win_rate,
)
from llm_gym.agents.best_of_n import BestOfN, BestOfNConfig, best_of_n_kl

PROMPTS = ["the film was", "review of the blender :", "i bought this laptop and", "the hotel is"]


def length_scorer(prompts, completions):
    return np.array([float(len(c)) for c in completions])


def test_report_fields_match_direct_computation(policy: Policy) -> None:
    sampling = SamplingConfig(max_new_tokens=12)
    heldout = generate_review_task(TinyLMConfig.smoke().task).heldout_texts[:20]
    judge = SyntheticOracle(GoldScorer(), rng=np.random.default_rng(0), temperature=0.0)
    rep = evaluate_policy(policy, PROMPTS, sampling=sampling, seed=3, gold_fn=GoldScorer(), reward_fn=length_scorer,
                          reference=policy, oracle=judge, heldout_texts=heldout, batch_size=3)
    completions = policy.sample(PROMPTS[:3], sampling, seed=3).completions + policy.sample(PROMPTS[3:], sampling, seed=6).completions
    assert rep.gold == pytest.approx(GoldScorer()(PROMPTS, completions).mean())
    assert rep.rm_score == pytest.approx(np.mean([len(c) for c in completions]))
    assert rep.kl == pytest.approx(0.0, abs=1e-5), "a policy has zero KL to itself"
    assert rep.win_rate == 0.5, "the same seeds give the same completions: every pair ties"
    assert rep.perplexity == pytest.approx(perplexity(policy.model, policy.tokenizer, heldout))
    assert 0 < rep.mean_tokens <= 12
    bare = evaluate_policy(policy, PROMPTS, sampling=sampling)
    assert bare.gold is None and bare.kl is None and bare.win_rate is None and bare.perplexity is None


def test_win_rate_counts_wins_and_ties() -> None:
    judge = SyntheticOracle(length_scorer, rng=np.random.default_rng(0), temperature=0.0)
    rate = win_rate(["p"] * 4, [" long answer", " x", " same", " longer one"], [" x", " long answer", " same", " y"], judge)
    assert rate == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    with pytest.raises(ValueError, match="same length"):
        win_rate(["p"], [" a", " b"], [" c"], judge)


def test_evaluate_needs_prompts(policy: Policy) -> None:
    with pytest.raises(ValueError, match="at least one prompt"):
        evaluate_policy(policy, [])


# --------------------------------------------------------------------------- anything that samples: best-of-N


def _perturbed(tiny_model: PretrainReport) -> Policy:
    """Another policy of the same architecture: the same weights plus a little noise (a reference that is not the base)."""
    other = Policy.from_pretrained(tiny_model.path, device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in other.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return other


def test_best_of_n_reports_its_analytic_kl_to_the_base(policy: Policy) -> None:
    sampling = SamplingConfig(max_new_tokens=12)
    for n in (1, 4):
        bon = BestOfN(policy, length_scorer, BestOfNConfig(n=n), rng=np.random.default_rng(0))
        rep = evaluate_policy(bon, PROMPTS, sampling=sampling, seed=3, reference=policy, batch_size=3)
        assert rep.kl == pytest.approx(math.log(n) - (n - 1) / n, abs=1e-6)
        assert rep.kl == pytest.approx(best_of_n_kl(n), abs=1e-6)


def test_best_of_n_on_the_gold_scorer_beats_the_base_policy_on_gold(policy: Policy) -> None:
    """N = 8 selected by the gold scorer: at least the base's gold on the same prompts and seed (the first candidate
    of each prompt is the base's own sample with that seed, so this holds prompt by prompt, not only on average)."""
    sampling = SamplingConfig(max_new_tokens=12)
    gold = GoldScorer()
    bon = BestOfN(policy, gold, BestOfNConfig(n=8), rng=np.random.default_rng(0))
    base = evaluate_policy(policy, PROMPTS, sampling=sampling, seed=3, gold_fn=gold)
    best = evaluate_policy(bon, PROMPTS, sampling=sampling, seed=3, gold_fn=gold)
    assert best.gold >= base.gold
    assert best.gold > base.gold, "eight tries at the gold scorer should find something better on some prompt"
    per_prompt_base = gold(PROMPTS, policy.sample(PROMPTS, sampling, seed=3).completions)
    per_prompt_best = gold(PROMPTS, bon.sample(PROMPTS, sampling, seed=3).completions)
    assert (per_prompt_best >= per_prompt_base).all()


def test_best_of_n_goes_through_the_same_code_as_a_policy(policy: Policy, tiny_model: PretrainReport) -> None:
    """Best-of-1 is the base policy: every field of its report equals the policy's, KL to another reference included."""
    sampling = SamplingConfig(max_new_tokens=12)
    heldout = generate_review_task(TinyLMConfig.smoke().task).heldout_texts[:20]
    reference = _perturbed(tiny_model)
    kwargs = {"sampling": sampling, "seed": 3, "gold_fn": GoldScorer(), "reward_fn": length_scorer, "reference": reference,
              "heldout_texts": heldout, "batch_size": 3}

    def judge() -> SyntheticOracle:  # a fresh one per evaluation: the oracle's rng moves on as it answers
        return SyntheticOracle(GoldScorer(), rng=np.random.default_rng(0), temperature=0.0)

    as_policy = evaluate_policy(policy, PROMPTS, oracle=judge(), **kwargs)
    bon = BestOfN(policy, length_scorer, BestOfNConfig(n=1), rng=np.random.default_rng(0))
    as_bon = evaluate_policy(bon, PROMPTS, oracle=judge(), **kwargs)
    assert as_bon == as_policy
    assert as_policy.kl > 0.01, "the perturbed reference is another distribution"
    # best-of-4 against the same reference: the analytic KL to the base plus the base's KL to the reference,
    # averaged over the selected completions (the chain rule)
    bon4 = BestOfN(policy, length_scorer, BestOfNConfig(n=4), rng=np.random.default_rng(0))
    rollouts = [bon4.sample(PROMPTS[:3], sampling, seed=3), bon4.sample(PROMPTS[3:], sampling, seed=6)]
    rep = evaluate_policy(bon4, PROMPTS, **kwargs)
    assert rep.kl == pytest.approx(best_of_n_kl(4) + kl_to_reference(policy, reference, rollouts, sampling), abs=1e-6)


def test_evaluate_refuses_what_does_not_sample(policy: Policy) -> None:
    with pytest.raises(TypeError, match=r"CompletionSampler .* got str; for an on-policy agent .* pass agent.policy"):
        evaluate_policy("gpt2", PROMPTS)  # type: ignore[arg-type]
