"""llm_gym's PPO iteration against TRL's PPOTrainer on the same work, in one run, iterations alternating.

The work (issue 18): 16 prompts of exactly 16 tokens, 32 new tokens each (no early stop), a reward model of the
policy's size, 4 PPO epochs of minibatch 8 (8 optimizer steps), at GPT-2 small's shape (124M parameters, random
init, built here from the built-in tokenizer; nothing is downloaded) or at the built-in size.

Contestants, one iteration each per round, in turn (A, B, C, D, A, B, ...), after one warm-up iteration each:

    --precision fp32 (default)
        llm_gym fp32              PPO with its defaults (the path whose result the golden test pins; AdamW's loop)
        llm_gym fp32+fused        the same with `fused_adamw=True`, the optimizer TRL uses (transformers 5.x's
                                  default `adamw_torch_fused`)
        TRL fp32                  trl 1.12's `trl.experimental.ppo.PPOTrainer` with `bf16=False`
        TRL fp32 no gc.collect    the same, its two `gc.collect()` calls per iteration made no-ops (this trainer's)
    --precision bf16
        llm_gym bf16+fused        `mixed_precision="bf16"`, `fused_adamw=True` (their learning result:
                                  experiments/bf16_learning.py)
        llm_gym fp32+fused        the same optimizer in fp32: the bf16 speed-up alone, in the same run
        TRL bf16                  PPOTrainer with `bf16=True` (its default) actually applied (see below)
        TRL bf16 no gc.collect    the same without its gc.collect calls
    and in both
        eager floor               llm_gym's work (the same model FLOPs) written as plainly as eager PyTorch allows,
                                  on token ids, with no bookkeeping (`FloorContestant`): how far above that floor
                                  llm_gym's iteration is, and so what is left to gain without other kernels

TRL's own default is `bf16=True`, but under transformers 5.x it is not applied: PPOTrainer builds its own
`Accelerator()`, which takes mixed precision only from `ACCELERATE_MIXED_PRECISION` (transformers 4.x set that from
`bf16`; 5.x does not). So TRL as shipped runs in fp32, the "TRL fp32" row. The bf16 run sets the variable so that
accelerate autocasts TRL's training forward (its generation, reference, value and reward passes stay fp32, as in
transformers 4.x); the script prints and checks the precision each TRL trainer's accelerator has.

TRL's config also defaults to `gradient_checkpointing=True`, but PPOTrainer's own `train()` never turns it on
(Trainer's loop would); the script prints whether it is active. TRL's `train()` is one loop, so each trainer runs
in its own thread and hands control back at every `on_step_end` (a baton: only one contestant computes at any
time). A TRL iteration is timed from the moment it gets the baton to its next `on_step_end`: its own work plus the
previous iteration's clean-up (`gc.collect`, `del`s), which is part of what an iteration costs. The reference and
the reward model are shared by the TRL trainers (they are frozen), to fit the contestants in memory.

Model FLOPs per iteration (Kaplan et al. 2020's 2N per token forward, 6N forward and backward; B = the
transformer body without embedding tables, H = the LM head, counted where logits are computed; T = prompt + new
tokens, n = new tokens, P = prompts):

    both        generation P (2B T + 2H n); reward model P 2B T
    llm_gym     reference and old log-probs 2 P (2B T + 2H (n + 1)); update 4 epochs x 3 x the same forward
                (the value head sits on the policy's detached features: no second network)
    TRL         reference P (2B T + 2H T) (logits at every position); value model P 2B T;
                update 4 x 3 x P (2B T + 2H T + 2B T) (policy and a separate value network)

TRL is not a dependency of llm_gym: install it for this script only, `pip install trl==1.12.0` (1.12 is the last
release that ships PPO). `--keep-freed-memory` applies `llm_gym.keep_freed_memory()` (the `llm-gym` command's
default) before any thread starts: process-wide, TRL's threads included. A stock TRL trainer's `gc.collect` also
walks the other contestants' Python objects (one process): at the smoke size that is most of its iteration.

    python experiments/bench_trl.py --model gpt2-small --threads 2 --iterations 3 --keep-freed-memory
    python experiments/bench_trl.py --model gpt2-small --threads 2 --iterations 3 --keep-freed-memory --precision bf16
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import sys
import tempfile
import threading
import time
import types
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import transformers
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ppo import MODELS, exact_length_prompts, matmul_peak, model_folder  # noqa: E402  (shared with bench_ppo.py)

from llm_gym import Policy, RewardModel, SamplingConfig, generate_review_task  # noqa: E402
from llm_gym import keep_freed_memory  # noqa: E402
from llm_gym.agents import PPO, PPOConfig  # noqa: E402
from llm_gym.envs import PromptBanditVecEnv  # noqa: E402
from llm_gym.models.text import encode  # noqa: E402


class Contestant:
    """One side of the race: `step()` runs one training iteration and returns its seconds."""

    name: str

    def step(self) -> float:
        raise NotImplementedError


class LlmGymContestant(Contestant):
    def __init__(self, name: str, agent: PPO) -> None:
        self.name, self.agent = name, agent

    def step(self) -> float:
        t = time.perf_counter()
        self.agent.train_iteration()
        return time.perf_counter() - t


class FloorContestant(Contestant):
    """llm_gym's iteration written as plainly as eager PyTorch allows: the floor a framework's overhead is measured
    from. The same work and model FLOPs as llm_gym's PPO (generation with the KV cache, the reward model's pass, the
    reference's and the policy's log-prob passes, 4 epochs of minibatch updates with a value head on the policy's
    detached last hidden state, gradient clipping, fused AdamW), on token ids directly (no text, no padding: every
    prompt has the same length), dropout off throughout and llm_gym's attention-kernel choice in bf16, with none of
    the bookkeeping: no KL estimators beyond k1 in the reward, no statistics, no checks, no logging."""

    def __init__(self, name: str, path: Path, reward_model: torch.nn.Module, prompt_ids: torch.Tensor, args, bf16: bool,
                 seed: int = 0) -> None:
        self.name, self.args, self.bf16 = name, args, bf16
        torch.manual_seed(seed)
        self.policy = AutoModelForCausalLM.from_pretrained(path)
        self.policy.config.use_cache = True
        self.ref = AutoModelForCausalLM.from_pretrained(path).eval().requires_grad_(False)
        self.rm = reward_model
        self.value_head = torch.nn.Linear(self.policy.config.n_embd, 1)
        self.params = [*self.policy.parameters(), *self.value_head.parameters()]
        self.opt = torch.optim.AdamW(self.params, lr=1e-6, fused=True)
        self.prompt_ids = prompt_ids
        self.generator = torch.Generator().manual_seed(seed)
        self.batch = 0

    def _amp(self) -> contextlib.ExitStack:
        """bf16 autocast with llm_gym's kernel choice on CPU: attention on the math kernel (the CPU flash kernel's bf16
        backward is slow; see `Distributed.autocast`)."""
        stack = contextlib.ExitStack()
        if self.bf16:
            stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
            stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        return stack

    def step(self) -> float:
        a, n = self.args, self.args.new_tokens
        t = time.perf_counter()
        start = (self.batch * a.prompts) % (len(self.prompt_ids) - a.prompts + 1)
        prompts = self.prompt_ids[start : start + a.prompts]
        self.batch += 1
        self.policy.eval()
        with torch.no_grad(), self._amp():
            out = self.policy(input_ids=prompts, use_cache=True, logits_to_keep=1)  # as llm_gym: the last position's
            tokens = []
            for i in range(n):  # one token per step, the KV cache carrying the rest
                probs = torch.softmax(out.logits[:, -1].float(), dim=-1)
                tokens.append(torch.multinomial(probs, 1, generator=self.generator))
                if i < n - 1:
                    out = self.policy(input_ids=tokens[-1], past_key_values=out.past_key_values, use_cache=True)
            seq = torch.cat([prompts, *tokens], dim=1)
            score = self.rm(input_ids=seq).logits[:, 0].float()
            targets = seq[:, -n:, None]
            # logits only at the n + 1 positions llm_gym keeps (its FLOP count), the last one unused
            ref_lp = torch.log_softmax(self.ref(input_ids=seq, logits_to_keep=n + 1).logits[:, :-1].float(), -1).gather(-1, targets)[..., 0]
            out = self.policy(input_ids=seq, output_hidden_states=True, use_cache=False, logits_to_keep=n + 1)
            old_lp = torch.log_softmax(out.logits[:, :-1].float(), -1).gather(-1, targets)[..., 0]
            values = self.value_head(out.hidden_states[-1][:, -n - 1 : -1].float())[..., 0]
        rewards = -0.05 * (old_lp - ref_lp)  # k1 KL penalty per token, the score at the last one
        rewards[:, -1] += score
        advantages, last = torch.zeros_like(rewards), torch.zeros(len(rewards))
        for i in reversed(range(n)):  # GAE, gamma 1, lambda 0.95
            next_value = values[:, i + 1] if i + 1 < n else 0.0
            last = rewards[:, i] + next_value - values[:, i] + 0.95 * last
            advantages[:, i] = last
        returns = advantages + values
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        # the update with dropout off, as llm_gym's (the model stays in eval mode; TRL turns dropout off too)
        for _ in range(a.epochs):
            for mb in torch.randperm(a.prompts, generator=self.generator).split(a.minibatch):
                with self._amp():
                    out = self.policy(input_ids=seq[mb], output_hidden_states=True, use_cache=False, logits_to_keep=n + 1)
                lp = torch.log_softmax(out.logits[:, :-1].float(), -1).gather(-1, targets[mb])[..., 0]
                v = self.value_head(out.hidden_states[-1][:, -n - 1 : -1].detach().float())[..., 0]
                ratio = torch.exp(lp - old_lp[mb])
                adv = advantages[mb]
                policy_loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.2)).mean()
                loss = policy_loss + 0.5 * (v - returns[mb]).pow(2).mean()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.params, 1.0)
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t


class TRLContestant(Contestant, TrainerCallback):
    """A TRL trainer whose `train()` runs in its own thread and yields at every `on_step_end`."""

    def __init__(self, name: str, make_trainer: Callable[[], object], threads: int) -> None:
        self.name = name
        self.trainer = make_trainer()
        self.trainer.add_callback(self)
        for quiet in (transformers.PrinterCallback, transformers.ProgressCallback):  # no metrics dict per iteration
            self.trainer.remove_callback(quiet)
        self._go, self._done = threading.Semaphore(0), threading.Semaphore(0)
        self._started = 0.0
        self._last = 0.0
        self._error: BaseException | None = None
        self._threads = threads
        self.thread = threading.Thread(target=self._train, name=name, daemon=True)
        self.thread.start()

    def _train(self) -> None:
        torch.set_num_threads(self._threads)  # the intra-op thread count is per thread
        self._go.acquire()
        self._started = time.perf_counter()
        try:
            self.trainer.train()
        except BaseException as err:  # handed to the main thread
            self._error = err
        self._done.release()

    def on_step_end(self, args, state, control, **kwargs):  # TrainerCallback
        self._last = time.perf_counter() - self._started
        self._done.release()
        self._go.acquire()
        self._started = time.perf_counter()
        return control

    def step(self) -> float:
        self._go.release()
        self._done.acquire()
        if self._error is not None:
            raise RuntimeError(f"{self.name} failed") from self._error
        return self._last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=MODELS, default="gpt2-small")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--minibatch", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per contestant (after 1 warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep-freed-memory", action="store_true", help="apply llm_gym.keep_freed_memory() first")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="fp32: llm_gym's fp32 paths against TRL with bf16=False; bf16: llm_gym's bf16 + fused "
                             "AdamW (and fp32 + fused) against TRL with bf16 applied")
    parser.add_argument("--only", default=None, help="comma-separated contestant names to run (default: all)")
    args = parser.parse_args()
    if args.prompts % args.minibatch:
        parser.error(f"--prompts {args.prompts} must be a multiple of --minibatch {args.minibatch} (both sides' minibatches)")
    try:
        import trl
        from trl.experimental.ppo import PPOConfig as TRLPPOConfig
        from trl.experimental.ppo import PPOTrainer
        from trl.experimental.ppo import ppo_trainer as trl_ppo_module
    except ImportError as err:
        raise SystemExit(f"this benchmark needs TRL 1.12 (not a dependency of llm_gym): pip install trl==1.12.0 ({err})")
    kept = keep_freed_memory() if args.keep_freed_memory else False
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")

    scratch = tempfile.TemporaryDirectory()
    path, config = model_folder(args.model, args.cache_dir, Path(scratch.name) / "model")
    tokenizer = AutoTokenizer.from_pretrained(path)
    task = generate_review_task(config.task)
    # the same prompts on both sides: texts of exactly --prompt-tokens tokens as llm_gym encodes them, and those ids
    texts = exact_length_prompts(tokenizer, task.prompts, args.prompt_tokens)[: 4 * args.prompts]
    ids = encode(tokenizer, texts)

    # llm_gym: one shared reward model; each agent its own policy (and reference copy)
    rm = RewardModel.from_pretrained(path, device=device)
    rm.eval()

    rm_bf16 = (RewardModel.from_pretrained(path, device=device, dtype=torch.bfloat16).eval()
               if args.precision == "bf16" else rm)

    def llm_gym_agent(**options) -> PPO:
        ppo = PPOConfig(sampling=SamplingConfig(max_new_tokens=args.new_tokens, stop_at_eos=False),
                        n_epochs=args.epochs, minibatch_size=args.minibatch, log_samples_every=0, **options)
        # the bf16 agent's environment scores with the reward model loaded in bf16, as TRL's and the floor's do
        scorer = rm_bf16 if options.get("mixed_precision") == "bf16" else rm
        env = PromptBanditVecEnv(texts, scorer, num_envs=args.prompts)
        return PPO(Policy.from_pretrained(path, device=device), env, ppo, rng=np.random.default_rng(0))

    # TRL: one shared reference and reward model; each trainer its own policy and value network
    import datasets

    tokenizer.padding_side = "left"
    dataset = datasets.Dataset.from_dict({"input_ids": ids})
    trl_ref = AutoModelForCausalLM.from_pretrained(path)
    # the reward model is the user's input, the same on every side: loaded in bf16 in bf16 runs (`dtype=`)
    trl_rm = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, dtype=torch.bfloat16 if args.precision == "bf16" else None)
    real_collect = gc.collect
    no_gc_threads: set[str] = set()
    # the module's `gc` seen by TRL's train(): a no-op collect for the trainer without gc, the real one otherwise
    trl_ppo_module.gc = types.SimpleNamespace(
        collect=lambda *a: 0 if threading.current_thread().name in no_gc_threads else real_collect(*a))

    def trl_trainer(out: str, bf16: bool) -> Callable[[], object]:
        """TRL's PPOTrainer on the same work, its defaults otherwise (`bf16=True` is its own default)."""
        def make():
            trl_args = TRLPPOConfig(
                output_dir=f"{scratch.name}/{out}", bf16=bf16, per_device_train_batch_size=args.prompts, gradient_accumulation_steps=1,
                num_mini_batches=args.prompts // args.minibatch, num_ppo_epochs=args.epochs,
                response_length=args.new_tokens, local_rollout_forward_batch_size=args.prompts,
                total_episodes=args.prompts * (args.iterations + 2), stop_token=None, missing_eos_penalty=None,
                num_sample_generations=0, report_to="none", save_strategy="no", logging_steps=10**6,
                use_cpu=True, seed=0, disable_tqdm=True)
            return PPOTrainer(
                args=trl_args, processing_class=tokenizer,
                model=AutoModelForCausalLM.from_pretrained(path), ref_model=trl_ref, reward_model=trl_rm,
                value_model=AutoModelForSequenceClassification.from_pretrained(path, num_labels=1),
                train_dataset=dataset)
        return make

    bf16 = args.precision == "bf16"
    tag = "bf16" if bf16 else "fp32"
    # PPOTrainer's own Accelerator() reads its precision from here only (see the docstring)
    os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16" if bf16 else "no"
    ours = {"llm_gym bf16+fused": dict(mixed_precision="bf16", fused_adamw=True)} if bf16 else {"llm_gym fp32": {}}
    ours["llm_gym fp32+fused"] = dict(fused_adamw=True)
    prompt_ids = torch.tensor(ids)
    builders: dict[str, Callable[[], Contestant]] = {
        **{name: (lambda name=name, options=options: LlmGymContestant(name, llm_gym_agent(**options)))
           for name, options in ours.items()},
        f"eager floor {tag}": lambda: FloorContestant(f"eager floor {tag}", path, trl_rm, prompt_ids, args, bf16),
        f"TRL {tag}": lambda: TRLContestant(f"TRL {tag}", trl_trainer("stock", bf16), args.threads),
        f"TRL {tag} no gc.collect": lambda: TRLContestant(
            f"TRL {tag} no gc.collect", trl_trainer("nogc", bf16), args.threads),
    }
    wanted = set(args.only.split(",")) if args.only else set(builders)
    if wanted - set(builders):
        parser.error(f"--only: unknown contestant(s) {sorted(wanted - set(builders))}; these run: {list(builders)}")
    no_gc_threads.update(name for name in builders if "no gc.collect" in name)
    contestants = [build() for name, build in builders.items() if name in wanted]
    for c in contestants:
        if isinstance(c, TRLContestant) and c.trainer.accelerator.mixed_precision != ("bf16" if bf16 else "no"):
            raise SystemExit(f"{c.name}: its accelerator computes in {c.trainer.accelerator.mixed_precision!r}, "
                             f"not {tag}; the comparison would not be what it says")

    peaks = {"fp32": matmul_peak(device)}
    if bf16:
        peaks["bf16"] = matmul_peak(device, dtype=torch.bfloat16)
    for c in contestants:  # warm-up
        c.step()
    times: dict[str, list[float]] = {c.name: [] for c in contestants}
    for _ in range(args.iterations):
        for c in contestants:
            times[c.name].append(c.step())
            print(f"  {c.name:<34}{times[c.name][-1]:8.2f} s", flush=True)

    # model FLOPs (see the docstring)
    lm = AutoModelForCausalLM.from_pretrained(path)
    n_all = sum(p.numel() for p in lm.parameters())
    head = lm.get_output_embeddings().weight.numel()
    body = n_all - head - sum(p.numel() for n_, p in lm.named_parameters() if n_.endswith("wpe.weight"))
    del lm
    P, n, T = args.prompts, args.new_tokens, args.prompt_tokens + args.new_tokens
    generation = P * (2 * body * T + 2 * head * n)
    reward = P * 2 * body * T
    ours_forward = P * (2 * body * T + 2 * head * (n + 1))
    flops = {
        "llm_gym": generation + reward + 2 * ours_forward + args.epochs * 3 * ours_forward,
        "TRL": generation + reward + P * (2 * body * T + 2 * head * T) + P * 2 * body * T
        + args.epochs * 3 * P * (2 * body * T + 2 * head * T + 2 * body * T),
    }

    print("== bench_trl: one PPO iteration, llm_gym vs TRL, alternating in one run ==")
    print(f"device        cpu ({platform.machine()}), threads {args.threads}; matmul peak "
          + ", ".join(f"{k} {v:,.0f}" for k, v in peaks.items()) + " GFLOP/s (2048 x 2048, measured now; a row's share "
          "is of its own precision's peak)")
    print(f"versions      torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}")
    print(f"allocator     {'keep_freed_memory() applied' if kept else 'glibc default'}")
    trl_side = [c for c in contestants if isinstance(c, TRLContestant)]
    if trl_side:  # its config says gradient_checkpointing=True, but PPOTrainer's own train() never turns it on
        on = {c.trainer.model.policy.is_gradient_checkpointing for c in trl_side}
        print(f"TRL           bf16={bf16}, its accelerator's mixed precision: "
              f"{sorted({c.trainer.accelerator.mixed_precision for c in trl_side})}; gradient checkpointing active: "
              f"{sorted(on)} (config: {trl_side[0].trainer.args.gradient_checkpointing}); optimizer fused: "
              f"{sorted({bool(g.get('fused')) for c in trl_side for g in c.trainer.optimizer.param_groups})}")
    print(f"model         {args.model}: {n_all:,} parameters; work: {P} prompts x ({args.prompt_tokens} + {n}) tokens, "
          f"reward model of the same size{' (bf16 weights, every side)' if bf16 else ''}, {args.epochs} epochs, "
          f"minibatch {args.minibatch}")
    medians = {name: float(np.median(ts)) for name, ts in times.items()}
    ours_run = [name for name in ours if name in medians]
    print(f"{'contestant':<26}{'median s':>10}{'min':>8}{'max':>8}{'TFLOP':>8}{'GFLOP/s':>9}{'of peak':>9}"
          + "".join(f"{'/ ' + name[8:]:>14}" for name in ours_run))
    for name, ts in times.items():
        f = flops["TRL" if name.startswith("TRL") else "llm_gym"]  # the floor does llm_gym's work
        computes_in = "bf16" if bf16 and (name.startswith(("TRL", "eager floor")) or name == "llm_gym bf16+fused") else "fp32"
        print(f"{name:<26}{medians[name]:>10.2f}{min(ts):>8.2f}{max(ts):>8.2f}{f / 1e12:>8.2f}{f / medians[name] / 1e9:>9.1f}"
              f"{f / medians[name] / 1e9 / peaks[computes_in]:>8.0%}"
              + "".join(f"{medians[name] / medians[o]:>13.2f}x" for o in ours_run))
    if bf16 and {"llm_gym fp32+fused", "llm_gym bf16+fused"} <= medians.keys():
        print(f"llm_gym bf16 is {medians['llm_gym fp32+fused'] / medians['llm_gym bf16+fused']:.2f}x as fast as fp32 "
              "with the same fused AdamW, in this run (the issue's bf16 bar: >= 1.5x)")
    print(f"(median of {args.iterations} alternating iterations each; the '/ ...' columns are that row's time over the "
          "llm_gym row named; the issue's bars: TRL >= 2.5x, TRL without gc.collect >= 2x; a row's share is of the "
          "peak of the precision it computes in)")
    scratch.cleanup()


if __name__ == "__main__":
    main()
