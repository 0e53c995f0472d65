"""Keep freed memory in the process instead of handing it back to the OS (glibc), so large tensors stop page-faulting.

glibc's `malloc` serves every block over 32 MB with a fresh `mmap` and returns it with `munmap` on
free. From a 124M-parameter model up, a PPO iteration allocates such blocks dozens of times: the
embedding's dense gradient (50,257 x 768 floats, 154 MB) at every backward pass, and every tensor
over the vocabulary (log-softmax, its gradient, the bf16 casts of the tied embedding). Each fresh
block is zero-filled page by page by the kernel on first touch, and a profile of a 124M
iteration shows `fill_` of the embedding gradient taking 214 ms where the write itself needs about
15 ms. With mmap off and the heap never trimmed, freed blocks are reused, as a caching allocator
(CUDA's, or jemalloc/tcmalloc via LD_PRELOAD, which Intel's PyTorch tuning guide recommends) does.
Measured at 124M on 2 threads (`experiments/bench_trl.py`, `experiments/README.md`): the update
phase 10.6 -> 8.6 s in fp32, 7.9 -> 5.5 s in bf16. Results are unchanged: only where memory comes
from changes, not what is computed.

The cost is that the resident set stays at its peak (the memory is kept for reuse, not returned),
which is what a training process wants. It is process-wide, so the library never applies it on
import: the `llm-gym` command applies it at start (set ``LLM_GYM_KEEP_FREED_MEMORY=0`` to leave
malloc as it is) and a script can call `keep_freed_memory()` itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

__all__ = ["ENV_VAR", "keep_freed_memory", "keep_freed_memory_from_env"]

_log = logging.getLogger(__name__)

ENV_VAR = "LLM_GYM_KEEP_FREED_MEMORY"
"""Set to 0 (or false/no/off) to stop the `llm-gym` command from applying `keep_freed_memory`."""

# mallopt parameters, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_NEVER = 2**31 - 1  # mallopt takes an int: keep up to 2 GiB free at the top of the heap before trimming


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (the only one with these mallopt parameters), else None."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (no mmap for large blocks, no trimming); True if it was applied.

    A no-op returning False on other C libraries (macOS, musl, Windows), where it logs why at debug level.
    """
    libc = _glibc()
    if libc is None:
        _log.debug("keep_freed_memory: the C library is not glibc; malloc left as it is")
        return False
    ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_NEVER) == 1
    if not ok:
        _log.warning("keep_freed_memory: glibc refused mallopt; malloc left as it is")
    return ok


def keep_freed_memory_from_env() -> bool:
    """`keep_freed_memory()` unless the environment variable `LLM_GYM_KEEP_FREED_MEMORY` turns it off."""
    if os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return keep_freed_memory()
