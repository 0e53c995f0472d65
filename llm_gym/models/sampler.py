"""What evaluation needs from anything that samples completions: the `CompletionSampler` protocol.

A `Policy` is one (it satisfies the protocol as it is); so is a best-of-N sampler
(`llm_gym.agents.BestOfN`), which draws N completions from a base policy and keeps the one a
reward function scores highest. `llm_gym.app.evaluation.evaluate_policy` takes any of them and
computes every column of its table through the protocol's members only:

* `sample` gives the completions (gold score, RM score, win rate) and their token counts;
* `model` and `tokenizer` are the language model underneath (held-out perplexity, the
  "alignment tax" of InstructGPT);
* `log_probs` are the per-token log-probs of the *token-level* policy the completions were drawn
  from, and `selection_kl` what a selection among those draws adds on top, so that the KL to a
  reference is, by the chain rule,

      KL(S || ref) = KL(S || base) + E_{y ~ S}[ log base(y) - log ref(y) ]
                   = selection_kl(S) + E_{y ~ S}[ sum_t log_probs(y_t) - ref.log_probs(y_t) ],

  where `base` is the policy whose `log_probs` the sampler reports: the sampler itself for a
  `Policy` (the first term is 0 and the second is the usual sequence KL of InstructGPT's
  tables), the base policy for best-of-N (the first term is its analytic KL
  `log N - (N - 1) / N`, Stiennon et al. 2020, appendix; the second is 0 when the reference *is*
  that base).

The protocols live here, beside `Policy`, so that both the evaluation (`llm_gym/app`) and the
agents (`agents/`) can import them without importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llm_gym.models.policy import Rollout, SamplingConfig

__all__ = ["CompletionSampler", "SelectionSampler", "selection_kl"]


@runtime_checkable
class CompletionSampler(Protocol):
    """Anything evaluation can evaluate: it samples completions and knows the model they come from.

    `Policy` satisfies it as it is. A sampler that selects among a base policy's samples
    (best-of-N) satisfies it by delegating `model`, `tokenizer` and `log_probs` to that base,
    and declares what the selection costs in KL by also satisfying `SelectionSampler`.
    """

    @property
    def model(self) -> PreTrainedModel:
        """The language model underneath (held-out perplexity is computed on it)."""
        ...

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The model's tokenizer."""
        ...

    def sample(
        self,
        prompts: Sequence[str],
        config: SamplingConfig = ...,
        seed: int | torch.Generator | None = None,
    ) -> Rollout:
        """One completion per prompt, in prompt order; the same `seed` gives the same completions.

        `Rollout.logprobs` are the log-probs of each token under the token-level policy it was
        drawn from (`log_probs` recomputes them).
        """
        ...

    def log_probs(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        completion_ids: torch.Tensor,
        completion_mask: torch.Tensor,
        config: SamplingConfig = ...,
    ) -> torch.Tensor:
        """(B, T) per-token log-probs of given completions under the token-level policy they are drawn from.

        For a `Policy` this is its own distribution; for a sampler that selects among a base
        policy's samples it is the base's (the selection is not a token-level distribution:
        its share of the KL is `SelectionSampler.kl_to_base`).
        """
        ...


@runtime_checkable
class SelectionSampler(CompletionSampler, Protocol):
    """A `CompletionSampler` that draws from a base policy (its `log_probs`) and then selects among the draws.

    Best-of-N is the example: its completions are not distributed as the base's, and the
    difference is a sequence-level quantity that no per-token log-prob carries. The sampler
    states it as `kl_to_base`, `KL(this sampler's distribution || the base policy)`, in nats
    per completion, and `selection_kl` adds it to the token-level part of the KL to a reference.
    """

    @property
    def kl_to_base(self) -> float:
        """KL(this sampler || its base policy), nats per completion (0 means no selection)."""
        ...


def selection_kl(sampler: CompletionSampler) -> float:
    """What selecting among the base policy's draws adds to the KL: `sampler.kl_to_base`, or 0 for a plain policy.

    A `Policy` samples from the distribution its `log_probs` describe, so nothing is added;
    a `SelectionSampler` (best-of-N) says what its selection costs.

    >>> class Plain:  # a policy-like sampler: no selection
    ...     model = tokenizer = None
    ...     def sample(self, prompts, config=None, seed=None): ...
    ...     def log_probs(self, prompt_ids, prompt_mask, completion_ids, completion_mask, config=None): ...
    >>> selection_kl(Plain())
    0.0
    """
    return float(sampler.kl_to_base) if isinstance(sampler, SelectionSampler) else 0.0
