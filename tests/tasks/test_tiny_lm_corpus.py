"""The built-in tiny model pretrained on any task's corpus: cache folders keyed by the corpus, held-out text, errors."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm_gym import (
    ArithmeticTaskConfig,
    PretrainReport,
    PromptTask,
    ReviewTaskConfig,
    TinyLMConfig,
    build_builtin_model,
    find_builtin_model,
    generate_arithmetic_task,
    generate_review_task,
    perplexity,
)
from llm_gym.tasks.arithmetic import ArithmeticTask
from llm_gym.tasks.tiny_lm import corpus_fingerprint

SMOKE = TinyLMConfig.smoke()
# a small worksheet corpus (400 sheets of 1..6 sums, about 1,400 lines): one build takes a few seconds
ARITH = ArithmeticTaskConfig(seed=0, sums_per_document=6, n_pretrain=400, n_heldout=50, n_prompts=20, n_eval_prompts=10,
                             n_demonstrations=5)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("corpus_cache")


@pytest.fixture(scope="module")
def arith() -> ArithmeticTask:
    return generate_arithmetic_task(ARITH)


@pytest.fixture(scope="module")
def arith_model(cache: Path, arith: ArithmeticTask) -> PretrainReport:
    assert find_builtin_model(SMOKE, cache, arith) is None, "nothing is cached before the first build"
    return build_builtin_model(SMOKE, cache_dir=cache, task=arith)


def test_built_on_the_task_corpus(arith_model: PretrainReport, arith: ArithmeticTask) -> None:
    assert not arith_model.cached
    assert arith_model.path.name.startswith("tiny-gpt2-")
    assert arith_model.path.name == f"tiny-gpt2-{SMOKE.cache_key(corpus_fingerprint(arith))}"
    assert math.isfinite(arith_model.perplexity_after)
    assert arith_model.perplexity_after < arith_model.perplexity_before
    # loaded the way any Hub model is; its perplexity is measured on the task's own held-out worksheets
    model = AutoModelForCausalLM.from_pretrained(arith_model.path)
    tok = AutoTokenizer.from_pretrained(arith_model.path)
    assert perplexity(model, tok, arith.heldout_texts) == pytest.approx(arith_model.perplexity_after, rel=1e-4)
    # the tokenizer was trained on sums: every number of a sum, with its leading space, is one token
    for n in range(ARITH.max_value + 1):
        assert len(tok.tokenize(f" {n}")) == 1, n
    # worksheets are lines: the line break is one token and a whole worksheet reads back as written
    assert len(tok.tokenize("\n")) == 1
    sheet = max(arith.pretrain_texts, key=lambda text: text.count("\n"))
    assert sheet.count("\n") == ARITH.sums_per_document - 1
    assert tok.decode(tok(sheet)["input_ids"], skip_special_tokens=True) == sheet


def test_second_call_is_cached_and_found(arith_model: PretrainReport, cache: Path, arith: ArithmeticTask) -> None:
    again = build_builtin_model(SMOKE, cache_dir=cache, task=arith)
    assert again.cached and again.path == arith_model.path
    assert again.perplexity_after == arith_model.perplexity_after
    found = find_builtin_model(SMOKE, cache, arith)
    assert found is not None and found.cached and found.path == arith_model.path
    assert found.perplexity_before == arith_model.perplexity_before
    # the same task regenerated (an equal corpus) finds the same model
    assert find_builtin_model(SMOKE, cache, generate_arithmetic_task(ARITH)).path == arith_model.path
    assert not any(p.name.startswith(".") for p in cache.iterdir()), "no temporary build folder is left behind"


def test_key_follows_the_corpus_and_architecture_not_the_review_config(arith_model: PretrainReport, cache: Path,
                                                                       arith: ArithmeticTask) -> None:
    other_review = dataclasses.replace(SMOKE, task=ReviewTaskConfig(seed=9, n_pretrain=100))
    found = find_builtin_model(other_review, cache, arith)
    assert found is not None and found.path == arith_model.path, "the review task's config plays no part"
    assert find_builtin_model(dataclasses.replace(SMOKE, n_layer=2), cache, arith) is None
    # the key is the text, not the class: a PromptTask holding the same corpus is the same model
    same_text = PromptTask(prompts=["1 + 1 ="], pretrain_texts=arith.pretrain_texts, heldout_texts=arith.heldout_texts)
    assert corpus_fingerprint(same_text) == corpus_fingerprint(arith)
    assert find_builtin_model(SMOKE, cache, same_text).path == arith_model.path
    # held-out text is part of the key, since it decides the reported perplexity
    fewer_heldout = PromptTask(prompts=["1 + 1 ="], pretrain_texts=arith.pretrain_texts,
                               heldout_texts=arith.heldout_texts[:-1])
    assert corpus_fingerprint(fewer_heldout) != corpus_fingerprint(arith)


def test_another_corpus_is_another_folder(arith_model: PretrainReport, cache: Path) -> None:
    other = generate_arithmetic_task(dataclasses.replace(ARITH, seed=1))
    assert corpus_fingerprint(other) != corpus_fingerprint(generate_arithmetic_task(ARITH))
    assert find_builtin_model(SMOKE, cache, other) is None
    built = build_builtin_model(SMOKE, cache_dir=cache, task=other)
    assert not built.cached and built.path.name.startswith("tiny-gpt2-")
    assert built.path != arith_model.path
    assert find_builtin_model(SMOKE, cache, generate_arithmetic_task(ARITH)).path == arith_model.path, "both are kept"


def test_review_corpus_keeps_its_folder_name(tiny_model: PretrainReport, model_cache: Path) -> None:
    """task=None and task=the review task for config.task are the same model, in the same `review-gpt2-` folder."""
    assert tiny_model.path.name == f"review-gpt2-{SMOKE.cache_key()}"
    review = generate_review_task(SMOKE.task)
    found = find_builtin_model(SMOKE, model_cache, review)
    assert found is not None and found.path == tiny_model.path
    again = build_builtin_model(SMOKE, cache_dir=model_cache, task=review)
    assert again.cached and again.path == tiny_model.path
    assert find_builtin_model(SMOKE, model_cache, None).path == tiny_model.path
    # a review task of another config is keyed by that config, whatever config.task says
    other = ReviewTaskConfig(**{**vars(SMOKE.task), "seed": 1})
    assert SMOKE.cache_key() != dataclasses.replace(SMOKE, task=other).cache_key()


def test_task_without_pretrain_texts_says_how_to_fix(tmp_path: Path) -> None:
    task = PromptTask(prompts=["2 + 2 =", "3 + 4 ="], heldout_texts=["2 + 2 = 4"])
    with pytest.raises(ValueError, match=r"PromptTask\) has no pretraining text") as err:
        build_builtin_model(SMOKE, cache_dir=tmp_path, task=task)
    assert "model.name_or_path" in str(err.value) and "pretrain_texts" in str(err.value)
    assert list(tmp_path.iterdir()) == [], "nothing is written for a task that cannot be built on"


def test_corpus_too_short_for_a_window_is_refused(tmp_path: Path) -> None:
    task = PromptTask(prompts=["1 + 1 ="], pretrain_texts=["1 + 1 = 2"])
    with pytest.raises(ValueError, match="seq_len"):
        build_builtin_model(SMOKE, cache_dir=tmp_path, task=task)


def test_task_without_heldout_texts_holds_out_the_end_of_its_corpus(tmp_path: Path, arith: ArithmeticTask) -> None:
    corpus = list(arith.pretrain_texts)
    task = PromptTask(prompts=["1 + 1 ="], pretrain_texts=corpus)
    report = build_builtin_model(SMOKE, cache_dir=tmp_path, task=task)
    assert report.path.name.startswith("tiny-gpt2-") and not report.cached
    assert math.isfinite(report.perplexity_before) and math.isfinite(report.perplexity_after)
    assert report.perplexity_after < report.perplexity_before
    model = AutoModelForCausalLM.from_pretrained(report.path)
    tok = AutoTokenizer.from_pretrained(report.path)
    last_5_percent = corpus[-len(corpus) // 20:]
    assert len(last_5_percent) == 20
    assert perplexity(model, tok, last_5_percent) == pytest.approx(report.perplexity_after, rel=1e-4)
    assert find_builtin_model(SMOKE, tmp_path, task).path == report.path
