"""The rerun traps: what a rerun, an `eval` with other settings, a teammate, a given model, another folder or a
user's reward function used to get wrong. Each test fails without its fix."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from doubles import tiny_experiment_dict
from llm_gym import PreferenceStore
from llm_gym.app.cli import main
from llm_gym.app.config import ExperimentConfig, resolve_input_paths
from llm_gym.app.pipeline import Pipeline
from llm_gym.infra.configio import apply_overrides, from_dict

RM_STAGES = "stages=['pretrain','sft','reward_model']"


def tiny(model_cache: Path, *overrides: str, runs: tuple[str, ...] = ()) -> ExperimentConfig:
    data = tiny_experiment_dict(model_cache)
    data["ppo"] = {name: data["ppo"][name] for name in runs}
    return from_dict(ExperimentConfig, apply_overrides(data, overrides))


def write_records(path: Path, reverse: bool = False) -> None:
    """Twelve recorded pairwise labels preferring the 'great' completion (or, reversed, the 'dull' one)."""
    lines = []
    for i in range(12):
        good, bad = f" great and fun {i}", f" dull and bad {i}"
        chosen, rejected = (bad, good) if reverse else (good, bad)
        lines.append(json.dumps({"prompt": "the film was", "chosen": chosen, "rejected": rejected}))
    path.write_text("\n".join(lines) + "\n")


def winners(store_path: Path) -> set[str]:
    """The first word of every preferred completion in a store."""
    with PreferenceStore(store_path) as store:
        return {c.completions[c.ranks.index(0)].split()[0] for c in store.comparisons()}


# ------------------------------------------------------------------ 1. preference files by content
def test_an_edited_preference_file_reruns_the_reward_model_into_a_fresh_store(tmp_path, model_cache, tiny_model) -> None:
    records, out = tmp_path / "labels.jsonl", tmp_path / "run"
    write_records(records)
    config = tiny(model_cache, RM_STAGES, "oracle.kind=recorded", f"oracle.path={json.dumps(str(records))}")
    Pipeline(config, out).run()
    assert winners(out / "labels.sqlite") == {"great"}
    write_records(records, reverse=True)  # the same comparisons, every label reversed, at the same path
    events: list[str] = []
    summary = Pipeline(config, out, on_event=events.append).run()
    assert "[reward_model] running" in events and "[sft] done earlier (same inputs): reusing it" in events
    assert winners(out / "labels.sqlite") == {"dull"}, "the edited file's answers, not the old store's"
    assert summary["rows"]["reward_model"]["labels"] == 12
    aside = list(out.glob("labels.*.sqlite"))
    assert len(aside) == 1 and winners(aside[0]) == {"great"}, "the old answers are kept aside, never deleted"
    # the file put back as it was: its store comes back, and a rerun of nothing else
    write_records(records)
    events.clear()
    Pipeline(config, out, on_event=events.append).run()
    assert "[reward_model] running" in events and winners(out / "labels.sqlite") == {"great"}


# ------------------------------------------------------------------ 2. eval with overrides
def test_eval_with_overrides_writes_a_new_file_and_leaves_the_runs_results_alone(tmp_path, model_cache, tiny_model,
                                                                                 capsys) -> None:
    out = tmp_path / "run"
    Pipeline(tiny(model_cache, "stages=['pretrain','sft','evaluation']"), out).run()
    before = {name: (out / name).read_bytes() for name in ("summary.json", "state.json", "config.json")}
    assert main(["eval", str(out), "--set", "evaluation.prompts=4"]) == 0
    assert {name: (out / name).read_bytes() for name in before} == before, "the run's results are untouched"
    written = list((out / "evaluations").glob("*.json"))
    assert len(written) == 1 and str(written[0]) in capsys.readouterr().out, "the new file is named in the output"
    evaluation = json.loads(written[0].read_text())
    assert evaluation["config"]["evaluation"]["prompts"] == 4 and set(evaluation["rows"]) == {"pretrained", "sft"}
    assert all(row["gold"] is not None for row in evaluation["rows"].values())
    assert main(["eval", str(out), "--set", "evaluation.prompts=4"]) == 0
    assert len(list((out / "evaluations").glob("*.json"))) == 2, "a second evaluation never replaces the first"
    # without overrides: as before, the run's own summary is rewritten
    assert main(["eval", str(out)]) == 0
    assert json.loads((out / "state.json").read_text())["evaluation"]["result"]["prompts"] == 8


# ------------------------------------------------------------------ 3. permissions
@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_a_run_folder_follows_the_users_umask(tmp_path, model_cache, tiny_model, umask) -> None:
    out = tmp_path / "run"
    config = tiny(model_cache, "stages=['pretrain','sft','reward_model','ppo']", "ppo.ppo.iterations=1", runs=("ppo",))
    old = os.umask(umask)
    try:
        Pipeline(config, out).run()
    finally:
        os.umask(old)
    wrong = {}
    for root, dirs, files in os.walk(out):
        for name in [*dirs, *files, *([""] if root == str(out) else [])]:
            path = Path(root) / name
            expected = (0o777 if path.is_dir() else 0o666) & ~umask
            if path.stat().st_mode & 0o777 != expected:
                wrong[str(path.relative_to(out))] = oct(path.stat().st_mode & 0o777)
    assert not wrong, f"expected files {oct(0o666 & ~umask)} and folders {oct(0o777 & ~umask)}: {wrong}"
    assert (out / "reward_model" / "model.safetensors").exists() and (out / "ppo" / "ppo" / "checkpoint").is_dir()


# ------------------------------------------------------------------ 4. one curve per stage
def test_a_rerun_reward_model_stage_draws_one_curve_without_duplicate_steps(tmp_path, model_cache, tiny_model) -> None:
    out = tmp_path / "run"
    Pipeline(tiny(model_cache, RM_STAGES), out).run()
    events: list[str] = []
    Pipeline(tiny(model_cache, RM_STAGES, "reward_model.trainer.epochs=2", "sft.epochs=2"), out,
             on_event=events.append).run()
    assert "[sft] running" in events and "[reward_model] running" in events
    for stage in ("reward_model", "sft"):
        assert len(list((out / "tb" / stage).glob("events.out.tfevents*"))) == 2, "both runs wrote events"
        acc = EventAccumulator(str(out / "tb" / stage))
        acc.Reload()
        tags = acc.Tags()["scalars"]
        assert tags, stage
        for tag in tags:
            steps = [e.step for e in acc.Scalars(tag)]
            assert steps == sorted(set(steps)), f"{stage} {tag}: steps {steps} repeat or go back"
        assert max(e.step for tag in tags for e in acc.Scalars(tag)) > 0


# ------------------------------------------------------------------ 5. a given model
def save_random_model(folder: Path, like: Path) -> None:
    """A random-init model of the smoke model's shape, with its tokenizer, as `save_pretrained` writes them."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(like)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(like).save_pretrained(folder)


def test_a_given_model_is_the_pretrained_policy_without_a_pretrain_stage(tmp_path, model_cache, tiny_model, capsys) -> None:
    save_random_model(tmp_path / "mine", tiny_model.path)
    data = tiny_experiment_dict(model_cache)
    data.update(stages=["sft", "evaluation"], ppo={})
    data["model"]["name_or_path"] = str(tmp_path / "mine")
    (tmp_path / "exp.json").write_text(json.dumps(data))
    out = tmp_path / "run"
    assert main(["run", str(tmp_path / "exp.json"), "--out", str(out), "--no-progress"]) == 0, capsys.readouterr().err
    state = json.loads((out / "state.json").read_text())
    assert state["pretrain"]["result"]["path"] == str(tmp_path / "mine") and state["pretrain"]["result"]["built"] is False
    assert state["sft"]["result"]["in_run_folder"] and set(state["evaluation"]["result"]["rows"]) == {"pretrained", "sft"}


# ------------------------------------------------------------------ 6. relative paths
def test_relative_paths_in_an_experiment_file_are_found_beside_it(tmp_path, model_cache, tiny_model, monkeypatch,
                                                                  capsys) -> None:
    exp, elsewhere = tmp_path / "exp", tmp_path / "elsewhere"
    (exp / "data").mkdir(parents=True)
    elsewhere.mkdir()
    (exp / "data" / "prompts.txt").write_text("the film was\nthe soup was\nmy phone is\n")
    (exp / "data" / "demos.jsonl").write_text(json.dumps({"prompt": "the film was", "completion": " great ."}) + "\n")
    write_records(exp / "data" / "labels.jsonl")
    data = tiny_experiment_dict(model_cache)
    data.update(stages=["pretrain", "sft", "reward_model"], ppo={}, out="run")
    data["task"] = {"prompts": "data/prompts.txt", "demonstrations": "./data/demos.jsonl"}
    data["oracle"] = {"kind": "recorded", "path": "data/labels.jsonl"}
    (exp / "exp.json").write_text(json.dumps(data))
    (elsewhere / "mine.txt").write_text("the weather is\n")
    monkeypatch.chdir(elsewhere)
    assert main(["run", "../exp/exp.json", "--no-progress"]) == 0, capsys.readouterr().err
    written = json.loads((elsewhere / "run" / "config.json").read_text())  # `out` is where the command runs
    assert written["task"]["prompts"] == str(exp / "data" / "prompts.txt")
    assert written["task"]["demonstrations"] == str(exp / "data" / "demos.jsonl")
    assert written["oracle"]["path"] == str(exp / "data" / "labels.jsonl")
    assert json.loads((elsewhere / "run" / "summary.json").read_text())["rows"]["reward_model"]["labels"] == 12
    # --set paths are the shell user's: relative to the current folder
    assert main(["run", "../exp/exp.json", "--no-progress", "--out", "run2", "--set", "task.prompts=mine.txt",
                 "--set", "stages=['pretrain','sft']"]) == 0, capsys.readouterr().err
    assert json.loads((elsewhere / "run2" / "config.json").read_text())["task"]["prompts"] == str(elsewhere / "mine.txt")


def test_a_model_name_stays_a_hub_name_and_a_model_folder_is_found_beside_the_file(tmp_path) -> None:
    (tmp_path / "models" / "mine").mkdir(parents=True)
    resolved = {name: resolve_input_paths({"model": {"name_or_path": name}}, tmp_path)["model"]["name_or_path"]
                for name in ("gpt2", "owner/name", "./models/mine", "models/mine", "../x", "")}
    assert resolved == {"gpt2": "gpt2", "owner/name": "owner/name", "./models/mine": str(tmp_path / "models" / "mine"),
                        "models/mine": str(tmp_path / "models" / "mine"), "../x": str(tmp_path.parent / "x"), "": ""}
    assert resolve_input_paths({"out": "runs/x", "model": {"cache_dir": "c"}}, tmp_path) == {
        "out": "runs/x", "model": {"cache_dir": "c"}}, "what the command writes stays relative to where it runs"


# ------------------------------------------------------------------ 7. reward functions by import path
REWARDS_MODULE = '''
import math

INSTANCES = []


class Length:
    """A class: instantiated once per pipeline, however many runs name it."""

    def __init__(self):
        INSTANCES.append(self)
        self.calls = 0

    def __call__(self, prompts, completions):
        self.calls += 1
        return [float(len(c)) for c in completions]


def one_number(prompts, completions):
    return 1.0


def nans(prompts, completions):
    return [math.nan for _ in completions]
'''


@pytest.fixture()
def user_rewards(tmp_path, monkeypatch):
    """A module of reward functions in the folder the command runs in."""
    name = f"user_rewards_{tmp_path.name}"
    (tmp_path / f"{name}.py").write_text(REWARDS_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_a_reward_function_by_import_path_is_loaded_once_and_pays_every_run(tmp_path, model_cache, tiny_model,
                                                                            user_rewards) -> None:
    import importlib

    config = tiny(model_cache, "stages=['pretrain','sft','ppo']", "ppo.ppo.iterations=1", "ppo.ppo_ptx.iterations=1",
                  f"ppo.ppo.reward='{user_rewards}:Length'", f"ppo.ppo_ptx.reward='{user_rewards}:Length'",
                  runs=("ppo", "ppo_ptx"))
    summary = Pipeline(config, tmp_path / "run").run()
    module = importlib.import_module(user_rewards)
    assert len(module.INSTANCES) == 1, "resolved once per pipeline, not per run"
    assert module.INSTANCES[0].calls >= 3, "tried on a first batch, then paid both runs"
    assert {"ppo", "ppo_ptx"} <= set(summary["rows"]) and summary["rows"]["ppo"]["labels"] == 0


@pytest.mark.parametrize("fn, returned", [("one_number", r"returned 1\.0 \(float\)"), ("nans", r"returned \[nan, nan\]")])
def test_a_reward_function_that_does_not_return_one_float_per_completion_is_refused_before_anything_runs(
        tmp_path, model_cache, user_rewards, capsys, fn, returned) -> None:
    data = tiny_experiment_dict(model_cache)
    data["ppo"] = {"ppo": {**data["ppo"]["ppo"], "reward": f"{user_rewards}:{fn}"}}
    (tmp_path / "exp.json").write_text(json.dumps(data))
    assert main(["run", "exp.json", "--out", "run", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: ppo.ppo.reward = '{user_rewards}:{fn}'") and "Traceback" not in err, err
    assert re.search(returned, err) and "one finite float per completion" in err, err
    assert not (tmp_path / "run").exists(), "refused before pretraining"


def test_an_unknown_reward_name_is_refused_with_the_choices(model_cache) -> None:
    from llm_gym.infra.configio import ConfigError

    with pytest.raises(ConfigError, match=r'ppo\.ppo: PPOStage\.reward must be "reward_model", "gold", "env" or the '
                                          r'import path "module:name"'):
        tiny(model_cache, "ppo.ppo.reward=rm", runs=("ppo",))


# ------------------------------------------------------------------ a loop whose oracle answers nothing
def loop_experiment(tmp_path: Path, model_cache: Path, on_no_answers: str) -> Path:
    """A preference loop whose recorded labels match none of the queries it poses (they compare other texts)."""
    write_records(tmp_path / "labels.jsonl")
    data = tiny_experiment_dict(model_cache)
    data.update(stages=["pretrain", "sft", "preference_loop"], ppo={}, preference_loop={"online": {
        "iterations": 2, "num_envs": 8, "schedule": {"total_labels": 8, "initial_labels": 4, "labels_per_round": 4,
                                                     "steps_per_round": 8, "oversample": 1,
                                                     "on_no_answers": on_no_answers},
        "config": {"minibatch_size": 4, "sampling": {"max_new_tokens": 8}}}})
    data["oracle"] = {"kind": "recorded", "path": str(tmp_path / "labels.jsonl")}
    (tmp_path / "exp.json").write_text(json.dumps(data))
    return tmp_path / "exp.json"


@pytest.mark.parametrize("on_no_answers", ["raise", "wait"])
def test_a_preference_loop_without_a_single_preference_is_an_error_and_not_done(tmp_path, model_cache, tiny_model,
                                                                                capsys, on_no_answers) -> None:
    """"raise" stops at the first silent round; "wait" trains on, but a loop that ended without one preference is not
    recorded as done (its policy trained against an untrained reward model), so a rerun after labelling trains it."""
    exp, out = loop_experiment(tmp_path, model_cache, on_no_answers), tmp_path / "run"
    assert main(["run", str(exp), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    expected = "answered none of the 4 queries" if on_no_answers == "raise" else "no preference in the whole loop"
    assert expected in err, err
    if on_no_answers == "raise":  # the way out, as this experiment's key
        assert 'set preference_loop.online.schedule.on_no_answers = "wait"' in err, err
    state = json.loads((out / "state.json").read_text())
    assert "sft" in state and "preference_loop.online" not in state
    with PreferenceStore(out / "preference_loop" / "online" / "labels.sqlite") as store:
        assert store.counts()["queries"] >= 4 and store.counts()["answers"] == 0, "the queries posed are kept"


# ------------------------------------------------------------------ judges by name and code
JUDGES = """
def judge(prompts, completions):
    return [float(len(c)) for c in completions]


def other_judge(prompts, completions):
    return [-float(len(c)) for c in completions]


def pay(prompts, completions):
    return [float(len(c.split())) for c in completions]
"""


def test_another_judge_or_an_edited_reward_reruns_exactly_what_it_scored(tmp_path, model_cache, tiny_model,
                                                                        monkeypatch) -> None:
    import sys

    name = f"judges_{tmp_path.name}"
    module = tmp_path / f"{name}.py"
    module.write_text(JUDGES)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "prompts.txt").write_text("the film was\nthe soup was\nmy phone is\nthe hotel was\n")
    (tmp_path / "demos.jsonl").write_text(json.dumps({"prompt": "the film was", "completion": " great ."}) + "\n")
    data = tiny_experiment_dict(model_cache)
    data.update(stages=["pretrain", "sft", "reward_model", "ppo", "evaluation"])
    data["ppo"] = {"ppo": {**data["ppo"]["ppo"], "iterations": 1, "checkpoint_every": 0, "reward": f"{name}:pay"}}
    data["task"] = {"prompts": str(tmp_path / "prompts.txt"), "demonstrations": str(tmp_path / "demos.jsonl"),
                    "gold": f"{name}:judge"}
    data["evaluation"]["prompts"] = 4

    def run(*overrides: str) -> list[str]:
        sys.modules.pop(name, None)  # as a new `llm-gym run` process would, read the module as it is now
        events: list[str] = []
        Pipeline(from_dict(ExperimentConfig, apply_overrides(data, overrides)), tmp_path / "run",
                 on_event=events.append).run()
        return [e.split("]")[0][1:] for e in events if e.endswith("] running")]

    assert run() == ["pretrain", "sft", "reward_model", "ppo.ppo", "evaluation"]
    # another gold judge: the synthetic labels, the RM-vs-gold figure and the evaluation change; SFT and the run paid
    # by its own function do not
    assert run(f"task.gold='{name}:other_judge'") == ["reward_model", "evaluation"]
    # the run's reward function edited in place: that run (and the evaluation of it) again, nothing else
    module.write_text(JUDGES.replace("len(c.split())", "-len(c.split())"))
    assert run(f"task.gold='{name}:other_judge'") == ["ppo.ppo", "evaluation"]
