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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llm_gym.app.config import ExperimentConfig
from llm_gym.core.reward import score_batch
from llm_gym.core.task import Demonstration
from llm_gym.feedback.oracles import HUMAN_AGREEMENT

__all__ = ["COLUMNS", "LOW_RM_AGREEMENT", "build_summary", "demonstrations_gold", "format_summary"]

LOW_RM_AGREEMENT = 0.65
"""Below this share of held-out pairs ordered as the gold judge orders them, the table warns about the reward model.
InstructGPT's reward models agreed with held-out human labels 69.6-72.4% of the time (Ouyang et al. 2022), Stiennon
et al.'s about 75%: near the labellers' own 73% agreement with each other."""

_DEMONSTRATIONS_SCORED = 200
"""How many of the task's demonstrations `demonstrations_gold` scores (the first ones)."""

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
    reference = state.get("evaluation", {}).get("result", {}).get("demonstrations_gold")
    return {"name": config.name, "seed": config.seed, "out": str(out), "rows": rows, "tensorboard": str(out / "tb"),
            **({"demonstrations_gold": reference} if reference is not None else {})}


def demonstrations_gold(gold: Any, demonstrations: Sequence[Demonstration]) -> float | None:
    """The gold judge's mean score of the task's first demonstrations on their own prompts: the top of the table's
    gold scale (what SFT imitates; a right answer on a verifiable task). None without a judge, demonstrations, or
    with chat-message demonstrations (the judge scores text)."""
    demos = [d for d in demonstrations[:_DEMONSTRATIONS_SCORED] if isinstance(d.prompt, str) and isinstance(d.completion, str)]
    if gold is None or not demos:
        return None
    return float(np.mean(score_batch(gold, [d.prompt for d in demos], [d.completion for d in demos])))


def _story(summary: dict[str, Any]) -> list[str]:
    """Lines under the table that say what its numbers mean: the gold scale, why the reward model's two accuracies
    differ, and a warning when the reward model agrees little with the gold judge."""
    rows, lines = summary["rows"], []
    scale = [(name, rows[name]["gold"]) for name in ("pretrained", "sft") if _known(rows.get(name, {}).get("gold"))]
    if _known(summary.get("demonstrations_gold")):
        scale.append(("the task's demonstrations", summary["demonstrations_gold"]))
    if len(scale) > 1:
        lines.append("gold scale: " + ", ".join(f"{name} {value:+.3f}" for name, value in scale)
                     + " (the demonstrations are what SFT imitates)")
    rm = rows.get("reward_model", {})
    agreement, heldout, labels = rm.get("gold_agreement"), rm.get("heldout_accuracy"), rm.get("label_agreement")
    if _known(agreement) and _known(heldout):
        noisy = f", and those labels agree with the gold order on {labels:.1%} of pairs" if _known(labels) else ""
        lines.append(textwrap.fill(
            f"RM~gold {agreement:.1%} is the reward model against the noiseless gold order on held-out pairs; "
            f"TensorBoard's reward_model/heldout_accuracy ({heldout:.1%}) is against the labeller's own held-out "
            f"labels, which are noisy{noisy}: the two differ by that noise.", width=120))
    if _known(agreement) and agreement < LOW_RM_AGREEMENT:
        # labels below human agreement: the labeller is noisier than people (a raw oracle.temperature, say)
        advice = ("; so do labels as reliable as people's, from a labeller calibrated to human agreement "
                  "(oracle.agreement = 0.73, the default when oracle.temperature is unset)"
                  if not _known(labels) or labels < HUMAN_AGREEMENT - 0.02 else "")
        lines.append(textwrap.fill(
            f"warning: the reward model orders only {agreement:.1%} of held-out pairs as the gold judge does "
            f"(InstructGPT's reward models: 69.6-72.4% against held-out human labels); an RL run against it optimises "
            f"a noisy target. More labels (reward_model.queries) or an ensemble (reward_model.members) raise it{advice}.",
            width=120))
    return lines


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
    return "\n".join(lines + _story(summary))
