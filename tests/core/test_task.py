"""The task interface: what any task provides, PromptTask from lists, the built-in task and environments as tasks."""

from __future__ import annotations

import gymnasium
import pytest

import llm_gym
from llm_gym import Demonstration, GoldScorer, PromptTask, Task, TinyLMConfig, generate_review_task
from llm_gym.core.reward import resolve_reward_fn


def test_prompt_task_holds_what_it_is_given_and_defaults_the_rest() -> None:
    task = PromptTask(prompts=["2 + 2 =", "3 + 1 ="], demonstrations=[Demonstration("2 + 2 =", " 4")])
    assert task.prompts == ("2 + 2 =", "3 + 1 =") and task.eval_prompts == () and task.pretrain_texts == ()
    assert task.heldout_texts == () and task.gold is None
    assert task.demonstrations == (Demonstration("2 + 2 =", " 4"),)
    assert isinstance(task, Task)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"prompts": []}, ValueError, "at least one prompt"),
        ({"prompts": "one prompt"}, TypeError, "not one string"),
        ({"prompts": ["ok", "  "]}, ValueError, r"prompts\[1\] is empty"),
        ({"prompts": ["ok", 3]}, TypeError, r"prompts\[1\] is int"),
        ({"prompts": ["ok"], "demonstrations": [("p", "c")]}, TypeError, "Demonstration"),
        ({"prompts": ["ok"], "gold": "not callable"}, TypeError, "gold must be a reward function"),
    ],
)
def test_prompt_task_refuses_bad_parts_with_the_fix(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        PromptTask(**kwargs)


def test_the_built_in_review_task_is_a_task_with_every_part() -> None:
    task = generate_review_task(TinyLMConfig.smoke().task)
    assert isinstance(task, Task)
    assert task.prompts and task.eval_prompts and task.demonstrations and task.pretrain_texts and task.heldout_texts
    assert isinstance(task.gold, GoldScorer)


def test_environments_expose_their_task() -> None:
    words = lambda p, c: [float(len(x.split())) for x in c]  # noqa: E731
    env = gymnasium.make("llm_gym/PromptBandit-v0", dataset=["the film was", "the hotel was"], reward_fn=words)
    task = env.unwrapped.task
    assert isinstance(task, Task) and list(task.prompts) == ["the film was", "the hotel was"] and task.gold is None
    review = gymnasium.make("llm_gym/ReviewSentiment-v0", task_config=TinyLMConfig.smoke().task).unwrapped.task
    assert review.demonstrations and review.heldout_texts and isinstance(review.gold, GoldScorer)
    # the task config may come as a table from a config file
    same = gymnasium.make("llm_gym/ReviewSentiment-v0", task_config={"n_pretrain": 1500, "n_heldout": 200, "n_prompts": 100,
                                                                     "n_eval_prompts": 40, "n_demonstrations": 100})
    assert list(same.unwrapped.task.prompts) == list(review.prompts)


def test_reward_functions_by_import_path() -> None:
    fn = resolve_reward_fn("doubles:word_count_reward")
    assert fn(["p"], ["one two three"]) == [3.0]
    assert isinstance(resolve_reward_fn("llm_gym.tasks.review:GoldScorer"), GoldScorer)  # a class is instantiated
    env = gymnasium.make("llm_gym/PromptBandit-v0", dataset=["the film was"], reward_fn="doubles:word_count_reward")
    env.reset(seed=0)
    assert env.step(" really very good")[1] == 3.0
    with pytest.raises(ValueError, match='"package.module:name"'):
        resolve_reward_fn("doubles.word_count_reward")
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
        resolve_reward_fn("no_such_module_xyz:f")
    with pytest.raises(ValueError, match="has no 'nope'"):
        resolve_reward_fn("doubles:nope")
    with pytest.raises(TypeError, match="must be callable"):
        resolve_reward_fn("doubles:REWARD_CALLS")


def test_import_llm_gym_stays_light() -> None:
    """`import llm_gym` registers the environments but imports neither torch nor the web server."""
    import subprocess
    import sys

    code = ("import sys, llm_gym, gymnasium; assert 'llm_gym/PromptBandit-v0' in gymnasium.registry;"
            "print(sorted(m for m in ('torch', 'transformers', 'llm_gym.feedback.web', 'http.server') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert llm_gym.Policy.__module__ == "llm_gym.models.policy"  # names resolve on first use
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        llm_gym.Nope  # noqa: B018
