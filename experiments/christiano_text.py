"""The preference loop on the built-in text task: offline vs online vs rounds, active vs random selection.

Ziegler et al. 2019 found offline (all labels collected up front, then RL) and online
(labels collected while the policy trains) alike on positive-sentiment continuation;
Stiennon et al. 2020 trained in rounds (sample -> label -> retrain the RM -> train the
policy against the frozen RM). Christiano et al. 2017 chose queries where an ensemble of
reward models disagrees. All arms here start from the same SFT policy, spend the same label
budget from the same noisy synthetic labeller (Bradley-Terry noise calibrated so that 73% of
the labels agree with the gold order, as human labellers agree; 10% flipped labels; `--temperature 1`
is the raw form the recorded results used) and the same number of PPO completions, and are scored by the gold scorer on
held-out prompts.

    python experiments/christiano_text.py                      # 500 and 2,000 labels, all arms
    python experiments/christiano_text.py --budgets 500 --arms online,offline
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from llm_gym import (
    GoldScorer,
    Logger,
    Policy,
    PreferenceStore,
    RewardTrainer,
    RewardTrainerConfig,
    SamplingConfig,
    TinyLMConfig,
    build_builtin_model,
    evaluate_policy,
    generate_review_task,
    make_run_dir,
    reward_model_from_pretrained,
)
from llm_gym.agents import (
    PPO,
    CompletionSource,
    DisagreementSelector,
    PPOConfig,
    PreferenceLoop,
    PreferenceLoopConfig,
    RandomSelector,
    RewardModelLearner,
)
from llm_gym.envs import PromptBanditVecEnv

sys.path.insert(0, str(Path(__file__).parent))
from instructgpt_ppo import add_labeller_arguments, labeller, sft_policy  # noqa: E402  (the same cached SFT model)

SAMPLING = SamplingConfig(max_new_tokens=24)


def schedule(arm: str, budget: int, total_steps: int, rounds: int) -> PreferenceLoopConfig:
    """The three label schedules at one budget (all spend `budget` queries)."""
    if arm == "offline":
        return PreferenceLoopConfig(total_labels=budget, initial_labels=budget, labels_per_round=1,
                                    steps_per_round=total_steps, oversample=1)
    if arm == "rounds":
        per = budget // rounds
        return PreferenceLoopConfig(total_labels=budget, initial_labels=budget - per * (rounds - 1), labels_per_round=per,
                                    steps_per_round=total_steps // rounds, oversample=1, mode="rounds")
    # online (and the active/random arms): a quarter up front, the rest spread over many small rounds
    n_rounds = 2 * rounds
    initial = budget // 4
    per = -(-(budget - initial) // (n_rounds - 1))
    oversample = 4 if arm == "active" else 1
    return PreferenceLoopConfig(total_labels=budget, initial_labels=initial, labels_per_round=per,
                                steps_per_round=total_steps // n_rounds, oversample=oversample)


def run_arm(arm: str, budget: int, args, sft_path: Path, task, gold) -> dict:
    seed = args.seed
    out = Path(args.out)
    policy = Policy.from_pretrained(sft_path)
    ensemble = arm in ("active", "random")
    rm = reward_model_from_pretrained(sft_path, 3 if ensemble else 1, seed=seed)
    env = PromptBanditVecEnv(task.prompts, rm, num_envs=args.num_envs, gold_fn=gold)
    total_steps = args.iterations * args.num_envs
    config = schedule(arm, budget, total_steps, args.rounds)
    run_dir = make_run_dir(out, f"{arm}-{budget}", seed=seed)
    store_path = run_dir / "labels.sqlite"
    with Logger(run_dir) as logger, PreferenceStore(store_path) as store:
        logger.log_hparams({"arm": arm, "budget": budget, **{k: v for k, v in vars(config).items()}})
        ppo = PPO(policy, env, PPOConfig(sampling=SAMPLING, minibatch_size=16, kl_coef=args.kl_coef, log_samples_every=0),
                  rng=np.random.default_rng(seed), logger=logger)
        # the reward-model recipe the recorded results used (RewardTrainerConfig's defaults until 2026-12-04)
        trainer = RewardTrainer(RewardTrainerConfig(epochs=args.rm_epochs, learning_rate=3e-4, batch_size=16, lr_schedule="constant"), logger=logger,
                                rng=np.random.default_rng(seed + 1))
        demos = ([d.prompt for d in task.demonstrations[:200]], [d.completion for d in task.demonstrations[:200]])
        learner = RewardModelLearner(rm, trainer, rng=np.random.default_rng(seed + 2), gold_fn=gold, reference=demos)
        source = CompletionSource(policy, task.prompts, SAMPLING, rng=np.random.default_rng(seed + 3))
        oracle = labeller(gold, args, np.random.default_rng(seed + 4))
        selector = DisagreementSelector() if arm == "active" else RandomSelector()
        loop = PreferenceLoop(ppo, source, selector, oracle, learner, store, config, rng=np.random.default_rng(seed + 5),
                              logger=logger)
        t = time.perf_counter()
        loop.learn(total_steps)
        seconds = time.perf_counter() - t
        labels = store.counts()["answers"]
        label_agreement, _ = oracle.agreement_of(store.comparisons())
    report = evaluate_policy(policy, task.eval_prompts[: args.eval_prompts], sampling=SAMPLING, seed=999, gold_fn=gold,
                             reference=ppo.reference)
    row = {"arm": arm, "budget": budget, "labels": labels, "label_temperature": oracle.temperature,
           "label_agreement": label_agreement, "gold": report.gold, "kl": report.kl, "seconds": seconds}
    print(f"{arm:>8} {budget:>6} labels={labels:<5} (agree with gold {label_agreement:.3f}) gold {report.gold:+.3f}  KL {report.kl:.2f}  {seconds:.0f}s", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--out", default="runs/christiano_text")
    parser.add_argument("--sft-out", default="runs/instructgpt_ppo", help="where instructgpt_ppo.py keeps its SFT model")
    parser.add_argument("--budgets", default="500,2000")
    parser.add_argument("--arms", default="offline,online,rounds,active,random",
                        help="offline/online/rounds use one RM; active/random (at the smallest budget) use a 3-model ensemble")
    parser.add_argument("--iterations", type=int, default=60, help="PPO iterations per arm")
    parser.add_argument("--num-envs", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the 'rounds' arm (online uses twice as many)")
    parser.add_argument("--rm-epochs", type=int, default=2)
    parser.add_argument("--kl-coef", type=float, default=0.2,
                        help="PPO's KL penalty: a learned RM from a few hundred noisy labels is easy to over-optimise")
    parser.add_argument("--eval-prompts", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    add_labeller_arguments(parser)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    config = TinyLMConfig()
    report = build_builtin_model(config, cache_dir=args.cache_dir)
    task = generate_review_task(config.task)
    gold = GoldScorer()
    sft_args = argparse.Namespace(out=args.sft_out, seed=args.seed)
    sft_path = sft_policy(sft_args, report, task)
    sft = Policy.from_pretrained(sft_path)
    sft_gold = evaluate_policy(sft, task.eval_prompts[: args.eval_prompts], sampling=SAMPLING, seed=999, gold_fn=gold).gold
    print(f"SFT gold {sft_gold:+.3f}; {args.iterations} PPO iterations x {args.num_envs} prompts per arm", flush=True)

    budgets = [int(b) for b in args.budgets.split(",")]
    arms = args.arms.split(",")
    rows = []
    for budget in budgets:
        for arm in arms:
            if arm in ("active", "random") and budget != min(budgets):
                continue
            rows.append(run_arm(arm, budget, args, sft_path, task, gold))

    print(f"\n== preference loop on the built-in task (seed {args.seed}; SFT gold {sft_gold:+.3f}) ==")
    print(f"{'arm':>8}{'budget':>8}{'labels':>8}{'gold':>8}{'KL':>7}{'time':>7}")
    for r in rows:
        print(f"{r['arm']:>8}{r['budget']:>8}{r['labels']:>8}{r['gold']:>+8.3f}{r['kl']:>7.2f}{r['seconds']:>6.0f}s")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "results.json").write_text(json.dumps({"sft_gold": sft_gold, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
