"""The resumable pipeline runner: pretrain -> SFT -> reward model -> RL runs -> preference loops -> evaluation.

An experiment is one `ExperimentConfig` (`llm_gym.app.config`); the objects each stage is
made of come from `llm_gym.app.stages`; the table at the end is `llm_gym.app.summary`.
`Pipeline(config, out).run()` executes the stages in order on the experiment's task (any
registered prompt-bandit environment; the built-in review task by default) and writes
everything under `out`:

    out/config.json             the resolved config (every default filled in)
    out/state.json              per stage: a fingerprint of what it depends on, its result
    out/sft/                    the SFT policy (save_pretrained)
    out/labels.sqlite           every preference answer (PreferenceStore; never deleted: labels gathered
                                under other inputs are moved aside to labels.<fingerprint>.sqlite)
    out/reward_model/           the reward model or ensemble (safetensors + JSON)
    out/ppo/<run>/checkpoint/   PPO checkpoints (atomic), out/ppo/<run>/policy/ the result
    out/tb/<stage>/             TensorBoard event files (a stage run again draws its curve afresh: no duplicate steps)
    out/summary.json            the table: one row per policy and per stage
    out/evaluations/*.json      evaluations under other settings (`llm-gym eval RUN --set ...`), the run's own untouched

Files and folders are written with the user's umask (0644 / 0755 under umask 022), so a run on a
shared server is readable by those the umask lets read it.

Resuming: a stage whose fingerprint (its own config, the seed, the data it reads -- input files and a
recorded oracle's file by their content -- and the fingerprints of the stages it reads) matches the
one in `state.json` is not run again; its stored result is reused. A PPO run interrupted mid-way
restarts from its last checkpoint (the TensorBoard curve continues without duplicate steps).
Labels already in the store are never asked again (an edited recorded file's answers go into a
fresh store; the old one is moved aside). Change a hyperparameter and rerun into the same folder: only the stages
it affects (and those downstream) run again.

A model given by `model.name_or_path` is the pretrained policy: nothing is pretrained, and `stages`
need not list "pretrain" (its entry in state.json records the model, for the later stages).

What a task lacks, the pipeline does without: no demonstrations -> SFT is skipped (the SFT
policy is the pretrained one) and the reward is not normalised; no held-out prompts -> the
evaluation uses the training prompts; no gold judge -> no gold, win-rate or RM-vs-gold
figures (and labels must come from a person or a file); no held-out text -> no perplexity.
A stage that cannot do without a part (synthetic labels without a gold judge, ptx without
pretraining text) is refused before anything runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import cached_property
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llm_gym.agents.checkpoint import open_checkpoint, write_checkpoint
from llm_gym.agents.lm_preferences import CompletionSource, RewardModelLearner
from llm_gym.agents.best_of_n import BestOfN, best_of_n_kl
from llm_gym.agents.dpo import DPO
from llm_gym.agents.grpo import GRPO
from llm_gym.agents.on_policy import OnPolicyAgent
from llm_gym.agents.ppo import PPO
from llm_gym.agents.rloo import RLOO
from llm_gym.agents.preference_loop import DisagreementSelector, PreferenceLoop, RandomSelector
from llm_gym.agents.sft import SFTTrainer
from llm_gym.app.config import STAGES, AgentStage, ExperimentConfig, LoopStage, PPOStage
from llm_gym.app.evaluation import evaluate_policy
from llm_gym.app.stages import (LoadedTask, calibrate_labeller, chat_tokenizer, check_inputs, check_task, code_fingerprint,
                                fingerprint_settings, folder_fingerprint, labeller_figures, load_task, make_env, make_oracle, oracle_fingerprint, read_state, resolve_reward, sample_queries, store_for)
from llm_gym.app.summary import build_summary, demonstrations_gold
from llm_gym.core.data import DatasetError
from llm_gym.core.metrics import verifies_answers
from llm_gym.core.preferences import Comparison
from llm_gym.core.reward import RewardFn
from llm_gym.core.task import Demonstration, Task
from llm_gym.feedback.oracles import NoAnswersError, SyntheticOracle, collect
from llm_gym.feedback.store import PreferenceStore
from llm_gym.infra.atomic import recover_dir, write_json, write_text
from llm_gym.infra.configio import to_dict
from llm_gym.infra.distributed import Distributed
from llm_gym.infra.logger import Logger
from llm_gym.infra.memory import PeakMemory
from llm_gym.infra.runfolder import RunFolderError
from llm_gym.models.policy import Policy
from llm_gym.models.reward_ensemble import load_reward_model, reward_model_from_pretrained
from llm_gym.models.reward_model import LearnedReward
from llm_gym.models.reward_trainer import RewardTrainer
from llm_gym.tasks.tiny_lm import build_builtin_model, corpus_fingerprint

__all__ = ["Pipeline"]


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


Event = Callable[[str], None]

ON_POLICY: dict[str, type[OnPolicyAgent]] = {"ppo": PPO, "rloo": RLOO, "grpo": GRPO}
"""The on-policy algorithms an `[agent.<run>]` can name, by name (best-of-N and DPO are run apart)."""


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
        self._verified: set[Path] = set()  # policy folders checked against their manifests in this run
        self._reward_fns: dict[str, RewardFn] = {}  # reward functions named by import path, imported and tried once
        # the main process's view of what is done is everyone's (nodes need not share a disk); a damaged
        # state.json stops every process with the same error (one alone would leave the others waiting)
        state: dict[str, Any] | str = {}
        if self.dist.is_main and self.state_file.exists():
            try:
                state = read_state(self.state_file)
            except RunFolderError as err:
                state = str(err)
        state = self.dist.broadcast_object(state)
        if isinstance(state, str):
            raise RunFolderError(state)
        self.state: dict[str, Any] = state

    # -------------------------------------------------------------------------------- helpers
    # The task is read once per Pipeline (a run sees one version of its environment's data and its files).
    @cached_property
    def loaded(self) -> LoadedTask:
        """The task of `config.task` with its environment's reward and its data fingerprints (`stages.load_task`)."""
        return load_task(self.config.task, self.config.pretrain.task, self.chat_tokenizer)

    @cached_property
    def chat_tokenizer(self) -> Any:
        """The given model's tokenizer, whose chat template renders chat-message data (None for the built-in model)."""
        return chat_tokenizer(self.config.model.name_or_path)

    @property
    def lora(self) -> dict[str, Any] | None:
        """`model.lora` as the `peft_config` of the policies and reward models the stages train (None: full weights)."""
        return dict(self.config.model.lora) or None

    def _trainee(self, path: str) -> Policy:
        """The policy a stage trains, from `path`: every weight, or a LoRA adapter on it (`model.lora`)."""
        return Policy.from_pretrained(path, device=self.device, peft_config=self.lora)

    @cached_property
    def oracle_fingerprint(self) -> dict[str, Any]:
        """The labeller's settings as the labelling stages' fingerprints see them: a recorded file by its content
        (`stages.oracle_fingerprint`), read once per Pipeline like the task's files."""
        return oracle_fingerprint(self.config.oracle, self.loaded.fingerprints["gold"])

    @property
    def task(self) -> Task:
        """The experiment's task: prompts, held-out prompts, demonstrations, texts, the gold judge (or None)."""
        return self.loaded.task

    @cached_property
    def prompts(self) -> list[str]:
        """Training prompts (the `task.prompts` file, or the task's)."""
        return list(self.task.prompts)

    @cached_property
    def eval_prompts(self) -> list[str]:
        """Held-out prompts (the `task.eval_prompts` file, or the task's; may be empty)."""
        return list(self.task.eval_prompts)

    @cached_property
    def demonstrations(self) -> list[Demonstration]:
        """SFT demonstrations (the `task.demonstrations` file, or the task's; may be empty)."""
        return list(self.task.demonstrations)

    def _data_fingerprint(self, *names: str) -> list[str]:
        """Hashes of the task data a stage reads (so editing a file or the environment's data reruns what depends on it)."""
        return [self.loaded.fingerprints[name] for name in names]

    def _use_threads(self) -> None:
        if self.config.threads:
            torch.set_num_threads(self.config.threads)

    def _env(self, reward_fn: Any, num_envs: int, group_size: int = 1) -> Any:
        """The batched environment an RL run trains on, paying `reward_fn` (`stages.make_env`)."""
        return make_env(self.loaded, reward_fn, num_envs, self.dist, group_size=group_size)

    def _done(self, key: str, fingerprint: str) -> dict[str, Any] | None:
        entry = self.state.get(key)
        if not entry or entry.get("fingerprint") != fingerprint:
            return None
        result = entry["result"]
        if result.get("in_run_folder") and not self._result_path(result).exists():
            # moved or deleted since: run the stage again (its inputs are the same, so it gives the same result)
            self.on_event(f"[{key}] its result {self._result_path(result)} is missing: running it again")
            return None
        return result

    def _result_path(self, result: dict[str, Any], key: str = "path") -> Path:
        """Where a stage's result is: results this run folder holds are stored relative to it (`in_run_folder`), so a
        copied or moved run folder reads its own files; older run folders stored paths as given."""
        return self.out / result[key] if result.get("in_run_folder") else Path(result[key])

    def _rel(self, path: Path) -> str:
        """How a result folder inside the run folder is stored: relative to it (with `in_run_folder: True`)."""
        return Path(path).relative_to(self.out).as_posix()

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
        check_inputs(cfg, self.state, self.out, self.chat_tokenizer)  # files, earlier stages' results and the folder: now, not after pretraining
        check_task(cfg, self.task)  # a stage that needs a part the task lacks fails now, not after pretraining
        for what, reward in self._rewards_by_import_path():  # imported and tried on a first batch now, not mid-run
            self._reward(reward, what)
        self.out.mkdir(parents=True, exist_ok=True)
        self._write(self.out / "config.json", to_dict(cfg))
        t0 = time.perf_counter()
        for stage in self._stages():
            getattr(self, f"_stage_{stage}")()
        summary = self.summary()
        summary["wall_seconds_this_invocation"] = time.perf_counter() - t0
        self._write(self.out / "summary.json", summary)
        return summary

    def _stages(self) -> list[str]:
        """The stages to run, in order: `config.stages`, with "pretrain" added when `model.name_or_path` gives the model
        (a given model is the pretrained policy: its stage only records it, and every later stage reads it)."""
        given = {"pretrain"} if self.config.model.name_or_path else set()
        return [stage for stage in STAGES if stage in self.config.stages or stage in given]

    def _rewards_by_import_path(self) -> list[tuple[str, str]]:
        """(config key, import path) of every reward function a selected stage will call by import path: the RL runs'
        and, for the evaluation, the best-of-N runs' (DPO's `reward` is unused)."""
        cfg, stages = self.config, self._stages()
        named = [(f"ppo.{name}.reward", run.reward) for name, run in cfg.ppo.items() if "ppo" in stages]
        named += [(f"agent.{name}.reward", run.reward) for name, run in cfg.agent.items() if run.algorithm != "dpo" and (
            "agent" in stages or ("evaluation" in stages and run.algorithm == "best_of_n"))]
        return [(what, reward) for what, reward in named if ":" in reward]

    def _timed(self, key: str, fingerprint: str, body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        done = self._done(key, fingerprint)
        if done is not None:
            self.on_event(f"[{key}] done earlier (same inputs): reusing it")
            return done
        self.on_event(f"[{key}] running")
        return self._finish(key, fingerprint, self._measured(key, body))

    def _measured(self, key: str, body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run a stage's `body` and return its result with its wall time and peak memory."""
        # torch's global generator (dropout, head initialisation) seeded per stage, so a stage run alone or resumed
        # gives what it gives in a full run
        torch.manual_seed(int(_fingerprint(self.config.seed, key), 16) % 2**63)
        t = time.perf_counter()
        with PeakMemory() as memory:
            result = body()
        result["seconds"] = time.perf_counter() - t
        result.update(memory.as_dict())
        self.on_event(f"[{key}] finished in {result['seconds']:.0f}s")
        return result

    def _stage_pretrain(self) -> dict[str, Any]:
        cfg = self.config
        if cfg.model.name_or_path:
            fp = _fingerprint("hub", cfg.model.name_or_path, *folder_fingerprint(Path(cfg.model.name_or_path)))
            return self._timed("pretrain", fp, lambda: {"path": cfg.model.name_or_path, "built": False})

        # the built-in model learns the task's own corpus (the review task's by default; the chain sums' for
        # llm_gym/Arithmetic-v0); a task without one gets the review corpus, as a generic English-like model
        corpus = self.loaded.corpus

        def body() -> dict[str, Any]:
            def build() -> Any:
                with self._logger("pretrain") as logger:
                    return build_builtin_model(cfg.pretrain, cache_dir=cfg.model.cache_dir or None, logger=logger,
                                               task=corpus)

            report = self.dist.main_process_only(build)()  # one build; the others load the cached copy
            return {"path": str(report.path), "built": not report.cached, "perplexity_before": report.perplexity_before,
                    "perplexity": report.perplexity_after, "build_seconds": report.seconds}

        built = to_dict(cfg.pretrain)
        if corpus is not None:  # another corpus than `pretrain.task`'s: the corpus counts, that config does not
            built = {**{k: v for k, v in built.items() if k != "task"}, "corpus": corpus_fingerprint(corpus)}
        return self._timed("pretrain", _fingerprint("builtin", built, cfg.model.cache_dir), body)

    def _stage_sft(self) -> dict[str, Any]:
        cfg = self.config
        base = self._need("pretrain")
        # LoRA is part of every trained stage's fingerprint through this one, upstream of them all (none before it existed)
        lora = [{"lora": cfg.model.lora}] if cfg.model.lora else []
        fp = _fingerprint(base["fingerprint"], to_dict(cfg.sft), cfg.seed, self._data_fingerprint("demonstrations"), *lora)
        path = self.out / "sft"
        if not self.demonstrations:  # nothing to imitate: the SFT policy (the reference of KL and win rate) is the base
            return self._timed("sft", fp, lambda: {"path": base["result"]["path"], "skipped": "the task has no demonstrations"})

        def body() -> dict[str, Any]:
            policy = self._trainee(base["result"]["path"])
            with self._logger("sft", purge_step=0) as logger:  # a rerun's curve replaces the last one, no duplicate steps
                trainer = SFTTrainer(cfg.sft, rng=np.random.default_rng(cfg.seed), logger=logger, distributed=self.dist)
                metrics = trainer.fit(policy, self.demonstrations)

            self._save_policy(policy, path)  # atomic, and sealed by a manifest that `_sft_path` checks
            return {"in_run_folder": True, "path": self._rel(path), **metrics}

        return self._timed("sft", fp, body)

    def _stage_reward_model(self) -> dict[str, Any]:
        cfg, rm_cfg = self.config, self.config.reward_model
        sft = self._need("sft")
        upstream = [self._need("pretrain")["fingerprint"], sft["fingerprint"]]
        # the gold judge (when not the built-in one) scores the reward model against gold: part of its inputs
        fp = _fingerprint(upstream, fingerprint_settings(rm_cfg), self.oracle_fingerprint, cfg.seed, self._data_fingerprint("prompts"),
                          *self._judge_fingerprint("gold"))
        path = self.out / "reward_model"
        gold = self.task.gold

        def label() -> tuple[int, list[Comparison]]:
            oracle = make_oracle(cfg.oracle, gold, np.random.default_rng(cfg.seed), self.input_fn, self.chat_tokenizer)
            sources = {"pretrained": self._need("pretrain")["result"]["path"], "sft": self._sft_path()}
            queries = sample_queries(cfg, oracle, self.prompts, sources, self.device)
            # a labeller calibrated to a target agreement finds its temperature on all the stage's queries, those
            # answered in an earlier run included: a resumed stage labels the rest at the same temperature
            calibrate_labeller(oracle, queries)
            # labels persist across runs: the store is append-only and never deleted, and a
            # query already answered there is not asked again (a resumed run keeps every answer)
            # a recorded file by its content: edited, its answers go into a fresh store (the old one is moved aside)
            labels_fp = _fingerprint(upstream, self.oracle_fingerprint, rm_cfg.queries, rm_cfg.k, list(rm_cfg.sources),
                                     cfg.seed, self._data_fingerprint("prompts"))
            with PreferenceStore(store_for(self.out / "labels.sqlite", labels_fp)) as store:
                answered = {a.query_id for a in store.answers()}
                todo = [q for q in queries if q.query_id not in answered]
                collect(oracle, todo, store)
                ids = {q.query_id for q in queries}
                comparisons = [c for c in store.comparisons() if c.query_id in ids]
                return len(queries), comparisons, labeller_figures(oracle, comparisons)

        def body() -> dict[str, Any]:
            n_queries, comparisons, labeller = self.dist.main_process_only(label)()  # one labeller, one store
            store = self.out / "labels.sqlite"
            if not comparisons:
                raise NoAnswersError(
                    f"the oracle answered none of the {n_queries} queries (stdin closed, or every query skipped), so the "
                    f"reward model has nothing to train on; rerun at a terminal, or answer them with `llm-gym label {store}` "
                    "(or its --web page) and rerun: the answers already in the store are kept")
            if all(c.is_tie for c in comparisons):
                raise NoAnswersError(
                    f"all {len(comparisons)} answers are ties, which teach a reward model nothing; they stay in {store} "
                    f"and are not asked again: add strict preferences with `llm-gym label {store}` on new queries "
                    "(raise reward_model.queries) and rerun")
            trainer_rng = np.random.default_rng(cfg.seed + 1)
            # the trainer counts steps from 0 again: purge the last run's curve rather than draw a second one over it
            with self._logger("reward_model", purge_step=0) as logger:
                trainer = RewardTrainer(rm_cfg.trainer, logger=logger, rng=trainer_rng, distributed=self.dist)
                rm = reward_model_from_pretrained(self._sft_path(), rm_cfg.members, seed=cfg.seed,
                                                  pooling=rm_cfg.pooling, device=self.device, peft_config=self.lora)
                metrics = trainer.fit(rm, comparisons, gold, bootstrap_rng=np.random.default_rng(cfg.seed + 2))
            demos = self.demonstrations
            if demos:  # InstructGPT: demonstrations score 0 on average
                rm.normalize([d.prompt for d in demos], [d.completion for d in demos])
            self.dist.main_process_only(rm.save)(path)
            return {"in_run_folder": True, "path": self._rel(path), "labels": len(comparisons), "queries_posed": n_queries,
                    "query_ids": sorted({c.query_id for c in comparisons}),  # what DPO learns from too
                    "ensemble": rm_cfg.members > 1, **labeller, **{k: float(v) for k, v in metrics.items()}}

        return self._timed("reward_model", fp, body)

    def _sft_path(self) -> str:
        """The SFT policy's folder for a stage to load, checked against its manifest (the base model's when SFT was skipped).

        A folder saved before manifests existed loads with a logged warning (`verify_manifest`).
        """
        result = self._need("sft")["result"]
        if "skipped" in result:  # the base model's name or folder
            return result["path"]
        return self._checked_policy_folder(self._result_path(result), "SFT policy folder", "sft")

    def _checked_policy_folder(self, path: Path, kind: str, stage: str) -> str:
        """A policy folder a stage wrote, repaired if a save was cut short and checked against its manifest (once per run)."""
        if path not in self._verified:
            fix = (f"delete {path} and rerun: the {stage} stage runs again, and labels and other stages' results in this "
                   "folder are reused")
            try:
                open_checkpoint(path, marker="config.json", kind=kind, fix=fix)
            except FileNotFoundError as exc:
                raise RunFolderError(f"{exc}: the {stage} stage's result is gone; {fix.split(': ', 1)[1]} (remove the "
                                     f"folder's '{stage}' entry from {self.state_file} if it was already deleted)") from exc
            self._verified.add(path)
        return str(path)

    def _save_policy(self, policy: Policy, folder: Path) -> None:
        """Write a stage's resulting policy atomically, sealed by a manifest (the main process; the others wait)."""
        def save() -> None:
            with write_checkpoint(folder) as tmp:
                policy.save_pretrained(tmp, merged=True)  # a LoRA policy as a plain model: what later stages start from

        self.dist.main_process_only(save)()

    def _policy_path(self, name: str, entry: dict[str, Any]) -> str:
        """The folder of a policy to evaluate: the pretrained model as stored, or a run's folder, checked."""
        if name == "pretrained":
            return entry["result"]["path"]
        return self._checked_policy_folder(self._result_path(entry["result"]), f"{name} policy folder", name)

    def _load_rm(self) -> LearnedReward:
        return load_reward_model(self._result_path(self._need("reward_model")["result"]), device=self.device)

    def _stage_ppo(self) -> None:
        for name, run in self.config.ppo.items():
            self._ppo_run(name, run)

    def _ppo_upstream(self, run: PPOStage) -> list[str]:
        upstream = [self._need("sft")["fingerprint"]]
        if run.reward == "reward_model":
            upstream.append(self._need("reward_model")["fingerprint"])
        return upstream + self._judge_fingerprint(run.reward)

    def _judge_fingerprint(self, kind: str) -> list[str]:
        """What a run paid by `kind` adds to its inputs: the judge's name and code (`stages.code_fingerprint`), so that
        another judge, or an edit to its code, reruns what it scored; nothing for the reward model (its own stage's
        fingerprint is upstream) or for the built-in task's judges (fixed by `pretrain.task`, as before)."""
        if kind == "reward_model":
            return []
        if kind in ("gold", "env"):
            fp = self.loaded.fingerprints["gold" if kind == "gold" else "env_reward"]
            return [] if fp == "builtin" else [fp]
        return [code_fingerprint(self._reward(kind))]

    def _ppo_fingerprint(self, run: PPOStage) -> str:
        return _fingerprint(self._ppo_upstream(run), to_dict(run), self.config.seed, self._data_fingerprint("prompts"))

    def _ppo_run(self, name: str, run: PPOStage) -> dict[str, Any]:
        return self._rl_run(f"ppo.{name}", self.out / "ppo" / name, f"ppo_{name}", run, PPO,
                            self._ppo_fingerprint(run), self._ppo_upstream(run))

    def _rl_run(self, key: str, folder: Path, log_name: str, run: PPOStage | AgentStage, agent_class: type[OnPolicyAgent],
                fp: str, upstream: list[str]) -> dict[str, Any]:
        """An on-policy run (PPO, RLOO, GRPO) from SFT into `folder`, resumed from its checkpoint when its inputs match."""
        cfg = self.config
        # the checkpoint stays usable when only the length of the run changed: train longer, not again
        resume_fp = _fingerprint([upstream, to_dict(replace(run, iterations=1, checkpoint_every=0)), cfg.seed,
                                  self._data_fingerprint("prompts")], "no-length")

        def body() -> dict[str, Any]:
            reward_fn = self._reward(run.reward, f"{key}.reward")
            env = self._env(reward_fn, run.num_envs, run.config.group_size)
            agent_config = run.config
            ptx = list(self.task.pretrain_texts) if agent_config.ptx_coef > 0 else None
            ckpt = folder / "checkpoint"
            marker = folder / "fingerprint.txt"

            def can_resume() -> bool:
                if not (marker.exists() and marker.read_text() == resume_fp):
                    return False
                iteration = agent_class.checkpoint_iteration(ckpt)  # repairs a save cut short by a kill; None: none
                return iteration is not None and iteration <= run.iterations

            def start_fresh() -> None:
                folder.mkdir(parents=True, exist_ok=True)
                # recover_dir first: a checkpoint set aside by a killed save (of other settings) must not come back later
                shutil.rmtree(recover_dir(ckpt), ignore_errors=True)
                write_text(marker, resume_fp)

            resumable = self.dist.main_process_only(can_resume)()
            total = run.iterations * run.num_envs
            if resumable:
                logger = self._logger(log_name)
                agent = agent_class.load(ckpt, env=env, rng=np.random.default_rng(), ptx_texts=ptx, logger=logger,
                                         checkpoint_dir=folder, device=self.device, distributed=self.dist)
                self.on_event(f"[{key}] resuming from its checkpoint at iteration {agent.iteration}")
            else:
                self.dist.main_process_only(start_fresh)()
                logger = self._logger(log_name, purge_step=0)
                policy = self._trainee(self._sft_path())
                config = agent_class.config_class.from_dict({**agent_config.to_dict(), "checkpoint_every": run.checkpoint_every})
                agent = agent_class(policy, env, config, rng=np.random.default_rng(cfg.seed), ptx_texts=ptx, logger=logger,
                                    checkpoint_dir=folder, distributed=self.dist)
                logger.log_hparams({"run": key.split(".", 1)[1], "algorithm": agent_class.algorithm, "reward": run.reward,
                                    "iterations": run.iterations, "num_envs": run.num_envs, **_flat(agent_config.to_dict())})
            try:
                with self._bar(total, agent.num_timesteps, key) as tick:
                    agent.learn(total, callback=tick)
            finally:
                logger.close()
            agent.save(ckpt)  # the main process writes it; the others wait
            self._save_policy(agent.policy, folder / "policy")
            return {"in_run_folder": True, "path": self._rel(folder / "policy"), "algorithm": agent_class.algorithm, "reward": run.reward,
                    "iterations": agent.iteration, "kl_coef_final": float(agent.kl_ctl.value)}

        return self._timed(key, fp, body)

    def _reward(self, kind: str, what: str = "reward") -> Any:
        """What a run is paid (or selects by): the trained reward model, the task's gold judge, the env's reward, or a
        reward function by import path (imported and tried on a first batch once per Pipeline; `what` names its key)."""
        if kind == "reward_model":
            return self._load_rm()
        if kind == "gold":
            return self.task.gold
        if kind == "env":
            return self.loaded.env_reward
        if kind not in self._reward_fns:
            self._reward_fns[kind] = resolve_reward(kind, what, self.task)
        return self._reward_fns[kind]

    # ---------------------------------------------------------------- runs of any algorithm ([agent.<run>])
    def _stage_agent(self) -> None:
        for name, run in self.config.agent.items():
            self._agent_run(name, run)

    def _agent_upstream(self, run: AgentStage) -> list[str]:
        upstream = [self._need("sft")["fingerprint"]]
        if run.algorithm == "dpo" or run.reward == "reward_model":  # DPO learns from the reward-model stage's labels
            upstream.append(self._need("reward_model")["fingerprint"])
        return upstream + (self._judge_fingerprint(run.reward) if run.algorithm != "dpo" else [])

    def _agent_fingerprint(self, run: AgentStage) -> str:
        return _fingerprint(self._agent_upstream(run), to_dict(run), self.config.seed, self._data_fingerprint("prompts"))

    def _agent_run(self, name: str, run: AgentStage) -> dict[str, Any]:
        key, folder = f"agent.{name}", self.out / "agent" / name
        fp, upstream = self._agent_fingerprint(run), self._agent_upstream(run)
        if run.algorithm in ON_POLICY:
            return self._rl_run(key, folder, f"agent_{name}", run, ON_POLICY[run.algorithm], fp, upstream)
        if run.algorithm == "best_of_n":  # nothing to train: the evaluation samples N and keeps the best
            return self._timed(key, fp, lambda: {"path": self._sft_path(), "algorithm": "best_of_n", "reward": run.reward,
                                                 "n": run.config.n, "kl_analytic": best_of_n_kl(run.config.n)})
        return self._timed(key, fp, lambda: self._dpo_body(name, run, folder))

    def _dpo_body(self, name: str, run: AgentStage, folder: Path) -> dict[str, Any]:
        """DPO from SFT on the reward-model stage's labels (the answers in labels.sqlite to the queries that stage posed,
        so both learn from the same comparisons), with the SFT policy as the frozen reference. A run folder from before
        the stage recorded its queries gives DPO every comparison in the store. An interrupted DPO run starts again."""
        ids = self._need("reward_model")["result"].get("query_ids")

        def read() -> list[Comparison]:
            with PreferenceStore(self.out / "labels.sqlite") as store:
                return [c for c in store.comparisons() if ids is None or c.query_id in set(ids)]

        comparisons = self.dist.main_process_only(read)()  # the main process reads the store; every process gets it
        policy = self._trainee(self._sft_path())
        with self._logger(f"agent_{name}", purge_step=0) as logger:
            logger.log_hparams({"run": name, "algorithm": "dpo", "labels": len(comparisons), **_flat(run.config.to_dict())})
            agent = DPO(policy, comparisons, run.config, rng=np.random.default_rng(self.config.seed), logger=logger,
                        distributed=self.dist)
            agent.learn()
            metrics = agent.evaluate_preferences()
        self._save_policy(policy, folder / "policy")
        return {"in_run_folder": True, "path": self._rel(folder / "policy"), "algorithm": "dpo", "labels": len(comparisons),
                **{f"heldout_{k}": float(v) for k, v in metrics.items()}}

    def _stage_preference_loop(self) -> None:
        for name, loop in self.config.preference_loop.items():
            self._loop_run(name, loop)

    def _loop_fingerprint(self, loop: LoopStage) -> str:
        upstream = [self._need("sft")["fingerprint"]]
        settings = fingerprint_settings(loop)
        del settings["schedule"]["on_no_answers"]  # whether a silent round stops the loop changes nothing it trains
        return _fingerprint(upstream, settings, self.oracle_fingerprint, self.config.seed,
                            self._data_fingerprint("prompts"))

    def _loop_run(self, name: str, loop: LoopStage) -> dict[str, Any]:
        """A preference loop from SFT. Its labels live in its own store, which survives an interruption:
        a rerun starts the policy again from SFT but trains the reward model on every label already
        given and asks only for the rest of the budget (`PreferenceLoop`'s resume)."""
        cfg = self.config
        folder = self.out / "preference_loop" / name

        def body() -> dict[str, Any]:
            gold = self.task.gold
            sft_path = self._sft_path()
            policy = self._trainee(sft_path)
            seed = cfg.seed
            rm = reward_model_from_pretrained(sft_path, loop.members, seed=seed, device=self.device, peft_config=self.lora)
            env = self._env(rm, loop.num_envs)
            demos = self.demonstrations
            store_path = self.dist.main_process_only(store_for)(folder / "labels.sqlite", self._loop_fingerprint(loop))
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
                                             reference=([d.prompt for d in demos], [d.completion for d in demos]) if demos else None)
                source = CompletionSource(policy, self.prompts, loop.config.sampling, rng=np.random.default_rng(seed + 3),
                                          k=loop.k)
                oracle = make_oracle(cfg.oracle, gold, np.random.default_rng(seed + 4), self.input_fn, self.chat_tokenizer)
                asked = store.queries() if self.dist.is_main else []
                if asked:  # a resumed loop labels at the temperature its first round's queries gave, not the rest's
                    first = loop.schedule.initial_labels or loop.schedule.labels_per_round  # what the first collect asked
                    calibrate_labeller(oracle, asked[:first])
                selector = DisagreementSelector() if loop.selector == "disagreement" else RandomSelector()
                agent = PreferenceLoop(ppo, source, selector, oracle, learner, store, loop.schedule,
                                       rng=np.random.default_rng(seed + 5), logger=logger, distributed=self.dist)
                with self._bar(loop.iterations * loop.num_envs, 0, f"preference_loop.{name}") as tick:
                    try:
                        agent.learn(loop.iterations * loop.num_envs, callback=tick)
                    except NoAnswersError as err:  # its advice as this experiment's key
                        raise NoAnswersError(str(err).replace(
                            "PreferenceLoopConfig(on_no_answers='wait')",
                            f'preference_loop.{name}.schedule.on_no_answers = "wait"')) from err
                labels = self.dist.broadcast_object(store.counts()["answers"] if self.dist.is_main else None)
                answered = store.comparisons(include_ties=True) if self.dist.is_main else []  # read once for both
                preferences = self.dist.broadcast_object(sum(not c.is_tie for c in answered) if self.dist.is_main else None)
                figures = self.dist.broadcast_object(labeller_figures(oracle, answered) if self.dist.is_main else None)
            if not preferences:
                # a loop told to wait that got no preference to the end: its policy was trained against an untrained
                # reward model; not recorded as done, so a rerun after the queries are answered trains it properly
                raise NoAnswersError(
                    f"preference_loop.{name}: the oracle gave no preference in the whole loop ({labels} answers, none "
                    f"of them a preference), so its reward model was never trained and its policy is not kept; answer "
                    f"the queries in {store_path} (llm-gym label {store_path}) and rerun")
            self._save_policy(policy, folder / "policy")
            self.dist.main_process_only(rm.save)(folder / "reward_model")
            return {"in_run_folder": True, "path": self._rel(folder / "policy"), "reward_model": self._rel(folder / "reward_model"), "labels": labels,
                    "ensemble": loop.members > 1, "iterations": ppo.iteration, "rounds": agent.rounds, **figures}

        return self._timed(f"preference_loop.{name}", self._loop_fingerprint(loop), body)

    def _stage_evaluation(self) -> dict[str, Any]:
        fp, body = self._evaluation()
        # evaluation samples a few hundred completions: the main process does it, the others get its table
        return self._timed("evaluation", fp, self.dist.main_process_only(body))

    def _evaluation(self) -> tuple[str, Callable[[], dict[str, Any]]]:
        """The evaluation's fingerprint and the body that evaluates every policy of the run whose result is current."""
        cfg = self.config
        policies = {"pretrained": self._need("pretrain"), "sft": self._need("sft")}
        for name, run in cfg.ppo.items():
            key = f"ppo.{name}"
            if key in self.state and self.state[key]["fingerprint"] == self._ppo_fingerprint(run):
                policies[name] = self.state[key]
        for name, agent_run in cfg.agent.items():
            key = f"agent.{name}"
            if key in self.state and self.state[key]["fingerprint"] == self._agent_fingerprint(agent_run):
                policies[name] = self.state[key]
        for name, loop in cfg.preference_loop.items():
            key = f"preference_loop.{name}"
            if key in self.state and self.state[key]["fingerprint"] == self._loop_fingerprint(loop):
                policies[name] = self.state[key]
        rm_entry = self.state.get("reward_model")
        evaluation = to_dict(cfg.evaluation)
        if not verifies_answers(self.task.gold):  # accuracy and pass@k settings change nothing on other tasks
            evaluation = {k: v for k, v in evaluation.items() if k not in ("samples_per_prompt", "pass_k")}
        fp = _fingerprint({k: v["fingerprint"] for k, v in policies.items()},
                          rm_entry["fingerprint"] if rm_entry else None, evaluation, cfg.seed,
                          self._data_fingerprint("eval_prompts"), *self._judge_fingerprint("gold"))

        def body() -> dict[str, Any]:
            task, gold = self.task, self.task.gold
            rm = self._load_rm() if rm_entry else None
            prompts = (self.eval_prompts or self.prompts)[: cfg.evaluation.prompts]
            if not self.eval_prompts:
                self.on_event("[evaluation] the task has no held-out prompts: evaluating on training prompts")
            sft = Policy.from_pretrained(self._sft_path(), device=self.device)
            # the win-rate judge is the gold judge as a (possibly noisy) synthetic oracle; no gold judge, no win rate
            judge = None if gold is None else SyntheticOracle(
                gold, rng=np.random.default_rng(cfg.seed + 3), temperature=cfg.evaluation.judge_temperature,
                flip_prob=cfg.evaluation.judge_flip_prob, name="judge")
            rows = {}
            for name, entry in policies.items():
                if name == "sft":
                    policy = sft
                elif entry["result"].get("algorithm") == "best_of_n":  # N samples of the SFT policy, the best kept
                    run = cfg.agent[name]
                    select_by = rm if run.reward == "reward_model" else self._reward(run.reward, f"agent.{name}.reward")
                    policy = BestOfN(sft, select_by, run.config, rng=np.random.default_rng(cfg.seed))
                else:
                    policy = Policy.from_pretrained(self._policy_path(name, entry), device=self.device)
                t = time.perf_counter()
                with PeakMemory() as memory:
                    report = evaluate_policy(policy, prompts, sampling=cfg.evaluation.sampling, seed=cfg.evaluation.seed,
                                             gold_fn=gold, reward_fn=rm, reference=sft, oracle=judge,
                                             heldout_texts=list(task.heldout_texts) or None,
                                             samples_per_prompt=cfg.evaluation.samples_per_prompt,
                                             pass_k=cfg.evaluation.pass_k)
                rows[name] = {**report.as_dict(), "eval_seconds": time.perf_counter() - t,
                              **{f"eval_{k}": v for k, v in memory.as_dict().items()}}
                if report.gold is not None:
                    accuracy = "" if report.accuracy_greedy is None else (
                        f", accuracy {report.accuracy_greedy:.1%} greedy, {report.accuracy_sampled:.1%} sampled")
                    self.on_event(f"[evaluation] {name}: gold {report.gold:+.3f}{accuracy}")
            reference = demonstrations_gold(gold, self.demonstrations)
            return {"rows": rows, "prompts": len(prompts),
                    **({"demonstrations_gold": reference} if reference is not None else {})}

        return fp, body

    def evaluate(self, force: bool = False, into: str | PathLike[str] | None = None) -> dict[str, Any]:
        """Evaluate the run's policies (again, when `force`), rewrite summary.json and return the summary.

        With `into`, the policies are evaluated afresh into that file alone (the summary with the evaluation, plus the
        config it ran under), and the run's own state.json and summary.json are left as they are: they go on
        describing the run its config.json describes (`llm-gym eval RUN --set evaluation.prompts=50`).
        """
        self._use_threads()
        if into is not None:
            fp, body = self._evaluation()
            self.on_event("[evaluation] running")
            result = self._measured("evaluation", self.dist.main_process_only(body))
            state = {**self.state, "evaluation": {"fingerprint": fp, "result": result}}
            summary = {**self.summary(state), "config": to_dict(self.config)}
            self._write(Path(into), summary)
            return summary
        if force:
            self.state.pop("evaluation", None)
        self._stage_evaluation()
        summary = self.summary()
        self._write(self.out / "summary.json", summary)
        return summary

    # -------------------------------------------------------------------------------- summary
    def summary(self, state: dict[str, Any] | None = None) -> dict[str, Any]:
        """Per stage: gold, RM score, KL to SFT, win rate vs SFT, perplexity, labels used, wall time (what is known),
        from the run's state (or `state`)."""
        return build_summary(self.config, self.state if state is None else state, self.out)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a/b": v} with hparams-friendly values (None becomes "none")."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = "none" if v is None else v
    return out
