"""The SB3 adapter: cumulative learn, save/load, the whole control-task Christiano loop end to end, the old import path."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

import llm_gym.agents.sb3
from llm_gym import Logger, PreferenceStore
from llm_gym.agents import mlp_reward, segments
from llm_gym.agents.mlp_reward import MLPRewardLearner, MLPRewardLearnerConfig
from llm_gym.agents.preference_loop import DisagreementSelector, PreferenceLoop, PreferenceLoopConfig
from llm_gym.agents.sb3 import SB3Agent
from llm_gym.agents.segments import SegmentSource, segment_oracle
from llm_gym.envs import wrappers
from llm_gym.envs.wrappers import LearnedRewardWrapper

from cartpole import cartpole_buffer, fill
from doubles import SlowOracle


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
    assert [int(a) for a in again.act(obs, deterministic=True)] == [int(a) for a in agent.act(obs, deterministic=True)]
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
    config = PreferenceLoopConfig(total_labels=50, initial_labels=20, labels_per_round=10, steps_per_round=512, oversample=2,
                                  on_no_answers="wait" if late else "raise")  # the slow labeller answers nothing at first
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


def test_the_parts_stay_importable_from_sb3() -> None:
    """Scripts written before the split import every part from `llm_gym.agents.sb3`: the same objects."""
    homes = {"LearnedRewardWrapper": wrappers, "MLPRewardLearner": mlp_reward, "MLPRewardLearnerConfig": mlp_reward,
             "RewardNet": mlp_reward, "Segment": segments, "SegmentBuffer": segments, "SegmentSource": segments,
             "action_features": segments, "segment_oracle": segments, "SB3Agent": llm_gym.agents.sb3}
    assert set(llm_gym.agents.sb3.__all__) == set(homes)
    for name, home in homes.items():
        assert getattr(llm_gym.agents.sb3, name) is getattr(home, name), name
