"""InstructGPT stages 2-3 in miniature on the built-in task: SFT -> PPO, PPO on a learned RM, PPO-ptx.

What it measures (the PPO issue's quality figures), all on held-out prompts:

1. PPO against the gold scorer, from SFT: gold score of SFT vs PPO, and the KL to SFT.
2. PPO against a reward model trained on synthetic comparisons (SyntheticOracle calibrated to
   73% agreement with the gold order, 10% flipped labels; `--temperature 1` is the raw form the
   recorded results used) of SFT samples: gold and RM score, KL, and the win
   rate of PPO's completions over SFT's judged by the oracle.
3. The alignment tax: held-out pretraining perplexity of SFT, PPO and PPO-ptx (the same
   RM run with InstructGPT's pretraining term mixed in).
4. A sanity environment whose reward is a known function of the text (how often the
   letter "e" occurs): the reward rises, and with the sign flipped it falls.

    python experiments/instructgpt_ppo.py                  # everything (about 10 minutes on 2 cores)
    python experiments/instructgpt_ppo.py --parts gold     # one part

TensorBoard logs go to `--out` (default runs/instructgpt_ppo); the table is also written
to `results.json` there.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import gymnasium
import numpy as np
import torch

import llm_gym  # noqa: F401  (registers the environments)
from llm_gym import (
    GoldScorer,
    Logger,
    Policy,
    PreferenceStore,
    LearnedReward,
    Query,
    RewardTrainer,
    RewardTrainerConfig,
    SamplingConfig,
    SyntheticOracle,
    TinyLMConfig,
    build_builtin_model,
    collect,
    evaluate_policy,
    generate_review_task,
    make_run_dir,
    reward_model_from_pretrained,
)
from llm_gym.agents import PPO, PPOConfig, SFTConfig, SFTTrainer
from llm_gym.envs import PromptBanditVecEnv

SAMPLING = SamplingConfig(max_new_tokens=24)


def ppo_config(args: argparse.Namespace, **overrides) -> PPOConfig:
    settings = dict(sampling=SAMPLING, learning_rate=args.lr, kl_coef=args.kl_coef, minibatch_size=16, n_epochs=4)
    settings.update(overrides)
    return PPOConfig(**settings)


def add_labeller_arguments(parser: argparse.ArgumentParser) -> None:
    """--agreement and --temperature: the synthetic labeller's noise (see `labeller`)."""
    parser.add_argument("--agreement", type=float, default=0.73,
                        help="the synthetic labeller is calibrated so that its labels agree with the gold order this often "
                             "(0.73: human labellers' agreement)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="the raw Bradley-Terry form; given, it replaces --agreement (the results of 2026-11 used 1.0: "
                             "63%% agreement)")


def labeller(gold, args, rng: np.random.Generator) -> SyntheticOracle:
    """The synthetic labeller: calibrated to `--agreement` (its temperature chosen on the first queries it is asked),
    or the raw Bradley-Terry form at `--temperature`; 10% flipped labels either way."""
    if args.temperature is not None:
        return SyntheticOracle(gold, rng=rng, temperature=args.temperature, flip_prob=0.1)
    return SyntheticOracle(gold, rng=rng, agreement=args.agreement, flip_prob=0.1)


def sft_policy(args, report, task) -> Path:
    """Fine-tune the pretrained model on the demonstrations once; reuse the saved result."""
    path = Path(args.out) / "sft"
    if not (path / "config.json").exists():
        policy = Policy.from_pretrained(report.path)
        with Logger(make_run_dir(args.out, "sft", seed=args.seed)) as logger:
            t = time.perf_counter()
            SFTTrainer(SFTConfig(epochs=2), rng=np.random.default_rng(args.seed), logger=logger).fit(policy, task.demonstrations)
            print(f"SFT: {time.perf_counter() - t:.0f}s")
        policy.save_pretrained(path)
    return path


def train_ppo(name: str, args, sft_path: Path, env, config: PPOConfig, ptx_texts=None) -> tuple[Policy, Policy, float]:
    policy = Policy.from_pretrained(sft_path)
    with Logger(make_run_dir(args.out, name, seed=args.seed)) as logger:
        logger.log_hparams({"run": name, **{k: v for k, v in config.to_dict().items() if k != "sampling"}})
        agent = PPO(policy, env, config, rng=np.random.default_rng(args.seed), ptx_texts=ptx_texts, logger=logger)
        t = time.perf_counter()
        agent.learn(total_steps=args.iterations * env.num_envs)
        seconds = time.perf_counter() - t
    print(f"{name}: {args.iterations} iterations x {env.num_envs} prompts in {seconds:.0f}s")
    return policy, agent.reference, seconds


def label_and_train_rm(args, sft_path: Path, pretrained_path: Path, task, gold) -> tuple[LearnedReward, int, dict]:
    """Sample pairs, label them with the noisy synthetic oracle, train the RM on them.

    Half of the pairs are two samples of the pretrained model (mixed sentiment: informative
    labels), half two samples of SFT (the distinctions PPO will need); InstructGPT likewise
    collected comparisons of outputs from several models.
    """
    out = Path(args.out)
    n = args.labels
    prompts = [task.prompts[i % len(task.prompts)] for i in range(n)]
    a, b = [], []
    for source, lo, hi in ((Policy.from_pretrained(pretrained_path), 0, n // 2), (Policy.from_pretrained(sft_path), n // 2, n)):
        for i in range(lo, hi, 64):
            chunk = prompts[i : min(i + 64, hi)]
            a += source.sample(chunk, SAMPLING, seed=10_000 + i).completions
            b += source.sample(chunk, SAMPLING, seed=20_000 + i).completions
    oracle = labeller(gold, args, np.random.default_rng(args.seed))
    store_path = out / "labels.sqlite"
    store_path.unlink(missing_ok=True)
    with PreferenceStore(store_path) as store:
        collect(oracle, [Query(p, (x, y)) for p, x, y in zip(prompts, a, b) if x != y], store)
        comparisons = store.comparisons()
    with Logger(make_run_dir(args.out, "reward_model", seed=args.seed)) as logger:
        # the reward-model recipe the recorded results used (RewardTrainerConfig's defaults until 2026-12-04)
        trainer = RewardTrainer(RewardTrainerConfig(epochs=2, learning_rate=3e-4, batch_size=16, lr_schedule="constant"), logger=logger, rng=np.random.default_rng(args.seed))
        # rm_members > 1: an ensemble, whose mean is harder to game than one model's quirks
        rm = reward_model_from_pretrained(sft_path, args.rm_members, seed=args.seed)
        metrics = trainer.fit(rm, comparisons, gold, bootstrap_rng=np.random.default_rng(args.seed + 1))
    rm.normalize([d.prompt for d in task.demonstrations], [d.completion for d in task.demonstrations])
    label_agreement, _ = oracle.agreement_of(comparisons)
    print(f"labels: temperature {oracle.temperature:.4g}, agree with the gold order {label_agreement:.3f}")
    print(f"reward model: {len(comparisons)} comparisons, held-out accuracy {metrics['heldout_accuracy']:.3f}, "
          f"gold agreement {metrics.get('gold_agreement', float('nan')):.3f}")
    metrics = {**metrics, "label_temperature": oracle.temperature, "label_agreement": label_agreement}
    return rm, len(comparisons), metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", default=None, help="built-in model cache (default: $LLM_GYM_CACHE or ~/.cache/llm_gym)")
    parser.add_argument("--out", default="runs/instructgpt_ppo", help="output folder (SFT model, labels, TensorBoard runs)")
    parser.add_argument("--parts", default="gold,rm,sanity", help="comma-separated: gold, rm (includes ptx), sanity")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=60, help="PPO iterations per run")
    parser.add_argument("--num-envs", type=int, default=64, help="prompts per PPO iteration")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--ptx-coef", type=float, default=0.2, help="InstructGPT's gamma for the PPO-ptx run")
    parser.add_argument("--rm-kl-coef", type=float, default=0.2,
                        help="beta of the runs against the learned RM (a stronger leash: the RM is easy to over-optimise)")
    parser.add_argument("--rm-members", type=int, default=3, help="reward-model ensemble size (1 = a single model)")
    parser.add_argument("--labels", type=int, default=2000, help="synthetic comparisons for the reward model")
    parser.add_argument("--eval-prompts", type=int, default=200)
    add_labeller_arguments(parser)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 avoids OpenMP oversubscription on a shared 2-core machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    parts = set(args.parts.split(","))
    t0 = time.perf_counter()

    report = build_builtin_model(TinyLMConfig(), cache_dir=args.cache_dir)
    task = generate_review_task(TinyLMConfig().task)
    gold = GoldScorer()
    sft_path = sft_policy(args, report, task)
    prompts = task.eval_prompts[: args.eval_prompts]
    judge = SyntheticOracle(gold, rng=np.random.default_rng(args.seed + 1), temperature=0.0, name="gold-judge")
    sft = Policy.from_pretrained(sft_path)
    pretrained = Policy.from_pretrained(report.path)
    rows: dict[str, dict] = {}

    def evaluate(name, policy, reward_fn=None):
        rep = evaluate_policy(policy, prompts, sampling=SAMPLING, seed=999, gold_fn=gold, reward_fn=reward_fn,
                              reference=sft, oracle=judge, heldout_texts=task.heldout_texts)
        rows[name] = rep.as_dict()
        return rep

    evaluate("pretrained", pretrained)
    evaluate("SFT", sft)

    if "gold" in parts:
        env = PromptBanditVecEnv(task.prompts, gold, num_envs=args.num_envs, gold_fn=gold)
        policy, _, secs = train_ppo("ppo_gold", args, sft_path, env, ppo_config(args))
        evaluate("PPO (gold reward)", policy)
        rows["PPO (gold reward)"]["train_seconds"] = secs

    if "rm" in parts:
        rm, n_labels, rm_metrics = label_and_train_rm(args, sft_path, report.path, task, gold)
        env = gymnasium.make_vec("llm_gym/ReviewSentiment-v0", num_envs=args.num_envs, reward_fn=rm)
        policy, _, secs = train_ppo("ppo_rm", args, sft_path, env, ppo_config(args, kl_coef=args.rm_kl_coef))
        evaluate("PPO (RM reward)", policy, reward_fn=rm)
        rows["PPO (RM reward)"].update(train_seconds=secs, labels=n_labels)
        env = gymnasium.make_vec("llm_gym/ReviewSentiment-v0", num_envs=args.num_envs, reward_fn=rm)
        policy, _, secs = train_ppo("ppo_ptx_rm", args, sft_path, env,
                                    ppo_config(args, kl_coef=args.rm_kl_coef, ptx_coef=args.ptx_coef),
                                    ptx_texts=task.pretrain_texts)
        evaluate("PPO-ptx (RM reward)", policy, reward_fn=rm)
        rows["PPO-ptx (RM reward)"].update(train_seconds=secs, labels=n_labels)
        for name in ("pretrained", "SFT"):
            rows[name]["rm_score"] = evaluate_policy(
                pretrained if name == "pretrained" else sft, prompts, sampling=SAMPLING, seed=999, reward_fn=rm
            ).rm_score
        rows["reward model"] = {k: rm_metrics[k] for k in ("heldout_accuracy", "gold_agreement", "label_temperature", "label_agreement") if k in rm_metrics}

    if "sanity" in parts:
        def letters(sign):
            return lambda p, c: np.array([sign * x.count("e") for x in c], dtype=np.float64)

        for sign, name in ((1.0, "sanity: count of 'e'"), (-1.0, "sanity: minus count of 'e'")):
            policy = Policy.from_pretrained(sft_path)
            env = PromptBanditVecEnv(task.prompts, letters(sign), num_envs=32)
            agent = PPO(policy, env, ppo_config(args, minibatch_size=16, kl_coef=0.0, learning_rate=1e-4),
                        rng=np.random.default_rng(args.seed))
            scores = [agent.train_iteration()["objective/rm_score"] for _ in range(20)]
            rows[name] = {"first_3": float(np.mean(scores[:3])), "last_3": float(np.mean(scores[-3:]))}

    print(f"\n== InstructGPT in miniature (built-in task, {len(prompts)} held-out prompts, seed {args.seed}) ==")
    print(f"{'policy':<22}{'gold':>8}{'RM':>8}{'KL to SFT':>11}{'win vs SFT':>12}{'perplexity':>12}{'tokens':>8}")
    for name, r in rows.items():
        if "gold" not in r:
            continue
        def f(key, fmt):
            v = r.get(key)
            return format(v, fmt) if v is not None and not (isinstance(v, float) and np.isnan(v)) else "-"
        print(f"{name:<22}{f('gold', '+.3f'):>8}{f('rm_score', '+.3f'):>8}{f('kl', '.2f'):>11}"
              f"{f('win_rate', '.1%'):>12}{f('perplexity', '.2f'):>12}{f('mean_tokens', '.1f'):>8}")
    for name, r in rows.items():
        if "gold" not in r:
            print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()))
    print("win vs SFT: judged by the noiseless gold judge (SyntheticOracle, temperature 0), ties count 1/2")
    print(f"total {time.perf_counter() - t0:.0f}s; TensorBoard: tensorboard --logdir {args.out}")
    Path(args.out, "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
