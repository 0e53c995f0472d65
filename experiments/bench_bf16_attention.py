"""A bf16 PPO iteration on CPU with attention on PyTorch's flash kernel against the math kernel, alternating in one run.

`mixed_precision="bf16"` on CPU runs every pass under `Distributed.autocast`, which adds `sdpa_kernel([MATH])` to bf16
autocast: the CPU flash-attention kernel's bf16 backward is slow. This script shows what that choice buys on a whole
iteration: two PPO agents of the same model and seed, one with plain bf16 autocast (attention on the flash kernel,
torch's own choice) and one with llm_gym's, iterations alternating (A, B, A, B...) after a warm-up each; medians of
the seconds per iteration and of each phase. The reward model is loaded in bf16. Issue 18's work: 16 prompts of
exactly 16 tokens, 32 new tokens, 4 epochs of minibatch 8, fused AdamW.

    python experiments/bench_bf16_attention.py --model gpt2-small --threads 2 --keep-freed-memory
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from bench_ppo import add_run_arguments, exact_length_prompts, model_folder, run_settings  # beside this script
from llm_gym import Policy, RewardModel, SamplingConfig, generate_review_task
from llm_gym.agents import PPO, PPOConfig
from llm_gym.envs import PromptBanditVecEnv
from llm_gym.infra.distributed import Distributed

KERNELS = ("flash kernel (plain autocast)", "math kernel (mixed_precision)")


@contextlib.contextmanager
def plain_autocast() -> Iterator[None]:
    """Within the block, `Distributed.autocast` gives plain bf16 autocast: attention on torch's own kernel choice."""
    ours = Distributed.__dict__["autocast"]
    Distributed.autocast = staticmethod(
        lambda mixed_precision, device: torch.autocast(device.type, dtype=torch.bfloat16))
    try:
        yield
    finally:
        Distributed.autocast = ours


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Run the benchmark, print its report; returns each variant's median seconds per iteration."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per variant (after 1 warm-up)")
    parser.set_defaults(mixed_precision="bf16")
    args = parser.parse_args(argv)
    device, precision = run_settings(args)
    if device.type != "cpu" or precision != "bf16":
        raise SystemExit("this benchmark compares CPU bf16 kernels: run it on CPU, with bf16 (the default)")

    with tempfile.TemporaryDirectory() as scratch:
        path, config = model_folder(args.model, args.cache_dir, Path(scratch))
        reward = RewardModel.from_pretrained(path, device=device, dtype=torch.bfloat16).eval()
        policies = {name: Policy.from_pretrained(path, device=device) for name in KERNELS}
        prompts = exact_length_prompts(policies[KERNELS[0]].tokenizer, generate_review_task(config.task).prompts,
                                       args.prompt_tokens)
        if not prompts:
            raise SystemExit(f"no piece of the task's prompts encodes to exactly {args.prompt_tokens} tokens")
        agents = {}
        for name, policy in policies.items():
            ppo = PPOConfig(sampling=SamplingConfig(max_new_tokens=args.new_tokens, stop_at_eos=False), n_epochs=4,
                            minibatch_size=min(8, args.prompts), log_samples_every=0, mixed_precision="bf16",
                            fused_adamw=True)
            env = PromptBanditVecEnv(prompts, reward, num_envs=args.prompts)
            agents[name] = PPO(policy, env, ppo, rng=np.random.default_rng(0))

        def iteration(name: str) -> dict[str, float]:
            with plain_autocast() if name == KERNELS[0] else contextlib.nullcontext():
                t = time.perf_counter()
                stats = agents[name].train_iteration()
                return {"iteration": time.perf_counter() - t,
                        **{k.removeprefix("time/"): v for k, v in stats.items() if k.startswith("time/")}}

        for name in KERNELS:  # warm-up
            iteration(name)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in KERNELS}
        for _ in range(args.iterations):
            for name in KERNELS:
                runs[name].append(iteration(name))

    phases = list(runs[KERNELS[0]][0])
    medians = {name: {p: float(np.median([r[p] for r in rs])) for p in phases} for name, rs in runs.items()}
    print(f"== bench_bf16_attention: {args.model}, {device}, {torch.get_num_threads()} thread(s), medians of "
          f"{args.iterations} alternating iterations; {args.prompts} prompts x ({args.prompt_tokens} + "
          f"{args.new_tokens}) tokens ==")
    print(f"{'variant':<32}" + "".join(f"{p + ' s':>14}" for p in phases) + f"{'/ flash':>10}")
    for name in KERNELS:
        ratio = medians[name]["iteration"] / medians[KERNELS[0]]["iteration"]
        print(f"{name:<32}" + "".join(f"{medians[name][p]:>14.3f}" for p in phases) + f"{ratio:>9.2f}x")
    return {name: medians[name]["iteration"] for name in KERNELS}


if __name__ == "__main__":
    main()
