"""`stages.check_inputs`: every input of an experiment is checked before the first stage runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from doubles import tiny_experiment_dict

from llm_gym.app.config import ExperimentConfig
from llm_gym.app.pipeline import Pipeline
from llm_gym.app.stages import check_inputs
from llm_gym.core.data import DatasetError
from llm_gym.infra.configio import ConfigError, apply_overrides, from_dict
from llm_gym.infra.runfolder import RunFolderError


def tiny(model_cache: Path, *overrides: str) -> ExperimentConfig:
    return from_dict(ExperimentConfig, apply_overrides(tiny_experiment_dict(model_cache), overrides))


def path_override(key: str, path: Path) -> str:
    return f"{key}={json.dumps(str(path))}"


def test_bad_input_files_fail_before_pretraining_each_with_its_key_and_line(tmp_path, model_cache) -> None:
    """A prompt with a lone surrogate used to pass every loader and fail in the tokenizer after SFT."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "the soup was"}\n{"prompt": "my phone \\ud800"}\n')
    demos = tmp_path / "demos.jsonl"
    demos.write_text('{"prompt": "the soup was", "completion": 3}\n')
    config = tiny(model_cache, path_override("task.prompts", prompts), path_override("task.demonstrations", demos),
                  path_override("task.eval_prompts", tmp_path / "missing.txt"))
    out = tmp_path / "run"
    with pytest.raises(DatasetError) as info:
        Pipeline(config, out).run()
    lines = str(info.value).splitlines()
    assert lines[0] == "the experiment's input files cannot be used:"
    assert lines[1].startswith(f"  task.prompts: {prompts} line 2: 'prompt': holds the lone surrogate '\\ud800'")
    assert lines[2].startswith("  task.eval_prompts: prompt file ") and "missing.txt does not exist" in lines[2]
    assert lines[3].startswith(f"  task.demonstrations: {demos} line 1: 'completion' must be a string like its prompt, got int")
    assert not out.exists(), "nothing ran: not even the run folder was made"


def test_a_recorded_oracle_file_is_read_in_full_before_any_stage(tmp_path, model_cache) -> None:
    recorded = tmp_path / "labels.jsonl"
    recorded.write_text(json.dumps({"prompt": "the soup was", "chosen": " hot", "rejected": " cold"}) + "\n"
                        '{"prompt": "the soup was", "chosen": " good \\udc00", "rejected": " bad"}\n')
    config = tiny(model_cache, "oracle.kind=recorded", path_override("oracle.path", recorded))
    with pytest.raises(DatasetError, match=rf"oracle\.path: {recorded} line 2: .*'chosen': holds the lone surrogate"):
        check_inputs(config, {}, tmp_path / "run")
    recorded.write_text('{"prompt": "the soup was", "chosen": " hot"}\n')
    with pytest.raises(DatasetError, match=r"oracle\.path: .*labels\.jsonl line 1"):
        check_inputs(config, {}, tmp_path / "run")


def test_stages_may_read_results_already_in_the_folder(tmp_path, model_cache) -> None:
    config = tiny(model_cache, "stages=['sft', 'reward_model']")
    with pytest.raises(ConfigError, match=r"'sft' reads the result of 'pretrain'.*run it too: stages = \['pretrain', 'sft', 'reward_model'\]"):
        check_inputs(config, {}, tmp_path)
    check_inputs(config, {"pretrain": {}}, tmp_path)  # pretrained earlier in this folder
    gold_only = tiny(model_cache, "stages=['ppo']", "ppo.ppo.reward=gold", "ppo.ppo_ptx.reward=gold")
    check_inputs(gold_only, {"pretrain": {}, "sft": {}}, tmp_path)  # paid by the gold judge: no reward model read
    with pytest.raises(ConfigError, match=r"'ppo' reads the result of 'reward_model', which has not run"):
        check_inputs(tiny(model_cache, "stages=['ppo']"), {"pretrain": {}, "sft": {}}, tmp_path)


def test_a_local_model_folder_must_hold_a_model(tmp_path, model_cache) -> None:
    with pytest.raises(ConfigError, match=r"model\.name_or_path: the folder \./models/mine does not exist"):
        check_inputs(tiny(model_cache, "model.name_or_path='./models/mine'"), {}, tmp_path / "run")
    with pytest.raises(ConfigError, match=r"is not a model folder \(it has no config\.json\)"):
        check_inputs(tiny(model_cache, path_override("model.name_or_path", tmp_path)), {}, tmp_path / "run")
    check_inputs(tiny(model_cache, "model.name_or_path='gpt2'"), {}, tmp_path / "run")  # a Hub name: not checked offline


def test_a_run_folder_under_a_file_is_refused(tmp_path, model_cache) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(RunFolderError, match="is a file, not a folder"):
        Pipeline(tiny(model_cache), tmp_path / "file" / "run").run()


def test_every_stage_says_what_it_reads() -> None:
    from llm_gym.app.config import STAGES
    from llm_gym.app.stages import _stage_inputs

    inputs = _stage_inputs(ExperimentConfig())
    assert list(inputs) == list(STAGES), "a new stage must say which earlier results it reads"
    assert all(STAGES.index(n) < STAGES.index(stage) for stage, needs in inputs.items() for n in needs)
