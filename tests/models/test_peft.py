"""LoRA/PEFT as a first-class policy and reward model, on a random-init Llama-style model built locally.

The reference of a PEFT policy is its own base with the adapter off: it scores as the unwrapped
base model did, before and after training, holds no second copy of the base weights, and only
the adapter trains through the real agents. Adapters save and load alone; a reward model with
LoRA trains its head and adapter and round-trips through its checkpoint; a missing peft says how
to install it.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from doubles import tiny_llama, tiny_llama_folder
from llm_gym import Logger, Policy, SamplingConfig
from llm_gym.agents.checkpoint import load_policy
from llm_gym.agents.ppo import PPO, PPOConfig
from llm_gym.agents.reference import AdapterDisabledReference, make_reference, reference_log_probs
from llm_gym.agents.rloo import RLOO, RLOOConfig
from llm_gym.envs import PromptBanditVecEnv
from llm_gym.models.reward_model import RewardModel

peft = pytest.importorskip("peft")
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft 0.21 on transformers 5

LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
PROMPTS = ["the film was", "the hotel is", "i bought this laptop and", "this novel"]
SAMPLING = SamplingConfig(max_new_tokens=6)


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model.path)


@pytest.fixture(scope="module")
def llama_path(tokenizer, tmp_path_factory) -> Path:
    """A saved random-init Llama base model and its tokenizer."""
    return tiny_llama_folder(tmp_path_factory.mktemp("llama"), tokenizer)


def lora_policy(llama_path: Path, **lora) -> Policy:
    return Policy.from_pretrained(llama_path, device="cpu", peft_config={**LORA, **lora})


def adapter_steps(policy: Policy, rollout, steps: int = 3, lr: float = 0.05) -> None:
    """A few optimizer steps on the trainable parameters that push up the rollout's log-likelihood."""
    opt = torch.optim.SGD([p for p in policy.model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        (-policy.log_probs(rollout, SAMPLING).sum()).backward()
        opt.step()


def storages(*modules: torch.nn.Module) -> tuple[int, int]:
    """(unique storages, their bytes) of every parameter and buffer reachable from `modules`."""
    seen: dict[int, int] = {}
    for m in modules:
        for t in [*m.parameters(), *m.buffers()]:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return len(seen), sum(seen.values())


# ------------------------------------------------------------------ the reference is the base, adapter off


def test_the_reference_scores_as_the_unwrapped_base_also_after_the_adapter_trains(llama_path, tokenizer) -> None:
    base = Policy(tiny_llama(tokenizer), tokenizer, device="cpu")  # the same seed: the model before wrapping
    policy = lora_policy(llama_path)
    assert policy.is_peft and not base.is_peft
    ref = make_reference(policy)
    assert isinstance(ref, AdapterDisabledReference) and not ref.model.training
    rollout = policy.sample(PROMPTS, SAMPLING, seed=0)
    expected = base.log_probs(rollout, SAMPLING)
    assert torch.allclose(reference_log_probs(ref, rollout, SAMPLING), expected, atol=1e-6)
    before = policy.log_probs(rollout, SAMPLING).detach()
    adapter_steps(policy, rollout)
    after = policy.log_probs(rollout, SAMPLING).detach()
    assert (after - before).abs().max() > 1e-2  # the policy moved...
    assert torch.allclose(reference_log_probs(ref, rollout, SAMPLING), expected, atol=1e-6)  # ...its reference did not
    assert torch.allclose(policy.log_probs(rollout, SAMPLING), after)  # and the adapter is back on afterwards
    # the reference samples too, from the base
    assert ref.sample(PROMPTS, SAMPLING, seed=1).completions == base.sample(PROMPTS, SAMPLING, seed=1).completions


def test_the_reference_shares_the_base_weights_where_a_copy_doubles_them(llama_path) -> None:
    policy = lora_policy(llama_path)
    lora_ref = make_reference(policy)
    n_policy, bytes_policy = storages(policy.model)
    n_both, bytes_both = storages(policy.model, lora_ref.model)
    assert (n_both, bytes_both) == (n_policy, bytes_policy)  # the reference adds no tensor at all
    plain = Policy.from_pretrained(llama_path, device="cpu")
    copy_ref = make_reference(plain)
    n_plain, bytes_plain = storages(plain.model)
    assert storages(plain.model, copy_ref.model) == (2 * n_plain, 2 * bytes_plain)  # a deep copy holds a second base
    adapter_bytes = sum(p.numel() * p.element_size() for p in policy.model.parameters() if p.requires_grad)
    assert bytes_both == bytes_plain + adapter_bytes


def test_what_agents_do_to_the_reference_leaves_the_policy_alone(llama_path, tokenizer) -> None:
    policy = lora_policy(llama_path)
    policy.model.train()
    ref = make_reference(policy)
    ref.model.eval()
    for p in ref.model.parameters():  # as OnPolicyAgent and DPO do to a reference
        p.requires_grad_(False)
    assert policy.model.training
    assert sum(p.requires_grad for p in policy.model.parameters()) == 4 * 2  # A and B of q and v in 2 layers
    assert all(not p.requires_grad for p in ref.model.parameters()) and ref.model is not policy.model


def test_the_reference_runs_in_eval_mode_while_the_policy_trains(tokenizer) -> None:
    model = tiny_llama(tokenizer, attention_dropout=0.5)
    base = copy.deepcopy(model).eval()
    policy = Policy(model, tokenizer, device="cpu", peft_config=LORA)
    ref = make_reference(policy)
    rollout = ref.sample(PROMPTS, SAMPLING, seed=0)
    policy.model.train()  # dropout on in the policy's forward passes
    first = reference_log_probs(ref, rollout, SAMPLING)
    assert torch.allclose(first, reference_log_probs(ref, rollout, SAMPLING))  # no dropout in the reference
    assert torch.allclose(first, Policy(base, tokenizer, device="cpu").log_probs(rollout, SAMPLING), atol=1e-6)
    assert policy.model.training  # its mode is restored


def test_an_adapter_that_trains_base_weights_cannot_be_its_own_reference(llama_path, caplog) -> None:
    policy = lora_policy(llama_path)
    policy.model.get_base_model().model.norm.weight.requires_grad_(True)  # as LoRA's bias="all" does to biases
    with pytest.raises(ValueError, match=r"also trains base weights .* use make_reference\(policy\)"):
        AdapterDisabledReference(policy)
    with caplog.at_level("WARNING", logger="llm_gym.agents.reference"):
        ref = make_reference(policy)  # the working recipe: a frozen copy of the base
    assert "frozen copy of the base" in caplog.text
    assert type(ref) is Policy and not ref.is_peft and not any(p.requires_grad for p in ref.model.parameters())
    rollout = policy.sample(PROMPTS, SAMPLING, seed=0)
    with torch.no_grad():
        with policy.model.disable_adapter():
            base_logp = policy.log_probs(rollout, SAMPLING)
        policy.model.get_base_model().model.norm.weight.add_(0.5)  # the policy trains that base weight...
    assert torch.allclose(reference_log_probs(ref, rollout, SAMPLING), base_logp, atol=1e-6)  # ...its reference stays


# ------------------------------------------------------------------ only the adapter trains, through the agents


@pytest.mark.parametrize("algorithm", ["ppo", "rloo"])
def test_only_the_adapter_trains_through_the_agents(llama_path, algorithm: str) -> None:
    policy = lora_policy(llama_path)
    frozen = {n: p.detach().clone() for n, p in policy.model.named_parameters() if not p.requires_grad}
    adapter = {n: p.detach().clone() for n, p in policy.model.named_parameters() if p.requires_grad}
    reward = lambda prompts, completions: np.array([c.count("e") for c in completions], dtype=np.float64)  # noqa: E731
    common = dict(sampling=SAMPLING, learning_rate=1e-2, minibatch_size=4, kl_coef=0.1, log_samples_every=0)
    if algorithm == "ppo":
        agent = PPO(policy, PromptBanditVecEnv(PROMPTS, reward, num_envs=4), PPOConfig(n_epochs=2, **common),
                    rng=np.random.default_rng(0), logger=Logger(None))
    else:
        agent = RLOO(policy, PromptBanditVecEnv(PROMPTS, reward, num_envs=4, group_size=2),
                     RLOOConfig(group_size=2, **common), rng=np.random.default_rng(0), logger=Logger(None))
    assert isinstance(agent.reference, AdapterDisabledReference)
    for _ in range(2):
        agent.train_iteration()
    named = dict(policy.model.named_parameters())
    assert all(torch.equal(named[n], t) for n, t in frozen.items())  # the base, bit for bit
    assert any(not torch.equal(named[n], t) for n, t in adapter.items())  # the adapter moved
    assert all(p.requires_grad for n, p in named.items() if n in adapter)  # and is still trainable


def test_an_agent_checkpoint_holds_the_adapter_and_a_reference_that_loads_as_the_base(llama_path, tmp_path) -> None:
    policy = lora_policy(llama_path)
    reward = lambda prompts, completions: np.array([c.count("e") for c in completions], dtype=np.float64)  # noqa: E731
    agent = RLOO(policy, PromptBanditVecEnv(PROMPTS, reward, num_envs=4, group_size=2),
                 RLOOConfig(sampling=SAMPLING, learning_rate=1e-2, minibatch_size=4, kl_coef=0.1, log_samples_every=0,
                            group_size=2), rng=np.random.default_rng(0), logger=Logger(None))
    agent.train_iteration()
    agent.save(tmp_path / "ckpt")
    assert (tmp_path / "ckpt/policy/adapter_config.json").is_file()
    assert not (tmp_path / "ckpt/policy/model.safetensors").exists()
    rollout = policy.sample(PROMPTS, SAMPLING, seed=3)
    reference = load_policy(tmp_path / "ckpt/reference", device="cpu", fix="-")  # a plain model: the base
    assert not reference.is_peft
    assert torch.allclose(reference_log_probs(reference, rollout, SAMPLING),
                          reference_log_probs(agent.reference, rollout, SAMPLING), atol=1e-6)
    resumed = Policy.from_pretrained(tmp_path / "ckpt/policy", device="cpu")
    assert torch.allclose(resumed.log_probs(rollout, SAMPLING), policy.log_probs(rollout, SAMPLING).detach(), atol=1e-6)


# ------------------------------------------------------------------ saving and loading adapters


def test_an_adapter_round_trips_alone(llama_path, tmp_path) -> None:
    policy = lora_policy(llama_path)
    rollout = policy.sample(PROMPTS, SAMPLING, seed=0)
    adapter_steps(policy, rollout)
    policy.save_pretrained(tmp_path / "adapter")
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= files
    assert not files & {"model.safetensors", "config.json"}  # no base weights
    adapter_bytes = (tmp_path / "adapter/adapter_model.safetensors").stat().st_size
    assert adapter_bytes < (llama_path / "model.safetensors").stat().st_size / 10
    loaded = Policy.from_pretrained(tmp_path / "adapter", device="cpu")
    assert loaded.is_peft
    assert torch.equal(loaded.log_probs(rollout, SAMPLING), policy.log_probs(rollout, SAMPLING).detach())
    assert sum(p.requires_grad for p in loaded.model.parameters()) == 8  # ready to train on
    frozen = Policy.from_pretrained(tmp_path / "adapter", device="cpu", is_trainable=False)
    assert not any(p.requires_grad for p in frozen.model.parameters())
    with pytest.raises(ValueError, match="already holds an adapter"):
        Policy.from_pretrained(tmp_path / "adapter", device="cpu", peft_config=LORA)


def test_peft_configs_and_their_errors(llama_path, tokenizer) -> None:
    config = peft.LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM")
    policy = Policy(tiny_llama(tokenizer), tokenizer, device="cpu", peft_config=config)
    assert policy.model.peft_config["default"] is config
    with pytest.raises(ValueError, match="already carries a PEFT adapter"):
        Policy(policy.model, tokenizer, device="cpu", peft_config=LORA)
    with pytest.raises(ValueError, match="not a valid LoraConfig"):
        lora_policy(llama_path, rank=8)
    with pytest.raises(TypeError, match="peft.PeftConfig"):
        Policy(tiny_llama(tokenizer), tokenizer, device="cpu", peft_config=["q_proj"])


def test_a_missing_peft_says_how_to_install_it(tokenizer, monkeypatch) -> None:
    model = tiny_llama(tokenizer)
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install peft \(or pip install llm-gym\[peft\]\)"):
        Policy(model, tokenizer, device="cpu", peft_config=LORA)
    with pytest.raises(ImportError, match="pip install peft"):
        RewardModel(tiny_llama(tokenizer).model, tokenizer, device="cpu", peft_config=LORA)
    assert not Policy(model, tokenizer, device="cpu").is_peft  # plain models need no peft


# ------------------------------------------------------------------ the reward model with LoRA


def test_a_reward_model_with_lora_trains_head_and_adapter_and_round_trips(llama_path, tmp_path) -> None:
    rm = RewardModel.from_pretrained(llama_path, device="cpu", head_seed=0, peft_config=LORA)
    assert rm.is_peft
    names = {n for n, p in rm.net.named_parameters() if p.requires_grad}
    assert {"head.weight", "head.bias"} <= names and all(n.startswith("head.") or "lora_" in n for n in names)
    before = {n: p.detach().clone() for n, p in rm.net.named_parameters()}
    prompts, good, bad = PROMPTS, ["great great"] * 4, ["bad"] * 4
    opt = torch.optim.AdamW(rm.parameters(), lr=1e-2)
    rm.train()
    for _ in range(3):  # Bradley-Terry on fixed pairs
        opt.zero_grad()
        ids_w, mask_w = rm.encode(prompts, good)
        ids_l, mask_l = rm.encode(prompts, bad)
        loss = -torch.nn.functional.logsigmoid(rm.forward_tokens(ids_w, mask_w) - rm.forward_tokens(ids_l, mask_l)).mean()
        loss.backward()
        opt.step()
    rm.eval()
    moved = {n for n, p in rm.net.named_parameters() if not torch.equal(p, before[n])}
    assert "head.weight" in moved and any("lora_B" in n for n in moved)  # (the bias cancels in a difference)
    assert moved <= names  # the base weights did not move
    rm.save(tmp_path / "rm")
    meta = json.loads((tmp_path / "rm/reward_model.json").read_text())
    assert meta["backbone_class"] == "LlamaModel" and meta["peft_config"]["r"] == 4
    loaded = RewardModel.load(tmp_path / "rm", device="cpu")
    assert loaded.is_peft
    assert np.array_equal(loaded.score(prompts, good), rm.score(prompts, good))
    assert {n for n, p in loaded.net.named_parameters() if p.requires_grad} == names  # resumes training the same parts


def test_dpo_with_a_lora_policy_resumes_exactly(llama_path, tmp_path) -> None:
    from llm_gym.agents.dpo import DPO, DPOConfig
    from llm_gym.core.preferences import Comparison

    comparisons = [Comparison(p, (" good good .", " bad ."), (0, 1)) for p in PROMPTS]
    config = DPOConfig(batch_size=2, learning_rate=1e-2, heldout_fraction=0.0)
    torch.manual_seed(0)  # LoRA's A matrices are drawn from torch's generator
    straight = DPO(lora_policy(llama_path), comparisons, config, np.random.default_rng(7)).learn(8)
    torch.manual_seed(0)
    first = DPO(lora_policy(llama_path), comparisons, config, np.random.default_rng(7)).learn(4)
    assert isinstance(first.reference, AdapterDisabledReference)
    first.save(tmp_path / "ckpt")
    resumed = DPO.load(tmp_path / "ckpt", comparisons)
    assert resumed.policy.is_peft and not any(p.requires_grad for p in resumed.reference.model.parameters())
    assert isinstance(resumed.reference, AdapterDisabledReference)  # the base once, not a second copy
    resumed.learn(8)
    a, b = dict(straight.policy.model.named_parameters()), dict(resumed.policy.model.named_parameters())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_on_policy_agent_with_a_lora_policy_resumes_exactly_from_its_own_files(tmp_path, tokenizer) -> None:
    """The checkpoint carries its base (`reference/`): it resumes after the base folder is gone, holding the base once."""
    base = tiny_llama_folder(tmp_path / "base", tokenizer)
    reward = lambda prompts, completions: np.array([c.count("e") for c in completions], dtype=np.float64)  # noqa: E731
    config = RLOOConfig(sampling=SAMPLING, learning_rate=1e-2, minibatch_size=4, kl_coef=0.1, log_samples_every=0,
                        group_size=2)

    def make(steps: int) -> RLOO:
        torch.manual_seed(0)  # LoRA's A matrices are drawn from torch's generator
        agent = RLOO(lora_policy(base), PromptBanditVecEnv(PROMPTS, reward, num_envs=4, group_size=2), config,
                     rng=np.random.default_rng(0), logger=Logger(None))
        for _ in range(steps):
            agent.train_iteration()
        return agent

    straight = make(3)
    first = make(1)
    first.save(tmp_path / "ckpt")
    (tmp_path / "base").rename(tmp_path / "moved")  # the adapter config names a base that is no longer there
    resumed = RLOO.load(tmp_path / "ckpt", env=PromptBanditVecEnv(PROMPTS, reward, num_envs=4, group_size=2),
                        logger=Logger(None))
    assert resumed.policy.is_peft and isinstance(resumed.reference, AdapterDisabledReference)
    assert storages(resumed.policy.model, resumed.reference.model) == storages(resumed.policy.model)
    for _ in range(2):
        resumed.train_iteration()
    a, b = dict(straight.policy.model.named_parameters()), dict(resumed.policy.model.named_parameters())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


GPT2_C_ATTN = {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"], "fan_in_fan_out": True}
MERGE_CASES = {  # (model, LoRA fields): every kind of adapted weight a merged save must carry over
    "llama-q-v": ("llama", {}),
    "gpt2-c_attn": ("gpt2", GPT2_C_ATTN),  # Conv1D stores W transposed (fan_in_fan_out)
    "gpt2-tied-wte": ("gpt2", {"r": 4, "lora_alpha": 8, "target_modules": ["wte"]}),  # LoRA on a tied embedding
    "llama-embedding": ("llama", {"target_modules": ["embed_tokens", "q_proj"]}),
    "gpt2-modules_to_save": ("gpt2", {**GPT2_C_ATTN, "modules_to_save": ["ln_f"]}),  # a trained copy of ln_f
    "gpt2-dora": ("gpt2", {**GPT2_C_ATTN, "use_dora": True}),  # the magnitude vector rescales W + delta
    "llama-dora": ("llama", {"use_dora": True}),
    "gpt2-lora_bias": ("gpt2", {**GPT2_C_ATTN, "lora_bias": True}),
}


@pytest.mark.parametrize("case", list(MERGE_CASES))
def test_a_merged_save_is_a_plain_model_that_computes_what_the_adapter_did(case, llama_path, tiny_model,
                                                                            tmp_path) -> None:
    """`save_pretrained(merged=True)` computes what the adapted model does, for every kind of adapted weight.

    W + (alpha/r) B A per layer (GPT-2's Conv1D stores W transposed), embeddings, DoRA's magnitude, a
    modules_to_save copy; the live model untouched; a tied embedding written untied.
    """
    arch, lora = MERGE_CASES[case]
    if arch == "llama":
        policy = lora_policy(llama_path, **lora)
    else:
        policy = Policy.from_pretrained(tiny_model.path, device="cpu", peft_config=lora)
    rollout = policy.sample(PROMPTS, SAMPLING, seed=0)
    adapter_steps(policy, rollout)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # move every trained tensor well away from its start (LoRA's B, DoRA's magnitude, copies)
        for p in policy.model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    before = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    policy.save_pretrained(tmp_path / "merged", merged=True)
    assert all(torch.equal(p, before[n]) for n, p in policy.model.named_parameters())  # nothing merged in place
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    merged = Policy.from_pretrained(tmp_path / "merged", device="cpu")
    assert not merged.is_peft
    with torch.no_grad():
        assert torch.allclose(merged.log_probs(rollout, SAMPLING), policy.log_probs(rollout, SAMPLING), atol=1e-5)
        assert not torch.allclose(merged.log_probs(rollout, SAMPLING),
                                  AdapterDisabledReference(policy).log_probs(rollout, SAMPLING), atol=1e-3)
    tied = json.loads((tmp_path / "merged" / "config.json").read_text()).get("tie_word_embeddings", True)  # 4.x omits a default
    if arch == "gpt2":  # GPT-2 ties its output layer to wte: kept where the merge leaves wte alone
        assert tied is (case != "gpt2-tied-wte")


@pytest.mark.parametrize("tuner", ["LoHaConfig", "IA3Config"])
def test_a_merged_save_of_another_tuner_is_refused_with_the_way_out(tuner, llama_path, tmp_path) -> None:
    fields = {"target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM"}
    if tuner == "IA3Config":
        fields["feedforward_modules"] = []
    policy = Policy.from_pretrained(llama_path, device="cpu", peft_config=getattr(peft, tuner)(**fields))
    with pytest.raises(ValueError, match=r"LoRA \(and DoRA\) adapters only.*save the adapter instead"):
        policy.save_pretrained(tmp_path / "merged", merged=True)
    policy.save_pretrained(tmp_path / "adapter")  # the way out works
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
