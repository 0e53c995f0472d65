"""One experiment, several algorithms side by side ([agent.<run>] tables): PPO, RLOO, GRPO, Dr. GRPO, best-of-N
and DPO from the same SFT policy and labels; resumed runs; a sweep over the algorithm; bad tables."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from doubles import tiny_experiment_dict
from llm_gym.agents.best_of_n import best_of_n_kl
from llm_gym.app.config import AgentStage, ExperimentConfig
from llm_gym.app.pipeline import Pipeline
from llm_gym.app.summary import format_summary
from llm_gym.app.sweep import parse_grid, plan_sweep
from llm_gym.infra.configio import ConfigError, apply_overrides, from_dict, load_config

SMALL = {"sampling": {"max_new_tokens": 8}, "minibatch_size": 4, "log_samples_every": 0}


def experiment(model_cache: Path, *overrides: str) -> dict:
    data = tiny_experiment_dict(model_cache)
    data["ppo"] = {}
    data["agent"] = {
        "ppo": {"algorithm": "ppo", "iterations": 2, "num_envs": 8, "config": SMALL},
        "rloo": {"algorithm": "rloo", "iterations": 2, "num_envs": 8, "config": {**SMALL, "group_size": 4}},
        "grpo": {"algorithm": "grpo", "iterations": 2, "num_envs": 8, "config": {**SMALL, "group_size": 4}},
        "dr_grpo": {"algorithm": "grpo", "iterations": 2, "num_envs": 8, "reward": "gold",
                    "config": {**SMALL, "group_size": 4, "scale_rewards": False, "loss_type": "dr_grpo"}},
        "bon4": {"algorithm": "best_of_n", "reward": "gold", "config": {"n": 4, "sampling": {"max_new_tokens": 8}}},
        "dpo": {"algorithm": "dpo", "config": {"epochs": 1, "batch_size": 8}},
    }
    return apply_overrides(data, overrides)


def test_every_algorithm_runs_side_by_side_from_the_same_sft_and_labels(tmp_path, model_cache, tiny_model) -> None:
    config = from_dict(ExperimentConfig, experiment(model_cache))
    events: list[str] = []
    summary = Pipeline(config, tmp_path / "run", on_event=events.append).run()
    rows = summary["rows"]
    assert {"ppo", "rloo", "grpo", "dr_grpo", "bon4", "dpo"} <= rows.keys()
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert [state[f"agent.{n}"]["result"]["algorithm"] for n in ("ppo", "rloo", "grpo", "dr_grpo", "bon4", "dpo")] == [
        "ppo", "rloo", "grpo", "grpo", "best_of_n", "dpo"]
    for name in ("ppo", "rloo", "grpo", "dr_grpo", "bon4", "dpo"):
        for key in ("gold", "rm_score", "kl", "win_rate", "perplexity"):
            assert math.isfinite(rows[name][key]), (name, key)
    # best-of-N trains nothing: its KL to SFT is the analytic log N - (N - 1) / N
    assert rows["bon4"]["kl"] == pytest.approx(best_of_n_kl(4))
    assert rows["bon4"]["gold"] >= rows["sft"]["gold"]  # the best of 4 by the gold judge, on the same samples
    # labels: runs paid by the reward model, and DPO, used the reward-model stage's labels; gold-paid runs none
    labels = rows["reward_model"]["labels"]
    assert rows["rloo"]["labels"] == rows["dpo"]["labels"] == labels and rows["dr_grpo"]["labels"] == 0
    for name in ("ppo", "rloo", "grpo", "dr_grpo"):
        assert (tmp_path / "run" / "agent" / name / "checkpoint" / "manifest.json").exists()
    assert "dr_grpo" in format_summary(summary)
    # a rerun reuses every stage
    again: list[str] = []
    Pipeline(config, tmp_path / "run", on_event=again.append).run()
    assert not [e for e in again if e.endswith("running")]


def test_a_longer_run_resumes_from_its_checkpoint(tmp_path, model_cache, tiny_model) -> None:
    data = experiment(model_cache)
    data["agent"] = {"grpo": data["agent"]["grpo"]}
    Pipeline(from_dict(ExperimentConfig, data), tmp_path / "run").run()
    events: list[str] = []
    longer = from_dict(ExperimentConfig, apply_overrides(data, ["agent.grpo.iterations=3"]))
    Pipeline(longer, tmp_path / "run", on_event=events.append).run()
    assert "[agent.grpo] resuming from its checkpoint at iteration 2" in events
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["agent.grpo"]["result"]["iterations"] == 3


def test_a_sweep_can_grid_over_the_algorithm(tmp_path, model_cache) -> None:
    data = tiny_experiment_dict(model_cache)
    data["ppo"] = {}
    data["agent"] = {"x": {"algorithm": "ppo", "iterations": 1, "num_envs": 8, "config": SMALL}}
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(data))
    points = plan_sweep(path, parse_grid(["agent.x.algorithm=ppo,rloo,grpo"]), metric="x.gold")
    configs = [load_config(ExperimentConfig, path, p.overrides) for p in points]  # what each point's run reads
    assert [c.agent["x"].algorithm for c in configs] == ["ppo", "rloo", "grpo"]
    assert [type(c.agent["x"].config).__name__ for c in configs] == ["PPOConfig", "RLOOConfig", "GRPOConfig"]


@pytest.mark.parametrize(("table", "match"), [
    ({"algorithm": "rlooo"}, "agent.bad.algorithm: expected one of 'ppo', 'rloo'"),
    ({"algorithm": "rloo", "config": {"group_size": 1}}, "agent.bad: .*group_size must be >= 2"),
    ({"algorithm": "grpo", "config": {"clip_rnge": 0.1}}, "agent.bad: config.clip_rnge: unknown key.*did you mean 'clip_range'"),
    ({"algorithm": "rloo", "num_envs": 6, "config": {"minibatch_size": 2}}, r"num_envs \(6\) must be a multiple of config.minibatch_size \(2\) and of config.group_size \(4\)"),
])
def test_bad_agent_tables_are_refused_with_their_path(model_cache, table, match) -> None:
    data = tiny_experiment_dict(model_cache)
    data["agent"] = {"bad": table}
    with pytest.raises(ConfigError, match=match):
        from_dict(ExperimentConfig, data)


def test_agent_stage_from_python_and_names_unique_across_sections() -> None:
    stage = AgentStage(algorithm="rloo", config={"group_size": 2, "minibatch_size": 2}, num_envs=4)
    assert type(stage.config).__name__ == "RLOOConfig" and stage.config.group_size == 2
    with pytest.raises(ValueError, match=r"\['ppo'\] name runs in both \[ppo\] and \[agent\]"):
        ExperimentConfig(agent={"ppo": AgentStage(config={"minibatch_size": 16}, num_envs=64)})


def test_dpo_learns_from_the_reward_model_stages_labels_only(tmp_path, model_cache, tiny_model) -> None:
    from llm_gym.core.preferences import Answer, Query
    from llm_gym.feedback.store import PreferenceStore

    data = experiment(model_cache)
    data["agent"] = {"dpo": data["agent"]["dpo"]}
    first = from_dict(ExperimentConfig, apply_overrides(data, ["stages=['pretrain','sft','reward_model']"]))
    summary = Pipeline(first, tmp_path / "run").run()
    with PreferenceStore(tmp_path / "run" / "labels.sqlite") as store:  # a person labels something else meanwhile
        extra = Query("the film was", (" great", " awful"))
        store.add_queries([extra])
        store.add_answer(Answer(extra.query_id, (0, 1), labeller="alice"))
    summary = Pipeline(from_dict(ExperimentConfig, data), tmp_path / "run").run()
    assert summary["rows"]["dpo"]["labels"] == summary["rows"]["reward_model"]["labels"]
