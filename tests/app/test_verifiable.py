"""Verifiable tasks through `llm-gym run`: a reasoning-gym environment end to end, and answers in a data file as part of
what a run's fingerprint holds."""

from __future__ import annotations

import json

import pytest

from doubles import tiny_experiment_dict
from llm_gym.app.config import ExperimentConfig
from llm_gym.app.pipeline import Pipeline
from llm_gym.infra.configio import from_dict


def test_a_reasoning_gym_task_runs_end_to_end_with_accuracy_and_pass_at_k(tmp_path, model_cache, tiny_model) -> None:
    pytest.importorskip("reasoning_gym")  # the optional extra (installed by `make test`); the other test needs none
    data = tiny_experiment_dict(model_cache)
    data.update(stages=["pretrain", "sft", "ppo", "evaluation"])
    data["task"] = {"env": "llm_gym/ReasoningGym-v0",
                    "env_kwargs": {"dataset": "chain_sum", "size": 16, "min_terms": 2, "max_terms": 2}}
    data["ppo"] = {"rg": {**data["ppo"]["ppo"], "iterations": 1, "checkpoint_every": 0, "reward": "env"}}
    data["evaluation"] = {"prompts": 4, "samples_per_prompt": 2, "pass_k": [1, 2], "sampling": {"max_new_tokens": 4}}
    summary = Pipeline(from_dict(ExperimentConfig, data), tmp_path / "run").run()
    events: list[str] = []
    Pipeline(from_dict(ExperimentConfig, data), tmp_path / "run", on_event=events.append).run()
    assert not [e for e in events if e.endswith("] running")]  # the same experiment again: every stage reused
    rows = summary["rows"]
    assert set(rows) == {"pretrained", "sft", "rg"}
    for row in ("pretrained", "rg"):  # a random tiny model is (almost surely) never right: 0, but reported
        assert {"accuracy_greedy", "accuracy_sampled", "pass@1", "pass@2"} <= set(rows[row])
        assert 0.0 <= rows[row]["pass@1"] <= rows[row]["pass@2"] <= 1.0


def test_editing_a_reference_answer_reruns_what_it_scored(tmp_path, model_cache, tiny_model) -> None:
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps({"prompt": f"{a} + {a} =", "answer": str(2 * a)}) + "\n" for a in range(6)))
    data = tiny_experiment_dict(model_cache)
    data.update(stages=["pretrain", "sft", "ppo", "evaluation"])
    data["task"] = {"env": "llm_gym/PromptBandit-v0",
                    "env_kwargs": {"dataset": str(problems), "reward_fn": "answer:numeric:whole"}}
    data["ppo"] = {"ppo": {**data["ppo"]["ppo"], "iterations": 1, "checkpoint_every": 0, "reward": "env"}}
    data["evaluation"] = {"prompts": 4, "samples_per_prompt": 2, "pass_k": [1], "sampling": {"max_new_tokens": 4}}
    config = from_dict(ExperimentConfig, data)

    def run() -> list[str]:
        events: list[str] = []
        Pipeline(config, tmp_path / "run", on_event=events.append).run()
        return [e.split("]")[0][1:] for e in events if e.endswith("] running")]

    assert run() == ["pretrain", "sft", "ppo.ppo", "evaluation"]
    assert run() == []
    problems.write_text(problems.read_text().replace('"answer": "0"', '"answer": "1"'))  # one answer changed
    assert run() == ["ppo.ppo", "evaluation"]  # the runs it paid and judged; the prompts, hence SFT, are the same
