"""SFT: loss on answer tokens only, held-out loss falls, the model saves with save_pretrained, the deprecated name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm_gym import Demonstration, Logger, Policy, TinyLMConfig, generate_review_task
from llm_gym.agents.sft import SFTConfig, SFTTrainer, sft_batch


def test_prompt_tokens_are_masked(policy: Policy) -> None:
    demos = [Demonstration("the film was", " great ."), Demonstration("review of the blender :", " it is really good .")]
    batch = sft_batch(policy, demos)
    tok = policy.tokenizer
    for i, d in enumerate(demos):
        n_prompt = len(tok(d.prompt)["input_ids"])
        answer = tok(d.completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        labelled = batch.labels[i][batch.labels[i] != -100].tolist()
        assert labelled == answer, "exactly the answer tokens and EOS are labelled"
        assert (batch.labels[i, :n_prompt] == -100).all()
        assert batch.input_ids[i, : n_prompt + len(answer)].tolist() == tok(d.prompt)["input_ids"] + answer


def test_sft_lowers_heldout_loss_and_round_trips(policy: Policy, tmp_path) -> None:
    task = generate_review_task(TinyLMConfig.smoke().task)
    logger = Logger(None)
    trainer = SFTTrainer(SFTConfig(epochs=4, batch_size=8, learning_rate=5e-3), rng=np.random.default_rng(0), logger=logger)
    metrics = trainer.fit(policy, task.demonstrations)
    assert metrics["sft_heldout_loss"] < 0.9 * metrics["sft_heldout_loss_before"]
    assert [s for s, _ in logger.history["train/sft_heldout_loss"]][0] == 0
    assert "train/sft_loss" in logger.history
    policy.save_pretrained(tmp_path / "sft")
    again = Policy.from_pretrained(tmp_path / "sft", device="cpu")
    held = task.demonstrations[:8]
    assert trainer.heldout_loss(again, held) == pytest.approx(trainer.heldout_loss(policy, held), rel=1e-5)


def test_sft_errors(policy: Policy) -> None:
    with pytest.raises(ValueError, match="at least one demonstration"):
        SFTTrainer(SFTConfig(), rng=np.random.default_rng(0)).fit(policy, [])
    with pytest.raises(ValueError, match="heldout_fraction"):
        SFTConfig(heldout_fraction=1.0)
    with pytest.raises(TypeError, match="numpy Generator"):
        SFTTrainer(SFTConfig(), rng=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not both"):
        SFTTrainer(SFTConfig(), rng=np.random.default_rng(0), seed=0)
    # seed= is rng=np.random.default_rng(seed), as on the agents
    assert SFTTrainer(SFTConfig(), seed=3).rng.integers(2**62) == np.random.default_rng(3).integers(2**62)


def test_deprecated_train_is_fit(tiny_model) -> None:
    demos = generate_review_task(TinyLMConfig.smoke().task).demonstrations[:12]
    results = []
    for call in ("fit", "train"):
        policy = Policy.from_pretrained(tiny_model.path, device="cpu")
        trainer = SFTTrainer(SFTConfig(epochs=1, batch_size=4), rng=np.random.default_rng(0))
        torch.manual_seed(0)  # dropout draws from torch's global generator
        if call == "train":
            with pytest.warns(DeprecationWarning, match="SFTTrainer.fit"):
                metrics = trainer.train(policy, demos)
        else:
            metrics = trainer.fit(policy, demos)
        results.append((metrics, [p.detach().clone() for p in policy.model.parameters()]))
    (m1, p1), (m2, p2) = results
    assert m1 == m2 and all(torch.equal(a, b) for a, b in zip(p1, p2))
