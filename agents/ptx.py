"""PPO-ptx for any on-policy agent: InstructGPT's pretraining log-likelihood mixed into every update step.

Ouyang et al. 2022 (eq. 2) add `gamma * E_{x ~ D_pretrain}[log pi(x)]` to the RL objective
to reduce the "alignment tax" (the drop on ordinary language tasks that plain PPO shows).
Here, for each optimizer step, a batch of `batch_size` pretraining documents is drawn from
the agent's rng (the same draw on every process), split like the step's micro-batches, and
`gamma * NLL` (the mean over the batch's tokens, globally) is back-propagated beside the
agent's own loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from llm_gym.infra.distributed import Distributed
from llm_gym.infra.update import UpdateStep
from llm_gym.models.lm import document_batch, labelled_tokens, lm_loss
from llm_gym.models.policy import Policy
from llm_gym.models.text import TokenBatch

__all__ = ["PtxMixer"]


class PtxMixer:
    """Draws pretraining batches and back-propagates `coef` times their negative log-likelihood.

    Args:
        texts: the pretraining documents (held-out text is kept apart, for perplexity).
        coef: InstructGPT's gamma (> 0).
        batch_size: documents per optimizer step.
        policy: whose tokenizer and context length cut the documents.
        distributed: the process group (each process takes its share of every batch).
    """

    def __init__(self, texts: Sequence[str], coef: float, batch_size: int, policy: Policy,
                 distributed: Distributed) -> None:
        if not texts:
            raise ValueError("ptx needs pretraining texts; pass ptx_texts=... or set ptx_coef=0")
        self.texts, self.coef, self.batch_size = list(texts), coef, batch_size
        self.policy, self.dist = policy, distributed

    def draw(self, rng: np.random.Generator, steps: int) -> list[tuple[TokenBatch, float]]:
        """This process's share of a random batch of documents, as `steps` micro-batches `(batch, weight)`;
        weight 0 marks a stand-in for an empty share (so every process joins every gradient sync)."""
        idx = rng.integers(len(self.texts), size=self.batch_size)  # the same draw on every process
        texts = [self.texts[i] for i in idx]
        tok, length = self.policy.tokenizer, self.policy.context_length
        return [(document_batch(tok, part, length), w) for part, w in self.dist.micro_shards(texts, steps)]

    @staticmethod
    def tokens(batches: Sequence[tuple[TokenBatch, float]]) -> int:
        """The tokens this process's real micro-batches score (sum it over processes for the global count)."""
        return sum(labelled_tokens(b.labels) for b, w in batches if w)

    def backward(self, update: UpdateStep, model: torch.nn.Module, batch: tuple[TokenBatch, float],
                 global_tokens: float) -> torch.Tensor:
        """Back-propagate `coef` x this micro-batch's share of the global mean NLL (no gradient sync: the agent's own
        backward of the same micro-batch syncs); returns the micro-batch's mean NLL (for logging)."""
        (ids, mask, labels), weight = batch
        with update.micro(sync=False), update.autocast():
            nll_sum = lm_loss(model, ids, mask, labels, reduction="sum")
            nll = nll_sum / max(labelled_tokens(labels), 1)
            # maximise gamma * log-likelihood = minimise gamma * NLL (the global token mean)
            update.backward(self.coef * nll_sum * weight * update.scale(global_tokens), {"ptx_loss": nll})
        return nll
