"""Trajectory segments: recording through the wrapper, fixed-length segments with absorbing steps, save/load, the oracle."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from llm_gym import Query
from llm_gym.agents.segments import Segment, segment_oracle
from llm_gym.envs.wrappers import LearnedRewardWrapper

from cartpole import cartpole_buffer, fill


def run_episode(env: LearnedRewardWrapper, action: int = 0) -> int:
    """Steps until the episode ends; returns how many."""
    done, steps = False, 0
    while not done:
        *_, term, trunc, _ = env.step(action)
        done, steps = term or trunc, steps + 1
    return steps


def test_the_wrapper_records_each_finished_episode_into_the_buffer() -> None:
    buffer = cartpole_buffer()
    env = LearnedRewardWrapper(gym.make("CartPole-v1"), lambda obs, act: np.full(len(obs), -3.0), buffer)
    env.reset(seed=0)
    steps = run_episode(env)
    assert len(buffer.episodes) == 1 and len(buffer.episodes[0][0]) == steps
    obs, act, true_reward, terminated = buffer.episodes[0]
    assert terminated and (true_reward == 1.0).all(), "the env's own reward is recorded, not the learned one"
    np.testing.assert_array_equal(act, np.tile([1.0, 0.0], (steps, 1)))  # action 0, one-hot


def test_a_reset_mid_episode_discards_the_unfinished_episode() -> None:
    buffer = cartpole_buffer()
    env = LearnedRewardWrapper(gym.make("CartPole-v1"), None, buffer)
    env.reset(seed=0)
    env.step(0)
    env.step(0)
    env.reset(seed=1)
    steps = run_episode(env)
    assert len(buffer.episodes) == 1 and len(buffer.episodes[0][0]) == steps, "the two steps before the reset are dropped"


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
