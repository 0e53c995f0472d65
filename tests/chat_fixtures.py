"""Chat tokenizers and models built locally in milliseconds (no hub downloads), for the chat-data and BOS tests."""

from __future__ import annotations

import string

ZEPHYR_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
"""A Zephyr-style chat template that writes the BOS itself, as Llama's and Zephyr's do."""

NO_PREFIX_TEMPLATE = (
    "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
"""A template whose generation prompt does not open the assistant turn as an assistant message renders (no prefix)."""


def llama_chat_tokenizer(template: str | None = ZEPHYR_TEMPLATE):
    """A random-vocabulary Llama tokenizer (``add_bos_token=True``: every encoded text starts with ``<s>``).

    One token per printable character (BPE without merges), ``<s>``/``</s>``/``<unk>`` special
    tokens, and `template` as its chat template (None: a tokenizer without one).
    """
    from transformers import LlamaTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for ch in ["▁", *string.printable]:
        vocab.setdefault(ch, len(vocab))
    tok = LlamaTokenizer(vocab=vocab, merges=[], add_bos_token=True)
    tok.chat_template = template
    return tok


def llama_chat_policy(template: str | None = ZEPHYR_TEMPLATE):
    """A `Policy` over a random-init one-layer Llama with `llama_chat_tokenizer` (CPU, about 10k parameters)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llm_gym import Policy

    tok = llama_chat_tokenizer(template)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return Policy(LlamaForCausalLM(config), tok, device="cpu")


USER_HI = [{"role": "user", "content": "hi"}]
"""A one-turn prompt conversation."""
