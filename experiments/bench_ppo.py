"""Seconds per PPO iteration on the built-in model, with the breakdown generation / scoring / reference / update.

One iteration = a rollout of 16 prompts x 32 new tokens, the reward (the gold scorer, or a
reward model with `--reward rm`), the reference and value passes, and 4 epochs of PPO
updates (minibatch 8). Every completion is exactly 32 tokens (`stop_at_eos=False`) so
iterations are comparable; this is the figure later compared against other RLHF
libraries. Medians over `--iterations` after one warm-up iteration.

    python experiments/bench_ppo.py                 # gold-scorer reward
    python experiments/bench_ppo.py --reward rm     # a reward model (the built-in backbone) as reward
"""

from __future__ import annotations

import argparse
import platform

import numpy as np
import torch
import transformers

from llm_gym import GoldScorer, Policy, RewardModel, SamplingConfig, TinyLMConfig, build_builtin_model, default_device
from llm_gym import generate_review_task
from llm_gym.agents import PPO, PPOConfig
from llm_gym.envs import PromptBanditVecEnv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--smoke", action="store_true", help="the smoke-sized model instead of the built-in one")
    parser.add_argument("--reward", choices=["gold", "rm"], default="gold")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default=None, help="default: CUDA when present, else CPU")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = TinyLMConfig.smoke() if args.smoke else TinyLMConfig()
    report = build_builtin_model(config, cache_dir=args.cache_dir)
    device = torch.device(args.device) if args.device else default_device()
    policy = Policy.from_pretrained(report.path, device=device)
    task = generate_review_task(config.task)
    reward = GoldScorer() if args.reward == "gold" else RewardModel.from_pretrained(report.path, device=device)
    env = PromptBanditVecEnv(task.prompts, reward, num_envs=args.prompts)
    ppo = PPOConfig(
        sampling=SamplingConfig(max_new_tokens=args.new_tokens, stop_at_eos=False),
        n_epochs=args.epochs,
        minibatch_size=min(8, args.prompts),
        log_samples_every=0,
    )
    agent = PPO(policy, env, ppo, rng=np.random.default_rng(0))

    agent.train_iteration()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    keys = ("generation", "scoring", "reference", "update")
    times = {k: [] for k in keys}
    for _ in range(args.iterations):
        stats = agent.train_iteration()
        for k in keys:
            times[k].append(stats[f"time/{k}"])
    total = [sum(times[k][i] for k in keys) for i in range(args.iterations)]
    n_params = sum(p.numel() for p in policy.model.parameters())

    print("== bench_ppo: one PPO iteration ==")
    print(f"device        {device} ({platform.machine()}), threads {torch.get_num_threads()}")
    print(f"versions      torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"model         {report.path.name}, {n_params:,} parameters; reward: {args.reward}")
    print(f"iteration     {args.prompts} prompts x {args.new_tokens} new tokens, {args.epochs} epochs, minibatch {ppo.minibatch_size}")
    print(f"{'phase':<12}{'median s':>10}{'share':>8}")
    med_total = float(np.median(total))
    for k in keys:
        m = float(np.median(times[k]))
        print(f"{k:<12}{m:>10.3f}{m / med_total:>8.0%}")
    print(f"{'total':<12}{med_total:>10.3f}   ({args.prompts * args.new_tokens / med_total:,.0f} generated tokens/s overall, "
          f"median of {args.iterations})")


if __name__ == "__main__":
    main()
