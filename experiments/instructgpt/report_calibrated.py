"""The PPO bar of issue 19: win rate against SFT, per seed and pooled, with 95% intervals.

The runs are `llm-gym run experiments/instructgpt/config.toml --set oracle.agreement=0.73 --set seed=S --out
runs/instructgpt_calibrated/seedS` (labels from a synthetic labeller calibrated to agree with the gold order on 73% of
pairs). A run's summary.json
holds each policy's win rate against SFT as one number; an interval needs the comparisons themselves, so this script
draws them again, exactly as the evaluation stage did (`llm_gym.app.evaluation.evaluate_policy`: the same held-out
prompts, sampling settings, seeds and batches, the noiseless gold judge), and checks that their mean is the
summary's win rate before using them.

One comparison per held-out prompt: 1 when the policy's completion has the higher gold score, 0 when SFT's has, 1/2
for a tie (equal gold scores; most are identical completions, as both policies sample with the same random numbers).

Intervals (95%):

* per seed: the mean of the 200 comparison scores +- 1.96 standard errors (normal approximation; a Wilson interval
  does not take the half points of ties);
* pooled, the one the bar is judged by: a t interval over the seeds' win rates (S - 1 degrees of freedom). The seed
  is the unit: the comparisons of one seed share one trained policy (and one reward model), so they are not
  independent draws of "the recipe", and 600 comparisons from 3 seeds carry much less information about it than 600
  independent ones. With 3 seeds the t quantile is 4.30, so the interval is wide unless the seeds agree;
* pooled, for reference: the same normal interval on the 600 comparisons taken as independent, which ignores that
  sharing and is too narrow whenever seeds differ by more than sampling noise.

    python experiments/instructgpt/report_calibrated.py                       # runs/instructgpt_calibrated/seed{0,1,2}
    python experiments/instructgpt/report_calibrated.py runs/a runs/b --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

RUNS = [Path(f"runs/instructgpt_calibrated/seed{s}") for s in range(3)]
BAR = 0.60
BATCH_SIZE = 64  # evaluate_policy's default batch: sampling seeds are `seed + batch start`
Z = 1.959963984540054  # the normal 97.5% quantile
T975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 6: 2.4469, 7: 2.3646, 8: 2.3060, 9: 2.2622}
"""Student t 97.5% quantiles by degrees of freedom (scipy is not a dependency)."""


def _folder(run: Path, path: str) -> str:
    p = Path(path)
    return str(p if p.is_absolute() else run / p)


def _completions(policy: Any, prompts: list[str], sampling: Any, seed: int) -> list[str]:
    """What `evaluate_policy` samples: batches of BATCH_SIZE prompts, the batch starting at i with seed `seed + i`."""
    out: list[str] = []
    for i in range(0, len(prompts), BATCH_SIZE):
        out += policy.sample(prompts[i : i + BATCH_SIZE], sampling, seed=seed + i).completions
    return out


def comparisons(run: Path) -> dict[str, Any]:
    """One run's figures: the labeller, the reward model, and per policy its gold, KL and comparison scores."""
    import torch

    from llm_gym.app.config import ExperimentConfig
    from llm_gym.app.pipeline import Pipeline
    from llm_gym.infra.configio import from_dict
    from llm_gym.infra.runfolder import read_json
    from llm_gym.models.policy import Policy

    config = from_dict(ExperimentConfig, read_json(run / "config.json", "the run's config", "rerun the run"))
    if config.threads:
        torch.set_num_threads(config.threads)
    ev = config.evaluation
    if ev.judge_temperature != 0 or ev.judge_flip_prob != 0:
        raise SystemExit(f"{run}: the win-rate judge is noisy (judge_temperature={ev.judge_temperature}, "
                         f"judge_flip_prob={ev.judge_flip_prob}); this script redraws noiseless comparisons only")
    summary = json.loads((run / "summary.json").read_text())
    pipeline = Pipeline(config, run)
    state = pipeline.state
    prompts = (pipeline.eval_prompts or pipeline.prompts)[: ev.prompts]
    gold = pipeline.task.gold
    sft = Policy.from_pretrained(_folder(run, state["sft"]["result"]["path"]))
    with torch.no_grad():
        sft_gold = np.asarray(gold(prompts, _completions(sft, prompts, ev.sampling, ev.seed)))
    rm = state["reward_model"]["result"]
    out: dict[str, Any] = {
        "run": str(run), "seed": config.seed, "prompts": len(prompts),
        "label_agreement": rm.get("label_agreement"), "oracle_temperature": rm.get("oracle_temperature"),
        "labels": rm.get("labels"), "rm_gold_agreement": rm.get("gold_agreement"),
        "rm_seconds": rm.get("seconds"), "sft_seconds": state["sft"]["result"].get("seconds"),
        "sft": {"gold": summary["rows"]["sft"]["gold"], "kl": 0.0}, "policies": {},
    }
    for name in config.ppo:
        key = f"ppo.{name}"
        row = summary["rows"].get(name)
        if key not in state or row is None:
            continue
        policy = Policy.from_pretrained(_folder(run, state[key]["result"]["path"]))
        with torch.no_grad():
            own = np.asarray(gold(prompts, _completions(policy, prompts, ev.sampling, ev.seed)))
        scores = np.where(own > sft_gold, 1.0, np.where(own < sft_gold, 0.0, 0.5))
        if not math.isclose(float(scores.mean()), row["win_rate"], abs_tol=1e-9):
            raise SystemExit(f"{run}: {name}'s redrawn comparisons give {scores.mean():.4f}, the summary "
                             f"{row['win_rate']:.4f}: they are not the evaluation's (code or settings changed since?)")
        out["policies"][name] = {"gold": row["gold"], "kl": row["kl"], "rm_score": row["rm_score"],
                                 "perplexity": row["perplexity"], "win_rate": row["win_rate"],
                                 "ties": float(np.mean(scores == 0.5)), "seconds": state[key]["result"].get("seconds"),
                                 "scores": scores.tolist()}
    return out


def normal_interval(scores: np.ndarray) -> tuple[float, float]:
    half = Z * float(np.std(scores, ddof=1)) / math.sqrt(len(scores))
    return float(scores.mean()) - half, float(scores.mean()) + half


def t_interval(means: np.ndarray) -> tuple[float, float]:
    if len(means) < 2:
        return math.nan, math.nan
    half = T975[len(means) - 1] * float(np.std(means, ddof=1)) / math.sqrt(len(means))
    return float(means.mean()) - half, float(means.mean()) + half


def pooled(runs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    rows = [r["policies"][name] for r in runs if name in r["policies"]]
    means = np.array([r["win_rate"] for r in rows])
    every = np.concatenate([np.asarray(r["scores"]) for r in rows])
    t_lo, t_hi = t_interval(means)
    n_lo, n_hi = normal_interval(every)
    mean = float(means.mean())
    return {"seeds": len(rows), "win_rate": mean, "t_interval": [t_lo, t_hi], "naive_interval": [n_lo, n_hi],
            "gold": float(np.mean([r["gold"] for r in rows])), "kl": float(np.mean([r["kl"] for r in rows])),
            "ties": float(np.mean([r["ties"] for r in rows])),
            "meets_bar": bool(mean >= BAR and t_lo > 0.5)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", type=Path, default=RUNS, help="run folders (default: the three seeds)")
    parser.add_argument("--json", type=Path, help="also write the figures (comparison scores included) here")
    args = parser.parse_args(argv)
    runs = [comparisons(run) for run in args.runs]
    names = sorted({n for r in runs for n in r["policies"]}, key=lambda n: (n != "ppo", n))
    print("| seed | labels agree with gold | labeller T | RM agrees with gold | policy | gold (SFT) | gold | KL to SFT "
          "| ties | win vs SFT [95% interval] |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        for name in names:
            p = r["policies"].get(name)
            if p is None:
                continue
            lo, hi = normal_interval(np.asarray(p["scores"]))
            print(f"| {r['seed']} | {r['label_agreement']:.3f} | {r['oracle_temperature']:.3f} | "
                  f"{r['rm_gold_agreement']:.3f} | {name} | {r['sft']['gold']:+.3f} | {p['gold']:+.3f} | {p['kl']:.2f} | "
                  f"{p['ties']:.1%} | {p['win_rate']:.1%} [{lo:.1%}, {hi:.1%}] |")
    result = {"runs": runs, "pooled": {name: pooled(runs, name) for name in names}}
    print()
    for name, p in result["pooled"].items():
        (t_lo, t_hi), (n_lo, n_hi) = p["t_interval"], p["naive_interval"]
        print(f"{name}: pooled over {p['seeds']} seeds: win {p['win_rate']:.1%}, t interval over seed means "
              f"[{t_lo:.1%}, {t_hi:.1%}] (naive, comparisons as independent: [{n_lo:.1%}, {n_hi:.1%}]); "
              f"gold {p['gold']:+.3f}, KL {p['kl']:.2f}, ties {p['ties']:.1%}; "
              f"bar (>= {BAR:.0%}, t interval above 50%): {'met' if p['meets_bar'] else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
