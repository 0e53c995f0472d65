"""The run's table: one row per policy and per stage, InstructGPT-style, with only the columns the task allows.

`build_summary` turns a pipeline's state into `summary.json`'s content; `format_summary`
prints it. A column appears when at least one row has a value for it: a task without a
gold judge has no gold, win-rate or RM-vs-gold column, one without held-out text no
perplexity column (they are never computed on another task's judge), and only a task whose
gold judge verifies answers has accuracy and pass@k columns (one per k of `evaluation.pass_k`,
the row keys ``pass@1``, ``pass@4``...: see `llm_gym.app.evaluation.PolicyReport.as_dict`).
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

from llm_gym.app.config import ExperimentConfig

__all__ = ["COLUMNS", "build_summary", "format_summary"]

COLUMNS: tuple[tuple[str, str, int, str, str], ...] = (
    # (row key, header, width, format, legend)
    ("gold", "gold", 8, "+.3f", "gold: the task's gold judge"),
    ("accuracy_greedy", "acc greedy", 11, ".1%", "acc greedy: correct answers with greedy decoding"),
    ("accuracy_sampled", "acc sampled", 12, ".1%",
     "acc sampled: correct answers among the samples per prompt (evaluation.samples_per_prompt)"),
    ("pass@k", "pass@k", 8, ".1%", "pass@k: chance that one of k sampled answers is correct (unbiased estimator, Chen et al. 2021)"),
    ("rm_score", "RM", 8, "+.3f", "RM: the trained reward model (demonstrations score 0)"),
    ("kl", "KL to SFT", 11, ".2f", ""),
    ("win_rate", "win vs SFT", 12, ".1%", "win vs SFT: the judge prefers the policy's completion (ties 1/2)"),
    ("perplexity", "perplexity", 12, ".2f", "perplexity: held-out pretraining text"),
    ("labels", "labels", 8, "d", ""),
    ("gold_agreement", "RM~gold", 9, ".3f",
     "RM~gold: how often the reward model orders its held-out comparisons as the gold judge does"),
    ("wall_seconds", "wall s", 8, ".0f", ""),
)
"""The table's columns in order; a legend line explains the less obvious ones. ``pass@k`` stands for one column per
k the rows have (``pass@1``, ``pass@4``...), in increasing k."""


def _columns(rows: dict[str, dict[str, Any]]) -> list[tuple[str, str, int, str, str]]:
    """The columns of `COLUMNS` that some row has a value for, ``pass@k`` expanded to the rows' k (legend once)."""
    columns = []
    for column in COLUMNS:
        key, _, width, fmt, legend = column
        if key == "pass@k":
            ks = sorted({int(k[len("pass@"):]) for row in rows.values() for k, v in row.items()
                         if k.startswith("pass@") and k[len("pass@"):].isdigit() and _known(v)})
            columns += [(f"pass@{k}", f"pass@{k}", width, fmt, legend if i == 0 else "") for i, k in enumerate(ks)]
        elif any(_known(row.get(key)) for row in rows.values()):
            columns.append(column)
    return columns


def build_summary(config: ExperimentConfig, state: dict[str, Any], out: Path) -> dict[str, Any]:
    """Per stage: gold, RM score, KL to SFT, win rate vs SFT, perplexity, labels used, wall time (what is known)."""
    rows: dict[str, dict[str, Any]] = {}
    evaluation = state.get("evaluation", {}).get("result", {}).get("rows", {})
    labels = state.get("reward_model", {}).get("result", {}).get("labels")
    runs = [*(f"ppo.{n}" for n in config.ppo), *(f"agent.{n}" for n in config.agent),
            *(f"preference_loop.{n}" for n in config.preference_loop)]
    for key in ("pretrain", "sft", "reward_model", *runs):
        entry = state.get(key)
        if entry is None:
            continue
        result = entry["result"]
        name = {"pretrain": "pretrained", "sft": "sft"}.get(key, key.split(".", 1)[-1])
        row = {"stage": key, "wall_seconds": result.get("seconds"), "peak_rss_mb": result.get("peak_rss_mb")}
        if key == "reward_model":
            row.update(labels=labels, heldout_accuracy=result.get("heldout_accuracy"),
                       gold_agreement=result.get("gold_agreement"), label_agreement=result.get("label_agreement"),
                       oracle_temperature=result.get("oracle_temperature"))
        else:
            row.update(evaluation.get(name, {}))
            if "labels" in result:  # a preference loop's own labels, or DPO's
                row["labels"] = result["labels"]
            else:  # a run paid (or selecting) by the reward model used its labels
                row["labels"] = labels if key.startswith(("ppo.", "agent.")) and result.get("reward") == "reward_model" else 0
            if result.get("algorithm"):
                row["algorithm"] = result["algorithm"]
        rows[name] = row
    return {"name": config.name, "seed": config.seed, "out": str(out), "rows": rows, "tensorboard": str(out / "tb")}


def _known(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and not math.isfinite(value))


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as an InstructGPT-style table (one row per policy / stage), for printing."""
    rows = summary["rows"]
    columns = _columns(rows)

    def cell(row: dict[str, Any], key: str, fmt: str) -> str:
        v = row.get(key)
        return format(v, fmt) if _known(v) else "-"

    head = f"{'stage':<16}" + "".join(f"{title:>{width}}" for _, title, width, _, _ in columns)
    lines = [f"== {summary['name']} (seed {summary['seed']}) ==", head, "-" * len(head)]
    for name, row in rows.items():
        lines.append(f"{name:<16}" + "".join(f"{cell(row, key, fmt):>{width}}" for key, _, width, fmt, _ in columns))
    legend = [text for key, _, _, _, text in columns if text]
    if legend:
        lines.append(textwrap.fill("; ".join(legend), width=120))
    return "\n".join(lines)
