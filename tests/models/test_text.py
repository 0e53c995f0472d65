"""Text to token batches: the helpers by hand, the four encoders against hand-built batches, and their agreement."""

from __future__ import annotations

import pytest
import torch
from chat_fixtures import USER_HI, llama_chat_policy, llama_chat_tokenizer

from llm_gym import Demonstration, Policy
from llm_gym.core.chat import render_completion, render_prompt
from llm_gym.agents.sft import sft_batch
from llm_gym.models.lm import document_batch
from llm_gym.models.reward_model import RewardModel
from llm_gym.models.text import (
    append_eos,
    encode,
    pad_left,
    pad_right,
    position_ids,
    truncate_left,
    truncate_left_all,
)
from llm_gym.tasks.tiny_lm import PretrainReport

PROMPTS = ["the film was", "review of the blender : the motor is very", "the", ""]


def _words(tok, text: str) -> list[int]:
    """`text` with no special tokens: the pieces the hand-built batches are made of."""
    return tok(text, add_special_tokens=False)["input_ids"]


# ----------------------------------------------------------------------------- the helpers
def test_helpers_by_hand() -> None:
    assert append_eos([[5, 6], [5, 0], [0], []], 0) == [[5, 6, 0], [5, 0, 0], [0, 0], [0]]
    assert append_eos([[5, 6], [5, 0], [0]], 0, unless_present=True) == [[5, 6, 0], [5, 0], [0, 0]]
    assert truncate_left([0, 1, 2, 3, 4], 3, bos=0) == [0, 3, 4]
    assert truncate_left([7, 1, 2, 3, 4], 3, bos=0) == [2, 3, 4]
    assert truncate_left([0, 1, 2, 3, 4], 3, bos=None) == [2, 3, 4]
    assert truncate_left_all([[0, 1, 2, 3], [0, 1, 2], [5]], 3, 0) == ([[0, 2, 3], [0, 1, 2], [5]], 1)

    ids, mask = pad_left([[3, 4], [5], []], 9)
    assert ids.tolist() == [[3, 4], [9, 5], [9, 9]] and mask.tolist() == [[1, 1], [0, 1], [0, 0]]
    assert ids.dtype == mask.dtype == torch.long

    batch = pad_right([[3, 4, 5], [6]], 9, label_from=[1, 0])
    assert batch.input_ids.tolist() == [[3, 4, 5], [6, 9, 9]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch.labels.tolist() == [[-100, 4, 5], [6, -100, -100]]
    assert pad_right([[3, 4], [6]], 9).labels.tolist() == [[3, 4], [6, -100]]

    assert position_ids(torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])).tolist() == [[0, 0, 0, 1], [0, 1, 2, 3]]


# ----------------------------------------------------------------------------- the four encoders, by hand
def test_policy_prompts_by_hand(policy: Policy) -> None:
    tok = policy.tokenizer
    bos, pad = tok.bos_token_id, tok.pad_token_id
    assert tok("the")["input_ids"][0] == bos, "the tiny tokenizer prepends a BOS"
    rows = [[bos] + _words(tok, p) for p in PROMPTS]
    width = max(map(len, rows))
    ids, mask, truncated = policy.encode_prompts(PROMPTS, max_new_tokens=8)
    assert ids.tolist() == [[pad] * (width - len(r)) + r for r in rows]
    assert mask.tolist() == [[0] * (width - len(r)) + [1] * len(r) for r in rows]
    assert truncated == 0

    long = "the film was great and the actors were very good , " * 40
    limit = policy.context_length - 8
    ids, mask, truncated = policy.encode_prompts([long], max_new_tokens=8)
    assert ids.tolist() == [[bos] + _words(tok, long)[-(limit - 1) :]] and truncated == 1


def test_sft_batch_by_hand(policy: Policy) -> None:
    tok = policy.tokenizer
    bos, eos, pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    demos = [Demonstration("the film was", " great ."), Demonstration("the", " it is really good .")]
    rows, labels = [], []
    for d in demos:
        prompt, answer = [bos] + _words(tok, d.prompt), _words(tok, d.completion) + [eos]
        rows.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
    width = max(map(len, rows))
    batch = sft_batch(policy, demos)
    assert batch.input_ids.tolist() == [r + [pad] * (width - len(r)) for r in rows]
    assert batch.attention_mask.tolist() == [[1] * len(r) + [0] * (width - len(r)) for r in rows]
    assert batch.labels.tolist() == [la + [-100] * (width - len(la)) for la in labels]

    # too long for the context: the last context_length tokens (a plain cut: the BOS goes), the answer labelled
    long = Demonstration("the film was great and the actors were very good , " * 40, " fine .")
    answer = _words(tok, long.completion) + [eos]
    row = ([bos] + _words(tok, long.prompt) + answer)[-policy.context_length :]
    batch = sft_batch(policy, [long])
    assert batch.input_ids.tolist() == [row]
    assert batch.labels.tolist() == [[-100] * (len(row) - len(answer)) + answer]


def test_reward_model_pairs_by_hand(tiny_model: PretrainReport) -> None:
    rm = RewardModel.from_pretrained(tiny_model.path, device="cpu", head_seed=0, max_length=8)
    tok = rm.tokenizer
    bos, eos, pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    pairs = [("the", " film"), ("", ""), ("the film was", " great , and the actors are really great .")]
    # prompt + completion read as one text, then EOS; a sequence that is only the BOS still gets one
    rows = [[bos] + _words(tok, p + c) + [eos] for p, c in pairs]
    assert rows[1] == [bos, eos]
    rows[2] = [bos] + rows[2][-7:]  # cut on the left to max_length, BOS kept
    ids, mask = rm.encode([p for p, _ in pairs], [c for _, c in pairs])
    assert ids.tolist() == [[pad] * (8 - len(r)) + r for r in rows]
    assert mask.tolist() == [[0] * (8 - len(r)) + [1] * len(r) for r in rows]
    assert rm.num_truncated == 1


def test_document_batch_by_hand(policy: Policy) -> None:
    tok = policy.tokenizer
    bos, eos, pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    texts = ["the film was great .", "a b", ""]
    rows = [[bos] + _words(tok, t) + [eos] for t in texts]
    width = max(map(len, rows))
    ids, mask, labels = document_batch(tok, texts)
    assert ids.tolist() == [r + [pad] * (width - len(r)) for r in rows]
    assert mask.tolist() == [[1] * len(r) + [0] * (width - len(r)) for r in rows]
    assert labels.tolist() == [r + [-100] * (width - len(r)) for r in rows]
    cut = document_batch(tok, texts, max_length=3)
    assert cut.input_ids.tolist() == [r[:3] + [pad] * (3 - len(r[:3])) for r in rows]  # cut on the right


# ----------------------------------------------------------------------------- agreement
@pytest.mark.parametrize("prompt", PROMPTS)
def test_the_four_read_a_prompt_alike(policy: Policy, tiny_model: PretrainReport, prompt: str) -> None:
    """The same prompt becomes the same ids for sampling, SFT, the reward model and LM documents."""
    tok = policy.tokenizer
    ids, mask, _ = policy.encode_prompts([prompt], max_new_tokens=8)
    as_prompt = ids[0][mask[0].bool()].tolist()

    sft = sft_batch(policy, [Demonstration(prompt, " fine .")])
    n_prompt = int((sft.labels[0] == -100).sum())  # one row, no padding: the unlabelled part is the prompt
    assert sft.input_ids[0, :n_prompt].tolist() == as_prompt

    doc_ids, doc_mask, _ = document_batch(tok, [prompt])
    assert doc_ids[0][doc_mask[0].bool()].tolist()[:-1] == as_prompt  # all but the appended EOS

    rm = RewardModel.from_pretrained(tiny_model.path, device="cpu", head_seed=0)
    rm_ids, rm_mask = rm.encode([prompt], [""])
    assert rm_ids[0][rm_mask[0].bool()].tolist()[:-1] == as_prompt


# ----------------------------------------------------------------------------- one BOS for chat-rendered text
def test_a_text_that_spells_the_bos_gets_one_bos() -> None:
    """A chat template writing {{ bos_token }} and a tokenizer prepending <s> (Llama's add_bos_token) gave two."""
    tok = llama_chat_tokenizer()
    bos = tok.bos_token_id
    rendered = render_prompt(tok, USER_HI)
    assert rendered.startswith("<s>") and tok(rendered)["input_ids"][:2] == [bos, bos], "the tokenizer alone doubles it"
    with_bos, plain = encode(tok, [rendered, "hi"])
    continuation = encode(tok, [rendered], special_tokens=False)[0]
    assert with_bos == tok(rendered)["input_ids"][1:] and with_bos[0] == bos and with_bos[1] != bos
    assert plain == tok("hi")["input_ids"] and plain[0] == bos  # text without the BOS string: untouched
    assert continuation == with_bos  # nothing added, the text's own BOS kept
    no_auto_bos = llama_chat_tokenizer(add_bos=False)  # a tokenizer that adds nothing: the text's BOS is the only one, kept
    assert encode(no_auto_bos, [rendered])[0] == no_auto_bos(rendered)["input_ids"] and encode(no_auto_bos, [rendered])[0][0] == bos


def test_policy_and_sft_read_a_chat_prompt_with_one_bos() -> None:
    policy = llama_chat_policy()
    tok = policy.tokenizer
    bos = tok.bos_token_id
    prompt = render_prompt(tok, USER_HI)
    completion = render_completion(tok, USER_HI, [{"role": "assistant", "content": "yo"}])
    ids, mask, _ = policy.encode_prompts([prompt, "hi"], max_new_tokens=8)
    rows = [row[m.bool()].tolist() for row, m in zip(ids, mask)]
    assert [r[:2].count(bos) for r in rows] == [1, 1] and rows[0] == tok(prompt)["input_ids"][1:]
    pair_ids, pair_mask, _, _ = policy.encode_pairs([prompt], [completion])
    assert pair_ids[0][pair_mask[0].bool()].tolist()[:2].count(bos) == 1
    batch = sft_batch(policy, [Demonstration(prompt, completion)])
    assert batch.input_ids[0, :2].tolist().count(bos) == 1 and batch.input_ids[0, 0] == bos


def test_encode_refuses_one_string(tiny_model) -> None:
    from transformers import AutoTokenizer

    from llm_gym.models.text import encode

    with pytest.raises(TypeError, match="not one string; wrap it"):
        encode(AutoTokenizer.from_pretrained(tiny_model.path), "the film was")
