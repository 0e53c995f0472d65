"""One optimizer step over a global batch: micro-batches, data parallelism, mixed precision, clipping, the NaN guard.

Every trainer in llm_gym (PPO, RLOO, GRPO, DPO, SFT, the reward model) takes its steps
through `UpdateStep`, so they share one answer to each of these questions:

* *Gradient accumulation and data parallelism.* A global batch is split over processes and
  each process's share into micro-batches. A micro-batch's loss is its *sum* over the units
  the loss averages (tokens, sequences, comparisons) times `scale(global_count)` =
  `world_size / global_count`: DDP averages gradients over processes, so after the sync the
  gradient is that of the mean over the whole global batch, whatever the process count or
  the number of micro-batches. Gradients sync only on the last micro-batch (`no_sync`).
* *Mixed precision.* `autocast()` runs forward passes in bf16 where the device supports it.
* *Clipping.* The global gradient norm is clipped to `max_grad_norm` (None: not clipped).
* *The NaN/inf guard.* A non-finite loss or loss part stops the step before the optimizer
  runs (`TrainingDivergedError` names the parts and their values), as does a non-finite
  gradient norm: the weights and the last checkpoint are left as they were.

    >>> update = UpdateStep(optimizer, [model], distributed=dist)          # doctest: +SKIP
    >>> with update.accumulate():                                         # doctest: +SKIP
    ...     for k, mb in enumerate(micro_batches):
    ...         with update.micro(sync=k + 1 == len(micro_batches)):
    ...             with update.autocast():
    ...                 loss_sum = model(mb).sum()
    ...             update.backward(loss_sum * update.scale(global_count), {"loss": loss_sum})
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from llm_gym.infra.distributed import Distributed, MixedPrecision, resolve_mixed_precision

__all__ = ["TrainingDivergedError", "UpdateStep"]


class TrainingDivergedError(FloatingPointError):
    """A loss or the gradient became NaN or infinite; the update was stopped before the optimizer step."""


class UpdateStep:
    """Optimizer steps for one trainer: see the module docstring.

    Args:
        optimizer: the optimizer (its parameter groups are what is trained).
        models: the modules whose forward passes make the loss, as `Distributed.prepare` returned them
            (their gradient sync is deferred to the last micro-batch).
        distributed: the process group; None = a single process.
        max_grad_norm: clip the global gradient norm to this (None: no clipping).
        mixed_precision: "bf16" or "no" (resolved for the device of the first parameter).
        scheduler: a learning-rate scheduler stepped after each optimizer step.
        hint: what to try when training diverges, appended to the error message.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        models: Sequence[torch.nn.Module],
        *,
        distributed: Distributed | None = None,
        max_grad_norm: float | None = None,
        mixed_precision: MixedPrecision = "no",
        scheduler: Any | None = None,
        hint: str = "lower the learning rate",
    ) -> None:
        self.optimizer, self.models, self.scheduler, self.hint = optimizer, list(models), scheduler, hint
        self.dist = distributed if distributed is not None else Distributed()
        self.max_grad_norm = max_grad_norm
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.device = self.params[0].device if self.params else torch.device("cpu")
        self.mixed_precision = resolve_mixed_precision(mixed_precision, self.device)
        self.steps = 0
        """Optimizer steps taken."""
        self.grad_norm = float("nan")
        """The gradient norm (before clipping) of the last step."""
        self.context = ""
        """Where training is, for error messages (e.g. "at iteration 3"); set by the trainer."""

    def scale(self, global_count: float) -> float:
        """The factor that turns a micro-batch's loss *sum* into its share of the global mean (see the module docstring)."""
        return self.dist.world_size / max(float(global_count), 1.0)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed precision for a forward pass (a no-op with "no")."""
        return Distributed.autocast(self.mixed_precision, self.device)

    def micro(self, sync: bool) -> contextlib.AbstractContextManager[Any]:
        """Around one micro-batch's forward and backward: gradients sync across processes only when `sync`."""
        return self.dist.no_sync(*self.models, enabled=not sync)

    def backward(self, loss: torch.Tensor, parts: Mapping[str, torch.Tensor] | None = None) -> None:
        """Back-propagate `loss` after checking it, and every tensor in `parts`, is finite."""
        checked = {"loss": loss, **(parts or {})}
        bad = [k for k, v in checked.items() if not torch.isfinite(v).all()]
        if bad:
            values = ", ".join(f"{k}={float(v.detach().float().mean())}" for k, v in checked.items())
            where = f" {self.context}" if self.context else ""
            raise TrainingDivergedError(
                f"non-finite {', '.join(bad)}{where} ({values}); the update was stopped before the optimizer step "
                f"and the last checkpoint is untouched. {self.hint[:1].upper()}{self.hint[1:]}."
            )
        self.dist.backward(loss)

    @contextlib.contextmanager
    def accumulate(self) -> Iterator[UpdateStep]:
        """One optimizer step: gradients are zeroed on entry; on a clean exit they are clipped, checked and applied."""
        self.optimizer.zero_grad(set_to_none=True)
        yield self
        if self.max_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        else:
            norm = torch.linalg.vector_norm(
                torch.stack([p.grad.detach().norm() for p in self.params if p.grad is not None] or [torch.zeros(())]))
        if not torch.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            where = f" {self.context}" if self.context else ""
            raise TrainingDivergedError(f"non-finite gradient norm{where}; the optimizer step was skipped. "
                                        f"{self.hint[:1].upper()}{self.hint[1:]}.")
        self.grad_norm = float(norm)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.steps += 1
