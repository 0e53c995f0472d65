"""The `llm-gym` command: help texts, `demo` and `build-model` (`run`, `eval`, `label`: tests/test_pipeline.py)."""

from __future__ import annotations

import subprocess
import sys

from llm_gym.app.cli import build_parser, main


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
