"""llm_gym agents: algorithms behind one interface (`Agent`), and the SFT training stage.

    base.py              Agent (learn / act / save / load, as Stable-Baselines3's BaseAlgorithm) and Callback

  the shared parts of the on-policy language-model agents (each small and tested alone):
    on_policy.py         OnPolicyAgent / OnPolicyConfig: the loop (rollout -> reference -> advantages -> update)
    rollout.py           a prompt batch (grouped or not), a completion each, the environment's score
    reference.py         the frozen reference policy and its log-probs
    kl.py                the k1 / k2 / k3 KL estimators, where they are paid, fixed and adaptive coefficients
    ptx.py               InstructGPT's pretraining term for any on-policy agent
    monitors.py          negative / exploding KL and over-optimisation warnings
    checkpoint.py        checkpoint folders: atomic, sealed by a sha256 manifest, checked on open

  the algorithms, each its paper's equations:
    ppo.py, ppo_math.py  PPO for language models (KL in the reward, GAE, clipping, value head) and its formulas
    rloo.py              RLOO: REINFORCE with a leave-one-out baseline (Ahmadian et al. 2024)
    grpo.py              GRPO and Dr. GRPO: group-normalised advantages, KL in the loss (Shao et al. 2024; Liu et al. 2025)
    best_of_n.py         best-of-N sampling against a reward, with its analytic KL
    dpo.py               DPO / IPO / cDPO on preference pairs, no reward model (Rafailov et al. 2023)
    sft.py               supervised fine-tuning on demonstrations (InstructGPT stage 1)

    preference_loop.py   the Christiano et al. 2017 loop: an inner agent, an oracle, a reward learner, a query selector
    lm_preferences.py    its language-model parts: queries of sampled completions, reward-model refits
    segments.py          its control-task parts: trajectory segments with absorbing terminations, a segment oracle
    mlp_reward.py        an MLP reward ensemble over (observation, action) for control tasks
    sb3.py               Stable-Baselines3 algorithms as Agents, trained on a learned reward
"""

from llm_gym.agents.base import Agent, Callback
from llm_gym.agents.best_of_n import BestOfN, BestOfNConfig, best_of_n_kl
from llm_gym.agents.dpo import DPO, DPOConfig, dpo_loss
from llm_gym.agents.grpo import GRPO, GRPOConfig, group_advantages
from llm_gym.agents.kl import KLEstimator, kl_estimate
from llm_gym.agents.lm_preferences import CompletionSource, RewardModelLearner
from llm_gym.agents.mlp_reward import MLPRewardLearner, MLPRewardLearnerConfig, RewardNet
from llm_gym.agents.on_policy import OnPolicyAgent, OnPolicyConfig
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
from llm_gym.agents.reference import AdapterDisabledReference, make_reference
from llm_gym.agents.rloo import RLOO, RLOOConfig, leave_one_out_advantages
from llm_gym.agents.sb3 import SB3Agent
from llm_gym.agents.segments import Segment, SegmentBuffer, SegmentSource, action_features, segment_oracle
from llm_gym.agents.sft import SFTConfig, SFTTrainer

__all__ = [
    "DPO",
    "GRPO",
    "PPO",
    "RLOO",
    "BestOfN",
    "BestOfNConfig",
    "DPOConfig",
    "GRPOConfig",
    "KLEstimator",
    "OnPolicyAgent",
    "OnPolicyConfig",
    "RLOOConfig",
    "best_of_n_kl",
    "dpo_loss",
    "group_advantages",
    "kl_estimate",
    "leave_one_out_advantages",
    "make_reference",
    "AdaptiveKLController",
    "AdapterDisabledReference",
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
