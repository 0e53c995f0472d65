"""The whole benchmark set at the built-in size with small settings, in one process, and one summary table
(`make bench`).

It runs, each through its script's `main`: `bench_sampling.py` (Policy.sample vs model.generate),
`bench_ppo.py` (one PPO iteration by phase), `bench_agents.py` (PPO vs RLOO vs GRPO vs Dr. GRPO at the same batch),
`bench_update_costs.py` (AdamW's forms, the entropy's backward pass, gradient checkpointing, bf16 attention's
kernel) and `bench_reward_model.py` (RM scoring and one RewardTrainer step). The settings are smaller than the scripts' own
defaults (fewer repeats, a smaller agents batch) so that the set takes about 20 s on 2 cores once the built-in model
is cached (its first build takes about 2.5 minutes more); the figures are for spotting a regression, and each script run
on its own, with its defaults, gives the figures to record. Every benchmark runs on the same number of threads
(`--threads`, 1 by default); `--verbose` prints each script's own report before the table.

    python experiments/bench_all.py
    python experiments/bench_all.py --smoke --cache-dir /tmp/cache     # the smoke-sized model: wiring only, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

from transformers.utils import logging as hf_logging

import bench_agents
import bench_ppo
import bench_reward_model
import bench_sampling
import bench_update_costs
from bench_ppo import percent

Row = tuple[str, str, str, str]
"""One line of the summary: benchmark, figure, value, ratio or share."""


def sampling_rows(r: dict[str, float]) -> list[Row]:
    return [("sampling", "Policy.sample tokens/s", f"{r['tokens_per_s']:,.0f}", f"{r['ratio']:.3g}x model.generate's"),
            ("sampling", "Policy.sample GFLOP/s", f"{r['gflops']:.4g}", f"{percent(r['share'])} of the matmul peak")]


def ppo_rows(r: dict[str, float]) -> list[Row]:
    return [("ppo", "s / iteration", f"{r['seconds']:.4g}", f"{percent(r['share'])} of the matmul peak"),
            ("ppo", "update phase GFLOP/s", f"{r['update_gflops']:.4g}", f"{percent(r['update_share'])} of the matmul peak"),
            ("ppo", "generation tokens/s", f"{r['generation_tokens_per_s']:,.0f}", "-")]


def agents_rows(r: dict[str, dict[str, float]]) -> list[Row]:
    default = r["default"]
    return [("agents", f"{name} s / iteration", f"{seconds:.4g}", f"{seconds / default['PPO']:.3g}x PPO's")
            for name, seconds in default.items()]


def update_cost_rows(r: dict[str, float]) -> list[Row]:
    return [("update costs", "fused AdamW step", "-", f"{r['fused_step']:.3g}x the per-parameter loop's"),
            ("update costs", "entropy for the logs only", "-", f"{r['entropy_for_logs']:.3g}x differentiated"),
            ("update costs", "gradient checkpointing", "-", f"{r['checkpointed']:.3g}x activations kept"),
            *([("update costs", "bf16 attention, math kernel", "-",
                f"{r['bf16_math_attention']:.3g}x the flash kernel")] if "bf16_math_attention" in r else [])]


def reward_model_rows(r: dict[str, float]) -> list[Row]:
    return [("reward model", "scoring tokens/s", f"{r['score_tokens_per_s']:,.0f}", f"{percent(r['score_share'])} of the matmul peak"),
            ("reward model", "training step s", f"{r['step_seconds']:.4g}", f"{percent(r['step_share'])} of the matmul peak")]


class Benchmark(NamedTuple):
    """One script of the set as `bench_all` runs it."""

    name: str
    main: Callable[[list[str]], Any]
    arguments: list[str]
    rows: Callable[[Any], list[Row]]
    """The summary rows of what `main` returned."""


def benchmarks(smoke: bool, common: list[str]) -> list[Benchmark]:
    """The set in the order it runs, each with its small settings and `common` (the cache folder, the threads)."""
    model = ["--model", "smoke" if smoke else "builtin"]
    return [
        Benchmark("bench_sampling", bench_sampling.main, [*model, *common, "--repeats", "5"], sampling_rows),
        Benchmark("bench_ppo", bench_ppo.main, [*model, *common, "--iterations", "3"], ppo_rows),
        Benchmark("bench_agents", bench_agents.main,
                  [*(["--smoke"] if smoke else []), *common, "--completions", "32", "--iterations", "3"], agents_rows),
        Benchmark("bench_update_costs", bench_update_costs.main, [*model, *common, "--repeats", "3"], update_cost_rows),
        Benchmark("bench_reward_model", bench_reward_model.main, [*model, *common, "--repeats", "3"], reward_model_rows),
    ]


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
    """Transformers' loading bars off for the block (one a model loaded would bury the table), as they were after."""
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def main(argv: Sequence[str] | None = None) -> list[Row]:
    """Run the set, print the summary table; returns its rows."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", default=None, help="where the built-in model is built and cached")
    parser.add_argument("--smoke", action="store_true", help="the smoke-sized model (wiring only)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch's threads for every benchmark (1: on a shared machine, two spin-waiting OpenMP "
                             "threads can run several times slower than one)")
    parser.add_argument("--verbose", action="store_true", help="print each script's own report too")
    args = parser.parse_args(argv)
    common = [*(["--cache-dir", args.cache_dir] if args.cache_dir else []), "--threads", str(args.threads)]
    rows: list[Row] = []
    start = time.perf_counter()
    for bench in benchmarks(args.smoke, common):
        began = time.perf_counter()
        report = io.StringIO()
        try:
            with contextlib.redirect_stdout(report), no_progress_bars():
                result = bench.main(bench.arguments)
        except BaseException:
            print(report.getvalue(), file=sys.stderr)  # what the failed benchmark printed, before its traceback
            raise
        if args.verbose:
            print(report.getvalue())
        print(f"{bench.name} {' '.join(bench.arguments)}: {time.perf_counter() - began:.1f} s", file=sys.stderr)
        rows += bench.rows(result)

    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    print(f"== bench_all: {'smoke' if args.smoke else 'built-in'} model, float32, {args.threads} thread(s), "
          f"{time.perf_counter() - start:.0f} s ==")
    header = ("benchmark", "figure", "value", "ratio / share")
    widths = [max(w, len(h)) for w, h in zip(widths, header)]
    for row in (header, *rows):
        print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}")
    return rows


if __name__ == "__main__":
    main()
