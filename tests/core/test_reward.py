"""`llm_gym.core.reward.validate_rewards`: what a reward function may return."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm_gym.core.reward import score_batch, validate_rewards


def test_real_numbers_of_any_numeric_type_pass_as_float64() -> None:
    for values in ([1, 2], [1.5, -2.0], np.array([1, 0], dtype=np.int8), np.array([True, False]),
                   torch.tensor([0.25, 0.5]), np.array([1.0, 2.0], dtype=np.float32)):
        out = validate_rewards(values, 2)
        assert out.dtype == np.float64 and out.shape == (2,)


@pytest.mark.parametrize("values", [[1 + 2j, 3.0], np.array([1.0, 2.0], dtype=np.complex64), [1 + 0j, 2 + 0j],
                                    torch.tensor([1 + 1j, 2 + 0j])],
                         ids=["python", "numpy", "zero-imaginary", "torch"])
def test_complex_rewards_are_refused_not_cast_to_their_real_part(values) -> None:
    with pytest.raises(TypeError, match=r"reward_fn returned complex values .*return `\.real` or `abs\(\.\.\.\)`"):
        validate_rewards(values, 2)


def test_score_batch_names_the_function_that_returned_complex_values() -> None:
    def phase_reward(prompts, completions):
        return np.exp(1j * np.arange(len(completions)))

    with pytest.raises(TypeError, match="phase_reward returned complex values"):
        score_batch(phase_reward, ["a", "b"], [" x", " y"])
