"""One logger object, passed in (never global), over TensorBoard's `SummaryWriter`.

Keys are grouped by prefix (`rollout/`, `train/`, `objective/`, `reward_model/`,
`oracle/`, `eval/`, `time/`), as in SB3 and TRL, so TensorBoard shows one section per
group. Values are buffered with `record` and written with `dump(step)`; the last values
stay readable in `history` (handy in tests and for early stopping).

Run folders are named `{name}__seed{seed}__{YYYYmmdd-HHMMSS}` under one root, so the runs
of one sweep sit side by side and sort by name.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

__all__ = ["Logger", "make_run_dir"]


def make_run_dir(root: str | PathLike[str], name: str, seed: int | None = None) -> Path:
    """Create and return a fresh run folder `root/{name}__seed{seed}__{time}` (suffixed `_1`, `_2`... on a clash)."""
    if not name or "/" in name or "\\" in name:
        raise ValueError(f"run name {name!r} must be non-empty and contain no path separator")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = f"{name}__seed{seed}__{stamp}" if seed is not None else f"{name}__{stamp}"
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for k in range(1000):
        path = root / (base if k == 0 else f"{base}_{k}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a unique run folder under {root}")


class Logger:
    """Buffers scalars by key and writes them to TensorBoard (or only to memory).

    Args:
        log_dir: the run folder for TensorBoard event files; `None` keeps values in memory only.
        purge_step: when resuming a run at step `s`, pass `s` so TensorBoard drops events the
            crashed run wrote after its last checkpoint (no duplicate steps on the curves).

    Example:
        >>> logger = Logger(None)
        >>> logger.record("rollout/reward_mean", 0.5)
        >>> logger.dump(step=1)
        >>> logger.history["rollout/reward_mean"]
        [(1, 0.5)]
    """

    GROUPS = ("rollout", "train", "objective", "reward_model", "oracle", "eval", "time", "task", "data")

    def __init__(self, log_dir: str | PathLike[str] | None, purge_step: int | None = None) -> None:
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self._writer = None
        if self.log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(str(self.log_dir), purge_step=purge_step)
        self._pending: dict[str, float] = {}
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)

    @staticmethod
    def _check_key(key: str) -> None:
        group = key.split("/", 1)[0]
        if "/" not in key or group not in Logger.GROUPS:
            raise ValueError(f"log key {key!r} must start with a group prefix, one of {', '.join(g + '/' for g in Logger.GROUPS)}")

    def record(self, key: str, value: float) -> None:
        """Buffer one scalar under `key` (written at the next `dump`)."""
        self._check_key(key)
        v = float(value)
        self._pending[key] = v

    def record_dict(self, values: Mapping[str, float]) -> None:
        """Buffer several scalars at once."""
        for k, v in values.items():
            self.record(k, v)

    def dump(self, step: int) -> None:
        """Write every buffered scalar at `step` and clear the buffer."""
        for key, value in self._pending.items():
            self.history[key].append((step, value))
            if self._writer is not None and math.isfinite(value):
                self._writer.add_scalar(key, value, global_step=step)
        self._pending.clear()
        if self._writer is not None:
            self._writer.flush()

    def log_text(self, key: str, text: str, step: int) -> None:
        """Write a text sample (shown in TensorBoard's TEXT tab; markdown, so it is put in a code block)."""
        self._check_key(key)
        if self._writer is not None:
            fenced = "\n".join("    " + line for line in text.splitlines()) or "    "
            self._writer.add_text(key, fenced, global_step=step)

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float] | None = None) -> None:
        """Record the run's hyperparameters (TensorBoard's HPARAMS tab) with optional final metrics.

        Values that are not bool/int/float/str are stored as their `str`, so any config can be passed.
        """
        if self._writer is None:
            return
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        clean = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in hparams.items()}
        exp, ssi, sei = hparams_summary(clean, dict(metrics or {}))
        fw = self._writer._get_file_writer()
        fw.add_summary(exp)
        fw.add_summary(ssi)
        fw.add_summary(sei)
        for k, v in (metrics or {}).items():
            self._writer.add_scalar(k, v)
        self._writer.flush()

    def resume_at(self, step: int) -> None:
        """Continue a run from a checkpoint taken at `step`: events written after it are dropped.

        A run that crashed after its last checkpoint logged steps that the resumed run will
        log again; reopening the writer with `purge_step` removes them, so curves have no
        duplicate steps.
        """
        self.history = defaultdict(list, {k: [(s, v) for s, v in h if s < step] for k, h in self.history.items()})
        if self.log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            if self._writer is not None:
                self._writer.close()
            self._writer = SummaryWriter(str(self.log_dir), purge_step=step)

    def close(self) -> None:
        """Flush and close the event file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> Logger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
