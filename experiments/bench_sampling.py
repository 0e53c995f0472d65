"""Benchmark: tokens/second of `Policy.sample` against a bare `model.generate` on the same model, with model FLOPs,
GFLOP/s against a matmul peak measured in the same run, and peak memory.

What is measured
    One batch of prompts from the built-in review task (16 by default, of varied length, so
    the batch is left-padded), completed with 32 new tokens per row (by default), in two ways:

    A. `policy.sample(prompts, SamplingConfig(max_new_tokens=N, stop_at_eos=False), seed=...)`
       -- the whole call a trainer makes: tokenizing, sampling with the KV cache, the per-token
       log-probs, decoding the completions.
    B. `model.generate(input_ids, attention_mask, ...)` on the *same* left-padded tensors that
       `policy.encode_prompts` makes (encoded once, outside the timing): pure sampling, nothing
       else. This is the "bare" baseline.

Why
    The issue's target: the policy's batched sampling delivers at least 90% of the
    tokens/second of a bare `model.generate` call on the same model, batch and length.

Making the two do the same work
    * Both sample from the full, unmodified distribution: ours has temperature 1, top-k off,
      top-p off; for `generate` we set the same explicitly (`top_k=0`), since transformers'
      global default is `top_k=50` (a top-k filter each step that ours would not do).
    * Both produce exactly N tokens for every row. Ours: `stop_at_eos=False`. For `generate`,
      passing `eos_token_id=None` does NOT disable EOS stopping in transformers 5.x: unset (None)
      fields of the config handed to `generate` are filled from `model.generation_config`, which
      carries the model's EOS. So the EOS is removed from `model.generation_config` itself
      (the policy never reads it; it uses the tokenizer's EOS). The script then checks that
      `generate` returned N new tokens per row.
    * The runs alternate (A, B, A, B, ...) after one warm-up of each, so drift on a shared
      machine hits both sides alike; the ratio uses medians.

Model FLOPs and the peak
    Each call's FLOPs are counted as `bench_ppo.py` counts generation (`generation_flops`: 2 x the body's parameters
    per prompt and new token, the LM head only at the sampled positions; the prompt length is the batch's mean number
    of real tokens); GFLOP/s is that over the median seconds, and its share is of the matmul peak of the dtype the run
    computes in (`--mixed-precision bf16`: both sides under bf16 autocast), measured in the same run. Peak memory is
    the resident set (and on CUDA the allocated peak) over the timed calls.

Run
    .venv/bin/python experiments/bench_sampling.py                # default built-in model
    .venv/bin/python experiments/bench_sampling.py --smoke        # tiny model, seconds to build
    .venv/bin/python experiments/bench_sampling.py --model gpt2-small --device cuda --mixed-precision bf16   # 124M
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import transformers
from transformers import GenerationConfig

from bench_ppo import add_run_arguments, body_parameters, describe_peaks, generation_flops, matmul_peaks, model_folder, percent
from bench_ppo import run_settings, sync
from llm_gym import Policy, SamplingConfig, generate_review_task
from llm_gym.infra.distributed import Distributed
from llm_gym.infra.memory import PeakMemory

TARGET = 0.90  # policy tokens/s must be >= 90% of generate's


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(p)
    p.add_argument("--smoke", action="store_true", help="the same as --model smoke")
    p.add_argument("--batch", type=int, default=16, help="prompts per batch")
    p.add_argument("--new-tokens", type=int, default=32, help="new tokens per prompt (exactly, on both sides)")
    p.add_argument("--repeats", type=int, default=7, help="timed runs of each side (after one warm-up each)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the samples")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Run the benchmark, print its report; returns the key figures (for `bench_all.py`)."""
    args = parse_args(argv)
    device, precision = run_settings(args)
    n_new, batch = args.new_tokens, args.batch
    model_name = "smoke" if args.smoke else args.model

    # ---------------------------------------------------------------- model and prompts
    scratch = tempfile.TemporaryDirectory()
    path, config = model_folder(model_name, args.cache_dir, Path(scratch.name))
    policy = Policy.from_pretrained(path, device=device)
    model, tok = policy.model, policy.tokenizer
    model.eval()
    prompts = generate_review_task(config.task).prompts[:batch]
    if len(prompts) < batch:
        raise SystemExit(f"the task has only {len(prompts)} prompts; lower --batch")
    prompt_ids, prompt_mask, _ = policy.encode_prompts(prompts, n_new)
    lengths = prompt_mask.sum(-1)

    # ---------------------------------------------------------------- the two sides
    sampling = SamplingConfig(max_new_tokens=n_new, stop_at_eos=False)  # T=1, top-k/top-p off

    # `generate` fills unset fields from model.generation_config: drop its EOS there, so no
    # row stops early (see the module docstring); everything else is set explicitly here.
    model.generation_config.eos_token_id = None
    gen_config = GenerationConfig(
        do_sample=True,
        max_new_tokens=n_new,
        min_new_tokens=0,
        temperature=1.0,
        top_k=0,  # transformers' default is 50; 0 = off, like ours
        top_p=1.0,
        eos_token_id=None,
        pad_token_id=tok.pad_token_id,
        use_cache=True,
    )

    def run_policy(seed: int) -> torch.Tensor:
        rollout = policy.sample(prompts, sampling, seed=seed)
        assert rollout.completion_ids.shape == (batch, n_new), rollout.completion_ids.shape
        assert int(rollout.completion_mask.sum()) == batch * n_new
        return rollout.completion_ids

    def run_generate(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        with torch.no_grad():
            out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=gen_config)
        new = out[:, prompt_ids.shape[1] :]
        assert new.shape == (batch, n_new), f"generate returned {tuple(new.shape)} new tokens, expected {(batch, n_new)}"
        # the shape alone does not show EOS stopping (the batch runs on while any row is alive):
        # a stopped row is padded after its EOS, which a row that samples on never is
        for row in new.tolist():
            if tok.eos_token_id in row[:-1]:
                rest = row[row.index(tok.eos_token_id) + 1 :]
                assert any(t != tok.pad_token_id for t in rest), "generate stopped a row at EOS; EOS stopping is still on"
        return new

    def run(fn: Callable[[int], torch.Tensor], seed: int) -> tuple[float, torch.Tensor]:
        with Distributed.autocast(precision, device):
            sync(device)
            t0 = time.perf_counter()
            tokens = fn(seed)
            sync(device)
        return time.perf_counter() - t0, tokens

    # ---------------------------------------------------------------- warm-up, then interleaved timing
    # The warm-up runs also compare the samples: with the same seed both draw from the same
    # distribution with one multinomial per step, so (on CPU at least) they mostly pick the
    # same tokens -- a direct check that the two do the same work.
    _, warm_policy = run(run_policy, args.seed)
    _, warm_generate = run(run_generate, args.seed)
    same_tokens = int((warm_policy == warm_generate).sum())
    peaks = matmul_peaks(device, precision)
    peak = peaks["bf16" if precision == "bf16" else "fp32"]
    times = {"policy.sample": [], "model.generate": []}
    eos_seen = {"policy.sample": 0, "model.generate": 0}
    with PeakMemory() as memory:
        for r in range(args.repeats):
            seed = args.seed + 1 + r
            for name, fn in (("policy.sample", run_policy), ("model.generate", run_generate)):
                seconds, tokens = run(fn, seed)
                times[name].append(seconds)
                eos_seen[name] += int((tokens == tok.eos_token_id).sum())  # EOS drawn mid-row, sampling went on

    # ---------------------------------------------------------------- report
    n_params = sum(p.numel() for p in model.parameters())
    flops = generation_flops(body_parameters(model), model.get_input_embeddings().weight.numel(), batch,
                             float(lengths.float().mean()), n_new)
    dtype = "bf16" if precision == "bf16" else "fp32"
    print("== bench_sampling: Policy.sample vs model.generate ==")
    print(f"device        {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else f" ({platform.processor() or platform.machine()})"))
    print(f"versions      python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"threads       {torch.get_num_threads()}")
    print(f"model         {model_name} ({path.name}), {n_params:,} parameters, "
          f"{model.config.n_layer} layers x {model.config.n_embd} hidden, vocab {len(tok)}; precision {dtype}")
    print(f"batch         {batch} prompts, {int(lengths.min())}-{int(lengths.max())} tokens (padded to {prompt_ids.shape[1]}), "
          f"{n_new} new tokens each = {batch * n_new} tokens per call, {flops / 1e9:.4g} GFLOP")
    print(f"repeats       {args.repeats} per side, interleaved, after 1 warm-up each")
    print(f"same samples  {same_tokens}/{batch * n_new} tokens identical between the two (warm-up, seed {args.seed})")
    print(f"matmul peak   {describe_peaks(peaks, device)}; shares below of the {dtype} peak")
    print(f"{'':16}{'median s':>10}{'min s':>10}{'tok/s (median)':>16}{'tok/s (best)':>14}{'GFLOP/s':>10}{'of peak':>9}"
          f"{'EOS sampled':>13}")
    rate = {}
    for name, ts in times.items():
        med, best = statistics.median(ts), min(ts)
        rate[name] = batch * n_new / med
        gflops = flops / med / 1e9
        print(f"{name:16}{med:>10.4g}{best:>10.4g}{rate[name]:>16,.0f}{batch * n_new / best:>14,.0f}{gflops:>10.4g}"
              f"{percent(gflops / peak):>9}{eos_seen[name]:>13}")
    ratio = rate["policy.sample"] / rate["model.generate"]
    best_ratio = min(times["model.generate"]) / min(times["policy.sample"])
    verdict = "PASS" if ratio >= TARGET else "FAIL"
    print(f"ratio         policy/generate tokens/s = {ratio:.3f} (median-based; best-of: {best_ratio:.3f}), target >= {TARGET:.2f}: {verdict}")
    cuda = f", CUDA peak {memory.cuda_peak_mb:,.0f} MB" if memory.cuda_peak_mb is not None else ""
    print(f"peak memory   {memory.peak_rss_mb:,.0f} MB resident{cuda}")
    scratch.cleanup()
    policy_gflops = flops / statistics.median(times["policy.sample"]) / 1e9
    return {"tokens_per_s": rate["policy.sample"], "ratio": ratio, "gflops": policy_gflops, "share": policy_gflops / peak}

if __name__ == "__main__":
    main()
