"""The README's Python examples run as written (the quick start and the pipeline in a few lines)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
RUNNABLE = ("## Quick start", "## The InstructGPT pipeline in a few lines", "## The bandit algorithms",
            "## Verifiable rewards", "## Your own model and data")


def _examples() -> list[tuple[str, str]]:
    text = README.read_text()
    out = []
    for heading in RUNNABLE:
        section = text[text.index(heading):]
        section = section[: section.index("\n## ", len(heading))]
        out += [(heading, code) for code in re.findall(r"```python\n(.*?)```", section, re.S)]
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("heading", "code"), _examples(), ids=lambda v: v if v.startswith("##") else "code")
def test_readme_example_runs(heading: str, code: str, tmp_path: Path, model_cache: Path, tiny_model) -> None:
    env = {**os.environ, "LLM_GYM_CACHE": str(model_cache)}  # the session's smoke model: nothing to pretrain
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{heading}: the example failed\n{out.stderr[-3000:]}"
