"""The `llm-gym` command: help texts, `demo` and `build-model` (`run`, `eval`, `label`: tests/app/test_pipeline.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_gym.app.cli import build_parser, main
from llm_gym.infra.configio import to_dict


def test_help_lists_subcommands(capsys) -> None:
    try:
        main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    assert all(c in out for c in ("demo", "run", "eval", "label", "build-model")) and "examples:" in out


def test_python_dash_m_runs() -> None:
    out = subprocess.run([sys.executable, "-m", "llm_gym", "run", "--help"], capture_output=True, text=True, check=True)
    assert "--set" in out.stdout and "examples:" in out.stdout


def test_every_subcommand_has_help_with_examples(capsys) -> None:
    parser = build_parser()
    names = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, sub in names.items():
        text = sub.format_help()
        assert "example" in text, f"`llm-gym {name} --help` shows no example"


def test_demo_runs_the_default_study(monkeypatch, tmp_path) -> None:
    """`llm-gym demo` (what `make demo` calls) is the InstructGPT study's default config, with --set applied."""
    from llm_gym.app import cli
    from llm_gym.app.config import ExperimentConfig

    seen = {}
    monkeypatch.setattr(cli, "_run_pipeline", lambda config, out, progress=True: seen.update(config=config, out=out))
    assert main(["demo", "--out", str(tmp_path), "--set", "seed=3"]) == 0
    assert seen["config"] == ExperimentConfig(seed=3) and seen["out"] == str(tmp_path)
    assert main(["demo"]) == 0 and seen["out"] == "runs/instructgpt"
    assert main(["demo", "--set", "ppo.ppo.iterations=5"]) == 0
    runs = seen["config"].ppo
    assert runs["ppo"].iterations == 5 and runs["ppo"].config == ExperimentConfig().ppo["ppo"].config
    assert runs["ppo_ptx"] == ExperimentConfig().ppo["ppo_ptx"], "--set changes one value, not the set of runs"


def test_build_model_finds_the_cached_model(model_cache, tiny_model, capsys) -> None:
    assert main(["build-model", "--smoke", "--cache-dir", str(model_cache)]) == 0
    text = capsys.readouterr().out
    assert "found in cache" in text, "the session's tiny model is reused, not rebuilt"
    assert "held-out perplexity: untrained" in text


def test_help_imports_no_heavy_library() -> None:
    """`llm-gym --help` and `llm-gym <command> --help` answer at once: neither torch, transformers nor the web server
    is imported to print them (they load when a command runs)."""
    code = (
        "import sys\n"
        "from llm_gym.app import cli\n"
        "for argv in ([], ['run'], ['sweep'], ['demo'], ['eval'], ['label'], ['build-model']):\n"
        "    try:\n"
        "        cli.main([*argv, '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = ('torch', 'transformers', 'llm_gym.feedback.web', 'http.server', 'llm_gym.app.pipeline')\n"
        "print(sorted(m for m in heavy if m in sys.modules), file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr.strip().splitlines()[-1] == "[]"


# ------------------------------------------------------------------ errors are an `error:` line and exit status 2


def _config_file(tmp_path, model_cache, **changes) -> str:
    from doubles import tiny_experiment_dict

    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({**tiny_experiment_dict(model_cache), **changes}))
    return str(path)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_an_out_folder_that_cannot_be_written_is_an_error_line(tmp_path, model_cache, capsys, monkeypatch) -> None:
    config = _config_file(tmp_path, model_cache)
    regular = tmp_path / "notes.txt"
    regular.write_text("a file, not a folder")
    assert main(["run", config, "--out", str(regular / "run")]) == 2
    assert _error_line(capsys) == f"error: the run folder {regular / 'run'} cannot be created: {regular} is a file, not a folder; choose another folder"
    assert main(["run", config, "--out", str(regular)]) == 2
    assert "is a file, not a folder" in _error_line(capsys)
    # a folder without write permission (simulated: the tests may run as root, who may write anywhere)
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
    assert main(["run", config, "--out", str(locked / "run")]) == 2
    assert f"cannot be created: {locked} is not writable" in _error_line(capsys)
    assert not (locked / "run").exists()


def test_a_stage_whose_inputs_never_ran_is_an_error_line(tmp_path, model_cache, capsys) -> None:
    config = _config_file(tmp_path, model_cache, stages=["sft"])
    out = tmp_path / "fresh"
    assert main(["run", config, "--out", str(out)]) == 2
    line = _error_line(capsys)
    assert line.startswith("error: stages = ['sft']: 'sft' reads the result of 'pretrain', which has not run in")
    assert "run it too: stages = ['pretrain', 'sft']" in line
    assert not out.exists(), "nothing is created before the inputs are checked"


def test_a_damaged_state_or_config_file_is_named_in_run_and_eval(tmp_path, model_cache, capsys) -> None:
    from llm_gym.app.config import ExperimentConfig
    from llm_gym.infra.configio import from_dict

    config = _config_file(tmp_path, model_cache)
    out = tmp_path / "run"
    out.mkdir()
    resolved = to_dict(from_dict(ExperimentConfig, json.loads(Path(config).read_text())))
    (out / "config.json").write_text(json.dumps(resolved))
    (out / "state.json").write_text('{"pretrain": {"fingerprint": "abc", "res')  # cut short
    for argv in (["run", config, "--out", str(out)], ["eval", str(out)]):
        assert main(argv) == 2
        line = _error_line(capsys)
        assert line.startswith(f"error: {out / 'state.json'} (the record of the stages done in this run folder) is damaged: "
                               "not valid JSON"), argv
        assert "delete it to run every stage again" in line
    (out / "state.json").write_text("[]")
    assert main(["eval", str(out)]) == 2 and "holds list, not an object" in _error_line(capsys)
    (out / "config.json").write_text('{"name": "tin')
    assert main(["eval", str(out)]) == 2
    assert _error_line(capsys).startswith(f"error: {out / 'config.json'} (the resolved config `llm-gym run` wrote) is damaged")


def test_eval_of_a_folder_with_nothing_finished_is_an_error_line(tmp_path, model_cache, capsys) -> None:
    from llm_gym.app.config import ExperimentConfig

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(to_dict(ExperimentConfig())))
    assert main(["eval", str(out)]) == 2
    assert "nothing to evaluate yet, stage(s) ['pretrain', 'sft'] have not finished there" in _error_line(capsys)


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_ctrl_c_says_how_to_resume_and_exits_130(tmp_path, model_cache, capsys, monkeypatch, command) -> None:
    from llm_gym.app import cli, sweep

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_run_pipeline", interrupted)
    monkeypatch.setattr(sweep, "run_sweep", interrupted)
    config = _config_file(tmp_path, model_cache)
    extra = ["--grid", "sft.epochs=1,2"] if command == "sweep" else []
    assert main([command, config, "--out", str(tmp_path / "out"), *extra]) == 130
    assert _error_line(capsys).startswith("interrupted; rerun the same command to resume")


def test_run_imports_the_users_code_from_the_current_folder(tmp_path, model_cache, tiny_model) -> None:
    """A config names a reward function by import path; `llm-gym run` (the console script, unlike `python -m`)
    must find a module that sits in the folder it runs from."""
    import json
    from pathlib import Path

    from doubles import tiny_experiment_dict

    (tmp_path / "my_words.py").write_text("def reward(prompts, completions):\n    return [float(len(c)) for c in completions]\n")
    data = tiny_experiment_dict(model_cache)
    data.update(stages=["pretrain"], ppo={}, task={"env": "llm_gym/PromptBandit-v0",
                                                   "env_kwargs": {"dataset": ["the film was"], "reward_fn": "my_words:reward"}})
    (tmp_path / "exp.json").write_text(json.dumps(data))
    script = Path(sys.executable).parent / "llm-gym"
    out = subprocess.run([str(script), "run", "exp.json", "--out", "run", "--no-progress"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
