"""The `llm-gym` command: help texts and the demo on the smoke model."""

from __future__ import annotations

import subprocess
import sys

from llm_gym.cli import build_parser, main


def test_help_lists_subcommands(capsys) -> None:
    try:
        main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    assert "demo" in out and "build-model" in out and "examples:" in out


def test_python_dash_m_runs() -> None:
    out = subprocess.run([sys.executable, "-m", "llm_gym", "demo", "--help"], capture_output=True, text=True, check=True)
    assert "--episodes" in out.stdout


def test_demo_runs_and_logs(tmp_path, model_cache, tiny_model, capsys) -> None:
    out_dir = tmp_path / "runs"
    code = main(["demo", "--smoke", "--cache-dir", str(model_cache), "--out", str(out_dir), "--episodes", "2",
                 "--num-envs", "3", "--max-new-tokens", "8"])
    assert code == 0
    text = capsys.readouterr().out
    assert "found in cache" in text, "the session's tiny model is reused, not rebuilt"
    assert "held-out perplexity: untrained" in text
    assert text.count("mean reward") == 2
    runs = list(out_dir.iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("demo__seed0__")
    assert any(p.name.startswith("events.out.tfevents") for p in runs[0].iterdir())
    assert build_parser().parse_args(["demo"]).episodes == 3
