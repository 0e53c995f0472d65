"""llm_gym agents: algorithms behind one interface (`Agent`), and the SFT training stage."""

from llm_gym.agents.base import Agent, Callback
from llm_gym.agents.lm_preferences import CompletionSource, RewardModelLearner
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
from llm_gym.agents.sft import SFTConfig, SFTTrainer

__all__ = [
    "PPO",
    "AdaptiveKLController",
    "Agent",
    "Callback",
    "CompletionSource",
    "DisagreementSelector",
    "PreferenceLoop",
    "PreferenceLoopConfig",
    "QuerySelector",
    "QuerySource",
    "RandomSelector",
    "RewardLearner",
    "RewardModelLearner",
    "FixedKLController",
    "KLWarning",
    "OverOptimizationWarning",
    "PPOConfig",
    "SFTConfig",
    "SFTTrainer",
    "TrainingDivergedError",
]
