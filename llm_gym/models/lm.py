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

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llm_gym.models.text import TokenBatch, append_eos, encode, pad_right

__all__ = ["checkpointed_layers", "document_batch", "enable_gradient_checkpointing", "encode_documents", "labelled_tokens",
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
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
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


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Turn on Hugging Face's gradient checkpointing (non-reentrant, so frozen inputs and LoRA work) on `model`, a
    causal LM or a PEFT model around one.

    Raises:
        ValueError: the model does not support it (its class has no gradient checkpointing).
    """
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(target, "supports_gradient_checkpointing", False):
        raise ValueError(f"{type(target).__name__} does not support gradient checkpointing; set gradient_checkpointing "
                         "= false")
    kwargs = {"use_reentrant": False}
    if hasattr(target, "activation_checkpointing_enable"):  # its name from transformers 5.x on
        target.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        target.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if hasattr(target, "enable_input_require_grads"):  # checkpointed layers need an input that requires grad (LoRA)
        target.enable_input_require_grads()


@contextlib.contextmanager
def checkpointed_layers(model: torch.nn.Module, enabled: bool = True) -> Iterator[None]:
    """Let the checkpointed layers of a model in eval mode checkpoint, with dropout still off.

    Hugging Face checkpoints a layer only when *the layer itself* is in training mode; the RL updates
    run the model in eval mode (dropout off, so that the ratio is 1 before the first step). This sets
    the training flag of the checkpointed layers alone, not of their children (attention and MLP keep
    dropout off), for the duration of the block.
    """
    def checkpointed(m: torch.nn.Module) -> bool:
        return getattr(m, "gradient_checkpointing", False) is True

    # the layers: checkpointed modules with no checkpointed module inside (not the model that holds them)
    layers = [m for m in model.modules() if checkpointed(m) and not any(checkpointed(c) for c in m.modules() if c is not m)
              ] if enabled else []
    flags = [m.training for m in layers]
    for m in layers:
        m.training = True
    try:
        yield
    finally:
        for m, flag in zip(layers, flags):
            m.training = flag
