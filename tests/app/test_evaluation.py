"""Evaluation helpers: gold/RM scores on the policy's samples, KL to a reference, win rate, perplexity."""

from __future__ import annotations

import numpy as np
import pytest

from llm_gym import (
    GoldScorer,
    Policy,
    SamplingConfig,
    SyntheticOracle,
    TinyLMConfig,
    evaluate_policy,
    generate_review_task,
    perplexity,
    win_rate,
)

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
