"""The InstructGPT pipeline as one resumable run: pretrain -> SFT -> reward model -> PPO runs -> evaluation.

An experiment is one `ExperimentConfig` (a TOML file maps onto it through
`llm_gym.infra.configio.load_config`; the Python API uses the same dataclasses, so there is no
second source of truth). `Pipeline(config, out).run()` executes the stages in order and
writes everything under `out`:

    out/config.json             the resolved config (every default filled in)
    out/state.json              per stage: a fingerprint of what it depends on, its result
    out/sft/                    the SFT policy (save_pretrained)
    out/labels.sqlite           every preference answer (PreferenceStore; never deleted: labels gathered
                                under other inputs are moved aside to labels.<fingerprint>.sqlite)
    out/reward_model/           the reward model or ensemble (safetensors + JSON)
    out/ppo/<run>/checkpoint/   PPO checkpoints (atomic), out/ppo/<run>/policy/ the result
    out/tb/<stage>/             TensorBoard event files
    out/summary.json            the table: one row per policy and per stage

Resuming: a stage whose fingerprint (its own config, the seed, and the fingerprints of the
stages it reads) matches the one in `state.json` is not run again; its stored result is
reused. A PPO run interrupted mid-way restarts from its last checkpoint (the TensorBoard
curve continues without duplicate steps). Labels already in the store are never asked
again. Change a hyperparameter and rerun into the same folder: only the stages it affects
(and those downstream) run again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import cached_property
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from llm_gym.agents.lm_preferences import CompletionSource, RewardModelLearner
from llm_gym.agents.ppo import PPO, PPOConfig
from llm_gym.agents.preference_loop import DisagreementSelector, PreferenceLoop, PreferenceLoopConfig, RandomSelector
from llm_gym.agents.sft import SFTConfig, SFTTrainer
from llm_gym.infra.atomic import write_json
from llm_gym.infra.configio import to_dict
from llm_gym.core.data import DatasetError, load_demonstrations, load_prompts
from llm_gym.infra.distributed import Distributed
from llm_gym.envs.prompt_bandit import PromptBanditVecEnv
from llm_gym.app.evaluation import evaluate_policy
from llm_gym.infra.logger import Logger
from llm_gym.feedback.oracles import PreferenceOracle, RecordedOracle, SyntheticOracle, TerminalOracle, collect
from llm_gym.models.policy import Policy, SamplingConfig
from llm_gym.core.preferences import Comparison, Query
from llm_gym.models.reward_model import RewardEnsemble, RewardModel, RewardTrainer, RewardTrainerConfig
from llm_gym.feedback.store import PreferenceStore
from llm_gym.tasks.review import Demonstration, GoldScorer, ReviewTask, generate_review_task
from llm_gym.tasks.tiny_lm import TinyLMConfig, build_builtin_model

__all__ = [
    "EvaluationSpec",
    "ExperimentConfig",
    "LoopStage",
    "ModelSpec",
    "OracleSpec",
    "PPOStage",
    "Pipeline",
    "RewardModelStage",
    "STAGES",
    "TaskSpec",
    "format_summary",
]

STAGES = ("pretrain", "sft", "reward_model", "ppo", "preference_loop", "evaluation")
"""The pipeline's stages, in order."""


@dataclass(frozen=True)
class ModelSpec:
    """Which causal language model the pipeline starts from."""

    name_or_path: str = ""
    """A Hugging Face model name or local folder (loaded with `from_pretrained`); "" = the built-in tiny
    GPT-2, built (and cached) by the `pretrain` stage from `ExperimentConfig.pretrain`."""
    cache_dir: str = ""
    """Where the built-in model is cached ("" = $LLM_GYM_CACHE or ~/.cache/llm_gym)."""

    def __post_init__(self) -> None:
        for name in ("name_or_path", "cache_dir"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"ModelSpec.{name} must be a string, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class TaskSpec:
    """Where prompts and demonstrations come from: the built-in review task (`pretrain.task`) or your files.

    The gold scorer (and so the synthetic oracle, `objective/gold` and the win-rate judge) is the
    built-in task's sentiment-and-fluency scorer whatever the prompts; held-out perplexity is
    measured on the built-in task's held-out text.
    """

    prompts: str = ""
    """Training prompts for PPO, the preference loops and the reward model's queries: a .jsonl (key
    "prompt"), .csv (column "prompt") or .txt (one per line) file; "" = the built-in task's prompts."""
    eval_prompts: str = ""
    """Held-out prompts for the evaluation, same formats; "" = the built-in task's held-out prompts."""
    demonstrations: str = ""
    """SFT data: a .jsonl file of {"prompt": ..., "completion": ...} lines; "" = the built-in demonstrations."""

    def __post_init__(self) -> None:
        for name in ("prompts", "eval_prompts", "demonstrations"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"TaskSpec.{name} must be a file path string or \"\", got {getattr(self, name)!r}")


@dataclass(frozen=True)
class OracleSpec:
    """Who labels the reward model's comparisons."""

    kind: Literal["synthetic", "recorded", "terminal"] = "synthetic"
    """`synthetic`: the gold scorer under Bradley-Terry noise; `recorded`: replay the JSONL file `path`
    (its comparisons are the training set); `terminal`: a person answers at the keyboard."""
    temperature: float = 1.0
    """Synthetic oracle: Bradley-Terry / Plackett-Luce temperature in gold-score units (0 = noiseless)."""
    flip_prob: float = 0.1
    """Synthetic oracle: probability of inverting a pairwise label (Christiano et al.'s random answers)."""
    tie_margin: float = 0.0
    """Synthetic oracle: pairwise gold differences up to this are answered as ties."""
    path: str = ""
    """Recorded oracle: the JSONL file (see `RecordedOracle.from_jsonl` for the layouts)."""

    def __post_init__(self) -> None:
        if self.kind not in ("synthetic", "recorded", "terminal"):
            raise ValueError(f"OracleSpec.kind must be 'synthetic', 'recorded' or 'terminal', got {self.kind!r}")
        if self.kind == "recorded" and not self.path:
            raise ValueError("OracleSpec.kind='recorded' needs path = the JSONL file of comparisons")
        if not self.temperature >= 0 or not 0 <= self.flip_prob <= 1 or not self.tie_margin >= 0:
            raise ValueError(
                f"OracleSpec needs temperature >= 0, flip_prob in [0, 1], tie_margin >= 0; got "
                f"{self.temperature}, {self.flip_prob}, {self.tie_margin}"
            )


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

    reward: Literal["reward_model", "gold"] = "reward_model"
    """The environment's reward: the trained reward model, or the gold scorer itself (an upper bound)."""
    iterations: int = 40
    """PPO iterations (each samples `num_envs` prompts and updates on them)."""
    num_envs: int = 64
    """Prompts per iteration (the batched environment's size); a multiple of `config.minibatch_size`."""
    checkpoint_every: int = 10
    """Write a resumable checkpoint every this many iterations (0 = only at the end)."""
    config: PPOConfig = field(default_factory=lambda: PPOConfig(sampling=SamplingConfig(max_new_tokens=24), minibatch_size=16))
    """The agent's hyperparameters (KL coefficient, ptx coefficient, learning rates, epochs...)."""

    def __post_init__(self) -> None:
        if self.reward not in ("reward_model", "gold"):
            raise ValueError(f"PPOStage.reward must be 'reward_model' or 'gold', got {self.reward!r}")
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
    """Held-out prompts (the built-in task's eval prompts, the first this many)."""
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=24))
    """Sampling settings for every policy (and for SFT, the reference of KL and win rate)."""
    seed: int = 999
    """Sampling seed (the same for every policy, so they answer the same prompts with the same noise)."""
    judge_temperature: float = 0.0
    """The win-rate judge is the gold scorer as a synthetic oracle at this temperature (0 = noiseless;
    the labelling oracle's own temperature and flip rate give the win rate a noisy labeller would report)."""
    judge_flip_prob: float = 0.0
    """The win-rate judge's probability of inverting its answer."""

    def __post_init__(self) -> None:
        if isinstance(self.prompts, bool) or not isinstance(self.prompts, int) or self.prompts < 1:
            raise ValueError(f"EvaluationSpec.prompts must be a positive int, got {self.prompts!r}")
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
    """Output folder (the command line's `--out` overrides it)."""
    stages: tuple[str, ...] = STAGES
    """Stages to run, a subset of pretrain, sft, reward_model, ppo, preference_loop, evaluation (their inputs must
    exist: run earlier, or in this list)."""
    threads: int = 1
    """torch CPU threads (1 avoids OpenMP oversubscription on small shared machines; 0 = torch's default)."""
    model: ModelSpec = field(default_factory=ModelSpec)
    """The starting model."""
    task: TaskSpec = field(default_factory=TaskSpec)
    """Prompt and demonstration files ("" = the built-in task's)."""
    pretrain: TinyLMConfig = field(default_factory=TinyLMConfig)
    """The built-in task (`pretrain.task`) and, when `model.name_or_path` is "", the tiny GPT built on it."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """Supervised fine-tuning on the task's demonstrations."""
    oracle: OracleSpec = field(default_factory=OracleSpec)
    """Who labels comparisons."""
    reward_model: RewardModelStage = field(default_factory=RewardModelStage)
    """Comparison collection and reward-model training."""
    ppo: dict[str, PPOStage] = field(default_factory=_default_ppo_runs)
    """PPO runs by name (each starts from SFT); a TOML table per run, e.g. [ppo.ppo_ptx]."""
    preference_loop: dict[str, LoopStage] = field(default_factory=dict)
    """Christiano preference loops by name (each starts from SFT, with its own label store); none by default."""
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    """Held-out evaluation of every policy."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"ExperimentConfig.name must be a non-empty string, got {self.name!r}")
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"ExperimentConfig.stages: unknown stage(s) {unknown}; choose from {list(STAGES)}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            raise ValueError(f"ExperimentConfig.threads must be an int >= 0 (0 = torch's default), got {self.threads!r}")
        for run in [*self.ppo, *self.preference_loop]:
            if not run or "/" in run or run in ("pretrained", "sft", "reward_model"):
                raise ValueError(f"ExperimentConfig: {run!r} cannot name a run (empty, has '/', or a reserved name)")
        both = set(self.ppo) & set(self.preference_loop)
        if both:
            raise ValueError(f"ExperimentConfig: {sorted(both)} name both a PPO run and a preference loop; rename one")


# ------------------------------------------------------------------------------------------ state


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _store_for(path: Path, fingerprint: str) -> Path:
    """`path`, made ready for labels gathered under `fingerprint` (what decides which queries are asked and how
    they are answered). Labels in it from other inputs (another oracle noise, another policy trajectory)
    would be wrong to reuse, and labels are never deleted: that store is moved aside to
    `<stem>.<its fingerprint>.sqlite`. The same inputs (a resumed run) keep the store and every answer in it."""
    marker = path.with_suffix(".fingerprint")
    if path.exists() and (not marker.exists() or marker.read_text() != fingerprint):
        old = marker.read_text() if marker.exists() else "unknown"
        aside = path.with_name(f"{path.stem}.{old}.sqlite")
        for suffix in ("", "-wal", "-shm"):
            source = Path(str(path) + suffix)
            if source.exists():
                os.replace(source, Path(str(aside) + suffix))
    path.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(fingerprint)
    return path


Event = Callable[[str], None]


class Pipeline:
    """Runs an `ExperimentConfig` stage by stage into `out`, resuming whatever is already done.

    Args:
        config: the experiment.
        out: the run folder (created; reused on resume).
        on_event: receives one line per stage start/finish (the command prints them; library code does not).
        progress: show progress bars (tqdm, on stderr) for PPO runs and preference loops.
        device: where models run (the process's device under a launcher, else CUDA when present).
        input_fn: how the terminal oracle reads answers (tests pass a fake).
        distributed: the process group when launched with `accelerate launch` / `torchrun`
            (`Distributed.from_environment()`); None = a single process. Every process runs every
            stage on its shard of each batch; only the main process labels, evaluates and writes
            files (state, summaries, models, logs), and the others receive its results.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        out: str | PathLike[str],
        *,
        on_event: Event | None = None,
        progress: bool = False,
        device: torch.device | str | None = None,
        input_fn: Callable[[str], str] = input,
        distributed: Distributed | None = None,
    ) -> None:
        if not isinstance(config, ExperimentConfig):
            raise TypeError(f"config must be an ExperimentConfig, got {type(config).__name__}")
        self.config = config
        self.out = Path(out)
        self.dist = distributed if distributed is not None else Distributed()
        # only the main process reports
        self.on_event = on_event if on_event is not None and self.dist.is_main else (lambda line: None)
        self.progress = progress and self.dist.is_main
        self.device = device if device is not None else self.dist.device
        self.input_fn = input_fn
        self.state_file = self.out / "state.json"
        # the main process's view of what is done is everyone's (nodes need not share a disk)
        self.state: dict[str, Any] = self.dist.broadcast_object(
            json.loads(self.state_file.read_text()) if self.dist.is_main and self.state_file.exists() else {})

    # -------------------------------------------------------------------------------- helpers
    # The task's data is read once per Pipeline (a run sees one version of its files).
    @cached_property
    def task(self) -> ReviewTask:
        return generate_review_task(self.config.pretrain.task)

    @cached_property
    def prompts(self) -> list[str]:
        """Training prompts (the `task.prompts` file, or the built-in task's)."""
        spec = self.config.task
        return list(load_prompts(spec.prompts)) if spec.prompts else list(self.task.prompts)

    @cached_property
    def eval_prompts(self) -> list[str]:
        spec = self.config.task
        return list(load_prompts(spec.eval_prompts)) if spec.eval_prompts else list(self.task.eval_prompts)

    @cached_property
    def demonstrations(self) -> list[Demonstration]:
        spec = self.config.task
        return load_demonstrations(spec.demonstrations) if spec.demonstrations else list(self.task.demonstrations)

    @cached_property
    def _file_hashes(self) -> dict[str, str]:
        """Content hash of each task file ("builtin" where there is none)."""
        spec = self.config.task
        return {name: hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16] if path else "builtin"
                for name, path in (("prompts", spec.prompts), ("eval_prompts", spec.eval_prompts),
                                   ("demonstrations", spec.demonstrations))}

    def _data_fingerprint(self, *names: str) -> list[str]:
        """Content hashes of the task files a stage reads (so editing a file reruns what depends on it)."""
        return [self._file_hashes[name] for name in names]

    def _use_threads(self) -> None:
        if self.config.threads:
            torch.set_num_threads(self.config.threads)

    def _env(self, reward_fn: Any, num_envs: int) -> PromptBanditVecEnv:
        """The batched prompt-bandit environment over the training prompts, reporting the gold score.
        Under a launcher each process scores its shard of every batch (PPO steps it on all of them)."""
        return PromptBanditVecEnv(self.prompts, self.dist.sharded(reward_fn), num_envs=num_envs, gold_fn=GoldScorer())

    def _done(self, key: str, fingerprint: str) -> dict[str, Any] | None:
        entry = self.state.get(key)
        return entry["result"] if entry and entry.get("fingerprint") == fingerprint else None

    def _finish(self, key: str, fingerprint: str, result: dict[str, Any]) -> dict[str, Any]:
        self.state[key] = {"fingerprint": fingerprint, "result": result, "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")}
        self._write(self.state_file, self.state)
        return result

    def _write(self, path: Path, data: Any) -> None:
        """Write a JSON file from the main process only (the others wait for it)."""
        self.dist.main_process_only(write_json)(path, data)

    def _need(self, key: str) -> dict[str, Any]:
        entry = self.state.get(key)
        if entry is None:
            raise RuntimeError(
                f"stage {key!r} has not run in {self.out}; add it to `stages` (or run the full pipeline first)"
            )
        return entry

    @contextlib.contextmanager
    def _bar(self, total: int, done: int, desc: str) -> Iterator[Callable[[Any, int], bool]]:
        """A progress bar over an agent's completions (when `progress`), advanced by the agent's callback."""
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=done, desc=desc, unit="completions")

        def tick(_agent: Any, step: int) -> bool:
            if bar is not None:
                bar.update(step - bar.n)
            return True

        try:
            yield tick
        finally:
            if bar is not None:
                bar.close()

    def _logger(self, stage: str, purge_step: int | None = None) -> Logger:
        return self.dist.make_logger(self.out / "tb" / stage, purge_step=purge_step)

    # -------------------------------------------------------------------------------- stages
    def run(self) -> dict[str, Any]:
        """Run the configured stages (skipping those already done with the same inputs); return the summary."""
        cfg = self.config
        self._use_threads()
        if cfg.oracle.kind == "recorded" and not Path(cfg.oracle.path).is_file():
            raise DatasetError(f"oracle.path: the comparison file {cfg.oracle.path} does not exist (cwd is {Path.cwd()})")
        self.out.mkdir(parents=True, exist_ok=True)
        self._write(self.out / "config.json", to_dict(cfg))
        t0 = time.perf_counter()
        for stage in STAGES:
            if stage in cfg.stages:
                getattr(self, f"_stage_{stage}")()
        summary = self.summary()
        summary["wall_seconds_this_invocation"] = time.perf_counter() - t0
        self._write(self.out / "summary.json", summary)
        return summary

    def _timed(self, key: str, fingerprint: str, body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        done = self._done(key, fingerprint)
        if done is not None:
            self.on_event(f"[{key}] done earlier (same inputs): reusing it")
            return done
        self.on_event(f"[{key}] running")
        # torch's global generator (dropout, head initialisation) seeded per stage, so a stage run alone or resumed
        # gives what it gives in a full run
        torch.manual_seed(int(_fingerprint(self.config.seed, key), 16) % 2**63)
        t = time.perf_counter()
        result = body()
        result["seconds"] = time.perf_counter() - t
        self.on_event(f"[{key}] finished in {result['seconds']:.0f}s")
        return self._finish(key, fingerprint, result)

    def _stage_pretrain(self) -> dict[str, Any]:
        cfg = self.config
        if cfg.model.name_or_path:
            fp = _fingerprint("hub", cfg.model.name_or_path)
            return self._timed("pretrain", fp, lambda: {"path": cfg.model.name_or_path, "built": False})

        def body() -> dict[str, Any]:
            def build() -> Any:
                with self._logger("pretrain") as logger:
                    return build_builtin_model(cfg.pretrain, cache_dir=cfg.model.cache_dir or None, logger=logger, task=self.task)

            report = self.dist.main_process_only(build)()  # one build; the others load the cached copy
            return {"path": str(report.path), "built": not report.cached, "perplexity_before": report.perplexity_before,
                    "perplexity": report.perplexity_after, "build_seconds": report.seconds}

        return self._timed("pretrain", _fingerprint("builtin", to_dict(cfg.pretrain), cfg.model.cache_dir), body)

    def _stage_sft(self) -> dict[str, Any]:
        cfg = self.config
        base = self._need("pretrain")
        fp = _fingerprint(base["fingerprint"], to_dict(cfg.sft), cfg.seed, self._data_fingerprint("demonstrations"))
        path = self.out / "sft"

        def body() -> dict[str, Any]:
            policy = Policy.from_pretrained(base["result"]["path"], device=self.device)
            with self._logger("sft") as logger:
                trainer = SFTTrainer(cfg.sft, rng=np.random.default_rng(cfg.seed), logger=logger, distributed=self.dist)
                metrics = trainer.train(policy, self.demonstrations)
            self.dist.main_process_only(policy.save_pretrained)(path)
            return {"path": str(path), **metrics}

        return self._timed("sft", fp, body)

    def _oracle(self, gold: GoldScorer, rng: np.random.Generator) -> PreferenceOracle:
        spec = self.config.oracle
        if spec.kind == "synthetic":
            return SyntheticOracle(gold, rng=rng, temperature=spec.temperature, flip_prob=spec.flip_prob, tie_margin=spec.tie_margin)
        if spec.kind == "recorded":
            return RecordedOracle.from_jsonl(spec.path)
        return TerminalOracle(input_fn=self.input_fn)

    def _queries(self, oracle: PreferenceOracle) -> list[Query]:
        """The comparisons to label: the recorded file's own, or `queries` sampled from the source policies."""
        cfg, rm_cfg = self.config, self.config.reward_model
        if isinstance(oracle, RecordedOracle):
            return oracle.queries()[: rm_cfg.queries]
        paths = {"pretrained": self._need("pretrain")["result"]["path"], "sft": self._need("sft")["result"]["path"]}
        prompts = self.prompts
        queries: list[Query] = []
        share = np.array_split(np.arange(rm_cfg.queries), len(rm_cfg.sources))
        sampling = cfg.evaluation.sampling
        for s, (source, idx) in enumerate(zip(rm_cfg.sources, share)):
            policy = Policy.from_pretrained(paths[source], device=self.device)
            chunk_prompts = [prompts[int(i) % len(prompts)] for i in idx]
            samples = []
            for j in range(rm_cfg.k):  # k independent samples per prompt, batches of 64 seeded explicitly
                col: list[str] = []
                for b in range(0, len(chunk_prompts), 64):
                    seed = cfg.seed * 1_000_003 + s * 100_003 + j * 10_007 + b
                    col += policy.sample(chunk_prompts[b : b + 64], sampling, seed=seed).completions
                samples.append(col)
            for i, p in enumerate(chunk_prompts):
                completions = tuple(col[i] for col in samples)
                if len(set(completions)) == len(completions):  # identical samples say nothing
                    queries.append(Query(p, completions))
        return queries

    def _stage_reward_model(self) -> dict[str, Any]:
        cfg, rm_cfg = self.config, self.config.reward_model
        sft = self._need("sft")
        upstream = [self._need("pretrain")["fingerprint"], sft["fingerprint"]]
        fp = _fingerprint(upstream, to_dict(rm_cfg), to_dict(cfg.oracle), cfg.seed, self._data_fingerprint("prompts"))
        path = self.out / "reward_model"
        gold = GoldScorer()

        def label() -> tuple[int, list[Comparison]]:
            oracle = self._oracle(gold, np.random.default_rng(cfg.seed))
            queries = self._queries(oracle)
            # labels persist across runs: the store is append-only and never deleted, and a
            # query already answered there is not asked again (a resumed run keeps every answer)
            labels_fp = _fingerprint(upstream, to_dict(cfg.oracle), rm_cfg.queries, rm_cfg.k, list(rm_cfg.sources), cfg.seed,
                                     self._data_fingerprint("prompts"))
            with PreferenceStore(_store_for(self.out / "labels.sqlite", labels_fp)) as store:
                answered = {a.query_id for a in store.answers()}
                todo = [q for q in queries if q.query_id not in answered]
                collect(oracle, todo, store)
                ids = {q.query_id for q in queries}
                return len(queries), [c for c in store.comparisons() if c.query_id in ids]

        def body() -> dict[str, Any]:
            n_queries, comparisons = self.dist.main_process_only(label)()  # one labeller, one store
            if not comparisons:
                raise RuntimeError("the oracle answered no comparisons; the reward model has nothing to train on")
            trainer_rng = np.random.default_rng(cfg.seed + 1)
            with self._logger("reward_model") as logger:
                trainer = RewardTrainer(rm_cfg.trainer, logger=logger, rng=trainer_rng, distributed=self.dist)
                init = sft["result"]["path"]
                if rm_cfg.members > 1:
                    rm: RewardModel | RewardEnsemble = RewardEnsemble.from_pretrained(
                        init, rm_cfg.members, seed=cfg.seed, pooling=rm_cfg.pooling, device=self.device)
                    metrics = rm.train(trainer, comparisons, np.random.default_rng(cfg.seed + 2), gold_fn=gold)
                else:
                    rm = RewardModel.from_pretrained(init, head_seed=cfg.seed, pooling=rm_cfg.pooling, device=self.device)
                    metrics = trainer.train(rm, comparisons, gold_fn=gold)
            demos = self.demonstrations
            rm.normalize([d.prompt for d in demos], [d.completion for d in demos])  # demonstrations score 0 on average
            self.dist.main_process_only(rm.save)(path)
            return {"path": str(path), "labels": len(comparisons), "queries_posed": n_queries,
                    "ensemble": rm_cfg.members > 1, **{k: float(v) for k, v in metrics.items()}}

        return self._timed("reward_model", fp, body)

    def _load_rm(self) -> RewardModel | RewardEnsemble:
        result = self._need("reward_model")["result"]
        loader = RewardEnsemble if result["ensemble"] else RewardModel
        return loader.load(result["path"], device=self.device)

    def _stage_ppo(self) -> None:
        for name, run in self.config.ppo.items():
            self._ppo_run(name, run)

    def _ppo_upstream(self, run: PPOStage) -> list[str]:
        upstream = [self._need("sft")["fingerprint"]]
        if run.reward == "reward_model":
            upstream.append(self._need("reward_model")["fingerprint"])
        return upstream

    def _ppo_fingerprint(self, run: PPOStage) -> str:
        return _fingerprint(self._ppo_upstream(run), to_dict(run), self.config.seed, self._data_fingerprint("prompts"))

    def _ppo_run(self, name: str, run: PPOStage) -> dict[str, Any]:
        cfg = self.config
        fp = self._ppo_fingerprint(run)
        # the checkpoint stays usable when only the length of the run changed: train longer, not again
        resume_fp = _fingerprint([self._ppo_upstream(run), to_dict(replace(run, iterations=1, checkpoint_every=0)), cfg.seed,
                                  self._data_fingerprint("prompts")], "no-length")
        folder = self.out / "ppo" / name

        def body() -> dict[str, Any]:
            gold = GoldScorer()
            reward_fn = gold if run.reward == "gold" else self._load_rm()
            env = self._env(reward_fn, run.num_envs)
            ppo_config = run.config
            ptx = list(self.task.pretrain_texts) if ppo_config.ptx_coef > 0 else None
            ckpt = folder / "checkpoint"
            marker = folder / "fingerprint.txt"

            def can_resume() -> bool:
                if not (ckpt.exists() and marker.exists() and marker.read_text() == resume_fp):
                    return False
                return json.loads((ckpt / "trainer_state.json").read_text())["iteration"] <= run.iterations

            def start_fresh() -> None:
                folder.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(ckpt, ignore_errors=True)
                marker.write_text(resume_fp)

            resumable = self.dist.main_process_only(can_resume)()
            total = run.iterations * run.num_envs
            if resumable:
                logger = self._logger(f"ppo_{name}")
                agent = PPO.load(ckpt, env=env, rng=np.random.default_rng(), ptx_texts=ptx, logger=logger,
                                 checkpoint_dir=folder, device=self.device, distributed=self.dist)
                self.on_event(f"[ppo.{name}] resuming from its checkpoint at iteration {agent.iteration}")
            else:
                self.dist.main_process_only(start_fresh)()
                logger = self._logger(f"ppo_{name}", purge_step=0)
                policy = Policy.from_pretrained(self._need("sft")["result"]["path"], device=self.device)
                config = PPOConfig.from_dict({**ppo_config.to_dict(), "checkpoint_every": run.checkpoint_every})
                agent = PPO(policy, env, config, rng=np.random.default_rng(cfg.seed), ptx_texts=ptx, logger=logger,
                            checkpoint_dir=folder, distributed=self.dist)
                logger.log_hparams({"run": name, "reward": run.reward, "iterations": run.iterations,
                                    "num_envs": run.num_envs, **_flat(ppo_config.to_dict())})
            try:
                with self._bar(total, agent.num_timesteps, f"ppo.{name}") as tick:
                    agent.learn(total, callback=tick)
            finally:
                logger.close()
            agent.save(ckpt)  # the main process writes it; the others wait
            self.dist.main_process_only(agent.policy.save_pretrained)(folder / "policy")
            return {"path": str(folder / "policy"), "reward": run.reward, "iterations": agent.iteration,
                    "kl_coef_final": float(agent.kl_ctl.value)}

        return self._timed(f"ppo.{name}", fp, body)

    def _stage_preference_loop(self) -> None:
        for name, loop in self.config.preference_loop.items():
            self._loop_run(name, loop)

    def _loop_fingerprint(self, loop: LoopStage) -> str:
        upstream = [self._need("sft")["fingerprint"]]
        return _fingerprint(upstream, to_dict(loop), to_dict(self.config.oracle), self.config.seed,
                            self._data_fingerprint("prompts"))

    def _loop_run(self, name: str, loop: LoopStage) -> dict[str, Any]:
        """A preference loop from SFT. Its labels live in its own store, which survives an interruption:
        a rerun starts the policy again from SFT but trains the reward model on every label already
        given and asks only for the rest of the budget (`PreferenceLoop`'s resume)."""
        cfg = self.config
        folder = self.out / "preference_loop" / name

        def body() -> dict[str, Any]:
            gold = GoldScorer()
            sft_path = self._need("sft")["result"]["path"]
            policy = Policy.from_pretrained(sft_path, device=self.device)
            seed = cfg.seed
            rm: RewardModel | RewardEnsemble = (
                RewardEnsemble.from_pretrained(sft_path, loop.members, seed=seed, device=self.device)
                if loop.members > 1 else RewardModel.from_pretrained(sft_path, head_seed=seed, device=self.device))
            env = self._env(rm, loop.num_envs)
            demos = self.demonstrations
            store_path = self.dist.main_process_only(_store_for)(folder / "labels.sqlite", self._loop_fingerprint(loop))
            # only the main process opens the store file (PreferenceLoop reads and writes it there alone);
            # the others hold an in-memory stand-in they never touch
            where = store_path if self.dist.is_main else ":memory:"
            with self._logger(f"loop_{name}", purge_step=0) as logger, PreferenceStore(where) as store:
                logger.log_hparams({"run": name, "iterations": loop.iterations, "num_envs": loop.num_envs, "k": loop.k,
                                    "selector": loop.selector, "members": loop.members,
                                    **_flat({"schedule": to_dict(loop.schedule), "ppo": loop.config.to_dict()})})
                ppo = PPO(policy, env, loop.config, rng=np.random.default_rng(seed), logger=logger, distributed=self.dist)
                trainer = RewardTrainer(loop.trainer, logger=logger, rng=np.random.default_rng(seed + 1),
                                        distributed=self.dist)
                learner = RewardModelLearner(rm, trainer, rng=np.random.default_rng(seed + 2), gold_fn=gold,
                                             reference=([d.prompt for d in demos], [d.completion for d in demos]))
                source = CompletionSource(policy, self.prompts, loop.config.sampling, rng=np.random.default_rng(seed + 3),
                                          k=loop.k)
                oracle = self._oracle(gold, np.random.default_rng(seed + 4))
                selector = DisagreementSelector() if loop.selector == "disagreement" else RandomSelector()
                agent = PreferenceLoop(ppo, source, selector, oracle, learner, store, loop.schedule,
                                       rng=np.random.default_rng(seed + 5), logger=logger, distributed=self.dist)
                with self._bar(loop.iterations * loop.num_envs, 0, f"preference_loop.{name}") as tick:
                    agent.learn(loop.iterations * loop.num_envs, callback=tick)
                labels = self.dist.broadcast_object(store.counts()["answers"] if self.dist.is_main else None)
            self.dist.main_process_only(policy.save_pretrained)(folder / "policy")
            self.dist.main_process_only(rm.save)(folder / "reward_model")
            return {"path": str(folder / "policy"), "reward_model": str(folder / "reward_model"), "labels": labels,
                    "ensemble": loop.members > 1, "iterations": ppo.iteration, "rounds": agent.rounds}

        return self._timed(f"preference_loop.{name}", self._loop_fingerprint(loop), body)

    def _stage_evaluation(self) -> dict[str, Any]:
        cfg = self.config
        policies = {"pretrained": self._need("pretrain"), "sft": self._need("sft")}
        for name, run in cfg.ppo.items():
            key = f"ppo.{name}"
            if key in self.state and self.state[key]["fingerprint"] == self._ppo_fingerprint(run):
                policies[name] = self.state[key]
        for name, loop in cfg.preference_loop.items():
            key = f"preference_loop.{name}"
            if key in self.state and self.state[key]["fingerprint"] == self._loop_fingerprint(loop):
                policies[name] = self.state[key]
        rm_entry = self.state.get("reward_model")
        fp = _fingerprint({k: v["fingerprint"] for k, v in policies.items()},
                          rm_entry["fingerprint"] if rm_entry else None, to_dict(cfg.evaluation), cfg.seed,
                          self._data_fingerprint("eval_prompts"))

        def body() -> dict[str, Any]:
            gold = GoldScorer()
            rm = self._load_rm() if rm_entry else None
            task = self.task
            prompts = self.eval_prompts[: cfg.evaluation.prompts]
            if not prompts:
                raise RuntimeError("there are no held-out prompts (pretrain.task.n_eval_prompts = 0); "
                                   "raise it or give task.eval_prompts")
            sft = Policy.from_pretrained(policies["sft"]["result"]["path"], device=self.device)
            judge = SyntheticOracle(gold, rng=np.random.default_rng(cfg.seed + 3),
                                    temperature=cfg.evaluation.judge_temperature,
                                    flip_prob=cfg.evaluation.judge_flip_prob, name="judge")
            rows = {}
            for name, entry in policies.items():
                policy = sft if name == "sft" else Policy.from_pretrained(entry["result"]["path"], device=self.device)
                t = time.perf_counter()
                report = evaluate_policy(policy, prompts, sampling=cfg.evaluation.sampling, seed=cfg.evaluation.seed,
                                         gold_fn=gold, reward_fn=rm, reference=sft, oracle=judge,
                                         heldout_texts=task.heldout_texts)
                rows[name] = {**report.as_dict(), "eval_seconds": time.perf_counter() - t}
                self.on_event(f"[evaluation] {name}: gold {report.gold:+.3f}")
            return {"rows": rows, "prompts": len(prompts)}

        # evaluation samples a few hundred completions: the main process does it, the others get its table
        return self._timed("evaluation", fp, self.dist.main_process_only(body))

    def evaluate(self, force: bool = False) -> dict[str, Any]:
        """Evaluate the run's policies (again, when `force`), rewrite summary.json and return the summary."""
        self._use_threads()
        if force:
            self.state.pop("evaluation", None)
        self._stage_evaluation()
        summary = self.summary()
        self._write(self.out / "summary.json", summary)
        return summary

    # -------------------------------------------------------------------------------- summary
    def summary(self) -> dict[str, Any]:
        """Per stage: gold, RM score, KL to SFT, win rate vs SFT, perplexity, labels used, wall time (what is known)."""
        rows: dict[str, dict[str, Any]] = {}
        evaluation = self.state.get("evaluation", {}).get("result", {}).get("rows", {})
        labels = self.state.get("reward_model", {}).get("result", {}).get("labels")
        runs = [*(f"ppo.{n}" for n in self.config.ppo), *(f"preference_loop.{n}" for n in self.config.preference_loop)]
        for key in ("pretrain", "sft", "reward_model", *runs):
            entry = self.state.get(key)
            if entry is None:
                continue
            result = entry["result"]
            name = {"pretrain": "pretrained", "sft": "sft"}.get(key, key.split(".", 1)[-1])
            row = {"stage": key, "wall_seconds": result.get("seconds")}
            if key == "reward_model":
                row.update(labels=labels, heldout_accuracy=result.get("heldout_accuracy"),
                           gold_agreement=result.get("gold_agreement"))
            else:
                row.update(evaluation.get(name, {}))
                if key.startswith("preference_loop."):
                    row["labels"] = result["labels"]
                else:
                    row["labels"] = labels if key.startswith("ppo.") and result.get("reward") == "reward_model" else 0
            rows[name] = row
        return {"name": self.config.name, "seed": self.config.seed, "out": str(self.out), "rows": rows,
                "tensorboard": str(self.out / "tb")}


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as an InstructGPT-style table (one row per policy / stage), for printing."""

    def cell(row: dict[str, Any], key: str, fmt: str) -> str:
        v = row.get(key)
        return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, fmt)

    head = (f"{'stage':<16}{'gold':>8}{'RM':>8}{'KL to SFT':>11}{'win vs SFT':>12}{'perplexity':>12}"
            f"{'labels':>8}{'RM~gold':>9}{'wall s':>8}")
    lines = [f"== {summary['name']} (seed {summary['seed']}) ==", head, "-" * len(head)]
    for name, row in summary["rows"].items():
        lines.append(f"{name:<16}{cell(row, 'gold', '+.3f'):>8}{cell(row, 'rm_score', '+.3f'):>8}{cell(row, 'kl', '.2f'):>11}"
                     f"{cell(row, 'win_rate', '.1%'):>12}{cell(row, 'perplexity', '.2f'):>12}{cell(row, 'labels', 'd'):>8}"
                     f"{cell(row, 'gold_agreement', '.3f'):>9}{cell(row, 'wall_seconds', '.0f'):>8}")
    lines.append("gold: the built-in task's gold scorer; RM: the trained reward model (demonstrations score 0); "
                 "win vs SFT: the judge prefers the policy's completion (ties 1/2); perplexity: held-out pretraining text;\n"
                 "RM~gold: how often the reward model orders its held-out comparisons as the gold scorer does")
    return "\n".join(lines)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a/b": v} with hparams-friendly values (None becomes "none")."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = "none" if v is None else v
    return out
