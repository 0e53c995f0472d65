"""Reward-model quality: llm_gym's RewardTrainer against a plain pairwise recipe, the label-budget curve, K=4 vs
pairwise, and scoring throughput (issue 19's reward-model bar).

Data (per seed)
    Completions (T=1, `max_new_tokens=24`) of the pretrained built-in policy for the task's training prompts,
    sampled in batches of 64 with explicit seeds: `max(--budgets)` pairwise queries (two completions of one
    prompt) and the K=4 queries (the two completions of pairwise query i plus two more). They are labelled by a
    calibrated synthetic labeller, `SyntheticOracle(GoldScorer(), agreement=0.73, flip_prob=0.1)`, through
    `collect` into a `PreferenceStore` (files under `--out`): the oracle chooses the Bradley-Terry temperature at
    which its labels agree with the gold order on 73% of the seed's pairwise queries (human labellers agree with
    each other about 73% of the time: InstructGPT 72.6 +- 1.5%, Stiennon et al. 73 +- 4%). flip_prob 0.1 is the
    pipeline's default (`OracleSpec.flip_prob`): a person also errs on pairs that are not close, which
    Bradley-Terry noise alone never does; the temperature takes the rest of the disagreement (`--flip-prob 0.05`
    is Christiano et al.'s assumption that 10% of answers are uniformly random). The K=4 rankings come from the
    same labeller (the same temperature and flip rate; a K-way answer is replaced by a random permutation with
    probability 2 x flip_prob). Smaller budgets are
    prefixes of the largest set. The measured agreement of the labels actually drawn is printed.

    Test set: `--eval-pairs` pairs of completions of `task.eval_prompts` (prompts never trained on), ordered by
    the noiseless GoldScorer; gold ties left out. A learner's score is its held-out agreement with the gold
    order: the share of test pairs with sign(r_1 - r_2) == sign(gold_1 - gold_2) (1.0 is reachable in
    principle; the labels' own agreement, 0.73, is not a ceiling: a learner averages noise away).

1. The bar (2,000 pairwise comparisons, `--seeds` seeds)
    llm_gym       `RewardModel.from_pretrained(policy)` (InstructGPT: the RM starts from the policy, new scalar
                  head) trained by `RewardTrainer` with its defaults except the learning rate and
                  `heldout_fraction=0`: the bar's validation split is its held-out set, so it trains on exactly the
                  comparisons the plain recipe trains on (its default 10% split, kept for the held-out metrics the
                  pipeline reports, would leave it 200 labels fewer; the curve's 2,000 row is the trainer with every
                  default).
    plain         the recipe users get elsewhere: `AutoModelForSequenceClassification.from_pretrained(policy,
                  num_labels=1)` (GPT-2's `score` head: no bias, transformers' init, std 0.02; the reward read at
                  the last non-pad token, the EOS appended to every text) trained with the plain Bradley-Terry loss
                  -log sigmoid(r_chosen - r_rejected) under TRL's RewardTrainer defaults (RewardConfig over
                  transformers' TrainingArguments): 3 epochs, 8 pairs per step, AdamW (0.9, 0.999, eps 1e-8,
                  weight decay 0), linear decay to 0 without warm-up, gradient norm clipped to 1, dropout off,
                  right padding. Written out here (TRL is not a dependency); fp32 on both sides (TRL's config
                  defaults to bf16, which would only handicap it on this small model).
    reference     a learner with the gold scorer's own structure: a Bradley-Terry logistic model on word counts
                  (the gold score is a squashed sum of per-word lexicon weights plus fluency), fitted by maximum
                  likelihood (L-BFGS) with an L2 penalty.
    Tuning: each side's learning rate (the reference's L2) is chosen on a validation split carved from the
    2,000 training labels (`--val-fraction` 0.2 = 400 comparisons, drawn with the seed): every grid value is
    trained on the other 1,600 and scored on the validation labels (noisy, as a user's would be); the best
    validation accuracy wins (ties: lower validation loss), and the chosen value is retrained on all 2,000. The
    test pairs are never used to choose anything. The printed grid rows (test agreement of the 1,600-label
    fits at each value) show how sensitive each side is to its learning rate; they choose nothing.

2. The label-budget curve: llm_gym's RM with `RewardTrainer`'s defaults (no tuning) on 250 / 500 / 1,000 /
   2,000 / 5,000 pairwise comparisons (`--budgets`), beside the reference learner (L2 fixed at 1e-3).

3. K=4 vs pairwise at equal labelling effort. Effort is counted in pairwise judgements: a K-way ranking costs
   K-1 of them (the fewest answers that fix a ranking when every answer lands right; InstructGPT argues a
   ranking costs a labeller little more than one comparison), so 2,000 pairwise = 667 4-way rankings ('K=4
   (K-1)'); the information-based alternative charges log2(4!) = 4.58 pairwise answers per ranking, 436
   rankings ('K=4 (bits)'). Each ranking is one batch element with its C(4,2)=6 pairs weighted 1/6
   (InstructGPT's loss). Same RM and defaults as the curve.

4. Throughput: 64 held-out (prompt, completion) pairs scored end to end with `rm.score` against a bare forward of
   the same backbone on the same padded batch (medians of interleaved repeats; target ratio <= 1.2).

`--ablation` runs instead the study behind the trainer's defaults (on other seeds, 100-102 by default, so the
defaults are not chosen on the bar's data): llm_gym's trainer and the plain recipe, one setting changed at a time
(learning-rate schedule, epochs, batch size, head initialisation, weight decay, dropout, label smoothing,
pooling, the held-out split and early stopping on it), each over a learning-rate grid; test agreement averaged
over the seeds.

Run (one torch thread throughout the accuracy parts)
    .venv/bin/python experiments/reward_model_quality.py --results experiments/results/reward_model_quality.json
    .venv/bin/python experiments/reward_model_quality.py --ablation --results experiments/results/reward_model_quality_ablation.json
    .venv/bin/python experiments/reward_model_quality.py --smoke --cache-dir /tmp/llmc_smoke   # tiny model, wiring only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from llm_gym import (
    Comparison,
    GoldScorer,
    Policy,
    PreferenceStore,
    Query,
    SamplingConfig,
    SyntheticOracle,
    TinyLMConfig,
    build_builtin_model,
    collect,
    generate_review_task,
)
from llm_gym.feedback.store import store_files
from llm_gym.models.reward_model import RewardModel
from llm_gym.models.reward_trainer import RewardTrainer, RewardTrainerConfig

TARGET_OVERHEAD = 1.20  # rm.score time / bare backbone forward time, batch 64
GOLD_TIE = 1e-6
SAMPLE_BATCH = 64
Scorer = Callable[[Sequence[str], Sequence[str]], np.ndarray]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache-dir", default=None, help="where the built-in model is built/cached (default: llm_gym's default cache)")
    p.add_argument("--smoke", action="store_true", help="TinyLMConfig.smoke() and small budgets (wiring check; not for results)")
    p.add_argument("--out", default="runs/rm_quality", help="output folder (preference stores, results.json)")
    p.add_argument("--results", default=None, help="also write the results JSON here (e.g. experiments/results/reward_model_quality.json)")
    p.add_argument("--seed", type=int, default=0, help="first seed (sampling, labels, RM head, training order)")
    p.add_argument("--seeds", type=int, default=3, help="seeds seed..seed+N-1; mean +- sd over them")
    p.add_argument("--agreement", type=float, default=0.73, help="the labeller's target agreement with the gold order")
    p.add_argument("--flip-prob", type=float, default=0.1,
                   help="the labeller's rate of inverted labels (0.1: the pipeline's default, OracleSpec.flip_prob)")
    p.add_argument("--bar-budget", type=int, default=2000, help="pairwise comparisons of the bar")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of the bar's labels held out to choose learning rates")
    p.add_argument("--lr-grid", default="1e-4,3e-4,1e-3", help="learning rates tried for llm_gym's RewardTrainer")
    p.add_argument("--plain-lr-grid", default="1e-4,3e-4,1e-3", help="learning rates tried for the plain recipe")
    p.add_argument("--l2-grid", default="1e-4,1e-3,1e-2", help="L2 penalties tried for the reference learner")
    p.add_argument("--budgets", default="250,500,1000,2000,5000", help="pairwise budgets of the curve")
    p.add_argument("--k4-budgets", default="500,2000", help="budgets (in pairwise judgements) of the K=4 arm")
    p.add_argument("--eval-pairs", type=int, default=1000, help="held-out test pairs (eval prompts cycled)")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--no-noiseless", dest="noiseless", action="store_false",
                   help="skip the reference row trained on the bar's queries labelled by the gold order itself")
    p.add_argument("--skip-bar", action="store_true")
    p.add_argument("--skip-curve", action="store_true", help="skip the budget curve and the K=4 arm")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--repeats", type=int, default=30, help="timed repeats per side for the throughput measurement")
    p.add_argument("--ablation", action="store_true", help="run the ablation study instead (see the docstring)")
    p.add_argument("--ablation-seeds", default="100,101,102")
    p.add_argument("--ablation-lrs", default="3e-4,1e-3,3e-3", help="learning rates of each ablation variant")
    p.add_argument("--variants", default=None, help="comma-separated ablation variant names (default: all)")
    p.add_argument("--combine", nargs="+", default=None, metavar="RESULTS_JSON",
                   help="print the bar over the seeds of these results files (nothing is trained); --results writes it")
    return p.parse_args()


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


# ---------------------------------------------------------------------------------- data


def sample_round(policy: Policy, prompts: list[str], sampling: SamplingConfig, seed: int) -> list[str]:
    """One completion per prompt, in batches of 64, batch b seeded with seed + b."""
    out: list[str] = []
    for b, start in enumerate(range(0, len(prompts), SAMPLE_BATCH)):
        out.extend(policy.sample(prompts[start : start + SAMPLE_BATCH], sampling, seed=seed + b).completions)
    return out


def round_seed(seed: int, round_id: int) -> int:
    return seed * 1_000_003 + round_id * 10_007


@dataclass
class SeedData:
    pair_queries: list[Query]
    rank_queries: list[Query]
    eval_prompts: list[str]
    e1: list[str]
    e2: list[str]
    gdiff: np.ndarray  # gold(e1) - gold(e2)


def make_data(policy: Policy, task, args: argparse.Namespace, seed: int, n_pair: int, n_rank: int) -> SeedData:
    """Pairwise queries (n_pair), 4-way queries (n_rank) and the test pairs, all sampled with explicit seeds."""
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens)
    train_prompts = task.prompts
    pair_prompts = [train_prompts[i % len(train_prompts)] for i in range(n_pair)]
    a = sample_round(policy, pair_prompts, sampling, round_seed(seed, 0))
    b = sample_round(policy, pair_prompts, sampling, round_seed(seed, 1))
    n_rank = min(n_rank, n_pair)
    c = sample_round(policy, pair_prompts[:n_rank], sampling, round_seed(seed, 2)) if n_rank else []
    d = sample_round(policy, pair_prompts[:n_rank], sampling, round_seed(seed, 3)) if n_rank else []
    pair_queries = [Query(p, (x, y)) for p, x, y in zip(pair_prompts, a, b)]
    rank_queries = [Query(pair_prompts[i], (a[i], b[i], c[i], d[i])) for i in range(n_rank)]
    ev = [task.eval_prompts[i % len(task.eval_prompts)] for i in range(args.eval_pairs)]
    e1 = sample_round(policy, ev, sampling, round_seed(seed, 100))
    e2 = sample_round(policy, ev, sampling, round_seed(seed, 101))
    gold = GoldScorer()
    return SeedData(pair_queries, rank_queries, ev, e1, e2, gold(ev, e1) - gold(ev, e2))


def label(queries: list[Query], store_path: Path, oracle: SyntheticOracle) -> list[Comparison]:
    """Label with `oracle` into a fresh store; the comparisons in query order (one per answer row)."""
    for path in store_files(store_path):  # our own output from an earlier run: start fresh (answers are append-only)
        path.unlink()
    with PreferenceStore(store_path) as store:
        collect(oracle, queries, store)
        return store.comparisons()


def prefix(comparisons: list[Comparison], queries: list[Query], n: int) -> list[Comparison]:
    """The comparisons answering the first n queries (a query posed twice with the same content is one row)."""
    ids = {q.query_id for q in queries[:n]}
    return [c for c in comparisons if c.query_id in ids]


def split(comparisons: list[Comparison], fraction: float, seed: int) -> tuple[list[Comparison], list[Comparison]]:
    """(train, validation): a random `fraction` of the comparisons held out for choosing hyperparameters."""
    order = np.random.default_rng([seed, 7]).permutation(len(comparisons))
    n_val = int(round(fraction * len(comparisons)))
    return [comparisons[i] for i in order[n_val:]], [comparisons[i] for i in order[:n_val]]


# ---------------------------------------------------------------------------------- measures


def gold_agreement(score: Scorer, data: SeedData) -> float:
    """Share of the test pairs (gold ties left out) that `score` orders as the noiseless gold scorer does."""
    s = score(data.eval_prompts, data.e1) - score(data.eval_prompts, data.e2)
    keep = np.abs(data.gdiff) >= GOLD_TIE
    return float(np.mean(np.sign(s[keep]) == np.sign(data.gdiff[keep])))


def label_metrics(score: Scorer, comparisons: list[Comparison]) -> tuple[float, float]:
    """(accuracy, Bradley-Terry loss) of `score` on the labelled (winner, loser) pairs of `comparisons`."""
    prompts = [c.prompt for c in comparisons for _ in c.completions]
    texts = [x for c in comparisons for x in c.completions]
    s = score(prompts, texts)
    diffs, start = [], 0
    for c in comparisons:
        diffs.extend(s[start + w] - s[start + l] for w, l in c.pairs())
        start += len(c.completions)
    d = np.asarray(diffs)
    return float(np.mean(d > 0)), float(np.mean(np.logaddexp(0.0, -d)))


# ---------------------------------------------------------------------------------- learners


def fit_llm_gym(model_path: Path, comparisons: list[Comparison], seed: int, config: RewardTrainerConfig,
                pooling: str = "last", head_std: float | None = None) -> Scorer:
    """llm_gym's reward model: the policy's backbone, a fresh scalar head, `RewardTrainer` with `config`."""
    rm = RewardModel.from_pretrained(model_path, device="cpu", head_seed=seed, pooling=pooling)
    if head_std is not None:  # ablation: another head initialisation (weight std, bias 0)
        with torch.no_grad():
            if head_std == 0:
                rm.net.head.weight.zero_()
            else:
                rm.net.head.weight.normal_(0.0, head_std, generator=torch.Generator().manual_seed(seed))
    RewardTrainer(config, rng=np.random.default_rng(seed)).fit(rm, comparisons)
    return lambda prompts, completions: rm.score(list(prompts), list(completions), batch_size=64)


@dataclass(frozen=True)
class PlainRecipe:
    """TRL RewardTrainer's recipe (RewardConfig's defaults over transformers' TrainingArguments), written out."""

    epochs: int = 3  # TrainingArguments.num_train_epochs
    batch_size: int = 8  # per_device_train_batch_size, in pairs
    lr_schedule: str = "linear"  # lr_scheduler_type="linear", warmup_steps=0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    disable_dropout: bool = True  # RewardConfig.disable_dropout
    head_std: float | None = None  # None: transformers' initialisation of `score` (std initializer_range = 0.02)


def fit_plain(model_path: Path, comparisons: list[Comparison], seed: int, lr: float, recipe: PlainRecipe = PlainRecipe()) -> Scorer:
    """A `*ForSequenceClassification` head (num_labels=1) trained with -log sigmoid(r_chosen - r_rejected)."""
    torch.manual_seed(seed)  # from_pretrained initialises the new `score` head from torch's global generator
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=1)
    tok = AutoTokenizer.from_pretrained(model_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id  # the head reads the last token that is not padding
    if recipe.head_std is not None:
        with torch.no_grad():
            model.score.weight.normal_(0.0, recipe.head_std)
    if recipe.disable_dropout:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0

    def ids_of(prompts: Sequence[str], completions: Sequence[str]) -> list[list[int]]:
        texts = [p + c + tok.eos_token for p, c in zip(prompts, completions)]  # TRL appends the EOS text
        return tok(texts)["input_ids"]

    def forward(seqs: list[list[int]]) -> torch.Tensor:  # right padding, as TRL's collator
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        return model(input_ids=ids, attention_mask=mask, use_cache=False).logits.squeeze(-1)

    pairs = [(c.prompt, c.completions[w], c.completions[l]) for c in comparisons for w, l in c.pairs()]
    chosen = ids_of([p for p, _, _ in pairs], [w for _, w, _ in pairs])
    rejected = ids_of([p for p, _, _ in pairs], [l for _, _, l in pairs])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=recipe.weight_decay)
    total = recipe.epochs * math.ceil(len(pairs) / recipe.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, (lambda step: max(0.0, 1.0 - step / total)) if recipe.lr_schedule == "linear" else (lambda step: 1.0))
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(recipe.epochs):
        order = rng.permutation(len(pairs))
        for start in range(0, len(order), recipe.batch_size):
            idx = order[start : start + recipe.batch_size]
            rewards = forward([chosen[i] for i in idx] + [rejected[i] for i in idx])
            r_chosen, r_rejected = rewards.chunk(2)
            loss = -torch.nn.functional.logsigmoid(r_chosen - r_rejected).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
            opt.step()
            sched.step()
    model.eval()

    @torch.no_grad()
    def score(prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        seqs = ids_of(prompts, completions)
        return np.concatenate([forward(seqs[i : i + 64]).double().numpy() for i in range(0, len(seqs), 64)])

    return score


def fit_word_counts(comparisons: list[Comparison], l2: float = 1e-3) -> Scorer:
    """Reference learner with the gold scorer's own structure: a Bradley-Terry logistic model on word counts.

    The gold score is (mostly) a squashed sum of per-word lexicon weights, so a linear reward on word counts (and
    the length), fitted by maximum likelihood (L-BFGS, L2 penalty `l2`) on the same labels, is close to the best a
    learner can do from them.
    """
    from llm_gym.tasks.review import tokenize

    vocab: dict[str, int] = {}
    for c in comparisons:
        for text in c.completions:
            for t in tokenize(text):
                vocab.setdefault(t, len(vocab))

    def counts(texts: Sequence[str]) -> torch.Tensor:
        m = torch.zeros(len(texts), len(vocab) + 1)
        for i, text in enumerate(texts):
            toks = tokenize(text)
            m[i, -1] = len(toks)
            for t in toks:
                if t in vocab:
                    m[i, vocab[t]] += 1
        return m

    pairs = [(c.completions[w], c.completions[l]) for c in comparisons for w, l in c.pairs()]
    diff = counts([w for w, _ in pairs]) - counts([l for _, l in pairs])
    weights = torch.zeros(diff.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([weights], max_iter=200)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.softplus(-(diff @ weights)).mean() + l2 * weights.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w = weights.detach()
    return lambda prompts, completions: (counts(completions) @ w).double().numpy()


# ---------------------------------------------------------------------------------- tuning


def tune(name: str, values: list[float], fit: Callable[[list[Comparison], float], Scorer], train: list[Comparison],
         val: list[Comparison], full: list[Comparison], data: SeedData,
         refit: Callable[[list[Comparison], float], float] | None = None) -> dict:
    """Fit at each value on `train`, choose by validation accuracy (ties: lower loss), refit the choice on `full`.

    `refit(comparisons, value)` gives the refit's test agreement (default: `fit`, then `gold_agreement`)."""
    grid = []
    for v in values:
        t0 = time.perf_counter()
        score = fit(train, v)
        acc, loss = label_metrics(score, val)
        grid.append({"value": v, "val_accuracy": acc, "val_loss": loss, "test": gold_agreement(score, data),
                     "seconds": time.perf_counter() - t0})
    best = max(grid, key=lambda g: (g["val_accuracy"], -g["val_loss"]))
    t0 = time.perf_counter()
    test = refit(full, best["value"]) if refit is not None else gold_agreement(fit(full, best["value"]), data)
    row = {"learner": name, "chosen": best["value"], "test": test, "seconds": time.perf_counter() - t0, "grid": grid}
    grid_text = "  ".join(f"{g['value']:g}: val {g['val_accuracy']:.3f}/{g['val_loss']:.3f} test {g['test']:.3f}" for g in grid)
    print(f"    {name:<10} chosen {best['value']:g} -> test {test:.3f}   grid ({len(train):,} labels) {grid_text}", flush=True)
    return row


# ---------------------------------------------------------------------------------- study parts


def labellers(args: argparse.Namespace, seed: int, data: SeedData) -> tuple[SyntheticOracle, SyntheticOracle]:
    """The pairwise labeller, calibrated on this seed's pairwise queries, and a K-way one at its temperature."""
    pair = SyntheticOracle(GoldScorer(), rng=np.random.default_rng([seed, 1]), agreement=args.agreement, flip_prob=args.flip_prob)
    pair.calibrate(data.pair_queries)
    assert pair.temperature is not None
    rank = SyntheticOracle(GoldScorer(), rng=np.random.default_rng([seed, 2]), temperature=pair.temperature, flip_prob=args.flip_prob)
    return pair, rank


def run_seed(policy: Policy, model_path: Path, task, args: argparse.Namespace, seed: int, out: Path) -> dict:
    budgets = [int(x) for x in args.budgets.split(",")] if not args.skip_curve else []
    k4 = [int(x) for x in args.k4_budgets.split(",")] if (args.k4_budgets and not args.skip_curve) else []
    n_pair = max(budgets + [args.bar_budget])
    k4_arms = [(f"K=4 ({acct})", b, round(b / cost)) for b in k4 for acct, cost in (("K-1", 3), ("bits", math.log2(24)))]
    n_rank = max([n for _, _, n in k4_arms], default=0)

    t0 = time.perf_counter()
    data = make_data(policy, task, args, seed, n_pair, n_rank)
    t_sample = time.perf_counter() - t0
    seed_dir = out / f"seed{seed}"
    seed_dir.mkdir(parents=True, exist_ok=True)
    pair_oracle, rank_oracle = labellers(args, seed, data)
    t0 = time.perf_counter()
    pair_comps = label(data.pair_queries, seed_dir / "pairwise.sqlite", pair_oracle)
    rank_comps = label(data.rank_queries, seed_dir / "rank4.sqlite", rank_oracle) if n_rank else []
    t_label = time.perf_counter() - t0
    keep = np.abs(data.gdiff) >= GOLD_TIE
    record: dict = {
        "seed": seed, "sample_seconds": t_sample, "label_seconds": t_label,
        "labeller": {"temperature": pair_oracle.temperature, "flip_prob": args.flip_prob,
                     "calibration": dataclasses.asdict(pair_oracle.calibration)},
        "test": {"pairs": len(data.e1), "gold_ties_excluded": int((~keep).sum()), "evaluated": int(keep.sum())},
    }
    print(f"  seed {seed}: sampled in {t_sample:.0f}s, labelled in {t_label:.0f}s; labeller T={pair_oracle.temperature:.4f} "
          f"flip {args.flip_prob} (calibrated on {pair_oracle.calibration.pairs} pairs); "
          f"{int(keep.sum())} test pairs after {int((~keep).sum())} gold ties", flush=True)
    default = RewardTrainerConfig()
    memo: dict = {}

    def gym_test(comps: list[Comparison], config: RewardTrainerConfig) -> float:
        """Test agreement of llm_gym's RM trained on `comps` with `config` (a fit the bar made is not made again)."""
        key = (tuple((c.query_id, c.ranks) for c in comps), config)
        if key not in memo:
            memo[key] = gold_agreement(fit_llm_gym(model_path, comps, seed, config), data)
        return memo[key]

    if not args.skip_bar:
        comps = prefix(pair_comps, data.pair_queries, args.bar_budget)
        train, val = split(comps, args.val_fraction, seed)
        agreement, pairs = pair_oracle.agreement_of(comps)
        print(f"  bar: {len(comps)} comparisons ({len(train)} train / {len(val)} validation), labels agree with gold "
              f"{agreement:.3f} over {pairs} pairs", flush=True)
        bar_config = dataclasses.replace(default, heldout_fraction=0.0)  # the bar's validation split is the held-out set
        bar = {"comparisons": len(comps), "label_agreement": agreement, "label_pairs": pairs, "rows": []}
        bar["rows"].append(tune("llm_gym", floats(args.lr_grid),
                                lambda cs, lr: fit_llm_gym(model_path, cs, seed, dataclasses.replace(bar_config, learning_rate=lr)),
                                train, val, comps, data, lambda cs, lr: gym_test(cs, dataclasses.replace(bar_config, learning_rate=lr))))
        bar["rows"].append(tune("plain", floats(args.plain_lr_grid), lambda cs, lr: fit_plain(model_path, cs, seed, lr),
                                train, val, comps, data))
        bar["rows"].append(tune("reference", floats(args.l2_grid), lambda cs, l2: fit_word_counts(cs, l2), train, val, comps, data))
        if args.noiseless:
            gold_oracle = SyntheticOracle(GoldScorer(), rng=np.random.default_rng(seed), temperature=0.0)
            clean = prefix(label(data.pair_queries[: args.bar_budget], seed_dir / "noiseless.sqlite", gold_oracle),
                           data.pair_queries, args.bar_budget)
            t0 = time.perf_counter()
            test = gold_agreement(fit_llm_gym(model_path, clean, seed, bar_config), data)  # llm_gym's bar row, on clean labels
            bar["rows"].append({"learner": "noiseless", "chosen": bar_config.learning_rate, "test": test,
                                "seconds": time.perf_counter() - t0})
            print(f"    noiseless  llm_gym (as in the bar, lr {bar_config.learning_rate:g}) on the same queries labelled by the gold "
                  f"order -> test {test:.3f}", flush=True)
        record["bar"] = bar

    if budgets or k4_arms:
        curve = []
        for arm, budget, n in [("pairwise", b, b) for b in budgets] + k4_arms:
            source, queries = (pair_comps, data.pair_queries) if arm == "pairwise" else (rank_comps, data.rank_queries)
            comps = prefix(source, queries, n)
            t0 = time.perf_counter()
            test = gym_test(comps, default)
            row = {"arm": arm, "budget": budget, "queries": n, "comparisons": len(comps),
                   "label_agreement": (pair_oracle if arm == "pairwise" else rank_oracle).agreement_of(comps)[0],
                   "test": test, "seconds": time.perf_counter() - t0}
            if arm == "pairwise":
                row["reference"] = gold_agreement(fit_word_counts(comps, 1e-3), data)
            curve.append(row)
            print(f"    {arm:<11} budget {budget:>5} ({n:>5} queries) labels~gold {row['label_agreement']:.3f} "
                  f"-> test {test:.3f}" + (f"  reference {row['reference']:.3f}" if "reference" in row else "")
                  + f"  {row['seconds']:.0f}s", flush=True)
        record["curve"] = curve
    return record


# ---------------------------------------------------------------------------------- ablation

OLD = RewardTrainerConfig(  # llm_gym's defaults before issue 19, written out
    epochs=2, batch_size=16, learning_rate=3e-4, weight_decay=0.0, heldout_fraction=0.1, max_grad_norm=1.0, ties="skip",
    disable_dropout=True, lr_schedule="constant", label_smoothing=0.0, keep_best=False)


def ablation_variants(model_path: Path, seed: int) -> dict[str, Callable[[list[Comparison], float], Scorer]]:
    """name -> fit(comparisons, lr): one setting changed at a time from llm_gym's old defaults and from the plain recipe."""
    std_hf = 0.02
    d = dataclasses.replace

    def gym(config: RewardTrainerConfig, **kw) -> Callable[[list[Comparison], float], Scorer]:
        return lambda cs, lr: fit_llm_gym(model_path, cs, seed, d(config, learning_rate=lr), **kw)

    def plain(recipe: PlainRecipe) -> Callable[[list[Comparison], float], Scorer]:
        return lambda cs, lr: fit_plain(model_path, cs, seed, lr, recipe)

    return {
        "gym old defaults": gym(OLD),
        "gym heldout 0": gym(d(OLD, heldout_fraction=0.0)),
        "gym linear": gym(d(OLD, lr_schedule="linear")),
        "gym 3 epochs": gym(d(OLD, epochs=3)),
        "gym 1 epoch": gym(d(OLD, epochs=1)),
        "gym batch 8": gym(d(OLD, batch_size=8)),
        "gym head std 0.02": gym(OLD, head_std=std_hf),
        "gym head zero": gym(OLD, head_std=0.0),
        "gym weight decay 0.1": gym(d(OLD, weight_decay=0.1)),
        "gym dropout on": gym(d(OLD, disable_dropout=False)),
        "gym label smoothing 0.05": gym(d(OLD, label_smoothing=0.05)),
        "gym mean pooling": gym(OLD, pooling="mean"),
        "gym keep best of 4": gym(d(OLD, epochs=4, keep_best=True)),
        "gym warmup 0.1": gym(d(OLD, warmup_fraction=0.1)),
        "gym warmup 0.1 linear": gym(d(OLD, warmup_fraction=0.1, lr_schedule="linear")),
        "gym linear batch 8": gym(d(OLD, lr_schedule="linear", batch_size=8)),
        "gym linear batch 8 heldout 0": gym(d(OLD, lr_schedule="linear", batch_size=8, heldout_fraction=0.0)),
        "gym plain schedule": gym(d(OLD, heldout_fraction=0.0, lr_schedule="linear", epochs=3, batch_size=8)),
        "gym as plain": gym(d(OLD, heldout_fraction=0.0, lr_schedule="linear", epochs=3, batch_size=8), head_std=std_hf),
        "plain": plain(PlainRecipe()),
        "plain constant": plain(PlainRecipe(lr_schedule="constant")),
        "plain 2 epochs": plain(PlainRecipe(epochs=2)),
        "plain batch 16": plain(PlainRecipe(batch_size=16)),
        "plain head std gym": plain(PlainRecipe(head_std=1 / math.sqrt(128 + 1))),
        "plain as gym old": plain(PlainRecipe(lr_schedule="constant", epochs=2, batch_size=16, head_std=1 / math.sqrt(129))),
    }


def run_ablation(policy: Policy, model_path: Path, task, args: argparse.Namespace, out: Path) -> dict:
    seeds = [int(s) for s in args.ablation_seeds.split(",")]
    lrs = floats(args.ablation_lrs)
    wanted = args.variants.split(",") if args.variants else None
    results: dict[str, dict[str, list[float]]] = {}
    labels = {}
    for seed in seeds:
        data = make_data(policy, task, args, seed, args.bar_budget, 0)
        pair_oracle, _ = labellers(args, seed, data)
        comps = label(data.pair_queries, out / f"ablation_seed{seed}.sqlite", pair_oracle)
        labels[seed] = pair_oracle.agreement_of(comps)[0]
        print(f"  seed {seed}: {len(comps)} comparisons, labels agree with gold {labels[seed]:.3f}", flush=True)
        for name, fit in ablation_variants(model_path, seed).items():
            if wanted and name not in wanted:
                continue
            for lr in lrs:
                t0 = time.perf_counter()
                test = gold_agreement(fit(comps, lr), data)
                results.setdefault(name, {}).setdefault(f"{lr:g}", []).append(test)
                print(f"    {name:<26} lr {lr:<7g} test {test:.3f}  {time.perf_counter() - t0:.0f}s", flush=True)
    print(f"\n{'variant':<28}" + "".join(f"{'lr ' + format(lr, 'g'):>18}" for lr in lrs) + f"{'best':>8}")
    for name, by_lr in results.items():
        means = {k: float(np.mean(v)) for k, v in by_lr.items()}
        print(f"{name:<28}" + "".join(f"{mean_sd(by_lr[f'{lr:g}']):>18}" for lr in lrs) + f"{max(means.values()):>8.3f}")
    return {"seeds": seeds, "lrs": lrs, "label_agreement": labels, "test": results}


# ---------------------------------------------------------------------------------- throughput


def run_throughput(model_path: Path, task, policy: Policy, args: argparse.Namespace, threads: int) -> dict:
    torch.set_num_threads(threads)
    rm = RewardModel.from_pretrained(model_path, head_seed=args.seed).eval()
    prompts = [task.eval_prompts[i % len(task.eval_prompts)] for i in range(64)]
    completions = sample_round(policy, prompts, SamplingConfig(max_new_tokens=args.max_new_tokens), round_seed(args.seed, 200))
    ids, mask = rm.encode(prompts, completions)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    backbone = rm.net.backbone

    def full() -> None:
        rm.score(prompts, completions, batch_size=64)

    def bare() -> None:
        with torch.no_grad():
            backbone(input_ids=ids, attention_mask=mask, position_ids=positions)

    sides = {"rm.score": full, "bare backbone": bare}
    for fn in sides.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(args.repeats):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    return {
        "threads": threads, "batch": 64, "padded_shape": list(ids.shape), "real_tokens": int(mask.sum()),
        "median_s": med, "best_s": best, "pairs_per_s": {k: 64 / v for k, v in med.items()},
        "ratio": med["rm.score"] / med["bare backbone"], "ratio_best": best["rm.score"] / best["bare backbone"],
    }


# ---------------------------------------------------------------------------------- main


def mean_sd(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} +- {np.std(values, ddof=1):.3f}"


def summarize(runs: list[dict], args: argparse.Namespace) -> dict:
    summary: dict = {}
    print()
    if "bar" in runs[0]:
        lab = [r["bar"]["label_agreement"] for r in runs]
        print(f"== the bar: {args.bar_budget:,} pairwise comparisons, {len(runs)} seeds; labels agree with the gold order "
              f"{mean_sd(lab)} (target {args.agreement}, flip_prob {args.flip_prob}) ==")
        head = f"{'learner':<44}{'chosen (per seed)':>26}{'test agreement':>18}   per seed"
        print(head)
        print("-" * (len(head) + 24))
        names = {"llm_gym": "llm_gym RewardTrainer (lr tuned, no 10% split)", "plain": "plain pairwise, TRL recipe (lr tuned)",
                 "reference": "reference: word-count BT (L2 tuned)", "noiseless": "llm_gym, noiseless labels (defaults)"}
        rows = {}
        for i, row in enumerate(runs[0]["bar"]["rows"]):
            key = row["learner"]
            tests = [r["bar"]["rows"][i]["test"] for r in runs]
            chosen = [r["bar"]["rows"][i]["chosen"] for r in runs]
            rows[key] = {"test": tests, "mean": float(np.mean(tests)), "sd": float(np.std(tests, ddof=1)) if len(tests) > 1 else 0.0,
                         "chosen": chosen}
            print(f"{names.get(key, key):<44}{', '.join(f'{c:g}' for c in chosen):>26}{mean_sd(tests):>18}   "
                  + " ".join(f"{t:.3f}" for t in tests))
        summary["bar"] = {"label_agreement": lab, "rows": rows}
        if "llm_gym" in rows and "plain" in rows:
            diff = np.array(rows["llm_gym"]["test"]) - np.array(rows["plain"]["test"])
            ok = rows["llm_gym"]["mean"] >= rows["plain"]["mean"]
            summary["bar"]["verdict"] = {"difference": diff.tolist(), "pass": bool(ok)}
            print(f"bar           llm_gym mean {rows['llm_gym']['mean']:.3f} >= plain mean {rows['plain']['mean']:.3f}: "
                  f"{'PASS' if ok else 'FAIL'} (paired difference {mean_sd(diff.tolist())})")
    if "curve" in runs[0]:
        print(f"\n== label-budget curve and K=4 vs pairwise: llm_gym's RM with RewardTrainer's defaults, {len(runs)} seeds ==")
        head = f"{'arm':<13}{'budget':>8}{'queries':>9}{'labels~gold':>13}{'RM test agreement':>20}{'reference':>18}"
        print(head)
        print("-" * len(head))
        curve = []
        for i, row in enumerate(runs[0]["curve"]):
            tests = [r["curve"][i]["test"] for r in runs]
            lab = [r["curve"][i]["label_agreement"] for r in runs]
            refs = [r["curve"][i]["reference"] for r in runs] if "reference" in row else []
            curve.append({"arm": row["arm"], "budget": row["budget"], "queries": row["queries"], "test": tests,
                          "mean": float(np.mean(tests)), "label_agreement": float(np.mean(lab)), "reference": refs})
            print(f"{row['arm']:<13}{row['budget']:>8,}{row['queries']:>9,}{np.mean(lab):>13.3f}{mean_sd(tests):>20}"
                  f"{mean_sd(refs) if refs else '':>18}")
        summary["curve"] = curve
    return summary


def combine(files: Sequence[str], args: argparse.Namespace) -> dict:
    """The bar over the seeds of several results files (e.g. one run with the curve and others with `--skip-curve`):
    every seed's bar rows that all files have, summarized as one run's; the curve over the files that have it."""
    records = [json.loads(Path(f).read_text()) for f in files]
    runs = [run for record in records for run in record["runs"]]
    seeds = [run["seed"] for run in runs]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"--combine: a seed appears twice in {list(files)}: {seeds}")
    common = set.intersection(*({row["learner"] for row in run["bar"]["rows"]} for run in runs))
    for run in runs:
        run["bar"]["rows"] = [row for row in run["bar"]["rows"] if row["learner"] in common]
    print(f"== combined: seeds {', '.join(map(str, seeds))} from {len(files)} files ==")
    summary = summarize([{"seed": r["seed"], "bar": r["bar"]} for r in runs], args)
    with_curve = [r for r in runs if "curve" in r]
    if with_curve:
        summary["curve"] = summarize([{"curve": r["curve"]} for r in with_curve], args)["curve"]
    return {"files": list(files), "seeds": seeds, "summary": summary}


def main() -> None:
    args = parse_args()
    if args.combine:
        record = combine(args.combine, args)
        if args.results:
            Path(args.results).write_text(json.dumps(record, indent=1) + "\n")
        return
    default_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        config = TinyLMConfig.smoke()
        args.budgets, args.k4_budgets, args.bar_budget, args.eval_pairs, args.repeats = "50,100", "100", 100, 80, 5
    else:
        config = TinyLMConfig()
    report = build_builtin_model(config, cache_dir=args.cache_dir)
    task = generate_review_task(config.task)
    policy = Policy.from_pretrained(report.path, device="cpu")
    n_params = sum(p.numel() for p in policy.model.parameters())
    transformers.logging.set_verbosity_error()  # the new `score` head's "newly initialized" notice, once per fit
    transformers.logging.disable_progress_bar()  # and the weight-loading bar of every from_pretrained

    print("== reward_model_quality: llm_gym's RewardTrainer against a plain pairwise recipe ==")
    print(f"device        cpu ({platform.processor() or platform.machine()}), default threads {default_threads}; accuracy parts at 1 thread")
    print(f"versions      python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"model         {report.path.name} ({'smoke' if args.smoke else 'default'} config), {n_params:,} parameters, "
          f"{config.n_layer} layers x {config.n_embd} hidden")
    print(f"labeller      SyntheticOracle(GoldScorer(), agreement={args.agreement}, flip_prob={args.flip_prob}), calibrated "
          f"per seed on its pairwise queries; K=4 rankings at the same temperature")
    print(f"trainer       llm_gym: {RewardTrainerConfig()}")
    print(f"plain         {PlainRecipe()}")
    record: dict = {
        "date": time.strftime("%Y-%m-%d"), "args": vars(args), "model": {"path": str(report.path), "parameters": n_params},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__},
        "default_threads": default_threads, "trainer_defaults": dataclasses.asdict(RewardTrainerConfig()),
        "plain_recipe": dataclasses.asdict(PlainRecipe()),
    }
    if args.ablation:
        print(f"\n-- ablation: seeds {args.ablation_seeds}, {args.bar_budget} comparisons each, lrs {args.ablation_lrs}", flush=True)
        record["ablation"] = run_ablation(policy, report.path, task, args, out)
    else:
        if not (args.skip_bar and args.skip_curve):
            print(f"\n-- accuracy, seeds {args.seed}..{args.seed + args.seeds - 1}", flush=True)
            runs = [run_seed(policy, report.path, task, args, args.seed + s, out) for s in range(args.seeds)]
            record["runs"] = runs
            record["summary"] = summarize(runs, args)
        if not args.skip_throughput:
            print(f"\n-- throughput: 64 (prompt, completion) pairs, {args.repeats} interleaved repeats after 1 warm-up, medians", flush=True)
            thr = [run_throughput(report.path, task, policy, args, threads) for threads in sorted({default_threads, 1}, reverse=True)]
            torch.set_num_threads(1)
            record["throughput"] = thr
            print(f"batch         64 pairs padded to {thr[0]['padded_shape'][1]} tokens ({thr[0]['real_tokens']} real tokens)")
            head = f"{'threads':>7}{'rm.score pairs/s':>18}{'bare pairs/s':>14}{'ratio (median)':>16}{'ratio (best)':>14}"
            print(head)
            print("-" * len(head))
            for t in thr:
                verdict = "PASS" if t["ratio"] <= TARGET_OVERHEAD else "FAIL"
                print(f"{t['threads']:>7}{t['pairs_per_s']['rm.score']:>18,.0f}{t['pairs_per_s']['bare backbone']:>14,.0f}"
                      f"{t['ratio']:>16.3f}{t['ratio_best']:>14.3f}  target <= {TARGET_OVERHEAD}: {verdict}")
    record["total_seconds"] = time.perf_counter() - t_start
    text = json.dumps(record, indent=2)
    (out / ("ablation.json" if args.ablation else "results.json")).write_text(text)
    if args.results:
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results).write_text(text)
    print(f"\ntotal {record['total_seconds']:.0f}s; wrote {out}" + (f" and {args.results}" if args.results else ""))


if __name__ == "__main__":
    main()
