"""Does PPO's bf16 path learn what fp32 learns? The gold-score curve on the built-in task, fp32 vs bf16, over seeds.

Issue 18 accepts `mixed_precision="bf16"` as the speed answer only if "the gold-score curve on the
built-in task is within seed noise of fp32's". This script runs the "gold" part of
`instructgpt_ppo.py` (PPO from the SFT policy against the gold scorer, the same settings: 64 prompts
per iteration, 24 new tokens, 4 epochs of minibatch 16, learning rate 5e-5, beta 0.05) once per
precision and seed, everything else equal (the same SFT policy, the same seed for the run's rng and
torch's), and evaluates every `--eval-every` iterations on the held-out prompts as that script
does: one sampled completion per prompt (temperature 1, sampling seed 999), its mean gold score,
and the KL to SFT on those samples. The evaluation runs in float32 for both precisions, so the curves
compare what the two runs learned, not how they sample.

Seed noise, at each evaluation point: with n seeds per precision, the difference of the means
`d = mean_bf16 - mean_fp32` against its standard error `se = sqrt(s_fp32^2 / n + s_bf16^2 / n)`
(sample standard deviations over seeds). A point is within seed noise when `|d| <= 2 se` (a
two-sided test at roughly 5%, generous with n = 3 because `se` is itself estimated from 3 seeds);
the table also shows the weaker check "bf16's mean lies inside fp32's min..max band over seeds".
The verdict is that every evaluation point passes the 2-se test.

    python experiments/bf16_learning.py                          # 3 seeds x 2 precisions, ~8 min on 1 thread
    python experiments/bf16_learning.py --seeds 0 --iterations 10 --eval-every 5     # a smoke run
    python experiments/bf16_learning.py --fused-adamw --json experiments/results/bf16_fused_learning.json
                                               # bf16 + fused AdamW (bench_trl.py's fast path) against fp32's default

The SFT policy is the demo pipeline's (`runs/instructgpt/sft`, written by
`llm-gym run experiments/instructgpt/config.toml`) when it is there; otherwise it is trained here the
way `instructgpt_ppo.py` trains it (2 epochs on the demonstrations, seed 0) and saved under `--out`.
The table is written to `experiments/results/bf16_learning.json`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

import llm_gym  # noqa: F401  (registers the environments)
from llm_gym import (GoldScorer, Policy, SamplingConfig, TinyLMConfig, build_builtin_model, evaluate_policy,
                     generate_review_task)
from llm_gym.agents import PPO, PPOConfig, SFTConfig, SFTTrainer
from llm_gym.agents.checkpoint import open_checkpoint
from llm_gym.envs import PromptBanditVecEnv

SAMPLING = SamplingConfig(max_new_tokens=24)
"""The sampling settings of `instructgpt_ppo.py` (training and evaluation)."""
EVAL_SEED = 999
"""The held-out sampling seed of `instructgpt_ppo.py`: every policy is evaluated on the same draws."""
PRECISIONS = {"fp32": "no", "bf16": "bf16"}
"""Label -> `PPOConfig.mixed_precision`."""


def sft_policy_path(args: argparse.Namespace, task: Any) -> tuple[Path, str]:
    """The SFT policy's folder and where it came from: the demo run's when present (manifest checked), else trained here."""
    demo = Path(args.sft)
    if (demo / "config.json").is_file():
        open_checkpoint(demo, marker="config.json", kind="SFT policy folder",
                        fix=f"delete {demo} (or pass --sft elsewhere) and rerun")
        return demo, f"reused {demo}"
    path = Path(args.out) / "sft"
    if not (path / "config.json").is_file():  # as instructgpt_ppo.py's sft_policy does
        report = build_builtin_model(TinyLMConfig(), cache_dir=args.cache_dir)
        policy = Policy.from_pretrained(report.path)
        t = time.perf_counter()
        SFTTrainer(SFTConfig(epochs=2), rng=np.random.default_rng(0)).fit(policy, task.demonstrations)
        print(f"SFT trained in {time.perf_counter() - t:.0f}s")
        policy.save_pretrained(path)
        return path, f"trained here into {path}"
    return path, f"reused {path} (trained by an earlier run of this script)"


def file_digest(path: Path) -> str:
    """The first 16 hex digits of a file's sha256 (which SFT weights the runs started from)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def run_one(args: argparse.Namespace, sft_path: Path, sft: Policy, task: Any, gold: GoldScorer,
            prompts: list[str], precision: str, seed: int) -> dict[str, Any]:
    """One PPO run from SFT against the gold scorer; the held-out gold score and KL to SFT every `eval_every` iterations."""
    torch.manual_seed(seed)
    policy = Policy.from_pretrained(sft_path)
    env = PromptBanditVecEnv(task.prompts, gold, num_envs=args.num_envs, gold_fn=gold)
    config = PPOConfig(sampling=SAMPLING, learning_rate=args.lr, kl_coef=args.kl_coef, minibatch_size=16, n_epochs=4,
                       mixed_precision=PRECISIONS[precision], fused_adamw=args.fused_adamw and precision == "bf16",
                       log_samples_every=0)
    curve: list[dict[str, float]] = []
    train: list[dict[str, float]] = []
    eval_seconds = 0.0
    iteration_seconds: list[float] = []

    def evaluate(it: int) -> None:
        nonlocal eval_seconds
        t = time.perf_counter()
        rep = evaluate_policy(policy, prompts, sampling=SAMPLING, seed=EVAL_SEED, gold_fn=gold, reference=sft)
        eval_seconds += time.perf_counter() - t
        curve.append({"iteration": it, "gold": float(rep.gold), "kl": float(rep.kl), "tokens": float(rep.mean_tokens)})

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        agent = PPO(policy, env, config, rng=np.random.default_rng(seed))
        evaluate(0)
        for it in range(1, args.iterations + 1):
            t = time.perf_counter()
            stats = agent.train_iteration()
            iteration_seconds.append(time.perf_counter() - t)
            train.append({"iteration": it, "gold": stats.get("objective/gold", float("nan")), "kl": stats["objective/kl"],
                          "grad_norm": stats.get("train/grad_norm", float("nan")),
                          "clipfrac": stats.get("train/clipfrac", float("nan"))})
            if it % args.eval_every == 0 or it == args.iterations:
                evaluate(it)
    params_finite = all(bool(torch.isfinite(p).all()) for p in policy.model.parameters())
    messages = sorted({f"{w.category.__name__}: {str(w.message)[:200]}" for w in caught})
    return {"precision": precision, "seed": seed, "curve": curve, "train": train,
            "train_seconds": float(sum(iteration_seconds)), "seconds_per_iteration": float(np.median(iteration_seconds)),
            "eval_seconds": eval_seconds, "params_finite": params_finite, "warnings": messages,
            "param_dtype": str(next(policy.model.parameters()).dtype)}


def compare(runs: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Per evaluation point: each precision's mean, std, min and max over seeds of `key`, their difference, the noise checks."""
    by = {p: [r for r in runs if r["precision"] == p] for p in PRECISIONS}
    iterations = [c["iteration"] for c in by["fp32"][0]["curve"]]
    rows = []
    for i, it in enumerate(iterations):
        v = {p: np.array([r["curve"][i][key] for r in by[p]]) for p in PRECISIONS}
        n = {p: len(v[p]) for p in PRECISIONS}
        std = {p: float(v[p].std(ddof=1)) if n[p] > 1 else float("nan") for p in PRECISIONS}
        diff = float(v["bf16"].mean() - v["fp32"].mean())
        se = math.sqrt(sum(std[p] ** 2 / n[p] for p in PRECISIONS))
        rows.append({
            "iteration": it,
            **{f"{p}_{stat}": float(f(v[p])) for p in PRECISIONS for stat, f in
               (("mean", np.mean), ("min", np.min), ("max", np.max))},
            **{f"{p}_std": std[p] for p in PRECISIONS},
            "diff": diff, "se_diff": se,
            "z": diff / se if se > 0 else 0.0,
            "within_2se": bool(abs(diff) <= 2 * se + 1e-12),
            "bf16_in_fp32_band": bool(v["fp32"].min() - 1e-12 <= v["bf16"].mean() <= v["fp32"].max() + 1e-12),
        })
    return rows


def print_table(rows: list[dict[str, Any]], key: str) -> None:
    """The comparison table of one metric."""
    print(f"\n== held-out {key}: fp32 vs bf16, mean ± std over seeds ==")
    print(f"{'iter':>5}{'fp32':>18}{'bf16':>18}{'diff':>9}{'2se':>8}{'|d|<=2se':>10}{'in fp32 band':>14}")
    for r in rows:
        print(f"{r['iteration']:>5}{r['fp32_mean']:>+10.3f} ± {r['fp32_std']:.3f}{r['bf16_mean']:>+10.3f} ± {r['bf16_std']:.3f}"
              f"{r['diff']:>+9.3f}{2 * r['se_diff']:>8.3f}{'yes' if r['within_2se'] else 'NO':>10}"
              f"{'yes' if r['bf16_in_fp32_band'] else 'no':>14}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (each run's rng and torch seed)")
    parser.add_argument("--iterations", type=int, default=60, help="PPO iterations per run (the gold part's 60)")
    parser.add_argument("--eval-every", type=int, default=10, help="iterations between held-out evaluations")
    parser.add_argument("--num-envs", type=int, default=64, help="prompts per PPO iteration")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--eval-prompts", type=int, default=200)
    parser.add_argument("--sft", default="runs/instructgpt/sft", help="an SFT policy folder to reuse when present")
    parser.add_argument("--out", default="runs/bf16_learning", help="where an SFT policy trained here is saved")
    parser.add_argument("--cache-dir", default=None, help="built-in model cache (default: $LLM_GYM_CACHE or ~/.cache/llm_gym)")
    parser.add_argument("--json", default="experiments/results/bf16_learning.json", help="where the results go")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--fused-adamw", action="store_true",
                        help="the bf16 runs also use the fused AdamW: the fast path bench_trl.py times, against fp32's default")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.perf_counter()

    task = generate_review_task(TinyLMConfig().task)
    gold = GoldScorer()
    sft_path, sft_source = sft_policy_path(args, task)
    sft = Policy.from_pretrained(sft_path)
    prompts = list(task.eval_prompts[: args.eval_prompts])
    print(f"SFT policy: {sft_source}; {len(prompts)} held-out prompts; {args.iterations} iterations x {args.num_envs} "
          f"prompts per run; {torch.get_num_threads()} thread(s)")

    runs: list[dict[str, Any]] = []
    for seed in seeds:  # the precisions alternate, so a change in machine load touches both alike
        for precision in PRECISIONS:
            t = time.perf_counter()
            r = run_one(args, sft_path, sft, task, gold, prompts, precision, seed)
            r["wall_seconds"] = time.perf_counter() - t
            runs.append(r)
            last = r["curve"][-1]
            print(f"{precision} seed {seed}: gold {last['gold']:+.3f}, KL {last['kl']:.3f} after {last['iteration']} "
                  f"iterations; {r['wall_seconds']:.0f}s ({r['train_seconds']:.0f}s training, "
                  f"{r['seconds_per_iteration']:.2f} s/iteration median, {r['eval_seconds']:.0f}s evaluating)"
                  + (f"; {len(r['warnings'])} warning(s)" if r["warnings"] else ""))

    gold_rows, kl_rows = compare(runs, "gold"), compare(runs, "kl")
    print_table(gold_rows, "gold")
    print_table(kl_rows, "kl")
    print("\n== final per seed ==")
    print(f"{'seed':>5}{'fp32 gold':>11}{'bf16 gold':>11}{'fp32 KL':>9}{'bf16 KL':>9}{'fp32 s/it':>11}{'bf16 s/it':>11}")
    for seed in seeds:
        f, b = (next(r for r in runs if r["seed"] == seed and r["precision"] == p) for p in PRECISIONS)
        print(f"{seed:>5}{f['curve'][-1]['gold']:>+11.3f}{b['curve'][-1]['gold']:>+11.3f}{f['curve'][-1]['kl']:>9.3f}"
              f"{b['curve'][-1]['kl']:>9.3f}{f['seconds_per_iteration']:>11.2f}{b['seconds_per_iteration']:>11.2f}")
    verdict = {key: all(r["within_2se"] for r in rows) for key, rows in (("gold", gold_rows), ("kl", kl_rows))}
    band = {key: all(r["bf16_in_fp32_band"] for r in rows) for key, rows in (("gold", gold_rows), ("kl", kl_rows))}
    print(f"\nwithin seed noise (|mean bf16 - mean fp32| <= 2 x its standard error, at every evaluation point): "
          f"gold {'yes' if verdict['gold'] else 'NO'}, KL {'yes' if verdict['kl'] else 'NO'}; "
          f"bf16 mean inside fp32's min..max band at every point: gold {'yes' if band['gold'] else 'no'}, "
          f"KL {'yes' if band['kl'] else 'no'}")
    total = time.perf_counter() - t0
    print(f"total {total:.0f}s")

    result = {
        "what": "PPO from SFT against the gold scorer on the built-in review task (instructgpt_ppo.py's gold part), "
                "fp32 vs mixed_precision='bf16'" + (" with fused_adamw=True" if args.fused_adamw else "")
                + "; held-out gold score and KL to SFT (one sampled completion per prompt, seed 999, evaluated in "
                "float32)",
        "noise_criterion": "at each evaluation point, d = mean_bf16 - mean_fp32 over seeds, se = sqrt(s_fp32^2/n + "
                           "s_bf16^2/n) with sample stds; within seed noise when |d| <= 2 se; verdict: every point",
        "within_seed_noise": verdict,
        "bf16_mean_in_fp32_band": band,
        "settings": {"seeds": seeds, "iterations": args.iterations, "eval_every": args.eval_every,
                     "num_envs": args.num_envs, "learning_rate": args.lr, "kl_coef": args.kl_coef, "minibatch_size": 16,
                     "n_epochs": 4, "max_new_tokens": SAMPLING.max_new_tokens, "eval_prompts": len(prompts),
                     "eval_seed": EVAL_SEED, "threads": torch.get_num_threads()},
        "sft": {"source": sft_source, "model_sha256_16": file_digest(Path(sft_path) / "model.safetensors")},
        "machine": {"torch": torch.__version__, "processor": platform.processor() or platform.machine(),
                    "cpu_capability": torch.backends.cpu.get_cpu_capability()},
        "gold": gold_rows,
        "kl": kl_rows,
        "runs": runs,
        "total_seconds": total,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
