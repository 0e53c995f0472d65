"""One SFT step, one reward-model step and two PPO iterations on the tiny model, data-parallel or not.

Run by tests/infra/test_distributed.py under `torchrun --nproc_per_node 2` (each process writes
its parameters to `out/{stage}_rank{r}.safetensors`) and imported by it for the
single-process reference over the same global batches. Logs go to `out/logs_rank{r}` and
checkpoints to `out/ckpt_rank{r}`, through the main-process-only paths: only rank 0's
folders may exist afterwards.

    python tests/distributed_worker.py MODEL_PATH OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from llm_gym import Policy, RewardModel, RewardTrainer, RewardTrainerConfig, SamplingConfig
from llm_gym.agents.ppo import PPO, PPOConfig
from llm_gym.agents.sft import SFTConfig, SFTTrainer
from llm_gym.infra.distributed import Distributed
from llm_gym.envs import PromptBanditVecEnv
from llm_gym.core.preferences import Comparison
from llm_gym.core.task import Demonstration

PROMPTS = ["the film was", "review of the blender :", "i bought this laptop and", "the hotel is", "this novel"]
WORDS = ["great", "bad", "fine", "loud and cheap", "a joy to use", "broken after a week", "not good", "lovely"]
DEMOS = [Demonstration(p, " " + w) for p in PROMPTS for w in WORDS[:2]]  # 10: 2 held out, one batch of 8
COMPARISONS = [
    Comparison(PROMPTS[i % 5], (" " + WORDS[i], " " + WORDS[(i + 3) % 8], " " + WORDS[(i + 5) % 8]), (0, 1, 2) if i % 2 else (2, 0, 1))
    for i in range(8)
]
PTX_TEXTS = [d.prompt + d.completion for d in DEMOS]


def count_e(prompts: list[str], completions: list[str]) -> np.ndarray:
    return np.array([c.count("e") for c in completions], dtype=np.float64)


def params(module: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach().cpu().clone().contiguous() for k, v in module.state_dict().items()}


def run(model_path: str, out: Path, dist: Distributed, accumulation: int) -> dict[str, torch.Tensor]:
    """Train the three stages; return every trained tensor plus the PPO controller/whitening state."""
    device = dist.device or "cpu"
    rank = dist.rank
    result: dict[str, torch.Tensor] = {}

    # dropout off: its masks depend on how the batch is split, so with it the runs agree only in distribution
    policy = Policy.from_pretrained(model_path, device=device, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    sft = SFTTrainer(
        SFTConfig(epochs=1, batch_size=8, heldout_fraction=0.2, gradient_accumulation_steps=accumulation),
        rng=np.random.default_rng(0), logger=dist.make_logger(out / f"logs_rank{rank}" / "sft"), distributed=dist,
    )
    sft.fit(policy, DEMOS)
    result.update(params(policy.model, "sft."))

    rm = RewardModel.from_pretrained(model_path, device=device, head_seed=0)
    trainer = RewardTrainer(
        RewardTrainerConfig(epochs=1, batch_size=8, heldout_fraction=0.0, learning_rate=1e-3, gradient_accumulation_steps=accumulation),
        logger=dist.make_logger(out / f"logs_rank{rank}" / "rm"), rng=np.random.default_rng(1), distributed=dist,
    )
    trainer.fit(rm, COMPARISONS)
    dist.main_process_only(rm.save)(out / f"ckpt_rank{rank}" / "rm")
    result.update(params(rm.net, "rm."))

    policy = Policy.from_pretrained(model_path, device=device)
    config = PPOConfig(
        sampling=SamplingConfig(max_new_tokens=6), learning_rate=3e-3, n_epochs=2, minibatch_size=4, kl_coef=0.05,
        adaptive_kl=True, target_kl=0.01, kl_horizon=100, whiten_scores=True, ptx_coef=0.5, ptx_batch_size=4,
        log_samples_every=1, gradient_accumulation_steps=accumulation,
    )
    scored = []  # completions this process's reward function saw

    def counting(prompts: list[str], completions: list[str]) -> np.ndarray:
        scored.extend(completions)
        return count_e(prompts, completions)

    agent = PPO(
        policy, PromptBanditVecEnv(PROMPTS, dist.sharded(counting), num_envs=4), config, rng=np.random.default_rng(2),
        ptx_texts=PTX_TEXTS, logger=dist.make_logger(out / f"logs_rank{rank}" / "ppo"),
        distributed=dist,
    )
    for _ in range(2):
        agent.train_iteration()
    agent.save(out / f"ckpt_rank{rank}" / "ppo")
    result.update(params(policy.model, "ppo.policy."))
    result.update(params(agent.value_head, "ppo.value_head."))
    result["ppo.kl_coef"] = torch.tensor(agent.kl_ctl.value, dtype=torch.float64)
    result["ppo.scored"] = torch.tensor(float(len(scored) * dist.world_size), dtype=torch.float64)  # the whole batch, over all processes
    result["ppo.score_moments"] = torch.tensor([agent.score_moments.mean, agent.score_moments.var], dtype=torch.float64)
    return result


def main() -> None:
    model_path, out = sys.argv[1], Path(sys.argv[2])
    torch.manual_seed(0)
    dist = Distributed.from_environment(cpu=True)
    assert dist.world_size == 2, f"expected 2 processes, got {dist.world_size}"
    result = run(model_path, out, dist, accumulation=2)
    save_file(result, str(out / f"params_rank{dist.rank}.safetensors"))
    dist.close()  # waits for every rank, then leaves the group


if __name__ == "__main__":
    main()
