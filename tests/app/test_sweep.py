"""`llm_gym.app.sweep`: grid parsing and validation, and real sweeps of a tiny config in subprocesses."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from llm_gym.infra.configio import ConfigError, load_config
from llm_gym.app.config import ExperimentConfig
from llm_gym.app.sweep import SweepError, metric_columns, parse_grid, plan_sweep, run_sweep
from llm_gym.tasks.tiny_lm import TinyLMConfig

REPO = Path(__file__).resolve().parents[2]

KL = "ppo.ppo.config.kl_coef"

# The pretrain section is TinyLMConfig.smoke(), so every run finds the session's `tiny_model`
# in `model_cache` instead of pretraining again; the rest is cut to seconds.
TINY = """
name = "tiny"
seed = 0
stages = {stages}

[model]
cache_dir = {cache}

[pretrain]
vocab_size = 512
n_layer = 1
n_head = 2
n_embd = 32
train_steps = 80
batch_size = 16
seq_len = 48

[pretrain.task]
n_pretrain = 1500
n_heldout = 200
n_prompts = 100
n_eval_prompts = 40
n_demonstrations = 100

[sft]
epochs = 1

[ppo.ppo]
reward = "gold"
iterations = 1
num_envs = 8
checkpoint_every = 0
[ppo.ppo.config]
minibatch_size = 8
n_epochs = 1
sampling = {{ max_new_tokens = 6 }}

[evaluation]
prompts = 6
sampling = {{ max_new_tokens = 6 }}
{extra}
"""


def write_config(tmp_path: Path, cache: Path, stages: list[str], extra: str = "") -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.format(stages=json.dumps(stages), cache=json.dumps(str(cache)), extra=extra))
    assert load_config(ExperimentConfig, path).pretrain == TinyLMConfig.smoke(), "the cached test model must be reused"
    return path


# ---------------------------------------------------------------------------------------- parsing


def test_parse_grid_types_values_like_set() -> None:
    grid = parse_grid([f"{KL}=0.05,0.2", "ppo.ppo.iterations=1,3", "ppo.ppo.config.adaptive_kl=true,false",
                       "oracle.kind=synthetic,'recorded'", "evaluation.sampling.max_new_tokens=8"])
    assert grid == {KL: [0.05, 0.2], "ppo.ppo.iterations": [1, 3], "ppo.ppo.config.adaptive_kl": [True, False],
                    "oracle.kind": ["synthetic", "recorded"], "evaluation.sampling.max_new_tokens": [8]}
    assert [type(v) for v in grid["ppo.ppo.iterations"]] == [int, int]
    assert [type(v) for v in grid["ppo.ppo.config.adaptive_kl"]] == [bool, bool]
    # commas inside arrays and tables do not split values; spaces around items are dropped
    assert parse_grid(["reward_model.sources=[\"sft\", \"pretrained\"], [\"sft\"] , {a = 1, b = 2}"]) == {
        "reward_model.sources": [["sft", "pretrained"], ["sft"], {"a": 1, "b": 2}]}


@pytest.mark.parametrize(("spec", "expected"), [
    ("ppo.ppo.config.kl_coef", "no '='"),
    ("=0.1,0.2", "empty key"),
    ("ppo..kl_coef=0.1", "empty key"),
    ("ppo.ppo.config.kl_coef=", "ppo.ppo.config.kl_coef: empty value"),
    ("ppo.ppo.config.kl_coef=0.1,,0.2", "ppo.ppo.config.kl_coef: empty value"),
    ("ppo.ppo.config.kl_coef=0.1,0.1", "ppo.ppo.config.kl_coef: value 0.1 is given twice"),
])
def test_parse_grid_errors_name_the_key_and_show_an_example(spec: str, expected: str) -> None:
    with pytest.raises(ConfigError, match="e.g. --grid|list each value once") as info:
        parse_grid([spec])
    assert expected in str(info.value)


def test_parse_grid_rejects_a_key_given_twice() -> None:
    with pytest.raises(ConfigError, match=r"ppo.ppo.config.kl_coef: given twice.*e\.g\. --grid"):
        parse_grid([f"{KL}=0.1", f"{KL}=0.2"])


def test_plan_names_points_and_falls_back_to_longer_keys(tmp_path: Path, model_cache: Path) -> None:
    config = write_config(tmp_path, model_cache, ["pretrain"])
    points = plan_sweep(config, parse_grid([f"{KL}=0.05,0.2", "sft.epochs=2"]), seeds=2,
                        overrides=["seed=10"])
    assert [p.name for p in points] == ["kl_coef=0.05__epochs=2__seed10", "kl_coef=0.05__epochs=2__seed11",
                                        "kl_coef=0.2__epochs=2__seed10", "kl_coef=0.2__epochs=2__seed11"]
    assert points[1].params == {KL: 0.05, "sft.epochs": 2} and points[1].seed == 11
    assert points[1].overrides == ("seed=10", f"{KL}=0.05", "sft.epochs=2", "seed=11")
    # the same last segment in two runs: the shortest suffix that tells them apart
    both = plan_sweep(config, parse_grid([f"{KL}=0.1", "ppo.ppo_ptx.config.kl_coef=0.3"]))
    assert both[0].name == "ppo.config.kl_coef=0.1__ppo_ptx.config.kl_coef=0.3__seed0"


def test_unknown_grid_key_fails_before_any_run(tmp_path: Path, model_cache: Path) -> None:
    config = write_config(tmp_path, model_cache, ["pretrain"])
    out = tmp_path / "sweep"
    with pytest.raises(ConfigError, match=r"ppo\.ppo\.config\.kl_cof: unknown key.*did you mean 'kl_coef'"):
        run_sweep(config, parse_grid(["ppo.ppo.config.kl_cof=0.05,0.2"]), out=out)
    with pytest.raises(ConfigError, match=r"grid point ppo\.ppo\.config\.kl_coef=abc: .*expected a number"):
        run_sweep(config, parse_grid([f"{KL}=0.05,abc"]), out=out)
    assert not out.exists(), "nothing may run (or be created) when a grid point is invalid"


def test_a_misspelt_metric_fails_before_any_run(tmp_path: Path, model_cache: Path, capsys) -> None:
    """A typo in --metric used to run every point and exit 0 with an empty column."""
    from llm_gym.app.cli import main

    config = write_config(tmp_path, model_cache, ["pretrain", "sft", "ppo", "evaluation"])
    out = tmp_path / "sweep"
    with pytest.raises(ConfigError, match=r"metric 'ppo\.glod' is not a summary column of this sweep \(did you mean 'ppo\.gold'"):
        run_sweep(config, parse_grid([f"{KL}=0.05,0.2"]), out=out, metric="ppo.glod")
    # the rows of the stages that run (this config has no reward_model stage)
    with pytest.raises(ConfigError, match=r"with a row among pretrained, sft, ppo and a key among gold, "):
        run_sweep(config, parse_grid([f"{KL}=0.05,0.2"]), out=out, metric="gold")
    assert not out.exists(), "nothing may run (or be created) when the metric is no column"
    assert main(["sweep", str(config), "--grid", f"{KL}=0.05,0.2", "--metric", "ppo.win", "--out", str(out)]) == 2
    err = capsys.readouterr()
    assert "error: metric 'ppo.win' is not a summary column" in err.err and "sweep of" not in err.out
    # a run the grid adds is a row of the points that have it
    assert plan_sweep(config, {"ppo.extra.iterations": [1]}, metric="extra.gold")[0].name == "iterations=1__seed0"


def test_a_sweep_folder_under_a_file_fails_before_any_run(tmp_path: Path, model_cache: Path) -> None:
    from llm_gym.infra.runfolder import RunFolderError

    config = write_config(tmp_path, model_cache, ["pretrain"])
    (tmp_path / "file").write_text("")
    with pytest.raises(RunFolderError, match="the sweep folder .* cannot be created: .*file is a file, not a folder"):
        run_sweep(config, parse_grid([f"{KL}=0.05,0.2"]), out=tmp_path / "file" / "sweep", metric="pretrained.wall_seconds")


# ---------------------------------------------------------------------------------------- sweeps


def test_sweep_runs_points_writes_table_plot_hparams_and_resumes(tmp_path: Path, model_cache: Path, tiny_model) -> None:
    config = write_config(tmp_path, model_cache, ["pretrain", "sft", "ppo", "evaluation"])
    out = tmp_path / "sweep"
    events: list[str] = []
    grid = parse_grid([f"{KL}=0.05,0.2"])
    results = run_sweep(config, grid, out=out, parallel=2, on_event=events.append)

    names = ["kl_coef=0.05__seed0", "kl_coef=0.2__seed0"]
    assert [r["name"] for r in results] == names and all(r["status"] == "ok" for r in results)
    assert sum("ok in" in e for e in events) == 2
    for name, kl in zip(names, (0.05, 0.2)):
        resolved = json.loads((out / name / "config.json").read_text())
        assert resolved["ppo"]["ppo"]["config"]["kl_coef"] == kl and resolved["seed"] == 0
        assert (out / name / "summary.json").is_file()

    with open(out / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["point"] for r in rows] == names and [r["status"] for r in rows] == ["ok", "ok"]
    assert [float(r[KL]) for r in rows] == [0.05, 0.2] and [r["seed"] for r in rows] == ["0", "0"]
    assert all(math.isfinite(float(r["ppo.gold"])) for r in rows)
    assert {"ppo.kl", "ppo.win_rate", "sft.gold", "pretrained.perplexity"} <= set(rows[0])
    columns = set(rows[0]) - {"point", "status", "seed", KL}
    assert columns <= set(metric_columns(load_config(ExperimentConfig, config))), "--metric accepts every real column"
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "sweep.json").read_text())
    assert data["grid"] == {KL: [0.05, 0.2]} and data["metric"] == "ppo.gold"
    assert [p["metrics"]["ppo.gold"] for p in data["points"]] == [float(r["ppo.gold"]) for r in rows]

    for name, row in zip(names, rows):  # the HPARAMS tab: the grid value and seed, with the final metrics
        events_dir = out / name / "tb" / "hparams"
        assert any(p.name.startswith("events.out.tfevents") for p in events_dir.iterdir())
        acc = EventAccumulator(str(events_dir))
        acc.Reload()
        assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")
        assert acc.Scalars("ppo/gold")[0].value == pytest.approx(float(row["ppo.gold"]), rel=1e-6)

    # the same sweep again: every stage of every point is reused, nothing is trained again
    states = {name: (out / name / "state.json").read_text() for name in names}
    again = run_sweep(config, grid, out=out, parallel=2)
    assert [r["metrics"]["ppo.gold"] for r in again] == [r["metrics"]["ppo.gold"] for r in results]
    for name in names:
        assert (out / name / "state.json").read_text() == states[name]
        log = (out / name / "run.log").read_text()
        assert "[ppo.ppo] done earlier" in log and "[evaluation] done earlier" in log and "running" not in log
        assert len(list((out / name / "tb" / "hparams").iterdir())) == 1, "the hparams record is replaced, not doubled"


def test_failing_point_is_reported_and_the_others_finish(tmp_path: Path, model_cache: Path, tiny_model) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text("".join(
        json.dumps({"prompt": f"Review {i}:", "chosen": " great food, lovely staff", "rejected": f" awful {i}"}) + "\n"
        for i in range(24)))
    config = write_config(tmp_path, model_cache, ["pretrain", "sft", "reward_model"],
                          extra='[oracle]\nkind = "recorded"\npath = "set by the grid"\n')
    out = tmp_path / "sweep"
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(SweepError, match="1 of 2 sweep points failed") as info:
        run_sweep(config, {"oracle.path": [str(good), str(missing)]}, out=out, parallel=2,
                  metric="reward_model.heldout_accuracy")
    ok, failed = info.value.points
    assert (ok["name"], ok["status"]) == ("path=good.jsonl__seed0", "ok")
    assert (failed["name"], failed["status"]) == ("path=missing.jsonl__seed0", "failed") and failed["returncode"] != 0
    assert failed["log"] in str(info.value)
    assert "missing.jsonl does not exist" in Path(failed["log"]).read_text(), "the log holds the point's own error"
    assert math.isfinite(ok["metrics"]["reward_model.heldout_accuracy"])
    with open(out / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["status"], r["oracle.path"]) for r in rows] == [("ok", str(good)), ("failed", str(missing))]
    assert rows[1]["reward_model.heldout_accuracy"] == ""
    columns = set(rows[0]) - {"point", "status", "seed", "oracle.path"}
    assert columns <= set(metric_columns(load_config(ExperimentConfig, config))), "--metric accepts every real column"
    assert (out / "sweep.png").is_file() and not (out / failed["name"] / "tb" / "hparams").exists()


def test_metric_columns_follow_the_stages_and_the_default_metric_fits_the_config(tmp_path: Path) -> None:
    """A config that keeps [ppo] tables but does not run the ppo stage (experiments/ziegler) has no ppo column, so the
    old default --metric ppo.gold is refused before anything runs; the default now names a run that runs."""
    from llm_gym.app.sweep import default_metric

    ziegler = load_config(ExperimentConfig, REPO / "experiments" / "ziegler" / "config.toml")
    assert "ppo" not in ziegler.stages and ziegler.ppo
    with pytest.raises(ConfigError, match="metric 'ppo.gold' is not a summary column"):
        plan_sweep(REPO / "experiments" / "ziegler" / "config.toml", {"seed": [0, 1]}, metric="ppo.gold")
    assert default_metric(ziegler) == f"{next(iter(ziegler.preference_loop))}.gold"
    algorithms = load_config(ExperimentConfig, REPO / "experiments" / "algorithms" / "config.toml")
    assert default_metric(algorithms) == "ppo_gold.gold"
    no_eval = load_config(ExperimentConfig, REPO / "experiments" / "instructgpt" / "config.toml",
                          ["stages=['pretrain','sft','evaluation']"])
    assert default_metric(no_eval) == "sft.gold" and "ppo.gold" not in metric_columns(no_eval)


def test_accuracy_and_pass_at_k_are_metric_columns_and_the_default_on_verifiable_tasks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every k of evaluation.pass_k is a ``pass@k`` column; a task whose gold judge verifies answers is swept on its
    sampled accuracy by default, any other on gold as before."""
    from llm_gym.app.sweep import default_metric

    path = REPO / "experiments" / "algorithms" / "config.toml"
    config = load_config(ExperimentConfig, path, ["evaluation.samples_per_prompt=4", "evaluation.pass_k=[1, 2, 4]"])
    columns = metric_columns(config)
    assert {"sft.accuracy_greedy", "sft.accuracy_sampled", "sft.pass@1", "sft.pass@2", "sft.pass@4"} <= set(columns)
    assert "sft.pass_at_k" not in columns and "sft.pass@8" not in columns
    assert default_metric(config) == "ppo_gold.gold"
    assert default_metric(config, verifiable=True) == "ppo_gold.accuracy_sampled"
    (tmp_path / "sweep_answer_judges.py").write_text(
        "class Exact:\n    verifies_answers = True\n    def __call__(self, prompts, completions):\n"
        "        return [float(c.strip() == '4') for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    judged = load_config(ExperimentConfig, path, ['task.gold="sweep_answer_judges:Exact"'])
    assert default_metric(judged) == "ppo_gold.accuracy_sampled"
    plan_sweep(path, {"seed": [0, 1]}, overrides=["evaluation.pass_k=[1, 2]"], metric="ppo_gold.pass@2")
    with pytest.raises(ConfigError, match=r"pass_k has k = 8 > samples_per_prompt = 4"):
        load_config(ExperimentConfig, path, ["evaluation.samples_per_prompt=4"])
