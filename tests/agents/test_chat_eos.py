"""A chat answer ends with exactly one EOS wherever it is trained on: SFT labels, DPO's completions, the reward model.

A chat template ends every turn with its end-of-turn text; when that text is the tokenizer's
EOS, `render_completion` keeps the answer up to it (dropping the template's newline after it)
and the encoders append no second one. When it is not (ChatML in a tokenizer whose EOS is
``<|endoftext|>``), the turn's end stays in the text and the encoders append the EOS.
"""

from __future__ import annotations

import pytest
from chat_fixtures import USER_HI, chatml_tokenizer, llama3_tokenizer, llama_chat_tokenizer, tiny_llama

from agents.sft import sft_batch
from llm_gym import Policy
from llm_gym.core.data import load_demonstrations
from llm_gym.feedback.recorded import load_comparisons
from llm_gym.models.reward_model import RewardModel

TOKENIZERS = {
    "zephyr": (llama_chat_tokenizer, "hello</s>"),  # the template writes "</s>\n"
    "llama3": (llama3_tokenizer, "hello<|eot_id|>"),
    "qwen chatml": (chatml_tokenizer, "hello<|im_end|>"),  # "<|im_end|>\n", EOS <|im_end|>
    "chatml, eos <|endoftext|>": (lambda: chatml_tokenizer("<|endoftext|>"), "hello<|im_end|>\n"),
}


@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_a_chat_answer_ends_with_exactly_one_eos_in_sft_dpo_and_the_reward_model(name: str) -> None:
    make, completion = TOKENIZERS[name]
    tok = make()
    eos = tok.eos_token_id
    policy = Policy(tiny_llama(tok), tok, device="cpu")
    answer = [{"role": "assistant", "content": "hello"}]

    (demo,) = load_demonstrations([{"messages": USER_HI + answer}], tokenizer=tok)
    assert demo.completion == completion
    labels = [t for t in sft_batch(policy, [demo]).labels[0].tolist() if t != -100]
    assert labels[-1] == eos and labels.count(eos) == 1, tok.convert_ids_to_tokens(labels)

    record = {"prompt": USER_HI, "chosen": answer, "rejected": [{"role": "assistant", "content": "no"}]}
    (c,) = load_comparisons([record], tokenizer=tok)
    assert c.completions[0] == completion
    _, _, ids, mask = policy.encode_pairs([c.prompt], [c.completions[0]])
    dpo = [t for t, m in zip(ids[0].tolist(), mask[0].tolist()) if m]
    assert dpo == labels  # DPO scores the answer SFT trains on

    rm = RewardModel(tiny_llama(tok, causal_lm=False), tok, device="cpu")
    ids, mask = rm.encode([c.prompt], [c.completions[0]])
    seq = [t for t, m in zip(ids[0].tolist(), mask[0].tolist()) if m]
    assert seq[-1] == eos and seq.count(eos) == 1 + c.prompt.count(tok.eos_token), tok.convert_ids_to_tokens(seq)
