"""The shared on-policy loop on its own, with a toy algorithm (REINFORCE on the raw score): the order of the hooks,
micro-batches that change nothing, learn's budget, and checkpoints that refuse another algorithm's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from llm_gym import Logger, Policy, SamplingConfig
from llm_gym.agents.on_policy import OnPolicyAgent, OnPolicyConfig, Snapshot
from llm_gym.agents.ppo_math import reduce_tokens
from llm_gym.envs import PromptBanditVecEnv

PROMPTS = ["the film was", "the hotel is", "this novel", "my new phone is"]


@dataclass(frozen=True)
class ToyConfig(OnPolicyConfig):
    """The base config, nothing added."""


class Toy(OnPolicyAgent):
    """REINFORCE with the raw score as the advantage: the smallest algorithm the loop can run."""

    config_class = ToyConfig
    algorithm = "toy"
    calls: list[str]

    def _build_modules(self) -> None:
        self.calls = ["build"]

    def _before_update(self, snapshot: Snapshot) -> dict[str, torch.Tensor]:
        self.calls.append("before_update")
        return {"marker": torch.ones(len(snapshot.paid))}

    def _advantages(self, snapshot: Snapshot, extra: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.calls.append("advantages")
        assert torch.equal(extra["marker"], torch.ones(len(snapshot.paid)))
        return {"advantages": snapshot.paid[:, None] * snapshot.mask}

    def _loss(self, out: Any, mb: dict[str, torch.Tensor], mask: torch.Tensor) -> tuple[Any, Any, Any]:
        loss = reduce_tokens(-mb["advantages"] * out.logprobs, mask)
        return loss, {"loss": loss}, {}


def make(policy: Policy, **overrides: Any) -> Toy:
    settings = dict(sampling=SamplingConfig(max_new_tokens=6), minibatch_size=8, n_epochs=1, learning_rate=1e-2,
                    log_samples_every=0)
    settings.update(overrides)
    env = PromptBanditVecEnv(PROMPTS, lambda p, c: [float(c.count("e")) for c in c], num_envs=8)
    return Toy(policy, env, ToyConfig(**settings), rng=np.random.default_rng(0), logger=Logger(None))


def test_hooks_run_in_order_and_learn_keeps_its_budget(policy: Policy) -> None:
    agent = make(policy)
    seen: list[int] = []
    agent.learn(24, callback=lambda a, step: seen.append(step) or True)
    assert agent.calls == ["build"] + ["before_update", "advantages"] * 3
    assert seen == [8, 16, 24] and agent.num_timesteps == 24 and agent.iteration == 3
    assert {"objective/kl", "objective/non_score_reward", "train/loss", "train/grad_norm", "time/update"} <= set(
        agent.logger.history)


def test_micro_batches_change_nothing(tiny_model) -> None:
    """The loss of each micro-batch is its share of the global token mean: 1 or 4 micro-batches, the same step."""
    params = []
    for steps in (1, 4):
        agent = make(Policy.from_pretrained(tiny_model.path, device="cpu"), gradient_accumulation_steps=steps)
        agent.train_iteration()
        params.append(torch.cat([p.detach().flatten() for p in agent.policy.model.parameters()]))
    assert torch.allclose(params[0], params[1], atol=1e-6)


def test_checkpoints_name_their_algorithm(policy: Policy, tmp_path) -> None:
    agent = make(policy)
    assert Toy.checkpoint_iteration(tmp_path / "none") is None
    agent.train_iteration()
    agent.save(tmp_path / "ckpt")
    assert Toy.checkpoint_iteration(tmp_path / "ckpt") == 1
    resumed = Toy.load(tmp_path / "ckpt", env=agent.env)
    assert resumed.iteration == 1 and resumed.rng.bit_generator.state == agent.rng.bit_generator.state
    from llm_gym.agents.ppo import PPO

    with pytest.raises(ValueError, match=r"is a toy checkpoint; load it with that algorithm's class \(not ppo\)"):
        PPO.load(tmp_path / "ckpt", env=agent.env)


def test_the_optimizer_is_torchs_adamw_or_its_fused_kernel(policy: Policy) -> None:
    """By default torch's own AdamW implementation (the PPO golden test pins its parameters); `fused_adamw` swaps in
    the fused kernel, which trains too."""
    agent = make(policy)
    assert agent.optimizer.defaults["foreach"] is None and not agent.optimizer.defaults["fused"]
    fused = make(Policy.from_pretrained(policy.model.name_or_path), fused_adamw=True)
    assert fused.optimizer.defaults["fused"] is True
    before = [p.detach().clone() for p in fused.policy.model.parameters()]
    fused.learn(total_steps=8)
    assert any(not torch.equal(a, p) for a, p in zip(before, fused.policy.model.parameters()))
    with pytest.raises(ValueError, match="fused_adamw"):
        ToyConfig(fused_adamw="yes")  # type: ignore[arg-type]


def test_only_a_loss_with_an_entropy_bonus_differentiates_the_entropy(policy: Policy) -> None:
    from llm_gym.agents import PPO, PPOConfig

    assert not make(policy).entropy_in_loss
    env = PromptBanditVecEnv(PROMPTS, lambda p, c: [1.0] * len(c), num_envs=8)
    assert not PPO(policy, env, PPOConfig(minibatch_size=8), rng=np.random.default_rng(0)).entropy_in_loss
    assert PPO(policy, env, PPOConfig(minibatch_size=8, ent_coef=0.01), rng=np.random.default_rng(0)).entropy_in_loss


def _with_dropout(name: str, tiny_model, tmp_path) -> Policy:
    """The smoke GPT-2 with its dropout at 0.5, or a random-init OPT (whose layers apply dropout in their own forward,
    keyed on their own training flag) over the built-in tokenizer: models where dropout in the update would show."""
    if name == "gpt2":
        policy = Policy.from_pretrained(tiny_model.path)
        for module in policy.model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.5
        return policy
    from transformers import AutoTokenizer, OPTConfig, OPTForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_model.path)
    torch.manual_seed(0)
    config = OPTConfig(vocab_size=len(tokenizer), hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                       word_embed_proj_dim=32, max_position_embeddings=128, dropout=0.5, attention_dropout=0.5,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id)
    OPTForCausalLM(config).save_pretrained(tmp_path / "opt")
    tokenizer.save_pretrained(tmp_path / "opt")
    return Policy.from_pretrained(tmp_path / "opt")


@pytest.mark.parametrize("arch,precision", [("gpt2", "no"), ("opt", "no"), ("gpt2", "bf16")])
def test_gradient_checkpointing_recomputes_layers_with_dropout_off_and_changes_nothing(arch, precision, tiny_model,
                                                                                     tmp_path, monkeypatch) -> None:
    """The same parameters after an iteration with and without checkpointing (to float noise), the layers really
    recomputed in the update (not while sampling), and dropout still off, also in OPT's layers, which apply it in
    their own forward: with dropout on, the first minibatch's ratio pi/pi_old would not be 1. In bf16 on CPU the
    recomputation, which runs in the backward pass, uses the forward's attention kernel (else checkpoint's check
    that the recomputed tensors match the saved ones fails), and the ratio is still 1."""
    from torch.utils import checkpoint

    from llm_gym.agents import PPO, PPOConfig

    results = []
    for on in (False, True):
        policy = _with_dropout(arch, tiny_model, tmp_path)
        env = PromptBanditVecEnv(PROMPTS, lambda p, c: [float(c.count("e")) for c in c], num_envs=8)
        config = PPOConfig(sampling=SamplingConfig(max_new_tokens=6), minibatch_size=8, n_epochs=1, learning_rate=1e-2,
                           log_samples_every=0, gradient_checkpointing=on, mixed_precision=precision)
        agent = PPO(policy, env, config, rng=np.random.default_rng(0), logger=Logger(None))
        calls: list[int] = []
        original = checkpoint.checkpoint
        monkeypatch.setattr(checkpoint, "checkpoint", lambda *a, **k: (calls.append(1), original(*a, **k))[1])
        stats = agent.train_iteration()
        monkeypatch.undo()
        assert stats["train/approx_kl"] == pytest.approx(0.0, abs=1e-6)  # one epoch, one minibatch: ratio 1
        layers = [m for m in policy.model.modules() if type(m).__name__ in ("GPT2Block", "OPTDecoderLayer")]
        assert len(calls) == (len(layers) if on else 0)  # one minibatch: each layer recomputed once, not while sampling
        assert not any(m.training for m in policy.model.modules()) and not any("forward" in vars(m) for m in layers)
        results.append([p.detach().clone() for p in policy.model.parameters()])
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-6)


def test_an_entropy_bonus_reaches_the_gradient_also_with_top_k_sampling(policy: Policy) -> None:
    """ent_coef > 0 changes the update (the entropy is differentiated), and stays finite when top-k filtering puts
    -inf in the log-probs (0 * -inf in the entropy's backward pass would make every gradient NaN)."""
    from llm_gym.agents import PPO, PPOConfig

    results = []
    for ent_coef in (0.0, 0.5):
        fresh = Policy.from_pretrained(policy.model.name_or_path)
        env = PromptBanditVecEnv(PROMPTS, lambda p, c: [float(c.count("e")) for c in c], num_envs=8)
        config = PPOConfig(sampling=SamplingConfig(max_new_tokens=6, top_k=5), minibatch_size=8, n_epochs=1,
                           learning_rate=1e-2, log_samples_every=0, ent_coef=ent_coef)
        PPO(fresh, env, config, rng=np.random.default_rng(0), logger=Logger(None)).train_iteration()
        results.append([p.detach().clone() for p in fresh.model.parameters()])
        assert all(torch.isfinite(p).all() for p in results[-1])
    assert any(not torch.equal(a, b) for a, b in zip(*results))
