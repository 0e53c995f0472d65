"""What the pipeline's stages are built from: the task, the environment, the labeller, the queries, the label store.

`Pipeline` (the runner) decides which stage runs and what is reused; the functions here
build the objects a stage needs from the experiment's config, the same way for every
task: the built-in review task, an environment a user registered, or files.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium
import numpy as np

from llm_gym.agents.lm_preferences import CompletionSource
from llm_gym.app.config import BUILTIN_ENV, ExperimentConfig, OracleSpec, TaskSpec
from llm_gym.core.data import DatasetError, load_demonstrations, load_prompts
from llm_gym.core.preferences import Query
from llm_gym.core.reward import RewardFn, _name, resolve_reward_fn
from llm_gym.core.task import PromptTask, Task
from llm_gym.envs.prompt_bandit import PromptBanditVecEnv
from llm_gym.feedback.oracles import PreferenceOracle, RecordedOracle, SyntheticOracle, TerminalOracle
from llm_gym.infra.configio import ConfigError
from llm_gym.infra.distributed import Distributed
from llm_gym.models.policy import Policy
from llm_gym.tasks.review import ReviewTaskConfig

__all__ = ["LoadedTask", "check_task", "load_task", "make_env", "make_oracle", "sample_queries", "store_for"]

_DATA_PARTS = ("prompts", "eval_prompts", "demonstrations")


class LoadedTask(NamedTuple):
    """The experiment's task, read from its environment and files."""

    task: Task
    """Prompts, held-out prompts, demonstrations, pretraining and held-out text, the gold judge (or None)."""
    env_reward: RewardFn
    """The environment's own reward function (what `PPOStage.reward = "env"` pays)."""
    fingerprints: dict[str, str]
    """Per data part ("prompts", "eval_prompts", "demonstrations"): a hash of what it holds, so editing a file
    or the environment's data reruns what depends on it ("builtin" for the built-in task, as before)."""


def _hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _describe(value: Any) -> Any:
    """`value` in a stable, JSON-able form for a fingerprint (functions by their import name, not their address)."""
    if callable(value) and not isinstance(value, type):
        return f"{getattr(value, '__module__', '?')}:{_name(value)}"
    if isinstance(value, Mapping):
        return {str(k): _describe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_describe(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def load_task(spec: TaskSpec, builtin: ReviewTaskConfig) -> LoadedTask:
    """Make the environment of `spec.env` once, read its task and reward, and apply the file overrides.

    The built-in review environment is given `task_config = builtin` (the corpus the built-in
    model is pretrained on) unless `env_kwargs` names one.

    Raises:
        ConfigError: the environment cannot be made, or it has no `task` (it is not a prompt bandit).
        DatasetError: a file named in `spec` is missing or malformed.
    """
    kwargs = dict(spec.env_kwargs)
    if spec.env == BUILTIN_ENV:
        kwargs.setdefault("task_config", builtin)
    try:
        env = gymnasium.make(spec.env, **kwargs)
    except (gymnasium.error.Error, TypeError, ValueError, ImportError) as exc:
        if isinstance(exc, DatasetError):
            raise
        raise ConfigError(f"task.env: cannot make {spec.env!r} with env_kwargs {spec.env_kwargs}: {exc}") from exc
    try:
        base = env.unwrapped
        task, reward = getattr(base, "task", None), getattr(base, "reward_fn", None)
    finally:
        env.close()
    if not isinstance(task, Task) or not callable(reward):
        raise ConfigError(
            f"task.env: {spec.env!r} makes a {type(base).__name__}, which has no `task` and `reward_fn`; the pipeline "
            "runs prompt-bandit environments (llm_gym/PromptBandit-v0, or a registration of PromptBanditEnv or a "
            "subclass of it with your dataset and reward)")
    gold = resolve_reward_fn(spec.gold, "task.gold") if spec.gold else task.gold
    merged = PromptTask(
        prompts=list(load_prompts(spec.prompts)) if spec.prompts else list(task.prompts),
        eval_prompts=list(load_prompts(spec.eval_prompts)) if spec.eval_prompts else list(task.eval_prompts),
        demonstrations=load_demonstrations(spec.demonstrations) if spec.demonstrations else list(task.demonstrations),
        pretrain_texts=task.pretrain_texts,
        heldout_texts=task.heldout_texts,
        gold=gold,
    )
    builtin_data = spec.env == BUILTIN_ENV and not spec.env_kwargs and not spec.gold
    source = json.dumps([spec.env, _describe(spec.env_kwargs), spec.gold, _describe(reward), _describe(gold)])
    fingerprints = {}
    for part in _DATA_PARTS:
        path = getattr(spec, part)
        if path:
            fingerprints[part] = _hash_bytes(Path(path).read_bytes())
        elif builtin_data:
            fingerprints[part] = "builtin"
        else:
            items = getattr(merged, part)
            text = "\x1e".join(d.prompt + "\x1f" + d.completion if part == "demonstrations" else d for d in items)
            fingerprints[part] = _hash_bytes((source + "\x1d" + text).encode())
    return LoadedTask(merged, reward, fingerprints)


def check_task(config: ExperimentConfig, task: Task) -> None:
    """Refuse, before any stage runs, a stage that needs a part the task lacks (with what to do instead)."""
    problems = []
    gold_users = []
    labelling = ("reward_model" in config.stages) or ("preference_loop" in config.stages and config.preference_loop)
    if config.oracle.kind == "synthetic" and labelling:
        gold_users.append('oracle.kind = "synthetic" (it compares completions by the gold judge)')
    if "ppo" in config.stages:
        gold_users += [f'ppo.{name}.reward = "gold"' for name, run in config.ppo.items() if run.reward == "gold"]
        problems += [f"ppo.{name}: ptx_coef > 0 mixes in pretraining text, and the task has none; set ptx_coef = 0"
                     for name, run in config.ppo.items() if run.config.ptx_coef > 0 and not task.pretrain_texts]
    if gold_users and task.gold is None:
        problems.append(f"{'; '.join(gold_users)} needs a gold judge, and the task {config.task.env!r} has none: "
                        'label with oracle.kind = "terminal" or "recorded", or name one with task.gold = "module:name"')
    if problems:
        raise ConfigError("the experiment does not fit its task:\n  " + "\n  ".join(problems))


def make_env(prompts: Sequence[str], reward_fn: RewardFn, num_envs: int, gold: RewardFn | None,
             dist: Distributed) -> PromptBanditVecEnv:
    """The batched prompt bandit an RL run trains on; under a launcher each process scores its shard of a batch."""
    return PromptBanditVecEnv(prompts, dist.sharded(reward_fn), num_envs=num_envs, gold_fn=gold)


def make_oracle(spec: OracleSpec, gold: RewardFn | None, rng: np.random.Generator,
                input_fn: Callable[[str], str]) -> PreferenceOracle:
    """The labeller of `spec`: the gold judge under noise, a recorded file, or a person at the terminal."""
    if spec.kind == "synthetic":
        if gold is None:  # check_task refuses this before a stage runs
            raise ConfigError('oracle.kind = "synthetic" needs a gold judge; the task has none')
        return SyntheticOracle(gold, rng=rng, temperature=spec.temperature, flip_prob=spec.flip_prob,
                               tie_margin=spec.tie_margin)
    if spec.kind == "recorded":
        return RecordedOracle.from_jsonl(spec.path)
    return TerminalOracle(input_fn=input_fn)


def sample_queries(config: ExperimentConfig, oracle: PreferenceOracle, prompts: Sequence[str],
                   policy_paths: Mapping[str, str], device: Any) -> list[Query]:
    """The reward model's comparisons: the recorded file's own, or `queries` sampled from the source policies.

    The queries are split evenly between the sources (InstructGPT compared several models'
    outputs); source `s` answers the prompts in order, each column of `k` samples in batches of
    64 with a seed fixed by (seed, source, column, batch), so a query's completions do not depend
    on how many queries there are.
    """
    rm_cfg = config.reward_model
    if isinstance(oracle, RecordedOracle):
        return oracle.queries()[: rm_cfg.queries]
    queries: list[Query] = []
    share = np.array_split(np.arange(rm_cfg.queries), len(rm_cfg.sources))
    for s, (name, idx) in enumerate(zip(rm_cfg.sources, share)):
        policy = Policy.from_pretrained(policy_paths[name], device=device)
        source = CompletionSource(policy, prompts, config.evaluation.sampling, rng=np.random.default_rng(config.seed),
                                  k=rm_cfg.k)
        chosen = [prompts[int(i) % len(prompts)] for i in idx]
        queries += source.queries(chosen, lambda j, b: config.seed * 1_000_003 + s * 100_003 + j * 10_007 + b)
    return queries


def store_for(path: Path, fingerprint: str) -> Path:
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

