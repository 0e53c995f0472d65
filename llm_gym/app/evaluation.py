"""Evaluating a policy the way InstructGPT's tables do: gold score, RM score, KL, win rate, perplexity.

What is evaluated is anything that samples completions (`llm_gym.models.sampler.CompletionSampler`):
a `Policy` (SFT, PPO, RLOO, GRPO, DPO: every agent's `.policy`) or a best-of-N sampler
(`llm_gym.agents.BestOfN`), all through the same code.

* gold score: the gold scorer (the stand-in for human judgement) on held-out prompts;
* RM score: what the reward model thinks of the same completions;
* KL to the reference: `E_y~pi [log pi(y) - log pi_ref(y)]` on the sampler's own samples (nats
  per completion). For a policy that is `sum_t log pi(y_t) - log pi_ref(y_t)`, exact per sample;
  for best-of-N it is the analytic `KL(BoN || base) = log N - (N - 1) / N` plus the same
  token-level sum with the base in place of pi (zero when the reference is the base): see
  `kl_to_reference`;
* win rate: how often an oracle prefers this policy's completion to the reference's on the
  same prompt (ties count one half);
* held-out perplexity on pretraining text: the "alignment tax" measure (PPO-ptx exists to
  keep it down), of the sampler's underlying model (for best-of-N, the base's: selection
  changes no weights).

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
from llm_gym.models.sampler import CompletionSampler, selection_kl

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


def _sample(
    sampler: CompletionSampler, prompts: Sequence[str], sampling: SamplingConfig, seed: int, batch_size: int
) -> list[Rollout]:
    return [
        sampler.sample(list(prompts[i : i + batch_size]), sampling, seed=seed + i) for i in range(0, len(prompts), batch_size)
    ]


def kl_to_reference(
    policy: CompletionSampler, reference: Policy, rollouts: Sequence[Rollout], sampling: SamplingConfig
) -> float:
    """KL(policy || reference) in nats per completion, estimated on the policy's own samples `rollouts`.

    By the chain rule through the token-level policy the samples were drawn from (`policy.log_probs`;
    see `llm_gym.models.sampler`):

        selection_kl(policy) + mean over completions of sum_t [log_probs(y_t) - reference.log_probs(y_t)].

    * A `Policy`: the first term is 0, the second the usual Monte-Carlo sequence KL (exactly 0
      against itself).
    * Best-of-N over a base policy: the first term is the analytic `log N - (N - 1) / N` (Stiennon
      et al. 2020; the x-axis of Gao et al. 2022). Against the base itself the second term is 0 and
      the result is the analytic value, the figure those papers plot. Against another reference it
      adds the base's sequence KL to that reference, averaged over the *selected* completions,
      which is `KL(BoN || reference)` by the chain rule, as exact as the analytic term (an upper
      bound when rewards tie, Beirami et al. 2024: see `llm_gym.agents.best_of_n`).

    `sampling` must be the settings the rollouts were sampled with (the log-probs then describe
    the distribution actually sampled).
    """
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for ro in rollouts:
            ref = reference.log_probs(ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask, sampling)
            own = policy.log_probs(ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask, sampling)
            total += float((own - ref).sum())
            count += ro.completion_ids.shape[0]
    return selection_kl(policy) + total / count


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
    policy: CompletionSampler,
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
        policy: what to evaluate: a `Policy`, or any other `CompletionSampler` (a `BestOfN`
            sampler: its KL is the analytic best-of-N value when `reference` is its base
            policy; see `kl_to_reference` for what it is against another reference).
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
    if not isinstance(policy, CompletionSampler):
        raise TypeError(f"evaluate_policy evaluates a CompletionSampler (sample, log_probs, model, tokenizer: a Policy or a "
                        f"BestOfN), got {type(policy).__name__}; for an on-policy agent (PPO, RLOO, GRPO) pass agent.policy")
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
    ppl = perplexity(policy.model, policy.tokenizer, heldout_texts) if heldout_texts else None  # the underlying model
    return PolicyReport(gold=gold, rm_score=rm, kl=kl, win_rate=win, perplexity=ppl, mean_tokens=tokens)
