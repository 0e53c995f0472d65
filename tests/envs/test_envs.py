"""Prompt-bandit environments: registration, spaces, Gymnasium's checker, seeding, batching, bad input."""

from __future__ import annotations

import json
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import llm_gym  # noqa: F401  (registers the environments)
from llm_gym import DatasetError, GoldScorer, PromptDataset, load_demonstrations
from llm_gym.envs import PromptBanditEnv, PromptBanditVecEnv, ReviewSentimentEnv, review_prompts

PROMPTS = ["the film was", "review of the blender :", "i bought this laptop and", "après la pluie, « le film » était"]


def length_reward(prompts, completions):
    return np.array([float(len(c.split())) for c in completions])


class CountingReward:
    """Counts calls and pairs, to show the batched env scores a whole batch in one call."""

    def __init__(self) -> None:
        self.calls = 0
        self.pairs = 0

    def __call__(self, prompts, completions):
        self.calls += 1
        self.pairs += len(completions)
        return [float(len(c)) for c in completions]


def check_without_warnings(env: gymnasium.Env) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning fails the test
        check_env(env.unwrapped, skip_render_check=False)


def test_check_env_prompt_bandit() -> None:
    env = gymnasium.make("llm_gym/PromptBandit-v0", dataset=PROMPTS, reward_fn=length_reward)
    assert isinstance(env.unwrapped, PromptBanditEnv)
    check_without_warnings(env)


def test_check_env_review_sentiment() -> None:
    env = gymnasium.make("llm_gym/ReviewSentiment-v0")
    assert isinstance(env.unwrapped, ReviewSentimentEnv)
    check_without_warnings(env)
    check_without_warnings(gymnasium.make("llm_gym/ReviewSentiment-v0", split="eval", render_mode="ansi"))


def test_spaces_accept_real_prompts() -> None:
    env = PromptBanditEnv(PROMPTS, length_reward)
    obs_space, act_space = env.observation_space, env.action_space
    assert isinstance(obs_space, gymnasium.spaces.Text) and isinstance(act_space, gymnasium.spaces.Text)
    for p in PROMPTS:  # spaces, punctuation and non-ASCII from the dataset are all inside
        assert obs_space.contains(p)
    assert obs_space.max_length == max(len(p) for p in PROMPTS)
    assert act_space.contains("") and act_space.contains(" great , really good !")
    assert " " in obs_space.character_set
    # Gymnasium's default Text space would reject these prompts: the reason for the deliberate charset
    assert not gymnasium.spaces.Text(64).contains(PROMPTS[0])


def test_one_step_episode_and_info() -> None:
    env = gymnasium.make("llm_gym/ReviewSentiment-v0")
    prompt, info = env.reset(seed=0)
    assert prompt in review_prompts("train") and prompt == review_prompts("train")[info["prompt_index"]]
    completion = " really good , and the actors are great ."
    obs, reward, terminated, truncated, info = env.step(completion)
    assert terminated is True and truncated is False
    assert obs == prompt
    expected = GoldScorer()([prompt], [completion])[0]
    assert reward == pytest.approx(expected) and info["gold"] == pytest.approx(expected)
    assert info["prompt"] == prompt and info["completion"] == completion
    with pytest.raises(RuntimeError, match="reset"):
        env.unwrapped.step(completion)


def test_learned_reward_keeps_gold_in_info() -> None:
    env = gymnasium.make("llm_gym/ReviewSentiment-v0", reward_fn=length_reward)
    prompt, _ = env.reset(seed=1)
    _, reward, *_, info = env.step(" great great great")
    assert reward == 3.0
    assert info["gold"] == pytest.approx(GoldScorer()([prompt], [" great great great"])[0])
    assert info["gold"] < 0, "spam is paid by the length reward but not by the gold scorer"


def test_seeding_is_deterministic() -> None:
    def prompts(seed: int, n: int = 10) -> list[str]:
        env = gymnasium.make("llm_gym/ReviewSentiment-v0")
        out = [env.reset(seed=seed)[0]]
        out += [env.reset()[0] for _ in range(n - 1)]
        return out

    assert prompts(3) == prompts(3)
    assert prompts(3) != prompts(4)
    env = PromptBanditEnv(PROMPTS, length_reward)
    assert env.reset(options={"index": 2})[0] == PROMPTS[2]
    with pytest.raises(ValueError, match="out of range"):
        env.reset(options={"index": 9})


def test_vector_env_scores_a_batch_in_one_call() -> None:
    reward = CountingReward()
    vec = gymnasium.make_vec("llm_gym/PromptBandit-v0", num_envs=6, dataset=PROMPTS, reward_fn=reward)
    assert isinstance(vec, PromptBanditVecEnv)
    prompts, info = vec.reset(seed=0)
    assert len(prompts) == 6 and vec.observation_space.contains(prompts)
    completions = [f" answer {i}" for i in range(6)]
    next_prompts, rewards, terminated, truncated, info = vec.step(completions)
    assert reward.calls == 1 and reward.pairs == 6
    assert rewards.shape == (6,) and rewards.dtype == np.float64
    assert np.array_equal(rewards, [float(len(c)) for c in completions])
    assert terminated.all() and not truncated.any()
    assert list(info["prompt"]) == list(prompts) and list(info["completion"]) == completions
    assert len(next_prompts) == 6 and all(p in PROMPTS for p in next_prompts)
    # same seed, same prompt stream
    again = gymnasium.make_vec("llm_gym/PromptBandit-v0", num_envs=6, dataset=PROMPTS, reward_fn=reward)
    assert again.reset(seed=0)[0] == prompts
    assert again.step(completions)[0] == next_prompts
    with pytest.raises(ValueError, match="one completion per environment"):
        vec.step(completions[:2])
    for bad in (None, 42, " one string"):
        with pytest.raises(TypeError, match=r"step\(\) takes a sequence of 6 completions \(one str per environment\), got"):
            vec.step(bad)  # type: ignore[arg-type]


def test_async_vectorisation_needs_shared_memory_off() -> None:
    """Gymnasium 1.4's AsyncVectorEnv reads Text observations from shared memory once: refused, with the fix."""
    kwargs = {"num_envs": 2, "dataset": PROMPTS, "reward_fn": length_reward}
    with pytest.raises(ValueError, match=r'pass vector_kwargs=\{"shared_memory": False\}'):
        gymnasium.make_vec("llm_gym/PromptBandit-v0", vectorization_mode="async", **kwargs)
    vec = gymnasium.make_vec("llm_gym/PromptBandit-v0", vectorization_mode="async", vector_kwargs={"shared_memory": False},
                             **kwargs)
    try:
        prompts, _ = vec.reset(seed=0)
        assert len(prompts) == 2 and all(p in PROMPTS for p in prompts)
        next_prompts, rewards, terminated, truncated, _ = vec.step([" a b", " c"])
        assert all(p in PROMPTS for p in next_prompts)
        assert list(rewards) == [2.0, 1.0] and terminated.all() and not truncated.any()
    finally:
        vec.close()
    sync = gymnasium.make_vec("llm_gym/PromptBandit-v0", vectorization_mode="sync", **kwargs)
    assert all(p in PROMPTS for p in sync.reset(seed=0)[0])


def test_review_vector_env_reports_gold() -> None:
    vec = gymnasium.make_vec("llm_gym/ReviewSentiment-v0", num_envs=4)
    prompts, _ = vec.reset(seed=0)
    _, rewards, _, _, info = vec.step([" really good ."] * 4)
    assert np.allclose(info["gold"], GoldScorer()(list(prompts), [" really good ."] * 4))
    assert np.allclose(rewards, info["gold"])


# ---------------------------------------------------------------- datasets from files


def test_prompts_from_jsonl_csv_txt(tmp_path) -> None:
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("\n".join(json.dumps({"prompt": p, "id": i}) for i, p in enumerate(PROMPTS)) + "\n", encoding="utf-8")
    csv_file = tmp_path / "p.csv"
    csv_file.write_text('id,prompt\n0,"the film was"\n1,"a, quoted ""prompt"""\n', encoding="utf-8")
    txt = tmp_path / "p.txt"
    txt.write_text("the film was\n\nthe hotel was\n", encoding="utf-8")

    assert list(PromptDataset.from_file(jsonl)) == PROMPTS
    assert list(PromptDataset.from_file(csv_file)) == ["the film was", 'a, quoted "prompt"']
    assert list(PromptDataset.from_file(txt)) == ["the film was", "the hotel was"]
    env = gymnasium.make("llm_gym/PromptBandit-v0", dataset=str(jsonl), reward_fn=length_reward)
    assert env.reset(seed=0)[0] in PROMPTS
    check_without_warnings(env)


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("bad.jsonl", b'{"prompt": "ok"}\n{"prompt": "fine"}\n{"prompt": broken\n', r"bad\.jsonl line 3: invalid JSON"),
        ("key.jsonl", b'{"prompt": "ok"}\n{"text": "no prompt key"}\n', r"key\.jsonl line 2: expected an object with a 'prompt' field"),
        ("type.jsonl", b'{"prompt": 42}\n', r"line 1: 'prompt' must be a string"),
        ("latin.jsonl", b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n', r"latin\.jsonl line 2: not valid UTF-8 .*re-encode"),
        ("nocol.csv", b"id,text\n1,hello\n", r"nocol\.csv line 1: no 'prompt' column"),
        ("empty.jsonl", b"\n\n", r"empty\.jsonl is empty"),
        ("blank.txt", b"   \n", r"is empty"),
        ("p.xml", b"<prompts/>", r"unknown prompt file type '\.xml'"),
        ("blank.jsonl", b'{"prompt": "ok"}\n\n{"prompt": "  "}\n', r"blank\.jsonl line 3: the prompt is empty or whitespace"),
        ("blank.csv", b'id,prompt\n1,ok\n2,""\n', r"blank\.csv line 3: the prompt is empty or whitespace"),
        ("half.jsonl", b'{"prompt": "ok"}\n{"prompt": "caf\\ud800"}\n', r"half\.jsonl line 2: 'prompt': holds the lone surrogate"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path, name: str, content: bytes, match: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=match):
        PromptDataset.from_file(path)
    with pytest.raises(DatasetError, match=match):  # the same error through gymnasium.make
        gymnasium.make("llm_gym/PromptBandit-v0", dataset=path, reward_fn=length_reward)


def test_text_no_tokenizer_can_encode_is_refused_where_it_is(tmp_path) -> None:
    """A lone surrogate (JSON "\\ud800") is valid JSON and a valid Python str, and used to pass until the tokenizer."""
    with pytest.raises(DatasetError, match=r"list: prompt 1: holds the lone surrogate '\\ud800' at character 3"):
        PromptBanditEnv(["ok", "ab\ud800"], length_reward)
    demos = tmp_path / "demos.jsonl"
    demos.write_text('{"prompt": "the film was", "completion": " good"}\n{"prompt": "x", "completion": " \\udc00"}\n')
    with pytest.raises(DatasetError, match=r"demos\.jsonl line 2: 'completion': holds the lone surrogate"):
        load_demonstrations(demos)
    demos.write_text('{"prompt": "the film was", "completion": " good \\ud83d\\ude00"}\n')  # a whole pair is fine
    assert load_demonstrations(demos)[0].completion == " good \U0001f600"


def test_missing_file_and_empty_datasets(tmp_path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        PromptDataset.from_file(tmp_path / "nope.jsonl")
    with pytest.raises(DatasetError, match="is not a regular file"):
        PromptDataset.from_file(tmp_path)
    with pytest.raises(DatasetError, match="empty; give at least one prompt"):
        PromptBanditEnv([], length_reward)
    with pytest.raises(DatasetError, match="prompt 1 is empty"):
        PromptDataset.from_list(["ok", "  "])
    ds = PromptDataset.from_list(PROMPTS)
    short = ds.filter(lambda p: len(p) < 20, reason="max 20 chars")
    assert len(short) == 1 and short.num_filtered == 3
    with pytest.raises(DatasetError, match="empty after filtering: all 4 prompts were removed"):
        ds.filter(lambda p: len(p) < 3, reason="max 3 chars")
    with pytest.raises(TypeError, match="dataset must be"):
        PromptBanditEnv(42, length_reward)  # type: ignore[arg-type]


# ---------------------------------------------------------------- bad rewards and actions


@pytest.mark.parametrize(
    "bad_reward, error, match",
    [
        (lambda p, c: [float("nan")] * len(c), ValueError, r"non-finite value\(s\) \(NaN or inf\) at index \[0\]"),
        (lambda p, c: [float("inf")] * len(c), ValueError, "non-finite"),
        (lambda p, c: [1.0, 2.0], ValueError, r"returned shape \(2,\) for 1 .* expected \(1,\)"),
        (lambda p, c: np.ones((len(c), 1)), ValueError, r"flatten it"),
        (lambda p, c: ["good"] * len(c), TypeError, "must return 1 floats"),
        (lambda p, c: "0.5", TypeError, "returned str"),
        (lambda p, c: None, TypeError, "returned NoneType"),
        (lambda p, c: [object()], TypeError, "type object"),
    ],
)
def test_bad_reward_values_are_loud(bad_reward, error, match) -> None:
    env = PromptBanditEnv(PROMPTS, bad_reward)
    env.reset(seed=0)
    with pytest.raises(error, match=match):
        env.step(" fine")


def test_bad_reward_in_the_batch_names_the_index() -> None:
    def one_nan(prompts, completions):
        out = np.zeros(len(completions))
        out[2] = np.nan
        return out

    vec = PromptBanditVecEnv(PROMPTS, one_nan, num_envs=4)
    vec.reset(seed=0)
    with pytest.raises(ValueError, match=r"1 non-finite value\(s\).*index \[2\]"):
        vec.step([" a", " b", " c", " d"])


def test_bad_actions_and_arguments() -> None:
    env = PromptBanditEnv(PROMPTS, length_reward)
    env.reset(seed=0)
    with pytest.raises(TypeError, match="must be a str"):
        env.step([1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="reward_fn must be callable"):
        PromptBanditEnv(PROMPTS, reward_fn=3.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_envs"):
        PromptBanditVecEnv(PROMPTS, length_reward, num_envs=0)
    with pytest.raises(ValueError, match="render_mode"):
        PromptBanditEnv(PROMPTS, length_reward, render_mode="human")


def test_grouped_prompts_hand_out_each_prompt_group_size_times() -> None:
    reward = CountingReward()
    vec = gymnasium.make_vec("llm_gym/PromptBandit-v0", num_envs=6, dataset=PROMPTS, reward_fn=reward, group_size=3)
    prompts, info = vec.reset(seed=0)
    assert prompts[0] == prompts[1] == prompts[2] and prompts[3] == prompts[4] == prompts[5]
    assert list(info["group"]) == [0, 0, 0, 1, 1, 1]
    assert list(info["prompt_index"][::3]) == list(info["prompt_index"][1::3])
    next_prompts, rewards, _, _, step_info = vec.step([" a", " bb", " ccc", " a", " bb", " ccc"])
    assert reward.calls == 1 and list(step_info["prompt"]) == list(prompts)  # one reward call for the whole batch
    assert list(step_info["group"]) == [0, 0, 0, 1, 1, 1]
    assert next_prompts[0] == next_prompts[2] and next_prompts[3] == next_prompts[5]
    # group_size=1 is the plain batch: same draws as before grouping existed
    plain = gymnasium.make_vec("llm_gym/PromptBandit-v0", num_envs=6, dataset=PROMPTS, reward_fn=reward)
    ungrouped = PromptBanditVecEnv(PROMPTS, reward, num_envs=6, group_size=1)
    assert plain.reset(seed=5)[0] == ungrouped.reset(seed=5)[0] and "group" not in ungrouped.reset(seed=5)[1]
    review = gymnasium.make_vec("llm_gym/ReviewSentiment-v0", num_envs=4, group_size=2)
    assert review.reset(seed=0)[0][0] == review.reset(seed=0)[0][1]


@pytest.mark.parametrize(("num_envs", "group_size", "match"), [
    (6, 4, "group_size=4 must divide num_envs=6"), (6, 0, "group_size must be a positive int"),
    (6, True, "group_size must be a positive int"), (True, 1, "num_envs must be a positive int")])
def test_bad_group_sizes_are_refused_with_the_fix(num_envs, group_size, match) -> None:
    with pytest.raises(ValueError, match=match):
        PromptBanditVecEnv(PROMPTS, length_reward, num_envs=num_envs, group_size=group_size)


# --- verifiable rewards: reward_fn="answer:..." builds an AnswerChecker from the dataset's answers ---------------------


def _problems(tmp_path, records=None) -> str:
    records = records or [{"prompt": "2 + 2 =", "answer": "4"}, {"prompt": "half of 3 is", "answer": "3/2"},
                          {"prompt": "ten thousand =", "answer": 10000}]
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def test_answer_reward_from_a_jsonl_of_prompts_and_answers(tmp_path) -> None:
    from llm_gym.core.answers import AnswerChecker

    env = gymnasium.make("llm_gym/PromptBandit-v0", dataset=_problems(tmp_path), reward_fn="answer:numeric")
    check_without_warnings(env)
    base = env.unwrapped
    assert isinstance(base.reward_fn, AnswerChecker) and base.task.gold is base.reward_fn
    assert base.task.gold.verifies_answers
    prompt, info = env.reset(options={"index": 2})
    _, reward, terminated, truncated, info = env.step("Let me count. Answer: 10,000")
    assert (reward, terminated, truncated, info["gold"]) == (1.0, True, False, 1.0)
    env.reset(options={"index": 1})
    assert env.step("Answer: 1.5")[1] == 1.0
    env.reset(options={"index": 0})
    assert env.step("four")[1] == 0.0 and base.reward_fn.last_stats.unextractable == 1


def test_answer_reward_in_the_vector_env_with_a_rule_and_field(tmp_path) -> None:
    path = _problems(tmp_path, [{"prompt": "capital of France?", "solution": "Paris"},
                                {"prompt": "capital of Italy?", "solution": "Rome"}])
    vec = PromptBanditVecEnv(path, reward_fn="answer:exact_nocase:tag", num_envs=4, answer_field="solution")
    prompts, _ = vec.reset(seed=0)
    right = {"capital of France?": "<answer>paris</answer>", "capital of Italy?": "<answer>ROME</answer>"}
    _, rewards, _, _, info = vec.step([right[p] for p in prompts])
    assert rewards.tolist() == [1.0] * 4 and info["gold"].tolist() == [1.0] * 4
    prompts, _ = vec.reset(seed=0)
    _, rewards, _, _, _ = vec.step(["Paris"] * 4)  # no tag: nothing extracted, 0, counted
    assert rewards.tolist() == [0.0] * 4 and vec.reward_fn.last_stats.unextractable == 4


def test_answer_gold_beside_another_reward(tmp_path) -> None:
    env = PromptBanditEnv(_problems(tmp_path), reward_fn=length_reward, gold_fn="answer:numeric")
    env.reset(options={"index": 0})
    _, reward, _, _, info = env.step("Answer: 4")
    assert reward == 2.0 and info["gold"] == 1.0 and env.task.gold is env.gold_fn


def test_answer_reward_needs_answers(tmp_path) -> None:
    with pytest.raises(DatasetError, match="list of prompts only"):
        PromptBanditEnv(PROMPTS, reward_fn="answer:exact")
    with pytest.raises(DatasetError, match="no 'answer' value.*answer_field=\"solution\""):
        PromptBanditEnv(_problems(tmp_path, [{"prompt": "q", "solution": "a"}]), reward_fn="answer:exact")
    with pytest.raises(ValueError, match="does not name an answer checker"):
        PromptBanditEnv(_problems(tmp_path), reward_fn="answer:fuzzy")
    with pytest.raises(DatasetError, match="not a number"):
        PromptBanditEnv(_problems(tmp_path, [{"prompt": "q", "answer": "Paris"}]), reward_fn="answer:numeric")


def test_an_answer_checking_judge_says_in_info_what_it_found() -> None:
    """With a judge that checks answers, `info` holds the reference, the extracted answer and whether there was none:
    a completion with nothing to extract scores 0 and is counted, never raised, in both forms."""
    records = [{"prompt": "2 + 2 =", "answer": "4"}, {"prompt": "3 + 4 =", "answer": "7"}]
    env = PromptBanditEnv(records, reward_fn="answer:numeric:marker")
    env.reset(seed=0, options={"index": 0})
    _, reward, _, _, info = env.step("Answer: 4")
    assert (reward, info["gold"], info["answer"], info["extracted"], info["unextractable"]) == (1.0, 1.0, "4", "4", False)
    env.reset(options={"index": 1})
    _, reward, _, _, info = env.step("I think seven")
    assert (reward, info["answer"], info["extracted"], info["unextractable"]) == (0.0, "7", None, True)

    vec = PromptBanditVecEnv(records, reward_fn=lambda p, c: [0.5] * len(c), num_envs=3, gold_fn="answer:numeric:whole")
    prompts, _ = vec.reset(seed=0)
    right = {"2 + 2 =": " 4", "3 + 4 =": " 7"}
    _, rewards, _, _, info = vec.step([right[prompts[0]], "", " 1e999999999999999999999"])
    assert rewards.tolist() == [0.5] * 3  # another reward paid; the checker still reports
    assert info["gold"].tolist() == [1.0, 0.0, 0.0]
    assert info["extracted"].tolist() == [right[prompts[0]].strip(), None, "1e999999999999999999999"]
    assert info["unextractable"].tolist() == [False, True, False]
    assert info["answer"].tolist() == [{"2 + 2 =": "4", "3 + 4 =": "7"}[p] for p in prompts]
    assert "dataset" not in info  # only a judge that knows its items' datasets (reasoning-gym's) adds it

    plain = PromptBanditEnv(["a"], reward_fn=lambda p, c: [1.0] * len(c))
    plain.reset(seed=0)
    assert "extracted" not in plain.step("x")[4]  # no answer-checking judge: nothing added
