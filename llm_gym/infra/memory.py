"""How much memory a block of work needed: this process's peak resident memory (and CUDA memory) while it ran.

`ru_maxrss` is the peak over the whole process's life, so it cannot tell one stage from the
next; `PeakMemory` samples the resident set size in a background thread (every 50 ms by
default) while its block runs, and on CUDA resets and reads torch's peak-allocation counter.
The pipeline records it per stage and per evaluated policy (`summary.json`: `peak_rss_mb`).
"""

from __future__ import annotations

import threading
from types import TracebackType

import psutil

__all__ = ["PeakMemory"]

_MB = 1024 * 1024


class PeakMemory:
    """Context manager: `peak_rss_mb` (resident set, sampled) and `cuda_peak_mb` (None without CUDA) of its block.

    >>> with PeakMemory() as memory:
    ...     block = bytearray(64 * 1024 * 1024)
    >>> memory.peak_rss_mb >= memory.start_rss_mb
    True
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.start_rss_mb = self.peak_rss_mb = 0.0
        self.cuda_peak_mb: float | None = None

    def _sample(self) -> None:
        self.peak_rss_mb = max(self.peak_rss_mb, self._process.memory_info().rss / _MB)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakMemory:
        self.start_rss_mb = self.peak_rss_mb = self._process.memory_info().rss / _MB
        cuda = _cuda()
        if cuda is not None:
            cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._watch, name="peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        cuda = _cuda()
        if cuda is not None:
            self.cuda_peak_mb = cuda.max_memory_allocated() / _MB

    def as_dict(self) -> dict[str, float]:
        """`peak_rss_mb`, and `cuda_peak_mb` when CUDA is in use (for a stage's result)."""
        out = {"peak_rss_mb": round(self.peak_rss_mb, 1)}
        if self.cuda_peak_mb is not None:
            out["cuda_peak_mb"] = round(self.cuda_peak_mb, 1)
        return out


def _cuda():  # torch.cuda when torch is imported and CUDA is there, else None (no import of torch just for this)
    import sys

    torch = sys.modules.get("torch")
    return torch.cuda if torch is not None and torch.cuda.is_available() else None
