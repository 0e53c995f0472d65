"""The built-in verifiable task through `llm-gym run`: the tiny model pretrained on the chain sums' own corpus, an RL run
paid by the answer checker, accuracy and pass@k in the summary; and what a sweep or an RL run reads from such a task."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from doubles import tiny_experiment_dict
from llm_gym.app.config import ExperimentConfig
from llm_gym.app.pipeline import Pipeline
from llm_gym.app.stages import load_task, make_env
from llm_gym.app.sweep import default_metric
from llm_gym.infra.configio import from_dict
from llm_gym.infra.distributed import Distributed

SMALL = {"n_pretrain": 600, "n_heldout": 40, "n_prompts": 40, "n_eval_prompts": 8, "n_demonstrations": 20}


def _arithmetic_dict(model_cache: Path) -> dict:
    data = tiny_experiment_dict(model_cache)
    data.update(stages=["pretrain", "sft", "agent", "evaluation"])
    data["task"] = {"env": "llm_gym/Arithmetic-v0", "env_kwargs": {"task_config": SMALL}}
    data["ppo"] = {}
    data["agent"] = {"grpo": {"algorithm": "grpo", "reward": "env", "iterations": 2, "num_envs": 8, "checkpoint_every": 0,
                              "config": {"minibatch_size": 4, "group_size": 4, "sampling": {"max_new_tokens": 4}}}}
    data["evaluation"] = {"prompts": 8, "samples_per_prompt": 4, "pass_k": [1, 4], "sampling": {"max_new_tokens": 4}}
    return data


def test_the_arithmetic_task_runs_end_to_end_on_a_model_pretrained_on_its_own_corpus(tmp_path, model_cache) -> None:
    config = from_dict(ExperimentConfig, _arithmetic_dict(model_cache))
    events: list[str] = []
    summary = Pipeline(config, tmp_path / "run", on_event=events.append).run()
    model = Path(Pipeline(config, tmp_path / "run").state["pretrain"]["result"]["path"])
    assert model.name.startswith("tiny-gpt2-")  # not the review model: the chain sums' corpus and tokenizer
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(model).get_vocab()
    assert "Ġ=" in vocab and not any(word in vocab for word in ("Ġgreat", "Ġterrible"))
    for row in ("pretrained", "sft", "grpo"):
        r = summary["rows"][row]
        assert 0.0 <= r["pass@1"] <= r["pass@4"] <= 1.0
        assert r["accuracy_sampled"] == r["pass@1"]
        assert 0.0 <= r["accuracy_greedy"] <= 1.0
    # the same run again reuses every stage, the model included
    again: list[str] = []
    Pipeline(config, tmp_path / "run", on_event=again.append).run()
    assert not [e for e in again if e.endswith("] running")]
    # another corpus (a new seed of the generator) is another model: pretraining runs again
    data = _arithmetic_dict(model_cache)
    data["task"]["env_kwargs"]["task_config"] = {**SMALL, "seed": 1}
    other: list[str] = []
    Pipeline(from_dict(ExperimentConfig, data), tmp_path / "run", on_event=other.append).run()
    assert "[pretrain] running" in other


def test_a_sweep_on_a_verifying_environment_shows_sampled_accuracy(model_cache) -> None:
    config = from_dict(ExperimentConfig, _arithmetic_dict(model_cache))
    assert default_metric(config) == "grpo.accuracy_sampled"
    review = from_dict(ExperimentConfig, {**_arithmetic_dict(model_cache), "task": {}})
    assert default_metric(review) == "grpo.gold"


def test_an_rl_run_paid_another_reward_still_reports_the_answer_checkers_gold(tmp_path) -> None:
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(f'{{"prompt": "{a} + {a} =", "answer": "{2 * a}"}}\n' for a in range(4)))
    config = from_dict(ExperimentConfig, {"task": {"env": "llm_gym/PromptBandit-v0",
                                                   "env_kwargs": {"dataset": str(problems), "reward_fn": "answer:numeric:whole"}}})
    loaded = load_task(config.task, config.pretrain.task)
    env = make_env(loaded, lambda p, c: [0.5] * len(c), num_envs=4, dist=Distributed())
    prompts, _ = env.reset(seed=0)
    answers = [" " + str(2 * int(p.split()[0])) for p in prompts]
    _, reward, _, _, info = env.step(answers[:2] + [" no", " 7.5"])
    assert reward.tolist() == [0.5] * 4  # the reward paid is the one passed in
    assert np.asarray(info["gold"]).tolist() == [1.0, 1.0, 0.0, 0.0]  # and the checker still says which are right


def _stages_run(config: ExperimentConfig, out: Path) -> list[str]:
    events: list[str] = []
    Pipeline(config, out, on_event=events.append).run()
    return [e.split("]")[0][1:] for e in events if e.endswith("] running")]


def test_what_reruns_pretraining_on_the_arithmetic_task_is_its_corpus(tmp_path, model_cache) -> None:
    data = _arithmetic_dict(model_cache)
    data["stages"] = ["pretrain", "sft"]
    assert _stages_run(from_dict(ExperimentConfig, data), tmp_path / "run") == ["pretrain", "sft"]
    # fewer demonstrations: the same worksheets, so the same model; SFT reruns on the new demonstrations
    data["task"]["env_kwargs"]["task_config"] = {**SMALL, "n_demonstrations": 10}
    assert _stages_run(from_dict(ExperimentConfig, data), tmp_path / "run") == ["sft"]
    # the review task's config plays no part in a model pretrained on the worksheets
    data["pretrain"]["task"] = {**data["pretrain"]["task"], "n_prompts": 7}
    assert _stages_run(from_dict(ExperimentConfig, data), tmp_path / "run") == []


def test_the_review_env_with_kwargs_keeps_the_review_model(tmp_path, model_cache, tiny_model) -> None:
    """Any env_kwargs on the built-in review environment (a longer action space, another split...) leave its corpus,
    hence its model and cache folder, as they were."""
    data = _arithmetic_dict(model_cache)
    data["stages"] = ["pretrain"]
    data["task"] = {"env": "llm_gym/ReviewSentiment-v0", "env_kwargs": {"max_completion_chars": 512}}
    pipeline = Pipeline(from_dict(ExperimentConfig, data), tmp_path / "run")
    pipeline.run()
    assert pipeline.state["pretrain"]["result"]["path"] == str(tiny_model.path)
