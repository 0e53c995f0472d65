"""The control-task Christiano loop: reward wrapper, segments and absorbing steps, segment oracle, MLP reward learner, SB3 adapter."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

from llm_gym import Logger, PreferenceStore, Query
from llm_gym.agents.preference_loop import DisagreementSelector, PreferenceLoop, PreferenceLoopConfig
from llm_gym.agents.sb3 import (
    LearnedRewardWrapper,
    MLPRewardLearner,
    MLPRewardLearnerConfig,
    SB3Agent,
    Segment,
    SegmentBuffer,
    SegmentSource,
    segment_oracle,
)
from llm_gym.feedback.oracles import collect

from doubles import SlowOracle


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cartpole_buffer(L: int = 20) -> SegmentBuffer:
    env = gym.make("CartPole-v1")
    return SegmentBuffer(env.observation_space, env.action_space, segment_length=L)


def fill(buffer: SegmentBuffer, steps: int, seed: int = 0, reward_fn=None) -> LearnedRewardWrapper:
    env = LearnedRewardWrapper(gym.make("CartPole-v1"), reward_fn, buffer)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    for _ in range(steps):
        *_, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            env.reset()
    return env


def test_wrapper_pays_the_learned_reward_and_keeps_the_true_one() -> None:
    buffer = cartpole_buffer()
    env = LearnedRewardWrapper(gym.make("CartPole-v1"), lambda obs, act: np.full(len(obs), -3.0), buffer)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(different from the unwrapped|infinity).*")  # CartPole's own
        check_env(env, skip_render_check=True)
    env.reset(seed=0)
    _, reward, _, _, info = env.step(0)
    assert reward == -3.0 and info["true_reward"] == 1.0
    done, steps = False, 1
    while not done:
        *_, term, trunc, _ = env.step(0)
        done, steps = term or trunc, steps + 1
    true, learned = env.pop_episode_stats()
    assert true == [float(steps)] and learned == [-3.0 * steps]
    assert env.pop_episode_stats() == ([], []), "stats are taken once"
    assert len(buffer.episodes) == 1 and len(buffer.episodes[0][0]) == steps


def test_segments_are_fixed_length_and_a_fall_lowers_the_true_return() -> None:
    buffer = cartpole_buffer(L=20)
    fill(buffer, 600)
    ids = buffer.cut(200, np.random.default_rng(0))
    segs = [buffer.get(i) for i in ids]
    assert all(s.obs.shape == (20, 4) and s.act.shape == (20, 2) and s.mask.shape == (20,) for s in segs)
    returns = np.array([s.true_return for s in segs])
    absorbing = np.array([20 - s.mask.sum() for s in segs])
    assert (absorbing > 0).any() and (absorbing == 0).any(), "random CartPole episodes give both kinds"
    np.testing.assert_allclose(returns, 20 - absorbing, err_msg="true return = real steps; absorbing steps pay 0")
    for s in segs:  # absorbing steps are zeros after the real ones
        k = int(s.mask.sum())
        assert s.mask[:k].all() and not s.obs[k:].any()
    with pytest.raises(KeyError, match="seg-999999"):
        buffer.get("seg-999999")


def test_buffer_save_load_round_trips(tmp_path) -> None:
    buffer = cartpole_buffer()
    fill(buffer, 200)
    ids = buffer.cut(5, np.random.default_rng(0))
    buffer.save(tmp_path / "segs.npz")
    other = cartpole_buffer()
    other.load(tmp_path / "segs.npz")
    for i in ids:
        for f in Segment._fields:
            np.testing.assert_array_equal(getattr(other.get(i), f), getattr(buffer.get(i), f))
    assert other.add(buffer.get(ids[0])) not in ids, "new ids do not collide with loaded ones"


def test_segment_oracle_prefers_higher_true_return_at_the_bradley_terry_rate() -> None:
    buffer = cartpole_buffer(L=10)
    mk = lambda r: buffer.add(Segment(np.zeros((10, 4), np.float32), np.zeros((10, 2), np.float32),  # noqa: E731
                                      np.asarray(r, np.float32), np.ones(10, np.float32)))
    hi, lo = mk(np.full(10, 0.1)), mk(np.zeros(10))  # returns 1.0 and 0.0
    queries = [Query("CartPole-v1", (hi, lo) if i % 2 else (lo, hi), query_id=f"q{i}") for i in range(2000)]
    exact = list(segment_oracle(buffer, np.random.default_rng(0), temperature=0.0).answer(queries[:50]))
    assert all((a.choice == "first") == (q.completions[0] == hi) for a, q in zip(exact, queries))
    noisy = list(segment_oracle(buffer, np.random.default_rng(0), temperature=1.0).answer(queries))
    rate = np.mean([(a.choice == "first") == (q.completions[0] == hi) for a, q in zip(noisy, queries)])
    assert abs(rate - 1 / (1 + np.exp(-1.0))) < 0.04  # sigmoid(1) = 0.731
    tie = list(segment_oracle(buffer, np.random.default_rng(0), tie_margin=2.0).answer(queries[:5]))
    assert all(a.choice == "tie" for a in tie)


def test_mlp_learner_fits_comparisons_and_fresh_restores() -> None:
    buffer = cartpole_buffer(L=20)
    fill(buffer, 1500)
    source = SegmentSource(buffer, "CartPole-v1", np.random.default_rng(1))
    with PreferenceStore(":memory:") as store:
        collect(segment_oracle(buffer, np.random.default_rng(2), temperature=0.0), source.propose(200), store)
        data = store.comparisons()
    train, test = data[:150], data[150:]
    learner = MLPRewardLearner(buffer, np.random.default_rng(0), MLPRewardLearnerConfig(epochs=10))
    initial = [p.detach().clone() for m in learner.members for p in m.parameters()]
    metrics = learner.fit(train)
    assert metrics["train_accuracy"] > 0.8
    held = learner.fit(test)  # heldout_accuracy is measured before training on the new comparisons
    assert held["heldout_accuracy"] > 0.8
    assert learner.scale > 0
    o, a = buffer.recent_obs_act(500)
    assert np.mean(learner.raw(o, a) > 0) > 0.9, "staying alive scores above the absorbing state's 0"
    d = learner.disagreement([Query(c.prompt, c.completions) for c in test[:10]])
    assert d.shape == (10,) and (d >= 0).all()
    learner.fit([], fresh=True)
    assert all(torch.equal(x, y) for x, y in zip(initial, (p for m in learner.members for p in m.parameters())))


def make_agent(buffer, learner, logger=None, n_envs=2):
    venv = DummyVecEnv([lambda: LearnedRewardWrapper(gym.make("CartPole-v1"), learner.reward if learner else None, buffer)
                        for _ in range(n_envs)])
    return SB3Agent(PPO("MlpPolicy", venv, n_steps=64, batch_size=64, n_epochs=1, seed=0, device="cpu"), logger)


def test_sb3_agent_learn_is_cumulative_and_save_load_round_trips(tmp_path) -> None:
    logger = Logger(None)
    agent = make_agent(None, None, logger)
    agent.learn(256)
    assert agent.num_timesteps == 256
    agent.learn(256)
    assert agent.num_timesteps == 256, "cumulative: nothing more to do"
    agent.learn(512)
    assert agent.num_timesteps == 512
    logger.dump(512)
    assert {"rollout/true_return", "rollout/learned_return"} <= set(logger.history)
    obs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    agent.save(tmp_path / "agent")
    again = SB3Agent.load(tmp_path / "agent", algorithm=PPO)
    assert [int(a) for a in again.act(obs)] == [int(a) for a in agent.act(obs)]
    assert again.num_timesteps == 512
    with pytest.raises(TypeError, match="algorithm="):
        SB3Agent.load(tmp_path / "agent")


@pytest.mark.parametrize("late", [False, True])
def test_preference_loop_on_cartpole_end_to_end(tmp_path, late) -> None:
    logger = Logger(None)
    buffer = cartpole_buffer(L=20)
    fill(buffer, 300)  # random-policy segments for the initial labels
    learner = MLPRewardLearner(buffer, np.random.default_rng(0), MLPRewardLearnerConfig(min_steps=10, epochs=2))
    inner = make_agent(buffer, learner, logger)
    oracle = segment_oracle(buffer, np.random.default_rng(1), temperature=1.0, flip_prob=0.05)
    if late:
        oracle = SlowOracle(oracle)
    store = PreferenceStore(tmp_path / "labels.sqlite")
    config = PreferenceLoopConfig(total_labels=50, initial_labels=20, labels_per_round=10, steps_per_round=512, oversample=2)
    loop = PreferenceLoop(inner, SegmentSource(buffer, "CartPole-v1", np.random.default_rng(2)), DisagreementSelector(),
                          oracle, learner, store, config, rng=np.random.default_rng(3), logger=logger)
    loop.learn(2048)
    counts = store.counts()
    assert counts["queries"] == 50 and inner.num_timesteps == 2048
    assert counts["answers"] == 50 if not late else 0 < counts["answers"] < 50
    assert {"oracle/labels_total", "oracle/answered_fraction", "reward_model/accuracy",
            "rollout/true_return", "rollout/learned_return"} <= set(logger.history)
    comps = store.comparisons()
    assert all(q.startswith("seg-") for c in comps for q in c.completions)
    store.close()
