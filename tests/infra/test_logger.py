"""The logger: scalars grouped by prefix, text, hparams, run folders; read back from the event files."""

from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from llm_gym import Logger, make_run_dir


def load_events(path) -> EventAccumulator:
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_scalars_text_and_hparams_reach_tensorboard(tmp_path) -> None:
    run = make_run_dir(tmp_path, "sweep-beta0.1", seed=3)
    with Logger(run) as logger:
        logger.log_hparams({"beta": 0.1, "model": "tiny", "layers": 2, "path": tmp_path}, {"eval/gold": 0.5})
        for step in range(1, 4):
            logger.record("rollout/reward_mean", step * 0.5)
            logger.record_dict({"train/loss": 1.0 / step, "objective/kl": 0.01 * step})
            logger.dump(step)
        logger.log_text("rollout/samples", "the film was | really good .\n<script>x</script>", step=3)
    assert logger.history["rollout/reward_mean"] == [(1, 0.5), (2, 1.0), (3, 1.5)]

    acc = load_events(run)
    scalars = acc.Tags()["scalars"]
    assert {"rollout/reward_mean", "train/loss", "objective/kl"} <= set(scalars)
    events = acc.Scalars("train/loss")
    assert [e.step for e in events] == [1, 2, 3]
    assert [e.value for e in events] == pytest.approx([1.0, 0.5, 1 / 3])
    plugins = acc.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in plugins and "_hparams_/session_start_info" in plugins
    assert b"beta" in plugins["_hparams_/session_start_info"]
    text_tags = acc.PluginTagToContent("text")
    assert any(tag.startswith("rollout/samples") for tag in text_tags)


def test_keys_need_a_known_group() -> None:
    logger = Logger(None)
    for bad in ("reward", "misc/reward", "/x"):
        with pytest.raises(ValueError, match="group prefix"):
            logger.record(bad, 1.0)
    logger.record("eval/gold", 1)
    logger.dump(0)
    assert logger.history["eval/gold"] == [(0, 1.0)]


def test_run_dirs_of_a_sweep_sit_side_by_side(tmp_path) -> None:
    a = make_run_dir(tmp_path, "ppo", seed=0)
    b = make_run_dir(tmp_path, "ppo", seed=0)
    c = make_run_dir(tmp_path, "ppo", seed=1)
    assert a != b and a.parent == b.parent == c.parent == tmp_path
    assert a.name.startswith("ppo__seed0__") and c.name.startswith("ppo__seed1__")
    assert b.name == a.name + "_1"
    with pytest.raises(ValueError, match="path separator"):
        make_run_dir(tmp_path, "a/b")


def test_purge_step_on_resume_drops_later_events(tmp_path) -> None:
    with Logger(tmp_path) as first:
        for step in range(1, 6):
            first.record("train/loss", float(step))
            first.dump(step)
    with Logger(tmp_path, purge_step=3) as resumed:  # resumed from a checkpoint at step 3
        for step in range(3, 5):
            resumed.record("train/loss", 10.0 * step)
            resumed.dump(step)
    events = load_events(tmp_path).Scalars("train/loss")
    assert [(e.step, e.value) for e in events] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]
