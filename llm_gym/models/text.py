"""Text to token batches: the one place where the policy, SFT, the reward model and LM documents tokenise, cut and pad.

Every encoder reads a text as the tokenizer does on its own (`tokenizer(text)`), so a BOS is
prepended where its convention adds one and the same prompt becomes the same ids wherever
llm_gym reads it (`tests/models/test_text.py` checks the four against each other). What
differs between them is what each model needs:

    Policy.encode_prompts  prompt                     cut on the left, BOS kept  left-padded   generation continues at -1
    RewardModel.encode     prompt + completion + EOS  cut on the left, BOS kept  left-padded   the reward is read at -1
    sft_batch              prompt, answer + EOS       cut on the left            right-padded  labels on the answer only
    document_batch         text + EOS                 cut on the right           right-padded  labels on every token

An SFT answer is encoded apart from its prompt and without special tokens, so training sees the
token boundary the policy sees when it continues a prompt. Left padding puts every sequence's
last real token at index -1; with `position_ids`, which count real tokens only, a left-padded
sequence is computed exactly as an unpadded one. A text that begins with the BOS string itself (a
rendered chat template) keeps a single BOS (`encode`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from transformers import PreTrainedTokenizerBase

__all__ = ["TokenBatch", "append_eos", "encode", "pad_left", "pad_right", "position_ids", "truncate_left",
           "truncate_left_all"]


class TokenBatch(NamedTuple):
    """Right-padded token ids for next-token training; `labels` is -100 where nothing is predicted."""

    input_ids: torch.Tensor
    """(B, T) long token ids, the pad id after each sequence."""
    attention_mask: torch.Tensor
    """(B, T) long, 1 on real tokens."""
    labels: torch.Tensor
    """(B, T) long: the ids where the loss counts, -100 elsewhere (padding, and a prompt in SFT)."""


def encode(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], *, special_tokens: bool = True) -> list[list[int]]:
    """The token ids of each text, in one batched tokenizer call.

    `special_tokens=True` reads each text as the start of a sequence (the tokenizer adds its
    BOS, if its convention has one); `False` reads a continuation, such as an answer that
    follows its prompt, with nothing added.

    A text that already begins with the BOS string (a prompt rendered by a chat template that
    writes ``{{ bos_token }}``, as Llama's and Zephyr's do) would get a second BOS from a
    tokenizer that prepends one; such a sequence keeps one. A model trained with one BOS reads
    two as a different, unseen context.
    """
    if isinstance(texts, str):  # a list of its characters is never what was meant
        raise TypeError(f"encode takes a list of texts, not one string; wrap it: encode(tokenizer, [{texts[:20]!r}...])")
    texts = list(texts)
    ids = tokenizer(texts, add_special_tokens=special_tokens)["input_ids"]
    bos = tokenizer.bos_token_id
    bos_text = tokenizer.bos_token if bos is not None else None  # transformers 4 logs an error reading an unset token
    if special_tokens and bos_text:
        # only where the text itself spelt the BOS: the tokenizer's added one is ids[0], the text's is ids[1]
        ids = [seq[1:] if len(seq) > 1 and seq[0] == seq[1] == bos and text.startswith(bos_text) else seq
               for seq, text in zip(ids, texts)]
    return ids


def append_eos(seqs: list[list[int]], eos: int, *, unless_present: bool = False) -> list[list[int]]:
    """Each sequence with `eos` appended.

    `unless_present=True` leaves as it is a sequence that the tokenizer already ended with an
    EOS of its own, so that it ends with exactly one; a sequence that is nothing but that token
    (a BOS that is also the EOS, as in GPT-2) still gets one.

    >>> append_eos([[5, 6], [5, 0], [0]], 0, unless_present=True)
    [[5, 6, 0], [5, 0], [0, 0]]
    """
    return [ids if unless_present and len(ids) > 1 and ids[-1] == eos else ids + [eos] for ids in seqs]


def truncate_left(ids: list[int], limit: int, bos: int | None) -> list[int]:
    """The last `limit` tokens of `ids`, keeping a leading BOS (the model was trained to see one).

    >>> truncate_left([0, 1, 2, 3, 4], 3, bos=0)
    [0, 3, 4]
    """
    keep_bos = bos is not None and ids[0] == bos
    return ([bos] if keep_bos else []) + ids[len(ids) - limit + int(keep_bos) :]


def truncate_left_all(seqs: list[list[int]], limit: int, bos: int | None) -> tuple[list[list[int]], int]:
    """`truncate_left` applied to every sequence longer than `limit`; returns the sequences and how many were cut."""
    cut = [truncate_left(ids, limit, bos) if len(ids) > limit else ids for ids in seqs]
    return cut, sum(len(ids) > limit for ids in seqs)


def pad_left(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded `(ids, mask)`, both (B, T) long; an empty sequence is a row of padding (mask 0)."""
    width = max((len(seq) for seq in seqs), default=0)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, seq in enumerate(seqs):
        if seq:
            ids[i, width - len(seq) :] = torch.tensor(seq)
            mask[i, width - len(seq) :] = 1
    return ids, mask


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int, label_from: Sequence[int] | None = None) -> TokenBatch:
    """Right-padded ids, mask and labels.

    The labels of sequence i are its ids from position `label_from[i]` on (every real token
    when `label_from` is None), -100 before that and on padding.
    """
    width = max(len(seq) for seq in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, seq in enumerate(seqs):
        start = 0 if label_from is None else label_from[i]
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, start : len(seq)] = torch.tensor(seq[start:])
    return TokenBatch(ids, mask, labels)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count real tokens only, so left padding shifts nothing (padding itself gets 0)."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)
