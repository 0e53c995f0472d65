"""Best-of-N: the analytic KL against hand values and an exact categorical, selection, seeding, save/load."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from llm_gym import GoldScorer, Policy, Rollout, SamplingConfig
from llm_gym.agents.best_of_n import BestOfN, BestOfNConfig, best_of_n_kl
from llm_gym.infra.configio import ConfigError, from_dict
from llm_gym.models.sampler import CompletionSampler, SelectionSampler, selection_kl

PROMPTS = ["the film was", "review of the blender :", "i bought this laptop and", "the hotel is", "this phone"]
SAMPLING = SamplingConfig(max_new_tokens=10)


def length_reward(prompts, completions):
    return np.array([float(len(c)) for c in completions])


# --------------------------------------------------------------------------- the analytic KL


def test_analytic_kl_matches_hand_values() -> None:
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 1 / 2)
    assert best_of_n_kl(4) == pytest.approx(math.log(4) - 3 / 4)
    assert best_of_n_kl(4) == pytest.approx(0.636294361, abs=1e-9)
    assert best_of_n_kl(64) == pytest.approx(math.log(64) - 63 / 64)
    values = [best_of_n_kl(n) for n in range(1, 200)]
    assert all(b > a for a, b in itertools.pairwise(values)), "more candidates, more KL"
    for bad in (0, -1, 2.0, True, "4"):
        with pytest.raises(ValueError, match="int N >= 1"):
            best_of_n_kl(bad)  # type: ignore[arg-type]


def exact_best_of_n(p: np.ndarray, rewards: np.ndarray, n: int) -> np.ndarray:
    """The exact best-of-n distribution over a categorical `p`, ties going to the first of the n draws.

    P(best reward = v) = P(r <= v)^n - P(r < v)^n; among outcomes tied at v, the first draw that reaches v
    is distributed as p restricted to them.
    """
    q = np.zeros_like(p)
    for v in np.unique(rewards):
        tied = rewards == v
        q[tied] = (p[rewards <= v].sum() ** n - p[rewards < v].sum() ** n) * p[tied] / p[tied].sum()
    return q


def kl(q: np.ndarray, p: np.ndarray) -> float:
    m = q > 0
    return float(np.sum(q[m] * np.log(q[m] / p[m])))


@pytest.mark.parametrize(("k", "n", "expected"), [(4, 4, 0.5903), (10, 4, 0.6288), (100, 4, 0.6362), (4, 64, math.log(4))])
def test_exact_kl_on_a_uniform_categorical_is_what_the_docstring_says(k: int, n: int, expected: float) -> None:
    p = np.full(k, 1.0 / k)
    assert kl(exact_best_of_n(p, np.arange(k, dtype=float), n), p) == pytest.approx(expected, abs=1e-4)


def test_formula_is_the_limit_of_many_distinct_rewards_and_an_upper_bound_with_ties() -> None:
    for n in (1, 2, 4, 16):
        p = np.full(10_000, 1e-4)
        assert kl(exact_best_of_n(p, np.arange(10_000, dtype=float), n), p) == pytest.approx(best_of_n_kl(n), abs=2e-3)
    gen = np.random.default_rng(0)
    for _ in range(50):  # random categoricals, rewards with ties (Beirami et al. 2024: the formula bounds the KL)
        k, n = int(gen.integers(2, 8)), int(gen.integers(1, 40))
        p = gen.dirichlet(np.ones(k))
        rewards = gen.integers(0, 3, size=k).astype(float)
        assert kl(exact_best_of_n(p, rewards, n), p) <= best_of_n_kl(n) + 1e-12


@dataclass
class _Vocab:
    pad_token_id: int = 0


class CategoricalPolicy:
    """A base "policy" whose completion is one draw from a categorical: outcome k is the text str(k)."""

    def __init__(self, p: np.ndarray) -> None:
        self.p = torch.tensor(p, dtype=torch.float64)
        self.device = torch.device("cpu")
        self.model = None
        self.tokenizer = _Vocab()

    def sample(self, prompts, config=None, seed=None) -> Rollout:
        b = len(prompts)
        draws = torch.multinomial(self.p.expand(b, -1), 1, replacement=True, generator=seed).squeeze(-1)
        ones = torch.ones(b, 1, dtype=torch.long)
        return Rollout(ones, ones, draws[:, None], ones, torch.log(self.p[draws])[:, None].float(), list(prompts),
                       [str(d) for d in draws.tolist()], 0)

    def log_probs(self, prompt_ids, prompt_mask, completion_ids, completion_mask, config=None) -> torch.Tensor:
        return torch.log(self.p[completion_ids]).float()


@pytest.mark.parametrize("rewards", [[3.0, 1.0, 2.0, 0.0], [0.0, 1.0, 1.0, 2.0]], ids=["distinct", "tied"])
def test_the_agent_samples_the_exact_best_of_n_distribution_on_a_categorical(rewards: list[float]) -> None:
    """The selection rule (highest reward, the first of equal ones) draws what the exact formula says."""
    p, r, n, m = np.array([0.4, 0.3, 0.2, 0.1]), np.array(rewards), 4, 40_000

    def score(prompts, completions):
        return r[[int(c) for c in completions]]

    agent = BestOfN(CategoricalPolicy(p), score, BestOfNConfig(n=n, batch_size=m), rng=np.random.default_rng(0))
    freq = np.bincount([int(c) for c in agent.act(["x"] * m)], minlength=4) / m
    q = exact_best_of_n(p, r, n)
    assert np.abs(freq - q).max() < 0.012, (freq, q)
    assert kl(freq, p) == pytest.approx(kl(q, p), abs=0.02)
    # four outcomes: the exact KL stays below the formula, more so with ties
    assert kl(q, p) < agent.kl_to_base == pytest.approx(math.log(4) - 3 / 4)


# --------------------------------------------------------------------------- config


def test_config_is_validated_with_the_fix() -> None:
    assert BestOfNConfig().n == 4
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match=r"BestOfNConfig\.n must be an int >= 1"):
            BestOfNConfig(n=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"BestOfNConfig\.batch_size must be an int >= 1"):
            BestOfNConfig(batch_size=bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="SamplingConfig"):
        BestOfNConfig(sampling={"max_new_tokens": 8})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temperature must be a finite number"):
        BestOfNConfig(sampling=SamplingConfig(temperature=math.inf))
    cfg = BestOfNConfig(n=16, sampling=SamplingConfig(max_new_tokens=8, top_k=5), batch_size=3)
    assert BestOfNConfig.from_dict(cfg.to_dict()) == cfg
    assert from_dict(BestOfNConfig, {"n": 8, "sampling": {"temperature": 0.7}}) == BestOfNConfig(
        n=8, sampling=SamplingConfig(max_new_tokens=24, temperature=0.7))
    with pytest.raises(ConfigError, match="did you mean 'n'"):
        BestOfNConfig.from_dict({"nn": 3})


# --------------------------------------------------------------------------- the agent on the tiny model


def test_it_is_a_selection_sampler_and_a_policy_is_a_plain_one(policy: Policy) -> None:
    agent = BestOfN(policy, length_reward, BestOfNConfig(n=4), rng=np.random.default_rng(0))
    assert isinstance(policy, CompletionSampler) and not isinstance(policy, SelectionSampler)
    assert isinstance(agent, SelectionSampler)
    assert selection_kl(policy) == 0.0 and selection_kl(agent) == agent.kl_to_base == best_of_n_kl(4)
    assert agent.model is policy.model and agent.tokenizer is policy.tokenizer
    with pytest.raises(TypeError, match="best-of-M over best-of-N"):
        BestOfN(agent, length_reward, rng=np.random.default_rng(0))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Policy"):
        BestOfN("gpt2", length_reward, rng=np.random.default_rng(0))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        BestOfN(policy, 3.0, rng=np.random.default_rng(0))  # type: ignore[arg-type]


def test_act_keeps_the_highest_scoring_candidate(policy: Policy) -> None:
    agent = BestOfN(policy, length_reward, BestOfNConfig(n=4, sampling=SAMPLING, batch_size=2), rng=np.random.default_rng(0))
    sel = agent.select(PROMPTS, seed=7)
    assert sel.scores.shape == (5, 4) and len(sel.candidates) == 5 and all(len(row) == 4 for row in sel.candidates)
    assert np.array_equal(sel.scores, [[len(c) for c in row] for row in sel.candidates])
    assert sel.rollout.completions == [row[j] for row, j in zip(sel.candidates, sel.chosen)]
    assert [len(c) for c in sel.rollout.completions] == sel.scores.max(axis=1).tolist()
    assert sel.rollout.prompts == PROMPTS
    # the gathered tensors are the kept completions: decode them, and the base's log-probs recompute them
    ro = sel.rollout
    decoded = policy.tokenizer.batch_decode([ids[: int(m.sum())].tolist() for ids, m in zip(ro.completion_ids, ro.completion_mask)],
                                            skip_special_tokens=True)
    assert decoded == ro.completions
    assert [policy.tokenizer.decode(ids[m.bool()]) for ids, m in zip(ro.prompt_ids, ro.prompt_mask)] == [
        policy.tokenizer.decode(policy.encode_prompts([p], SAMPLING.max_new_tokens)[0][0]) for p in PROMPTS]
    with torch.no_grad():
        recomputed = agent.log_probs(ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask, SAMPLING)
    assert torch.allclose(recomputed, ro.logprobs, atol=1e-4)
    assert agent.select(PROMPTS, seed=7).rollout.completions == ro.completions, "same seed, same completions"


def test_ties_go_to_the_first_candidate_and_n1_is_the_base_policy(policy: Policy) -> None:
    def constant(prompts, completions):
        return np.zeros(len(completions))

    agent = BestOfN(policy, constant, BestOfNConfig(n=3, sampling=SAMPLING), rng=np.random.default_rng(0))
    sel = agent.select(PROMPTS, seed=11)
    assert sel.chosen.tolist() == [0] * 5
    base = policy.sample(PROMPTS, SAMPLING, seed=11)
    assert sel.rollout.completions == base.completions, "the first candidate is the base's sample with the same seed"
    one = BestOfN(policy, length_reward, BestOfNConfig(n=1, sampling=SAMPLING), rng=np.random.default_rng(0))
    ro = one.sample(PROMPTS, SAMPLING, seed=11)
    for a, b in zip(ro, base):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_more_candidates_never_score_lower_with_the_same_seed(policy: Policy) -> None:
    """The candidates of best-of-2 are the first two of best-of-8 (common random numbers)."""
    small = BestOfN(policy, GoldScorer(), BestOfNConfig(n=2, sampling=SAMPLING, batch_size=2), rng=np.random.default_rng(0))
    large = BestOfN(policy, GoldScorer(), BestOfNConfig(n=8, sampling=SAMPLING, batch_size=2), rng=np.random.default_rng(0))
    s, l = small.select(PROMPTS, seed=5), large.select(PROMPTS, seed=5)
    assert [row[:2] for row in l.candidates] == s.candidates
    assert (l.scores.max(axis=1) >= s.scores.max(axis=1)).all()


def test_act_is_seeded_by_the_rng(policy: Policy) -> None:
    cfg = BestOfNConfig(n=2, sampling=SAMPLING)
    a = BestOfN(policy, length_reward, cfg, rng=np.random.default_rng(3))
    b = BestOfN(policy, length_reward, cfg, rng=np.random.default_rng(3))
    first = a.act(PROMPTS)
    assert first == b.act(PROMPTS)
    assert a.act(PROMPTS) != first, "the rng moves on between calls"
    with pytest.raises(TypeError, match=r"wrap it: agent.act\(\[prompt\]\)"):
        a.act("the film was")
    with pytest.raises(TypeError, match="numpy Generator"):
        BestOfN(policy, length_reward, cfg, rng=3)  # type: ignore[arg-type]


def test_a_nan_reward_is_refused_by_name(policy: Policy) -> None:
    def half_nan(prompts, completions):
        return np.where(np.arange(len(completions)) == 1, np.nan, 0.0)

    agent = BestOfN(policy, half_nan, BestOfNConfig(n=2, sampling=SAMPLING), rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"half_nan returned 1 non-finite value"):
        agent.act(PROMPTS)


def test_learn_trains_nothing_and_returns_self(policy: Policy) -> None:
    agent = BestOfN(policy, length_reward, BestOfNConfig(n=2, sampling=SAMPLING), rng=np.random.default_rng(0))
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    calls = []
    assert agent.learn(1000, callback=lambda ag, step: calls.append(step) or True) is agent
    assert calls == []
    assert all(torch.equal(before[k], v) for k, v in policy.model.state_dict().items())
    with pytest.raises(ValueError, match="total_steps"):
        agent.learn(-1)


def test_save_load_round_trip(policy: Policy, tmp_path: Path) -> None:
    cfg = BestOfNConfig(n=3, sampling=SAMPLING, batch_size=2)
    agent = BestOfN(policy, GoldScorer(), cfg, rng=np.random.default_rng(9))
    agent.act(PROMPTS[:2])  # move the rng on: load must restore where it is now
    agent.save(tmp_path / "bon")
    loaded = BestOfN.load(tmp_path / "bon", reward_fn="llm_gym.tasks.review:GoldScorer", device="cpu")
    assert loaded.config == cfg
    assert loaded.kl_to_base == agent.kl_to_base
    for (name, a), b in zip(policy.model.state_dict().items(), loaded.base.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert loaded.act(PROMPTS) == agent.act(PROMPTS), "the rng continues where it was saved"
    agent.save(tmp_path / "bon")  # saving over a checkpoint replaces it
    with pytest.raises(ValueError, match="needs the reward function"):
        BestOfN.load(tmp_path / "bon")
    with pytest.raises(FileNotFoundError, match="not a BestOfN checkpoint"):
        BestOfN.load(tmp_path / "nothing-here", reward_fn=GoldScorer())


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft on transformers 5
def test_a_lora_base_round_trips_as_the_plain_model_it_computes(policy: Policy, tmp_path: Path) -> None:
    """Best-of-N trains nothing, so a LoRA base is saved merged: the checkpoint loads without peft or the base."""
    pytest.importorskip("peft")
    lora = Policy(policy.model, policy.tokenizer, device="cpu",
                  peft_config={"r": 4, "target_modules": ["c_attn"], "fan_in_fan_out": True})
    with torch.no_grad():
        for name, p in lora.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)  # a trained adapter (LoRA's B starts at zero)
    agent = BestOfN(lora, GoldScorer(), BestOfNConfig(n=2, sampling=SAMPLING), rng=np.random.default_rng(3))
    agent.save(tmp_path / "bon")
    assert not (tmp_path / "bon" / "base" / "adapter_config.json").exists()
    loaded = BestOfN.load(tmp_path / "bon", reward_fn=GoldScorer(), device="cpu")
    assert not loaded.base.is_peft
    rollout = lora.sample(PROMPTS, SAMPLING, seed=0)
    with torch.no_grad():
        assert torch.allclose(loaded.base.log_probs(rollout, SAMPLING), lora.log_probs(rollout, SAMPLING), atol=1e-5)
    assert loaded.act(PROMPTS) == agent.act(PROMPTS)
