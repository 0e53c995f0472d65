"""An experiment as one config: the model, the task, the labeller, each stage's hyperparameters, the seed.

`ExperimentConfig` is what `llm-gym run` reads (a TOML file maps onto it through
`llm_gym.infra.configio.load_config`) and what the Python API passes to `Pipeline`: one
source of truth. Each field is documented where it is declared (`llm-gym run --help`
and the commented `experiments/instructgpt/config.toml` show the same text) and checked
when the config is built, so a bad value fails before anything runs.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llm_gym.agents.ppo import PPOConfig
from llm_gym.agents.preference_loop import PreferenceLoopConfig
from llm_gym.agents.sft import SFTConfig
from llm_gym.feedback.oracles import HUMAN_AGREEMENT
from llm_gym.infra.configio import ConfigError, apply_overrides, check_finite, from_dict, read_config_file, to_dict
from llm_gym.models.policy import SamplingConfig
from llm_gym.models.reward_trainer import RewardTrainerConfig
from llm_gym.tasks.tiny_lm import TinyLMConfig

__all__ = [
    "BUILTIN_ENV",
    "INPUT_PATHS",
    "REWARDS",
    "EvaluationSpec",
    "ExperimentConfig",
    "LoopStage",
    "ModelSpec",
    "OracleSpec",
    "PPOStage",
    "RewardModelStage",
    "STAGES",
    "TaskSpec",
    "load_experiment",
    "resolve_input_paths",
]

REWARDS = ("reward_model", "gold", "env")
"""What an RL run can be paid by name; any other `reward` is an import path "module:name" of a reward function."""


def check_reward(owner: str, reward: object) -> None:
    """Refuse a `reward` that is neither one of `REWARDS` nor an import path "module:name" (`owner`: "PPOStage")."""
    module, sep, name = reward.partition(":") if isinstance(reward, str) else ("", "", "")
    if reward not in REWARDS and not (sep and module and name):
        raise ValueError(f'{owner}.reward must be "reward_model", "gold", "env" or the import path "module:name" of a '
                         f"reward function(prompts, completions) -> floats, got {reward!r}")


STAGES = ("pretrain", "sft", "reward_model", "ppo", "agent", "preference_loop", "evaluation")
"""The pipeline's stages, in order."""


@dataclass(frozen=True)
class ModelSpec:
    """Which causal language model the pipeline starts from."""

    name_or_path: str = ""
    """A Hugging Face model name or local folder written by `save_pretrained` (in an experiment file, a folder is
    found relative to the file's folder); "" = the built-in tiny GPT-2, built (and cached) by the `pretrain` stage
    from `ExperimentConfig.pretrain`. A given model is the run's pretrained policy: nothing is pretrained, and
    `stages` need not list "pretrain"."""
    cache_dir: str = ""
    """Where the built-in model is cached ("" = $LLM_GYM_CACHE or ~/.cache/llm_gym); written to, so a relative path is
    relative to the folder the command runs in, like `--cache-dir`."""
    lora: dict[str, Any] = field(default_factory=dict)
    """LoRA instead of full fine-tuning (needs `pip install llm-gym[peft]`): the fields of `peft.LoraConfig`, e.g.
    {r = 8, lora_alpha = 16, target_modules = ["q_proj", "v_proj"]}; {} = train every weight. Each stage that
    trains the policy (SFT, the PPO and agent runs, the preference loops) trains an adapter on the model it starts
    from, with that model (the adapter off) as its KL reference, and hands its policy on merged (a plain model
    folder); the reward model trains an adapter on its backbone and its whole head."""

    def __post_init__(self) -> None:
        check_finite(self)
        for name in ("name_or_path", "cache_dir"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"ModelSpec.{name} must be a string, got {getattr(self, name)!r}")
        if not isinstance(self.lora, dict) or not all(isinstance(k, str) for k in self.lora):
            raise TypeError(f"ModelSpec.lora must be a table of peft.LoraConfig fields (e.g. {{r = 8, lora_alpha = 16, "
                            f"target_modules = [\"q_proj\", \"v_proj\"]}}) or {{}}, got {self.lora!r}")


BUILTIN_ENV = "llm_gym/ReviewSentiment-v0"
"""The built-in review task's environment: the default task, generated from `ExperimentConfig.pretrain.task`."""


@dataclass(frozen=True)
class TaskSpec:
    """Which task the experiment runs on: a registered Gymnasium environment, optionally with your files.

    The pipeline makes the environment once (`gymnasium.make(env, **env_kwargs)`) and reads its
    `task` (prompts, and whichever of held-out prompts, demonstrations, pretraining text and gold
    judge it has; see `llm_gym.core.task`) and its own reward function; any prompt-bandit
    environment has both (`llm_gym/PromptBandit-v0` over your prompts and reward, or your own
    registration of it). Files given here replace the matching part of the task; in an experiment
    file, a relative path is found beside the file (`--set` values: relative to the folder the
    command runs in). Each file is part of the fingerprint of the stages that read it by its
    content: edit it and they run again. Gold, win-rate and RM-vs-gold figures appear only when
    the task has a gold judge, perplexity only when it has held-out text.
    """

    env: str = BUILTIN_ENV
    """A Gymnasium environment id ("module:Name-v0" imports `module` first, which may register it); the
    default is the built-in review task, generated from `pretrain.task` (the corpus the built-in model
    is pretrained on)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for `gymnasium.make(env, ...)`, e.g. {dataset = "prompts.jsonl", reward_fn =
    "my_pkg.rewards:length"} for llm_gym/PromptBandit-v0 (reward functions and datasets as import
    paths and file paths)."""
    prompts: str = ""
    """Training prompts for the RL runs, the preference loops and the reward model's queries, instead of the
    environment's: a .jsonl, .json, .csv or .parquet file (the field `prompt_field`) or .txt (one per line); "" = the task's."""
    eval_prompts: str = ""
    """Held-out prompts for the evaluation, same formats; "" = the task's (or its training prompts if it has none)."""
    demonstrations: str = ""
    """SFT data: a .jsonl, .json, .csv or .parquet file of records with a prompt and a completion (`prompt_field`,
    `completion_field`); "" = the task's (none: SFT is skipped)."""
    gold: str = ""
    """The gold judge (plays the human: synthetic labels, gold score, win rate): "" = the task's own (the
    built-in task has one, most environments none), or "module:name" of a reward function."""
    prompt_field: str = "prompt"
    """The field (JSON key, CSV/Parquet column) holding the prompt in the `prompts`, `eval_prompts` and
    `demonstrations` files, e.g. "question". A field of chat messages ([{role, content}, ...], TRL's
    conversational layout) is rendered with the chat template of `model.name_or_path`'s tokenizer."""
    completion_field: str = "completion"
    """The field holding a demonstration's answer (text, or the assistant's messages). A demonstration may also be
    one `messages` conversation whose last assistant turn is the answer."""

    def __post_init__(self) -> None:
        check_finite(self)
        for name in ("env", "prompts", "eval_prompts", "demonstrations", "gold", "prompt_field", "completion_field"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"TaskSpec.{name} must be a string, got {getattr(self, name)!r}")
        if not self.env:
            raise ValueError(f'TaskSpec.env must name a Gymnasium environment, e.g. "{BUILTIN_ENV}"')
        if not isinstance(self.env_kwargs, dict) or not all(isinstance(k, str) for k in self.env_kwargs):
            raise TypeError(f"TaskSpec.env_kwargs must be a table of keyword arguments, got {self.env_kwargs!r}")
        if self.gold and ":" not in self.gold:
            raise ValueError(f'TaskSpec.gold must be "" or an import path "module:name", got {self.gold!r}')
        for name in ("prompt_field", "completion_field"):
            if not getattr(self, name):
                raise ValueError(f"TaskSpec.{name} must name a field of the data files, got an empty string")


_ORACLE_FIELDS = ("prompt_field", "chosen_field", "rejected_field", "completions_field", "preference_field", "ranks_field",
                  "labeller_field")


@dataclass(frozen=True)
class OracleSpec:
    """Who labels the reward model's comparisons."""

    kind: Literal["synthetic", "recorded", "terminal"] = "synthetic"
    """`synthetic`: the task's gold judge under Bradley-Terry noise; `recorded`: replay the comparison file `path`
    (its comparisons are the training set); `terminal`: a person answers at the keyboard."""
    temperature: float | None = None
    """Synthetic oracle: the raw form, a Bradley-Terry / Plackett-Luce temperature in gold-score units (0 =
    noiseless). Its meaning depends on the judge's units (on the built-in task 1.0 with 10% flips gives labels that
    agree with the gold order only 63% of the time), so it is not the default: None = the labeller is calibrated to
    `agreement` instead. Setting it (`--set oracle.temperature=0.5`) chooses the raw form; set one of the two."""
    agreement: float | None = None
    """Synthetic oracle: how often the labels should agree with the gold order, in (0.5, 1 - flip_prob]. None (the
    default) with `temperature` unset means 0.73 (`HUMAN_AGREEMENT`): human labellers agree with each other about
    that often (InstructGPT 72.6 +- 1.5%, Ouyang et al. 2022; Stiennon et al. 2020 73 +- 4%). The temperature that
    gives it is found on the reward-model stage's own queries (all of them, answered before or not, so a resumed
    stage gets the same one) and recorded in the stage's result (`oracle_temperature`, `calibration`,
    `label_agreement`); a preference loop's oracle finds it on its first round's queries (on a resumed loop, on the
    queries it asked before). Setting both this and `temperature` is refused as a contradiction, except temperature
    1.0, which is how configs written before the calibrated default recorded an agreement: it is read as unset."""
    flip_prob: float = 0.1
    """Synthetic oracle: probability of inverting a pairwise label (Christiano et al.'s random answers)."""
    tie_margin: float = 0.0
    """Synthetic oracle: pairwise gold differences up to this are answered as ties."""
    path: str = ""
    """Recorded oracle: the comparison file, .jsonl/.json/.csv/.parquet (see `llm_gym.feedback.recorded` for the
    layouts and `*_field` below for other field names); in an experiment file, a
    relative path is found beside the file. Its content is part of the labelling stages' fingerprints: edit the
    file (reverse a label, add some) and a rerun imports its answers into a fresh store, the old store moved
    aside, never deleted."""
    prompt_field: str = "prompt"
    """Recorded oracle: the field holding the prompt (text or chat messages). Without one in a record, the prompt is
    the shared beginning of `chosen` and `rejected` (HH-RLHF's layout; shared leading messages in TRL's)."""
    chosen_field: str = "chosen"
    """Recorded oracle: the field holding the preferred completion of a pairwise record."""
    rejected_field: str = "rejected"
    """Recorded oracle: the field holding the other completion of a pairwise record."""
    completions_field: str = "completions"
    """Recorded oracle: the field holding the completions of a record ranked by `ranks_field` or `preference_field`."""
    preference_field: str = "preference"
    """Recorded oracle: the field holding a pairwise answer "first", "second" or "tie"."""
    ranks_field: str = "ranks"
    """Recorded oracle: the field holding one rank per completion (0 = best, equal ranks = a tie)."""
    labeller_field: str = "labeller"
    """Recorded oracle: the field naming who labelled a record (optional in each record)."""

    def field_names(self) -> dict[str, str]:
        """The `*_field` settings as keyword arguments of `RecordedOracle.from_file`."""
        return {name: getattr(self, name) for name in _ORACLE_FIELDS}

    def __post_init__(self) -> None:
        check_finite(self)
        for name in _ORACLE_FIELDS:
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"OracleSpec.{name} must name a field of the comparison file, got {getattr(self, name)!r}")
        if self.kind not in ("synthetic", "recorded", "terminal"):
            raise ValueError(f"OracleSpec.kind must be 'synthetic', 'recorded' or 'terminal', got {self.kind!r}")
        if self.kind == "recorded" and not self.path:
            raise ValueError("OracleSpec.kind='recorded' needs path = the file of comparisons (.jsonl, .json, .csv or .parquet)")
        if self.temperature is not None and not self.temperature >= 0:
            raise ValueError(f"OracleSpec.temperature must be >= 0 (0 = noiseless) or None (calibrated to `agreement`), "
                             f"got {self.temperature}")
        if not 0 <= self.flip_prob <= 1 or not self.tie_margin >= 0:
            raise ValueError(f"OracleSpec needs flip_prob in [0, 1] and tie_margin >= 0; got {self.flip_prob}, {self.tie_margin}")
        if self.agreement is not None:
            if isinstance(self.agreement, bool) or not isinstance(self.agreement, (int, float)):
                raise ValueError(f"OracleSpec.agreement must be a number in (0.5, 1] or None, got {self.agreement!r}")
            if self.temperature == 1.0:  # how configs written before the calibrated default recorded an agreement
                object.__setattr__(self, "temperature", None)
            if self.temperature is not None:
                raise ValueError(
                    f"OracleSpec: set temperature ({self.temperature}) or agreement ({self.agreement}), not both: "
                    "agreement chooses the temperature that gives it; remove one (`--set oracle.agreement=none` for the "
                    "raw temperature form)")
            if not 0.5 < self.agreement <= 1:
                raise ValueError(f"OracleSpec.agreement must be in (0.5, 1] (0.5 is chance), got {self.agreement}; "
                                 f"{HUMAN_AGREEMENT} is how often human labellers agree")
        target = self.target_agreement
        if self.kind == "synthetic" and target is not None and target > 1 - self.flip_prob + 1e-12:  # as SyntheticOracle allows
            which = (f"OracleSpec.agreement = {target}" if self.agreement is not None else
                     f"The default labeller is calibrated to agreement {target} (oracle.agreement unset), which is")
            raise ValueError(
                f"{which} out of reach with flip_prob = {self.flip_prob}: the labels agree with the gold order at most "
                f"1 - flip_prob = {1 - self.flip_prob:.4g} of the time; lower flip_prob to at most {1 - target:.4g}, "
                f"set agreement to at most {1 - self.flip_prob:.4g}, or set oracle.temperature for the raw form")

    @property
    def target_agreement(self) -> float | None:
        """The agreement the synthetic labeller is calibrated to: `agreement`, or `HUMAN_AGREEMENT` when neither it nor
        `temperature` is set; None in the raw temperature form."""
        if self.agreement is not None:
            return float(self.agreement)
        return HUMAN_AGREEMENT if self.temperature is None else None


@dataclass(frozen=True)
class RewardModelStage:
    """How comparisons are collected and the reward model trained (InstructGPT stage 2)."""

    queries: int = 700
    """Comparison queries posed to the oracle (each compares `k` completions of one training prompt);
    700 4-way rankings are about 2,000 pairwise judgements of labelling effort (K-1 each)."""
    k: int = 4
    """Completions per query: 2 = pairwise; 4 to 9 = InstructGPT's K-way rankings (all C(K,2) pairs)."""
    sources: tuple[str, ...] = ("pretrained", "sft")
    """Policies whose samples are compared, the queries split evenly between them (InstructGPT compared
    outputs of several models): "pretrained" and/or "sft"."""
    members: int = 1
    """Reward models in the ensemble (each on a bootstrap resample; the reward is their mean)."""
    pooling: Literal["last", "mean"] = "last"
    """The head reads the final token's state ("last") or the mean of the completion's states ("mean")."""
    trainer: RewardTrainerConfig = field(default_factory=RewardTrainerConfig)
    """Epochs, batch size, learning rate, held-out split, ties."""

    def __post_init__(self) -> None:
        check_finite(self)
        if isinstance(self.queries, bool) or not isinstance(self.queries, int) or self.queries < 2:
            raise ValueError(f"RewardModelStage.queries must be an int >= 2, got {self.queries!r}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not 2 <= self.k <= 9:
            raise ValueError(f"RewardModelStage.k must be 2 (pairwise) or 4..9 (rankings), got {self.k!r}")
        if self.k == 3:
            raise ValueError("RewardModelStage.k=3 is not an InstructGPT ranking size; use 2 or 4..9")
        if not self.sources or any(s not in ("pretrained", "sft") for s in self.sources):
            raise ValueError(f"RewardModelStage.sources must be a non-empty list of 'pretrained'/'sft', got {self.sources!r}")
        if isinstance(self.members, bool) or not isinstance(self.members, int) or self.members < 1:
            raise ValueError(f"RewardModelStage.members must be a positive int, got {self.members!r}")
        if self.pooling not in ("last", "mean"):
            raise ValueError(f"RewardModelStage.pooling must be 'last' or 'mean', got {self.pooling!r}")


@dataclass(frozen=True)
class PPOStage:
    """One PPO run from the SFT policy (InstructGPT stage 3); set `config.ptx_coef` > 0 for PPO-ptx."""

    reward: str = "reward_model"
    """What the agent is paid: "reward_model" (the trained reward model), "gold" (the task's gold judge itself, an
    upper bound), "env" (the environment's own reward function: a verifiable reward, say), or the import path
    "module:name" of your reward function(prompts, completions) -> one float per completion (imported once, from
    the folder the command runs in, and tried on a first batch before anything trains)."""
    iterations: int = 40
    """PPO iterations (each samples `num_envs` prompts and updates on them)."""
    num_envs: int = 64
    """Prompts per iteration (the batched environment's size); a multiple of `config.minibatch_size`."""
    checkpoint_every: int = 10
    """Write a resumable checkpoint every this many iterations (0 = only at the end)."""
    config: PPOConfig = field(default_factory=lambda: PPOConfig(sampling=SamplingConfig(max_new_tokens=24), minibatch_size=16))
    """The agent's hyperparameters (KL coefficient, ptx coefficient, learning rates, epochs...)."""

    def __post_init__(self) -> None:
        check_finite(self)
        check_reward("PPOStage", self.reward)
        for name in ("iterations", "num_envs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"PPOStage.{name} must be a positive int, got {v!r}")
        if isinstance(self.checkpoint_every, bool) or not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            raise ValueError(f"PPOStage.checkpoint_every must be an int >= 0, got {self.checkpoint_every!r}")
        if self.num_envs % self.config.minibatch_size:
            raise ValueError(
                f"PPOStage.num_envs ({self.num_envs}) must be a multiple of config.minibatch_size ({self.config.minibatch_size})"
            )


ALGORITHMS = ("ppo", "rloo", "grpo", "best_of_n", "dpo")
"""The algorithms an `[agent.<run>]` table can name."""


def algorithm_config_class(algorithm: str) -> type:
    """The config dataclass of an algorithm (`PPOConfig`, `RLOOConfig`, `GRPOConfig`, `BestOfNConfig`, `DPOConfig`)."""
    if algorithm == "ppo":
        return PPOConfig
    if algorithm == "rloo":
        from llm_gym.agents.rloo import RLOOConfig

        return RLOOConfig
    if algorithm == "grpo":
        from llm_gym.agents.grpo import GRPOConfig

        return GRPOConfig
    if algorithm == "best_of_n":
        from llm_gym.agents.best_of_n import BestOfNConfig

        return BestOfNConfig
    if algorithm == "dpo":
        from llm_gym.agents.dpo import DPOConfig

        return DPOConfig
    raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}")


@dataclass(frozen=True)
class AgentStage:
    """One run of any algorithm from the SFT policy, named in the file as `[agent.<run>]` with `algorithm = "..."`.

    One experiment can hold PPO, RLOO, GRPO, best-of-N and DPO runs side by side (the study of
    `experiments/algorithms/`), and `llm-gym sweep --grid agent.<run>.algorithm=ppo,rloo,grpo`
    compares them. `config` is the algorithm's own config table (`PPOConfig`, `RLOOConfig`,
    `GRPOConfig`, `BestOfNConfig`, `DPOConfig`), checked as that class when the stage is built; a
    sweep over the algorithm shares one table, so it may hold only keys every algorithm of the
    grid knows (the on-policy ones share most; best-of-N and DPO few).
    """

    algorithm: Literal["ppo", "rloo", "grpo", "best_of_n", "dpo"] = "ppo"
    """The algorithm: "ppo", "rloo", "grpo" (Dr. GRPO: config scale_rewards = false, loss_type = "dr_grpo"),
    "best_of_n" (no training: sample N, keep the best by `reward`) or "dpo" (no reward model: it learns from
    the reward-model stage's labels)."""
    reward: str = "reward_model"
    """What the agent is paid (best-of-N: what it selects by): "reward_model", "gold", "env" (as for `PPOStage.reward`)
    or the import path "module:name" of your reward function. DPO ignores it."""
    iterations: int = 40
    """On-policy algorithms: iterations, each sampling `num_envs` completions and updating on them."""
    num_envs: int = 64
    """On-policy algorithms: completions per iteration (num_envs / group_size prompts, each group_size times);
    a multiple of the config's minibatch_size and group_size."""
    checkpoint_every: int = 10
    """On-policy algorithms: write a resumable checkpoint every this many iterations (0 = only at the end). DPO and
    best-of-N runs are short and start again when interrupted."""
    config: Any = field(default_factory=dict)
    """The algorithm's hyperparameters: a table of its config class's fields (the defaults where absent)."""

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"AgentStage.algorithm must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}")
        check_reward("AgentStage", self.reward)
        for name in ("iterations", "num_envs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"AgentStage.{name} must be a positive int, got {v!r}")
        if isinstance(self.checkpoint_every, bool) or not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            raise ValueError(f"AgentStage.checkpoint_every must be an int >= 0, got {self.checkpoint_every!r}")
        config_class = algorithm_config_class(self.algorithm)
        if not isinstance(self.config, config_class):
            if not isinstance(self.config, Mapping):
                raise TypeError(f"AgentStage.config must be a table of {config_class.__name__} settings, got {self.config!r}")
            object.__setattr__(self, "config", from_dict(config_class, self.config, "config"))
        minibatch = getattr(self.config, "minibatch_size", None)
        group = getattr(self.config, "group_size", 1)
        if self.algorithm in ("ppo", "rloo", "grpo") and (self.num_envs % minibatch or self.num_envs % group):
            raise ValueError(f"AgentStage.num_envs ({self.num_envs}) must be a multiple of config.minibatch_size "
                             f"({minibatch}) and of config.group_size ({group})")


def _default_ppo_runs() -> dict[str, PPOStage]:
    sampling = SamplingConfig(max_new_tokens=24)
    return {
        "ppo": PPOStage(config=PPOConfig(sampling=sampling, minibatch_size=16, kl_coef=0.2)),
        "ppo_ptx": PPOStage(config=PPOConfig(sampling=sampling, minibatch_size=16, kl_coef=0.2, ptx_coef=0.2)),
    }


def _default_loop_ppo() -> PPOConfig:
    return PPOConfig(sampling=SamplingConfig(max_new_tokens=24), minibatch_size=16, kl_coef=0.2, log_samples_every=0)


@dataclass(frozen=True)
class LoopStage:
    """One Christiano preference loop from SFT: PPO against a reward model retrained as labels arrive.

    The schedule decides the comparison of Ziegler et al. and Stiennon et al.: all labels up front
    (`initial_labels = total_labels`: the offline pipeline), a few up front and more every round
    (online, Christiano), or `mode = "rounds"` (retrain the RM from scratch each round, train the
    policy against it frozen: Stiennon's batch rounds).
    """

    iterations: int = 60
    """PPO iterations in total (each samples `num_envs` prompts)."""
    num_envs: int = 32
    """Prompts per PPO iteration; a multiple of `config.minibatch_size`."""
    k: int = 2
    """Completions per query (2 = pairwise; 4..9 = rankings)."""
    selector: Literal["random", "disagreement"] = "random"
    """Which proposed queries are asked: at random, or where the ensemble disagrees most (needs members >= 2)."""
    members: int = 1
    """Reward models in the ensemble."""
    schedule: PreferenceLoopConfig = field(default_factory=lambda: PreferenceLoopConfig(
        total_labels=500, initial_labels=125, labels_per_round=63, steps_per_round=320, oversample=1))
    """Label budget and its schedule (`steps_per_round` counts completions: iterations x num_envs)."""
    trainer: RewardTrainerConfig = field(default_factory=RewardTrainerConfig)
    """How the reward model is (re)trained each round."""
    config: PPOConfig = field(default_factory=_default_loop_ppo)
    """The inner PPO agent's hyperparameters."""

    def __post_init__(self) -> None:
        check_finite(self)
        for name in ("iterations", "num_envs", "members"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"LoopStage.{name} must be a positive int, got {v!r}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not 2 <= self.k <= 9 or self.k == 3:
            raise ValueError(f"LoopStage.k must be 2 (pairwise) or 4..9 (rankings), got {self.k!r}")
        if self.selector not in ("random", "disagreement"):
            raise ValueError(f"LoopStage.selector must be 'random' or 'disagreement', got {self.selector!r}")
        if self.selector == "disagreement" and self.members < 2:
            raise ValueError("LoopStage.selector='disagreement' needs members >= 2 (an ensemble to disagree)")
        if self.num_envs % self.config.minibatch_size:
            raise ValueError(
                f"LoopStage.num_envs ({self.num_envs}) must be a multiple of config.minibatch_size ({self.config.minibatch_size})"
            )


@dataclass(frozen=True)
class EvaluationSpec:
    """How every policy of the run is evaluated on held-out prompts."""

    prompts: int = 200
    """Held-out prompts (the first this many of the task's held-out prompts)."""
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=24))
    """Sampling settings for every policy (and for SFT, the reference of KL and win rate)."""
    seed: int = 999
    """Sampling seed (the same for every policy, so they answer the same prompts with the same noise)."""
    judge_temperature: float = 0.0
    """The win-rate judge is the task's gold judge as a synthetic oracle at this temperature (0 = noiseless; the
    labeller's own temperature, `oracle_temperature` in the reward-model stage's result when it is calibrated, and
    flip rate give the win rate a noisy labeller would report)."""
    judge_flip_prob: float = 0.0
    """The win-rate judge's probability of inverting its answer."""
    samples_per_prompt: int = 8
    """Tasks with verifiable answers only (a gold judge with `verifies_answers = True`, answering 1 or 0): n, the
    completions sampled per prompt for the sampled accuracy and pass@k (the first is the one the gold column scores;
    n - 1 more, plus one greedy completion, are drawn). Unused, and nothing extra sampled, on other tasks."""
    pass_k: tuple[int, ...] = (1, 4, 8)
    """Tasks with verifiable answers only: the k of each pass@k column (Chen et al. 2021's unbiased estimator from
    `samples_per_prompt` samples), each in [1, samples_per_prompt]."""

    def __post_init__(self) -> None:
        check_finite(self)
        if isinstance(self.prompts, bool) or not isinstance(self.prompts, int) or self.prompts < 1:
            raise ValueError(f"EvaluationSpec.prompts must be a positive int, got {self.prompts!r}")
        n = self.samples_per_prompt
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"EvaluationSpec.samples_per_prompt must be a positive int, got {n!r}")
        if not self.pass_k or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in self.pass_k):
            raise ValueError(f"EvaluationSpec.pass_k must be a non-empty list of positive ints, e.g. [1, 4, 8], got "
                             f"{list(self.pass_k)!r}")
        if len(set(self.pass_k)) != len(self.pass_k):
            raise ValueError(f"EvaluationSpec.pass_k lists a k twice: {list(self.pass_k)!r}")
        too_big = [k for k in self.pass_k if k > n]
        if too_big:
            raise ValueError(
                f"EvaluationSpec.pass_k has k = {too_big[0]} > samples_per_prompt = {n}: pass@k needs at least k samples "
                f"per prompt; set evaluation.samples_per_prompt = {max(too_big)} or drop {', '.join(map(str, too_big))} "
                f"from evaluation.pass_k"
            )
        if not self.judge_temperature >= 0 or not 0 <= self.judge_flip_prob <= 1:
            raise ValueError(
                f"EvaluationSpec needs judge_temperature >= 0 and judge_flip_prob in [0, 1], got "
                f"{self.judge_temperature!r}, {self.judge_flip_prob!r}"
            )


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: the model, the task, the oracle, the stages and their hyperparameters, the seed."""

    name: str = "instructgpt"
    """A name for the run (used in logs and sweep tables)."""
    seed: int = 0
    """Seed of every stage's randomness (sampling, label noise, minibatch order, head initialisation)."""
    out: str = "runs/instructgpt"
    """Output folder (the command line's `--out` overrides it). Written to, so a relative path is relative to the folder
    the command runs in, as `--out` is (the files an experiment reads are found beside its file instead)."""
    stages: tuple[str, ...] = STAGES
    """Stages to run, a subset of pretrain, sft, reward_model, ppo, agent, preference_loop, evaluation (their inputs
    must exist: run earlier, or in this list)."""
    threads: int = 1
    """torch CPU threads (1 avoids OpenMP oversubscription on small shared machines; 0 = torch's default)."""
    model: ModelSpec = field(default_factory=ModelSpec)
    """The starting model."""
    task: TaskSpec = field(default_factory=TaskSpec)
    """The task: a registered environment (the built-in review task by default) and files that replace its parts."""
    pretrain: TinyLMConfig = field(default_factory=TinyLMConfig)
    """The built-in model, built when `model.name_or_path` is "": its size and pretraining budget, and the built-in
    review task (`pretrain.task`) the default environment hands out. It is pretrained on the task's own pretraining
    text when the task has some (llm_gym/Arithmetic-v0's worksheets, your task's `pretrain_texts`), else on the
    review corpus of `pretrain.task`."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """Supervised fine-tuning on the task's demonstrations."""
    oracle: OracleSpec = field(default_factory=OracleSpec)
    """Who labels comparisons."""
    reward_model: RewardModelStage = field(default_factory=RewardModelStage)
    """Comparison collection and reward-model training."""
    ppo: dict[str, PPOStage] = field(default_factory=_default_ppo_runs)
    """PPO runs by name (each starts from SFT); a TOML table per run, e.g. [ppo.ppo_ptx]."""
    agent: dict[str, AgentStage] = field(default_factory=dict)
    """Runs of any algorithm by name (each starts from SFT), e.g. [agent.rloo] algorithm = "rloo"; none by default."""
    preference_loop: dict[str, LoopStage] = field(default_factory=dict)
    """Christiano preference loops by name (each starts from SFT, with its own label store); none by default."""
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    """Held-out evaluation of every policy."""

    def __post_init__(self) -> None:
        check_finite(self)
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"ExperimentConfig.name must be a non-empty string, got {self.name!r}")
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"ExperimentConfig.stages: unknown stage(s) {unknown}; choose from {list(STAGES)}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            raise ValueError(f"ExperimentConfig.threads must be an int >= 0 (0 = torch's default), got {self.threads!r}")
        for run in [*self.ppo, *self.agent, *self.preference_loop]:
            if not run or "/" in run or run in ("pretrained", "sft", "reward_model"):
                raise ValueError(f"ExperimentConfig: {run!r} cannot name a run (empty, has '/', or a reserved name)")
        sections = {"ppo": set(self.ppo), "agent": set(self.agent), "preference_loop": set(self.preference_loop)}
        for a, b in (("ppo", "agent"), ("ppo", "preference_loop"), ("agent", "preference_loop")):
            both = sections[a] & sections[b]
            if both:
                raise ValueError(f"ExperimentConfig: {sorted(both)} name runs in both [{a}] and [{b}]; rename one "
                                 "(a run's name is its row in the summary)")




INPUT_PATHS: tuple[tuple[str, str], ...] = (
    ("task", "prompts"), ("task", "eval_prompts"), ("task", "demonstrations"), ("oracle", "path"), ("model", "name_or_path"))
"""The fields that name files or folders an experiment reads (table, key). In an experiment file a relative path is
found beside the file, wherever the command runs; what the command writes (`out`, `model.cache_dir`) is relative to
the folder it runs in, like `--out` and `--cache-dir`."""


def _is_local_model(name_or_path: str, base: Path) -> bool:
    """Whether a relative `model.name_or_path` means a folder (beside `base`), not a Hugging Face model name."""
    return name_or_path.startswith(("./", "../", ".\\", "..\\")) or name_or_path in (".", "..") or (base / name_or_path).exists()


def resolve_input_paths(data: Mapping[str, Any], base: str | os.PathLike[str]) -> dict[str, Any]:
    """A copy of the experiment table `data` (a parsed file) whose relative input paths (`INPUT_PATHS`) are made absolute
    against the folder `base`; so the run's config.json names the same files from anywhere (`llm-gym eval`).

    `model.name_or_path` is a path when it starts with "./" or "../" or names something that exists under `base`;
    otherwise it is left as a Hugging Face model name ("gpt2", "owner/name"). A string in `task.env_kwargs` is a
    path when it names a file or folder under `base` (`dataset = "prompts.jsonl"`). "~" is expanded. Values of the
    wrong type are left for `from_dict` to report.
    """
    out = copy.deepcopy(dict(data))
    base = Path(os.path.abspath(base))
    for table, key in INPUT_PATHS:
        section = out.get(table)
        value = section.get(key) if isinstance(section, Mapping) else None
        if not isinstance(value, str) or not value:
            continue
        path = Path(value).expanduser()
        if path.is_absolute():
            section[key] = str(path)
        elif key != "name_or_path" or _is_local_model(value, base):
            section[key] = os.path.normpath(base / path)
    # an environment's own data files (`task.env_kwargs.dataset = "prompts.jsonl"`): a string that names a file
    # beside `base` is that file; anything else (an import path, a name, a number) is passed on as written
    kwargs = out.get("task", {}).get("env_kwargs") if isinstance(out.get("task"), Mapping) else None
    if isinstance(kwargs, dict):
        for key, value in kwargs.items():
            if isinstance(value, str) and value and not Path(value).expanduser().is_absolute() and (base / value).exists():
                kwargs[key] = os.path.normpath(base / value)
    return out


def load_experiment(path: str | os.PathLike[str] | None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The experiment of the file `path` (TOML or JSON; None = the defaults) with `--set` overrides, paths resolved.

    Relative input paths written in the file are found beside the file; relative input paths given as
    overrides are found from the current folder, as a shell user expects (`resolve_input_paths`).

    Raises:
        ConfigError: the file cannot be read or parsed, or its content or an override does not map onto
            `ExperimentConfig` (the message names the file and the key).
    """
    if path is None:
        data: dict[str, Any] = to_dict(ExperimentConfig())  # in full: --set changes one value of a run, not the set of runs
    else:
        data = resolve_input_paths(read_config_file(path), Path(path).parent)
    data = resolve_input_paths(apply_overrides(data, overrides), Path.cwd())
    try:
        return from_dict(ExperimentConfig, data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}" if path is not None else str(err)) from err
