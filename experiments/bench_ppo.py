"""Seconds per PPO iteration, split into generation / scoring / reference / update, with model FLOPs, achieved
GFLOP/s per phase against a matmul peak measured in the same run, and peak memory; at the built-in size or at
GPT-2 small's (124M), on CPU or CUDA, in float32 or bf16.

One iteration = a rollout of 16 prompts x 32 new tokens, the reward (the gold scorer, or a reward model with
`--reward rm`), the reference and value passes, and 4 epochs of PPO updates (minibatch 8). Every completion is
exactly 32 tokens (`stop_at_eos=False`) so iterations are comparable; this is the figure compared against other
RLHF libraries. Medians over `--iterations` after one warm-up iteration. The prompts are the review task's (of
varied length); `--prompt-tokens 16` gives every prompt exactly 16 tokens, the shape of issue 18's comparison (16 prompts x
16 prompt tokens + 32 new tokens, 4 epochs, minibatch 8): pieces cut from the task's prompts joined into one stream of
token ids (`exact_length_prompts`).

`--model gpt2-small` is GPT-2 small's shape (12 layers x 768, 50,257-token vocabulary, 124M parameters), random-init
and built here (no download), with the built-in tokenizer padded to that vocabulary; its prompts are the review
task's. `gpt2-medium` (355M), `gpt2-large` (774M) and `gpt2-xl` (1.56B) are GPT-2's larger shapes, built the same way,
for finding the largest size whose iteration takes at most a minute on a GPU. Model FLOPs (Kaplan et al. 2020's 2N per token forward, 6N forward and backward; N = B, the transformer body without
the embedding tables, at every token, plus H, the LM head tied to the token embedding, only where logits are taken):

    generation  (2B x (prompt + new tokens) + 2H x new tokens) x prompts         (the KV cache: each token once)
    reference   2 x F, F = (2B x (prompt + new tokens) + 2H x (new tokens + 1)) x prompts   (reference's and policy's)
    update      epochs x 3F

Attention's own FLOPs (quadratic in length) are left out: at 48 tokens they are under 2% of these. With `--reward rm`
the reward model's forward is in the scoring time but not in the FLOPs, and its weights are one more copy in memory
(loaded in bf16 with `--mixed-precision bf16`).

The shares are against the matmul peak of the dtype the run computes in: float32, or bf16 with `--mixed-precision
bf16` (autocast; on a CPU without bf16 instructions it is slower than float32). Where the device has bf16 (CUDA from
Ampere on) the bf16 peak is measured too and the iteration's FLOPs are printed as MFU against it. On CUDA the
iteration is synchronised before and after; the agent times its phases with the host's clock, and the phases that end
in a read of the results (generation's decoding, the update's statistics) wait for the GPU, so the phases add up to
the iteration while the boundary between the reference pass and the update can shift.

    python experiments/bench_ppo.py                                   # gold-scorer reward, built-in model
    python experiments/bench_ppo.py --reward rm                       # a reward model (the built-in backbone) as reward
    python experiments/bench_ppo.py --model gpt2-small --threads 2 --iterations 2 --prompt-tokens 16
    python experiments/bench_ppo.py --model gpt2-small --device cuda --mixed-precision bf16 --fused-adamw --prompt-tokens 16
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import transformers
from torch import nn
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerBase

from llm_gym import GoldScorer, Policy, RewardModel, SamplingConfig, TinyLMConfig, build_builtin_model, default_device
from llm_gym import generate_review_task, keep_freed_memory
from llm_gym.agents import PPO, PPOConfig
from llm_gym.envs import PromptBanditVecEnv
from llm_gym.infra.distributed import MixedPrecision, resolve_mixed_precision
from llm_gym.infra.memory import PeakMemory
from llm_gym.models.text import encode

PHASES = ("generation", "scoring", "reference", "update")
GPT2_SHAPES = {"gpt2-small": (12, 768, 12), "gpt2-medium": (24, 1024, 16), "gpt2-large": (36, 1280, 20),
               "gpt2-xl": (48, 1600, 25)}
"""GPT-2's four sizes as (layers, width, heads): 124M, 355M, 774M and 1.56B parameters (Radford et al. 2019), for
finding the largest size that runs an iteration in a minute on a GPU."""
MODELS = ("builtin", "smoke", *GPT2_SHAPES)


def gpt2_config(shape: str = "gpt2-small", **special_tokens: int) -> GPT2Config:
    """One of GPT-2's shapes (`GPT2_SHAPES`) with its 50,257-token vocabulary and 1,024 positions."""
    layers, width, heads = GPT2_SHAPES[shape]
    return GPT2Config(n_layer=layers, n_embd=width, n_head=heads, vocab_size=50257, n_positions=1024, **special_tokens)


def gpt2_shaped(builtin: Path, folder: Path, shape: str = "gpt2-small") -> Path:
    """A GPT-2 shape, random-init, saved with the built-in tokenizer padded to its 50,257 tokens (nothing downloaded)."""
    tokenizer = AutoTokenizer.from_pretrained(builtin)
    tokenizer.add_tokens([f"<pad{i}>" for i in range(50257 - len(tokenizer))])
    torch.manual_seed(0)
    config = gpt2_config(shape, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def model_folder(model: str, cache_dir: str | None, scratch: Path) -> tuple[Path, TinyLMConfig]:
    """The saved model a benchmark loads (`model` one of `MODELS`), and the built-in config whose task gives the prompts.

    The built-in model (default or smoke size) is built once into `cache_dir`; GPT-2 small's shape is written into
    `scratch` around the default built-in tokenizer.
    """
    config = TinyLMConfig.smoke() if model == "smoke" else TinyLMConfig()
    report = build_builtin_model(config, cache_dir=cache_dir)
    return (gpt2_shaped(report.path, scratch, model) if model in GPT2_SHAPES else report.path), config


def body_parameters(model: nn.Module) -> int:
    """B of the FLOPs count: the parameters every token's forward multiplies by (all but the embedding tables)."""
    embeddings = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
    return sum(p.numel() for p in model.parameters()) - embeddings


def generation_flops(body: int, head: int, prompts: int, prompt_tokens: float, new_tokens: int) -> float:
    """Model FLOPs of sampling `new_tokens` after prompts of `prompt_tokens` with a KV cache: every token's forward
    once, the LM head (`head` parameters) only at the sampled positions."""
    return (2 * body * (prompt_tokens + new_tokens) + 2 * head * new_tokens) * prompts


def exact_length_prompts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], n_tokens: int) -> list[str]:
    """Prompts of exactly `n_tokens` tokens as the policy encodes them (with the BOS, where the tokenizer adds one).

    `texts` are joined into one stream of token ids, which is cut into pieces of the right length and decoded; a
    piece whose text does not encode back to `n_tokens` tokens (a cut that re-merges with its neighbour) is left out,
    so the prompts are real text of one length.
    """
    added = len(encode(tokenizer, [""])[0])  # what the tokenizer adds to every text (its BOS)
    width = n_tokens - added
    if width < 1:
        raise ValueError(f"--prompt-tokens {n_tokens} leaves no room for text beside the {added} token(s) the tokenizer adds")
    stream = [t for ids in encode(tokenizer, texts, special_tokens=False) for t in ids]
    pieces = [tokenizer.decode(stream[i : i + width]) for i in range(0, len(stream) - width + 1, width)]
    return [p for p, ids in zip(pieces, encode(tokenizer, pieces)) if len(ids) == n_tokens]


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a host clock read after it covers that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds `fn()` takes, its queued device work included."""
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def matmul_size(device: torch.device) -> int:
    """The side of the square matmul that measures a peak: on a GPU a 2048 one is too short to fill it or to time."""
    return 8192 if device.type == "cuda" else 2048


def matmul_peak(device: torch.device, size: int | None = None, repeats: int = 5, *,
                dtype: torch.dtype = torch.float32) -> float:
    """Achieved GFLOP/s of a square matmul in `dtype`: the machine's practical peak, measured now (best of `repeats`
    after a warm-up; `size` by default `matmul_size(device)`)."""
    size = size or matmul_size(device)
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    a @ b  # warm-up
    best = min(timed(lambda: a @ b, device) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def matmul_peaks(device: torch.device, precision: str) -> dict[str, float]:
    """GFLOP/s peaks measured now: float32 always; bf16 where the run computes in it or a GPU has it (for its MFU)."""
    peaks = {"fp32": matmul_peak(device)}
    if precision == "bf16" or (device.type == "cuda" and torch.cuda.is_bf16_supported()):
        peaks["bf16"] = matmul_peak(device, dtype=torch.bfloat16)
    return peaks


def percent(share: float) -> str:
    """A share as a percentage with three significant digits: at the smoke size the shares are well under 1%."""
    return f"{100 * share:.3g}%"


def describe_peaks(peaks: dict[str, float], device: torch.device) -> str:
    """The printed line of the measured peaks."""
    size = matmul_size(device)
    return ", ".join(f"{k} {v:,.0f}" for k, v in peaks.items()) + f" GFLOP/s ({size}x{size} matmul, measured now)"


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options the model benchmarks share: which model, where it is cached, the precision, threads and device."""
    parser.add_argument("--cache-dir", default=None, help="where the built-in model is built and cached")
    parser.add_argument("--model", choices=MODELS, default="builtin",
                        help="the built-in model, its smoke size (wiring only) or a GPT-2 shape built here, random init: "
                             "small 124M, medium 355M, large 774M, xl 1.56B")
    parser.add_argument("--mixed-precision", choices=["no", "bf16"], default="no",
                        help="bf16 autocast where the device has it; the shares are then of the bf16 peak")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--device", default=None, help="default: CUDA when present, else CPU")
    add_allocator_argument(parser)


def add_allocator_argument(parser: argparse.ArgumentParser) -> None:
    """`--keep-freed-memory`, applied by `apply_allocator`."""
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="llm_gym.keep_freed_memory() first, as the llm-gym command does (glibc keeps freed blocks)")


def apply_allocator(args: argparse.Namespace) -> None:
    """`keep_freed_memory()` when `--keep-freed-memory` asks for it; exits if the C library refuses it."""
    if getattr(args, "keep_freed_memory", False) and not keep_freed_memory():
        raise SystemExit("--keep-freed-memory: this C library is not glibc, or it refused the setting")


def run_settings(args: argparse.Namespace) -> tuple[torch.device, MixedPrecision]:
    """Sets the threads (and the allocator, when asked); returns the device and the precision the run computes in
    (bf16 falls back to float32 on a device without it, with a logged warning)."""
    apply_allocator(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device) if args.device else default_device()
    return device, resolve_mixed_precision(args.mixed_precision, device)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument("--smoke", action="store_true", help="the same as --model smoke")
    parser.add_argument("--reward", choices=["gold", "rm"], default="gold")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=None,
                        help="every prompt exactly this many tokens (16: issue 18's shape); default: the review task's prompts")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--fused-adamw", action="store_true", help="PPOConfig.fused_adamw")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Run the benchmark, print its report; returns the key figures (for `bench_all.py`)."""
    args = parse_args(argv)
    device, precision = run_settings(args)
    model = "smoke" if args.smoke else args.model

    scratch = tempfile.TemporaryDirectory()
    path, config = model_folder(model, args.cache_dir, Path(scratch.name))
    policy = Policy.from_pretrained(path, device=device)
    prompts = generate_review_task(config.task).prompts
    if args.prompt_tokens is not None:
        prompts = exact_length_prompts(policy.tokenizer, prompts, args.prompt_tokens)
        if not prompts:
            raise SystemExit(f"no piece of the task's prompts encodes to exactly {args.prompt_tokens} tokens")
    # a bf16 run loads the reward model in bf16 as well (Hugging Face's `dtype=`), as a user of bf16 would
    rm_dtype = torch.bfloat16 if precision == "bf16" else None
    reward = GoldScorer() if args.reward == "gold" else RewardModel.from_pretrained(path, device=device, dtype=rm_dtype)
    env = PromptBanditVecEnv(prompts, reward, num_envs=args.prompts)
    ppo = PPOConfig(
        sampling=SamplingConfig(max_new_tokens=args.new_tokens, stop_at_eos=False),
        n_epochs=args.epochs,
        minibatch_size=min(8, args.prompts),
        log_samples_every=0,
        mixed_precision=precision,
        fused_adamw=args.fused_adamw,
    )
    agent = PPO(policy, env, ppo, rng=np.random.default_rng(0))
    peaks = matmul_peaks(device, precision)
    peak = peaks["bf16" if precision == "bf16" else "fp32"]

    agent.train_iteration()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in PHASES}
    walls: list[float] = []
    prompt_tokens: list[float] = []
    with PeakMemory() as memory:
        for _ in range(args.iterations):
            sync(device)
            start = time.perf_counter()
            stats = agent.train_iteration()
            sync(device)
            walls.append(time.perf_counter() - start)
            for k in PHASES:
                times[k].append(stats[f"time/{k}"])
            prompt_tokens.append(float(agent._last_experience.rollout.prompt_mask.sum()) / args.prompts)
    total = [sum(times[k][i] for k in PHASES) for i in range(args.iterations)]

    # B: the parameters a token's forward multiplies by, without the embedding tables; H: the LM head (tied to the
    # token embedding), counted only where logits are computed: at the completion's positions (scoring passes keep
    # `new tokens + 1` of them; sampling, one per new token)
    m = policy.model
    n_all = sum(p.numel() for p in m.parameters())
    head = m.get_input_embeddings().weight.numel()
    body = body_parameters(m)
    prompt_len = float(np.median(prompt_tokens))
    forward = 2 * body * args.prompts * (prompt_len + args.new_tokens) + 2 * head * args.prompts * (args.new_tokens + 1)
    flops = {"generation": generation_flops(body, head, args.prompts, prompt_len, args.new_tokens), "scoring": 0.0,
             "reference": 2 * forward, "update": args.epochs * 3 * forward}
    # fp32 state of the parameters' size: the policy, its reference, the gradients and AdamW's two moments
    copies = 5

    dtype = "bf16" if precision == "bf16" else "fp32"
    print("== bench_ppo: one PPO iteration ==")
    print(f"device        {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.machine()}), "
          f"threads {torch.get_num_threads()}; allocator: "
          f"{'keep_freed_memory() applied' if args.keep_freed_memory else 'malloc as it is'}")
    print(f"versions      torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"model         {model}: {n_all:,} parameters ({body + head:,} per token); reward: {args.reward}")
    print(f"iteration     {args.prompts} prompts x ({prompt_len:.0f} prompt + {args.new_tokens} new) tokens, "
          f"{args.epochs} epochs, minibatch {ppo.minibatch_size}; precision {dtype}"
          f"{', fused AdamW' if args.fused_adamw else ''}")
    print(f"matmul peak   {describe_peaks(peaks, device)}; shares below of the {dtype} peak")
    print(f"{'phase':<12}{'median s':>10}{'share':>8}{'GFLOP':>10}{'GFLOP/s':>10}{'of peak':>9}")
    med_total = float(np.median(total))
    rates = {}
    for k in PHASES:
        s = float(np.median(times[k]))
        rates[k] = flops[k] / s / 1e9 if s > 0 and flops[k] else 0.0
        print(f"{k:<12}{s:>10.4g}{percent(s / med_total):>8}{flops[k] / 1e9:>10.4g}{rates[k]:>10.4g}"
              f"{(percent(rates[k] / peak) if rates[k] else '-'):>9}")
    all_flops = sum(flops.values())
    rate = all_flops / med_total / 1e9
    print(f"{'total':<12}{med_total:>10.4g}{'':>8}{all_flops / 1e9:>10.4g}{rate:>10.4g}{percent(rate / peak):>9}"
          f"   (median of {args.iterations}; wall, synchronised: {np.median(walls):.4g} s)")
    generation = float(np.median(times["generation"]))
    print(f"tokens/s      {args.prompts * args.new_tokens / generation:,.0f} in generation, "
          f"{args.prompts * args.new_tokens / med_total:,.0f} over the iteration")
    if "bf16" in peaks:
        print(f"MFU           {percent(rate / peaks['bf16'])} of the bf16 peak (the iteration's model FLOPs)")
    cuda = f", CUDA peak {memory.cuda_peak_mb:,.0f} MB" if memory.cuda_peak_mb is not None else ""
    print(f"peak memory   {memory.peak_rss_mb:,.0f} MB resident{cuda}; parameter-sized fp32 copies held: {copies} "
          f"(policy, reference, gradients, AdamW's 2 moments) = {n_all * 4 * copies / 2**20:,.0f} MB")
    scratch.cleanup()
    return {"seconds": med_total, "gflops": rate, "share": rate / peak, "update_gflops": rates["update"],
            "update_share": rates["update"] / peak,
            "generation_tokens_per_s": args.prompts * args.new_tokens / generation}


if __name__ == "__main__":
    main()
