"""The learned-reward wrapper on its own: plain Gymnasium envs, a learned reward function, the true reward kept in info."""

from __future__ import annotations

import doctest
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from llm_gym.envs import wrappers
from llm_gym.envs.wrappers import LearnedRewardWrapper


class ListRecorder:
    """A `StepRecorder` that keeps every step in a list and every discarded stream."""

    def __init__(self) -> None:
        self.steps: list[tuple] = []
        self.discarded: list[int] = []

    def record(self, stream, obs, action, true_reward, terminated, truncated) -> None:
        self.steps.append((stream, np.array(obs), action, true_reward, terminated, truncated))

    def discard(self, stream) -> None:
        self.discarded.append(stream)


def checker_warnings(env: gym.Env) -> set[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=True)
    return {str(w.message) for w in caught}


def test_wrapper_pays_the_learned_reward_and_keeps_the_true_one() -> None:
    env = LearnedRewardWrapper(gym.make("CartPole-v1"), lambda obs, act: np.full(len(obs), -3.0))
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


def test_the_reward_fn_sees_the_observation_the_action_was_taken_in() -> None:
    calls = []

    def reward_fn(obs, actions):
        calls.append((obs.copy(), actions.copy()))
        return obs[:, 2] * np.where(actions == 1, 1.0, -1.0)  # pole angle, signed by the action

    recorder = ListRecorder()
    env = LearnedRewardWrapper(gym.make("CartPole-v1"), reward_fn, recorder)
    obs, _ = env.reset(seed=0)
    assert recorder.discarded == [env.stream], "a reset drops the stream's unfinished episode"
    for action in (1, 0, 1):
        next_obs, reward, terminated, truncated, info = env.step(action)
        seen_obs, seen_actions = calls[-1]
        assert seen_obs.shape == (1, 4) and seen_actions.shape == (1,)
        np.testing.assert_array_equal(seen_obs[0], obs)
        assert seen_actions[0] == action
        assert reward == pytest.approx(obs[2] * (1.0 if action == 1 else -1.0)) and info["true_reward"] == 1.0
        stream, rec_obs, rec_action, rec_true, rec_term, rec_trunc = recorder.steps[-1]
        assert stream == env.stream and rec_action == action and rec_true == 1.0
        assert (rec_term, rec_trunc) == (terminated, truncated)
        np.testing.assert_array_equal(rec_obs, obs)
        obs = next_obs
    assert len(recorder.steps) == 3


def test_without_a_reward_fn_the_env_reward_passes_through() -> None:
    plain, wrapped = gym.make("Pendulum-v1"), LearnedRewardWrapper(gym.make("Pendulum-v1"))
    o1, _ = plain.reset(seed=0)
    o2, _ = wrapped.reset(seed=0)
    np.testing.assert_array_equal(o1, o2)
    actions = np.random.default_rng(0).uniform(-2, 2, size=(200, 1)).astype(np.float32)  # Box actions
    total = 0.0
    for a in actions:
        o1, r1, t1, tr1, _ = plain.step(a)
        o2, r2, t2, tr2, info = wrapped.step(a)
        np.testing.assert_array_equal(o1, o2)
        assert r2 == pytest.approx(r1) and info["true_reward"] == r2 and (t1, tr1) == (t2, tr2)
        total += r2
    assert tr2, "Pendulum's time limit ends the episode"
    true, learned = wrapped.pop_episode_stats()
    assert true == learned and true[0] == pytest.approx(total)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])  # Discrete and Box actions
def test_check_env_warns_about_nothing_the_wrapped_env_does_not(env_id) -> None:
    """Gymnasium's checker finds nothing new in the wrapper: only its note that any wrapper is not the raw env."""
    reward_fn = lambda obs, actions: -np.abs(obs).sum(-1)  # noqa: E731
    inner = checker_warnings(gym.make(env_id).unwrapped)
    wrapped = checker_warnings(LearnedRewardWrapper(gym.make(env_id).unwrapped, reward_fn, ListRecorder()))
    added = wrapped - inner
    assert len(added) == 1 and "is different from the unwrapped version" in added.pop()
    assert inner <= wrapped


def test_the_module_example_runs() -> None:
    result = doctest.testmod(wrappers)
    assert result.attempted > 0 and result.failed == 0


def test_the_wrapper_needs_no_agent_code() -> None:
    """An environment wrapper: importing it loads neither SB3, torch, nor llm_gym's agents."""
    code = (
        "import sys\n"
        "import llm_gym.envs.wrappers\n"
        "heavy = ('stable_baselines3', 'torch', 'llm_gym.agents')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
