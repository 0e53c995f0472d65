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

On a task with verifiable answers (its gold judge has `verifies_answers = True` and answers 1.0 for a
correct completion, 0.0 for a wrong one: `llm_gym.core.metrics.verifies_answers`), also:

* greedy accuracy: the share of prompts whose greedy completion (`top_k=1`, the other sampling
  settings kept) is correct (for best-of-N: all N candidates are then the base's greedy completion);
* sampled accuracy: the share of correct completions among `samples_per_prompt` (n) sampled per
  prompt with the given sampling settings; the first of the n is the completion the gold column
  scores, so gold is the same accuracy on one sample;
* pass@k for each k of `pass_k`: the unbiased estimator of Chen et al. 2021 from those n samples
  (`llm_gym.core.metrics.estimate_pass_at_k`); pass@1 equals the sampled accuracy.

A completion counts as correct when the judge gives it the full score 1.0 (a judge that gives partial
credit has its partial scores counted as wrong). Nothing of this is computed, and nothing more sampled,
on other tasks.

Every figure is computed from one fixed seed, so two policies are compared on the same
prompts and the same sampling randomness.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from llm_gym.feedback.oracles import PreferenceOracle
from llm_gym.models.policy import Policy, Rollout, SamplingConfig
from llm_gym.core.metrics import estimate_pass_at_k, verifies_answers
from llm_gym.core.preferences import Query
from llm_gym.core.reward import RewardFn, score_batch
from llm_gym.models.lm import perplexity
from llm_gym.models.sampler import CompletionSampler, selection_kl

__all__ = ["PolicyReport", "answer_accuracy", "evaluate_policy", "kl_to_reference", "win_rate"]


_VERIFIED = ("accuracy_greedy", "accuracy_sampled", "pass_at_k")
"""The fields only a task with verifiable answers has (left out of `PolicyReport.as_dict` otherwise)."""


@dataclass(frozen=True)
class PolicyReport:
    """One row of an InstructGPT-style table (a field is None when its input was not given)."""

    gold: float | None
    rm_score: float | None
    kl: float | None
    win_rate: float | None
    perplexity: float | None
    mean_tokens: float
    accuracy_greedy: float | None = None
    """Share of prompts answered correctly by greedy decoding (verifiable tasks only)."""
    accuracy_sampled: float | None = None
    """Share of correct completions among `samples_per_prompt` sampled per prompt (verifiable tasks only)."""
    pass_at_k: dict[int, float] | None = field(default=None)
    """k -> pass@k, Chen et al. 2021's unbiased estimator (verifiable tasks only)."""

    def as_dict(self) -> dict[str, float | None]:
        """The row as summary.json holds it: every field, with pass@k flattened to ``"pass@1"``, ``"pass@4"``...

        On a task without verifiable answers the accuracy and pass@k keys are left out, so its row is what it was
        before they existed.
        """
        row = {k: v for k, v in vars(self).items() if k not in _VERIFIED}
        if self.accuracy_greedy is not None or self.accuracy_sampled is not None or self.pass_at_k is not None:
            row.update(accuracy_greedy=self.accuracy_greedy, accuracy_sampled=self.accuracy_sampled)
            row.update({f"pass@{k}": v for k, v in sorted((self.pass_at_k or {}).items())})
        return row


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
    samples_per_prompt: int = 8,
    pass_k: Sequence[int] = (1, 4, 8),
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
        samples_per_prompt: n, completions sampled per prompt for the sampled accuracy and pass@k, when `gold_fn`
            verifies answers (`llm_gym.core.metrics.verifies_answers`); ignored otherwise.
        pass_k: the k of each pass@k, each in [1, samples_per_prompt] (used with verifiable answers only).
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
    report = PolicyReport(gold=gold, rm_score=rm, kl=kl, win_rate=win, perplexity=ppl, mean_tokens=tokens)
    if not verifies_answers(gold_fn):
        return report
    assert gold_fn is not None  # verifies_answers(None) is False
    greedy, sampled, passes = answer_accuracy(policy, prompts, gold_fn, completions, sampling=sampling, seed=seed,
                                              samples_per_prompt=samples_per_prompt, pass_k=pass_k, batch_size=batch_size)
    return replace(report, accuracy_greedy=greedy, accuracy_sampled=sampled, pass_at_k=passes)


def _correct(gold_fn: RewardFn, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
    """Which completions the answer-checking `gold_fn` scores fully correct (1.0)."""
    return score_batch(gold_fn, prompts, completions) >= 1.0


def answer_accuracy(
    policy: CompletionSampler,
    prompts: Sequence[str],
    gold_fn: RewardFn,
    first_completions: Sequence[str] | None = None,
    *,
    sampling: SamplingConfig = SamplingConfig(max_new_tokens=24),
    seed: int = 0,
    samples_per_prompt: int = 8,
    pass_k: Sequence[int] = (1, 4, 8),
    batch_size: int = 64,
) -> tuple[float, float, dict[int, float]]:
    """Greedy accuracy, sampled accuracy and pass@k of `policy` on `prompts`, judged by the answer checker `gold_fn`.

    Sample r (r = 0 .. n-1) of every prompt is drawn with seeds `seed + r * len(prompts) + i` by batch start i, so
    sample 0 is `evaluate_policy`'s own completion (pass it as `first_completions` to skip drawing it again) and no
    two samples share a seed. The greedy completions are `sampling` with `top_k=1`.

    Returns:
        (greedy accuracy, sampled accuracy over the n samples, {k: pass@k}) with the estimator of Chen et al. 2021.

    Raises:
        ValueError: samples_per_prompt < 1, or a k outside [1, samples_per_prompt].
    """
    n = samples_per_prompt
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"samples_per_prompt must be a positive int, got {n!r}")
    bad = [k for k in pass_k if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n]
    if bad:
        raise ValueError(f"pass_k: every k must be an int in [1, samples_per_prompt={n}], got {bad[0]!r}; "
                         f"sample more per prompt or drop it")
    greedy = [c for ro in _sample(policy, prompts, sampling.greedy(), seed, batch_size) for c in ro.completions]
    accuracy_greedy = float(_correct(gold_fn, prompts, greedy).mean())
    correct = np.zeros(len(prompts), dtype=int)
    for r in range(n):
        if r == 0 and first_completions is not None:
            completions = list(first_completions)
        else:
            completions = [c for ro in _sample(policy, prompts, sampling, seed + r * len(prompts), batch_size)
                           for c in ro.completions]
        correct += _correct(gold_fn, prompts, completions)
    accuracy_sampled = float(correct.mean() / n)
    passes = {int(k): float(estimate_pass_at_k(n, correct, k).mean()) for k in pass_k}
    return accuracy_greedy, accuracy_sampled, passes
