"""KL estimators on a small categorical distribution: values against the exact KL, gradients against the hand-derived ones."""

from __future__ import annotations

import pytest
import torch

from llm_gym.agents.kl import AdaptiveKLController, FixedKLController, kl_estimate, make_kl_controller

LOGITS = torch.tensor([0.3, -1.2, 2.0, 0.0, -0.5], dtype=torch.float64)
REF = torch.log_softmax(torch.tensor([1.0, 0.5, -0.3, 0.2, 0.0], dtype=torch.float64), -1)


def _exact(estimator: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(E_pi[k], KL(pi || ref), theta) with the expectation taken exactly over the 5 outcomes."""
    theta = LOGITS.clone().requires_grad_(True)
    logp = torch.log_softmax(theta, -1)
    pi = logp.exp()
    values = kl_estimate(logp, REF, estimator)  # the estimate for each outcome y
    kl = (pi * (logp - REF)).sum()
    return (pi.detach() * values).sum(), kl, theta


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_k1_and_k3_are_unbiased(estimator: str) -> None:
    mean, kl, _ = _exact(estimator)
    assert float(mean) == pytest.approx(float(kl), rel=1e-12)


def test_k2_is_biased_and_k3_never_negative() -> None:
    mean, kl, _ = _exact("k2")
    assert abs(float(mean) - float(kl)) > 1e-3  # biased: exact only to second order in log r
    logp = torch.log_softmax(LOGITS, -1)
    assert (kl_estimate(logp, REF, "k1") < 0).any()  # k1 is negative on some outcomes
    assert (kl_estimate(logp, REF, "k3") >= 0).all()  # k3 on none
    big = torch.linspace(-30, 30, 601, dtype=torch.float64)
    assert (kl_estimate(torch.zeros_like(big), big, "k3") >= 0).all()


def test_sample_means_converge_to_the_exact_values() -> None:
    gen = torch.Generator().manual_seed(0)
    logp = torch.log_softmax(LOGITS, -1)
    y = torch.multinomial(logp.exp(), 200_000, replacement=True, generator=gen)
    for estimator in ("k1", "k2", "k3"):
        exact, _, _ = _exact(estimator)
        sample_mean = kl_estimate(logp[y], REF[y], estimator).mean()
        assert float(sample_mean) == pytest.approx(float(exact), abs=0.01)


def _loss_gradient(estimator: str) -> torch.Tensor:
    """The expected gradient of `k` placed in the loss: sum_y pi(y) * grad_theta k(y), samples held fixed."""
    theta = LOGITS.clone().requires_grad_(True)
    logp = torch.log_softmax(theta, -1)
    weights = logp.exp().detach()  # the sampling distribution: no gradient flows through which y was drawn
    (weights * kl_estimate(logp, REF, estimator)).sum().backward()
    return theta.grad


def _grad(fn) -> torch.Tensor:
    theta = LOGITS.clone().requires_grad_(True)
    fn(theta).backward()
    return theta.grad


def test_gradients_in_the_loss_match_the_hand_derived_ones() -> None:
    pi = torch.softmax(LOGITS, -1)
    ref = REF.exp()
    # grad_theta log pi(y) for a softmax: e_y - pi
    score = torch.eye(5, dtype=torch.float64) - pi
    # k1 in the loss: E_pi[grad log pi] = 0 -- no penalty at all
    assert torch.allclose(_loss_gradient("k1"), torch.zeros(5, dtype=torch.float64), atol=1e-12)
    # k2 in the loss: E_pi[log(pi/ref) grad log pi] = grad KL(pi || ref)
    hand_k2 = (pi * (pi.log() - REF))[:, None].mul(score).sum(0)
    reverse_kl = _grad(lambda t: (torch.softmax(t, -1) * (torch.log_softmax(t, -1) - REF)).sum())
    assert torch.allclose(_loss_gradient("k2"), hand_k2, atol=1e-12)
    assert torch.allclose(hand_k2, reverse_kl, atol=1e-12)
    # k3 in the loss: E_pi[(1 - ref/pi) grad log pi] = -E_ref[grad log pi] = grad KL(ref || pi), the forward KL
    hand_k3 = (pi * (1 - ref / pi))[:, None].mul(score).sum(0)
    forward_kl = _grad(lambda t: (ref * (REF - torch.log_softmax(t, -1))).sum())
    assert torch.allclose(_loss_gradient("k3"), hand_k3, atol=1e-12)
    assert torch.allclose(hand_k3, forward_kl, atol=1e-12)
    assert not torch.allclose(hand_k3, reverse_kl, atol=1e-3)  # biased for the reverse KL it is meant to penalise


def test_k1_in_the_reward_gives_the_reverse_kl_gradient() -> None:
    """REINFORCE with reward -k1 (no gradient through the reward): the loss -E_pi[reward * log pi] has the gradient
    E_pi[k1 * grad log pi] = grad KL(pi || ref), so descending it lowers the reverse KL."""
    theta = LOGITS.clone().requires_grad_(True)
    logp = torch.log_softmax(theta, -1)
    reward = -kl_estimate(logp, REF, "k1").detach()
    (-(logp.exp().detach() * reward * logp).sum()).backward()  # minimise -E[reward * log pi]
    reverse_kl = _grad(lambda t: (torch.softmax(t, -1) * (torch.log_softmax(t, -1) - REF)).sum())
    assert torch.allclose(theta.grad, reverse_kl, atol=1e-12)


def test_bad_estimator_and_controllers() -> None:
    with pytest.raises(ValueError, match="'k1', 'k2' or 'k3'"):
        kl_estimate(torch.zeros(1), torch.zeros(1), "k4")  # type: ignore[arg-type]
    fixed = make_kl_controller(0.1, adaptive=False, target=6.0, horizon=100)
    assert type(fixed) is FixedKLController
    fixed.update(100.0, 10)
    assert fixed.value == 0.1
    adaptive = make_kl_controller(0.1, adaptive=True, target=6.0, horizon=100)
    assert isinstance(adaptive, AdaptiveKLController)
    adaptive.update(12.0, 10)  # error clipped to +0.2: beta * (1 + 0.2 * 10 / 100)
    assert adaptive.value == pytest.approx(0.1 * 1.02)


def test_k3_in_the_reward_gives_a_biased_gradient() -> None:
    """REINFORCE with reward -k3: the loss's gradient is grad KL(pi || ref) - grad KL(ref || pi), not the reverse KL's."""
    theta = LOGITS.clone().requires_grad_(True)
    logp = torch.log_softmax(theta, -1)
    reward = -kl_estimate(logp, REF, "k3").detach()
    (-(logp.exp().detach() * reward * logp).sum()).backward()
    reverse_kl = _grad(lambda t: (torch.softmax(t, -1) * (torch.log_softmax(t, -1) - REF)).sum())
    forward_kl = _grad(lambda t: (REF.exp() * (REF - torch.log_softmax(t, -1))).sum())
    assert torch.allclose(theta.grad, reverse_kl - forward_kl, atol=1e-12)
    assert not torch.allclose(theta.grad, reverse_kl, atol=1e-3)
