"""Which attention kernels run: the enabled set, and a reusable context that sets it.

PyTorch's scaled-dot-product attention picks a kernel (flash, memory-efficient, math, cuDNN) among those that
process-wide flags enable; `torch.nn.attention.sdpa_kernel` restricts them within a block. Two callers need that
block again and again: bf16 on CPU (`Distributed.autocast`) runs attention on the math kernel from a context an agent
may enter more than once, and gradient checkpointing (`llm_gym.models.lm.checkpointed_layers`) re-enters the
forward's kernels each time it recomputes a layer in the backward pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch.nn.attention import SDPBackend

__all__ = ["ALL_ATTENTION_KERNELS", "FreshContexts", "enabled_attention_kernels"]

# the kernels and the public getters of their flags (CPU and CUDA alike), those this torch has
_KERNEL_FLAGS = {getattr(SDPBackend, kernel): flag for kernel, flag in [
    ("FLASH_ATTENTION", "flash_sdp_enabled"), ("EFFICIENT_ATTENTION", "mem_efficient_sdp_enabled"),
    ("MATH", "math_sdp_enabled"), ("CUDNN_ATTENTION", "cudnn_sdp_enabled")]
    if hasattr(SDPBackend, kernel) and hasattr(torch.backends.cuda, flag)}
ALL_ATTENTION_KERNELS = frozenset(_KERNEL_FLAGS)
"""The kernels whose flags are read; all of them are enabled by torch's defaults."""


def enabled_attention_kernels() -> frozenset[SDPBackend]:
    """The attention kernels enabled now (what `sdpa_kernel` restricts)."""
    return frozenset(k for k in ALL_ATTENTION_KERNELS if getattr(torch.backends.cuda, _KERNEL_FLAGS[k])())


class FreshContexts(contextlib.ExitStack):
    """Enters a fresh context manager from each factory at every `with` and leaves them in reverse order.

    Reusable where one `sdpa_kernel(...)` (a generator's context) can be entered only once; one instance is not
    entered twice at the same time."""

    def __init__(self, *factories: Callable[[], contextlib.AbstractContextManager[object]]) -> None:
        super().__init__()
        self.factories = factories

    def __enter__(self) -> FreshContexts:
        super().__enter__()
        for factory in self.factories:
            self.enter_context(factory())
        return self
