"""Packaging: `agents/` and `envs/` are served as `llm_gym.agents`/`llm_gym.envs`, editable and from a wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_installed_package_maps_folders() -> None:
    import llm_gym
    import llm_gym.agents
    import llm_gym.envs

    assert Path(llm_gym.envs.__file__).parent.name == "envs"
    assert Path(llm_gym.agents.__file__).parent.name == "agents"
    assert llm_gym.envs.PromptBanditEnv.__module__ == "llm_gym.envs.prompt_bandit"


@pytest.mark.slow
def test_wheel_holds_only_llm_gym_and_imports(tmp_path: Path) -> None:
    wheel_dir = tmp_path / "wheel"
    # setuptools reuses ./build/lib between builds: files deleted from the source since would ship again
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheel_dir), str(ROOT)],
        check=True, cwd=tmp_path,
    )
    (wheel,) = wheel_dir.glob("llm_gym-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"llm_gym", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    assert "llm_gym/envs/prompt_bandit.py" in names and "llm_gym/agents/base.py" in names
    assert "llm_gym/py.typed" in names
    # the labelling page's files ship as package data
    assert {"llm_gym/feedback/web/page.html", "llm_gym/feedback/web/static/app.js",
            "llm_gym/feedback/web/static/app.css"} <= set(names)

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)], check=True)
    assert not (site / "envs").exists() and not (site / "agents").exists()
    code = (
        "import sys, gymnasium, llm_gym, llm_gym.envs, llm_gym.agents;"
        f"assert llm_gym.__file__.startswith({str(site)!r}), llm_gym.__file__;"
        f"assert llm_gym.envs.__file__.startswith({str(site)!r});"
        "env = gymnasium.make('llm_gym/ReviewSentiment-v0'); print(env.reset(seed=0)[0])"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
