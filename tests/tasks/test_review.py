"""Tests of the built-in review task (llm_gym/tasks/review.py): generator and gold scorer."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

from llm_gym.tasks.review import (
    Demonstration,
    GoldScorer,
    ReviewTask,
    ReviewTaskConfig,
    generate_review_task,
    tokenize,
)

SMALL = ReviewTaskConfig(seed=3, n_pretrain=2000, n_heldout=200, n_prompts=300, n_eval_prompts=100,
                         n_demonstrations=300)


@pytest.fixture(scope="module")
def task() -> ReviewTask:
    return generate_review_task(SMALL)


@pytest.fixture(scope="module")
def scorer() -> GoldScorer:
    return GoldScorer()


def _split(texts: list[str], n_words: int = 4) -> tuple[list[str], list[str]]:
    """Cut full reviews into (opening of n_words words, continuation starting with a space)."""
    prompts, completions = [], []
    for text in texts:
        words = text.split(" ")
        prompts.append(" ".join(words[:n_words]))
        completions.append(" " + " ".join(words[n_words:]))
    return prompts, completions


# ---- generator -------------------------------------------------------------------------


def test_same_seed_gives_identical_task() -> None:
    assert generate_review_task(SMALL) == generate_review_task(SMALL)


def test_different_seed_gives_different_task() -> None:
    a = generate_review_task(SMALL)
    b = generate_review_task(ReviewTaskConfig(**{**SMALL.__dict__, "seed": 4}))
    assert a.pretrain_texts != b.pretrain_texts
    assert a.prompts != b.prompts
    assert a.demonstrations != b.demonstrations


def test_sizes_match_config(task: ReviewTask) -> None:
    assert task.config == SMALL
    assert len(task.pretrain_texts) == SMALL.n_pretrain
    assert len(task.heldout_texts) == SMALL.n_heldout
    assert len(task.prompts) == SMALL.n_prompts
    assert len(task.eval_prompts) == SMALL.n_eval_prompts
    assert len(task.demonstrations) == SMALL.n_demonstrations
    assert all(isinstance(d, Demonstration) for d in task.demonstrations)


def test_default_config_is_fast_and_sized() -> None:
    start = time.perf_counter()
    task = generate_review_task()
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0
    assert len(task.pretrain_texts) == 12000 and len(task.prompts) == 1000


def test_zero_sized_optional_lists() -> None:
    task = generate_review_task(ReviewTaskConfig(n_pretrain=5, n_heldout=0, n_prompts=1, n_eval_prompts=0,
                                                 n_demonstrations=0))
    assert task.heldout_texts == [] and task.eval_prompts == [] and task.demonstrations == []


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"n_pretrain": 0}, "n_pretrain"),
        ({"n_prompts": 0}, "n_prompts"),
        ({"n_heldout": -1}, "n_heldout"),
        ({"n_eval_prompts": -5}, "n_eval_prompts"),
        ({"n_demonstrations": -1}, "n_demonstrations"),
        ({"n_pretrain": 10.5}, "n_pretrain"),
        ({"seed": "0"}, "seed"),
        ({"seed": True}, "seed"),
    ],
)
def test_config_validation(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ReviewTaskConfig(**kwargs)


def test_texts_are_lowercase_ascii_and_short(task: ReviewTask) -> None:
    for text in task.pretrain_texts + task.heldout_texts:
        assert text == text.lower() and text.isascii()
        assert text == text.strip() and "  " not in text
        assert 1 <= text.count(" .") <= 3  # 1 to 3 sentences


def test_vocabulary_is_varied(task: ReviewTask) -> None:
    tokens = {w for text in task.pretrain_texts for w in tokenize(text)}
    words = {w for w in tokens if w.isalpha()}
    assert len(words) > 200
    assert len(set(task.pretrain_texts)) > 0.8 * len(task.pretrain_texts)
    for needed in ("film", "novel", "hotel", "laptop", "blender", "not", "never", "n't", "very", "really"):
        assert needed in tokens, needed


def test_all_sentiment_kinds_present(task: ReviewTask, scorer: GoldScorer) -> None:
    sentiment = scorer.sentiment(task.pretrain_texts)
    assert (sentiment > 0.3).mean() > 0.2
    assert (sentiment < -0.3).mean() > 0.2
    assert (np.abs(sentiment) < 0.1).mean() > 0.05
    assert any(" , but " in t for t in task.pretrain_texts)  # mixed reviews


def test_heldout_is_a_separate_stream(task: ReviewTask, scorer: GoldScorer) -> None:
    assert task.heldout_texts != task.pretrain_texts[: len(task.heldout_texts)]
    overlap = np.mean([t in set(task.pretrain_texts) for t in task.heldout_texts])
    assert overlap < 0.2  # only short, common reviews can coincide
    # Same distribution: similar sentiment and fully known bigrams.
    assert abs(scorer.sentiment(task.heldout_texts).mean() - scorer.sentiment(task.pretrain_texts).mean()) < 0.1
    assert scorer.fluency(task.heldout_texts).mean() > -0.3


def test_prompts_are_openings(task: ReviewTask, scorer: GoldScorer) -> None:
    for prompt in task.prompts + task.eval_prompts:
        assert prompt and prompt == prompt.strip() and not prompt.endswith(".")
        assert 2 <= len(prompt.split()) <= 12
    # They leave the sentiment open.
    assert np.abs(scorer.sentiment(task.prompts)).max() < 0.3


def test_eval_prompts_mostly_disjoint(task: ReviewTask) -> None:
    train = set(task.prompts)
    assert np.mean([p not in train for p in task.eval_prompts]) > 0.9


def test_demonstrations_are_good_continuations(task: ReviewTask, scorer: GoldScorer) -> None:
    prompts = [d.prompt for d in task.demonstrations]
    completions = [d.completion for d in task.demonstrations]
    for completion in completions:
        assert completion.startswith(" ") and not completion.startswith("  ")
        assert completion.rstrip().endswith(".")
    assert scorer.sentiment(completions).mean() > 0.5
    assert scorer.fluency(completions).mean() > -0.2
    demo = scorer(prompts, completions)
    corpus = scorer(*_split(task.heldout_texts))
    assert demo.mean() > corpus.mean() + 0.5
    assert demo.mean() > 0.5


# ---- scorer ----------------------------------------------------------------------------


def test_tokenize() -> None:
    assert tokenize("The sound is GREAT, isn't it?") == ["the", "sound", "is", "great", ",", "isn't", "it", "?"]
    assert tokenize("it does n't work .") == ["it", "does", "n't", "work", "."]


def test_fluent_positive_beats_spam_and_negative(scorer: GoldScorer) -> None:
    prompt = ["the film was"]
    good = scorer(prompt, [" really good , and the actors are great ."])[0]
    spam = scorer(prompt, [" great great great great great"])[0]
    negative = scorer(prompt, [" really bad , and the actors are terrible ."])[0]
    assert good > 0.5
    assert good > spam + 0.5
    assert good > negative + 1.0


def test_negation(scorer: GoldScorer) -> None:
    s = dict(zip(["bad", "not bad", "good", "not good"],
                 scorer.sentiment(["it is bad .", "it is not bad .", "it is good .", "it is not good ."])))
    assert s["not bad"] > s["bad"]
    assert s["not good"] < s["good"]
    assert s["not good"] < 0 < s["not bad"]
    assert scorer.sentiment(["it never works ."])[0] < 0 < scorer.sentiment(["it works ."])[0]
    assert scorer.sentiment(["i do n't like it ."])[0] < 0
    # Negation does not leak past a clause boundary.
    assert scorer.sentiment(["it is not cheap , and it is great ."])[0] > scorer.sentiment(["it is great ."])[0]


def test_intensifiers_and_saturation(scorer: GoldScorer) -> None:
    plain, very = scorer.sentiment(["it is good .", "it is very good ."])
    assert very > plain
    saturated = scorer.sentiment([" ".join(["amazing"] * 50), " ".join(["terrible"] * 50)])
    assert np.all(np.abs(saturated) <= 1.0) and saturated[0] > 0.99 and saturated[1] < -0.99


def test_fluency_penalties(scorer: GoldScorer) -> None:
    fluent, repeated, short, empty, junk = scorer.fluency(
        ["the sound is great .", "great great great great great", "great", "", "xq#z@ kk 9!! zzv"]
    )
    assert fluent == 0.0
    assert repeated < -1.0
    assert short < 0 and empty <= -1.0
    assert junk < -0.9
    assert np.all(scorer.fluency(["the sound is great .", "qq"]) <= 0)


def test_junk_and_empty_score_low(scorer: GoldScorer, task: ReviewTask) -> None:
    rng = random.Random(0)
    junk = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz#@!? ") for _ in range(40)) for _ in range(20)]
    prompts = task.prompts[:20]
    junk_scores = scorer(prompts, junk)
    assert junk_scores.max() < -0.5
    assert scorer(["the film was"], [""])[0] < -0.5
    demo = scorer([d.prompt for d in task.demonstrations[:20]], [d.completion for d in task.demonstrations[:20]])
    assert junk_scores.max() < demo.min()


def test_weights(scorer: GoldScorer) -> None:
    p, c = [""], [" great great great"]  # an empty prompt adds no junction bigram
    assert GoldScorer(1.0, 0.0)(p, c)[0] == pytest.approx(scorer.sentiment(c)[0])
    assert GoldScorer(0.0, 1.0)(p, c)[0] == pytest.approx(scorer.fluency(c)[0])
    # With a prompt, the bigram joining it to the completion also counts.
    assert GoldScorer(0.0, 1.0)(["the film was"], c)[0] > scorer.fluency(c)[0]
    assert GoldScorer(0.0, 1.0)(["the film was ."], [" . the"])[0] < scorer.fluency([" . the"])[0]
    with pytest.raises(ValueError, match="sentiment_weight"):
        GoldScorer(sentiment_weight=float("nan"))


def test_batched_equals_one_by_one(scorer: GoldScorer, task: ReviewTask) -> None:
    prompts, completions = _split(task.heldout_texts[:50])
    batched = scorer(prompts, completions)
    single = np.array([scorer([p], [c])[0] for p, c in zip(prompts, completions)])
    assert batched.dtype == np.float64 and batched.shape == (50,)
    np.testing.assert_array_equal(batched, single)
    np.testing.assert_array_equal(batched, GoldScorer()(prompts, completions))  # deterministic
    assert scorer([], []).shape == (0,)


def test_length_mismatch_raises(scorer: GoldScorer) -> None:
    with pytest.raises(ValueError, match=r"2 prompts and 1 completions"):
        scorer(["a", "b"], [" c"])


def test_bare_string_raises(scorer: GoldScorer) -> None:
    with pytest.raises(TypeError, match="list"):
        scorer("the film was", " good")
