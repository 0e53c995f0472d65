"""The PPO agent on the tiny model: a known reward rises (and falls with its sign flipped), exact resume,
health guards, the ptx term, config validation."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from llm_gym import Logger, Policy, SamplingConfig
from llm_gym.agents.ppo import PPO, KLWarning, OverOptimizationWarning, PPOConfig, TrainingDivergedError
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
        (batch, weight), = agent._ptx_batches(1)
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


def test_kl_guards_warn(policy: Policy) -> None:
    agent = make_agent(policy, count_token("the"), kl_explosion=5.0)
    with pytest.warns(KLWarning, match="negative"):
        agent._health_checks(torch.tensor([-0.5, -0.6, -0.4, -0.55]), 0.0, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        agent._health_checks(torch.tensor([0.05, -0.08, 0.02, -0.01]), 0.0, None)  # noise around zero is fine
    with pytest.warns(KLWarning, match="running away"):
        agent._health_checks(torch.tensor([7.0, 9.0, 8.0]), 0.0, None)


def test_rm_up_gold_down_warns_of_over_optimisation(policy: Policy) -> None:
    agent = make_agent(policy, count_token("the"), overopt_window=3, overopt_patience=2)
    kl = torch.tensor([0.1, 0.2])
    rm = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    gold = [0.5, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0, -0.1]
    with pytest.warns(OverOptimizationWarning, match="sign is flipped"):
        for r, g in zip(rm, gold):
            agent._health_checks(kl, r, g)
    # both rising, or gold flat with noise: no warning
    healthy = make_agent(policy, count_token("the"), overopt_window=3, overopt_patience=2)
    noisy = make_agent(policy, count_token("the"), overopt_window=3, overopt_patience=2)
    flat_gold = [0.74, 0.70, 0.75, 0.72, 0.73, 0.71, 0.74, 0.72]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for r, g in zip(rm, flat_gold):
            healthy._health_checks(kl, r, r)
            noisy._health_checks(kl, r, g)


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
