"""Seconds per PPO iteration, split into generation / scoring / reference / update, with model FLOPs, achieved
GFLOP/s per phase against a matmul peak measured in the same run, and peak memory; at the built-in size or at
GPT-2 small's (124M).

One iteration = a rollout of 16 prompts x 32 new tokens, the reward (the gold scorer, or a reward model with
`--reward rm`), the reference and value passes, and 4 epochs of PPO updates (minibatch 8). Every completion is
exactly 32 tokens (`stop_at_eos=False`) so iterations are comparable; this is the figure compared against other
RLHF libraries. Medians over `--iterations` after one warm-up iteration.

`--model gpt2-small` is GPT-2 small's shape (12 layers x 768, 50,257-token vocabulary, 124M parameters), random-init
and built here (no download), with the built-in tokenizer padded to that vocabulary; its prompts are the review
task's. Model FLOPs (Kaplan et al. 2020's 2N per token forward, 6N forward and backward; N = B, the transformer body without
the embedding tables, at every token, plus H, the LM head tied to the token embedding, only where logits are taken):

    generation  (2B x (prompt + new tokens) + 2H x new tokens) x prompts         (the KV cache: each token once)
    reference   2 x F, F = (2B x (prompt + new tokens) + 2H x (new tokens + 1)) x prompts   (reference's and policy's)
    update      epochs x 3F

Attention's own FLOPs (quadratic in length) are left out: at 48 tokens they are under 2% of these. With `--reward rm`
the reward model's forward is in the scoring time but not in the FLOPs, and its weights are one more copy in memory.

    python experiments/bench_ppo.py                                   # gold-scorer reward, built-in model
    python experiments/bench_ppo.py --reward rm                       # a reward model (the built-in backbone) as reward
    python experiments/bench_ppo.py --model gpt2-small --threads 2 --iterations 2
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from llm_gym import GoldScorer, Policy, RewardModel, SamplingConfig, TinyLMConfig, build_builtin_model, default_device
from llm_gym import generate_review_task
from llm_gym.agents import PPO, PPOConfig
from llm_gym.envs import PromptBanditVecEnv
from llm_gym.infra.memory import PeakMemory

PHASES = ("generation", "scoring", "reference", "update")


def gpt2_small_config(**special_tokens: int) -> GPT2Config:
    """GPT-2 small's shape: 12 layers x 768, 12 heads, a 50,257-token vocabulary, 1,024 positions (124M parameters)."""
    return GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024, **special_tokens)


def gpt2_small(builtin: Path, folder: Path) -> Path:
    """GPT-2 small's shape, random-init, saved with the built-in tokenizer padded to its 50,257 tokens."""
    tokenizer = AutoTokenizer.from_pretrained(builtin)
    tokenizer.add_tokens([f"<pad{i}>" for i in range(50257 - len(tokenizer))])
    torch.manual_seed(0)
    config = gpt2_small_config(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                               pad_token_id=tokenizer.pad_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def matmul_peak(device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    """Achieved GFLOP/s of a square fp32 matmul: the machine's practical peak, measured now."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--model", choices=["builtin", "smoke", "gpt2-small"], default="builtin")
    parser.add_argument("--smoke", action="store_true", help="the same as --model smoke")
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
    model = "smoke" if args.smoke else args.model

    config = TinyLMConfig.smoke() if model == "smoke" else TinyLMConfig()
    report = build_builtin_model(config, cache_dir=args.cache_dir)
    device = torch.device(args.device) if args.device else default_device()
    scratch = tempfile.TemporaryDirectory()
    path = gpt2_small(report.path, Path(scratch.name)) if model == "gpt2-small" else report.path
    policy = Policy.from_pretrained(path, device=device)
    task = generate_review_task(config.task)
    reward = GoldScorer() if args.reward == "gold" else RewardModel.from_pretrained(path, device=device)
    env = PromptBanditVecEnv(task.prompts, reward, num_envs=args.prompts)
    ppo = PPOConfig(
        sampling=SamplingConfig(max_new_tokens=args.new_tokens, stop_at_eos=False),
        n_epochs=args.epochs,
        minibatch_size=min(8, args.prompts),
        log_samples_every=0,
    )
    agent = PPO(policy, env, ppo, rng=np.random.default_rng(0))
    peak = matmul_peak(device)

    agent.train_iteration()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    times: dict[str, list[float]] = {k: [] for k in PHASES}
    prompt_tokens: list[float] = []
    with PeakMemory() as memory:
        for _ in range(args.iterations):
            stats = agent.train_iteration()
            for k in PHASES:
                times[k].append(stats[f"time/{k}"])
            prompt_tokens.append(float(agent._last_experience.rollout.prompt_mask.sum()) / args.prompts)
    total = [sum(times[k][i] for k in PHASES) for i in range(args.iterations)]

    # N: the parameters a token's forward multiplies by, without the embedding tables; the LM head (tied to the
    # token embedding) counted only where logits are computed: at the completion's positions (scoring passes keep
    # `new tokens + 1` of them; sampling, one per new token)
    m = policy.model
    n_all = sum(p.numel() for p in m.parameters())
    head = m.lm_head.weight.numel()
    body = n_all - m.transformer.wpe.weight.numel() - head
    tokens = args.prompts * (float(np.median(prompt_tokens)) + args.new_tokens)
    logits_at = args.prompts * (args.new_tokens + 1)
    forward = 2 * body * tokens + 2 * head * logits_at
    flops = {"generation": 2 * body * tokens + 2 * head * args.prompts * args.new_tokens, "scoring": 0.0,
             "reference": 2 * forward, "update": args.epochs * 3 * forward}
    n = body + head
    # fp32 state of the parameters' size: the policy, its reference, the gradients and AdamW's two moments
    copies = 5

    print("== bench_ppo: one PPO iteration ==")
    print(f"device        {device} ({platform.machine()}), threads {torch.get_num_threads()}")
    print(f"versions      torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"model         {model}: {n_all:,} parameters ({n:,} per token); reward: {args.reward}")
    print(f"iteration     {args.prompts} prompts x ({np.median(prompt_tokens):.0f} prompt + {args.new_tokens} new) tokens, "
          f"{args.epochs} epochs, minibatch {ppo.minibatch_size}")
    print(f"matmul peak   {peak:,.0f} GFLOP/s (fp32 {2048}x{2048}, measured now)")
    print(f"{'phase':<12}{'median s':>10}{'share':>8}{'TFLOP':>9}{'GFLOP/s':>10}{'of peak':>9}")
    med_total = float(np.median(total))
    for k in PHASES:
        s = float(np.median(times[k]))
        rate = flops[k] / s / 1e9 if s > 0 and flops[k] else 0.0
        print(f"{k:<12}{s:>10.3f}{s / med_total:>8.0%}{flops[k] / 1e12:>9.3f}{rate:>10.1f}"
              f"{(f'{rate / peak:>8.0%}' if rate else '       -'):>9}")
    all_flops = sum(flops.values())
    print(f"{'total':<12}{med_total:>10.3f}{'':>8}{all_flops / 1e12:>9.3f}{all_flops / med_total / 1e9:>10.1f}"
          f"{all_flops / med_total / 1e9 / peak:>8.0%}   ({args.prompts * args.new_tokens / med_total:,.0f} generated tokens/s, "
          f"median of {args.iterations})")
    cuda = f", CUDA peak {memory.cuda_peak_mb:,.0f} MB" if memory.cuda_peak_mb is not None else ""
    print(f"peak memory   {memory.peak_rss_mb:,.0f} MB resident{cuda}; parameter-sized fp32 copies held: {copies} "
          f"(policy, reference, gradients, AdamW's 2 moments) = {n_all * 4 * copies / 2**20:,.0f} MB")
    scratch.cleanup()


if __name__ == "__main__":
    main()
