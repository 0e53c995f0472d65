"""Evaluating a policy the way InstructGPT's tables do: gold score, RM score, KL, win rate, perplexity.

* gold score: the gold scorer (the stand-in for human judgement) on held-out prompts;
* RM score: what the reward model thinks of the same completions;
* KL to the reference: `E_y~pi [sum_t log pi(y_t) - log pi_ref(y_t)]` on the policy's own
  samples (nats per completion);
* win rate: how often an oracle prefers this policy's completion to the reference's on the
  same prompt (ties count one half);
* held-out perplexity on pretraining text: the "alignment tax" measure (PPO-ptx exists to
  keep it down).

Every figure is computed from one fixed seed, so two policies are compared on the same
prompts and the same sampling randomness.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llm_gym.feedback.oracles import PreferenceOracle
from llm_gym.models.policy import Policy, Rollout, SamplingConfig
from llm_gym.core.preferences import Query
from llm_gym.core.reward import RewardFn, score_batch
from llm_gym.models.lm import perplexity

__all__ = ["PolicyReport", "evaluate_policy", "kl_to_reference", "win_rate"]


@dataclass(frozen=True)
class PolicyReport:
    """One row of an InstructGPT-style table (a field is None when its input was not given)."""

    gold: float | None
    rm_score: float | None
    kl: float | None
    win_rate: float | None
    perplexity: float | None
    mean_tokens: float

    def as_dict(self) -> dict[str, float | None]:
        return dict(vars(self))


def _sample(policy: Policy, prompts: Sequence[str], sampling: SamplingConfig, seed: int, batch_size: int) -> list[Rollout]:
    return [
        policy.sample(list(prompts[i : i + batch_size]), sampling, seed=seed + i) for i in range(0, len(prompts), batch_size)
    ]


def kl_to_reference(policy: Policy, reference: Policy, rollouts: Sequence[Rollout], sampling: SamplingConfig) -> float:
    """Mean over completions of `sum_t log pi(y_t) - log pi_ref(y_t)`, on the policy's own samples."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for ro in rollouts:
            ref = reference.log_probs(ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask, sampling)
            own = policy.log_probs(ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask, sampling)
            total += float((own - ref).sum())
            count += ro.completion_ids.shape[0]
    return total / count


def win_rate(
    prompts: Sequence[str],
    completions: Sequence[str],
    baseline_completions: Sequence[str],
    oracle: PreferenceOracle,
) -> float:
    """Share of prompts on which `oracle` prefers `completions` to `baseline_completions` (ties = 1/2).

    Each pair is shown in a fixed order (candidate first: fine for synthetic oracles, which have no
    position bias; shuffle the pairs before showing them to people); an oracle that
    skips a query simply leaves it out of the average.
    """
    if not (len(prompts) == len(completions) == len(baseline_completions)):
        raise ValueError("prompts, completions and baseline_completions must have the same length")
    queries = [Query(p, (c, b), query_id=f"win-{i}") for i, (p, c, b) in enumerate(zip(prompts, completions, baseline_completions))]
    wins = [{"first": 1.0, "second": 0.0, "tie": 0.5}[a.choice] for a in oracle.answer(queries)]
    if not wins:
        raise ValueError("the oracle answered none of the win-rate queries")
    return float(np.mean(wins))


def evaluate_policy(
    policy: Policy,
    prompts: Sequence[str],
    *,
    sampling: SamplingConfig = SamplingConfig(max_new_tokens=24),
    seed: int = 0,
    gold_fn: RewardFn | None = None,
    reward_fn: RewardFn | None = None,
    reference: Policy | None = None,
    oracle: PreferenceOracle | None = None,
    heldout_texts: Sequence[str] | None = None,
    batch_size: int = 64,
) -> PolicyReport:
    """Sample one completion per prompt and report whatever the given inputs allow.

    Args:
        policy: the policy to evaluate.
        prompts: held-out prompts.
        sampling: sampling settings (the same for the policy and the reference).
        seed: sampling seed (the reference is sampled with the same seeds).
        gold_fn: the true objective (gold score).
        reward_fn: the reward model (RM score).
        reference: the SFT policy, for the KL and (with `oracle`) the win rate.
        oracle: judges the win rate against the reference's completions.
        heldout_texts: pretraining text never trained on (perplexity).
    """
    if len(prompts) == 0:
        raise ValueError("evaluate_policy needs at least one prompt")
    rollouts = _sample(policy, prompts, sampling, seed, batch_size)
    completions = [c for ro in rollouts for c in ro.completions]
    tokens = float(np.mean([float(m.sum()) for ro in rollouts for m in ro.completion_mask]))
    gold = float(score_batch(gold_fn, prompts, completions).mean()) if gold_fn is not None else None
    rm = float(score_batch(reward_fn, prompts, completions).mean()) if reward_fn is not None else None
    kl = kl_to_reference(policy, reference, rollouts, sampling) if reference is not None else None
    win = None
    if reference is not None and oracle is not None:
        baseline = [c for ro in _sample(reference, prompts, sampling, seed, batch_size) for c in ro.completions]
        win = win_rate(prompts, completions, baseline, oracle)
    ppl = perplexity(policy.model, policy.tokenizer, heldout_texts) if heldout_texts else None
    return PolicyReport(gold=gold, rm_score=rm, kl=kl, win_rate=win, perplexity=ppl, mean_tokens=tokens)
