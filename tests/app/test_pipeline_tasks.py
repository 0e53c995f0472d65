"""The pipeline on tasks other than the built-in one: a user-registered environment with its own reward
and no gold judge, a prompt bandit named in a config file, and stages refused when the task lacks a part."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium
import pytest

import doubles
from doubles import tiny_experiment_dict
from llm_gym.app.config import ExperimentConfig
from llm_gym.envs.prompt_bandit import PromptBanditVecEnv
from llm_gym.app.pipeline import Pipeline
from llm_gym.app.summary import format_summary
from llm_gym.infra.configio import ConfigError, apply_overrides, from_dict

PROMPTS = ["the film was", "my new phone is", "the hotel room was", "this blender is", "the soup was", "our guide was"]

gymnasium.register(
    id="test_user/WordCount-v0",
    entry_point="llm_gym.envs.prompt_bandit:PromptBanditEnv",
    vector_entry_point="llm_gym.envs.prompt_bandit:PromptBanditVecEnv",
    kwargs={"dataset": PROMPTS, "reward_fn": doubles.word_count_reward},
)


def user_env_config(model_cache: Path, *overrides: str) -> ExperimentConfig:
    data = tiny_experiment_dict(model_cache)
    data["task"] = {"env": "test_user/WordCount-v0"}
    data["stages"] = ["pretrain", "sft", "ppo", "evaluation"]
    data["ppo"] = {"words": {**data["ppo"]["ppo"], "reward": "env"}}
    return from_dict(ExperimentConfig, apply_overrides(data, overrides))


def test_a_user_registered_environment_with_its_own_reward_and_no_gold_judge(tmp_path, model_cache, tiny_model) -> None:
    events: list[str] = []
    calls = len(doubles.REWARD_CALLS)
    pipeline = Pipeline(user_env_config(model_cache), tmp_path / "run", on_event=events.append)
    summary = pipeline.run()
    assert list(pipeline.prompts) == PROMPTS and pipeline.task.gold is None
    # PPO was paid by the environment's own reward: 3 iterations x 8 completions went through it
    assert sum(doubles.REWARD_CALLS[calls:]) >= 3 * 8
    assert "[evaluation] the task has no held-out prompts: evaluating on training prompts" in events
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["sft"]["result"]["skipped"] == "the task has no demonstrations"
    rows = summary["rows"]
    assert rows.keys() == {"pretrained", "sft", "words"}
    for name in ("pretrained", "sft", "words"):
        # no gold judge and no held-out text: these figures are absent, not computed on the review task
        assert rows[name]["gold"] is None and rows[name]["win_rate"] is None and rows[name]["perplexity"] is None
        assert rows[name]["rm_score"] is None
    assert rows["words"]["kl"] > 0 and rows["sft"]["kl"] == pytest.approx(0.0, abs=1e-6)
    table = format_summary(summary)
    header = table.splitlines()[1]
    assert "KL to SFT" in header and "labels" in header
    for absent in ("gold", "win vs SFT", "perplexity", "RM~gold", "RM "):
        assert absent not in header, absent
    assert "gold" not in table  # nor in the legend


def test_stages_that_need_a_gold_judge_are_refused_before_anything_runs(tmp_path, model_cache) -> None:
    out = tmp_path / "run"
    config = user_env_config(model_cache, 'stages=["pretrain", "sft", "reward_model", "ppo"]',
                             'ppo.words.reward="gold"')
    with pytest.raises(ConfigError) as err:
        Pipeline(config, out).run()
    message = str(err.value)
    assert 'oracle.kind = "synthetic"' in message and 'ppo.words.reward = "gold"' in message
    assert "needs a gold judge" in message and 'task.gold = "module:name"' in message
    assert not (out / "state.json").exists()  # nothing ran


def test_ptx_without_pretraining_text_is_refused(tmp_path, model_cache) -> None:
    config = user_env_config(model_cache, "ppo.words.config.ptx_coef=0.2")
    with pytest.raises(ConfigError, match="ptx_coef > 0 mixes in pretraining text, and the task has none"):
        Pipeline(config, tmp_path / "run").run()


def test_a_prompt_bandit_named_in_a_config_file_with_recorded_labels_and_a_gold_judge_by_import_path(
        tmp_path, model_cache, tiny_model) -> None:
    """The TOML way: llm_gym/PromptBandit-v0 over a prompts file, the reward and the gold judge as import paths;
    the reward model learns from a recorded file (a task without a gold judge could not label synthetically)."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    recorded = tmp_path / "labels.jsonl"
    recorded.write_text("".join(json.dumps({"prompt": p, "chosen": " it was really very good .", "rejected": " bad"}) + "\n"
                                for p in PROMPTS))
    data = tiny_experiment_dict(model_cache)
    data["task"] = {"env": "llm_gym/PromptBandit-v0",
                    "env_kwargs": {"dataset": str(prompts), "reward_fn": "doubles:word_count_reward"}}
    data["stages"] = ["pretrain", "sft", "reward_model", "evaluation"]
    data["oracle"] = {"kind": "recorded", "path": str(recorded)}
    config = from_dict(ExperimentConfig, data)
    summary = Pipeline(config, tmp_path / "run").run()
    assert summary["rows"]["reward_model"]["labels"] == len(PROMPTS)
    assert summary["rows"]["reward_model"]["gold_agreement"] is None  # no gold judge to agree with
    assert summary["rows"]["sft"]["rm_score"] is not None and summary["rows"]["sft"]["gold"] is None
    # the same task with a gold judge named by import path: gold figures appear, and the data fingerprint changes
    judged = from_dict(ExperimentConfig, apply_overrides(data, ['task.gold="doubles:word_count_reward"']))
    pipeline = Pipeline(judged, tmp_path / "run")
    summary = pipeline.run()
    assert summary["rows"]["sft"]["gold"] is not None and summary["rows"]["sft"]["win_rate"] is not None
    assert summary["rows"]["reward_model"]["gold_agreement"] is not None
    assert "gold" in format_summary(summary).splitlines()[1]


def test_an_environment_that_is_not_a_prompt_bandit_is_refused_with_what_to_do(tmp_path, model_cache) -> None:
    data = tiny_experiment_dict(model_cache)
    data["task"] = {"env": "CartPole-v1"}
    with pytest.raises(ConfigError, match="has no `task` and `reward_fn`; the pipeline runs prompt-bandit environments"):
        Pipeline(from_dict(ExperimentConfig, data), tmp_path / "run").run()
    data["task"] = {"env": "llm_gym/PromptBandt-v0"}
    with pytest.raises(ConfigError, match="task.env: cannot make 'llm_gym/PromptBandt-v0'.*PromptBandit"):
        Pipeline(from_dict(ExperimentConfig, data), tmp_path / "run").run()


class CountingVecEnv(PromptBanditVecEnv):
    """A user's own batched environment: a subclass whose step the pipeline must really call."""

    steps = 0

    def step(self, actions):
        CountingVecEnv.steps += 1
        return super().step(actions)


gymnasium.register(
    id="test_user/CountingWords-v0",
    entry_point="llm_gym.envs.prompt_bandit:PromptBanditEnv",
    vector_entry_point=CountingVecEnv,
    kwargs={"dataset": PROMPTS, "reward_fn": doubles.word_count_reward},
)


def test_the_registered_environment_itself_is_what_the_runs_train_on(tmp_path, model_cache, tiny_model) -> None:
    data = tiny_experiment_dict(model_cache)
    data["task"] = {"env": "test_user/CountingWords-v0"}
    data["stages"] = ["pretrain", "sft", "agent"]
    data["ppo"] = {}
    data["agent"] = {"rloo": {"algorithm": "rloo", "reward": "env", "iterations": 2, "num_envs": 8,
                              "config": {"group_size": 4, "minibatch_size": 4, "sampling": {"max_new_tokens": 8}}}}
    before = CountingVecEnv.steps
    Pipeline(from_dict(ExperimentConfig, data), tmp_path / "run").run()
    assert CountingVecEnv.steps - before == 2  # one step per iteration, through the subclass's own step
