"""Reward-model over-optimisation in miniature (Gao et al. 2022, "Scaling Laws for Reward Model Overoptimization").

What it does, on the built-in review task, from the demo run's SFT policy (`runs/instructgpt/sft`):

1. Labels. Pairs of SFT completions of the task's *training* prompts (two independent samples per
   query), labelled by `SyntheticOracle(GoldScorer(), agreement=0.73, flip_prob=0.1)`, the
   calibrated human-like labeller (`HUMAN_AGREEMENT`): its temperature is found on all the queries
   before any is answered. The query order is shuffled once, so the smaller label sets are prefixes
   of the largest that span random prompts.
2. Proxy reward models. One per label budget (default 500 / 2,000 / 8,000), each a fresh
   `RewardModel.from_pretrained(sft)` (InstructGPT: the RM starts from the SFT weights, a new head)
   trained by `RewardTrainer` with its defaults of the time (2 epochs, lr 3e-4, batch 16, constant rate;
   pinned here) on all of its labels,
   then shifted so the task's demonstrations score 0 on average (the pipeline's normalisation).
   Held-out agreement: how often each RM orders pairs of SFT completions of the *held-out* prompts
   as the gold scorer does (gold ties left out).
3. Best-of-N. K candidates (default 256) per held-out prompt from SFT, each scored by the gold scorer
   and every proxy RM. For N = 1 ... K the expected gold (and proxy) score of the candidate the
   proxy ranks first among N is computed exactly over all N-subsets of the K candidates (the
   unbiased estimator of Nakano et al. 2021 / Gao et al. 2022: the i-th lowest of K by proxy is the
   best of a random N-subset with probability C(i-1, N-1) / C(K, N)), so every N shares the same
   draws. KL to SFT: the analytic `log N - (N - 1) / N` (`best_of_n_kl`; an upper bound when
   candidates repeat, see agents/best_of_n.py). Best-of-N selecting by the gold scorer itself is the
   reference that cannot over-optimise.
4. RL. PPO, RLOO and GRPO (`agents/`) from SFT against each proxy RM, at the KL coefficients given
   by `--rl`, for `--iterations` iterations of `--num-envs` completions on the training prompts.
   Every iteration's batch mean of the proxy score, the gold score (the environment's
   `info["gold"]`) and the sampled KL to SFT (k1, summed over tokens) is kept, and every
   `OverOptimizationWarning` (and `KLWarning`) the agent's own health monitor raises is recorded
   with the iteration it fired at.
5. Report. Scores are taken relative to the SFT policy's gold (and proxy) score on the same prompts
   (`R = 0` at `d = 0`); RL traces are averaged over blocks of `--block` iterations. Gao's forms are
   fitted by least squares (both are linear in alpha, beta):
       best-of-N: R(d) = d (alpha - beta d),        peak at d* = alpha / (2 beta)
       RL:        R(d) = d (alpha - beta log d),    peak at d* = exp(alpha / beta - 1)
   with `d = sqrt(KL)`; fit quality as R^2 and RMSE. Warning timing is judged against the gold
   peak (the rule is in `warning_verdict`). Writes `experiments/results/gao_overoptimization.json`
   and three plots into `experiments/gao/`.

Everything expensive is cached under `--out` (labels, reward models, best-of-N scores, one file per
RL run), so a rerun with more RL runs or `--report-only` reuses what is there.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/gao/overoptimization.py          # the study (see README.md)
    .venv/bin/python experiments/gao/overoptimization.py --report-only              # refit/plot from the cache
    .venv/bin/python experiments/gao/overoptimization.py --smoke --out /tmp/gao_smoke   # wiring only, ~1 min
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import time
import warnings
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch
from llm_gym.agents import (
    GRPO,
    PPO,
    RLOO,
    GRPOConfig,
    PPOConfig,
    RLOOConfig,
    best_of_n_kl,
)
from llm_gym.agents.monitors import HealthMonitor, KLWarning, OverOptimizationWarning

from llm_gym import (
    Comparison,
    GoldScorer,
    Policy,
    Query,
    SamplingConfig,
    SyntheticOracle,
    generate_review_task,
)
from llm_gym.feedback.oracles import HUMAN_AGREEMENT
from llm_gym.infra.logger import Logger
from llm_gym.models.reward_model import RewardModel
from llm_gym.models.reward_trainer import RewardTrainer, RewardTrainerConfig

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
GOLD_TIE = 1e-6
SAMPLE_BATCH = 256  # sequences per sampling call (prompts repeated): larger batches amortise the per-token overhead


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sft", default="runs/instructgpt/sft", help="the base (SFT) policy folder")
    p.add_argument("--out", default="runs/gao", help="cache folder: labels, reward models, best-of-N scores, RL traces")
    p.add_argument("--results", default="experiments/results/gao_overoptimization.json")
    p.add_argument("--plots", default="experiments/gao", help="folder for the PNG plots")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--labels", default="500,2000,8000", help="label budgets of the proxy reward models")
    p.add_argument("--agreement", type=float, default=HUMAN_AGREEMENT, help="the labeller's agreement with the gold order")
    p.add_argument("--flip-prob", type=float, default=0.1, help="the labeller's random-flip rate (the pipeline's default)")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--bon-prompts", type=int, default=64, help="held-out prompts for best-of-N")
    p.add_argument("--bon-candidates", type=int, default=256, help="K: candidates per prompt; N runs up to K")
    p.add_argument("--rl", default="2000:ppo:0.01,2000:ppo:0.05,2000:rloo:0.01,2000:rloo:0.05,2000:grpo:0.04,2000:grpo:0.2,"
                                   "500:ppo:0.01,8000:ppo:0.01,500:grpo:0.04,8000:grpo:0.04",
                   help="RL runs as labels:algorithm:kl_coef, comma-separated (algorithm: ppo, rloo, grpo)")
    p.add_argument("--iterations", type=int, default=120, help="iterations per RL run")
    p.add_argument("--num-envs", type=int, default=64, help="completions per RL iteration (group algorithms: /4 prompts)")
    p.add_argument("--max-kl", type=float, default=80.0, help="stop an RL run early once its block-mean KL exceeds this")
    p.add_argument("--block", type=int, default=5, help="iterations averaged into one point of an RL curve")
    p.add_argument("--report-only", action="store_true", help="fit and plot from the cache; run nothing")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, wiring only (not results)")
    args = p.parse_args()
    if args.smoke:
        args.labels, args.bon_prompts, args.bon_candidates = "40,80", 4, 16
        args.rl, args.iterations, args.num_envs, args.block = "80:ppo:0.01,40:rloo:0.01,80:grpo:0.04", 6, 16, 2
        args.results = str(Path(args.out) / "results.json")
        args.plots = args.out
    return args


def rl_specs(text: str) -> list[tuple[int, str, float]]:
    specs = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        labels, algo, beta = item.split(":")
        if algo not in ("ppo", "rloo", "grpo"):
            raise SystemExit(f"--rl: unknown algorithm {algo!r} in {item!r} (ppo, rloo or grpo)")
        specs.append((int(labels), algo, float(beta)))
    return specs


def run_name(labels: int, algo: str, beta: float) -> str:
    return f"{algo}_beta{beta:g}_rm{labels}"


# ---------------------------------------------------------------------------------- sampling and labels


def sample_many(policy: Policy, prompts: list[str], sampling: SamplingConfig, seed: int) -> list[str]:
    """One completion per entry of `prompts`, in calls of SAMPLE_BATCH, call b seeded with seed + b."""
    out: list[str] = []
    for b, start in enumerate(range(0, len(prompts), SAMPLE_BATCH)):
        out.extend(policy.sample(prompts[start : start + SAMPLE_BATCH], sampling, seed=seed + b).completions)
    return out


def make_labels(policy: Policy, task, args: argparse.Namespace, gold: GoldScorer, out: Path) -> dict[str, Any]:
    path = out / "labels.json"
    if path.exists():
        return json.loads(path.read_text())
    n = max(int(x) for x in args.labels.split(","))
    rng = np.random.default_rng(args.seed)
    prompts = [task.prompts[i % len(task.prompts)] for i in rng.permutation(n)]
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens)
    t0 = time.perf_counter()
    a = sample_many(policy, prompts, sampling, seed=args.seed * 1_000_003 + 1)
    b = sample_many(policy, prompts, sampling, seed=args.seed * 1_000_003 + 500_001)
    t_sample = time.perf_counter() - t0
    queries = [Query(p, (x, y)) for p, x, y in zip(prompts, a, b)]
    oracle = SyntheticOracle(gold, rng=np.random.default_rng(args.seed + 1), agreement=args.agreement,
                             flip_prob=args.flip_prob)
    calibration = oracle.calibrate(queries)  # on every query it will be asked, before any is answered
    comparisons = [Comparison.from_query(q, ans) for q, ans in zip(queries, oracle.answer(queries))]
    sft_gold = gold(prompts + prompts, a + b)
    data = {
        "comparisons": [{"prompt": c.prompt, "completions": list(c.completions), "ranks": list(c.ranks)} for c in comparisons],
        "temperature": calibration.temperature, "expected_agreement": calibration.expected_agreement,
        "calibration_pairs": calibration.pairs, "calibration_ties": calibration.ties,
        "sft_gold_train": float(sft_gold.mean()), "sft_gold_train_sem": float(sft_gold.std(ddof=1) / math.sqrt(len(sft_gold))),
        "sample_seconds": t_sample, "completions_sampled": 2 * n,
    }
    path.write_text(json.dumps(data))
    return data


def comparisons_of(labels: dict[str, Any], n: int) -> list[Comparison]:
    return [Comparison(d["prompt"], tuple(d["completions"]), tuple(d["ranks"]), labeller="synthetic")
            for d in labels["comparisons"][:n]]


# ---------------------------------------------------------------------------------- reward models


def train_rm(n: int, labels: dict[str, Any], task, args: argparse.Namespace, out: Path, gold: GoldScorer) -> tuple[RewardModel, dict]:
    folder, meta_path = out / f"rm_{n}", out / f"rm_{n}.json"
    if meta_path.exists():
        return RewardModel.load(folder, device="cpu"), json.loads(meta_path.read_text())
    comps = comparisons_of(labels, n)
    oracle = SyntheticOracle(gold, rng=np.random.default_rng(0), agreement=args.agreement, flip_prob=args.flip_prob)
    label_agreement, label_pairs = oracle.agreement_of(comps)
    t0 = time.perf_counter()
    rm = RewardModel.from_pretrained(args.sft, device="cpu", head_seed=args.seed)
    # the schedule the study's results were measured with (RewardTrainerConfig's defaults until 2026-12-04)
    config = RewardTrainerConfig(epochs=2, batch_size=16, lr_schedule="constant", heldout_fraction=0.0)
    trainer = RewardTrainer(config, logger=None, rng=np.random.default_rng(args.seed + 2))
    metrics = trainer.fit(rm, comps)
    rm.normalize([d.prompt for d in task.demonstrations], [d.completion for d in task.demonstrations])
    meta = {"labels": n, "label_agreement": label_agreement, "label_pairs": label_pairs,
            "train_seconds": time.perf_counter() - t0, "train_metrics": {k: float(v) for k, v in metrics.items()}}
    rm.save(folder)
    meta_path.write_text(json.dumps(meta, indent=1))
    return rm, meta


# ---------------------------------------------------------------------------------- best-of-N


def best_of_n_ns(k: int) -> list[int]:
    """N = 1 and about two values per octave up to K: round(2^(j/2))."""
    return sorted({min(k, round(2 ** (j / 2))) for j in range(int(2 * math.log2(k)) + 1)} | {k})


def bon_scores(policy: Policy, task, rms: dict[int, RewardModel], args: argparse.Namespace, out: Path,
               gold: GoldScorer) -> dict[str, Any]:
    path = out / "bon_scores.npz"
    if path.exists():
        z = np.load(path, allow_pickle=False)
        return {"gold": z["gold"], "proxy": {int(k[6:]): z[k] for k in z.files if k.startswith("proxy_")},
                "distinct": float(z["distinct"]), "sample_seconds": float(z["sample_seconds"]),
                "score_seconds": float(z["score_seconds"])}
    p_count, k = args.bon_prompts, args.bon_candidates
    prompts = task.eval_prompts[:p_count]
    flat = [p for _ in range(k) for p in prompts]  # candidate column j = flat[j * P : (j + 1) * P]
    t0 = time.perf_counter()
    cands = sample_many(policy, flat, SamplingConfig(max_new_tokens=args.max_new_tokens), seed=args.seed * 7919 + 17)
    t_sample = time.perf_counter() - t0
    t0 = time.perf_counter()
    g = gold(flat, cands).reshape(k, p_count).T  # (P, K)
    proxy = {n: rm.score(flat, cands, batch_size=SAMPLE_BATCH).reshape(k, p_count).T for n, rm in rms.items()}
    t_score = time.perf_counter() - t0
    by_prompt = np.array(cands, dtype=object).reshape(k, p_count).T
    distinct = float(np.mean([len(set(row)) for row in by_prompt]))
    np.savez(path, gold=g, distinct=distinct, sample_seconds=t_sample, score_seconds=t_score,
             **{f"proxy_{n}": v for n, v in proxy.items()})
    return {"gold": g, "proxy": proxy, "distinct": distinct, "sample_seconds": t_sample, "score_seconds": t_score}


def bon_expectation(select_by: np.ndarray, values: np.ndarray, n: int) -> float:
    """Mean over prompts of E[values of the best-by-`select_by` of N candidates drawn without replacement from K].

    Sorted ascending by `select_by`, the i-th (1-based) is the best of a uniformly random N-subset with probability
    C(i-1, N-1) / C(K, N) (zero for i < N); the weights sum to 1 (the hockey-stick identity).
    """
    k = select_by.shape[1]
    order = np.argsort(select_by, axis=1, kind="stable")
    v = np.take_along_axis(values, order, axis=1)
    lc = lambda a, b: math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)  # log C(a, b)
    w = np.array([math.exp(lc(i - 1, n - 1) - lc(k, n)) if i >= n else 0.0 for i in range(1, k + 1)])
    assert abs(w.sum() - 1) < 1e-9, w.sum()
    return float((v @ w).mean())


def pair_agreement(scores: np.ndarray, g: np.ndarray) -> tuple[float, int]:
    """How often `scores` orders the pairs (candidate j, candidate j + K/2) of each prompt as the gold does."""
    half = g.shape[1] // 2
    gd = g[:, :half] - g[:, half : 2 * half]
    sd = scores[:, :half] - scores[:, half : 2 * half]
    keep = np.abs(gd) > GOLD_TIE
    return float(np.mean(np.sign(sd[keep]) == np.sign(gd[keep]))), int(keep.sum())


# ---------------------------------------------------------------------------------- RL


def run_rl(labels: int, algo: str, beta: float, rm: RewardModel, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    name = run_name(labels, algo, beta)
    path = out / "rl" / f"{name}.json"
    if path.exists():
        data = json.loads(path.read_text())
        if data.get("done"):
            return data
    path.parent.mkdir(parents=True, exist_ok=True)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens)
    common: dict[str, Any] = {"sampling": sampling, "minibatch_size": 16, "kl_coef": beta, "log_samples_every": 0}
    if algo == "ppo":  # as experiments/algorithms/config.toml
        config, cls, group = PPOConfig(**common), PPO, 1
    elif algo == "rloo":
        config, cls, group = RLOOConfig(**common, group_size=4, n_epochs=4), RLOO, 4
    else:
        config, cls, group = GRPOConfig(**common, group_size=4, n_epochs=4), GRPO, 4
    seed = args.seed * 100 + 11
    torch.manual_seed(seed)
    policy = Policy.from_pretrained(args.sft, device="cpu")
    env = gymnasium.make_vec("llm_gym/ReviewSentiment-v0", num_envs=args.num_envs, reward_fn=rm, group_size=group)
    agent = cls(policy, env, config, rng=np.random.default_rng(seed), logger=Logger(None))
    trace: list[dict[str, float]] = []
    fired: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    stop = ""
    for it in range(1, args.iterations + 1):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            stats = agent.train_iteration()
        trace.append({"iteration": it, "kl": stats["objective/kl"], "proxy": stats["objective/rm_score"],
                      "gold": stats["objective/gold"], "entropy": stats["objective/entropy"],
                      "tokens": stats["rollout/completion_tokens"], "seconds": time.perf_counter() - t0})
        for w in caught:
            kind = w.category.__name__
            if issubclass(w.category, (OverOptimizationWarning, KLWarning)):
                fired.append({"iteration": it, "kind": kind, "message": str(w.message)})
                print(f"  [{name}] iteration {it}: {kind}: {str(w.message)[:110]}...", flush=True)
            elif kind not in {f["kind"] for f in fired}:
                fired.append({"iteration": it, "kind": kind, "message": str(w.message)[:300]})
        if it % 10 == 0:
            recent = trace[-args.block:]
            print(f"  [{name}] it {it:4d}  KL {np.mean([r['kl'] for r in recent]):7.2f}  proxy "
                  f"{np.mean([r['proxy'] for r in recent]):+.3f}  gold {np.mean([r['gold'] for r in recent]):+.3f}  "
                  f"{time.perf_counter() - t0:6.0f}s", flush=True)
        if len(trace) >= args.block and np.mean([r["kl"] for r in trace[-args.block:]]) > args.max_kl:
            stop = f"block-mean KL above --max-kl={args.max_kl} at iteration {it}"
            break
    env.close()
    data = {"name": name, "labels": labels, "algorithm": algo, "kl_coef": beta, "num_envs": args.num_envs,
            "config": config.to_dict(), "trace": trace, "warnings": fired, "stopped_early": stop,
            "wall_seconds": time.perf_counter() - t0, "done": True,
            "monitor": {"window": config.overopt_window, "patience": config.overopt_patience}}
    path.write_text(json.dumps(data))
    return data


# ---------------------------------------------------------------------------------- fitting and verdicts


def fit_form(d: np.ndarray, r: np.ndarray, form: str) -> dict[str, Any]:
    """Least squares of R(d) = d (alpha - beta d) ("bon") or d (alpha - beta log d) ("rl"); R^2, RMSE and the peak."""
    d, r = np.asarray(d, float), np.asarray(r, float)
    keep = d > 0
    d, r = d[keep], r[keep]
    second = d * d if form == "bon" else d * np.log(d)
    x = np.stack([d, -second], axis=1)
    (alpha, beta), *_ = np.linalg.lstsq(x, r, rcond=None)
    pred = x @ np.array([alpha, beta])
    ss_res = float(np.sum((r - pred) ** 2))
    ss_tot = float(np.sum((r - r.mean()) ** 2))
    fit = {"form": "d (alpha - beta d)" if form == "bon" else "d (alpha - beta log d)", "alpha": float(alpha),
           "beta": float(beta), "r2": 1 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
           "rmse": math.sqrt(ss_res / len(r)), "points": len(r), "d_max_observed": float(d.max())}
    d_peak = None
    if beta > 0:  # a maximum (R'' < 0); it lies at d > 0 unless a best-of-N curve starts downhill (alpha <= 0)
        d_peak = alpha / (2 * beta) if form == "bon" else math.exp(min(alpha / beta - 1, 50.0))
        d_peak = d_peak if d_peak > 0 else None
    fit["d_peak"] = None if d_peak is None else float(d_peak)
    fit["kl_peak"] = None if d_peak is None else float(d_peak) ** 2
    fit["gain_at_peak"] = None if d_peak is None else float(gao_curve(np.array([d_peak]), fit)[0])
    fit["peak_in_range"] = bool(d_peak is not None and d_peak <= d.max())
    return fit


def gao_curve(d: np.ndarray, fit: dict[str, Any]) -> np.ndarray:
    d = np.asarray(d, float)
    if fit["form"].endswith("beta d)"):
        return d * (fit["alpha"] - fit["beta"] * d)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(d > 0, d * (fit["alpha"] - fit["beta"] * np.log(np.where(d > 0, d, 1.0))), 0.0)


def blocks(trace: list[dict[str, float]], size: int) -> dict[str, list[float]]:
    """Non-overlapping means of `size` iterations (the last, shorter block dropped): KL, d, proxy, gold, their SEs."""
    n = len(trace) // size
    res: dict[str, list[float]] = {k: [] for k in ("iteration", "kl", "d", "proxy", "gold", "gold_se", "proxy_se")}
    for b in range(n):
        part = trace[b * size : (b + 1) * size]
        kl = float(np.mean([r["kl"] for r in part]))
        g, pr = np.array([r["gold"] for r in part]), np.array([r["proxy"] for r in part])
        res["iteration"].append(float(np.mean([r["iteration"] for r in part])))
        res["kl"].append(kl)
        res["d"].append(math.sqrt(max(kl, 0.0)))
        res["gold"].append(float(g.mean()))
        res["proxy"].append(float(pr.mean()))
        res["gold_se"].append(float(g.std(ddof=1) / math.sqrt(len(g))) if len(g) > 1 else 0.0)
        res["proxy_se"].append(float(pr.std(ddof=1) / math.sqrt(len(pr))) if len(pr) > 1 else 0.0)
    return res


def trailing_kl(trace: list[dict[str, float]], iteration: int, window: int) -> float:
    part = [r["kl"] for r in trace if iteration - window < r["iteration"] <= iteration]
    return float(np.mean(part))


def warning_verdict(run: dict[str, Any], blk: dict[str, list[float]], fit: dict[str, Any], gold0: float,
                    stretch: int = 4) -> dict[str, Any]:
    """When did the first OverOptimizationWarning fire, relative to the gold peak?

    Over-optimisation is *present* when the gold score of the run's last `stretch` blocks is clearly (2 standard
    errors) below that of its best stretch of `stretch` consecutive blocks (stretches, not single blocks, so that
    the maximum of many noisy blocks does not pass for a peak). The curve g(d) the timing is read on is the fitted
    Gao curve when its peak lies inside the observed range and R^2 >= 0.5, else the stretch means (interpolated in
    d). With d* its peak and G* = g(d*) the gain there: *too early*: fired before the peak while less than 90% of G*
    was reached; *on time*: fired with at least 90% of G* reached before the peak or at least 75% of G* kept after
    it; *late*: fired after the peak with more than a quarter of G* lost. Never firing when present is *missed*;
    firing when absent is a *false alarm*.
    """
    gold, se, d = np.array(blk["gold"]), np.array(blk["gold_se"]), np.array(blk["d"])
    k = max(1, min(stretch, len(gold) // 2))
    starts = range(len(gold) - k + 1)
    sm = np.array([gold[i : i + k].mean() for i in starts])
    sm_se = np.array([math.sqrt(float(np.sum(se[i : i + k] ** 2))) / k for i in starts])
    sm_d = np.array([d[i : i + k].mean() for i in starts])
    sm_kl = np.array([np.mean(blk["kl"][i : i + k]) for i in starts])
    best = int(np.argmax(sm))
    decline = float(sm[best] - sm[-1])
    present = best < len(sm) - 1 and decline > 2 * math.hypot(sm_se[best], sm_se[-1])
    use_fit = bool(fit["peak_in_range"] and fit["r2"] >= 0.5)
    if use_fit:
        d_star = fit["d_peak"]
        curve = lambda x: float(gao_curve(np.array([x]), fit)[0])
    else:
        d_star = float(sm_d[best])
        order = np.argsort(sm_d)
        curve = lambda x: float(np.interp(x, sm_d[order], sm[order] - gold0))
    g_star = curve(d_star)
    first = next((w for w in run["warnings"] if w["kind"] == "OverOptimizationWarning"), None)
    out: dict[str, Any] = {"present": bool(present), "basis": "fit" if use_fit else "blocks", "d_peak": d_star,
                           "kl_peak": d_star ** 2, "gain_at_peak": g_star, "stretch_blocks": k,
                           "best_stretch_iterations": [blk["iteration"][best], blk["iteration"][best + k - 1]],
                           "best_stretch_gain": float(sm[best] - gold0), "best_stretch_kl": float(sm_kl[best]), "final_stretch_gain": float(sm[-1] - gold0),
                           "decline": decline, "decline_se": math.hypot(sm_se[best], sm_se[-1]),
                           "fired": first is not None,
                           "fires": [w["iteration"] for w in run["warnings"] if w["kind"] == "OverOptimizationWarning"]}
    if first is None:
        out["verdict"] = "missed (never fired)" if present else "silent (no clear gold decline: correct)"
        return out
    it = first["iteration"]
    kl_w = trailing_kl(run["trace"], it, run["monitor"]["window"])
    d_w = math.sqrt(max(kl_w, 0.0))
    g_w = curve(d_w)
    share = g_w / g_star if g_star > 0 else float("nan")
    out.update({"iteration": it, "kl_at_fire": kl_w, "d_at_fire": d_w, "gain_at_fire": g_w, "share_of_peak_gain": share,
                "gold_at_fire_trailing": float(np.mean([r["gold"] for r in run["trace"] if it - 5 < r["iteration"] <= it]))})
    if not present:
        out["verdict"] = "false alarm (no clear gold decline in the run)"
    elif d_w < d_star:
        out["verdict"] = "on time" if share >= 0.9 else "too early"
    else:
        out["verdict"] = "on time" if share >= 0.75 else "late"
    if present and not use_fit:  # no Gao curve to read the peak on: the best stretch may be a second, later hump
        out["verdict"] += f" (peak ill-defined: fit R^2 {fit['r2']:.2f})"
    return out


def replay_monitor(trace: list[dict[str, float]], window: int, patience: int) -> list[int]:
    """The iterations at which a fresh `HealthMonitor(window=, patience=)` warns on this run's recorded figures."""
    mon = HealthMonitor(kl_explosion=math.inf, window=window, patience=patience)
    fires = []
    for r in trace:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mon.check(int(r["iteration"]), np.array([r["kl"], r["kl"]]), r["proxy"], r["gold"])
        if any(issubclass(w.category, OverOptimizationWarning) for w in caught):
            fires.append(int(r["iteration"]))
    return fires


# ---------------------------------------------------------------------------------- report


def report(args: argparse.Namespace, labels: dict[str, Any], rm_meta: dict[int, dict], bon: dict[str, Any],
           rl_runs: list[dict[str, Any]], timings: dict[str, float]) -> dict[str, Any]:
    sizes = sorted(rm_meta)
    g = bon["gold"]
    ns = best_of_n_ns(g.shape[1])
    kl = [best_of_n_kl(n) for n in ns]
    d = np.sqrt(kl)
    gold0_eval = float(g.mean())
    res_bon: dict[str, Any] = {"prompts": int(g.shape[0]), "candidates": int(g.shape[1]), "n": ns, "kl": kl,
                               "d": d.tolist(), "sft_gold": gold0_eval, "distinct_candidates_per_prompt": bon["distinct"],
                               "by_rm": {}}
    for n_lab in sizes:
        pr = bon["proxy"][n_lab]
        gold_curve = [bon_expectation(pr, g, n) for n in ns]
        proxy_curve = [bon_expectation(pr, pr, n) for n in ns]
        fit = fit_form(d, np.array(gold_curve) - gold0_eval, "bon")
        best = int(np.argmax(gold_curve))
        res_bon["by_rm"][str(n_lab)] = {
            "gold": gold_curve, "proxy": proxy_curve, "proxy_sft": float(pr.mean()), "fit": fit,
            "empirical_peak": {"n": ns[best], "kl": kl[best], "d": float(d[best]), "gold": gold_curve[best],
                               "gain": gold_curve[best] - gold0_eval},
            "gold_at_max_n": gold_curve[-1]}
    res_bon["by_gold"] = {"gold": [bon_expectation(g, g, n) for n in ns]}

    gold0_train = labels["sft_gold_train"]
    res_rl: dict[str, Any] = {}
    for run in rl_runs:
        blk = blocks(run["trace"], args.block)
        fit = fit_form(np.array(blk["d"]), np.array(blk["gold"]) - gold0_train, "rl")
        proxy0 = rm_meta[run["labels"]]["proxy_sft_train"]
        verdict = warning_verdict(run, blk, fit, gold0_train)
        replays = {f"window{w}_patience{p}": replay_monitor(run["trace"], w, p) for w, p in ((5, 3), (10, 5), (3, 2))}
        res_rl[run["name"]] = {
            "algorithm": run["algorithm"], "labels": run["labels"], "kl_coef": run["kl_coef"],
            "iterations": len(run["trace"]), "num_envs": run["num_envs"], "wall_seconds": run["wall_seconds"],
            "stopped_early": run["stopped_early"], "blocks": blk, "proxy_sft": proxy0, "fit": fit,
            "final": {k: float(np.mean(blk[k][-verdict["stretch_blocks"]:])) for k in ("kl", "gold", "proxy")},
            "warning": verdict, "other_warnings": [w for w in run["warnings"] if w["kind"] != "OverOptimizationWarning"],
            "monitor_replay": replays}
    return {
        "study": "Gao et al. 2022 reward-model over-optimisation, in miniature (issue 19)",
        "seed": args.seed, "sft": args.sft,
        "settings": {k: getattr(args, k) for k in ("labels", "agreement", "flip_prob", "max_new_tokens", "bon_prompts",
                                                   "bon_candidates", "rl", "iterations", "num_envs", "max_kl", "block",
                                                   "threads")},
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine()},
        "labeller": {"agreement_target": args.agreement, "flip_prob": args.flip_prob, "temperature": labels["temperature"],
                     "expected_agreement": labels["expected_agreement"], "sft_gold_train": gold0_train,
                     "sft_gold_train_sem": labels["sft_gold_train_sem"]},
        "reward_models": {str(n): rm_meta[n] for n in sizes},
        "best_of_n": res_bon,
        "rl": res_rl,
        "timings_seconds": timings,
    }


def plot(results: dict[str, Any], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    bon = results["best_of_n"]
    sizes = sorted(bon["by_rm"], key=int)
    colours = {s: c for s, c in zip(sizes, ("tab:red", "tab:orange", "tab:green", "tab:blue", "tab:purple"))}
    d = np.array(bon["d"])
    dd = np.linspace(0, d.max() * 1.02, 200)

    # 1. best-of-N: gold (with fits) and proxy, per RM size
    fig, (ax_g, ax_p) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax_g.plot(d, np.array(bon["by_gold"]["gold"]) - bon["sft_gold"], color="grey", ls="--", lw=1,
              label="selected by gold (no proxy)")
    for s in sizes:
        r = bon["by_rm"][s]
        ax_g.plot(d, np.array(r["gold"]) - bon["sft_gold"], "o", ms=3.5, color=colours[s],
                  label=f"RM {int(s):,} labels (agree {results['reward_models'][s]['heldout_gold_agreement']:.3f})")
        ax_g.plot(dd, gao_curve(dd, r["fit"]), color=colours[s], lw=1.2)
        if r["fit"]["peak_in_range"]:
            ax_g.axvline(r["fit"]["d_peak"], color=colours[s], ls=":", lw=0.8)
        ax_p.plot(d, np.array(r["proxy"]) - r["proxy_sft"], "-o", ms=3, color=colours[s], label=f"RM {int(s):,} labels")
    ax_g.axhline(0, color="black", lw=0.5)
    ax_g.set_ylim(min(-0.05, ax_g.get_ylim()[0]), None)
    ax_g.set_xlabel("d = sqrt(KL to SFT), KL = log N - (N-1)/N")
    ax_g.set_ylabel("gold score - SFT's")
    ax_g.set_title("Best-of-N: gold (points) and fit d(alpha - beta d)")
    ax_g.legend(fontsize=7)
    ax_p.set_xlabel("d = sqrt(KL to SFT)")
    ax_p.set_ylabel("proxy RM score - SFT's (RM units)")
    ax_p.set_title("Best-of-N: proxy score")
    ax_p.legend(fontsize=7)
    top = ax_p.secondary_xaxis("top", functions=(lambda x: x, lambda x: x))
    ticks = [n for n in (1, 4, 16, 64, 256) if n <= bon["candidates"]]
    top.set_xticks([math.sqrt(best_of_n_kl(n)) for n in ticks], [f"N={n}" for n in ticks], fontsize=7)
    fig.tight_layout()
    written.append(folder / "best_of_n.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    # 2. RL: one panel per run, gold (block means + fit) and proxy on a twin axis, warnings marked
    runs = results["rl"]
    if runs:
        names = sorted(runs, key=lambda k: (runs[k]["labels"], runs[k]["algorithm"], runs[k]["kl_coef"]))
        cols = min(3, len(names))
        rows = math.ceil(len(names) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
        g0 = results["labeller"]["sft_gold_train"]
        for ax, name in zip(axes.flat, names):
            r = runs[name]
            b = r["blocks"]
            dr = np.array(b["d"])
            ax.errorbar(dr, np.array(b["gold"]) - g0, yerr=2 * np.array(b["gold_se"]), fmt="none", ecolor="lightgrey",
                        elinewidth=0.6)
            points = ax.scatter(dr, np.array(b["gold"]) - g0, c=b["iteration"], cmap="viridis", s=14, zorder=3,
                                label="gold - SFT (colour: iteration)")
            fig.colorbar(points, ax=ax, pad=0.12).ax.tick_params(labelsize=6)
            grid = np.linspace(1e-3, dr.max() * 1.02, 200)
            ax.plot(grid, gao_curve(grid, r["fit"]), color="tab:blue", lw=1.2,
                    label=f"fit a={r['fit']['alpha']:.3f} b={r['fit']['beta']:.3f} R2={r['fit']['r2']:.2f}")
            ax2 = ax.twinx()
            ax2.plot([0.0, *dr], [0.0, *(np.array(b["proxy"]) - r["proxy_sft"])], color="tab:red", lw=0.8, alpha=0.7,
                     label="proxy - SFT (right)")
            ax2.tick_params(axis="y", labelcolor="tab:red", labelsize=7)
            w = r["warning"]
            if w.get("fired"):
                ax.axvline(w["d_at_fire"], color="black", ls="--", lw=0.9, label=f"warning ({w['verdict']})")
            ax.axvline(w["d_peak"], color="tab:blue", ls=":", lw=0.9,
                       label="gold peak (" + ("fit" if w["basis"] == "fit" else "best block") + ")")
            ax.axhline(0, color="black", lw=0.4)
            ax.set_title(f"{r['algorithm'].upper()} beta={r['kl_coef']:g}, RM {r['labels']:,} labels", fontsize=9)
            ax.set_xlabel("d = sqrt(KL to SFT)", fontsize=8)
            ax.set_ylabel("gold - SFT", fontsize=8)
            h1, l1 = ax.get_legend_handles_labels()
            h2, l2 = ax2.get_legend_handles_labels()
            ax.legend(h1 + h2, l1 + l2, fontsize=6, loc="lower left")
        for ax in list(axes.flat)[len(names):]:
            ax.axis("off")
        fig.tight_layout()
        written.append(folder / "rl.png")
        fig.savefig(written[-1], dpi=90)
        plt.close(fig)

    # 3. how the peak moves with RM size: best-of-N fits and the RL runs sharing an algorithm and beta across sizes
    shared: dict[tuple[str, float], list[str]] = {}
    for name, r in runs.items():
        shared.setdefault((r["algorithm"], r["kl_coef"]), []).append(name)
    keys = sorted(k for k in shared if len(shared[k]) > 1)
    fig, axes = plt.subplots(1, 1 + len(keys), figsize=(5.5 * (1 + len(keys)), 4.2), squeeze=False)
    ax_b = axes[0, 0]
    for s in sizes:
        r = bon["by_rm"][s]
        grid = np.linspace(0, min(max(d.max(), (r["fit"]["d_peak"] or 0)) * 1.05, 2.5 * d.max()), 200)
        ax_b.plot(grid, gao_curve(grid, r["fit"]), color=colours[s], label=f"RM {int(s):,} labels")
        ax_b.plot(d, np.array(r["gold"]) - bon["sft_gold"], "o", ms=3, color=colours[s])
        if r["fit"]["d_peak"] is not None:
            ax_b.plot([r["fit"]["d_peak"]], [r["fit"]["gain_at_peak"]], "*", ms=12, color=colours[s],
                      mfc=colours[s] if r["fit"]["peak_in_range"] else "none")
    ax_b.axvline(d.max(), color="grey", lw=0.6, ls="--")
    ax_b.set_title("Best-of-N fits; star = fitted peak, hollow beyond N = K (dashed)", fontsize=9)
    ax_b.set_xlabel("d = sqrt(KL)")
    ax_b.set_ylabel("gold - SFT")
    ax_b.legend(fontsize=7)
    g0 = results["labeller"]["sft_gold_train"]
    for ax_r, key in zip(axes[0, 1:], keys):
        for name in sorted(shared[key], key=lambda k: runs[k]["labels"]):
            r = runs[name]
            colour = colours.get(str(r["labels"]), "black")
            b = r["blocks"]
            grid = np.linspace(1e-3, max(b["d"]) * 1.02, 200)
            ax_r.plot(b["d"], np.array(b["gold"]) - g0, "o", ms=3, color=colour)
            ax_r.plot(grid, gao_curve(grid, r["fit"]), color=colour,
                      label=f"RM {r['labels']:,} labels (R2 {r['fit']['r2']:.2f})")
            if r["fit"]["peak_in_range"]:  # hollow: a fit too poor (R^2 < 0.5) to place the peak
                ax_r.plot([r["fit"]["d_peak"]], [r["fit"]["gain_at_peak"]], "*", ms=13, color=colour,
                          mfc=colour if r["fit"]["r2"] >= 0.5 else "none")
        ax_r.set_title(f"{key[0].upper()} beta={key[1]:g}: fits d(alpha - beta log d); star = fitted peak", fontsize=9)
        ax_r.set_xlabel("d = sqrt(KL)")
        ax_r.set_ylabel("gold - SFT")
        ax_r.axhline(0, color="black", lw=0.4)
        ax_r.legend(fontsize=7)
    fig.tight_layout()
    written.append(folder / "peak_vs_rm_size.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
    return written


def print_tables(res: dict[str, Any]) -> None:
    lab = res["labeller"]
    print(f"\nlabeller: target agreement {lab['agreement_target']}, flip {lab['flip_prob']}, temperature "
          f"{lab['temperature']:.4f}; SFT gold on training prompts {lab['sft_gold_train']:+.4f}")
    print(f"{'RM labels':>10}{'labels agree':>14}{'RM held-out agree':>19}{'pairs':>7}{'train s':>9}")
    for s, m in res["reward_models"].items():
        print(f"{int(s):>10,}{m['label_agreement']:>14.3f}{m['heldout_gold_agreement']:>19.3f}{m['heldout_pairs']:>7}"
              f"{m['train_seconds']:>9.1f}")
    bon = res["best_of_n"]
    print(f"\nbest-of-N ({bon['prompts']} held-out prompts x {bon['candidates']} candidates; SFT gold {bon['sft_gold']:+.4f}; "
          f"{bon['distinct_candidates_per_prompt']:.1f} distinct candidates per prompt)")
    print(f"{'RM':>6}{'alpha':>9}{'beta':>9}{'R2':>7}{'RMSE':>8}{'d* fit':>8}{'KL* fit':>9}{'gain* fit':>10}"
          f"{'emp. N':>8}{'emp. d':>8}{'emp. gain':>10}{'gain N=K':>10}")
    for s, r in bon["by_rm"].items():
        f, e = r["fit"], r["empirical_peak"]
        dp = "-" if f["d_peak"] is None else f"{f['d_peak']:.2f}"
        kp = "-" if f["kl_peak"] is None else f"{f['kl_peak']:.1f}"
        gp = "-" if f["gain_at_peak"] is None else f"{f['gain_at_peak']:+.3f}"
        print(f"{int(s):>6}{f['alpha']:>9.4f}{f['beta']:>9.4f}{f['r2']:>7.3f}{f['rmse']:>8.4f}{dp:>8}{kp:>9}{gp:>10}"
              f"{e['n']:>8}{e['d']:>8.2f}{e['gain']:>+10.3f}{r['gold_at_max_n'] - bon['sft_gold']:>+10.3f}")
    print(f"\nRL (training-batch means over blocks; gain = gold - SFT's {lab['sft_gold_train']:+.4f})")
    print(f"{'run':>22}{'iters':>6}{'alpha':>9}{'beta':>9}{'R2':>7}{'RMSE':>8}{'d* fit':>8}{'KL* fit':>8}{'gain*':>8}"
          f"{'emp KL*':>8}{'emp gain':>9}{'final KL':>9}{'fin gain':>9}  warning")
    for name, r in res["rl"].items():
        f, w = r["fit"], r["warning"]
        dp = "-" if not f["peak_in_range"] else f"{f['d_peak']:.2f}"
        kp = "-" if not f["peak_in_range"] else f"{f['kl_peak']:.1f}"
        gp = "-" if not f["peak_in_range"] else f"{f['gain_at_peak']:+.3f}"
        fire = f"it {w['iteration']} KL {w['kl_at_fire']:.1f}: " if w["fired"] else ""
        print(f"{name:>22}{r['iterations']:>6}{f['alpha']:>9.4f}{f['beta']:>9.4f}{f['r2']:>7.3f}{f['rmse']:>8.4f}{dp:>8}"
              f"{kp:>8}{gp:>8}{w['best_stretch_kl']:>8.1f}{w['best_stretch_gain']:>+9.3f}{r['final']['kl']:>9.1f}"
              f"{r['final']['gold'] - lab['sft_gold_train']:>+9.3f}  {fire}{w['verdict']}")


def markdown_tables(res: dict[str, Any]) -> str:
    """The README's tables (reward models, best-of-N fits, RL fits and warning timing) as Markdown."""
    fmt = lambda v, spec: "-" if v is None else format(v, spec)
    lab, bon = res["labeller"], res["best_of_n"]
    lines = ["| RM labels | labels agree with gold | RM held-out agreement with gold (pairs) | train s |", "|---|---|---|---|"]
    for s, m in res["reward_models"].items():
        lines.append(f"| {int(s):,} | {m['label_agreement']:.3f} | {m['heldout_gold_agreement']:.3f} ({m['heldout_pairs']:,}) "
                     f"| {m['train_seconds']:.0f} |")
    lines += ["", (f"Best-of-N, {bon['prompts']} held-out prompts x {bon['candidates']} candidates, SFT gold "
                   f"{bon['sft_gold']:+.3f}; gain = gold - SFT's:"), "",
              ("| RM labels | alpha | beta | R^2 | RMSE | fitted peak d* (KL*) | fitted gain at d* | best measured N (d) "
               f"| its gain | gain at N = {bon['candidates']} |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for s, r in bon["by_rm"].items():
        f, e = r["fit"], r["empirical_peak"]
        peak = "-" if f["d_peak"] is None else f"{f['d_peak']:.2f} ({f['kl_peak']:.1f})" + ("" if f["peak_in_range"] else ", beyond N = K")
        lines.append(f"| {int(s):,} | {f['alpha']:.4f} | {f['beta']:.4f} | {f['r2']:.3f} | {f['rmse']:.4f} | {peak} "
                     f"| {fmt(f['gain_at_peak'], '+.3f')} | {e['n']} ({e['d']:.2f}) | {e['gain']:+.3f} "
                     f"| {r['gold_at_max_n'] - bon['sft_gold']:+.3f} |")
    g = bon["by_gold"]["gold"]
    lines.append(f"| (gold itself) | | | | | | | {bon['n'][int(np.argmax(g))]} | {max(g) - bon['sft_gold']:+.3f} | "
                 f"{g[-1] - bon['sft_gold']:+.3f} |")
    lines += ["", (f"RL, training-batch means over blocks of {res['settings']['block']} iterations; gain = gold - "
                   f"SFT's {lab['sft_gold_train']:+.3f} on the training prompts:"), "",
              ("| run | iterations | wall s | alpha | beta | R^2 | RMSE | fitted peak d* (KL*) | fitted gain at d* "
               "| best stretch: KL (gain) | last stretch: KL (gain) | last stretch: proxy - SFT's |"), "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rl"].values():
        f, w = r["fit"], r["warning"]
        peak = (f"{f['d_peak']:.2f} ({f['kl_peak']:.1f})" if f["peak_in_range"]
                else ("none" if f["d_peak"] is None else f"beyond the run ({f['d_peak']:.3g})"))
        lines.append(f"| {r['algorithm'].upper()} beta {r['kl_coef']:g}, RM {r['labels']:,} | {r['iterations']} "
                     f"| {r['wall_seconds']:.0f} | {f['alpha']:.4f} | {f['beta']:.4f} | {f['r2']:.3f} | {f['rmse']:.4f} "
                     f"| {peak} | {fmt(f['gain_at_peak'] if f['peak_in_range'] else None, '+.3f')} "
                     f"| {w['best_stretch_kl']:.1f} ({w['best_stretch_gain']:+.3f}) "
                     f"| {r['final']['kl']:.1f} ({r['final']['gold'] - lab['sft_gold_train']:+.3f}) "
                     f"| {r['final']['proxy'] - r['proxy_sft']:+.3f} |")
    lines += ["", ("| run | over-optimised? | peak KL (basis) | first warning: iteration, KL | gold - SFT's at the warning "
                   "(last 5 iterations) | share of peak gain at the warning | verdict | replayed (window 10, patience 5) "
                   "| replayed (3, 2) |"), "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rl"].values():
        w, rep = r["warning"], r["monitor_replay"]
        fire = f"{w['iteration']}, {w['kl_at_fire']:.1f}" if w["fired"] else "never"
        share = fmt(w.get("share_of_peak_gain"), ".2f")
        at_fire = fmt(w["gold_at_fire_trailing"] - lab["sft_gold_train"] if w["fired"] else None, "+.3f")
        slow, quick = (str(rep[k][0]) if rep[k] else "never" for k in ("window10_patience5", "window3_patience2"))
        lines.append(f"| {r['algorithm'].upper()} beta {r['kl_coef']:g}, RM {r['labels']:,} | {'yes' if w['present'] else 'no'} "
                     f"| {w['kl_peak']:.1f} ({w['basis']}) | {fire} | {at_fire} | {share} | {w['verdict']} | {slow} | {quick} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    os.chdir(ROOT)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    task = generate_review_task()
    gold = GoldScorer()
    sizes = sorted(int(x) for x in args.labels.split(","))
    timings: dict[str, float] = {}
    cached_report = out / "timings.json"
    if cached_report.exists():
        timings.update(json.loads(cached_report.read_text()))
    if args.report_only and not (out / "labels.json").exists():
        raise SystemExit(f"--report-only: {out} holds no labels yet; run the study first")

    policy = Policy.from_pretrained(args.sft, device="cpu")
    t0 = time.perf_counter()
    labels = make_labels(policy, task, args, gold, out)
    timings.setdefault("labels", time.perf_counter() - t0)
    cached_report.write_text(json.dumps(timings, indent=1))
    print(f"labels: {len(labels['comparisons'])} pairwise comparisons, temperature {labels['temperature']:.4f}, "
          f"SFT gold (train prompts) {labels['sft_gold_train']:+.4f}", flush=True)

    rms: dict[int, RewardModel] = {}
    rm_meta: dict[int, dict] = {}
    for n in sizes:
        t0 = time.perf_counter()
        rms[n], rm_meta[n] = train_rm(n, labels, task, args, out, gold)
        timings.setdefault(f"rm_{n}", time.perf_counter() - t0)
        cached_report.write_text(json.dumps(timings, indent=1))
        print(f"RM {n}: labels agree with gold {rm_meta[n]['label_agreement']:.3f}", flush=True)

    t0 = time.perf_counter()
    bon = bon_scores(policy, task, rms, args, out, gold)
    timings.setdefault("best_of_n", time.perf_counter() - t0)
    cached_report.write_text(json.dumps(timings, indent=1))
    # the proxy RMs' held-out agreement with the gold order, and their score of SFT samples on the training prompts
    train_prompts = [c["prompt"] for c in labels["comparisons"][:2000] for _ in range(2)]
    train_completions = [x for c in labels["comparisons"][:2000] for x in c["completions"]]
    for n in sizes:
        agree, pairs = pair_agreement(bon["proxy"][n], bon["gold"])
        rm_meta[n].update(heldout_gold_agreement=agree, heldout_pairs=pairs)
        if "proxy_sft_train" not in rm_meta[n]:
            rm_meta[n]["proxy_sft_train"] = float(rms[n].score(train_prompts, train_completions, batch_size=SAMPLE_BATCH).mean())
            (out / f"rm_{n}.json").write_text(json.dumps(rm_meta[n], indent=1))
        print(f"RM {n}: held-out agreement with gold {agree:.3f} ({pairs} pairs), SFT proxy score "
              f"{rm_meta[n]['proxy_sft_train']:+.3f}", flush=True)
    gold_agree, _ = pair_agreement(bon["gold"], bon["gold"])
    assert gold_agree == 1.0

    rl_runs = []
    for labels_n, algo, beta in rl_specs(args.rl):
        if labels_n not in rms:
            raise SystemExit(f"--rl asks for an RM of {labels_n} labels; --labels has {sizes}")
        name = run_name(labels_n, algo, beta)
        path = out / "rl" / f"{name}.json"
        if args.report_only:
            if path.exists() and json.loads(path.read_text()).get("done"):
                rl_runs.append(json.loads(path.read_text()))
            continue
        print(f"RL run {name}", flush=True)
        run = run_rl(labels_n, algo, beta, rms[labels_n], args, out)
        timings[f"rl_{name}"] = run["wall_seconds"]
        cached_report.write_text(json.dumps(timings, indent=1))
        rl_runs.append(run)
    cached_report.write_text(json.dumps(timings, indent=1))

    res = report(args, labels, rm_meta, bon, rl_runs, timings)
    results_path = Path(args.results)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(res, indent=1))
    print_tables(res)
    (out / "tables.md").write_text(markdown_tables(res))
    print(f"wrote {out / 'tables.md'}")
    for p in plot(res, Path(args.plots)):
        print(f"wrote {p}")
    print(f"wrote {results_path}")


if __name__ == "__main__":
    main()
