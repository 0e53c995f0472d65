"""RLOO and GRPO / Dr. GRPO: their advantages and losses against hand computation, learning a known reward,
exact resume, the preference loop around them, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm_gym import Logger, Policy, SamplingConfig
from llm_gym.agents.grpo import GRPO, GRPOConfig, group_advantages
from llm_gym.agents.on_policy import Snapshot
from llm_gym.agents.rloo import RLOO, RLOOConfig, leave_one_out_advantages
from llm_gym.agents.rollout import Experience
from llm_gym.envs import PromptBanditVecEnv
from llm_gym.models.policy import Evaluation, Rollout

PROMPTS = ["the film was", "review of the blender :", "i bought this laptop and", "the hotel is", "this novel"]


def count_letter(letter: str, sign: float = 1.0):
    def reward(prompts, completions):
        return np.array([sign * c.count(letter) for c in completions], dtype=np.float64)

    return reward


def make(cls, policy: Policy, reward, seed: int = 0, num_envs: int = 8, group_size: int = 4, **overrides):
    config_class = RLOOConfig if cls is RLOO else GRPOConfig
    settings = dict(sampling=SamplingConfig(max_new_tokens=10), learning_rate=3e-3, minibatch_size=4, kl_coef=0.0,
                    log_samples_every=0, group_size=group_size)
    settings.update(overrides)
    env = PromptBanditVecEnv(PROMPTS, reward, num_envs=num_envs, group_size=group_size)
    return cls(policy, env, config_class(**settings), rng=np.random.default_rng(seed), logger=Logger(None))


# ----------------------------------------------------------------------------------------- the formulas


def test_leave_one_out_advantages_by_hand() -> None:
    r = np.array([1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 0.0, 0.0])
    a = leave_one_out_advantages(r, 4)
    # first group: 1 - (2+3+6)/3, 2 - (1+3+6)/3, 3 - (1+2+6)/3, 6 - (1+2+3)/3
    assert np.allclose(a[:4], [1 - 11 / 3, 2 - 10 / 3, 3 - 3, 6 - 2])
    assert np.allclose(a[:4], 4 / 3 * (r[:4] - r[:4].mean()))  # = k/(k-1) (R_i - mean R)
    assert np.array_equal(a[4:], np.zeros(4))  # a group of equal rewards: zero advantage, no NaN
    with pytest.raises(ValueError, match="group_size >= 2"):
        leave_one_out_advantages(r, 1)


def test_group_advantages_by_hand() -> None:
    r = np.array([0.0, 1.0, 5.0, 2.0, 2.0, 2.0])
    a = group_advantages(r, 3, scale=True, eps=1e-4)
    std = np.std([0.0, 1.0, 5.0], ddof=1)
    assert np.allclose(a[:3], (np.array([0.0, 1.0, 5.0]) - 2.0) / (std + 1e-4))
    assert np.array_equal(a[3:], np.zeros(3)) and np.isfinite(a).all()  # std 0: eps keeps it at zero
    assert np.allclose(group_advantages(r, 3, scale=False), [-2.0, -1.0, 3.0, 0.0, 0.0, 0.0])  # Dr. GRPO


def _snapshot(logprobs: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor, scores: np.ndarray) -> Snapshot:
    b, t = mask.shape
    rollout = Rollout(torch.zeros(b, 1, dtype=torch.long), torch.ones(b, 1, dtype=torch.long),
                      torch.zeros(b, t, dtype=torch.long), mask.long(), logprobs, ["p"] * b, ["c"] * b, 0)
    experience = Experience(["p"] * b, ["c"] * b, rollout, scores, {}, {})
    own = Evaluation(logprobs, torch.zeros_like(logprobs), None)
    return Snapshot(experience, own, ref, mask, torch.as_tensor(scores, dtype=torch.float32), scores)


def test_rloo_pays_the_kl_in_the_sequence_reward(policy: Policy) -> None:
    agent = make(RLOO, policy, count_letter("e"), kl_coef=0.5, num_envs=4, group_size=4)
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.5], [-1.0, 0.0], [-3.0, -1.0]])
    ref = torch.tensor([[-1.5, -1.0], [-0.5, -0.7], [-1.2, 0.0], [-2.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    scores = np.array([1.0, 0.0, 2.0, 1.0])
    adv = agent._advantages(_snapshot(logp, ref, mask, scores), {})["advantages"]
    kl = ((logp - ref) * mask).sum(-1).numpy()  # k1 summed over each completion's tokens
    expected = leave_one_out_advantages(scores - 0.5 * kl, 4)
    assert torch.allclose(adv, torch.as_tensor(expected, dtype=torch.float32)[:, None] * mask, atol=1e-6)


def test_rloo_first_pass_is_reinforce(policy: Policy) -> None:
    """With the ratio at 1 the clipped surrogate's gradient is REINFORCE's: d loss / d log pi(y_t) = -A_i / norm."""
    agent = make(RLOO, policy, count_letter("e"), num_envs=4, group_size=2, loss_reduction="constant")
    logp = torch.tensor([[-1.0, -2.0, -0.3], [-0.5, -0.5, -2.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv = torch.tensor([[0.7], [-0.7]]) * mask
    out = Evaluation(logp, torch.zeros_like(logp), None)
    loss, parts, diag = agent._loss(out, {"old_logprobs": logp.detach(), "advantages": adv}, mask)
    loss.backward()
    # constant reduction: sum over tokens / (B x max_new_tokens) = 2 x 10
    assert torch.allclose(logp.grad, -adv / (2 * 10))
    assert float(diag["clipfrac"]) == 0.0 and float(diag["approx_kl"]) == 0.0


@pytest.mark.parametrize(("loss_type", "norm"), [("grpo", "sequence"), ("dr_grpo", "constant"), ("token", "token")])
def test_grpo_loss_by_hand(policy: Policy, loss_type: str, norm: str) -> None:
    """The clipped surrogate plus beta * k3, each reduced as the loss type says; gradients by hand."""
    agent = make(GRPO, policy, count_letter("e"), num_envs=4, group_size=2, kl_coef=0.1, loss_type=loss_type)
    logp = torch.tensor([[-1.0, -2.0, -0.3], [-0.5, -0.5, -2.0]], requires_grad=True)
    ref = torch.tensor([[-1.2, -1.0, -0.3], [-0.5, -0.9, -2.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv = torch.tensor([[0.5], [-0.5]]) * mask
    out = Evaluation(logp, torch.zeros_like(logp), None)
    loss, parts, _ = agent._loss(out, {"old_logprobs": logp.detach(), "advantages": adv, "ref_logprobs": ref}, mask)
    loss.backward()
    # per token: d/dlogp [-A * exp(logp - old)] = -A at ratio 1; d/dlogp [beta * k3] = beta * (1 - exp(ref - logp))
    per_token = (-adv + 0.1 * (1 - torch.exp(ref - logp.detach()))) * mask
    weights = {"sequence": 1 / (mask.sum(-1, keepdim=True) * 2), "constant": torch.full((2, 1), 1 / (2 * 10)),
               "token": torch.full((2, 1), 1 / mask.sum())}[norm]
    assert torch.allclose(logp.grad, per_token * weights, atol=1e-7)
    k3 = (torch.exp(ref - logp.detach()) - 1 - (ref - logp.detach())) * mask
    assert float(parts["kl_loss"].detach()) == pytest.approx(float((k3 * weights).sum()), rel=1e-6)


# ----------------------------------------------------------------------------------------- training


@pytest.mark.slow
@pytest.mark.parametrize(("cls", "overrides"), [(RLOO, {}), (GRPO, {}), (GRPO, {"scale_rewards": False, "loss_type": "dr_grpo"})],
                         ids=["rloo", "grpo", "dr_grpo"])
def test_a_known_reward_rises(policy: Policy, cls, overrides) -> None:
    agent = make(cls, policy, count_letter("e"), num_envs=16, minibatch_size=8, **overrides)
    scores = [agent.train_iteration()["objective/rm_score"] for _ in range(12)]
    assert np.mean(scores[-3:]) > 1.3 * np.mean(scores[:3]), f"the count of 'e' should rise: {scores}"


def test_resume_is_exact(tiny_model, tmp_path) -> None:
    def fresh():
        return make(GRPO, Policy.from_pretrained(tiny_model.path, device="cpu"), count_letter("e"), kl_coef=0.1,
                    n_epochs=2, adaptive_kl=True, target_kl=0.5, kl_horizon=100)

    straight = fresh()
    for _ in range(3):
        straight.train_iteration()
    first = fresh()
    first.train_iteration()
    first.save(tmp_path / "ckpt")
    resumed = GRPO.load(tmp_path / "ckpt", env=PromptBanditVecEnv(PROMPTS, count_letter("e"), num_envs=8, group_size=4),
                        logger=Logger(None))
    assert isinstance(resumed.config, GRPOConfig) and resumed.iteration == 1
    for _ in range(2):
        resumed.train_iteration()
    for a, b in zip(straight.policy.model.parameters(), resumed.policy.model.parameters()):
        assert torch.equal(a, b)
    assert resumed.kl_ctl.value == straight.kl_ctl.value
    with pytest.raises(ValueError, match=r"is a grpo checkpoint; load it with that algorithm's class \(not rloo\)"):
        RLOO.load(tmp_path / "ckpt", env=PromptBanditVecEnv(PROMPTS, count_letter("e"), num_envs=8, group_size=4))


# ----------------------------------------------------------------------------------------- bad input


def test_bad_group_settings_are_refused_with_the_fix(policy: Policy) -> None:
    for config_class in (RLOOConfig, GRPOConfig):
        with pytest.raises(ValueError, match="group_size must be >= 2"):
            config_class(group_size=1)
    env = PromptBanditVecEnv(PROMPTS, count_letter("e"), num_envs=8, group_size=2)
    with pytest.raises(ValueError, match=r"group_size is 4 but the environment hands out each prompt 2 time\(s\); "
                                         r"make it with gymnasium.make_vec\(..., num_envs=8, group_size=4\)"):
        RLOO(policy, env, RLOOConfig(group_size=4, minibatch_size=4), rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="group_size=3 must divide num_envs=8"):
        PromptBanditVecEnv(PROMPTS, count_letter("e"), num_envs=8, group_size=3)


def test_equal_rewards_in_every_group_give_a_zero_advantage_and_no_nan(policy: Policy) -> None:
    agent = make(GRPO, policy, lambda p, c: np.ones(len(c)))
    stats = agent.train_iteration()
    assert all(np.isfinite(v) for v in stats.values())
    # kl_coef 0 and zero advantages: nothing to learn, the gradient is exactly zero
    assert stats["train/policy_loss"] == 0.0 and stats["train/grad_norm"] == 0.0


def test_a_nan_reward_for_one_member_stops_before_the_update_and_keeps_the_checkpoint(policy: Policy, tmp_path) -> None:
    calls = []

    def flaky(prompts, completions):
        calls.append(1)
        out = np.array([float(c.count("e")) for c in completions])
        if len(calls) == 2:
            out[5] = float("nan")
        return out

    agent = make(RLOO, policy, flaky)
    agent.train_iteration()
    agent.save(tmp_path / "ckpt")
    saved = sorted((p.relative_to(tmp_path), p.read_bytes()) for p in (tmp_path / "ckpt").rglob("*") if p.is_file())
    weights = [p.detach().clone() for p in policy.model.parameters()]
    with pytest.raises(ValueError, match=r"non-finite value\(s\) \(NaN or inf\) at index \[5\]"):
        agent.train_iteration()
    assert all(torch.equal(a, b) for a, b in zip(weights, policy.model.parameters())) and agent.iteration == 1
    assert sorted((p.relative_to(tmp_path), p.read_bytes()) for p in (tmp_path / "ckpt").rglob("*") if p.is_file()) == saved
