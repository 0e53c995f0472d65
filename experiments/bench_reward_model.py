"""Seconds, tokens/s, model FLOPs and GFLOP/s of the reward model: scoring a batch of (prompt, completion) pairs, and
one `RewardTrainer` step on pairwise comparisons, against a matmul peak measured in the same run; peak memory.

The work: `--comparisons` pairwise comparisons (16 by default) built from the review task's demonstrations, comparison
i = (prompt i, demonstration i's completion preferred to demonstration i+1's). The cost of a step does not depend on
the labels, so they are fixed rather than drawn.

    scoring         `rm.score(prompts, completions)` of the comparisons' 2 x 16 pairs in one batch: tokenizing,
                    padding, the backbone, the head, `.cpu().numpy()`, under no_grad in eval mode
    training step   `RewardTrainer.fit` on the 16 comparisons with one epoch, one batch and nothing held out: exactly
                    one optimizer step (the K-way Bradley-Terry loss over the same 32 sequences, backward, AdamW;
                    `fit` makes its optimizer afresh each call, so AdamW's state is allocated within the step)

The two alternate (scoring, step, scoring, ...) after one warm-up of each; medians of `--repeats`. Model FLOPs count
2N per real token for a forward and 6N for a forward and backward, N = the reward model's parameters without the
embedding tables (Kaplan et al. 2020; the backbone has no LM head, and the scalar head is in N); attention's own FLOPs
are left out. `--model gpt2-small` is GPT-2 small's shape (124M, random init, built here: `bench_ppo.gpt2_shaped`).
With `--mixed-precision bf16` scoring runs under bf16 autocast and the step uses `RewardTrainerConfig.mixed_precision`;
the shares are then of the bf16 matmul peak.

    python experiments/bench_reward_model.py                                  # the built-in backbone
    python experiments/bench_reward_model.py --model gpt2-small --threads 2 --repeats 2
    python experiments/bench_reward_model.py --model gpt2-small --device cuda --mixed-precision bf16
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import transformers

from bench_ppo import add_run_arguments, body_parameters, describe_peaks, matmul_peaks, model_folder, percent, run_settings, timed
from llm_gym import RewardModel, generate_review_task
from llm_gym.core.preferences import Comparison
from llm_gym.infra.distributed import Distributed
from llm_gym.infra.memory import PeakMemory
from llm_gym.models.reward_trainer import RewardTrainer, RewardTrainerConfig

PHASES = ("scoring", "training step")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument("--comparisons", type=int, default=16, help="pairwise comparisons (2 sequences each)")
    parser.add_argument("--repeats", type=int, default=5)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Run the benchmark, print its report; returns the key figures (for `bench_all.py`)."""
    args = parse_args(argv)
    device, precision = run_settings(args)

    scratch = tempfile.TemporaryDirectory()
    path, config = model_folder(args.model, args.cache_dir, Path(scratch.name))
    rm = RewardModel.from_pretrained(path, device=device, head_seed=0)
    demos = generate_review_task(config.task).demonstrations[: args.comparisons + 1]
    if len(demos) <= args.comparisons:
        raise SystemExit(f"the task has only {len(demos)} demonstrations; lower --comparisons")
    comparisons = [Comparison(a.prompt, (a.completion, b.completion), (0, 1)) for a, b in zip(demos, demos[1:])]
    prompts = [c.prompt for c in comparisons for _ in c.completions]
    completions = [text for c in comparisons for text in c.completions]
    _, mask = rm.encode(prompts, completions)
    tokens = int(mask.sum())

    trainer = RewardTrainer(RewardTrainerConfig(epochs=1, batch_size=len(comparisons), heldout_fraction=0.0,
                                                mixed_precision=precision), rng=np.random.default_rng(0))

    def score() -> None:
        with Distributed.autocast(precision, device):
            rm.score(prompts, completions, batch_size=len(prompts))

    def step() -> None:
        trainer.fit(rm, comparisons)

    work = {"scoring": score, "training step": step}
    for fn in work.values():  # warm-up
        fn()
    peaks = matmul_peaks(device, precision)
    dtype = "bf16" if precision == "bf16" else "fp32"
    peak = peaks[dtype]
    times: dict[str, list[float]] = {k: [] for k in PHASES}
    with PeakMemory() as memory:
        for _ in range(args.repeats):
            for name, fn in work.items():  # alternate, so a busy machine slows both alike
                times[name].append(timed(fn, device))

    body = body_parameters(rm.net)
    flops = {"scoring": 2 * body * tokens, "training step": 6 * body * tokens}
    n_all = sum(p.numel() for p in rm.parameters())
    print("== bench_reward_model: RewardModel scoring and one RewardTrainer step ==")
    print(f"device        {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.machine()}), "
          f"threads {torch.get_num_threads()}")
    print(f"versions      torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"model         {args.model}: {n_all:,} parameters ({body:,} per token); precision {dtype}")
    print(f"batch         {len(comparisons)} pairwise comparisons = {len(prompts)} sequences, {tokens:,} real tokens "
          f"(padded to {mask.shape[1]}); medians of {args.repeats}, alternating")
    print(f"matmul peak   {describe_peaks(peaks, device)}; shares below of the {dtype} peak")
    print(f"{'phase':<15}{'median s':>10}{'tokens/s':>11}{'GFLOP':>10}{'GFLOP/s':>10}{'of peak':>9}")
    rates = {}
    for k in PHASES:
        s = statistics.median(times[k])
        rates[k] = flops[k] / s / 1e9
        print(f"{k:<15}{s:>10.4g}{tokens / s:>11,.0f}{flops[k] / 1e9:>10.4g}{rates[k]:>10.4g}{percent(rates[k] / peak):>9}")
    cuda = f", CUDA peak {memory.cuda_peak_mb:,.0f} MB" if memory.cuda_peak_mb is not None else ""
    print(f"peak memory   {memory.peak_rss_mb:,.0f} MB resident{cuda}")
    scratch.cleanup()
    return {"score_tokens_per_s": tokens / statistics.median(times["scoring"]), "score_share": rates["scoring"] / peak,
            "step_seconds": statistics.median(times["training step"]), "step_share": rates["training step"] / peak}


if __name__ == "__main__":
    main()
