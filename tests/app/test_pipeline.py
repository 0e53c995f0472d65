"""The experiment pipeline: config files, a full tiny run, resuming, summary.json, and the commands around it."""

from __future__ import annotations

import json
import shutil
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from doubles import tiny_experiment_dict
from llm_gym import GoldScorer, PreferenceStore, generate_review_task
from llm_gym.agents.checkpoint import CheckpointError
from llm_gym.agents.ppo import PPO
from llm_gym.app.cli import main
from llm_gym.infra.configio import ConfigError, apply_overrides, from_dict, load_config, to_dict
from llm_gym.app.config import ExperimentConfig, OracleSpec, PPOStage
from llm_gym.app.pipeline import Pipeline
from llm_gym.app.stages import oracle_fingerprint
from llm_gym.feedback.oracles import HUMAN_AGREEMENT, SyntheticOracle
from llm_gym.app.summary import format_summary

REPO = Path(__file__).resolve().parents[2]


def tiny(model_cache: Path, *overrides: str, runs: tuple[str, ...] = ("ppo", "ppo_ptx"), loops: dict | None = None) -> ExperimentConfig:
    data = tiny_experiment_dict(model_cache)
    data["ppo"] = {name: data["ppo"][name] for name in runs}
    data["preference_loop"] = loops or {}
    return from_dict(ExperimentConfig, apply_overrides(data, overrides))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, model_cache, tiny_model) -> tuple[Path, dict, list[str]]:
    """One full tiny pipeline run, shared by the tests that only read its outputs."""
    out = tmp_path_factory.mktemp("run")
    events: list[str] = []
    summary = Pipeline(tiny(model_cache), out, on_event=events.append).run()
    return out, summary, events


def test_the_study_config_file_is_the_default_experiment() -> None:
    """`make demo` runs ExperimentConfig(); the TOML in experiments/ must describe the same experiment."""
    assert load_config(ExperimentConfig, REPO / "experiments" / "instructgpt" / "config.toml") == ExperimentConfig()


def test_full_run_writes_summary_logs_labels_and_models(finished_run, model_cache) -> None:
    out, summary, events = finished_run
    assert [e for e in events if e.endswith("running")] == [
        "[pretrain] running", "[sft] running", "[reward_model] running", "[ppo.ppo] running",
        "[ppo.ppo_ptx] running", "[evaluation] running"]
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["rows"].keys() == {"pretrained", "sft", "reward_model", "ppo", "ppo_ptx"}
    for name in ("pretrained", "sft", "ppo", "ppo_ptx"):
        row = on_disk["rows"][name]
        for key in ("gold", "rm_score", "kl", "win_rate", "perplexity"):
            assert math.isfinite(row[key]), (name, key)
    assert on_disk["rows"]["sft"]["kl"] == pytest.approx(0.0, abs=1e-6)  # SFT against itself
    assert on_disk["rows"]["sft"]["win_rate"] == pytest.approx(0.5)  # same seed, same samples: all ties
    labels = on_disk["rows"]["reward_model"]["labels"]
    with PreferenceStore(out / "labels.sqlite") as store:
        assert labels == len(store.comparisons()) > 0
    assert on_disk["rows"]["ppo"]["labels"] == labels and on_disk["rows"]["sft"]["labels"] == 0
    assert all(on_disk["rows"][n]["wall_seconds"] >= 0 for n in on_disk["rows"])
    # the resolved config round-trips, and every stage has TensorBoard events
    assert from_dict(ExperimentConfig, json.loads((out / "config.json").read_text())) == tiny(model_cache)
    for stage in ("sft", "reward_model", "ppo_ppo", "ppo_ppo_ptx"):
        assert list((out / "tb" / stage).glob("events.out.tfevents*")), stage
    assert (out / "ppo" / "ppo" / "policy" / "config.json").exists()
    table = format_summary(on_disk)
    assert "ppo_ptx" in table and "win vs SFT" in table
    # the gold scale's top: the task's demonstrations scored by the gold judge, as the table shows it
    task = generate_review_task(tiny(model_cache).pretrain.task)
    demos = task.demonstrations[:200]
    expected = float(np.mean(GoldScorer()([d.prompt for d in demos], [d.completion for d in demos])))
    assert on_disk["demonstrations_gold"] == pytest.approx(expected)
    assert f"the task's demonstrations {expected:+.3f}" in table


def test_rerun_reuses_every_stage(finished_run, model_cache) -> None:
    out, summary, _ = finished_run
    state_before = (out / "state.json").read_text()
    events: list[str] = []
    again = Pipeline(tiny(model_cache), out, on_event=events.append).run()
    assert not [e for e in events if e.endswith("running")], events
    assert (out / "state.json").read_text() == state_before
    assert again["rows"] == summary["rows"]


def test_changed_reward_model_reruns_downstream_but_keeps_the_labels(tmp_path, model_cache, tiny_model) -> None:
    out = tmp_path / "run"
    Pipeline(tiny(model_cache, "stages=['pretrain','sft','reward_model']"), out).run()
    with PreferenceStore(out / "labels.sqlite") as store:
        answers = len(store.answers())
    events: list[str] = []
    Pipeline(tiny(model_cache, "stages=['pretrain','sft','reward_model']", "reward_model.trainer.epochs=2"), out,
             on_event=events.append).run()
    assert "[sft] done earlier (same inputs): reusing it" in events and "[reward_model] running" in events
    with PreferenceStore(out / "labels.sqlite") as store:
        assert len(store.answers()) == answers, "no query is asked twice"


def interrupt_ppo_at_iteration_3(monkeypatch, config: ExperimentConfig, out: Path) -> None:
    """Run `config` into `out` with the user pressing Ctrl-C during PPO's third iteration; PPO runs normally afterwards."""
    original = PPO.train_iteration

    def crash_at_third(self):
        if self.iteration == 2:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(PPO, "train_iteration", crash_at_third)
    with pytest.raises(KeyboardInterrupt):
        Pipeline(config, out).run()
    monkeypatch.setattr(PPO, "train_iteration", original)

def test_interrupted_ppo_resumes_from_its_checkpoint_without_duplicate_steps(tmp_path, model_cache, tiny_model, monkeypatch) -> None:
    out = tmp_path / "run"
    stages = "stages=['pretrain','sft','reward_model','ppo']"
    config = tiny(model_cache, stages, "ppo.ppo.iterations=4", "ppo.ppo.checkpoint_every=2", runs=("ppo",))
    interrupt_ppo_at_iteration_3(monkeypatch, config, out)
    assert "ppo.ppo" not in json.loads((out / "state.json").read_text())
    checkpoint_state = json.loads((out / "ppo" / "ppo" / "checkpoint" / "trainer_state.json").read_text())
    assert checkpoint_state["iteration"] == 2
    events: list[str] = []
    Pipeline(config, out, on_event=events.append).run()
    assert "[ppo.ppo] resuming from its checkpoint at iteration 2" in events
    assert json.loads((out / "state.json").read_text())["ppo.ppo"]["result"]["iterations"] == 4
    acc = EventAccumulator(str(out / "tb" / "ppo_ppo"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("objective/kl")]
    assert steps == sorted(set(steps)) and len(steps) == 4, steps

    # asking for more iterations continues the same run instead of starting again
    longer = tiny(model_cache, stages, "ppo.ppo.iterations=5", "ppo.ppo.checkpoint_every=2", runs=("ppo",))
    events.clear()
    Pipeline(longer, out, on_event=events.append).run()
    assert "[ppo.ppo] resuming from its checkpoint at iteration 4" in events
    assert json.loads((out / "state.json").read_text())["ppo.ppo"]["result"]["iterations"] == 5


def test_config_errors_name_the_key_path(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[reward_model]\nlables = 3\n")
    with pytest.raises(ConfigError, match=r"reward_model\.lables: unknown key.*did you mean 'labels'|reward_model\.lables: unknown key"):
        load_config(ExperimentConfig, bad)
    bad.write_text("[ppo.ppo.config]\nkl_coef = 'high'\n")
    with pytest.raises(ConfigError, match=r"ppo\.ppo\.config\.kl_coef: expected a number"):
        load_config(ExperimentConfig, bad)
    with pytest.raises(ConfigError, match=r"PPOStage.num_envs \(10\) must be a multiple"):
        load_config(ExperimentConfig, REPO / "experiments" / "instructgpt" / "config.toml", ["ppo.ppo.num_envs=10"])
    with pytest.raises(ValueError, match="unknown stage"):
        ExperimentConfig(stages=("pretrain", "rlhf"))
    with pytest.raises(ValueError, match="needs path"):
        load_config(ExperimentConfig, REPO / "experiments" / "instructgpt" / "config.toml", ["oracle.kind=recorded"])


def test_a_stage_without_its_input_says_what_to_run(tmp_path, model_cache, tiny_model) -> None:
    with pytest.raises(ConfigError, match=r"'reward_model' reads the result of 'sft', which has not run in .*run it too: stages = \['pretrain', 'sft', 'reward_model'\]"):
        Pipeline(tiny(model_cache, "stages=['pretrain','reward_model']"), tmp_path / "run").run()
    assert not (tmp_path / "run").exists()


def test_recorded_oracle_feeds_the_reward_model(tmp_path, model_cache, tiny_model) -> None:
    records = tmp_path / "labels.jsonl"
    lines = [{"prompt": "the film was", "chosen": f" great and fun {i}", "rejected": f" dull and bad {i}"} for i in range(12)]
    records.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    out = tmp_path / "run"
    summary = Pipeline(tiny(model_cache, "stages=['pretrain','sft','reward_model']", "oracle.kind=recorded",
                            f"oracle.path={json.dumps(str(records))}"), out).run()
    assert summary["rows"]["reward_model"]["labels"] == 12


def test_cli_run_eval_and_errors(finished_run, tmp_path, capsys) -> None:
    out, summary, _ = finished_run
    assert main(["eval", str(out), "--set", "evaluation.prompts=4"]) == 0
    text = capsys.readouterr().out
    assert "== tiny (seed 0) ==" in text and "[evaluation] running" in text
    # other settings than the run's: a file of their own, the run's state untouched (see test_rerun_traps.py)
    assert json.loads((out / "state.json").read_text())["evaluation"]["result"]["prompts"] == 8
    [written] = (out / "evaluations").glob("*.json")
    assert json.loads(written.read_text())["config"]["evaluation"]["prompts"] == 4
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("seed = 'zero'\n")
    assert main(["run", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "seed: expected an integer" in capsys.readouterr().err
    assert not (tmp_path / "x").exists(), "a bad config starts nothing"


def test_cli_run_with_overrides(tmp_path, model_cache, tiny_model, capsys) -> None:
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_experiment_dict(model_cache)))
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--no-progress", "--set", "stages=['pretrain','sft']",
                 "--set", "sft.epochs=2"]) == 0
    text = capsys.readouterr().out
    assert "[sft] finished" in text and f"summary: {out / 'summary.json'}" in text
    assert json.loads((out / "config.json").read_text())["sft"]["epochs"] == 2


def test_cli_label_answers_pending_queries(tmp_path) -> None:
    from llm_gym import Query

    path = tmp_path / "labels.sqlite"
    with PreferenceStore(path) as store:
        store.add_queries([Query("p", (" a", " b")), Query("q", (" c", " d")), Query("r", (" e", " f"))])
    done = subprocess.run([sys.executable, "-m", "llm_gym", "label", str(path), "--name", "alice"],
                          input="2\nt\nq\n", capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "saved 2 answers; 1 queries still pending" in done.stdout
    with PreferenceStore(path) as store:
        answers = store.answers()
        assert [a.ranks for a in answers] == [(1, 0), (0, 0)] and {a.labeller for a in answers} == {"alice"}
    assert main(["label", str(tmp_path / "missing.sqlite")]) == 2


def test_ppo_stage_validation() -> None:
    with pytest.raises(ValueError, match="reward must be"):
        PPOStage(reward="human")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="iterations must be a positive int"):
        PPOStage(iterations=0)


def loop_config(model_cache: Path, *overrides: str) -> ExperimentConfig:
    loop = {"iterations": 4, "num_envs": 8, "trainer": {"epochs": 1},
            "schedule": {"total_labels": 16, "initial_labels": 8, "labels_per_round": 4, "steps_per_round": 16,
                         "oversample": 1},
            "config": {"minibatch_size": 4, "sampling": {"max_new_tokens": 8}}}
    return tiny(model_cache, "stages=['pretrain','sft','preference_loop','evaluation']", *overrides, runs=(),
                loops={"online": loop})


def test_preference_loop_stage_spends_its_budget_and_keeps_labels_when_interrupted(tmp_path, model_cache, tiny_model,
                                                                                     monkeypatch) -> None:
    from llm_gym.agents.preference_loop import PreferenceLoop

    out = tmp_path / "run"
    config = loop_config(model_cache)
    assert config.preference_loop["online"].schedule.total_labels == 16
    original = PreferenceLoop._retrain
    calls = {"n": 0}

    def crash_on_second_round(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # stopped after the first labels were stored
        return original(self)

    temperatures: list[float | None] = []  # the labeller's at each answer (the default one, calibrated to 0.73)
    answer = SyntheticOracle.answer

    def spy(self, queries):
        for a in answer(self, queries):
            if self.agreement is not None:  # the labeller, not the evaluation's noiseless judge
                temperatures.append(self.temperature)
            yield a

    monkeypatch.setattr(SyntheticOracle, "answer", spy)
    monkeypatch.setattr(PreferenceLoop, "_retrain", crash_on_second_round)
    with pytest.raises(KeyboardInterrupt):
        Pipeline(config, out).run()
    with PreferenceStore(out / "preference_loop" / "online" / "labels.sqlite") as store:
        kept = store.counts()["answers"]
    assert kept >= 8, "the labels given before the crash are in the store"
    first = set(temperatures)
    assert len(first) == 1 and None not in first, "calibrated once, on the first round's queries"
    monkeypatch.setattr(PreferenceLoop, "_retrain", original)
    summary = Pipeline(config, out).run()
    row = summary["rows"]["online"]
    with PreferenceStore(out / "preference_loop" / "online" / "labels.sqlite") as store:
        counts = store.counts()
    assert counts["queries"] == 16, "the budget is spent once, across the interruption"
    assert row["labels"] == counts["answers"] >= kept
    assert set(temperatures) == first, "the resumed loop labels the rest at the first round's temperature"
    result = json.loads((out / "state.json").read_text())["preference_loop.online"]["result"]
    assert result["oracle_temperature"] == first.pop() and 0 <= result["label_agreement"] <= 1
    assert result["calibration"]["target"] == 0.73 and result["calibration"]["queries"] == 8
    assert math.isfinite(row["gold"]) and math.isfinite(row["kl"])
    assert list((out / "tb" / "loop_online").glob("events.out.tfevents*"))


def test_a_missing_recorded_file_fails_before_any_stage(tmp_path, model_cache) -> None:
    from llm_gym import DatasetError

    config = tiny(model_cache, "oracle.kind=recorded", f"oracle.path={json.dumps(str(tmp_path / 'none.jsonl'))}")
    with pytest.raises(DatasetError, match="oracle.path: the comparison file .* does not exist"):
        Pipeline(config, tmp_path / "run").run()
    assert not (tmp_path / "run").exists()


def test_a_stage_gives_the_same_result_alone_and_in_a_full_run(tmp_path, model_cache, tiny_model, finished_run) -> None:
    """Stages seed torch themselves (dropout, heads), so the same config gives the same numbers."""
    out, _, _ = finished_run
    Pipeline(tiny(model_cache, "stages=['pretrain','sft']"), tmp_path / "run").run()
    first = json.loads((out / "state.json").read_text())["sft"]["result"]
    again = json.loads((tmp_path / "run" / "state.json").read_text())["sft"]["result"]
    assert again["sft_loss"] == first["sft_loss"] and again["sft_heldout_loss"] == first["sft_heldout_loss"]


def test_a_nested_table_changes_only_the_values_it_names(tmp_path) -> None:
    """[ppo.ppo.config] kl_coef = 0.1 keeps the run's other defaults (minibatch 16, 24 new tokens), not PPOConfig's."""
    f = tmp_path / "beta.toml"
    f.write_text("[ppo.ppo.config]\nkl_coef = 0.1\n[ppo.ppo.config.sampling]\ntemperature = 0.7\n")
    config = load_config(ExperimentConfig, f)
    run = config.ppo["ppo"]
    assert run.config.kl_coef == 0.1 and run.config.minibatch_size == 16 and run.config.sampling.max_new_tokens == 24
    assert run.config.sampling.temperature == 0.7
    assert list(config.ppo) == ["ppo"], "a table of runs replaces the default runs"
    f.write_text("[sft]\nepochs = 3\n")
    assert load_config(ExperimentConfig, f).sft.learning_rate == ExperimentConfig().sft.learning_rate


def test_progress_bars_follow_the_agents(tmp_path, model_cache, tiny_model, capsys) -> None:
    Pipeline(tiny(model_cache, "stages=['pretrain','sft','reward_model','ppo']", runs=("ppo",)), tmp_path / "run",
             progress=True).run()
    err = capsys.readouterr().err
    assert "ppo.ppo" in err and "24/24" in err  # 3 iterations x 8 prompts


def test_prompts_and_demonstrations_from_files(tmp_path, model_cache, tiny_model) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the soup was\nmy new phone is\n")
    evals = tmp_path / "eval.jsonl"
    evals.write_text(json.dumps({"prompt": "the hotel was"}) + "\n")
    demos = tmp_path / "demos.jsonl"
    demos.write_text("\n".join(json.dumps({"prompt": "the soup was", "completion": f" great and warm {i} ."})
                               for i in range(6)) + "\n")
    paths = [f"task.prompts={json.dumps(str(prompts))}", f"task.eval_prompts={json.dumps(str(evals))}",
             f"task.demonstrations={json.dumps(str(demos))}"]
    out = tmp_path / "run"
    pipeline = Pipeline(tiny(model_cache, *paths, "ppo.ppo.iterations=1", runs=("ppo",)), out)
    summary = pipeline.run()
    assert pipeline.prompts == ["the soup was", "my new phone is"] and pipeline.eval_prompts == ["the hotel was"]
    assert json.loads((out / "state.json").read_text())["evaluation"]["result"]["prompts"] == 1
    with PreferenceStore(out / "labels.sqlite") as store:
        assert {q.prompt for q in store.queries()} <= {"the soup was", "my new phone is"}
    assert math.isfinite(summary["rows"]["ppo"]["gold"])
    # editing a file reruns what reads it
    demos.write_text(json.dumps({"prompt": "the soup was", "completion": " fine ."}) + "\n")
    events: list[str] = []
    Pipeline(tiny(model_cache, *paths, "ppo.ppo.iterations=1", runs=("ppo",)), out, on_event=events.append).run()
    assert "[sft] running" in events
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    with pytest.raises(Exception, match=r"bad.jsonl line 1: expected an object with a 'completion' field"):
        Pipeline(tiny(model_cache, f"task.demonstrations={json.dumps(str(bad))}"), tmp_path / "run2").run()


def test_labels_from_other_inputs_are_moved_aside_not_reused(tmp_path, model_cache, tiny_model) -> None:
    """Another oracle noise (or another loop) must not train on the old labels; the old labels are kept."""
    out = tmp_path / "run"
    stages = "stages=['pretrain','sft','reward_model']"
    Pipeline(tiny(model_cache, stages), out).run()
    with PreferenceStore(out / "labels.sqlite") as store:
        first = len(store.answers())
    Pipeline(tiny(model_cache, stages, "oracle.temperature=0.5"), out).run()
    aside = [p for p in out.glob("labels.*.sqlite")]
    assert len(aside) == 1, "the first labels are kept under their fingerprint"
    with PreferenceStore(aside[0]) as old, PreferenceStore(out / "labels.sqlite") as new:
        assert len(old.answers()) == first and len(new.answers()) == first
        assert {a.labeller for a in new.answers()} == {"synthetic"}
    # a loop whose schedule changed starts a fresh store: its budget is spent on its own policy's samples
    config = loop_config(model_cache)
    Pipeline(config, out).run()
    changed = loop_config(model_cache, "preference_loop.online.schedule.initial_labels=12")
    Pipeline(changed, out).run()
    folder = out / "preference_loop" / "online"
    with PreferenceStore(folder / "labels.sqlite") as store:
        assert store.counts()["queries"] == 16
    assert len(list(folder.glob("labels.*.sqlite"))) == 1


def test_a_damaged_sft_folder_is_refused_naming_the_file(tmp_path, model_cache, tiny_model) -> None:
    out = tmp_path / "run"
    Pipeline(tiny(model_cache, "stages=['pretrain','sft']"), out).run()
    weights = out / "sft" / "model.safetensors"
    assert (out / "sft" / "manifest.json").is_file(), "the SFT folder is sealed by a manifest"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors is not the file that was saved.*delete .*sft and "
                                              r"rerun: the sft stage runs again, and labels .* are reused"):
        Pipeline(tiny(model_cache, "stages=['pretrain','sft','reward_model']"), out).run()
    assert weights.read_bytes() == bytes(data), "the damaged folder is left for the user to restore"
    # doing what the message says: the SFT stage runs again, into the same folder
    shutil.rmtree(out / "sft")
    events: list[str] = []
    Pipeline(tiny(model_cache, "stages=['pretrain','sft']"), out, on_event=events.append).run()
    assert any(e.startswith("[sft] its result") and e.endswith("is missing: running it again") for e in events)
    assert (out / "sft" / "manifest.json").is_file()


def test_a_ppo_checkpoint_set_aside_by_a_kill_is_resumed_not_restarted(tmp_path, model_cache, tiny_model, monkeypatch) -> None:
    """The issue's case: killed between the two renames of a checkpoint save, `checkpoint/` is missing and the last
    good checkpoint is only in `.checkpoint-old-*/old`; a killed write also left a temporary. The rerun resumes."""
    out = tmp_path / "run"
    config = tiny(model_cache, "stages=['pretrain','sft','reward_model','ppo']", "ppo.ppo.iterations=3",
                  "ppo.ppo.checkpoint_every=2", runs=("ppo",))
    interrupt_ppo_at_iteration_3(monkeypatch, config, out)
    folder = out / "ppo" / "ppo"
    (folder / ".checkpoint-old-k2j4h6g8").mkdir()
    (folder / "checkpoint").rename(folder / ".checkpoint-old-k2j4h6g8" / "old")
    (folder / ".checkpoint.tmp-a1b2c3d4" / "policy").mkdir(parents=True)
    events: list[str] = []
    Pipeline(config, out, on_event=events.append).run()
    assert "[ppo.ppo] resuming from its checkpoint at iteration 2" in events
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint", "fingerprint.txt", "policy"]
    assert json.loads((out / "state.json").read_text())["ppo.ppo"]["result"]["iterations"] == 3


def test_a_checkpoint_set_aside_under_other_settings_never_comes_back(tmp_path, model_cache, tiny_model, monkeypatch) -> None:
    """Run A is killed between its checkpoint's renames (set aside); the user changes a setting. The fresh start of the
    new settings removes A's set-aside checkpoint, so no later rerun resumes A's weights under B's fingerprint."""
    out = tmp_path / "run"
    a = tiny(model_cache, "stages=['pretrain','sft','reward_model','ppo']", runs=("ppo",))
    Pipeline(a, out).run()
    folder = out / "ppo" / "ppo"
    (folder / ".checkpoint-old-k2j4h6g8").mkdir()
    (folder / "checkpoint").rename(folder / ".checkpoint-old-k2j4h6g8" / "old")
    b = tiny(model_cache, "stages=['pretrain','sft','reward_model','ppo']", "ppo.ppo.config.kl_coef=0.05", runs=("ppo",))
    original = PPO.train_iteration

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(PPO, "train_iteration", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Pipeline(b, out).run()
    assert not list(folder.glob(".checkpoint-old-*")) and not (folder / "checkpoint").exists()
    monkeypatch.setattr(PPO, "train_iteration", original)
    events: list[str] = []
    Pipeline(b, out, on_event=events.append).run()
    assert not any("resuming" in e for e in events)
    state = json.loads((folder / "checkpoint" / "trainer_state.json").read_text())
    assert state["config"]["kl_coef"] == 0.05


def test_a_copied_run_folder_reads_its_own_results_and_a_damaged_policy_is_refused(finished_run, tmp_path) -> None:
    out, _, _ = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    weights = copy / "ppo" / "ppo" / "policy" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01
    weights.write_bytes(bytes(data))
    config = from_dict(ExperimentConfig, json.loads((copy / "config.json").read_text()))
    with pytest.raises(CheckpointError, match=r"copy/ppo/ppo/policy is damaged: model\.safetensors"):
        Pipeline(config, copy).evaluate(force=True)  # the copy's own (damaged) policy, not the original's
    assert Pipeline(config, out).evaluate(force=True)["rows"]["ppo"]["gold"] is not None  # the original is intact


def test_a_labeller_calibrated_by_agreement_reports_its_temperature_and_resumes_at_it(tmp_path, model_cache, tiny_model,
                                                                                    monkeypatch) -> None:
    """The default labeller, calibrated to 0.73 (human labellers' agreement, issue 19): the temperature is chosen on all the
    reward-model stage's queries and recorded with the labels' agreement with gold. A run interrupted after 10
    answers resumes at the temperature of all 24 queries, not of the 14 it still asks."""
    out = tmp_path / "run"
    config = tiny(model_cache, "stages=['pretrain','sft','reward_model']")  # the default labeller: agreement 0.73
    original = SyntheticOracle.answer

    def ten_answers_then_ctrl_c(self, queries):
        for n, answer in enumerate(original(self, queries)):
            if n == 10:
                raise KeyboardInterrupt
            yield answer

    monkeypatch.setattr(SyntheticOracle, "answer", ten_answers_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        Pipeline(config, out).run()
    asked: list[tuple[int, float | None]] = []

    def spy(self, queries):
        asked.append((len(queries), self.temperature))
        return original(self, queries)

    monkeypatch.setattr(SyntheticOracle, "answer", spy)
    pipeline = Pipeline(config, out)
    summary = pipeline.run()
    result = json.loads((out / "state.json").read_text())["reward_model"]["result"]
    calibration = result["calibration"]
    assert calibration["target"] == 0.73 and calibration["expected_agreement"] == pytest.approx(0.73, abs=1e-4)
    assert calibration["queries"] == 24 and calibration["pairs"] + calibration["ties"] == 24
    assert result["oracle_temperature"] == calibration["temperature"] > 0
    assert asked == [(14, calibration["temperature"])], "the resumed stage asks the rest, already calibrated"
    with PreferenceStore(out / "labels.sqlite") as store:
        queries = store.queries()
        assert len(store.answers()) == 24
    fresh = SyntheticOracle(pipeline.task.gold, rng=np.random.default_rng(0), agreement=0.73, flip_prob=0.1)
    assert fresh.calibrate(queries).temperature == pytest.approx(calibration["temperature"], rel=1e-9)
    assert 0 <= result["label_agreement"] <= 1 and result["label_pairs"] == calibration["pairs"]
    row = summary["rows"]["reward_model"]
    assert (row["oracle_temperature"], row["label_agreement"]) == (result["oracle_temperature"], result["label_agreement"])


def test_oracle_spec_is_calibrated_by_default_and_fingerprinted_as_older_runs_were() -> None:
    # the default labeller is calibrated to human agreement; setting a temperature chooses the raw form
    assert OracleSpec().target_agreement == HUMAN_AGREEMENT == 0.73
    assert OracleSpec(temperature=0.5).target_agreement is None and OracleSpec(agreement=0.8).target_agreement == 0.8
    assert from_dict(ExperimentConfig, apply_overrides(to_dict(ExperimentConfig()), ["oracle.temperature=0.5"])).oracle \
        == OracleSpec(temperature=0.5)
    # fingerprints keep the shapes older run folders recorded: the calibrated form with the then-unused
    # temperature 1.0 beside the agreement, the raw form without an agreement key (a run made at the old default,
    # temperature 1.0, matches the raw form at 1.0, not the new calibrated default), other kinds unchanged
    calibrated = oracle_fingerprint(OracleSpec())
    assert calibrated == oracle_fingerprint(OracleSpec(agreement=0.73))
    assert (calibrated["temperature"], calibrated["agreement"]) == (1.0, 0.73)
    raw = oracle_fingerprint(OracleSpec(temperature=1.0))
    assert "agreement" not in raw and raw["temperature"] == 1.0 and raw != calibrated
    assert oracle_fingerprint(OracleSpec(temperature=0.5))["temperature"] == 0.5
    terminal = oracle_fingerprint(OracleSpec(kind="terminal"))
    assert "agreement" not in terminal and terminal["temperature"] == 1.0, "a person's labels keep their stage"
    # other kinds use neither setting, but keep them as older folders recorded them (as written)
    assert oracle_fingerprint(OracleSpec(kind="terminal", temperature=0.5))["temperature"] == 0.5
    assert oracle_fingerprint(OracleSpec(kind="terminal", agreement=0.73))["agreement"] == 0.73
    # a config.json written before the calibrated default holds both fields: temperature 1.0 beside an agreement
    old = {**to_dict(ExperimentConfig()), "oracle": {**to_dict(OracleSpec()), "temperature": 1.0, "agreement": 0.73}}
    loaded = from_dict(ExperimentConfig, old).oracle
    assert loaded.temperature is None and loaded.target_agreement == 0.73
    assert oracle_fingerprint(loaded) == oracle_fingerprint(OracleSpec()), "the same labeller as today's default"
    # the default labeller's flip-rate bound is checked for the synthetic kind only, and says which agreement
    with pytest.raises(ValueError, match=r"default labeller is calibrated to agreement 0\.73 .*oracle\.temperature"):
        OracleSpec(flip_prob=0.3)
    assert OracleSpec(kind="terminal", flip_prob=0.3).flip_prob == 0.3 and OracleSpec(temperature=1.0, flip_prob=0.3)


def test_fields_added_to_the_reward_trainer_leave_fingerprints_as_they_were_at_their_defaults() -> None:
    from llm_gym import RewardTrainerConfig
    from llm_gym.app.config import LoopStage, RewardModelStage
    from llm_gym.app.stages import fingerprint_settings

    before = {"epochs", "batch_size", "learning_rate", "weight_decay", "heldout_fraction", "max_grad_norm", "ties",
              "eval_batch_size", "disable_dropout", "mixed_precision", "gradient_accumulation_steps"}  # before issue 19
    # a trainer as older runs had it (a constant rate, no warm-up, smoothing or early stopping): their shape exactly
    old = RewardTrainerConfig(epochs=2, batch_size=16, lr_schedule="constant")
    settings = fingerprint_settings(RewardModelStage(trainer=old))
    assert set(settings["trainer"]) == before and {k: v for k, v in settings.items() if k != "trainer"} == \
        {k: v for k, v in to_dict(RewardModelStage()).items() if k != "trainer"}
    # today's default schedule (linear) is not the value older runs had: it is part of the fingerprint, so an old
    # run with 3 epochs of 8 at a constant rate is not taken for a new one
    assert fingerprint_settings(RewardModelStage())["trainer"]["lr_schedule"] == "linear"
    smoothed = fingerprint_settings(RewardModelStage(trainer=RewardTrainerConfig(label_smoothing=0.05)))
    assert smoothed["trainer"]["label_smoothing"] == 0.05, "a value that is set is an input like any other"
    loop = fingerprint_settings(ExperimentConfig(preference_loop={"a": LoopStage(trainer=old)}).preference_loop)
    assert set(loop["a"]["trainer"]) == before
    # a config.json written before those fields reads back as the run it was (a constant rate), not today's default
    from llm_gym.app.stages import upgrade_written_config

    then = to_dict(ExperimentConfig(reward_model=RewardModelStage(trainer=old), preference_loop={"a": LoopStage(trainer=old)}))
    for trainer in (then["reward_model"]["trainer"], then["preference_loop"]["a"]["trainer"]):
        for name in set(trainer) - before:
            del trainer[name]
    read = from_dict(ExperimentConfig, upgrade_written_config(then))
    assert read.reward_model.trainer == old and read.preference_loop["a"].trainer == old
    assert fingerprint_settings(read.reward_model) == fingerprint_settings(RewardModelStage(trainer=old))
    for kwargs, match in [({"agreement": 0.73, "temperature": 0.5}, "temperature .* or agreement .*, not both"),
                          ({"agreement": 0.5}, r"\(0\.5, 1\]"), ({"agreement": 1.5}, r"\(0\.5, 1\]"),
                          ({"agreement": 0.95}, r"out of reach with flip_prob = 0\.1.*lower flip_prob to at most 0\.05"),
                          ({"agreement": math.nan}, "finite")]:
        with pytest.raises(ValueError, match=match):
            OracleSpec(**kwargs)
    with pytest.raises(ConfigError, match=r"oracle: .*not both"):
        from_dict(ExperimentConfig, apply_overrides(to_dict(ExperimentConfig()), ["oracle.agreement=0.73",
                                                                                  "oracle.temperature=2"]))
