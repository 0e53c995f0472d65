"""PPO computes the same parameters as before its parts were shared with the other agents (same seed, within 1e-6)."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # the pinned run lives beside this test
from ppo_golden import NOISE_ONLY, PIN, run  # noqa: E402


def test_ppo_matches_the_pinned_run(tmp_path) -> None:
    pinned = load_file(str(PIN))
    params = run(tmp_path)
    assert float(pinned["clipfrac"]) > 0.05, "the pinned run must make the clip fire, or a clipping change goes unseen"
    assert set(pinned) <= set(params)
    for key, expected in pinned.items():
        value = params[key].to(expected.dtype)
        if any(key.endswith(name) for name in NOISE_ONLY):
            d = value.shape[0] // 3  # the key third of c_attn's bias has no gradient: Adam steps float noise
            value, expected = torch.cat([value[:d], value[2 * d :]]), torch.cat([expected[:d], expected[2 * d :]])
        assert torch.allclose(value, expected, atol=1e-6, rtol=0), f"{key}: max |diff| {float((value - expected).abs().max()):.2e}"
