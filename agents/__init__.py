"""llm_gym agents: algorithms behind one interface (`Agent`), and the SFT training stage.

    base.py              Agent (learn / act / save / load, as Stable-Baselines3's BaseAlgorithm) and Callback
    ppo.py, ppo_math.py  PPO for language models (KL to the reference, ptx, GAE, clipping) and its formulas
    sft.py               supervised fine-tuning on demonstrations (InstructGPT stage 1)
    preference_loop.py   the Christiano et al. 2017 loop: an inner agent, an oracle, a reward learner, a query selector
    lm_preferences.py    its language-model parts: queries of sampled completions, reward-model refits
    segments.py          its control-task parts: trajectory segments with absorbing terminations, a segment oracle
    mlp_reward.py        an MLP reward ensemble over (observation, action) for control tasks
    sb3.py               Stable-Baselines3 algorithms as Agents, trained on a learned reward
"""

from llm_gym.agents.base import Agent, Callback
from llm_gym.agents.lm_preferences import CompletionSource, RewardModelLearner
from llm_gym.agents.mlp_reward import MLPRewardLearner, MLPRewardLearnerConfig, RewardNet
from llm_gym.agents.ppo import PPO, KLWarning, OverOptimizationWarning, PPOConfig, TrainingDivergedError
from llm_gym.agents.ppo_math import AdaptiveKLController, FixedKLController
from llm_gym.agents.preference_loop import (
    DisagreementSelector,
    PreferenceLoop,
    PreferenceLoopConfig,
    QuerySelector,
    QuerySource,
    RandomSelector,
    RewardLearner,
)
from llm_gym.agents.sb3 import SB3Agent
from llm_gym.agents.segments import Segment, SegmentBuffer, SegmentSource, action_features, segment_oracle
from llm_gym.agents.sft import SFTConfig, SFTTrainer

__all__ = [
    "PPO",
    "AdaptiveKLController",
    "Agent",
    "Callback",
    "CompletionSource",
    "DisagreementSelector",
    "FixedKLController",
    "KLWarning",
    "MLPRewardLearner",
    "MLPRewardLearnerConfig",
    "OverOptimizationWarning",
    "PPOConfig",
    "PreferenceLoop",
    "PreferenceLoopConfig",
    "QuerySelector",
    "QuerySource",
    "RandomSelector",
    "RewardLearner",
    "RewardModelLearner",
    "RewardNet",
    "SB3Agent",
    "SFTConfig",
    "SFTTrainer",
    "Segment",
    "SegmentBuffer",
    "SegmentSource",
    "TrainingDivergedError",
    "action_features",
    "segment_oracle",
]
