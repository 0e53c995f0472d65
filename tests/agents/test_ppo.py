"""The PPO agent on the tiny model: a known reward rises (and falls with its sign flipped), exact resume (also
after a SIGKILL mid-save), damaged checkpoints refused by name, health guards, the ptx term, config validation."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from llm_gym import Logger, Policy, SamplingConfig
from llm_gym.agents.checkpoint import CheckpointError
from llm_gym.agents.ppo import PPO, OverOptimizationWarning, PPOConfig, TrainingDivergedError
from llm_gym.envs import PromptBanditVecEnv
from llm_gym.models.lm import lm_loss

PROMPTS = ["the film was", "review of the blender :", "i bought this laptop and", "the hotel is", "this novel"]


def count_token(word: str, sign: float = 1.0):
    """A reward that is a known function of the text: how often `word` occurs (times `sign`)."""

    def reward(prompts, completions):
        return np.array([sign * c.split().count(word) for c in completions], dtype=np.float64)

    return reward


def count_letter(letter: str, sign: float = 1.0):
    """How often `letter` occurs in the completion (times `sign`): frequent enough to move both ways."""

    def reward(prompts, completions):
        return np.array([sign * c.count(letter) for c in completions], dtype=np.float64)

    return reward


def make_agent(policy: Policy, reward, seed: int = 0, logger: Logger | None = None, ptx_texts=None, **overrides) -> PPO:
    settings = dict(
        sampling=SamplingConfig(max_new_tokens=10), learning_rate=3e-3, n_epochs=2, minibatch_size=4, kl_coef=0.0,
        log_samples_every=0,
    )
    settings.update(overrides)
    env = PromptBanditVecEnv(PROMPTS, reward, num_envs=8)
    return PPO(policy, env, PPOConfig(**settings), rng=np.random.default_rng(seed), logger=logger or Logger(None),
               ptx_texts=ptx_texts)


def run(agent: PPO, iterations: int) -> list[float]:
    return [agent.train_iteration()["objective/rm_score"] for _ in range(iterations)]


def state_digest(agent: PPO) -> list[torch.Tensor]:
    return [p.detach().clone() for p in list(agent.policy.model.parameters()) + list(agent.value_head.parameters())]


@pytest.mark.slow
@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["reward", "flipped-sign"])
def test_known_reward_moves_in_the_direction_of_its_sign(policy: Policy, sign: float) -> None:
    agent = make_agent(policy, count_letter("e", sign))
    scores = run(agent, 12)
    count_before, count_after = sign * np.mean(scores[:3]), sign * np.mean(scores[-3:])
    if sign > 0:
        assert count_after > 1.3 * count_before, f"the count of 'e' should rise: {count_before:.2f} -> {count_after:.2f}"
    else:
        assert count_after < 0.7 * count_before, f"the count of 'e' should fall: {count_before:.2f} -> {count_after:.2f}"


def test_learn_act_and_callback(policy: Policy) -> None:
    agent = make_agent(policy, count_token("the"))
    seen = []
    result = agent.learn(total_steps=40, callback=lambda a, step: seen.append(step) or len(seen) < 2)
    assert result is agent
    assert seen == [8, 16] and agent.num_timesteps == 16, "the callback returning False stops learn"
    agent.learn(total_steps=24)
    assert agent.num_timesteps == 24
    out = agent.act(["the film was", "the hotel is"])
    assert len(out) == 2 and all(isinstance(c, str) for c in out)


def test_training_changes_parameters_and_logs_the_required_keys(policy: Policy) -> None:
    logger = Logger(None)
    with pytest.raises(ValueError, match="ptx_texts"):
        make_agent(policy, count_token("the"), ptx_coef=0.5)
    agent = make_agent(policy, count_token("the"), logger=logger, ptx_coef=0.5, kl_coef=0.1,
                       ptx_texts=["the film was great .", "the blender is loud ."])
    before = state_digest(agent)
    agent.train_iteration()
    assert any(not torch.equal(a, b) for a, b in zip(before, state_digest(agent)))
    required = {
        "objective/rm_score", "objective/kl", "objective/kl_coef", "train/policy_loss", "train/value_loss",
        "train/ptx_loss", "train/entropy", "train/clipfrac", "train/approx_kl",
        "time/generation", "time/scoring", "time/reference", "time/update",
    }
    assert required <= set(logger.history)
    assert logger.history["train/ptx_loss"][0][1] > 0
    assert logger.history["objective/kl_coef"][0][1] == pytest.approx(0.1)
    # first iteration: policy == reference, so the KL is exactly zero and the ratio starts at 1
    assert logger.history["objective/kl"][0][1] == pytest.approx(0.0, abs=1e-5)


def test_ptx_term_is_the_pretraining_nll(policy: Policy) -> None:
    agent = make_agent(policy, count_token("the"), ptx_coef=1.0, ptx_batch_size=3,
                       ptx_texts=["the film was great .", "the blender is loud , and i like it ."])
    rng_state = agent.rng.bit_generator.state
    with torch.no_grad():
        (batch, weight), = agent.ptx.draw(agent.rng, 1)
        ptx = lm_loss(policy.model, *batch).item()
    # by hand: the same three texts (same rng draws), each as BOS + text + EOS, mean NLL per predicted token
    rng = np.random.default_rng()
    rng.bit_generator.state = rng_state
    tok = policy.tokenizer
    nll, count = 0.0, 0
    for i in rng.integers(2, size=3):
        ids = torch.tensor([tok(agent.ptx_texts[i])["input_ids"] + [tok.eos_token_id]])
        with torch.no_grad():
            logp = torch.log_softmax(policy.model(input_ids=ids).logits[0, :-1].float(), -1)
        nll -= logp.gather(-1, ids[0, 1:, None]).sum().item()
        count += ids.shape[1] - 1
    assert ptx == pytest.approx(nll / count, rel=1e-5)


def test_resume_is_exact_and_curves_have_no_duplicates(tiny_model, tmp_path) -> None:
    log_dir = tmp_path / "run"
    kwargs = dict(adaptive_kl=True, kl_coef=0.2, target_kl=0.5, kl_horizon=100, whiten_scores=True)

    def fresh(logger):
        return make_agent(Policy.from_pretrained(tiny_model.path, device="cpu"), count_token("the"), logger=logger, **kwargs)

    # uninterrupted run: 4 iterations
    straight = fresh(Logger(None))
    run(straight, 4)

    # interrupted run: 2 iterations, checkpoint, 1 more logged iteration, then a "crash"
    first_logger = Logger(log_dir)
    first = fresh(first_logger)
    run(first, 2)
    first.save(tmp_path / "ckpt")
    run(first, 1)
    first_logger.close()

    resumed_logger = Logger(log_dir)
    resumed = PPO.load(tmp_path / "ckpt", env=PromptBanditVecEnv(PROMPTS, count_token("the"), num_envs=8),
                       logger=resumed_logger, device="cpu")
    assert resumed.num_timesteps == 16 and resumed.iteration == 2
    assert resumed.kl_ctl.value == pytest.approx(first_kl_after_two := resumed.kl_ctl.value)
    assert resumed.kl_ctl.value != 0.2, "the adaptive controller's state is restored, not re-initialised"
    assert resumed.score_moments.count > 1
    run(resumed, 2)
    resumed_logger.close()

    for a, b in zip(state_digest(straight), state_digest(resumed)):
        assert torch.allclose(a, b, atol=1e-6), "a resumed run continues exactly where the uninterrupted one would be"
    assert straight.kl_ctl.value == pytest.approx(resumed.kl_ctl.value)
    assert first_kl_after_two > 0

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    steps = [e.step for e in acc.Scalars("objective/rm_score")]
    assert steps == [8, 16, 24, 32], "the crashed run's step 24 was purged and logged once by the resumed run"


def test_nan_loss_stops_before_the_optimizer_step(policy: Policy, tmp_path) -> None:
    agent = make_agent(policy, count_token("the"))
    agent.train_iteration()
    agent.save(tmp_path / "ckpt")
    files = sorted(p for p in (tmp_path / "ckpt").rglob("*") if p.is_file())
    digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    with torch.no_grad():
        agent.value_head.linear.weight.fill_(float("nan"))
    before = [p.detach().clone() for p in agent.policy.model.parameters()]
    with pytest.raises(TrainingDivergedError, match="non-finite .*value_loss.*before the optimizer step"):
        agent.train_iteration()
    assert all(torch.equal(a, b) for a, b in zip(before, agent.policy.model.parameters()))
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files} == digest, "the checkpoint is untouched"


@pytest.mark.slow
def test_flipped_reward_sign_is_loud_in_training(policy: Policy) -> None:
    """Ziegler et al.'s bug: the reward's sign flipped. The RM score rises while the gold score falls: warn."""
    gold = count_letter("e")
    env = PromptBanditVecEnv(PROMPTS, count_letter("e", sign=-1.0), num_envs=8, gold_fn=gold)
    config = PPOConfig(sampling=SamplingConfig(max_new_tokens=10), learning_rate=3e-3, n_epochs=2, minibatch_size=4,
                       kl_coef=0.0, overopt_window=4, overopt_patience=2, log_samples_every=0)
    agent = PPO(policy, env, config, rng=np.random.default_rng(0))
    with pytest.warns(OverOptimizationWarning):
        for _ in range(24):
            agent.train_iteration()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"n_epochs": 0}, "n_epochs"),
        ({"gamma": 1.5}, "gamma"),
        ({"kl_coef": -0.1}, "kl_coef"),
        ({"clip_range_vf": 0.0}, "clip_range_vf"),
        ({"minibatch_size": 2.5}, "minibatch_size"),
        ({"checkpoint_every": -1}, "checkpoint_every"),
        ({"overopt_window": 1}, "overopt_window"),
    ],
)
def test_config_validation(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        PPOConfig(**kwargs)


def test_constructor_errors(policy: Policy) -> None:
    env = PromptBanditVecEnv(PROMPTS, count_token("the"), num_envs=6)
    with pytest.raises(ValueError, match="must divide"):
        PPO(policy, env, PPOConfig(minibatch_size=4), rng=np.random.default_rng(0))
    with pytest.raises(TypeError, match="batched environment"):
        PPO(policy, object(), PPOConfig(), rng=np.random.default_rng(0))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="numpy Generator"):
        PPO(policy, env, PPOConfig(minibatch_size=3), rng=0)  # type: ignore[arg-type]


# ------------------------------------------------------------------ checkpoints: kills, damage, clear errors
KILLED_RUN = r"""
import os, signal, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
model, ckpt, tests, point = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
sys.path.insert(0, tests)
import test_ppo
import llm_gym.agents.on_policy as ppo_module  # where the shared save writes the value head
from llm_gym import Policy

real_replace, real_save_file = os.replace, ppo_module.save_file

def replace(src, dst):  # the second rename of the second save: the first checkpoint is set aside
    if point == "between-renames" and saves == 2 and Path(dst) == ckpt and not ckpt.exists():
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)

def save_file(*args, **kwargs):  # the value head of the second save, mid-way through writing its folder
    real_save_file(*args, **kwargs)
    if point == "mid-write" and saves == 2:
        os.kill(os.getpid(), signal.SIGKILL)

os.replace, ppo_module.save_file = replace, save_file
agent = test_ppo.make_agent(Policy.from_pretrained(model, device="cpu"), test_ppo.count_token("the"))
for saves in (1, 2, 3):
    agent.train_iteration()
    agent.save(ckpt)
"""


@pytest.mark.parametrize("point, last_good", [("between-renames", 2), ("mid-write", 1)])
def test_a_kill_while_saving_resumes_exactly_from_the_last_complete_checkpoint(tiny_model, tmp_path, point, last_good) -> None:
    """SIGKILL during the second save: the rerun finds the newest complete checkpoint (the issue's case: between the
    renames, `checkpoint/` is missing and only a set-aside copy exists), removes what the kill left, and resumes exactly."""
    ckpt = tmp_path / "checkpoint"
    args = [str(tiny_model.path), str(ckpt), str(Path(__file__).parent), point]
    assert subprocess.run([sys.executable, "-c", KILLED_RUN, *args], timeout=300).returncode == -signal.SIGKILL
    assert [p.name for p in tmp_path.iterdir() if p.name != "checkpoint"], "the kill left a temporary folder"
    assert ckpt.exists() == (point == "mid-write")
    assert PPO.checkpoint_iteration(ckpt) == last_good, "what the pipeline's resume check reads"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"], "nothing stale is left beside it"
    resumed = PPO.load(ckpt, env=PromptBanditVecEnv(PROMPTS, count_token("the"), num_envs=8), device="cpu")
    assert resumed.iteration == last_good
    run(resumed, 3 - last_good)
    straight = make_agent(Policy.from_pretrained(tiny_model.path, device="cpu"), count_token("the"))
    run(straight, 3)
    for a, b in zip(state_digest(straight), state_digest(resumed)):
        assert torch.allclose(a, b, atol=1e-6), "3 iterations = k + kill + resume + 3 - k"


def saved(policy: Policy, path: Path, manifest: bool = True) -> Path:
    make_agent(policy, count_token("the")).save(path)
    if not manifest:
        (path / "manifest.json").unlink(missing_ok=True)  # as checkpoints saved before manifests existed
    return path


def load(path: Path) -> PPO:
    return PPO.load(path, env=PromptBanditVecEnv(PROMPTS, count_token("the"), num_envs=8), device="cpu")


def flip(file: Path, index: int, mask: int = 0x01) -> None:
    data = bytearray(file.read_bytes())
    data[index] ^= mask
    file.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["policy/model.safetensors", "value_head.safetensors", "reference/model.safetensors"])
def test_a_flipped_byte_in_a_checkpoint_is_refused_naming_the_file(policy: Policy, tmp_path, name: str) -> None:
    path = saved(policy, tmp_path / "ckpt")
    flip(path / name, -3)
    files = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError, match=rf"damaged: {re.escape(name)} is not the file that was saved.*delete"):
        load(path)
    assert {p: p.read_bytes() for p in path.rglob("*") if p.is_file()} == files, "nothing on disk is changed"


def swap_config(path: Path) -> None:
    config = json.loads((path / "policy" / "config.json").read_text())
    config["n_layer"] += 1  # the config of another (deeper) model
    (path / "policy" / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda p: (p / "trainer_state.json").write_text('{"format_version": 1, "con'),
         r"trainer_state\.json cannot be loaded \(JSONDecodeError"),
        (swap_config, r"policy/config\.json does not describe the weights saved beside it"),
        (lambda p: flip(p / "policy" / "model.safetensors", 10, 0xFF), r"policy/model\.safetensors cannot be loaded \(SafetensorError"),
        (lambda p: flip(p / "value_head.safetensors", 10, 0xFF), r"value_head\.safetensors cannot be loaded \(SafetensorError"),
        (lambda p: (p / "optimizer.pt").write_bytes(b"PK\x03\x04"), r"optimizer\.pt cannot be loaded"),
    ],
    ids=["trainer-state", "swapped-config", "policy-header", "value-head-header", "optimizer"],
)
def test_load_errors_name_the_file_and_what_to_do(policy: Policy, tmp_path, damage, match) -> None:
    """Checkpoints without a manifest (saved before it existed) are refused by what breaks; with one, by its hash."""
    for manifest in (False, True):
        path = saved(policy, tmp_path / f"ckpt-{manifest}", manifest=manifest)
        damage(path)
        expected = match if not manifest else "is not the file that was saved"
        with pytest.raises(CheckpointError, match=expected) as err:
            load(path)
        assert f"or delete {path} to train from the start" in str(err.value)


def test_a_checkpoint_saved_before_manifests_loads_with_a_note(policy: Policy, tmp_path, caplog) -> None:
    path = saved(policy, tmp_path / "ckpt", manifest=False)
    with caplog.at_level(logging.WARNING):
        assert load(path).iteration == 0
    assert "has no manifest.json" in caplog.text
