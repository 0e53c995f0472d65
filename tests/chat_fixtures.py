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


def llama_chat_tokenizer(template: str | None = ZEPHYR_TEMPLATE, *, add_bos: bool = True):
    """A random-vocabulary Llama tokenizer (every encoded text starts with ``<s>``, as ``add_bos_token=True`` does).

    One token per printable character (BPE without merges, SentencePiece's ``▁`` for a space,
    prepended to the first word only), ``<s>``/``</s>``/``<unk>`` special tokens, and `template` as
    its chat template (None: a tokenizer without one); `add_bos=False` adds no BOS. Built with `tokenizers` the way transformers
    5's `LlamaTokenizer` builds itself (the same ids), so that it also loads on transformers 4,
    whose `LlamaTokenizer` needs sentencepiece.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for ch in ["▁", *string.printable]:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", 1)])
    out = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    out.chat_template = template
    return out


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


LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
"""Llama-3's chat template (shortened): each turn ends with ``<|eot_id|>`` (the instruct models' EOS), no newline."""

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""ChatML (Qwen): every turn ends with ``<|im_end|>`` and a newline."""

GEMMA_LIKE_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
"""A template that refuses system messages, as Gemma's does."""


def bpe_chat_tokenizer(template: str, specials: list[str], *, eos: str, bos: str | None = None, pad: str | None = None):
    """A byte-level BPE tokenizer trained in milliseconds on a few sentences, with `specials` as special tokens.

    With `bos`, every encoded text starts with it (as Llama-3's tokenizer does); `eos`, `pad`
    name the EOS and padding tokens. Llama-3 style: ``bpe_chat_tokenizer(LLAMA3_TEMPLATE,
    LLAMA3_SPECIALS, eos="<|eot_id|>", bos="<|begin_of_text|>", pad="<|end_of_text|>")``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["hello there, how are you? It is blue. What color is the sky? It is green."] * 20,
                            trainer=trainer)
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    out = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad or eos)
    out.chat_template = template
    return out


LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def llama3_tokenizer():
    """A Llama-3-Instruct-style tokenizer: BOS ``<|begin_of_text|>`` added to every text, EOS ``<|eot_id|>``."""
    return bpe_chat_tokenizer(LLAMA3_TEMPLATE, LLAMA3_SPECIALS, eos="<|eot_id|>", bos="<|begin_of_text|>",
                              pad="<|end_of_text|>")


def chatml_tokenizer(eos: str = "<|im_end|>"):
    """A Qwen-style ChatML tokenizer (no BOS); `eos` is ``<|im_end|>`` (Qwen2.5-Instruct) or ``<|endoftext|>``."""
    return bpe_chat_tokenizer(CHATML_TEMPLATE, CHATML_SPECIALS, eos=eos, pad="<|endoftext|>")


def tiny_llama(tokenizer, *, causal_lm: bool = True):
    """A random-init one-layer Llama over `tokenizer`'s vocabulary (CPU, about 10k parameters)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return (LlamaForCausalLM if causal_lm else LlamaModel)(config)
