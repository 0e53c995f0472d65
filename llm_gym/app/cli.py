"""The `llm-gym` command (also `python -m llm_gym`).

    llm-gym demo                 # the main job: the InstructGPT study's default config, end to end
    llm-gym run CONFIG           # an experiment file: pretrain -> SFT -> RM -> PPO -> evaluation (resumable)
    llm-gym sweep CONFIG --grid KEY=V1,V2 [--seeds N]   # one run per grid point: sweep.csv, sweep.png, HPARAMS
    llm-gym eval RUN_DIR         # re-evaluate a run's policies
    llm-gym label STORE [--web]  # answer pending preference queries at the terminal (or in the browser)
    llm-gym build-model          # build (or find cached) the built-in pretrained model, print perplexities

Exit status: 0 done; 1 some sweep points failed (the others finished); 2 a problem the
`error:` line explains (a config value, an input file, a run folder that cannot be used);
130 interrupted by Ctrl-C (`run`, `demo` and `sweep` resume when the same command is rerun).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path


__all__ = ["main"]

EXAMPLES = """examples:
  llm-gym demo
  llm-gym run experiments/instructgpt/config.toml --out runs/instructgpt
  llm-gym run experiments/instructgpt/config.toml --set ppo.ppo.config.kl_coef=0.1 --out runs/beta01
  llm-gym sweep experiments/instructgpt/config.toml --grid ppo.ppo.config.kl_coef=0.05,0.2 --seeds 2
  llm-gym eval runs/instructgpt
  llm-gym label runs/instructgpt/labels.sqlite
  llm-gym label runs/instructgpt/labels.sqlite --web
  llm-gym build-model --cache-dir /tmp/llm_gym_cache
"""

RUN_EXAMPLES = """examples:
  llm-gym run experiments/instructgpt/config.toml
  llm-gym run experiments/instructgpt/config.toml --out runs/quick --set ppo.ppo.iterations=5 --set ppo.ppo_ptx.iterations=5
  llm-gym run experiments/instructgpt/config.toml --set oracle.temperature=0.5 --set reward_model.k=4

Rerun the same command after an interruption: finished stages are reused, a PPO run
continues from its last checkpoint, and labels already in labels.sqlite are kept.

Paths: the files an experiment reads (task.prompts, task.eval_prompts, task.demonstrations,
oracle.path, a model.name_or_path folder) are found beside the experiment file, wherever you
run the command; given with --set they are relative to the current folder. Where it writes
(out, --out, model.cache_dir, --cache-dir) is relative to the current folder. Reward
functions and environments named "module:name" are imported from the current folder.
"""


def _cmd_build_model(args: argparse.Namespace) -> int:
    from llm_gym.tasks.tiny_lm import TinyLMConfig, build_builtin_model

    config = TinyLMConfig.smoke() if args.smoke else TinyLMConfig()
    print(f"built-in model: {config.n_layer} layers x {config.n_embd} dims, vocab {config.vocab_size}, "
          f"{config.train_steps} pretraining steps (cache: {args.cache_dir or 'default'})", flush=True)
    report = build_builtin_model(config, cache_dir=args.cache_dir)
    status = "found in cache" if report.cached else f"pretrained in {report.seconds:.0f}s"
    print(f"  {status}: {report.path}")
    print(f"  held-out perplexity: untrained {report.perplexity_before:.1f} -> pretrained {report.perplexity_after:.2f}")
    return 0


def _load_experiment(config_path: str | None, overrides: Sequence[str], cache_dir: str | None):
    """The experiment of `config_path` (or the default InstructGPT study) with `--set` overrides applied.

    Input files named in the file are found beside it; those named in `--set` from the current folder
    (`llm_gym.app.config.load_experiment`).
    """
    from llm_gym.app.config import load_experiment

    extra = [f"model.cache_dir={json.dumps(cache_dir)}"] if cache_dir else []
    return load_experiment(config_path, [*extra, *overrides])


def _run_pipeline(config, out: str, progress: bool = True) -> dict:
    from llm_gym.infra.distributed import Distributed
    from llm_gym.app.pipeline import Pipeline
    from llm_gym.app.summary import format_summary

    t0 = time.perf_counter()
    # under `accelerate launch` / `torchrun` every process runs the pipeline data-parallel; the main one prints
    with Distributed.from_environment() as dist:
        if not dist.is_main:
            return Pipeline(config, out, distributed=dist).run()
        where = f" on {dist.world_size} processes" if dist.world_size > 1 else ""
        print(f"experiment {config.name!r} (seed {config.seed}) -> {out}{where}", flush=True)
        summary = Pipeline(config, out, on_event=lambda line: print(line, flush=True), progress=progress,
                           distributed=dist).run()
    print()
    print(format_summary(summary))
    print(f"\nsummary: {Path(out) / 'summary.json'}")
    print(f"TensorBoard logs: {summary['tensorboard']}  (tensorboard --logdir {out})")
    print(f"done in {time.perf_counter() - t0:.0f}s")
    return summary


def _cmd_run(args: argparse.Namespace) -> int:
    config = _load_experiment(args.config, args.set, args.cache_dir)
    _run_pipeline(config, args.out or config.out, progress=not args.no_progress)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    config = _load_experiment(None, args.set, args.cache_dir)
    print("the main job: the InstructGPT study's default config (pretrain -> SFT -> reward model from synthetic "
          "comparisons -> PPO and PPO-ptx) on the built-in task")
    _run_pipeline(config, args.out or config.out, progress=not args.no_progress)
    spread = f" {_DEMO_SPREAD};" if not args.set else ""  # the default experiment's spread, from the study's runs
    print(textwrap.fill(f"this is one seed;{spread} the study over seeds 0, 1 and 2, with the spread of each figure: "
                        "experiments/instructgpt/README.md", width=120))
    return 0


# The default experiment over seeds 0, 1, 2 (experiments/instructgpt/README.md, "Calibrated labels";
# experiments/results/instructgpt_calibrated_*.json): what one seed of the demo should be read against.
_DEMO_SPREAD = ("over seeds 0, 1, 2 this experiment gave SFT gold +0.658 to +0.679, PPO gold +0.782 to +0.799 at KL "
                "1.24 to 2.08, winning 64.2% to 67.5% against SFT (pooled 65.7%, 95% interval 61.5-69.8 over seeds), "
                "and RM~gold 0.705 to 0.742 from labels that agree with gold 0.717 to 0.732")


def _cmd_eval(args: argparse.Namespace) -> int:
    from llm_gym.infra.configio import apply_overrides, from_dict
    from llm_gym.app.config import ExperimentConfig, resolve_input_paths
    from llm_gym.app.pipeline import Pipeline
    from llm_gym.app.stages import upgrade_written_config
    from llm_gym.app.summary import format_summary

    from llm_gym.infra.runfolder import RunFolderError, check_writable_folder, read_json

    run_dir = Path(args.run_dir)
    resolved = run_dir / "config.json"
    if not resolved.is_file():
        print(f"error: {run_dir} is not a run folder (no config.json); give the --out folder of `llm-gym run`",
              file=sys.stderr)
        return 2
    written = read_json(resolved, "the resolved config `llm-gym run` wrote",
                        "rerun `llm-gym run CONFIG --out RUN_DIR` with the run's config to write it again "
                        "(finished stages are reused)")
    # only what the evaluation reads may change: any other override (sft.epochs, say) would be recorded beside
    # results that the run's existing policies produced, not that setting
    others = [o for o in args.set if not o.split("=", 1)[0].strip().startswith(_EVAL_KEYS)]
    if others:
        print(f"error: eval --set changes only how the run's policies are evaluated ({', '.join(_EVAL_KEYS)}); "
              f"{', '.join(others)} would need the stages to run again: use `llm-gym run CONFIG --out {run_dir} --set ...`",
              file=sys.stderr)
        return 2
    # --set paths, like the run's own relative ones (before paths were resolved), are relative to this folder
    written = upgrade_written_config(written)  # fields added since the run wrote it: the values it ran with
    config = from_dict(ExperimentConfig, resolve_input_paths(apply_overrides(written, args.set), Path.cwd()))
    check_writable_folder(run_dir)  # summary.json, or the new evaluation file, is written
    pipeline = Pipeline(config, run_dir, on_event=lambda line: print(line, flush=True))
    missing = [stage for stage in ("pretrain", "sft") if stage not in pipeline.state]
    if missing:
        raise RunFolderError(f"{run_dir}: nothing to evaluate yet, stage(s) {missing} have not finished there; "
                             "run `llm-gym run` into it first")
    if not args.set:
        summary = pipeline.evaluate(force=True)
        print()
        print(format_summary(summary))
        return 0
    # settings that differ from config.json's: the run's own results (summary.json, state.json) stay as they are,
    # so they keep describing the run config.json describes; this evaluation goes to a file of its own
    target = _evaluation_file(run_dir, args.set)
    try:
        summary = pipeline.evaluate(into=target)
    except BaseException:
        if target.stat().st_size == 0:  # reserved, never written: leave no empty file behind
            target.unlink()
        raise
    print()
    print(format_summary(summary))
    print(f"\nevaluation with {' '.join(args.set)}: {target}  ({run_dir / 'summary.json'} is unchanged)")
    return 0


_EVAL_KEYS = ("evaluation.", "task.eval_prompts")
"""The settings `eval --set` may change: the evaluation's own, and the held-out prompts."""


def _evaluation_file(run_dir: Path, overrides: Sequence[str]) -> Path:
    """A new file `RUN_DIR/evaluations/<time>-<hash of the overrides>.json` for an evaluation under other settings,
    reserved now (created empty, exclusively), so that two evaluations at once, even in the same second, never
    write the same file: the second gets `_1`, then `_2`..."""
    import hashlib

    digest = hashlib.sha256("\n".join(overrides).encode()).hexdigest()[:8]
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{digest}"
    folder = run_dir / "evaluations"
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(10_000):
        target = folder / f"{base}{f'_{k}' if k else ''}.json"
        try:
            os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return target
    from llm_gym.infra.runfolder import RunFolderError

    raise RunFolderError(f"{folder}: 10,000 evaluation files named {base}*; remove some")


EVAL_EXAMPLES = """examples:
  llm-gym eval runs/instructgpt
  llm-gym eval runs/instructgpt --set evaluation.prompts=50

Without --set the run's summary.json (and its state.json's evaluation) are rewritten. With
--set the run's own files are left as they are: the evaluation goes to a new file
RUN_DIR/evaluations/<time>-<hash>.json (the summary and the config it ran under), named in
the output.
"""

LABEL_EXAMPLES = """examples:
  llm-gym label runs/instructgpt/labels.sqlite
  llm-gym label labels.sqlite --limit 20 --name alice
  llm-gym label labels.sqlite --web
  llm-gym label labels.sqlite --web --port 8765 --lease-seconds 600
  llm-gym label labels.sqlite --web --port 8765 --origin https://labels.example.org  # behind an HTTPS proxy

With --web the command prints the page's address with its access token
(http://127.0.0.1:PORT/?token=...) and serves until Ctrl-C; every answer is saved to the
store as it is given. Keys on the page: 1 / 2 = the better completion, t = tie, s = skip;
to rank K completions type their numbers best first, then Enter.
"""


def _cmd_label(args: argparse.Namespace) -> int:
    from llm_gym.feedback.oracles import TerminalOracle, collect
    from llm_gym.feedback.store import PreferenceStore, StoreError

    path = Path(args.store)
    if not path.is_file():
        print(f"error: no preference store at {path}; pass the labels.sqlite of a run (e.g. runs/instructgpt/labels.sqlite)",
              file=sys.stderr)
        return 2
    if args.web:
        return _label_web(path, args)
    try:
        store = PreferenceStore(path)
    except StoreError as err:  # a foreign or damaged file, a folder that is not writable: left unchanged
        print(f"error: {err}", file=sys.stderr)
        return 2
    with store:
        pending = store.pending(limit=args.limit)
        print(f"{store.counts()} in {path}; {len(pending)} pending queries to label now "
              "(1/2 = the better one, t = tie, s = skip, q = quit; every answer is saved at once)")
        if pending and (sys.stdin is None or sys.stdin.closed):
            print("error: standard input is closed, so no answer can be typed; run llm-gym label at a terminal, "
                  "or label in the browser with --web", file=sys.stderr)
            return 2
        answers = collect(TerminalOracle(name=args.name), pending, store)
        print(f"saved {len(answers)} answers; {len(store.pending())} queries still pending")
    return 0


def _label_web(path: Path, args: argparse.Namespace) -> int:
    from llm_gym.feedback.web import serve

    if args.limit is not None:
        print("error: --limit is for labelling in the terminal; the page serves every pending query", file=sys.stderr)
        return 2

    def announce(server) -> None:
        counts = server.store.counts()
        print(f"labelling page for {path}: {counts['pending']} pending of {counts['queries']} queries "
              f"(a query goes back to the queue after {server.lease_seconds:g} s without an answer)")
        print(f"open {server.url}")
        if server.public_origin is not None:
            print(f"or, through the proxy, {server.public_origin}/?token={server.token}")
        print("the token in that link is required for every request; Ctrl-C stops the server "
              "(every answer is already saved)", flush=True)

    try:
        serve(path, host=args.host, port=args.port, token=args.token, lease_seconds=args.lease_seconds,
              labeller=args.name, public_origin=args.origin, on_start=announce)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("stopped")
    return 0


SWEEP_EXAMPLES = """examples:
  llm-gym sweep experiments/instructgpt/config.toml --grid ppo.ppo.config.kl_coef=0.05,0.2 --seeds 2
  llm-gym sweep experiments/instructgpt/config.toml --grid oracle.temperature=0,0.5,1 --grid reward_model.k=2,4 --parallel 2
  llm-gym sweep experiments/instructgpt/config.toml --grid ppo.ppo_ptx.config.ptx_coef=0.1,1 --metric ppo_ptx.gold --set ppo.ppo_ptx.iterations=10

Values are read like --set values (numbers, true/false, bare strings). Each point is an
`llm-gym run` in OUT/<point> (its output in OUT/<point>/run.log); rerun the same command to
resume. Results: OUT/sweep.csv, OUT/sweep.json, OUT/sweep.png; compare the points in
TensorBoard's HPARAMS tab with `tensorboard --logdir OUT`.
"""


def _cmd_sweep(args: argparse.Namespace) -> int:
    from llm_gym.app.sweep import SweepError, default_metric, format_table, parse_grid, plan_sweep, run_sweep

    grid = parse_grid(args.grid)
    config = _load_experiment(args.config, args.set, args.cache_dir)
    args.metric = args.metric or default_metric(config)
    out = Path(args.out or (f"{config.out.rstrip('/')}_sweep" if config.out.strip("/") else "runs/sweep"))
    points = plan_sweep(args.config, grid, seeds=args.seeds, overrides=args.set, cache_dir=args.cache_dir,
                        metric=args.metric)
    shape = " x ".join([*(f"{len(v)} {k}" for k, v in grid.items()), f"{args.seeds} seed(s)"])
    print(f"sweep of {config.name!r}: {len(points)} runs ({shape}), {args.parallel} at a time -> {out}", flush=True)
    t0 = time.perf_counter()
    error: SweepError | None = None
    try:
        results = run_sweep(args.config, grid, seeds=args.seeds, out=out, overrides=args.set, parallel=args.parallel,
                            cache_dir=args.cache_dir, metric=args.metric, on_event=lambda line: print(line, flush=True))
    except SweepError as err:
        error, results = err, err.points
    print()
    print(format_table(results, args.metric))
    print(f"\ntable: {out / 'sweep.csv'}  (and {out / 'sweep.json'})")
    print(f"plot: {out / 'sweep.png'}  ({args.metric} per grid point)")
    print(f"TensorBoard: tensorboard --logdir {out}  (HPARAMS tab compares the points)")
    print(f"done in {time.perf_counter() - t0:.0f}s")
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-gym", description="RLHF with a language model as the agent.", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--cache-dir", default=None, help="where built models are cached (default: $LLM_GYM_CACHE or ~/.cache/llm_gym)")
        p.add_argument("--smoke", action="store_true", help="use the seconds-to-build smoke model instead of the default")

    def overrides(p: argparse.ArgumentParser) -> None:
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one config value by its dotted path (repeatable), e.g. --set ppo.ppo.iterations=10")

    def run_options(p: argparse.ArgumentParser, out_help: str) -> None:
        overrides(p)
        p.add_argument("--out", default=None, help=out_help)
        p.add_argument("--cache-dir", default=None, help="where the built-in model is cached (sets model.cache_dir)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser("run", help="run an experiment config (pretrain -> SFT -> RM -> PPO -> evaluation), resuming",
                       epilog=RUN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="the experiment file (TOML or JSON), e.g. experiments/instructgpt/config.toml")
    run_options(p, "run folder (default: the config's `out`); rerun into it to resume")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("sweep", help="run an experiment over a grid of config values (and seeds); table, plot, HPARAMS",
                       epilog=SWEEP_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="the experiment file (TOML or JSON), e.g. experiments/instructgpt/config.toml")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a dotted config key and its values (repeatable: the grid is their product), "
                        "e.g. --grid ppo.ppo.config.kl_coef=0.05,0.2")
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="runs per grid point, with seeds config.seed .. config.seed+N-1 (default 1)")
    p.add_argument("--parallel", type=int, default=1, metavar="N", help="run N points at once, each in its own process (default 1)")
    overrides(p)
    p.add_argument("--out", default=None, help="sweep folder (default: the config's `out` + '_sweep'); rerun into it to resume")
    p.add_argument("--metric", default=None, metavar="ROW.KEY",
                   help="the summary column plotted and shown per point, e.g. ppo_ptx.win_rate (default: the gold score "
                        "of the config's first RL run or loop that runs, else sft.gold); a column no point can have is "
                        "refused before anything runs")
    p.add_argument("--cache-dir", default=None, help="where the built-in model is cached (sets model.cache_dir)")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("demo", help="the main job: the InstructGPT study's default config, end to end",
                       epilog="examples:\n  llm-gym demo\n  llm-gym demo --out runs/demo --set ppo.ppo.iterations=20",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    run_options(p, "run folder (default: runs/instructgpt); rerun into it to resume")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("eval", help="re-evaluate a finished run: gold, RM score, KL and win rate vs SFT, perplexity",
                       epilog=EVAL_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="the folder `llm-gym run` wrote (it holds config.json and state.json)")
    overrides(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("label", help="answer a preference store's pending queries at the terminal or in the browser",
                       epilog=LABEL_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", help="a PreferenceStore file (SQLite), e.g. the labels.sqlite of a run")
    p.add_argument("--limit", type=int, default=None, help="label at most this many queries now (terminal only)")
    p.add_argument("--name", default="human",
                   help="your labeller id, stored with every answer (with --web: the default the page can change)")
    p.add_argument("--web", action="store_true", help="serve a labelling page in the browser instead of the terminal")
    p.add_argument("--host", default="127.0.0.1",
                   help="with --web: the address to listen on (default 127.0.0.1, this machine only; "
                        "another address needs --token)")
    p.add_argument("--port", type=int, default=0, help="with --web: the port (default 0: a free port, printed)")
    p.add_argument("--token", default=None,
                   help="with --web: the access token (16+ URL-safe characters; default: a random one, printed)")
    p.add_argument("--lease-seconds", type=float, default=300.0, metavar="S",
                   help="with --web: a query a labeller holds goes back to the queue after S seconds unanswered (default 300)")
    p.add_argument("--origin", default=None, metavar="URL",
                   help="with --web behind an HTTPS reverse proxy: the scheme://host[:port] the browser reaches the page at "
                        "(e.g. https://labels.example.org); answers posted from there are accepted")
    p.set_defaults(func=_cmd_label)

    p = sub.add_parser("build-model", help="build (or find cached) the built-in pretrained model",
                       epilog="example:\n  llm-gym build-model --smoke", formatter_class=argparse.RawDescriptionHelpFormatter)
    common(p)
    p.set_defaults(func=_cmd_build_model)
    return parser


_RESUME = ("rerun the same command to resume: finished stages are reused, a PPO run continues from its last "
           "checkpoint, and labels already given are kept")
_INTERRUPTED = {
    "run": _RESUME,
    "demo": _RESUME,
    "sweep": "rerun the same command to resume: every point reuses what its run finished",
    "label": "every answer given so far is saved",
}
"""What the line printed after Ctrl-C adds, per command."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `llm-gym` console script (the exit statuses are in the module docstring)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    from llm_gym.core.data import DatasetError
    from llm_gym.feedback.oracles import NoAnswersError
    from llm_gym.feedback.store import StoreError
    from llm_gym.infra.allocator import keep_freed_memory_from_env
    from llm_gym.infra.configio import ConfigError
    from llm_gym.infra.runfolder import RunFolderError  # CheckpointError is one

    keep_freed_memory_from_env()  # large tensors reuse freed memory instead of page-faulting (infra/allocator.py)
    hf_logging.disable_progress_bar()  # "Loading weights" bars on every from_pretrained drown the stage lines
    if "" not in sys.path and os.getcwd() not in sys.path:
        # as `python -m llm_gym` does: a config's "my_pkg.rewards:fn" or "my_pkg.envs:Env-v0" may live in this folder
        sys.path.insert(0, os.getcwd())
    try:
        return int(args.func(args))
    except (ConfigError, DatasetError, NoAnswersError, RunFolderError, StoreError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = _INTERRUPTED.get(args.command)
        print(f"\ninterrupted{'; ' + hint if hint else ''}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
