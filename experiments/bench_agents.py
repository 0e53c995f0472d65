"""Seconds per iteration of PPO, RLOO, GRPO and Dr. GRPO at the same batch, split into generation / scoring /
reference / update, with memory held by each agent's trainable modules.

Every agent samples 64 completions of 32 tokens per iteration (`stop_at_eos=False`, so all
iterations do the same work): PPO as 64 prompts x 1, the group algorithms as 16 prompts x a
group of 4. The agents' iterations alternate (PPO, RLOO, GRPO, Dr. GRPO, PPO, ...) in one
process, so the machine's load changes touch them alike; medians after one warm-up each.
Each algorithm runs with its own default number of epochs (PPO 4, RLOO and GRPO 1) and, as a
second table, all at the same epochs (`--epochs`), which isolates what the value head costs.

`--model gpt2-small` (or a larger GPT-2 shape, built locally: `bench_ppo.GPT2_SHAPES`), `--mixed-precision bf16` and
`--fused-adamw` are `bench_ppo.py`'s: the same benchmark for every agent at any size.

    python experiments/bench_agents.py                     # the built-in model
    python experiments/bench_agents.py --smoke --iterations 3
    python experiments/bench_agents.py --model gpt2-small --threads 2 --completions 16 --iterations 2
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ppo import add_run_arguments, model_folder, run_settings  # noqa: E402  (the models and options shared)

from llm_gym import GoldScorer, Policy, SamplingConfig, generate_review_task  # noqa: E402
from llm_gym.agents.grpo import GRPO, GRPOConfig  # noqa: E402
from llm_gym.agents.ppo import PPO, PPOConfig  # noqa: E402
from llm_gym.agents.rloo import RLOO, RLOOConfig  # noqa: E402
from llm_gym.envs import PromptBanditVecEnv  # noqa: E402

KEYS = ("generation", "scoring", "reference", "update")


def build(name: str, path, task, device, completions: int, group: int, tokens: int, epochs: int | None,
          **options: object):
    """One agent on the review task's prompts; `options` (mixed precision, fused AdamW) go to its config."""
    sampling = SamplingConfig(max_new_tokens=tokens, stop_at_eos=False)
    common = dict(sampling=sampling, minibatch_size=min(16, completions), log_samples_every=0, **options)
    if epochs is not None:
        common["n_epochs"] = epochs
    policy = Policy.from_pretrained(path, device=device)
    gold = GoldScorer()
    if name == "PPO":
        env = PromptBanditVecEnv(task.prompts, gold, num_envs=completions)
        return PPO(policy, env, PPOConfig(**common), rng=np.random.default_rng(0))
    env = PromptBanditVecEnv(task.prompts, gold, num_envs=completions, group_size=group)
    if name == "RLOO":
        return RLOO(policy, env, RLOOConfig(group_size=group, **common), rng=np.random.default_rng(0))
    extra = {"scale_rewards": False, "loss_type": "dr_grpo"} if name == "Dr. GRPO" else {}
    return GRPO(policy, env, GRPOConfig(group_size=group, **common, **extra), rng=np.random.default_rng(0))


def measure(agents: dict, iterations: int) -> dict[str, dict[str, float]]:
    for agent in agents.values():
        agent.train_iteration()  # warm-up
    times = {name: {k: [] for k in KEYS} for name in agents}
    for _ in range(iterations):
        for name, agent in agents.items():  # alternate: A, B, C, D, A, B, ...
            stats = agent.train_iteration()
            for k in KEYS:
                times[name][k].append(stats[f"time/{k}"])
    return {name: {k: float(np.median(v)) for k, v in t.items()} for name, t in times.items()}


def table(title: str, medians: dict[str, dict[str, float]], agents: dict) -> dict[str, float]:
    """Print one table; returns each agent's total seconds per iteration."""
    print(f"\n{title}")
    print(f"{'agent':<10}{'epochs':>7}" + "".join(f"{k:>12}" for k in KEYS) + f"{'total s':>10}{'vs PPO':>8}{'extra params':>14}")
    ppo_total = sum(medians["PPO"].values())
    for name, m in medians.items():
        agent = agents[name]
        total = sum(m.values())
        extra = sum(p.numel() for m in agent._modules_to_save().values() for p in m.parameters())  # the value head
        print(f"{name:<10}{agent.config.n_epochs:>7}" + "".join(f"{m[k]:>12.4g}" for k in KEYS)
              + f"{total:>10.4g}{total / ppo_total:>8.3g}{extra:>14,}")
    return {name: sum(m.values()) for name, m in medians.items()}


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Run the benchmark, print its tables; returns the seconds per iteration by agent of each table, `"default"`
    (each agent at its own epochs) and `"equal"` (all at `--epochs`), for `bench_all.py`."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.set_defaults(threads=1)
    parser.add_argument("--smoke", action="store_true", help="the same as --model smoke")
    parser.add_argument("--fused-adamw", action="store_true", help="OnPolicyConfig.fused_adamw on every agent")
    parser.add_argument("--completions", type=int, default=64)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1, help="the epochs of the equal-epochs table")
    parser.add_argument("--iterations", type=int, default=5)
    args = parser.parse_args(argv)
    device, precision = run_settings(args)
    scratch = tempfile.TemporaryDirectory()
    path, config = model_folder("smoke" if args.smoke else args.model, args.cache_dir, Path(scratch.name))
    task = generate_review_task(config.task)
    options = {"mixed_precision": precision, "fused_adamw": args.fused_adamw}
    names = ("PPO", "RLOO", "GRPO", "Dr. GRPO")
    print("== bench_agents: one iteration of each agent at the same batch ==")
    print(f"device        {device} ({platform.machine()}), threads {torch.get_num_threads()}")
    print(f"versions      torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"model         {'smoke' if args.smoke else args.model} ({path.name}); precision {precision}, "
          f"fused AdamW {args.fused_adamw}")
    print(f"batch         {args.completions} completions x {args.new_tokens} tokens (PPO: {args.completions} prompts; "
          f"group algorithms: {args.completions // args.group} prompts x {args.group}); minibatch 16; "
          f"medians of {args.iterations}, alternating")
    totals = {}
    for key, title, epochs in (("default", "each at its default epochs", None),
                               ("equal", f"all at {args.epochs} epoch(s)", args.epochs)):
        agents = {n: build(n, path, task, device, args.completions, args.group, args.new_tokens, epochs, **options)
                  for n in names}
        totals[key] = table(title, measure(agents, args.iterations), agents)
    scratch.cleanup()
    return totals


if __name__ == "__main__":
    main()
