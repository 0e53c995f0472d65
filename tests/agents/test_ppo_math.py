"""PPO's formulas against hand computation: KL-penalised rewards, GAE, clipped losses, KL controllers."""

from __future__ import annotations

import math

import pytest
import torch

from llm_gym.agents.ppo_math import (
    AdaptiveKLController,
    FixedKLController,
    clipped_policy_loss,
    clipped_value_loss,
    compute_gae,
    kl_penalized_rewards,
    masked_mean,
    masked_whiten,
)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_kl_penalized_rewards_by_hand() -> None:
    # two completions: 3 tokens, and 2 tokens then padding
    logp = t([-1.0, -2.0, -0.5], [-0.3, -0.7, 0.0])
    ref = t([-1.5, -1.0, -0.5], [-0.2, -0.9, 0.0])
    mask = t([1, 1, 1], [1, 1, 0])
    scores = torch.tensor([2.0, -1.0])
    rewards, kl = kl_penalized_rewards(scores, logp, ref, mask, kl_coef=0.1)
    # kl_t = logp - ref ; r_t = -0.1 * kl_t ; + score at the last real token
    assert torch.allclose(kl, t([0.5, -1.0, 0.0], [-0.1, 0.2, 0.0]))
    assert torch.allclose(rewards, t([-0.05, 0.1, 2.0], [0.01, -0.02 - 1.0, 0.0]))


def test_gae_on_a_hand_made_example() -> None:
    rewards = t([0.0, 0.0, 1.0], [0.5, 1.0, 0.0])
    values = t([0.2, 0.4, 0.6], [0.3, 0.1, 0.9])  # the last value of row 2 is padding and must be ignored
    mask = t([1, 1, 1], [1, 1, 0])
    gamma, lam = 0.9, 0.8
    adv, ret = compute_gae(rewards, values, mask, gamma, lam)
    # row 1: deltas d2 = 1 - 0.6 = 0.4 ; d1 = 0 + .9*.6 - .4 = 0.14 ; d0 = 0 + .9*.4 - .2 = 0.16
    #        A2 = 0.4 ; A1 = 0.14 + .72*0.4 = 0.428 ; A0 = 0.16 + .72*0.428 = 0.46816
    # row 2: d1 = 1.0 - 0.1 = 0.9 (terminal) ; d0 = .5 + .9*.1 - .3 = 0.29 ; A1 = 0.9 ; A0 = 0.29 + .72*.9 = 0.938
    assert torch.allclose(adv, t([0.46816, 0.428, 0.4], [0.938, 0.9, 0.0]), atol=1e-6)
    assert torch.allclose(ret, t([0.66816, 0.828, 1.0], [1.238, 1.0, 0.0]), atol=1e-6)


def test_gae_with_gamma_lambda_one_is_the_return_minus_value() -> None:
    rewards = t([0.1, -0.2, 3.0])
    values = t([0.5, 0.5, 0.5])
    adv, ret = compute_gae(rewards, values, torch.ones(1, 3), 1.0, 1.0)
    assert torch.allclose(ret, t([2.9, 2.8, 3.0]))
    assert torch.allclose(adv, ret - values)


def test_clipped_policy_loss_by_hand() -> None:
    old = torch.zeros(1, 4)
    # ratios e^x: 1.5 (clipped for A>0), 0.5 (clipped for A<0), 1.1 (inside), masked token
    new = torch.log(t([1.5, 0.5, 1.1, 3.0]))
    adv = t([1.0, -1.0, 2.0, 5.0])
    mask = t([1, 1, 1, 0])
    out = clipped_policy_loss(new, old, adv, mask, clip_range=0.2)
    # per token max(-A r, -A clip(r)): max(-1.5, -1.2) = -1.2 ; max(0.5, 0.8) = 0.8 ; max(-2.2, -2.2) = -2.2
    assert out.loss.item() == pytest.approx((-1.2 + 0.8 - 2.2) / 3, abs=1e-6)
    assert out.clipfrac.item() == pytest.approx(2 / 3)
    expected_kl = 0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2 + math.log(1.1) ** 2) / 3
    assert out.approx_kl.item() == pytest.approx(expected_kl, rel=1e-5)


def test_clipped_policy_loss_gradient_vanishes_when_clipped() -> None:
    new = torch.log(t([1.5])).requires_grad_()
    clipped_policy_loss(new, torch.zeros(1, 1), t([1.0]), torch.ones(1, 1), 0.2).loss.backward()
    assert new.grad.abs().item() == 0.0
    new = torch.log(t([1.1])).requires_grad_()
    clipped_policy_loss(new, torch.zeros(1, 1), t([1.0]), torch.ones(1, 1), 0.2).loss.backward()
    assert new.grad.item() == pytest.approx(-1.1)  # d(-A e^x)/dx = -A r


def test_clipped_value_loss_by_hand() -> None:
    values, old, returns = t([1.0, 0.0]), t([0.5, 0.0]), t([2.0, 1.0])
    mask = torch.ones(1, 2)
    # token 1: unclipped (1-2)^2 = 1 ; clipped V = 0.5 + clip(0.5, -.2, .2) = 0.7 -> (0.7-2)^2 = 1.69 ; max 1.69
    # token 2: (0-1)^2 = 1 both ways
    assert clipped_value_loss(values, old, returns, mask, 0.2).item() == pytest.approx(0.5 * (1.69 + 1.0) / 2)
    assert clipped_value_loss(values, old, returns, mask, None).item() == pytest.approx(0.5 * (1.0 + 1.0) / 2)


def test_masked_helpers() -> None:
    x, mask = t([1.0, 2.0, 3.0, 100.0]), t([1, 1, 1, 0])
    assert masked_mean(x, mask).item() == pytest.approx(2.0)
    w = masked_whiten(x, mask)
    assert masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_mean(w**2, mask).item() == pytest.approx(1.0, abs=1e-4)
    assert w[0, 3] == 0


def test_kl_controllers() -> None:
    fixed = FixedKLController(0.1)
    fixed.update(100.0, 64)
    assert fixed.value == 0.1
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    ctl.update(9.0, n_steps=1000)  # error = clip(9/6 - 1) = 0.2 -> beta * (1 + 0.2 * 0.1)
    assert ctl.value == pytest.approx(0.1 * 1.02)
    ctl.update(3.0, n_steps=1000)  # error = -0.5 clipped to -0.2
    assert ctl.value == pytest.approx(0.1 * 1.02 * 0.98)
    restored = AdaptiveKLController(1.0, 1.0, 1)
    restored.load_state_dict(ctl.state_dict())
    assert (restored.value, restored.target, restored.horizon) == (ctl.value, 6.0, 10_000)


def test_the_three_loss_reductions_by_hand() -> None:
    from llm_gym.agents.ppo_math import reduce_tokens

    x = t([1.0, 2.0, 3.0], [4.0, 6.0, 100.0])
    mask = t([1, 1, 1], [1, 1, 0])  # the 100 is padding
    assert float(reduce_tokens(x, mask, "token")) == pytest.approx((1 + 2 + 3 + 4 + 6) / 5)  # PPO, DAPO
    assert float(reduce_tokens(x, mask, "sequence")) == pytest.approx(((1 + 2 + 3) / 3 + (4 + 6) / 2) / 2)  # GRPO
    assert float(reduce_tokens(x, mask, "constant", max_len=4)) == pytest.approx((1 + 2 + 3 + 4 + 6) / (2 * 4))  # Dr. GRPO
    with pytest.raises(ValueError, match="needs max_len"):
        reduce_tokens(x, mask, "constant")
    with pytest.raises(ValueError, match="'token', 'sequence' or 'constant'"):
        reduce_tokens(x, mask, "mean")
