"""llm_gym: RLHF as reinforcement learning, with a language model as the agent.

Each prompt is a one-step episode (a contextual bandit): the environment hands out a
prompt, the agent answers with a completion, a reward function scores it. Importing
`llm_gym` registers the environments (`llm_gym/PromptBandit-v0`,
`llm_gym/ReviewSentiment-v0`) with Gymnasium; everything else is imported when first
used, so `import llm_gym` (and `llm-gym --help`) stays fast.

The package, by role (each folder's `__init__` is its map):

    llm_gym.core       the shared vocabulary: preferences, the reward protocol, tasks, prompt datasets
    llm_gym.models     neural parts: the policy, reward models, LM helpers
    llm_gym.feedback   who answers comparisons: oracles, the durable store, the labelling page
    llm_gym.tasks      ready-made tasks at the edge: the built-in review task and its tiny model
    llm_gym.infra      plumbing: atomic writes, data parallelism, logging, config files
    llm_gym.app        the `llm-gym` command: experiment configs, the pipeline, sweeps, evaluation
    llm_gym.envs       Gymnasium environments (the `envs/` folder)
    llm_gym.agents     algorithms behind one `Agent` interface (the `agents/` folder)
"""

from __future__ import annotations

import importlib
from typing import Any

from llm_gym import envs  # noqa: F401  (registers the environments: register calls only; classes load on first use)

__version__ = "0.1.0"

# public name -> the module that defines it (imported on first access, PEP 562)
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["Answer", "Comparison", "Query"], "llm_gym.core.preferences"),
    **dict.fromkeys(["RewardFn", "score_batch", "validate_rewards"], "llm_gym.core.reward"),
    **dict.fromkeys(["Demonstration", "PromptTask", "Task"], "llm_gym.core.task"),
    **dict.fromkeys(["DatasetError", "PromptDataset", "load_demonstrations", "load_prompts", "read_records"],
                    "llm_gym.core.data"),
    **dict.fromkeys(["ChatError", "is_messages", "render_completion", "render_prompt"], "llm_gym.core.chat"),
    **dict.fromkeys(["AnswerChecker", "extract_answer", "numeric_match"], "llm_gym.core.answers"),
    **dict.fromkeys(["pass_at_k"], "llm_gym.core.metrics"),
    **dict.fromkeys(["Evaluation", "Policy", "Rollout", "SamplingConfig", "default_device", "process_logits"],
                    "llm_gym.models.policy"),
    **dict.fromkeys(["document_batch", "lm_loss", "perplexity"], "llm_gym.models.lm"),
    **dict.fromkeys(["LearnedReward", "RewardModel"], "llm_gym.models.reward_model"),
    **dict.fromkeys(["pairwise_loss", "ranking_loss"], "llm_gym.models.reward_losses"),
    **dict.fromkeys(["RewardTrainer", "RewardTrainerConfig"], "llm_gym.models.reward_trainer"),
    **dict.fromkeys(["RewardEnsemble", "load_reward_model", "reward_model_from_pretrained"], "llm_gym.models.reward_ensemble"),
    **dict.fromkeys(["PreferenceOracle", "RecordedOracle", "SyntheticOracle", "TerminalOracle", "collect"],
                    "llm_gym.feedback.oracles"),
    **dict.fromkeys(["PreferenceStore", "StoreError"], "llm_gym.feedback.store"),
    **dict.fromkeys(["load_comparisons"], "llm_gym.feedback.recorded"),
    **dict.fromkeys(["LabelServer", "WebOracle", "serve"], "llm_gym.feedback.web"),
    **dict.fromkeys(["GoldScorer", "ReviewTask", "ReviewTaskConfig", "generate_review_task"], "llm_gym.tasks.review"),
    **dict.fromkeys(["ArithmeticTask", "ArithmeticTaskConfig", "generate_arithmetic_task"], "llm_gym.tasks.arithmetic"),
    **dict.fromkeys(["PretrainReport", "TinyLMConfig", "build_builtin_model", "default_cache_dir", "find_builtin_model",
                     "train_tokenizer"], "llm_gym.tasks.tiny_lm"),
    **dict.fromkeys(["Distributed"], "llm_gym.infra.distributed"),
    **dict.fromkeys(["keep_freed_memory"], "llm_gym.infra.allocator"),
    **dict.fromkeys(["Logger", "make_run_dir"], "llm_gym.infra.logger"),
    **dict.fromkeys(["ConfigError", "load_config"], "llm_gym.infra.configio"),
    **dict.fromkeys(["PolicyReport", "evaluate_policy", "kl_to_reference", "win_rate"], "llm_gym.app.evaluation"),
    **dict.fromkeys(["ExperimentConfig", "TaskSpec"], "llm_gym.app.config"),
    **dict.fromkeys(["Pipeline"], "llm_gym.app.pipeline"),
    **dict.fromkeys(["format_summary"], "llm_gym.app.summary"),
    **dict.fromkeys(["CompletionSampler", "SelectionSampler", "selection_kl"], "llm_gym.models.sampler"),
    **dict.fromkeys(["AgentStage"], "llm_gym.app.config"),
    **dict.fromkeys(["agents"], "llm_gym.agents"),
}

__all__ = sorted([*_EXPORTS, "envs"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'llm_gym' has no attribute {name!r}")
    value = importlib.import_module(module) if module == f"llm_gym.{name}" else getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
