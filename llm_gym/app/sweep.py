"""Hyperparameter sweeps: one `llm-gym run` per grid point and seed, then a table and a plot.

A sweep takes an experiment file, a grid of dotted config keys with their values, and a
number of seeds. Every point of the cartesian product (grid x seeds) runs as its own
``python -m llm_gym run`` subprocess, so a crash in one point never takes the sweep down,
and writes its own run folder under `out`::

    out/kl_coef=0.05__seed0/     an ordinary run folder (summary.json, state.json, tb/...)
    out/kl_coef=0.05__seed0/run.log             the point's stdout and stderr
    out/kl_coef=0.05__seed0/tb/hparams/         its hyperparameters and final metrics (HPARAMS tab)
    out/sweep.csv                one row per point: status, seed, grid values, every metric
    out/sweep.json               the same for tools, with the grid and each point's log
    out/sweep.png                the main metric per grid point (mean +- std over seeds)

``tensorboard --logdir out`` compares the points in its HPARAMS tab. Rerunning the same
sweep resumes: each point's `run` reuses the stages it already finished.

    >>> parse_grid(["ppo.ppo.config.kl_coef=0.05,0.2", "oracle.kind=synthetic"])
    {'ppo.ppo.config.kl_coef': [0.05, 0.2], 'oracle.kind': ['synthetic']}
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import hashlib
import itertools
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from llm_gym.infra.atomic import write_json
from llm_gym.infra.configio import ConfigError, load_config, parse_override, to_dict
from llm_gym.infra.runfolder import check_writable_folder

__all__ = ["SweepError", "SweepPoint", "default_metric", "flat_metrics", "format_table", "metric_columns", "parse_grid", "plan_sweep",
           "plot_sweep", "run_sweep"]

_GRID_EXAMPLE = "--grid ppo.ppo.config.kl_coef=0.05,0.2"

Event = Callable[[str], None]


class SweepError(RuntimeError):
    """Some points of a sweep failed; the others finished and the table and plot were written.

    Attributes:
        points: every point's record, as `run_sweep` would have returned them.
    """

    def __init__(self, message: str, points: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.points = points


@dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep: a value per grid key and a seed."""

    name: str
    """Folder name under the sweep's output, e.g. ``kl_coef=0.05__seed0``."""
    params: dict[str, Any]
    """Grid key (full dotted path) -> value."""
    seed: int
    """The experiment seed of this run."""
    overrides: tuple[str, ...] = field(default=())
    """Every ``--set`` override of this run (the sweep's own, then the grid values, then the seed)."""


# ------------------------------------------------------------------------------------------- grid


def parse_grid(specs: Sequence[str]) -> dict[str, list[Any]]:
    """Parse ``--grid KEY=V1,V2,...`` options into ``{key: [values]}``, in the order given.

    Values are read like ``--set`` values (TOML literals: ``0.05`` is a float, ``3`` an int,
    ``true`` a bool, anything else a bare string). Commas inside ``[...]``, ``{...}`` or
    quotes do not split, so ``--grid reward_model.sources=["sft"],["pretrained","sft"]`` has two values.

    >>> parse_grid(["reward_model.members=1,3", "sft.epochs=2"])
    {'reward_model.members': [1, 3], 'sft.epochs': [2]}

    Raises:
        ConfigError: A spec without ``=``, with an empty key or value, a key given twice,
            or the same value twice; the message names the key and shows an example.
    """
    if isinstance(specs, str):
        raise TypeError("specs must be a sequence of strings, not one string; wrap it in a list")
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        if "=" not in spec:
            raise ConfigError(f"grid {spec!r} has no '='; write KEY.PATH=V1,V2, e.g. {_GRID_EXAMPLE}")
        key, raw = (part.strip() for part in spec.split("=", 1))
        parts = key.split(".")
        if not key or any(not p.strip() for p in parts):
            raise ConfigError(f"grid {spec!r} has an empty key or key segment; write KEY.PATH=V1,V2, e.g. {_GRID_EXAMPLE}")
        key = ".".join(p.strip() for p in parts)
        if key in grid:
            raise ConfigError(f"{key}: given twice in the grid; list all its values in one option, e.g. {_GRID_EXAMPLE}")
        items = _split_values(raw)
        if not items or any(not item for item in items):
            raise ConfigError(f"{key}: empty value in grid {spec!r}; write comma-separated values, e.g. {_GRID_EXAMPLE}")
        values = [parse_override(f"{key}={item}")[1] for item in items]
        literals = [_toml_literal(v) for v in values]
        duplicate = next((lit for i, lit in enumerate(literals) if lit in literals[:i]), None)
        if duplicate is not None:
            raise ConfigError(f"{key}: value {duplicate} is given twice in grid {spec!r}; list each value once")
        grid[key] = values
    return grid


def _split_values(raw: str) -> list[str]:
    """Split at the commas that are outside brackets, braces and quotes; strip each item."""
    items, current, depth, quote = [], [], 0, ""
    for ch in raw:
        if quote:
            quote = "" if ch == quote and (not current or current[-1] != "\\") else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    items.append("".join(current).strip())
    return items


def _toml_literal(value: Any) -> str:
    """`value` as TOML text that `parse_override` reads back as the same value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_literal(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_literal(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))  # TOML dates and times: as text


def _value_text(value: Any) -> str:
    """A value in full, as text (strings unquoted): for tables and messages."""
    return value if isinstance(value, str) else _toml_literal(value)


def _show_value(value: Any) -> str:
    """A value as a person reads it in a folder name or an axis label (strings unquoted, paths
    by their last part)."""
    if isinstance(value, str):
        return Path(value).name or value if "/" in value or os.sep in value else value
    return _toml_literal(value)


# ------------------------------------------------------------------------------------------ points


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Each key's shortest trailing dotted suffix that no other key ends with (``kl_coef``, or
    ``ppo.config.kl_coef`` and ``ppo_ptx.config.kl_coef`` when two runs share the last segment)."""
    short: dict[str, str] = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if not any(other != key and (other == suffix or other.endswith("." + suffix)) for other in keys):
                break
        short[key] = suffix
    return short


_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]+")


def _safe(text: str, limit: int = 60) -> str:
    """`text` with anything but letters, digits and ``._+=-`` replaced by ``_``, at most `limit` chars."""
    clean = _UNSAFE.sub("_", text).strip("_") or "_"
    return clean if len(clean) <= limit else clean[: limit - 9] + "~" + hashlib.sha256(text.encode()).hexdigest()[:8]


def plan_sweep(
    config_path: str | PathLike[str],
    grid: Mapping[str, Sequence[Any]],
    *,
    seeds: int = 1,
    overrides: Sequence[str] = (),
    cache_dir: str | PathLike[str] | None = None,
    metric: str | None = None,
) -> list[SweepPoint]:
    """The sweep's points (grid x seeds, seeds innermost), each one's config validated.

    Every point's config is built with `load_config`, so a misspelt key or a value of the
    wrong type fails here, before any run starts, with the key path in the message; so does
    a `metric` that no point's summary can have (see `metric_columns`).

    Raises:
        ConfigError: An invalid grid key or value (naming the point and key path), a `metric`
            that is no summary column (with the closest ones and the rows and keys), a grid
            key also given in `overrides`, a ``seed`` grid together with ``seeds > 1``, or
            nothing to sweep.
    """
    from llm_gym.app.config import ExperimentConfig

    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"seeds must be a positive int, got {seeds!r}")
    if not grid and seeds == 1:
        raise ConfigError(f"nothing to sweep: give a grid ({_GRID_EXAMPLE}) and/or several seeds (--seeds 3)")
    for key, values in grid.items():
        if isinstance(values, (str, bytes)) or not values:
            raise ConfigError(f"{key}: the grid needs a non-empty list of values, e.g. {_GRID_EXAMPLE}")
    if "seed" in grid and seeds > 1:
        raise ConfigError("seed: a grid over `seed` cannot be combined with --seeds; use one of them")
    overridden = {".".join(parse_override(o)[0]) for o in overrides}
    clash = [k for k in grid if k in overridden]
    if clash:
        raise ConfigError(f"{clash[0]}: set both by --set and by --grid; keep one of them")

    extra = [f"model.cache_dir={json.dumps(os.fspath(cache_dir))}"] if cache_dir is not None else []
    base = [*extra, *overrides]
    base_seed = load_config(ExperimentConfig, config_path, base).seed
    keys = list(grid)
    short = _short_keys(keys)
    points: list[SweepPoint] = []
    names: set[str] = set()
    columns: dict[str, None] = {}  # every point's possible summary columns, in order
    for combo in itertools.product(*(grid[k] for k in keys)):
        params = dict(zip(keys, combo))
        grid_sets = [f"{k}={_toml_literal(v)}" for k, v in params.items()]
        label = "__".join(_safe(f"{short[k]}={_show_value(v)}") for k, v in params.items())
        for i in range(seeds):
            seed = params["seed"] if "seed" in params else base_seed + i
            seed_sets = [] if "seed" in params else [f"seed={seed}"]
            point_overrides = (*overrides, *grid_sets, *seed_sets)
            try:
                point_config = load_config(ExperimentConfig, config_path, [*extra, *point_overrides])
            except ConfigError as err:
                where = ", ".join(f"{k}={_value_text(v)}" for k, v in params.items()) or f"seed {seed}"
                raise ConfigError(f"grid point {where}: {err}") from err
            name = label if "seed" in params else f"{label}__seed{seed}" if label else f"seed{seed}"
            unique, n = name, 1
            while unique in names:  # two values that read the same once made filesystem-safe
                unique, n = f"{name}_{n}", n + 1
            names.add(unique)
            points.append(SweepPoint(unique, params, seed, point_overrides))
            columns.update(dict.fromkeys(metric_columns(point_config)))
    if metric is not None:
        _check_metric(metric, list(columns))
    return points


_REWARD_MODEL_KEYS = ("heldout_accuracy", "gold_agreement", "labels", "wall_seconds", "peak_rss_mb")
"""The reward model's row in `summary.build_summary`."""
_POLICY_EXTRA_KEYS = ("labels", "wall_seconds", "eval_seconds", "peak_rss_mb", "eval_peak_rss_mb", "eval_cuda_peak_mb")
"""A policy's row: these besides the `PolicyReport` fields (`eval_seconds`: the pipeline's evaluation stage)."""


def metric_columns(config: Any) -> list[str]:
    """Every numeric column ``<row>.<key>`` a run of the `ExperimentConfig` `config` can put in its summary.

    The rows are the pretrained and SFT policies, the reward model and each PPO run, agent run and
    preference loop by name, each only when its stage is in `config.stages`; the evaluation's
    columns (gold, RM score, KL, win rate, perplexity, accuracy greedy and sampled, ``pass@k`` for
    each k of `config.evaluation.pass_k`...) only when "evaluation" is. (Whether the task allows
    gold, or verifies answers and so has accuracy and pass@k, is known only once its environment
    is made.) This is what ``sweep --metric`` may name.
    """
    from llm_gym.app.evaluation import PolicyReport

    stages = set(config.stages) | ({"pretrain"} if config.model.name_or_path else set())  # a given model: always a row
    report = [f.name for f in dataclasses.fields(PolicyReport) if f.name != "pass_at_k"]
    evaluated = [*report, *(f"pass@{k}" for k in sorted(config.evaluation.pass_k)), "eval_seconds",
                 "eval_peak_rss_mb", "eval_cuda_peak_mb"] if "evaluation" in stages else []
    own = [k for k in _POLICY_EXTRA_KEYS if k not in ("eval_seconds", "eval_peak_rss_mb", "eval_cuda_peak_mb")]
    rows: dict[str, list[str]] = {}
    for stage, names in (("pretrain", ["pretrained"]), ("sft", ["sft"]), ("ppo", list(config.ppo)),
                         ("agent", list(config.agent)), ("preference_loop", list(config.preference_loop))):
        if stage in stages:
            rows.update({name: [*evaluated, *own] for name in names})
    if "reward_model" in stages:
        rows["reward_model"] = list(_REWARD_MODEL_KEYS)
    return [f"{row}.{key}" for row, keys in rows.items() for key in keys]


def default_metric(config: Any, verifiable: bool | None = None) -> str:
    """The column a sweep shows when `--metric` is not given: the gold score of the experiment's first RL run or
    preference loop that runs (else of SFT); on a task with verifiable answers, its sampled accuracy instead.

    The sampled accuracy (``<run>.accuracy_sampled``, the share of correct answers among
    `evaluation.samples_per_prompt` samples per prompt, equal to pass@1) is what an RL run on such a task
    maximises, measured on n times as many completions as gold (which is the same accuracy on one sample per
    prompt), so seeds and grid points are compared with less noise; greedy accuracy and pass@k remain columns
    to name with ``--metric``.

    Args:
        config: the `ExperimentConfig`.
        verifiable: whether the task's gold judge verifies answers (`llm_gym.core.metrics.verifies_answers`);
            None = find out: from `config.task.gold` when it is an import path (the object there is imported,
            not called), else from the judge of the task's environment (made once; llm_gym/Arithmetic-v0 and
            llm_gym/ReasoningGym-v0 verify answers, as does an "answer:..." reward on llm_gym/PromptBandit-v0).
    """
    if verifiable is None:
        verifiable = _gold_verifies_answers(config.task.gold) if config.task.gold else _env_verifies_answers(config)
    key = "accuracy_sampled" if verifiable else "gold"
    stages = set(config.stages)
    for stage, names in (("ppo", config.ppo), ("agent", config.agent), ("preference_loop", config.preference_loop)):
        if stage in stages and names:
            return f"{next(iter(names))}.{key}"
    return f"sft.{key}"


def _gold_verifies_answers(import_path: str) -> bool:
    """Whether the judge an experiment names by import path ("module:name") declares `verifies_answers = True`."""
    import importlib

    from llm_gym.core.metrics import verifies_answers

    if not import_path:
        return False
    module, _, name = import_path.partition(":")
    try:
        judge = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return False  # the run itself reports the bad path, with its fix
    return verifies_answers(judge)


def _env_verifies_answers(config: Any) -> bool:
    """Whether the gold judge of the experiment's environment verifies answers (False when it cannot be made: the run
    itself then reports why, with its fix)."""
    from llm_gym.app.stages import chat_tokenizer, load_task
    from llm_gym.core.data import DatasetError
    from llm_gym.core.metrics import verifies_answers

    try:
        loaded = load_task(config.task, config.pretrain.task, chat_tokenizer(config.model.name_or_path))
    except (ConfigError, DatasetError):
        return False
    return verifies_answers(loaded.task.gold)


def _check_metric(metric: str, columns: Sequence[str]) -> None:
    """Refuse a `metric` that no point's summary can hold (a typo would run every point for an empty column)."""
    if metric in columns:
        return
    rows = list(dict.fromkeys(c.rsplit(".", 1)[0] for c in columns))
    keys = list(dict.fromkeys(c.rsplit(".", 1)[1] for c in columns))
    close = difflib.get_close_matches(metric, columns, n=3, cutoff=0.6)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    raise ConfigError(
        f"metric {metric!r} is not a summary column of this sweep{hint}; name one as <row>.<key>, with a row "
        f"among {', '.join(rows)} and a key among {', '.join(keys)}, e.g. ppo.gold"
    )


# ------------------------------------------------------------------------------------------ running


def run_sweep(
    config_path: str | PathLike[str],
    grid: Mapping[str, Sequence[Any]],
    *,
    seeds: int = 1,
    out: str | PathLike[str],
    overrides: Sequence[str] = (),
    parallel: int = 1,
    cache_dir: str | PathLike[str] | None = None,
    metric: str | None = None,
    on_event: Event | None = None,
) -> list[dict[str, Any]]:
    """Run every point of the grid x seeds as an ``llm-gym run`` subprocess; write the table and plot.

    Args:
        config_path: the experiment file (TOML or JSON).
        grid: dotted config key -> values (see `parse_grid`).
        seeds: runs per grid point, with seeds ``config.seed + i`` for ``i < seeds``.
        out: the sweep folder: one run folder per point, sweep.csv, sweep.json, sweep.png.
        overrides: ``--set`` overrides applied to every point before the grid values.
        parallel: how many points run at once (each in its own process).
        cache_dir: where the built-in model is cached (``model.cache_dir``).
        metric: the summary column ``<row>.<key>`` plotted per point, e.g. ``ppo.gold``; None = `default_metric`.
        on_event: receives a line when a point starts and when it finishes.

    Returns:
        One record per point, in grid order: ``name``, ``dir``, ``status`` ("ok" or
        "failed"), ``seed``, ``params``, ``metrics`` (``{"ppo.gold": ...}``), ``log``,
        ``returncode`` and ``seconds``.

    Raises:
        ConfigError: The config, the grid or `metric` is invalid (before any run starts).
        RunFolderError: `out` cannot be created or written (before any run starts).
        SweepError: Some points failed (after all others finished and the files were
            written); the message lists their logs.
    """
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise ConfigError(f"parallel must be a positive int, got {parallel!r}")
    emit = on_event or (lambda line: None)
    if metric is None:
        from llm_gym.app.config import ExperimentConfig

        metric = default_metric(load_config(ExperimentConfig, config_path, overrides))
    points = plan_sweep(config_path, grid, seeds=seeds, overrides=overrides, cache_dir=cache_dir, metric=metric)
    out = Path(out)
    check_writable_folder(out, "the sweep folder")
    out.mkdir(parents=True, exist_ok=True)
    if parallel > 1:
        _warm_model_cache(config_path, points, cache_dir, emit)

    # absolute as the user sees it (symlinks kept): the paths in the file are found beside it, as `llm-gym run` finds them
    base_cmd = [sys.executable, "-m", "llm_gym", "run", os.path.abspath(config_path), "--no-progress"]
    if cache_dir is not None:
        base_cmd += ["--cache-dir", os.fspath(cache_dir)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # run.log fills as the point runs
    total = len(points)
    records: dict[int, dict[str, Any]] = {}
    queue = list(enumerate(points))
    running: dict[int, tuple[subprocess.Popen[bytes], Any, float]] = {}
    try:
        while queue or running:
            while queue and len(running) < parallel:
                i, point = queue.pop(0)
                point_dir = (out / point.name).resolve()
                point_dir.mkdir(parents=True, exist_ok=True)
                cmd = [*base_cmd, "--out", str(point_dir), *itertools.chain.from_iterable(("--set", o) for o in point.overrides)]
                log = open(point_dir / "run.log", "wb")  # closed when its process ends (or in finally)
                log.write(("$ " + shlex.join(cmd) + "\n").encode())
                log.flush()
                running[i] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log, time.perf_counter())
                emit(f"[{i + 1}/{total}] {point.name}: running")
            done = [i for i, (proc, _, _) in running.items() if proc.poll() is not None]
            if not done:
                time.sleep(0.2)
                continue
            for i in done:
                proc, log, t0 = running.pop(i)
                log.close()
                record = _finish_point(points[i], out / points[i].name, proc.returncode, time.perf_counter() - t0, metric)
                records[i] = record
                emit(f"[{i + 1}/{total}] {_point_line(record, metric)}")
    finally:  # interrupted (Ctrl-C) or an error here: leave no orphan runs behind
        for proc, log, _ in running.values():
            proc.terminate()
            proc.wait()
            log.close()

    results = [records[i] for i in range(total)]
    if any(r["status"] == "ok" for r in results) and not any(metric in r["metrics"] for r in results):
        columns = sorted({m for r in results for m in r["metrics"]})
        emit(f"metric {metric!r} is in no point's summary (is its stage in `stages`?); columns: {', '.join(columns)}")
    _write_outputs(out, config_path, grid, seeds, overrides, metric, results)
    failed = [r for r in results if r["status"] != "ok"]
    if failed:
        logs = "\n".join(f"  {r['name']}: {r['log']}" for r in failed)
        raise SweepError(f"{len(failed)} of {total} sweep points failed; their logs:\n{logs}", results)
    return results


def _warm_model_cache(config_path: str | PathLike[str], points: Sequence[SweepPoint],
                      cache_dir: str | PathLike[str] | None, emit: Event) -> None:
    """Build each built-in model the points need once, here, so parallel points do not all
    pretrain the same model at the same time (and race to put it in the cache)."""
    import torch

    from llm_gym.app.config import ExperimentConfig
    from llm_gym.app.stages import load_task
    from llm_gym.tasks.tiny_lm import build_builtin_model, corpus_fingerprint, find_builtin_model

    extra = [f"model.cache_dir={json.dumps(os.fspath(cache_dir))}"] if cache_dir is not None else []
    seen: set[str] = set()
    for point in points:
        cfg = load_config(ExperimentConfig, config_path, [*extra, *point.overrides])
        if cfg.model.name_or_path or "pretrain" not in cfg.stages:
            continue
        corpus = load_task(cfg.task, cfg.pretrain.task).corpus  # the model the pipeline will build: on which text
        key = json.dumps([to_dict(cfg.pretrain), cfg.model.cache_dir, corpus and corpus_fingerprint(corpus)],
                         sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        cache = cfg.model.cache_dir or None
        if find_builtin_model(cfg.pretrain, cache, corpus) is None:
            emit("building the pretrained model once, before the parallel runs start")
            threads = torch.get_num_threads()
            if cfg.threads:
                torch.set_num_threads(cfg.threads)
            try:
                build_builtin_model(cfg.pretrain, cache_dir=cache, task=corpus)
            finally:
                torch.set_num_threads(threads)


def _finish_point(point: SweepPoint, point_dir: Path, returncode: int, seconds: float, metric: str) -> dict[str, Any]:
    """The point's record; a successful point's hyperparameters and metrics go to its tb/hparams."""
    summary_file = point_dir / "summary.json"
    metrics: dict[str, float] = {}
    status = "failed"
    if returncode == 0 and summary_file.is_file():
        metrics = flat_metrics(json.loads(summary_file.read_text()))
        status = "ok"
        _log_hparams(point, point_dir, metrics)
    return {"name": point.name, "dir": str(point_dir), "status": status, "seed": point.seed,
            "params": dict(point.params), "metrics": metrics, "log": str(point_dir / "run.log"),
            "returncode": returncode, "seconds": seconds}


def flat_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """Every numeric value of a summary's rows as ``{"<row>.<key>": value}`` (booleans left out).

    >>> flat_metrics({"rows": {"ppo": {"stage": "ppo.ppo", "gold": 0.5, "labels": 56}}})
    {'ppo.gold': 0.5, 'ppo.labels': 56.0}
    """
    return {f"{row}.{key}": float(value)
            for row, values in summary.get("rows", {}).items()
            for key, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def _log_hparams(point: SweepPoint, point_dir: Path, metrics: Mapping[str, float]) -> None:
    """Write the point's grid values and seed with its final metrics for TensorBoard's HPARAMS tab
    (rewritten on a rerun, so the tab shows each point once)."""
    from llm_gym.infra.logger import Logger

    hparams_dir = point_dir / "tb" / "hparams"
    shutil.rmtree(hparams_dir, ignore_errors=True)
    finite = {key.replace(".", "/", 1): v for key, v in metrics.items() if math.isfinite(v)}
    with Logger(hparams_dir) as logger:
        logger.log_hparams({**point.params, "seed": point.seed}, finite)


def _point_line(record: Mapping[str, Any], metric: str) -> str:
    if record["status"] == "ok":
        value = record["metrics"].get(metric)
        shown = "-" if value is None else f"{value:+.4f}"
        return f"{record['name']}: ok in {record['seconds']:.0f}s, {metric} {shown}"
    return f"{record['name']}: FAILED (exit {record['returncode']}) in {record['seconds']:.0f}s; log: {record['log']}"


# ------------------------------------------------------------------------------------------ outputs


def _write_outputs(out: Path, config_path: str | PathLike[str], grid: Mapping[str, Sequence[Any]], seeds: int,
                   overrides: Sequence[str], metric: str, results: list[dict[str, Any]]) -> None:
    """sweep.csv, sweep.json and sweep.png under `out`."""
    keys = list(grid)
    metric_columns: list[str] = []
    for record in results:  # first-seen order: the summary's row order, then its keys' order
        metric_columns += [m for m in record["metrics"] if m not in metric_columns]
    with open(out / "sweep.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["point", "status", "seed", *keys, *metric_columns])
        for r in results:
            writer.writerow([r["name"], r["status"], r["seed"], *(_value_text(r["params"][k]) for k in keys),
                             *(_csv_number(r["metrics"].get(m)) for m in metric_columns)])

    def finite_or_none(v: float) -> float | None:
        return v if math.isfinite(v) else None

    data = {"config": str(config_path), "grid": {k: list(v) for k, v in grid.items()}, "seeds": seeds,
            "overrides": list(overrides), "metric": metric,
            "points": [{**r, "metrics": {k: finite_or_none(v) for k, v in r["metrics"].items()}} for r in results]}
    write_json(out / "sweep.json", data)
    plot_sweep(results, keys, metric, out / "sweep.png")


def _csv_number(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def plot_sweep(results: Sequence[Mapping[str, Any]], keys: Sequence[str], metric: str, path: str | PathLike[str]) -> None:
    """Plot `metric` per grid point to a PNG: each seed as a dot, the mean over seeds with std error bars.

    With exactly one grid key whose values are all numbers, that key is a numeric x axis (log
    scale when its positive values span two decades or more); otherwise the grid points are
    categories labelled like ``kl_coef=0.05``. Failed points and points without `metric` are left out.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    short = _short_keys(list(keys))
    groups: dict[str, list[float]] = {}  # grid point (its values as TOML) -> the metric over its seeds
    names: dict[str, str] = {}
    x_values: dict[str, Any] = {}
    for r in results:
        point = json.dumps([_toml_literal(r["params"][k]) for k in keys])
        names[point] = "\n".join(f"{short[k]}={_show_value(r['params'][k])}" for k in keys) or "base config"
        x_values[point] = r["params"][keys[0]] if len(keys) == 1 else None
        values = groups.setdefault(point, [])
        value = r["metrics"].get(metric) if r["status"] == "ok" else None
        if value is not None and math.isfinite(value):
            values.append(value)

    labels = [names[p] for p in groups]
    widest = max((len(line) for lab in labels for line in lab.splitlines()), default=0)
    fig = Figure(figsize=(min(20.0, max(6.0, len(groups) * max(1.0, 0.09 * widest) + 1.5)), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    numeric = len(keys) == 1 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in x_values.values())
    xs = [float(x_values[p]) for p in groups] if numeric else list(range(len(groups)))
    means, stds, mx = [], [], []
    for x, vals in zip(xs, groups.values()):
        if vals:
            ax.scatter([x] * len(vals), vals, s=18, color="tab:blue", alpha=0.5, zorder=3)
            means.append(float(np.mean(vals)))
            stds.append(float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0)
            mx.append(x)
    n_seeds = max((len(v) for v in groups.values()), default=0)
    if means:
        order = np.argsort(mx)
        ax.errorbar(np.asarray(mx)[order], np.asarray(means)[order],
                    yerr=np.asarray(stds)[order] if n_seeds > 1 else None,
                    fmt="o-" if numeric else "o", color="tab:blue", capsize=4, zorder=4)
    else:
        ax.text(0.5, 0.5, f"no finished point has {metric}", ha="center", va="center", transform=ax.transAxes)
    if numeric:
        positive = [x for x in xs if x > 0]
        if len(positive) == len(xs) and max(xs) / min(xs) >= 100:
            ax.set_xscale("log")
        ax.set_xlabel(keys[0])
    else:
        ax.set_xticks(xs, labels, fontsize="small")
        ax.set_xlim(-0.5, len(labels) - 0.5)
        ax.set_xlabel("grid point")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per grid point" + (f"\nmean and std over {n_seeds} seeds (dots: single seeds)" if n_seeds > 1 else ""),
                 fontsize="medium")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)


def format_table(points: Sequence[Mapping[str, Any]], metric: str = "ppo.gold") -> str:
    """The points as a text table (name, status, main metric, wall time), for printing."""
    width = max([len("point"), *(len(p["name"]) for p in points)]) + 2
    head = f"{'point':<{width}}{'status':<8}{metric:>14}{'wall s':>8}"
    lines = [head, "-" * len(head)]
    for p in points:
        value = p["metrics"].get(metric)
        shown = "-" if value is None or not math.isfinite(value) else f"{value:+.4f}"
        lines.append(f"{p['name']:<{width}}{p['status']:<8}{shown:>14}{p['seconds']:>8.0f}")
    return "\n".join(lines)
