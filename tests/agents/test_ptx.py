"""ptx on its own (InstructGPT's pretraining term): the draws, the token counts, the gradient it adds; and in RLOO/GRPO."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm_gym import Logger, Policy, SamplingConfig
from llm_gym.agents.grpo import GRPO, GRPOConfig
from llm_gym.agents.ptx import PtxMixer
from llm_gym.agents.rloo import RLOO, RLOOConfig
from llm_gym.envs import PromptBanditVecEnv
from llm_gym.infra.distributed import Distributed
from llm_gym.infra.update import UpdateStep
from llm_gym.models.lm import document_batch, labelled_tokens, lm_loss

TEXTS = ["the film was great .", "the blender is loud , and i like it .", "this novel is long ."]


def test_draws_counts_and_the_gradient_of_coef_times_the_mean_nll(policy: Policy) -> None:
    mixer = PtxMixer(TEXTS, coef=0.5, batch_size=4, policy=policy, distributed=Distributed())
    rng = np.random.default_rng(0)
    batches = mixer.draw(rng, steps=2)
    replay = np.random.default_rng(0).integers(len(TEXTS), size=4)
    drawn = [TEXTS[i] for i in replay]
    assert len(batches) == 2 and all(w == 1.0 for _, w in batches)
    expected = document_batch(policy.tokenizer, drawn[:2], policy.context_length)
    assert torch.equal(batches[0][0].input_ids, expected.input_ids)
    total = PtxMixer.tokens(batches)
    assert total == sum(labelled_tokens(b.labels) for b, _ in batches)
    # the gradient: 0.5 x the token mean of the NLL over both micro-batches, by hand
    update = UpdateStep(torch.optim.SGD(policy.model.parameters(), lr=0.0), [policy.model])
    policy.model.zero_grad()
    for batch in batches:
        mixer.backward(update, policy.model, batch, total)
    got = [p.grad.clone() for p in policy.model.parameters()]
    policy.model.zero_grad()
    whole = document_batch(policy.tokenizer, drawn, policy.context_length)
    (0.5 * lm_loss(policy.model, *whole, reduction="sum") / labelled_tokens(whole.labels)).backward()
    for a, p in zip(got, policy.model.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6)
    # a stand-in (weight 0) adds nothing
    policy.model.zero_grad()
    mixer.backward(update, policy.model, (batches[0][0], 0.0), total)
    assert all(float(p.grad.abs().max()) == 0.0 for p in policy.model.parameters() if p.grad is not None)
    with pytest.raises(ValueError, match="ptx needs pretraining texts"):
        PtxMixer([], 0.5, 4, policy, Distributed())


@pytest.mark.parametrize("cls", [RLOO, GRPO])
def test_the_group_algorithms_mix_in_ptx(policy: Policy, cls) -> None:
    logger = Logger(None)
    config_class = RLOOConfig if cls is RLOO else GRPOConfig
    config = config_class(sampling=SamplingConfig(max_new_tokens=6), minibatch_size=4, group_size=4, ptx_coef=0.5,
                          ptx_batch_size=2, gradient_accumulation_steps=2, log_samples_every=0)
    env = PromptBanditVecEnv(["the film was", "the hotel is"], lambda p, c: [float(len(x)) for x in c], num_envs=8,
                             group_size=4)
    agent = cls(policy, env, config, rng=np.random.default_rng(0), ptx_texts=TEXTS, logger=logger)
    agent.train_iteration()
    assert logger.history["train/ptx_loss"][0][1] > 0
