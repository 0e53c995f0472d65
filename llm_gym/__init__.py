"""llm_gym: RLHF as reinforcement learning, with a language model as the agent.

Each prompt is a one-step episode (a contextual bandit): the environment hands out a
prompt, the agent answers with a completion, a reward function scores it. Importing
`llm_gym` registers the environments (`llm_gym/PromptBandit-v0`,
`llm_gym/ReviewSentiment-v0`) with Gymnasium.
"""

from llm_gym.data import DatasetError, PromptDataset, load_demonstrations, load_prompts
from llm_gym.logger import Logger, make_run_dir
from llm_gym.oracles import PreferenceOracle, RecordedOracle, SyntheticOracle, TerminalOracle, collect
from llm_gym.policy import Evaluation, Policy, Rollout, SamplingConfig, default_device, process_logits
from llm_gym.preferences import Answer, Comparison, Query
from llm_gym.evaluation import PolicyReport, evaluate_policy, kl_to_reference, win_rate
from llm_gym.reward import RewardFn, score_batch, validate_rewards
from llm_gym.reward_model import (
    RewardEnsemble,
    RewardModel,
    RewardTrainer,
    RewardTrainerConfig,
    pairwise_loss,
    ranking_loss,
)
from llm_gym.store import PreferenceStore, StoreError
from llm_gym.task import Demonstration, GoldScorer, ReviewTask, ReviewTaskConfig, generate_review_task
from llm_gym.tiny_lm import (
    PretrainReport,
    TinyLMConfig,
    build_builtin_model,
    default_cache_dir,
    find_builtin_model,
    perplexity,
    train_tokenizer,
)
from llm_gym.web import WebOracle

from llm_gym import envs  # noqa: E402  (registers the environments)
from llm_gym import agents  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Answer",
    "Comparison",
    "DatasetError",
    "Evaluation",
    "PolicyReport",
    "PreferenceOracle",
    "RewardEnsemble",
    "RewardModel",
    "RewardTrainer",
    "RewardTrainerConfig",
    "evaluate_policy",
    "kl_to_reference",
    "pairwise_loss",
    "ranking_loss",
    "win_rate",
    "PreferenceStore",
    "Query",
    "RecordedOracle",
    "StoreError",
    "SyntheticOracle",
    "TerminalOracle",
    "WebOracle",
    "collect",
    "Demonstration",
    "GoldScorer",
    "Logger",
    "Policy",
    "PretrainReport",
    "PromptDataset",
    "ReviewTask",
    "ReviewTaskConfig",
    "RewardFn",
    "Rollout",
    "SamplingConfig",
    "TinyLMConfig",
    "agents",
    "build_builtin_model",
    "default_cache_dir",
    "default_device",
    "envs",
    "find_builtin_model",
    "generate_review_task",
    "load_demonstrations",
    "load_prompts",
    "make_run_dir",
    "perplexity",
    "process_logits",
    "score_batch",
    "train_tokenizer",
    "validate_rewards",
]
