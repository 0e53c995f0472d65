"""Keep freed memory in the process instead of handing it back to the OS (glibc), so large tensors stop page-faulting.

glibc's `malloc` serves every block over 32 MB with a fresh `mmap` and returns it with `munmap` on
free. From a 124M-parameter model up, a PPO iteration allocates such blocks dozens of times: the
embedding's dense gradient (50,257 x 768 floats, 154 MB) at every backward pass, and every tensor
over the vocabulary (log-softmax, its gradient, the bf16 casts of the tied embedding). Each fresh
block is zero-filled page by page by the kernel on first touch, and a profile of a 124M
iteration shows `fill_` of the embedding gradient taking 214 ms where the write itself needs about
15 ms. With mmap off, the heap never trimmed below 2 GiB of free space and one heap for every
thread (glibc's per-thread heaps are capped at 64 MiB a region, so a thread's larger blocks would
still be mmapped), freed blocks are reused, as a caching allocator (CUDA's, or jemalloc/tcmalloc via
LD_PRELOAD, which Intel's PyTorch tuning guide recommends) does. At 124M on 2 threads a PPO iteration
took 18.8 s without it and 15.6 s with it, in two runs of `experiments/bench_trl.py`
(`experiments/README.md`). Results are unchanged: only where memory comes from, not what is computed.

The cost: the resident set stays at its peak (the memory is kept for reuse, not returned), which is
what a training process wants, and it can grow past the peak when freed space inside the heap is
too small for later, larger blocks (tensors that keep growing while small ones stay alive between
them). It is process-wide, so the library never applies it on import: the `llm-gym` command applies
it at start (set ``LLM_GYM_KEEP_FREED_MEMORY=0`` to leave malloc as it is) and a script can call
`keep_freed_memory()` itself, before it starts threads.
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
_M_ARENA_MAX = -8
_TRIM_ABOVE = 2**31 - 1  # mallopt takes an int: the heap is trimmed only above 2 GiB of free space at its top


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
    """Make glibc keep freed memory for reuse (no mmap for large blocks, no trimming below 2 GiB, one heap for all
    threads); True if it was applied. Threads started before the call keep the heaps they have.

    A no-op returning False on other C libraries (macOS, musl, Windows), where it logs why at debug level.
    """
    libc = _glibc()
    if libc is None:
        _log.debug("keep_freed_memory: the C library is not glibc; malloc left as it is")
        return False
    settings = {"M_ARENA_MAX": (_M_ARENA_MAX, 1), "M_MMAP_MAX": (_M_MMAP_MAX, 0),
                "M_TRIM_THRESHOLD": (_M_TRIM_THRESHOLD, _TRIM_ABOVE)}
    refused = [name for name, (param, value) in settings.items() if libc.mallopt(param, value) != 1]
    if refused:
        _log.warning("keep_freed_memory: glibc refused mallopt(%s); the other settings were applied", ", ".join(refused))
    return not refused


def keep_freed_memory_from_env() -> bool:
    """`keep_freed_memory()` unless the environment variable `LLM_GYM_KEEP_FREED_MEMORY` turns it off."""
    if os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return keep_freed_memory()
