"""Two costs of the PPO update that buy nothing by default, and what gradient checkpointing trades, measured at the
built-in size and at GPT-2-small's (124M).

1. **The optimizer step.** AdamW's per-parameter loop (torch's CPU default, the agents' default) against its
   multi-tensor form (`foreach=True`: the same numbers, bit for bit) and its fused kernel
   (`OnPolicyConfig.fused_adamw`, last-bit differences).
2. **The entropy's backward pass.** The full-vocabulary entropy differentiated although `ent_coef` is 0 (the
   old default), against it computed without a graph for the logs (`Policy.evaluate(entropy="value")`, what the
   agents do now unless PPO's entropy bonus is on): one training forward and backward of a PPO minibatch.
3. **Gradient checkpointing** (`OnPolicyConfig.gradient_checkpointing`): the same forward and backward with the
   layers' activations recomputed instead of kept: its time, and the rise of the resident set above its level
   before the pass (on CUDA: the peak allocated). The resident set is one process's, whose allocator keeps what it
   freed, so the rise depends on what ran before: read it as a comparison of the two variants in this run.
4. **Attention's kernel in a bf16 update on CPU.** The same forward and backward under plain bf16 autocast, whose
   attention takes PyTorch's CPU flash kernel (slow in its bf16 backward), against llm_gym's bf16 autocast
   (`Distributed.autocast`, what `mixed_precision="bf16"` uses), which runs attention on the math kernel. CPU only
   (on CUDA the two are the same context). The gain depends on the allocator: measure with `--keep-freed-memory`,
   the setting the `llm-gym` command applies.

The variants alternate in one process (A, B, C, A, B, C...), so a busy machine slows them alike; medians of
`--repeats`, and each variant's time as a ratio of the old default's. The 124M model is GPT-2 small's shape
(12 x 768, 50,257-token vocabulary), random-init and built here: no download.

    python experiments/bench_update_costs.py                          # the built-in model
    python experiments/bench_update_costs.py --model smoke --repeats 1 # the smoke-sized model: wiring only
    python experiments/bench_update_costs.py --model gpt2-small --threads 2 --keep-freed-memory
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
from transformers import GPT2LMHeadModel

# beside this script: GPT-2's shapes and the allocator option, defined once
from bench_ppo import add_allocator_argument, apply_allocator, gpt2_config, timed
from llm_gym import TinyLMConfig, build_builtin_model, default_device
from llm_gym.infra.distributed import Distributed
from llm_gym.infra.memory import PeakMemory
from llm_gym.models.lm import checkpointed_layers
from llm_gym.models.policy import Policy, SamplingConfig


def make_model(name: str, device: torch.device, cache_dir: str | None) -> torch.nn.Module:
    """The model measured: the built-in one (default or smoke size, from the cache) or GPT-2 small's shape, random-init
    in memory (no tokenizer needed: the inputs are random ids)."""
    if name == "gpt2-small":
        torch.manual_seed(0)
        return GPT2LMHeadModel(gpt2_config("gpt2-small")).to(device)
    config = TinyLMConfig.smoke() if name == "smoke" else TinyLMConfig()
    return Policy.from_pretrained(build_builtin_model(config, cache_dir=cache_dir).path, device=device).model


def alternate(variants: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each variant, run in turn (A, B, C, A, B, C...) `repeats` times after one warm-up each."""
    for fn in variants.values():  # warm-up: allocations, kernel selection
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn, device))
    return {k: float(np.median(v)) for k, v in times.items()}


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Run the benchmark, print its report; returns each cheaper variant's time as a ratio of the old default's (for
    `bench_all.py`)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["builtin", "smoke", "gpt2-small"], default="builtin")
    parser.add_argument("--cache-dir", default=None, help="where the built-in model is built and cached")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--minibatch", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--device", default=None, help="default: CUDA when present, else CPU")
    add_allocator_argument(parser)
    args = parser.parse_args(argv)
    apply_allocator(args)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device) if args.device else default_device()
    model = make_model(args.model, device, args.cache_dir)
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    print(f"== bench_update_costs: {args.model}, {n:,} parameters, {device}, {torch.get_num_threads()} thread(s), "
          f"medians of {args.repeats} alternating ==")

    # 1. the optimizer step (random gradients; the state is built by the warm-up step)
    g = torch.Generator(device="cpu").manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(device) * 1e-3
    optimizers = {"loop (default on CPU)": torch.optim.AdamW(params, eps=1e-5, foreach=False),
                  "foreach": torch.optim.AdamW(params, eps=1e-5, foreach=True),
                  "fused (fused_adamw)": torch.optim.AdamW(params, eps=1e-5, fused=True)}
    steps = alternate({k: opt.step for k, opt in optimizers.items()}, args.repeats, device)
    base = steps["loop (default on CPU)"]
    print("optimizer step")
    for k, v in steps.items():
        print(f"  {k:<24}{v:>9.4g} s   {v / base:>5.2f}x the loop")
    del optimizers

    # 2. one training forward + backward of a PPO minibatch, with and without the entropy's backward
    vocab = model.config.vocab_size
    b, tp, tc = args.minibatch, args.prompt_tokens, args.new_tokens
    prompt = torch.randint(0, vocab, (b, tp), generator=g).to(device)
    completion = torch.randint(0, vocab, (b, tc), generator=g).to(device)
    ones_p, ones_c = torch.ones_like(prompt), torch.ones_like(completion)
    advantages = torch.randn(b, tc, generator=g).to(device)
    policy = Policy.__new__(Policy)  # the scoring code alone: evaluate() needs only the model
    policy.model = model

    def update(entropy: str, amp: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> None:
        model.zero_grad(set_to_none=True)
        with amp():  # the forward under `amp`, the backward outside it, as the agents run them
            ev = Policy.evaluate(policy, prompt, ones_p, completion, ones_c, SamplingConfig(), entropy=entropy)
            loss = -(ev.logprobs * advantages).mean() - 0.0 * ev.entropy.mean()  # ent_coef = 0, as PPO's default
        loss.backward()

    model.eval()  # as the agents' updates run: dropout off
    passes = alternate({"entropy differentiated (old)": lambda: update("grad"),
                        "entropy for the logs (new)": lambda: update("value")}, args.repeats, device)
    base = passes["entropy differentiated (old)"]
    entropy_for_logs = passes["entropy for the logs (new)"] / base
    print(f"training forward + backward, {b} x ({tp} + {tc}) tokens")
    for k, v in passes.items():
        print(f"  {k:<30}{v:>9.4g} s   {v / base:>5.2f}x the old default")

    # 3. gradient checkpointing: time and memory of the same pass
    peaks: dict[str, list[float]] = {"kept": [], "checkpointed": []}

    def measured(on: bool) -> None:
        with checkpointed_layers(model, on), PeakMemory(interval=0.005) as memory:
            update("value")
        cuda = memory.cuda_peak_mb
        peaks["checkpointed" if on else "kept"].append(cuda if cuda is not None else memory.peak_rss_mb - memory.start_rss_mb)

    passes = alternate({"kept": lambda: measured(False), "checkpointed": lambda: measured(True)}, args.repeats, device)
    print("activations kept vs checkpointed (the same pass; memory: peak rise of the resident set, or CUDA peak)")
    for k, v in passes.items():
        print(f"  {k:<30}{v:>9.4g} s   {v / passes['kept']:>5.2f}x   {np.median(peaks[k]):>8.0f} MB")
    ratios = {"fused_step": steps["fused (fused_adamw)"] / steps["loop (default on CPU)"],
              "entropy_for_logs": entropy_for_logs, "checkpointed": passes["checkpointed"] / passes["kept"]}

    # 4. a bf16 pass on CPU: attention differentiated on the flash kernel (plain autocast) or the math kernel (ours)
    if device.type == "cpu":
        passes = alternate({"flash kernel (plain autocast)": lambda: update(
                                "value", lambda: torch.autocast("cpu", dtype=torch.bfloat16)),
                            "math kernel (mixed_precision)": lambda: update(
                                "value", lambda: Distributed.autocast("bf16", device))}, args.repeats, device)
        base = passes["flash kernel (plain autocast)"]
        print("bf16 training forward + backward: attention's kernel")
        for k, v in passes.items():
            print(f"  {k:<30}{v:>9.4g} s   {v / base:>5.2f}x the flash kernel")
        ratios["bf16_math_attention"] = passes["math kernel (mixed_precision)"] / base
    return ratios


if __name__ == "__main__":
    main()
