"""The verifiable-task study's table from its run folders (one per seed): accuracy of SFT, PPO, RLOO and GRPO.

For every policy of `experiments/arithmetic/config.toml`: held-out accuracy (greedy, and sampled: the share of
right answers among `evaluation.samples_per_prompt` samples per prompt, which is pass@1), pass@8, KL to SFT and
wall time as mean +- standard deviation over the seeds; and each RL run's *gain* over the SFT policy it started
from (the same seed's), mean +- std over the seeds, with how many seeds gained. Each folder's summary.json is
copied to `experiments/results/arithmetic_seed<seed>.json` with `--keep`.

    python experiments/arithmetic/report.py runs/arithmetic/seed0 runs/arithmetic/seed1 runs/arithmetic/seed2 --keep
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results"
NAMES = {"pretrained": "pretrained", "sft": "SFT", "ppo": "PPO", "rloo": "RLOO", "grpo": "GRPO"}


def load(folders: list[Path]) -> list[dict]:
    summaries = []
    for folder in folders:
        file = folder / "summary.json"
        if not file.is_file():
            raise SystemExit(f"{folder} has no summary.json: run `llm-gym run experiments/arithmetic/config.toml "
                             f"--out {folder}`")
        summaries.append(json.loads(file.read_text()))
    return summaries


def values(summaries: list[dict], row: str, key: str) -> np.ndarray:
    return np.array([s["rows"][row][key] for s in summaries if s["rows"].get(row, {}).get(key) is not None], float)


def gain(summaries: list[dict], row: str, key: str) -> np.ndarray:
    """`row`'s `key` minus the same seed's SFT value, for each seed that has both."""
    pairs = [(s["rows"][row].get(key), s["rows"]["sft"].get(key)) for s in summaries
             if row in s["rows"] and "sft" in s["rows"]]
    return np.array([a - b for a, b in pairs if a is not None and b is not None], float)


def cell(v: np.ndarray, fmt: str) -> str:
    if not len(v):
        return "-"
    spread = v.std(ddof=1) if len(v) > 1 else 0.0
    return f"{v.mean():{fmt}} +- {spread:{fmt.lstrip('+')}}"


def table(summaries: list[dict]) -> str:
    lines = ["| policy | acc greedy | acc sampled | pass@8 | KL to SFT | gain greedy | gain sampled | seeds up | wall s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in summaries[0]["rows"]:
        if row == "reward_model":
            continue
        greedy, sampled = values(summaries, row, "accuracy_greedy"), values(summaries, row, "accuracy_sampled")
        cells = [cell(greedy, ".1%"), cell(sampled, ".1%"), cell(values(summaries, row, "pass@8"), ".1%"),
                 cell(values(summaries, row, "kl"), ".2f")]
        if row in ("pretrained", "sft"):
            cells += ["-", "-", "-"]
        else:  # the gain over the SFT policy of the same seed, which the run started from
            g, s = gain(summaries, row, "accuracy_greedy"), gain(summaries, row, "accuracy_sampled")
            cells += [cell(100 * g, "+.1f") + " pts", cell(100 * s, "+.1f") + " pts", f"{int((s > 0).sum())}/{len(s)}"]
        # the pretrained row's stage is the model build, done once and then reused: no time of its own
        cells.append("-" if row == "pretrained" else cell(values(summaries, row, "wall_seconds"), ".0f"))
        lines.append(f"| {NAMES.get(row, row)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="the run folders (one per seed)")
    parser.add_argument("--keep", action="store_true", help="copy each summary.json to experiments/results/")
    args = parser.parse_args()
    summaries = load(args.folders)
    print(f"seeds: {[s['seed'] for s in summaries]}")
    print(table(summaries))
    if args.keep:
        for folder, summary in zip(args.folders, summaries):
            shutil.copyfile(folder / "summary.json", RESULTS / f"arithmetic_seed{summary['seed']}.json")


if __name__ == "__main__":
    main()
