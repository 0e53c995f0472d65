"""A run's randomness, as every llm_gym component takes it: a numpy Generator (`rng=`) or an int seed (`seed=`)."""

from __future__ import annotations

import numpy as np

__all__ = ["resolve_rng"]


def resolve_rng(rng: np.random.Generator | None, seed: int | None, owner: str, *,
                required: bool = True) -> np.random.Generator:
    """The Generator a component draws from: `rng` itself, or `np.random.default_rng(seed)` (SB3's `seed=` habit).

    `seed=s` and `rng=np.random.default_rng(s)` give the same run. Passing both is refused (which one
    should win is not obvious), and so is passing neither where the component's randomness must be
    explicit (`required`, the agents); otherwise neither gives fresh entropy. `owner` names the
    component in the errors.
    """
    if rng is not None and seed is not None:
        raise TypeError(f"{owner} takes rng= or seed=, not both; pass only seed={seed!r} (the same as "
                        f"rng=np.random.default_rng({seed!r})) or only rng")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"{owner}: seed must be an int, got {type(seed).__name__}; for a Generator pass rng= instead")
        return np.random.default_rng(int(seed))
    if rng is None and not required:
        return np.random.default_rng()
    if rng is None:
        raise TypeError(f"{owner} needs its randomness: pass seed=<int> or rng=np.random.default_rng(<int>)")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}; "
                        "or pass seed=<int>")
    return rng
