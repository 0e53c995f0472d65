"""Data parallelism on Hugging Face accelerate: one small object that every trainer receives.

`Distributed` is what SFT, reward-model training, PPO and the preference loop are given
(explicitly, as an argument; the default is the single-process stand-in, so nothing
changes without a launcher). Under `accelerate launch` or `torchrun` it wraps an
`accelerate.Accelerator`: the process group is initialised from the launcher's
environment, each process gets its own device, trained modules are wrapped in
`DistributedDataParallel` (which averages gradients), and the helpers below reduce
metrics and broadcast decisions so that every process takes the same path.

The rules the trainers follow, which make a run with N processes compute what one process
computes on the same global batch (to float precision):

- config batch sizes are *global*: a batch is split over the processes with `shard`
  (contiguous, deterministic, as equal as possible);
- every process keeps the same numpy rng stream (same seed, same draws), so shuffles,
  splits and prompt batches agree without communication;
- a loss that is a mean over tokens (or comparisons) is normalised by the *global* count:
  each process back-propagates `world_size * local_sum / global_count`, and DDP's gradient
  average turns that into `global_sum / global_count`;
- statistics that steer training (advantage and score whitening, the KL controller's KL)
  are computed from all-reduced sums, so every process holds the same values;
- only the main process writes logs and checkpoints (`make_logger`, `main_process_only`),
  and checkpoints are taken from the unwrapped model, so they load with any process count;
- a reward model in the environment is scored shard by shard (`sharded`);
- a process that fails leaves the group at once (no final barrier), so the launcher stops
  the others instead of every process waiting forever in its next collective.

Example (the same script runs with `python script.py` or `accelerate launch script.py`):
    >>> dist = Distributed.from_environment()  # doctest: +SKIP
    >>> policy = Policy.from_pretrained(path, device=dist.device)  # doctest: +SKIP
    >>> SFTTrainer(SFTConfig(), rng=np.random.default_rng(0), distributed=dist).fit(policy, demos)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from os import PathLike
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from llm_gym.infra.attention import FreshContexts
from llm_gym.infra.logger import Logger
from llm_gym.core.reward import RewardFn, _name, score_batch

__all__ = ["Distributed", "MixedPrecision", "check_training_options", "resolve_mixed_precision"]

_log = logging.getLogger(__name__)

MixedPrecision = Literal["no", "bf16"]
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def check_training_options(owner: str, mixed_precision: object, gradient_accumulation_steps: object) -> None:
    """Validate the two options every trainer config shares (raises `ValueError` naming `owner`'s field)."""
    if mixed_precision not in ("no", "bf16"):
        raise ValueError(f"{owner}.mixed_precision must be 'no' or 'bf16', got {mixed_precision!r}")
    g = gradient_accumulation_steps
    if isinstance(g, bool) or not isinstance(g, int) or g < 1:
        raise ValueError(f"{owner}.gradient_accumulation_steps must be a positive int, got {g!r}")


def resolve_mixed_precision(mixed_precision: MixedPrecision, device: torch.device) -> MixedPrecision:
    """The precision that will actually be used on `device`: bf16 falls back to "no" with a warning where unsupported.

    bf16 autocast is used on CUDA devices that support bf16 (Ampere and newer) and on CPU
    (PyTorch's CPU autocast; fast only on CPUs with bf16 instructions). Elsewhere (older
    GPUs, MPS) training runs in float32 and a warning is logged: a config stays portable
    between machines rather than failing on the smaller one.
    """
    if mixed_precision == "no":
        return "no"
    supported = device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_bf16_supported())
    if not supported:
        _log.warning("mixed_precision='bf16' is not supported on %s; training in float32 instead", device)
        return "no"
    return "bf16"


class Distributed:
    """The process group a trainer runs in: a single process by default, or N data-parallel ones.

    Args:
        accelerator: an `accelerate.Accelerator`; None = the single-process stand-in (no
            launcher, no process group, every helper is the identity).

    Use `Distributed.from_environment()` in scripts: it builds the accelerate-backed form
    when a launcher started several processes, and the stand-in otherwise.
    """

    def __init__(self, accelerator: Any | None = None) -> None:
        self.accelerator = accelerator

    @classmethod
    def from_environment(cls, cpu: bool = False) -> Distributed:
        """Accelerate-backed when launched with several processes (`WORLD_SIZE` > 1), else single-process.

        Args:
            cpu: force CPU processes (gloo backend) even where a GPU is present.
        """
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls(None)
        from accelerate import Accelerator

        # without a GPU, accelerate only forms a process group of CPU processes when told cpu=True
        dist = cls(Accelerator(cpu=cpu or not torch.cuda.is_available()))
        if dist.world_size <= 1:
            raise RuntimeError(
                f"launched with WORLD_SIZE={os.environ['WORLD_SIZE']} but accelerate formed no process group; "
                "launch with `accelerate launch` or `torchrun` (add --cpu on a machine without GPUs)"
            )
        return dist

    # ------------------------------------------------------------------ who am I
    @property
    def world_size(self) -> int:
        """Number of processes."""
        return 1 if self.accelerator is None else int(self.accelerator.num_processes)

    @property
    def rank(self) -> int:
        """This process's index, 0 .. world_size - 1."""
        return 0 if self.accelerator is None else int(self.accelerator.process_index)

    @property
    def is_main(self) -> bool:
        """True on the one process that logs, writes checkpoints and talks to humans."""
        return self.rank == 0

    @property
    def device(self) -> torch.device | None:
        """This process's device (None for the stand-in: components keep their own default)."""
        return None if self.accelerator is None else torch.device(self.accelerator.device)

    def __repr__(self) -> str:
        return f"Distributed(rank={self.rank}, world_size={self.world_size})"

    # ------------------------------------------------------------------ data
    def shard(self, items: Sequence[T]) -> list[T]:
        """This process's contiguous slice of `items` (sizes differ by at most one; may be empty)."""
        n, w, r = len(items), self.world_size, self.rank
        start, stop = r * n // w, (r + 1) * n // w
        return list(items[start:stop])

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of `tensor` over processes (a new tensor; the identity with one process)."""
        if self.world_size == 1:
            return tensor
        out = tensor.detach().clone()
        torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.SUM)
        return out

    def sum_float(self, value: float) -> float:
        """Sum of a Python number over processes (float64)."""
        return self.sum_floats(value)[0]

    def sum_floats(self, *values: float) -> tuple[float, ...]:
        """Sums of several Python numbers over processes, in one all-reduce (float64)."""
        if self.world_size == 1:
            return tuple(float(v) for v in values)
        sums = self.all_reduce_sum(torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device))
        return tuple(sums.tolist())

    def micro_shards(self, items: Sequence[T], steps: int) -> list[tuple[list[T], float]]:
        """This process's shard of the global batch `items`, cut into `steps` micro-batches, each
        with a weight: 1.0, or 0.0 for a stand-in (the batch's first item) where the piece is
        empty, so that every process still runs every forward/backward and joins every gradient
        all-reduce (more processes or micro-steps than items). Scale a stand-in's loss by 0."""
        return [(p, 1.0) if p else (list(items[:1]), 0.0) for p in micro_batches(self.shard(items), steps)]

    def reduce_mean(self, metrics: Mapping[str, float], weight: float = 1.0) -> dict[str, float]:
        """Metrics averaged over processes, each process's values weighted by `weight` (e.g. its sample count).

        NaN values (a process that had nothing to measure) are left out of the mean; a key
        that is NaN everywhere stays NaN.
        """
        keys = sorted(metrics)
        if self.world_size == 1 or not keys:
            return {k: float(metrics[k]) for k in keys}
        vals = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=self.device)
        ok = torch.isfinite(vals).to(torch.float64) * float(weight)
        sums = self.all_reduce_sum(torch.stack([torch.where(ok > 0, vals, 0.0) * ok, ok]))
        mean = torch.where(sums[1] > 0, sums[0] / sums[1].clamp(min=1e-300), torch.full_like(sums[0], float("nan")))
        return {k: float(v) for k, v in zip(keys, mean.tolist())}

    def broadcast_object(self, obj: T, src: int = 0) -> T:
        """The main process's (`src`'s) `obj` on every process (any picklable object)."""
        if self.world_size == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=src, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def gather_object(self, obj: T) -> list[T]:
        """`[obj of rank 0, obj of rank 1, ...]` on every process."""
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def sharded(self, reward_fn: RewardFn) -> RewardFn:
        """`reward_fn` computed data-parallel: each process scores its shard of the batch and the
        scores are gathered, so every process gets the whole batch's scores (in order) for
        1/world_size of the work, e.g. a reward model in PPO's environment. Every process must
        call it on the same batch at the same time. `reward_fn` itself with one process."""
        return reward_fn if self.world_size == 1 else _ShardedReward(reward_fn, self)

    def barrier(self) -> None:
        """Wait until every process reaches this point."""
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ writing
    def main_process_only(self, fn: F) -> F:
        """Wrap `fn` so that it runs on the main process only; every process waits for it to finish.

        Returns the main process's result on every process (broadcast).
        """

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = fn(*args, **kwargs) if self.is_main else None
            self.barrier()
            return self.broadcast_object(result)

        return wrapper  # type: ignore[return-value]

    def make_logger(self, log_dir: str | PathLike[str] | None, purge_step: int | None = None) -> Logger:
        """A `Logger` writing to `log_dir` on the main process, an in-memory one elsewhere."""
        return Logger(log_dir if self.is_main else None, purge_step=purge_step)

    # ------------------------------------------------------------------ training
    def prepare(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> tuple[torch.nn.Module, Any]:
        """(model to run training forwards through, optimizer): DDP-wrapped under a launcher, unchanged otherwise.

        The optimizer is returned unchanged: it steps the unwrapped parameters, which DDP
        shares, and keeps a plain state dict for checkpoints. Place the model on `device`
        before calling (components do).
        """
        if self.world_size == 1:
            return model, optimizer
        if not any(p.requires_grad for p in model.parameters()):
            return model, optimizer
        return self.accelerator.prepare_model(model, device_placement=False), optimizer

    def close(self) -> None:
        """Leave the process group (after every process got here). A process that exits while the
        group's communication threads are still up can abort at interpreter shutdown. Idempotent."""
        if self.accelerator is not None and torch.distributed.is_initialized():
            self.barrier()
            torch.distributed.destroy_process_group()

    def __enter__(self) -> Distributed:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
        elif self.accelerator is not None and torch.distributed.is_initialized():
            # Failing: no barrier, since the other processes are elsewhere (in a collective, or
            # still running) and would wait forever for this one. Leave the group and let the
            # error end the process; the launcher then stops the others.
            torch.distributed.destroy_process_group()

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The plain module inside a prepared one (what checkpoints are written from)."""
        return model if self.accelerator is None else self.accelerator.unwrap_model(model)

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate `loss` (gradients are averaged over processes by the wrapped modules)."""
        if self.accelerator is None:
            loss.backward()
        else:
            self.accelerator.backward(loss)

    @contextlib.contextmanager
    def no_sync(self, *models: torch.nn.Module, enabled: bool = True) -> Iterator[None]:
        """Skip the gradient all-reduce of `models` inside the block (for accumulation micro-steps)."""
        with contextlib.ExitStack() as stack:
            if enabled and self.world_size > 1:
                for m in models:
                    if isinstance(m, torch.nn.parallel.DistributedDataParallel):
                        stack.enter_context(m.no_sync())
            yield

    @staticmethod
    def autocast(mixed_precision: MixedPrecision, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast on `device` when `mixed_precision` resolves to bf16, else a no-op context.

        On CPU the block also runs attention on PyTorch's math kernel: the CPU flash-attention kernel's bf16
        backward is slow. With the allocator setting the `llm-gym` command applies (`keep_freed_memory`), a bf16
        forward + backward at GPT-2-small's shape takes 0.72x the flash kernel's time on the math kernel (0.96-0.98x
        without the setting; `bench_update_costs.py`), and a 124M PPO iteration 0.84x (its update 8.1 s against
        10.3 s, generation alike; `bench_bf16_attention.py`). Every pass uses the math
        kernel, so the old log-probs and the first training pass agree (the ratio is 1 before the first step, to
        rounding). The cost: attention's T x T weights are materialised per layer, where the flash kernel tiles them
        (memory at long contexts; gradient checkpointing recomputes them layer by layer). The kernel flags are
        process-wide: another thread running attention during the block gets the math kernel too, and a kernel a
        user switched off is overridden inside the block.
        """
        if resolve_mixed_precision(mixed_precision, device) == "bf16":
            if device.type == "cpu":  # reusable like torch.autocast: the agents keep one and enter it later
                return FreshContexts(lambda: torch.autocast("cpu", dtype=torch.bfloat16),
                                     lambda: sdpa_kernel([SDPBackend.MATH]))
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


class _ShardedReward:
    """A reward function scored shard by shard across the processes (see `Distributed.sharded`)."""

    def __init__(self, reward_fn: RewardFn, dist: Distributed) -> None:
        self.reward_fn, self.dist = reward_fn, dist
        self.__qualname__ = f"sharded({_name(reward_fn)})"  # how score_batch names it in errors

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        if len(prompts) != len(completions):
            raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions; they must pair up")
        n, dist = len(prompts), self.dist
        prompts, completions = dist.shard(prompts), dist.shard(completions)
        error: BaseException | None = None
        try:
            mine: list[float] | str = score_batch(self.reward_fn, prompts, completions).tolist() if prompts else []
        except Exception as exc:  # every process must reach the gather, or the others wait for this one forever
            error = exc
            mine = f"{type(exc).__name__}: {exc}"
        parts = dist.gather_object(mine)  # shards are contiguous, in rank order
        failed = [(r, p) for r, p in enumerate(parts) if isinstance(p, str)]
        if failed:
            # shard r starts at item r * n // world_size of the batch (`Distributed.shard`)
            where = "; ".join(f"process {r}, whose shard starts at batch item {r * n // dist.world_size}: {msg}"
                              for r, msg in failed)
            raise ValueError(f"{self.__qualname__} failed on its shard of the batch ({where})") from error
        return np.asarray([v for part in parts for v in part], dtype=np.float64)


def micro_batches(items: Sequence[T], steps: int) -> list[list[T]]:
    """`items` cut into `steps` contiguous pieces, as equal as possible (some may be empty)."""
    n = len(items)
    return [list(items[i * n // steps : (i + 1) * n // steps]) for i in range(steps)]
