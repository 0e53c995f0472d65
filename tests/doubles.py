"""Test doubles and helpers shared by the tests."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence

from llm_gym import Answer, Query
from llm_gym.feedback.oracles import PreferenceOracle


class SlowOracle(PreferenceOracle):
    """A slow labeller: answers nothing on its first call, then only every other query it is shown."""

    name = "slow-human"

    def __init__(self, inner: PreferenceOracle) -> None:
        self.inner, self.calls = inner, 0

    def answer(self, queries: Sequence[Query]) -> Iterator[Answer]:
        self.calls += 1
        if self.calls == 1:
            return iter(())
        return (a for i, a in enumerate(self.inner.answer(queries)) if i % 2 == 0)


def run_in_threads(work: Callable[[str], None], names: Iterable[str]) -> None:
    """Run `work(name)` for every name at once, one thread each; re-raise the first error any thread hit."""
    errors: list[BaseException] = []

    def guarded(name: str) -> None:
        try:
            work(name)
        except BaseException as exc:  # pragma: no cover - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(name,)) for name in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def tiny_experiment_dict(model_cache) -> dict:
    """A seconds-long pipeline config as a plain dict (what a TOML file holds): the session's
    smoke model (`TinyLMConfig.smoke()`, already in `model_cache`), tiny stages, few prompts."""
    from llm_gym import TinyLMConfig
    from llm_gym.infra.configio import to_dict

    return {
        "name": "tiny",
        "model": {"cache_dir": str(model_cache)},
        "pretrain": to_dict(TinyLMConfig.smoke()),
        "sft": {"epochs": 1},
        "reward_model": {"queries": 24, "k": 2, "trainer": {"epochs": 1}},
        "ppo": {
            "ppo": {"iterations": 3, "num_envs": 8, "checkpoint_every": 2,
                    "config": {"minibatch_size": 4, "kl_coef": 0.2, "sampling": {"max_new_tokens": 8}}},
            "ppo_ptx": {"iterations": 2, "num_envs": 8, "checkpoint_every": 0,
                        "config": {"minibatch_size": 4, "ptx_coef": 0.2, "ptx_batch_size": 4,
                                   "sampling": {"max_new_tokens": 8}}},
        },
        "evaluation": {"prompts": 8, "sampling": {"max_new_tokens": 8}},
    }


REWARD_CALLS: list[int] = []
"""How many completions `word_count_reward` has scored (tests read it to see the environment's reward was paid)."""


def word_count_reward(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
    """A user's own reward function: the number of words in the completion (named in configs as
    "doubles:word_count_reward", since tests/ is on sys.path)."""
    REWARD_CALLS.append(len(completions))
    return [float(len(c.split())) for c in completions]


def tiny_llama(tokenizer, seed: int = 0, attention_dropout: float = 0.0):
    """A random-init Llama-style causal LM (2 layers, width 32) over `tokenizer`'s vocabulary, built locally with no download."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         attention_dropout=attention_dropout, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def tiny_llama_folder(folder, tokenizer, seed: int = 0):
    """Save `tiny_llama(tokenizer, seed)` and the tokenizer to `folder` (a base model `from_pretrained` can load); returns it."""
    tiny_llama(tokenizer, seed).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
