"""SFT -> reward model -> PPO on the built-in task, data-parallel: the same script runs on 1 or N processes.

    python experiments/distributed_demo.py                                  # one process
    accelerate launch --multi_gpu --num_processes 2 experiments/distributed_demo.py   # 2 GPUs
    torchrun --standalone --nproc_per_node 2 experiments/distributed_demo.py --cpu      # 2 CPU processes (gloo)
    torchrun --standalone --nproc_per_node 2 experiments/distributed_demo.py             # 2 GPUs

Batch sizes are global, so the result does not depend on the process count (up to float
rounding and dropout masks). Only the main process writes `runs/distributed_demo/`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from llm_gym import (
    GoldScorer,
    Policy,
    RewardModel,
    RewardTrainer,
    RewardTrainerConfig,
    SamplingConfig,
    TinyLMConfig,
    build_builtin_model,
    generate_review_task,
)
from llm_gym.agents.ppo import PPO, PPOConfig
from llm_gym.agents.sft import SFTConfig, SFTTrainer
from llm_gym.infra.distributed import Distributed
from llm_gym.envs import PromptBanditVecEnv
from llm_gym.core.preferences import Comparison


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/distributed_demo"))
    parser.add_argument("--smoke", action="store_true", help="the seconds-sized model and a few steps")
    parser.add_argument("--cpu", action="store_true", help="CPU processes (gloo) even where GPUs are present")
    parser.add_argument("--mixed-precision", choices=["no", "bf16"], default="no")
    args = parser.parse_args()

    dist = Distributed.from_environment(cpu=args.cpu)
    # every process builds (or finds) the same cached model; the main one first, so they do not race
    report = dist.main_process_only(build_builtin_model)(TinyLMConfig.smoke() if args.smoke else TinyLMConfig())
    task, gold = generate_review_task(), GoldScorer()
    device = dist.device or None
    n = 64 if args.smoke else 512

    policy = Policy.from_pretrained(report.path, device=device)
    sft = SFTTrainer(SFTConfig(epochs=1, batch_size=16, mixed_precision=args.mixed_precision), rng=np.random.default_rng(0),
                     logger=dist.make_logger(args.out / "sft"), distributed=dist)
    print_main = dist.main_process_only(print)
    print_main("sft", sft.fit(policy, task.demonstrations[:n]))
    dist.main_process_only(policy.save_pretrained)(args.out / "sft_model")

    # K=4 completions per prompt from the SFT policy, ranked by the gold scorer (a noiseless labeller)
    rng = np.random.default_rng(1)
    prompts = [task.prompts[i] for i in rng.integers(len(task.prompts), size=n // 4)]
    sampling = SamplingConfig(max_new_tokens=16)
    comparisons = []
    for p in prompts:
        completions = policy.sample([p] * 4, sampling, seed=int(rng.integers(2**31))).completions
        ranks = np.argsort(np.argsort(-gold([p] * 4, completions), kind="stable"), kind="stable")
        comparisons.append(Comparison(p, tuple(completions), tuple(int(r) for r in ranks)))
    rm = RewardModel.from_pretrained(args.out / "sft_model" if not args.smoke else report.path, device=device, head_seed=0)
    trainer = RewardTrainer(RewardTrainerConfig(epochs=2, batch_size=16, mixed_precision=args.mixed_precision),
                            logger=dist.make_logger(args.out / "reward_model"), rng=np.random.default_rng(2), distributed=dist)
    print_main("reward model", trainer.fit(rm, comparisons, gold_fn=gold))
    dist.main_process_only(rm.save)(args.out / "reward_model_ckpt")

    env = PromptBanditVecEnv(task.prompts, dist.sharded(rm), num_envs=16, gold_fn=gold)  # each process scores its shard
    config = PPOConfig(sampling=sampling, minibatch_size=8, n_epochs=2, mixed_precision=args.mixed_precision)
    agent = PPO(policy, env, config, rng=np.random.default_rng(3), logger=dist.make_logger(args.out / "ppo"), distributed=dist)
    agent.learn(total_steps=32 if args.smoke else 1024)
    agent.save(args.out / "ppo_checkpoint")
    last = {k: round(h[-1][1], 4) for k, h in agent.logger.history.items() if k.startswith("objective/")}
    print_main("ppo", last)
    dist.close()

if __name__ == "__main__":
    main()
