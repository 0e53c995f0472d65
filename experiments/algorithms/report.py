"""The algorithms study's table and plot from its run folders (one per seed): mean and spread over seeds.

For every run of `experiments/algorithms/config.toml` (PPO, RLOO, GRPO, Dr. GRPO and best-of-N against
the gold scorer and against the reward model, and DPO): gold score, reward-model score, KL to SFT, win
rate against SFT, wall time and peak memory, as mean +- standard deviation over the seeds given; and a
plot of gold score against KL to SFT for all of them (`gold_vs_kl.png` beside this file, or `--plot`).
Each folder's summary.json is copied to `experiments/results/algorithms_seed<seed>.json` with `--keep`.

    python experiments/algorithms/report.py runs/algorithms/seed0 runs/algorithms/seed1 runs/algorithms/seed2 --keep
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results"
FAMILIES = {"ppo": "PPO", "rloo": "RLOO", "grpo": "GRPO", "drgrpo": "Dr. GRPO", "bon4": "best-of-4",
            "bon16": "best-of-16", "bon64": "best-of-64", "dpo": "DPO", "sft": "SFT"}


def load(folders: list[Path]) -> list[dict]:
    summaries = []
    for folder in folders:
        file = folder / "summary.json"
        if not file.is_file():
            raise SystemExit(f"{folder} has no summary.json: run `llm-gym run experiments/algorithms/config.toml --out {folder}`")
        summaries.append(json.loads(file.read_text()))
    return summaries


def stats(summaries: list[dict], row: str, key: str) -> tuple[float, float]:
    values = [s["rows"][row].get(key) for s in summaries if row in s["rows"]]
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def memory(summaries: list[dict], row: str) -> tuple[float, float]:
    """Peak resident memory of the run's own stage; best-of-N trains nothing, so its evaluation's peak."""
    key = "eval_peak_rss_mb" if row.startswith("bon") else "peak_rss_mb"
    return stats(summaries, row, key)


def table(summaries: list[dict]) -> str:
    rows = [r for r in summaries[0]["rows"] if r not in ("pretrained", "reward_model")]
    head = ("| run | reward | gold | RM score | KL to SFT | win vs SFT | wall s | peak MB |\n"
            "|---|---|---|---|---|---|---|---|")
    lines = [head]
    for row in rows:
        family, _, reward = row.partition("_")
        cells = []
        # best-of-N trains nothing: its time is the evaluation's sampling of N completions per prompt
        wall = "eval_seconds" if row.startswith("bon") else "wall_seconds"
        for key, fmt in (("gold", "+.3f"), ("rm_score", "+.3f"), ("kl", ".2f"), ("win_rate", ".1%"), (wall, ".0f")):
            m, s = stats(summaries, row, key)
            cells.append("-" if np.isnan(m) else f"{m:{fmt}} +- {s:{fmt.lstrip('+')}}")
        m, s = memory(summaries, row)
        cells.append("-" if np.isnan(m) else f"{m:.0f} +- {s:.0f}")
        name = FAMILIES.get(family, row)
        lines.append(f"| {name} | {reward or ('labels' if family == 'dpo' else '-')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(summaries: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.2), sharey=True)
    markers = {"ppo": "o", "rloo": "s", "grpo": "^", "drgrpo": "v", "dpo": "D"}
    for ax, reward in zip(axes, ("gold", "rm")):
        sft = stats(summaries, "sft", "gold")[0]
        ax.axhline(sft, color="grey", lw=0.8, ls=":", label="SFT")
        xs, ys = [], []
        for n in (4, 16, 64):
            row = f"bon{n}_{reward}"
            xs.append(stats(summaries, row, "kl")[0])
            ys.append(stats(summaries, row, "gold")[0])
        ax.plot(xs, ys, "k--", marker="x", label="best-of-N (N = 4, 16, 64)")
        for family, marker in markers.items():
            if family == "dpo" and reward == "gold":
                continue  # DPO learns from the labels, not from a reward: it belongs beside the reward-model runs
            row = "dpo" if family == "dpo" else f"{family}_{reward}"
            if row not in summaries[0]["rows"]:
                continue
            kl_m, kl_s = stats(summaries, row, "kl")
            g_m, g_s = stats(summaries, row, "gold")
            ax.errorbar(kl_m, g_m, xerr=kl_s, yerr=g_s, fmt=marker, capsize=3, label=FAMILIES[family])
        ax.set_title("reward: the gold scorer" if reward == "gold" else "reward: the reward model (DPO: the same labels)")
        ax.set_xlabel("KL to SFT (nats per completion)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("gold score (held-out prompts)")
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="center right")
    fig.suptitle(f"Gold score against KL to SFT, mean +- std over {len(summaries)} seeds", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="the run folders (one per seed)")
    parser.add_argument("--plot", type=Path, default=HERE / "gold_vs_kl.png")
    parser.add_argument("--keep", action="store_true", help="copy each summary.json to experiments/results/")
    args = parser.parse_args()
    summaries = load(args.folders)
    print(f"seeds: {[s['seed'] for s in summaries]}")
    print(table(summaries))
    plot(summaries, args.plot)
    print(f"plot: {args.plot}")
    if args.keep:
        for folder, summary in zip(args.folders, summaries):
            shutil.copyfile(folder / "summary.json", RESULTS / f"algorithms_seed{summary['seed']}.json")


if __name__ == "__main__":
    main()
