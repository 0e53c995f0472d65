"""Language-model helpers every stage shares: whole documents as a batch, the next-token loss, perplexity, and
gradient checkpointing in an update that runs with dropout off.

Pretraining, PPO-ptx (InstructGPT's pretraining-loss term, Ouyang et al. 2022, eq. 2) and the
alignment-tax measure (held-out perplexity) all read documents the same way: `<bos> text <eos>`,
right-padded, every real token a target (`llm_gym.models.text` does the tokenising and padding).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.utils.checkpoint
from torch.nn.attention import sdpa_kernel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llm_gym.infra.attention import ALL_ATTENTION_KERNELS, FreshContexts, enabled_attention_kernels
from llm_gym.models.text import TokenBatch, append_eos, encode, pad_right

__all__ = ["checkpointable_layers", "checkpointed_layers", "document_batch", "encode_documents", "labelled_tokens",
           "lm_loss", "perplexity"]


def encode_documents(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    """Each text as `<bos> text <eos>`: BOS from the tokenizer's convention, EOS appended."""
    return append_eos(encode(tokenizer, texts), tokenizer.eos_token_id)


def document_batch(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int | None = None) -> TokenBatch:
    """Right-padded `(input_ids, attention_mask, labels)` of whole documents (`<bos> text <eos>`).

    Labels are the ids, -100 on padding; each document is cut to its first `max_length` tokens.
    """
    docs = [d[:max_length] if max_length else d for d in encode_documents(tokenizer, texts)]
    return pad_right(docs, tokenizer.pad_token_id)


def lm_loss(
    model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Next-token cross-entropy of `model` on a `document_batch` (moved to the model's device)."""
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits.float()
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1).to(device), ignore_index=-100,
        reduction=reduction,
    )


def labelled_tokens(labels: torch.Tensor) -> int:
    """How many tokens `lm_loss` scores in a batch with these `labels` (targets other than -100)."""
    return int((labels[:, 1:] != -100).sum())


@torch.no_grad()
def perplexity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    batch_size: int = 64,
) -> float:
    """Token-level perplexity of `model` on `texts` (each scored as a whole document, EOS included)."""
    if len(texts) == 0:
        raise ValueError("perplexity needs at least one text")
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(texts), batch_size):
        ids, mask, labels = document_batch(tokenizer, texts[start : start + batch_size])
        total_nll += float(lm_loss(model, ids, mask, labels, reduction="sum"))
        total_tokens += labelled_tokens(labels)
    model.train(was_training)
    return math.exp(total_nll / total_tokens)


_UNSET = object()


def checkpointable_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer layers of a Hugging Face model (a PEFT model around one too) that gradient checkpointing
    recomputes: its `GradientCheckpointingLayer`s.

    Raises:
        ValueError: the model has none (its architecture does not support checkpointing).
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no layers gradient checkpointing can recompute; set "
                         "gradient_checkpointing = false")
    return layers


@contextlib.contextmanager
def checkpointed_layers(model: torch.nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within the block, each transformer layer of `model` keeps only its inputs and recomputes its activations in the
    backward pass (`torch.utils.checkpoint`, non-reentrant: frozen inputs and LoRA work), where gradients are on.

    The layers are wrapped as they are, in whatever mode they are in: the RL updates run the model in eval mode
    (dropout off, so that the ratio is 1 before the first step), and so does the recomputation. Hugging Face's own
    checkpointing is not used because it runs only in training mode, and some layers (OPT's, Falcon's...) apply
    dropout in their own forward whenever they are in training mode.
    """
    layers = checkpointable_layers(model) if enabled else []
    previous = [layer.__dict__.get("forward", _UNSET) for layer in layers]  # an instance forward (a hook's) stays
    for layer in layers:
        forward = layer.forward

        def recomputed(*args: Any, _forward: Any = forward, **kwargs: Any) -> Any:
            if not torch.is_grad_enabled():
                return _forward(*args, **kwargs)
            # the recomputation runs in the backward pass, outside the forward's blocks: checkpoint restores autocast
            # itself; the attention kernels enabled now (bf16 on CPU chooses the math kernel) are restored here
            backends = enabled_attention_kernels()
            if backends == ALL_ATTENTION_KERNELS:  # torch's defaults (fp32): checkpoint exactly as without this
                return torch.utils.checkpoint.checkpoint(_forward, *args, use_reentrant=False, **kwargs)
            recompute = FreshContexts(lambda: sdpa_kernel(list(backends)))  # entered at every recomputation
            return torch.utils.checkpoint.checkpoint(_forward, *args, use_reentrant=False,
                                                     context_fn=lambda: (contextlib.nullcontext(), recompute), **kwargs)

        layer.forward = recomputed  # an instance attribute over the class's forward, removed below
    try:
        yield
    finally:
        for layer, before in zip(layers, previous):
            if before is _UNSET:
                del layer.forward
            else:
                layer.forward = before
