"""`llm_gym/Arithmetic-v0`: the chain-sum task as a prompt bandit, single and batched, paid by its answer checker."""

from __future__ import annotations

import doctest
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
import llm_gym
from llm_gym.core.answers import AnswerChecker
from llm_gym.envs import ArithmeticEnv, ArithmeticVecEnv
from llm_gym.tasks.arithmetic import (
    ArithmeticTask,
    ArithmeticTaskConfig,
    generate_arithmetic_task,
)

SMALL = {"seed": 4, "n_pretrain": 30, "n_heldout": 5, "n_prompts": 20, "n_eval_prompts": 10, "n_demonstrations": 5}


def right(prompt: str) -> str:
    """The right completion, computed from the prompt itself (not from the env's answer table)."""
    tokens = prompt.removesuffix(" =").split()
    total = int(tokens[0])
    for op, n in zip(tokens[1::2], tokens[2::2]):
        assert op in "+-"
        total += int(n) if op == "+" else -int(n)
    return f" {total}"


def length_reward(prompts, completions):
    return np.array([float(len(c)) for c in completions])


def test_passes_check_env_without_warnings() -> None:
    for kwargs in ({}, {"split": "eval"}, {"render_mode": "ansi"}):
        env = gymnasium.make("llm_gym/Arithmetic-v0", task_config=SMALL, **kwargs)
        assert isinstance(env.unwrapped, ArithmeticEnv)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            check_env(env.unwrapped, skip_render_check=False)


def test_step_pays_the_right_answer() -> None:
    env = gymnasium.make("llm_gym/Arithmetic-v0", task_config=SMALL)
    task = env.unwrapped.task
    for seed in range(5):
        prompt, info = env.reset(seed=seed)
        assert prompt in task.prompts and task.prompts[info["prompt_index"]] == prompt
        obs, reward, terminated, truncated, info = env.step(right(prompt))
        assert (reward, info["gold"], terminated, truncated) == (1.0, 1.0, True, False)
        assert obs == prompt and info["completion"] == right(prompt)
        env.reset(seed=seed)
        wrong = f" {int(right(prompt)) + 1}"
        _, reward, _, _, info = env.step(wrong)
        assert reward == 0.0 and info["gold"] == 0.0
        env.reset(seed=seed)
        _, reward, _, _, info = env.step("")
        assert reward == 0.0 and info["gold"] == 0.0


def test_eval_split_hands_out_eval_prompts() -> None:
    env = gymnasium.make("llm_gym/Arithmetic-v0", task_config=SMALL, split="eval")
    task = env.unwrapped.task
    seen = set()
    for i in range(len(task.eval_prompts)):
        prompt, _ = env.reset(options={"index": i})
        assert prompt == task.eval_prompts[i] and prompt not in task.prompts
        _, reward, *_ = env.step(right(prompt))
        assert reward == 1.0
        seen.add(prompt)
    assert seen == set(task.eval_prompts)
    with pytest.raises(ValueError, match="out of range"):
        env.reset(options={"index": len(task.eval_prompts)})


def test_bad_split_and_unknown_config_key_say_what_is_valid() -> None:
    with pytest.raises(ValueError, match=r"split must be 'train' or 'eval', got 'test'"):
        gymnasium.make("llm_gym/Arithmetic-v0", task_config=SMALL, split="test")
    with pytest.raises(ValueError, match="split"):
        gymnasium.make_vec("llm_gym/Arithmetic-v0", num_envs=2, task_config=SMALL, split="validation")
    with pytest.raises(TypeError, match="n_promts") as err:
        gymnasium.make("llm_gym/Arithmetic-v0", task_config={"n_promts": 5})
    message = str(err.value)
    assert "task_config" in message
    for name in ("seed", "min_terms", "max_terms", "max_value", "sums_per_document", "n_prompts", "n_eval_prompts"):
        assert name in message.split("takes", 1)[1], f"the error lists the valid field {name}"
    with pytest.raises(ValueError, match=r"ArithmeticTaskConfig\.max_terms"):  # a bad value keeps the config's message
        gymnasium.make("llm_gym/Arithmetic-v0", task_config={**SMALL, "min_terms": 3, "max_terms": 2})


def test_task_config_as_dataclass_or_dict_is_the_same_task() -> None:
    from_dict = gymnasium.make("llm_gym/Arithmetic-v0", task_config=SMALL).unwrapped.task
    from_config = gymnasium.make("llm_gym/Arithmetic-v0", task_config=ArithmeticTaskConfig(**SMALL)).unwrapped.task
    assert from_dict == from_config == generate_arithmetic_task(ArithmeticTaskConfig(**SMALL))
    other = gymnasium.make("llm_gym/Arithmetic-v0", task_config={**SMALL, "seed": 5}).unwrapped.task
    assert other.prompts != from_dict.prompts


def test_env_task_is_the_generated_task() -> None:
    env = gymnasium.make("llm_gym/Arithmetic-v0", task_config=SMALL)
    task = env.unwrapped.task
    assert isinstance(task, ArithmeticTask) and isinstance(task, llm_gym.Task)
    assert task.config == ArithmeticTaskConfig(**SMALL)
    assert len(task.demonstrations) == 5 and len(task.pretrain_texts) == 30 and len(task.heldout_texts) == 5
    assert len(task.eval_prompts) == 10
    assert list(env.unwrapped.dataset.prompts) == list(task.prompts)
    assert task.gold.verifies_answers
    vec = gymnasium.make_vec("llm_gym/Arithmetic-v0", num_envs=2, task_config=SMALL)
    assert isinstance(vec, ArithmeticVecEnv) and vec.task == task


def test_make_vec_groups_prompts_and_pays_right_answers() -> None:
    env = gymnasium.make_vec("llm_gym/Arithmetic-v0", num_envs=8, group_size=4, task_config=SMALL)
    assert isinstance(env, ArithmeticVecEnv)
    prompts, info = env.reset(seed=0)
    assert len(prompts) == 8 and len(set(prompts[:4])) == 1 and len(set(prompts[4:])) == 1
    assert info["group"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert all(p in env.task.prompts for p in prompts)
    completions = [right(p) if i % 2 == 0 else f" {int(right(p)) - 10}" for i, p in enumerate(prompts)]
    next_prompts, rewards, terminated, truncated, info = env.step(completions)
    assert rewards.tolist() == [1.0, 0.0] * 4
    assert info["gold"].tolist() == rewards.tolist()
    assert info["prompt"].tolist() == list(prompts)
    assert terminated.all() and not truncated.any()
    assert len(next_prompts) == 8 and len(set(next_prompts[:4])) == 1


def test_make_vec_eval_split() -> None:
    env = gymnasium.make_vec("llm_gym/Arithmetic-v0", num_envs=6, task_config=SMALL, split="eval")
    prompts, _ = env.reset(seed=1)
    assert all(p in env.task.eval_prompts for p in prompts)
    _, rewards, *_ = env.step([right(p) for p in prompts])
    assert rewards.tolist() == [1.0] * 6


def test_custom_reward_replaces_the_pay_but_gold_stays_correctness() -> None:
    env = gymnasium.make("llm_gym/Arithmetic-v0", task_config=SMALL, reward_fn=length_reward)
    prompt, _ = env.reset(seed=0)
    _, reward, _, _, info = env.step("  wrong  ")
    assert reward == 9.0 and info["gold"] == 0.0
    env.reset(seed=0)
    _, reward, _, _, info = env.step(right(prompt))
    assert reward == float(len(right(prompt))) and info["gold"] == 1.0

    vec = gymnasium.make_vec("llm_gym/Arithmetic-v0", num_envs=4, task_config=SMALL, reward_fn=length_reward)
    prompts, _ = vec.reset(seed=0)
    completions = [right(prompts[0]), "no", right(prompts[2]), "   "]
    _, rewards, _, _, info = vec.step(completions)
    assert rewards.tolist() == [float(len(c)) for c in completions]
    assert info["gold"].tolist() == [1.0, 0.0, 1.0, 0.0]


def test_default_max_completion_chars_is_64_and_can_be_set() -> None:
    env = gymnasium.make("llm_gym/Arithmetic-v0", task_config=SMALL)
    assert env.unwrapped.action_space.max_length == 64
    vec = gymnasium.make_vec("llm_gym/Arithmetic-v0", num_envs=2, task_config=SMALL)
    assert vec.single_action_space.max_length == 64
    assert gymnasium.make("llm_gym/Arithmetic-v0", task_config=SMALL,
                          max_completion_chars=16).unwrapped.action_space.max_length == 16
    assert gymnasium.make_vec("llm_gym/Arithmetic-v0", num_envs=2, task_config=SMALL,
                              max_completion_chars=16).single_action_space.max_length == 16
    with pytest.raises(ValueError, match="max_completion_chars must be a positive int"):
        gymnasium.make("llm_gym/Arithmetic-v0", task_config=SMALL, max_completion_chars=0)


def test_each_env_has_one_checker_as_reward_and_gold() -> None:
    single = gymnasium.make("llm_gym/Arithmetic-v0", task_config=SMALL).unwrapped
    vec = gymnasium.make_vec("llm_gym/Arithmetic-v0", num_envs=2, task_config=SMALL)
    for env in (single, vec):
        assert isinstance(env.gold_fn, AnswerChecker) and env.reward_fn is env.gold_fn
        assert (env.gold_fn.match, env.gold_fn.rule, env.gold_fn.rel_tol) == ("numeric", "whole", 0.0)
        assert env.gold_fn.answers == {p: str(a) for p, a in env.task.answers.items()}
    assert single.task is vec.task, "one generated task per config (cached)"
    assert single.gold_fn is not vec.gold_fn, "but each environment makes its own checker"
    assert single.gold_fn is not single.task.gold
    custom = gymnasium.make("llm_gym/Arithmetic-v0", task_config=SMALL, reward_fn=length_reward).unwrapped
    assert custom.reward_fn is length_reward and isinstance(custom.gold_fn, AnswerChecker)


def test_two_envs_over_one_task_keep_their_own_checks() -> None:
    a = gymnasium.make("llm_gym/Arithmetic-v0", task_config=SMALL)
    b = gymnasium.make("llm_gym/Arithmetic-v0", task_config=SMALL)
    assert a.unwrapped.task is b.unwrapped.task
    prompt, _ = a.reset(seed=0)
    assert a.step(right(prompt))[1] == 1.0
    other, _ = b.reset(seed=1)
    assert b.step(" nonsense")[1] == 0.0
    checks_a, checks_b = a.unwrapped.gold_fn.last_checks, b.unwrapped.gold_fn.last_checks
    assert len(checks_a) == 1 and checks_a[0].correct and checks_a[0].extracted == right(prompt).strip()
    assert len(checks_b) == 1 and not checks_b[0].correct and checks_b[0].extracted == "nonsense"
    assert a.unwrapped.gold_fn.last_stats.correct == 1 and b.unwrapped.gold_fn.last_stats.correct == 0


def test_going_on_to_the_next_worksheet_line_is_not_paid() -> None:
    env = gymnasium.make("llm_gym/Arithmetic-v0", task_config=SMALL)
    task = env.unwrapped.task
    next_line = task.pretrain_texts[0].split("\n")[0]
    prompt, _ = env.reset(seed=3)
    for completion, paid in [(right(prompt), 1.0), (right(prompt) + "\n" + next_line, 0.0),
                             (right(prompt) + "\n3 + 4 = 7", 0.0), (right(prompt).strip(), 1.0),
                             (right(prompt) + ".0", 1.0), (f"{right(prompt)} = {right(prompt).strip()}", 0.0)]:
        env.reset(seed=3)
        _, reward, _, _, info = env.step(completion)
        assert (reward, info["gold"]) == (paid, paid), completion
    vec = gymnasium.make_vec("llm_gym/Arithmetic-v0", num_envs=2, task_config=SMALL)
    prompts, _ = vec.reset(seed=0)
    _, rewards, *_ = vec.step([right(prompts[0]), right(prompts[1]) + "\n" + next_line])
    assert rewards.tolist() == [1.0, 0.0]


def test_doctests() -> None:
    from llm_gym.envs import arithmetic

    result = doctest.testmod(arithmetic)
    assert result.attempted > 0 and result.failed == 0
