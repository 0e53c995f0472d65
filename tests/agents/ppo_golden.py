"""A small, fully seeded PPO run whose final parameters are pinned in `data/ppo_golden.safetensors`.

The file was written by this script with PPO as it was before its rollout, reference/KL,
update step, checkpointing and monitors moved into shared parts (`agents/`), so
`test_ppo_golden.py` checks that the refactored PPO computes the same parameters (within
1e-6) for the same seed. The model is a random-init tiny GPT-2 (no pretraining, so the pin
does not depend on the built-in model's build), the run exercises KL (adaptive), score
whitening, GAE, ptx and both clips (ratio and value: a large learning rate and four epochs
make them fire; the pin holds the mean clip fraction, and the test checks it is not zero)
over two iterations. It imports only names both layouts export, so the pin can be written
by an older checkout (`PYTHONPATH=<old package> python tests/agents/ppo_golden.py`).

    .venv/bin/python tests/agents/ppo_golden.py     # rewrite the pin (only when PPO's maths change on purpose)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from llm_gym import GoldScorer, Logger, Policy, ReviewTaskConfig, SamplingConfig, generate_review_task, train_tokenizer
from llm_gym.agents import PPO, PPOConfig
from llm_gym.envs import PromptBanditVecEnv

PIN = Path(__file__).parent / "data" / "ppo_golden.safetensors"
# parameters with an analytically zero gradient whose Adam steps are float noise (see test_distributed.py)
NOISE_ONLY = ("attn.c_attn.bias",)


def run(folder: Path) -> dict[str, torch.Tensor]:
    """Build the model into `folder`, run two PPO iterations, return the final parameters (policy and value head)."""
    task = generate_review_task(ReviewTaskConfig(n_pretrain=300, n_heldout=10, n_prompts=40, n_eval_prompts=0,
                                                 n_demonstrations=0))
    tokenizer = train_tokenizer(task.pretrain_texts, 320)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=48, n_embd=16, n_layer=1, n_head=2,
                                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                       pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    policy = Policy.from_pretrained(folder, device="cpu")
    gold = GoldScorer()
    env = PromptBanditVecEnv(task.prompts, gold, num_envs=8, gold_fn=gold)
    config = PPOConfig(sampling=SamplingConfig(max_new_tokens=6), minibatch_size=4, n_epochs=4, learning_rate=1e-2,
                       clip_range=0.1, clip_range_vf=0.002, vf_learning_rate=0.003, kl_coef=0.1, adaptive_kl=True, target_kl=1.0, kl_horizon=100,
                       whiten_scores=True, ptx_coef=0.1, ptx_batch_size=2, log_samples_every=0)
    logger = Logger(None)
    agent = PPO(policy, env, config, rng=np.random.default_rng(7), ptx_texts=task.pretrain_texts, logger=logger)
    agent.learn(16)
    params = {f"policy.{k}": v.detach().clone() for k, v in policy.model.state_dict().items()}
    params.update({f"value_head.{k}": v.detach().clone() for k, v in agent.value_head.state_dict().items()})
    params["kl_coef"] = torch.tensor([agent.kl_ctl.value], dtype=torch.float64)
    params["clipfrac"] = torch.tensor([float(np.mean([v for _, v in logger.history["train/clipfrac"]]))], dtype=torch.float64)
    return params


if __name__ == "__main__":
    import tempfile

    from safetensors.torch import save_file

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        params = run(Path(tmp))
    PIN.parent.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in params.items() if not k.endswith(".attn.masked_bias")}, str(PIN))
    print(f"wrote {PIN} ({PIN.stat().st_size} bytes, {len(params)} tensors)", file=sys.stderr)
