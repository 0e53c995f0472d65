"""The built-in tiny model: tokenizer, pretraining that lowers perplexity, the cache, from_pretrained loading."""

from __future__ import annotations

import shutil

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm_gym.tasks.tiny_lm import find_builtin_model
from llm_gym import PretrainReport, TinyLMConfig, build_builtin_model, perplexity, train_tokenizer


def test_pretraining_lowers_heldout_perplexity(tiny_model: PretrainReport) -> None:
    assert not tiny_model.cached
    assert tiny_model.perplexity_before > 2 * tiny_model.perplexity_after
    # the untrained model is close to uniform over the vocabulary
    assert tiny_model.perplexity_before > 0.5 * TinyLMConfig.smoke().vocab_size


def test_saved_through_save_pretrained_and_loaded_with_from_pretrained(tiny_model: PretrainReport) -> None:
    files = {p.name for p in tiny_model.path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "llm_gym_pretrain.json"} <= files
    model = AutoModelForCausalLM.from_pretrained(tiny_model.path)
    tok = AutoTokenizer.from_pretrained(tiny_model.path)
    from llm_gym import generate_review_task

    heldout = generate_review_task(TinyLMConfig.smoke().task).heldout_texts
    assert perplexity(model, tok, heldout) == pytest.approx(tiny_model.perplexity_after, rel=1e-4)
    info = json.loads((tiny_model.path / "llm_gym_pretrain.json").read_text())
    assert info["config"]["n_layer"] == 1


def test_cache_is_reused_and_keyed_by_config(tiny_model: PretrainReport, model_cache) -> None:
    again = build_builtin_model(TinyLMConfig.smoke(), cache_dir=model_cache)
    assert again.cached and again.path == tiny_model.path
    assert again.perplexity_after == tiny_model.perplexity_after
    other = TinyLMConfig(task=TinyLMConfig.smoke().task, n_layer=2, n_embd=32, n_head=2, vocab_size=512, seq_len=48)
    assert other.cache_key() != TinyLMConfig.smoke().cache_key()
    assert not any(p.name.startswith(".") for p in model_cache.iterdir()), "no temporary build folder is left behind"
    # the key follows the generated corpus, not only the config: another corpus seed is another model
    from llm_gym import ReviewTaskConfig
    from llm_gym.tasks.tiny_lm import task_fingerprint

    smoke = TinyLMConfig.smoke()
    assert task_fingerprint(smoke.task) != task_fingerprint(ReviewTaskConfig(**{**vars(smoke.task), "seed": 1}))


def test_tokenizer_round_trips_any_text() -> None:
    tok = train_tokenizer(["the film was great .", "the blender is bad ."] * 50, vocab_size=300)
    for text in ["the film was great .", "naïve café — 日本語 <b>bold</b>\nnew line", "  spaces  "]:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id, "BOS is prepended, as the model was pretrained"
        assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.eos_token == tok.bos_token == "<|endoftext|>" and tok.pad_token == "<pad>"
    assert tok.padding_side == "left"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_embd": 30, "n_head": 4}, "must divide"),
        ({"seq_len": 256}, "seq_len"),
        ({"vocab_size": 100}, "vocab_size"),
        ({"train_steps": 0}, "train_steps"),
        ({"learning_rate": 0.0}, "learning_rate"),
    ],
)
def test_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TinyLMConfig(**kwargs)


def test_a_cache_folder_cut_short_by_a_kill_is_repaired_on_lookup(tiny_model, tmp_path) -> None:
    """A rebuild killed between its renames leaves the model only in `.<name>-old-*/old`; a killed save leaves a
    temporary. The next lookup puts the model back and removes the temporary instead of building again."""
    cache = tmp_path / "cache"
    shutil.copytree(tiny_model.path, cache / tiny_model.path.name)
    path = cache / tiny_model.path.name
    (cache / f".{path.name}-old-k2j4h6g8").mkdir()
    path.rename(cache / f".{path.name}-old-k2j4h6g8" / "old")
    (cache / f".{path.name}.tmp-a1b2c3d4").mkdir()
    found = find_builtin_model(TinyLMConfig.smoke(), cache)
    assert found is not None and found.path == path and found.cached
    assert sorted(p.name for p in cache.iterdir()) == [path.name]
    assert build_builtin_model(TinyLMConfig.smoke(), cache_dir=cache).cached
