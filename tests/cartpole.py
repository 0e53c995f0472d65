"""CartPole episodes recorded into a `SegmentBuffer`: the shared set-up of the control-task Christiano tests."""

from __future__ import annotations

import gymnasium as gym

from llm_gym.agents.segments import SegmentBuffer
from llm_gym.envs.wrappers import LearnedRewardWrapper


def cartpole_buffer(L: int = 20) -> SegmentBuffer:
    env = gym.make("CartPole-v1")
    return SegmentBuffer(env.observation_space, env.action_space, segment_length=L)


def fill(buffer: SegmentBuffer, steps: int, seed: int = 0, reward_fn=None) -> LearnedRewardWrapper:
    """`steps` random-action CartPole steps through a `LearnedRewardWrapper` recording into `buffer`."""
    env = LearnedRewardWrapper(gym.make("CartPole-v1"), reward_fn, buffer)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    for _ in range(steps):
        *_, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            env.reset()
    return env
