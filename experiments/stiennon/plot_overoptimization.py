"""Plot RM score and gold score against KL for a PPO run of a pipeline run folder (Stiennon et al. Fig. 5 in miniature).

Reads the run's TensorBoard scalars `objective/rm_score`, `objective/gold` and `objective/kl`
(logged every PPO iteration on the training batch), smooths them over a window of
iterations, prints a table and writes `overoptimization.png` into the run folder.

    python experiments/stiennon/plot_overoptimization.py runs/stiennon_overopt [--run long] [--window 10]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def scalars(log_dir: Path, key: str) -> np.ndarray:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    if key not in acc.Tags()["scalars"]:
        raise SystemExit(f"{log_dir} has no scalar {key!r} (tags: {sorted(acc.Tags()['scalars'])})")
    return np.array([e.value for e in acc.Scalars(key)])


def smooth(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over `window` iterations (shorter at the start)."""
    c = np.cumsum(np.insert(x, 0, 0.0))
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="the folder `llm-gym run` wrote")
    p.add_argument("--run", default="long", help="the PPO run's name in the config (default: long)")
    p.add_argument("--window", type=int, default=10, help="smoothing window in iterations")
    args = p.parse_args()
    log_dir = args.run_dir / "tb" / f"ppo_{args.run}"
    rm, gold, kl = (smooth(scalars(log_dir, f"objective/{k}"), args.window) for k in ("rm_score", "gold", "kl"))
    n = min(len(rm), len(gold), len(kl))
    rm, gold, kl = rm[:n], gold[:n], kl[:n]
    peak = int(np.argmax(gold))
    print(f"{n} PPO iterations of run {args.run!r} (trailing mean over {args.window} iterations)")
    print(f"{'iteration':>10}{'KL':>8}{'RM score':>10}{'gold':>8}")
    for i in sorted({*range(0, n, max(1, n // 10)), peak, n - 1}):
        mark = "  <- gold peaks" if i == peak else ""
        print(f"{i + 1:>10}{kl[i]:>8.2f}{rm[i]:>+10.3f}{gold[i]:>+8.3f}{mark}")
    print(f"RM score {rm[0]:+.3f} -> {rm[-1]:+.3f}; gold {gold[0]:+.3f} -> peak {gold[peak]:+.3f} at KL {kl[peak]:.2f} "
          f"-> {gold[-1]:+.3f} at KL {kl[-1]:.2f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(kl, rm, label="reward model score (proxy)")
    ax.plot(kl, gold, label="gold score (the 'human')")
    ax.axvline(kl[peak], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("KL(policy || SFT), nats per completion")
    ax.set_ylabel("score (training batch, smoothed)")
    ax.set_title(f"Over-optimisation: PPO against a frozen RM ({args.run})")
    ax.legend()
    fig.tight_layout()
    out = args.run_dir / "overoptimization.png"
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
