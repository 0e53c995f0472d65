"""What the pipeline's stages are built from: the task, the environment, the labeller, the queries, the label store.

`Pipeline` (the runner) decides which stage runs and what is reused; the functions here
build the objects a stage needs from the experiment's config, the same way for every
task: the built-in review task, an environment a user registered, or files.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium
from gymnasium.envs.registration import EnvSpec
from gymnasium.vector import VectorEnv
import numpy as np

from llm_gym.agents.lm_preferences import CompletionSource
from llm_gym.app.config import BUILTIN_ENV, STAGES, ExperimentConfig, OracleSpec, TaskSpec
from llm_gym.core.data import DatasetError, load_demonstrations, load_prompts
from llm_gym.core.preferences import Comparison, Query
from llm_gym.core.reward import RewardFn, _name, check_reward_fn, resolve_reward_fn
from llm_gym.core.task import PromptTask, Task
from llm_gym.envs.prompt_bandit import PromptBanditVecEnv
from llm_gym.feedback.oracles import PreferenceOracle, RecordedOracle, SyntheticOracle, TerminalOracle
from llm_gym.feedback.store import PreferenceStore, move_store, store_files
from llm_gym.infra.atomic import write_text
from llm_gym.infra.configio import ConfigError, to_dict
from llm_gym.infra.distributed import Distributed
from llm_gym.infra.runfolder import RunFolderError, check_writable_folder, read_json
from llm_gym.models.policy import Policy
from llm_gym.models.reward_trainer import RewardTrainerConfig
from llm_gym.tasks.review import ReviewTask, ReviewTaskConfig

__all__ = ["LoadedTask", "calibrate_labeller", "chat_tokenizer", "check_inputs", "check_task", "code_fingerprint", "fingerprint_settings", "upgrade_written_config",
           "config_advice", "folder_fingerprint", "labeller_figures", "load_task", "make_env", "make_oracle",
           "oracle_fingerprint", "read_comparisons", "read_state", "resolve_reward", "sample_queries", "store_for"]

_DATA_PARTS = ("prompts", "eval_prompts", "demonstrations")


class LoadedTask(NamedTuple):
    """The experiment's task, read from its environment and files."""

    task: Task
    """Prompts, held-out prompts, demonstrations, pretraining and held-out text, the gold judge (or None)."""
    env_reward: RewardFn
    """The environment's own reward function (what `PPOStage.reward = "env"` pays)."""
    fingerprints: dict[str, str]
    """Per data part ("prompts", "eval_prompts", "demonstrations"): a hash of what it holds, so editing a file
    or the environment's data reruns what depends on it; "gold" and "env_reward": the judges by name and code
    (`code_fingerprint`). "builtin" for the built-in task's, fixed by `pretrain.task`."""
    corpus: Task | None
    """The task whose pretraining text the built-in model learns (`build_builtin_model`'s `task`): the environment's
    own task when it has pretraining text (the chain sums' worksheets; a review task of another `task_config`), or
    None for the review corpus that `pretrain.task` generates (the built-in review task as configured, and any task
    without pretraining text)."""
    vector_spec: EnvSpec | None
    """The registration the RL runs batch (`gymnasium.make_vec` through its vector entry point, with the kwargs it
    was made with); None when the run trains on a generic `PromptBanditVecEnv` over the task instead (a prompts
    file or a gold judge replaced the environment's, or the registration has no vector entry point)."""


class _ChatTokenizer:
    """The given model's tokenizer, loaded when chat-message data first needs its template (plain text never does,
    and a Hub name that cannot be reached from here then costs nothing)."""

    def __init__(self, name_or_path: str) -> None:
        self._name_or_path, self._tokenizer = name_or_path, None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # copy, pickle and the like probe for these: not a reason to load a tokenizer
            raise AttributeError(name)
        if self._tokenizer is None:
            from transformers import AutoTokenizer  # here, so that reading a config stays light

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self._name_or_path)
            except (OSError, ValueError) as err:
                raise ConfigError(f"model.name_or_path: cannot load the tokenizer of {self._name_or_path!r}, whose chat "
                                  f"template renders the chat messages in the data: {err}") from err
        return getattr(self._tokenizer, name)


def chat_tokenizer(name_or_path: str) -> Any:
    """The tokenizer whose chat template renders chat-message data: the given model's, loaded on first use (None for
    the built-in model, which has no chat template).

    Files of chat messages ([{role, content}, ...]) become text with this template, prompts with the
    generation prompt, exactly as the policy trained on them will read them.
    """
    return _ChatTokenizer(name_or_path) if name_or_path else None


def _file_fingerprint(path: str, *fields: tuple[str, str, str]) -> str:
    """A data file by its content, and by the (name, value, default) fields read from it where they are not the
    defaults (a changed field reads other data; a file read with the defaults keeps the fingerprint it always had)."""
    data = Path(path).read_bytes()
    named = [f"{name}={value}" for name, value, default in fields if value != default]
    return _hash_bytes(data + ("\x1d" + "\x1f".join(named)).encode() if named else data)


def folder_fingerprint(folder: Path) -> list[str]:
    """A local model folder by what it holds, so that replacing its weights or editing its config, tokenizer or chat
    template reruns what was built on it: the small files by content, the weights by size and modification time
    (hashing gigabytes on every run would cost more than it saves). Nothing for a Hub name."""
    if not folder.is_dir():
        return []
    parts = []
    for file in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        stat = file.stat()
        if stat.st_size < 4 * 2**20 and file.suffix in (".json", ".jinja", ".txt", ".model", ""):
            what = _hash_bytes(file.read_bytes())
        else:
            what = f"{stat.st_size}:{stat.st_mtime_ns}"
        parts.append(f"{file.name}:{what}")
    return parts


def code_fingerprint(fn: object) -> str:
    """A reward function (or judge) by its import name and the hash of its source code, so that editing its code
    reruns the stages it scored, plus what it holds when it says (`fn.fingerprint()`: an answer checker's reference
    answers); "none" for no function. Code without readable source (a builtin, a C extension) is named only."""
    if fn is None:
        return "none"
    target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else type(fn)
    # a judge that carries data (an answer checker's reference answers) says what it holds
    held = fn.fingerprint() if callable(getattr(fn, "fingerprint", None)) else None
    try:
        source = inspect.getsource(target)
    except (OSError, TypeError):
        return str(_describe(fn)) + (f"+{held}" if held else "")
    return f"{_describe(fn)}@{_hash_bytes(source.encode())}" + (f"+{held}" if held else "")


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


def load_task(spec: TaskSpec, builtin: ReviewTaskConfig, tokenizer: Any = None) -> LoadedTask:
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
    # an environment that reads its own dataset the way the task's files are read (PromptBanditEnv) reads it with
    # the same field name and, for chat messages, the model's chat template
    accepts = _make_kwargs(spec.env)
    if "prompt_field" in accepts:
        kwargs.setdefault("prompt_field", spec.prompt_field)
    if "tokenizer" in accepts and tokenizer is not None:
        kwargs.setdefault("tokenizer", tokenizer)
    try:
        env = gymnasium.make(spec.env, **kwargs)
    except DatasetError as exc:
        raise DatasetError(f"task.env_kwargs: {config_advice(str(exc), 'task')}") from exc
    except (gymnasium.error.Error, TypeError, ValueError, ImportError) as exc:
        raise ConfigError(f"task.env: cannot make {spec.env!r} with env_kwargs {spec.env_kwargs}: {exc}") from exc
    try:
        base = env.unwrapped
        task, reward = getattr(base, "task", None), getattr(base, "reward_fn", None)
        vector_spec = env.spec if env.spec is not None and env.spec.vector_entry_point is not None else None
    finally:
        env.close()
    if not isinstance(task, Task) or not callable(reward):
        raise ConfigError(
            f"task.env: {spec.env!r} makes a {type(base).__name__}, which has no `task` and `reward_fn`; the pipeline "
            "runs prompt-bandit environments (llm_gym/PromptBandit-v0, or a registration of PromptBanditEnv or a "
            "subclass of it with your dataset and reward)")
    gold = _import_reward(spec.gold, "task.gold") if spec.gold else task.gold
    read = _readers(spec, tokenizer)
    merged = PromptTask(
        prompts=list(read["prompts"](spec.prompts)) if spec.prompts else list(task.prompts),
        eval_prompts=list(read["eval_prompts"](spec.eval_prompts)) if spec.eval_prompts else list(task.eval_prompts),
        demonstrations=read["demonstrations"](spec.demonstrations) if spec.demonstrations else list(task.demonstrations),
        pretrain_texts=task.pretrain_texts,
        heldout_texts=task.heldout_texts,
        gold=gold,
    )
    if spec.gold:  # user code, met for the first time: tried now, not at the first labelled comparison
        _try_reward(gold, "task.gold", spec.gold, merged)
    # the built-in task's data and judges are fixed by `pretrain.task`, upstream of every stage: named, not hashed
    default = spec.env == BUILTIN_ENV and not spec.env_kwargs
    fingerprints = {}
    for part in _DATA_PARTS:
        path = getattr(spec, part)
        if path:
            fields = [("prompt_field", spec.prompt_field, "prompt")]
            if part == "demonstrations":
                fields.append(("completion_field", spec.completion_field, "completion"))
            fingerprints[part] = _file_fingerprint(path, *fields)
        elif default:
            fingerprints[part] = "builtin"
        else:  # the data themselves, whatever environment or reward they came with
            items = getattr(merged, part)
            text = "\x1e".join(d.prompt + "\x1f" + d.completion if part == "demonstrations" else d for d in items)
            fingerprints[part] = _hash_bytes(text.encode())
    # the judges, by name and code, for the stages they score (labels, gold-paid runs, the evaluation)
    fingerprints["gold"] = "builtin" if default and not spec.gold else code_fingerprint(gold)
    fingerprints["env_reward"] = "builtin" if default else code_fingerprint(reward)
    if spec.prompts or spec.gold:  # the environment would hand out its own prompts and report its own gold
        vector_spec = None
    return LoadedTask(merged, reward, fingerprints, _corpus(task, builtin), vector_spec)


def _corpus(task: Task, builtin: ReviewTaskConfig) -> Task | None:
    """The task whose corpus the built-in model learns (see `LoadedTask.corpus`); a review task is passed as it is, so
    its model keeps the review model's cache folder."""
    if isinstance(task, ReviewTask):
        return None if task.config == builtin else task
    return task if task.pretrain_texts else None


def _make_kwargs(env_id: str, vector: bool = False) -> set[str]:
    """The keyword arguments the environment registered as `env_id` (its vector entry point with `vector`) takes
    (empty when that cannot be read)."""
    try:
        spec = gymnasium.spec(env_id)
        entry = spec.vector_entry_point if vector else spec.entry_point
        target = gymnasium.envs.registration.load_env_creator(entry) if isinstance(entry, str) else entry
        return set(inspect.signature(target).parameters)
    except (gymnasium.error.Error, ImportError, AttributeError, TypeError, ValueError):
        return set()


def _import_reward(import_path: str, what: str) -> RewardFn:
    """The reward function at `import_path` ("module:name"), or a ConfigError naming the config key `what`."""
    try:
        return resolve_reward_fn(import_path, what)
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err)) from err


def _try_reward(fn: RewardFn, what: str, import_path: str, task: Task) -> None:
    """Call a reward function named in the config on two (prompt, completion) pairs of the task (its first prompts, with
    its demonstrations' completions where it has them) and refuse it, saying what it returned, unless it gives one
    finite float per completion."""
    prompts = list(task.prompts[:2]) or ["the film was"]
    demos = [d.completion for d in task.demonstrations[: len(prompts)]]
    completions = demos if len(demos) == len(prompts) else [" good .", " not what I expected at all ."][: len(prompts)]
    try:
        check_reward_fn(fn, prompts, completions, what=f"{what} = {import_path!r}")
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err)) from err


def resolve_reward(import_path: str, what: str, task: Task) -> RewardFn:
    """The reward function a run names by import path ("module:name", found from the folder the command runs in),
    imported and tried on a first batch of `task` (see `_try_reward`).

    Raises:
        ConfigError: it cannot be imported, is not callable, raises, or does not return one finite float per
            completion; the message names the config key `what` and says what it returned.
    """
    fn = _import_reward(import_path, what)
    _try_reward(fn, what, import_path, task)
    return fn


def _readers(spec: TaskSpec, tokenizer: Any) -> dict[str, Callable[[str], Any]]:
    """The reader of each data file of `spec`, with its field names and the chat template's tokenizer."""
    prompts = functools.partial(load_prompts, prompt_field=spec.prompt_field, tokenizer=tokenizer)
    demos = functools.partial(load_demonstrations, prompt_field=spec.prompt_field, completion_field=spec.completion_field,
                              tokenizer=tokenizer)
    return {"prompts": prompts, "eval_prompts": prompts, "demonstrations": demos}


def read_comparisons(spec: OracleSpec, tokenizer: Any = None) -> RecordedOracle:
    """The recorded oracle of `spec`: its file, read with its field names and the chat template's tokenizer."""
    return RecordedOracle.from_file(spec.path, tokenizer=tokenizer, **spec.field_names())


# Fields added to a config after run folders were recorded with it, with the value those runs had without them:
# a fingerprint leaves such a field out while it holds that value, so that those folders resume; any other value
# (a later default included) is an input like any other.
_ADDED_FIELDS: dict[type, dict[str, Any]] = {
    RewardTrainerConfig: {"lr_schedule": "constant", "warmup_fraction": 0.0, "label_smoothing": 0.0,
                          "keep_best": False},  # issue 19
}


def _added_at_old_value(instance: Any, name: str) -> bool:
    """True for a field of `_ADDED_FIELDS` holding the value older run folders had without it."""
    added = _ADDED_FIELDS.get(type(instance), {})
    return name in added and getattr(instance, name) == added[name]


def fingerprint_settings(config: Any) -> Any:
    """`to_dict(config)` as a stage's fingerprint takes it: `_ADDED_FIELDS` left out, at any depth, while they hold
    the value older run folders had without them."""
    return to_dict(config, omit=_added_at_old_value)


def upgrade_written_config(written: Mapping[str, Any]) -> dict[str, Any]:
    """A run's config.json as today's dataclasses read it: the `_ADDED_FIELDS` a config written before them lacks
    get the value that run had without them (not today's default), so the run reads back as the run it was."""
    data = copy.deepcopy(dict(written))
    trainers = [data.get("reward_model", {}).get("trainer")]
    trainers += [loop.get("trainer") for loop in (data.get("preference_loop") or {}).values() if isinstance(loop, dict)]
    for trainer in trainers:
        if isinstance(trainer, dict):
            for name, value in _ADDED_FIELDS[RewardTrainerConfig].items():
                trainer.setdefault(name, value)
    return data


def oracle_fingerprint(spec: OracleSpec, gold: str = "builtin") -> dict[str, Any]:
    """The labeller's settings as a fingerprint sees them: a recorded file by the sha256 of its content, not its path.

    Editing the file (every label reversed, say) reruns the stages it labels and sends its answers into a fresh
    store; moving it unchanged reruns nothing. A synthetic oracle adds its judge (`gold`, the task's
    `fingerprints["gold"]`) unless it is the built-in one. Other settings are as written, as before.

    Raises:
        DatasetError: the recorded file cannot be read.
    """
    settings = to_dict(spec)
    defaults = OracleSpec()
    for name in spec.field_names():  # the field names only as far as they change what is read (older runs have none)
        if spec.kind != "recorded" or settings[name] == getattr(defaults, name):
            del settings[name]
    # the labeller's noise in the shape older run folders recorded, so they resume: the raw form as {temperature}
    # (no agreement key, as before `agreement` existed), the calibrated form as {temperature: 1.0 (then unused, the
    # old default), agreement}. Other kinds use neither, but older folders recorded them as written (temperature
    # 1.0 when unset): a person's answers must not be moved aside for a setting they never used.
    target = spec.target_agreement if spec.kind == "synthetic" else spec.agreement
    settings["temperature"] = spec.temperature if spec.temperature is not None else 1.0
    if target is None:
        del settings["agreement"]
    else:
        settings["agreement"] = target
    if spec.kind == "synthetic" and gold != "builtin":  # its labels are the judge's: another judge, other labels
        settings["gold"] = gold
    if spec.kind == "recorded":
        try:
            settings["path"] = "sha256:" + _hash_bytes(Path(spec.path).read_bytes())
        except OSError as err:
            raise DatasetError(f"oracle.path: cannot read the comparison file {spec.path}: {err.strerror or err}") from err
    return settings


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


def _stage_inputs(config: ExperimentConfig) -> dict[str, list[str]]:
    """Per stage, the earlier stages whose results it reads (what `Pipeline._need` looks up)."""
    def from_sft(runs: Mapping[str, Any], reads_rm: bool) -> list[str]:
        return ["sft", "reward_model"] if reads_rm else ["sft"] if runs else []

    ppo_rm = any(run.reward == "reward_model" for run in config.ppo.values())
    # DPO learns from the reward-model stage's labels
    agent_rm = any(run.reward == "reward_model" or run.algorithm == "dpo" for run in config.agent.values())
    return {"pretrain": [], "sft": ["pretrain"], "reward_model": ["pretrain", "sft"], "ppo": from_sft(config.ppo, ppo_rm),
            "agent": from_sft(config.agent, agent_rm), "preference_loop": ["sft"] if config.preference_loop else [],
            "evaluation": ["pretrain", "sft"]}


def _check_model(name_or_path: str) -> str | None:
    """What is wrong with a local model folder, or None (a Hugging Face model name cannot be checked offline)."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            return (f"model.name_or_path: {path} is not a model folder (it has no config.json); give a folder written by "
                    "save_pretrained, or a Hugging Face model name")
        return None
    looks_local = path.is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.count("/") >= 2
    if looks_local:  # a Hub name is "name" or "owner/name"
        return f"model.name_or_path: the folder {name_or_path} does not exist (cwd is {Path.cwd()}); check the path"
    return None


def config_advice(message: str, section: str) -> str:
    """A loader's message with its Python-API advice put as the experiment file's keys: `pass prompt_field="text"`
    becomes `set task.prompt_field = "text"` (`section` is "task" or "oracle"), and the tokenizer a chat file needs
    becomes the model that brings its chat template."""
    message = re.sub(r"\bpass (?=\w+_field=)", "set ", message)
    message = re.sub(r'\b(\w+_field)="([^"]*)"', rf'{section}.\1 = "\2"', message)
    message = re.sub(r"\b(\w+_field)=", rf"{section}.\1", message)
    return message.replace("pass the policy's tokenizer: tokenizer=policy.tokenizer",
                           "set model.name_or_path to a model whose tokenizer has a chat template")


def _check_lora(config: ExperimentConfig) -> str | None:
    """What is wrong with `model.lora` (peft missing, a field LoraConfig does not take, target modules the model does
    not have), or None. The model is built on the meta device from its config: no weights are read or allocated."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config

    from llm_gym.models.policy import add_peft_adapter, to_peft_config

    try:
        to_peft_config(dict(config.model.lora))
        if config.model.name_or_path:
            model_config = AutoConfig.from_pretrained(config.model.name_or_path)
        else:  # the built-in GPT-2's shape (the weights need not be built yet)
            p = config.pretrain
            model_config = GPT2Config(vocab_size=p.vocab_size, n_positions=p.n_positions, n_embd=p.n_embd, n_layer=p.n_layer,
                                      n_head=p.n_head)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(model_config)
    except (ImportError, TypeError, ValueError, OSError) as err:
        return f"model.lora: {err}"
    try:
        add_peft_adapter(model, dict(config.model.lora), "CAUSAL_LM")
    except ValueError as err:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                        if type(m).__name__ in ("Linear", "Conv1D", "Embedding") and "." in n})
        return f"model.lora: {err} (the model's linear and embedding layers: {names})"
    return None


def check_inputs(config: ExperimentConfig, state: Mapping[str, Any], out: Path, tokenizer: Any = None) -> None:
    """Refuse, before the first stage runs, an experiment whose inputs cannot be used, saying what to do.

    Its inputs are the run folder `out` (it must be creatable and writable), the results of
    earlier stages that a selected stage reads (``stages = ["sft"]`` in a fresh folder has no
    pretrained model to start from), a local model folder, and every file the config names:
    `task.prompts`, `task.eval_prompts` and `task.demonstrations` are read in full (a bad line,
    an empty prompt or text no tokenizer can encode fails now, not after pretraining), and so is
    a recorded oracle's `oracle.path`, with their field names and, for chat messages, the
    model's chat template. `model.lora` must be a LoRA config peft accepts.

    Args:
        config: the experiment.
        state: the stages already done in `out` (its state.json; empty for a fresh folder).
        out: the run folder.
        tokenizer: the chat template's tokenizer (`chat_tokenizer`, which the pipeline holds once); None = made here.

    Raises:
        RunFolderError: `out` cannot be created or written.
        ConfigError: a stage needs one that is neither in `stages` nor done in `out`, or
            `model.name_or_path` is a local path that is not a model folder.
        DatasetError: one or more input files are missing or malformed (each with its config
            key, and the file's own line where the fault is).
    """
    check_writable_folder(out, "the run folder")
    problems = []
    inputs = _stage_inputs(config)
    # a given model is the pretrained policy: the pipeline records it whether or not `stages` lists "pretrain"
    selected = {*config.stages, *(["pretrain"] if config.model.name_or_path else [])}
    missing = {stage: [n for n in inputs[stage] if n not in selected and n not in state]
               for stage in STAGES if stage in config.stages}
    missing = {stage: needs for stage, needs in missing.items() if needs}
    if missing:
        wanted, todo = set(config.stages), [n for needs in missing.values() for n in needs]
        while todo:  # what the missing stages need in turn
            stage = todo.pop()
            if stage not in wanted:
                wanted.add(stage)
                todo += [n for n in inputs[stage] if n not in state]
        reads = "; ".join(f"{stage!r} reads the result of {' and '.join(map(repr, needs))}" for stage, needs in missing.items())
        one = len({n for needs in missing.values() for n in needs}) == 1
        has, it = ("has", "it") if one else ("have", "them")
        problems.append(f"stages = {list(config.stages)}: {reads}, which {has} not run in {out}; run {it} too: "
                        f"stages = {[s for s in STAGES if s in wanted]} (or run {it} into this folder first)")
    if config.model.name_or_path:
        problems += [p for p in [_check_model(config.model.name_or_path)] if p]
    if config.model.lora and not problems:
        problems += [p for p in [_check_lora(config)] if p]
    if problems:
        raise ConfigError(problems[0] if len(problems) == 1 else "the experiment cannot start:\n  " + "\n  ".join(problems))
    bad_files = []
    tokenizer = tokenizer if tokenizer is not None else chat_tokenizer(config.model.name_or_path)
    read = _readers(config.task, tokenizer)
    readers: list[tuple[str, str, Callable[[str], Any]]] = [
        (f"task.{part}", getattr(config.task, part), read[part]) for part in _DATA_PARTS]
    if config.oracle.kind == "recorded":
        readers.append(("oracle.path", config.oracle.path, lambda path: read_comparisons(config.oracle, tokenizer)))
    for key, path, reader in readers:
        if path:
            try:
                reader(path)
            except DatasetError as err:
                bad_files.append(f"{key}: {config_advice(str(err), key.split('.')[0])}")
    if bad_files:
        raise DatasetError(bad_files[0] if len(bad_files) == 1 else
                           "the experiment's input files cannot be used:\n  " + "\n  ".join(bad_files))


def read_state(path: Path) -> dict[str, Any]:
    """The stages done in a run folder: its state.json (`path`), which the pipeline writes atomically.

    Raises:
        RunFolderError: the file was damaged (cut short, edited), with what to do.
    """
    fix = ("delete it to run every stage again (the built model is cached, PPO runs resume from their checkpoints and "
           "the labels in the folder's stores are reused), or restore it from a copy")
    state = read_json(path, "the record of the stages done in this run folder", fix)
    if not isinstance(state, dict):
        raise RunFolderError(f"{path} (the record of the stages done in this run folder) is damaged: it holds "
                             f"{type(state).__name__}, not an object; {fix}")
    return state


def make_env(loaded: LoadedTask, reward_fn: RewardFn, num_envs: int, dist: Distributed, group_size: int = 1) -> VectorEnv:
    """The batched environment an RL run trains on, paying `reward_fn` (each prompt `group_size` times per batch for
    the group algorithms); under a launcher each process scores its shard of a batch.

    It is the registered environment itself, made through its vector entry point with the kwargs it was made with
    and `reward_fn` in place of its own, so a subclass's prompts, scoring and `info` are what the agent sees. Where
    the task's prompts or gold judge came from elsewhere (`LoadedTask.vector_spec` None), it is a
    `PromptBanditVecEnv` over the task's prompts reporting its gold judge.
    """
    reward = dist.sharded(reward_fn)
    if loaded.vector_spec is None:
        return PromptBanditVecEnv(loaded.task.prompts, reward, num_envs=num_envs, gold_fn=loaded.task.gold,
                                  group_size=group_size)
    extra: dict[str, Any] = {"group_size": group_size} if group_size > 1 else {}
    if "gold_fn" not in loaded.vector_spec.kwargs and "gold_fn" in _make_kwargs(loaded.vector_spec.id, vector=True):
        # the judge the environment found for itself (an "answer:..." reward's checker) goes on reporting info["gold"]
        # now that another reward is paid
        extra["gold_fn"] = loaded.task.gold
    try:
        return gymnasium.make_vec(loaded.vector_spec, num_envs=num_envs, vectorization_mode="vector_entry_point",
                                  reward_fn=reward, **extra)
    except TypeError as exc:
        if "group_size" not in str(exc):
            raise
        raise ConfigError(f"task.env: the vector entry point of {loaded.vector_spec.id!r} takes no group_size, which the "
                          f"group algorithms need; subclass PromptBanditVecEnv and pass **kwargs on to it ({exc})") from exc


def make_oracle(spec: OracleSpec, gold: RewardFn | None, rng: np.random.Generator,
                input_fn: Callable[[str], str], tokenizer: Any = None) -> PreferenceOracle:
    """The labeller of `spec`: the gold judge under noise, a recorded file (chat records rendered with `tokenizer`'s
    template), or a person at the terminal."""
    if spec.kind == "synthetic":
        if gold is None:  # check_task refuses this before a stage runs
            raise ConfigError('oracle.kind = "synthetic" needs a gold judge; the task has none')
        if spec.target_agreement is not None:  # the temperature is chosen for it (`calibrate_labeller`)
            return SyntheticOracle(gold, rng=rng, agreement=spec.target_agreement, flip_prob=spec.flip_prob,
                                   tie_margin=spec.tie_margin)
        return SyntheticOracle(gold, rng=rng, temperature=spec.temperature, flip_prob=spec.flip_prob,
                               tie_margin=spec.tie_margin)
    if spec.kind == "recorded":
        return read_comparisons(spec, tokenizer)
    return TerminalOracle(input_fn=input_fn)


def calibrate_labeller(oracle: PreferenceOracle, queries: Sequence[Query]) -> None:
    """Choose a synthetic labeller's temperature for its target agreement on `queries` (nothing for other oracles).

    A stage passes every query it poses, those answered in an earlier run included, before it answers the pending
    ones: the temperature depends on the stage's queries only, so a resumed stage labels at the same one."""
    if isinstance(oracle, SyntheticOracle) and oracle.agreement is not None:
        oracle.calibrate(queries)


def labeller_figures(oracle: PreferenceOracle, comparisons: Sequence[Comparison]) -> dict[str, Any]:
    """A synthetic labeller's figures for a stage's result: the temperature its labels were drawn at
    (`oracle_temperature`), how often `comparisons`' labels agree with the gold order (`label_agreement`, over
    `label_pairs` implied pairs, the pairs the gold order ties left out) and, when the temperature was chosen for a
    target agreement, the `Calibration` (`calibration`). Empty for other oracles."""
    if not isinstance(oracle, SyntheticOracle):
        return {}
    rate, pairs = oracle.agreement_of(comparisons)
    figures: dict[str, Any] = {"oracle_temperature": oracle.temperature, "label_agreement": rate, "label_pairs": pairs}
    if oracle.calibration is not None:
        figures["calibration"] = dataclasses.asdict(oracle.calibration)
    return figures


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
    they are answered). The same inputs (a resumed run) keep the store and every answer in it.

    Labels in it from other inputs (another oracle noise, another policy trajectory) would be wrong to
    reuse, and labels are never deleted: that store is moved aside to `<stem>.<its fingerprint>.sqlite`
    (`<stem>.<its fingerprint>.<n>.sqlite` when that name is taken: no store ever replaces another). A store
    moved aside earlier under `fingerprint` itself (settings that went back and forth) comes back to `path`,
    so its answers are reused, not asked of a person again; any further store aside under `fingerprint` (a lost
    marker file, a copy put back by hand) is copied into it and kept.
    """
    marker = path.with_suffix(".fingerprint")
    path.parent.mkdir(parents=True, exist_ok=True)
    if store_files(path) and (not marker.exists() or marker.read_text() != fingerprint):
        move_store(path, _free_aside_name(path, marker.read_text() if marker.exists() else "unknown"))
    write_text(marker, fingerprint)  # atomic, and before a store comes back: killed in between, it is found aside next time
    earlier = _stores_aside(path, fingerprint)
    if earlier and not store_files(path):
        move_store(earlier.pop(0), path)
    if earlier:
        with PreferenceStore(path) as store:
            for other in earlier:
                with PreferenceStore(other) as copy:
                    store.add_from(copy)
    return path


def _aside_name(path: Path, fingerprint: str, n: int) -> Path:
    """The `n`-th name (from 1) for the store `path` moved aside while it held labels of `fingerprint`."""
    return path.with_name(f"{path.stem}.{fingerprint}{'' if n == 1 else f'.{n}'}{path.suffix}")


def _free_aside_name(path: Path, fingerprint: str) -> Path:
    """The first name for a store moved aside under `fingerprint` that no file (nor its journal) has."""
    n = 1
    while store_files(_aside_name(path, fingerprint, n)):
        n += 1
    return _aside_name(path, fingerprint, n)


def _stores_aside(path: Path, fingerprint: str) -> list[Path]:
    """The stores moved aside from `path` under `fingerprint`, first-moved name first."""
    pattern = re.compile(rf"{re.escape(path.stem)}\.{re.escape(fingerprint)}(?:\.(\d+))?{re.escape(path.suffix)}")
    found = [(int(m.group(1) or 1), f) for f in path.parent.iterdir() if (m := pattern.fullmatch(f.name))]
    return [f for _, f in sorted(found)]

