"""SFT: loss on answer tokens only, held-out loss falls, the model saves with save_pretrained."""

from __future__ import annotations

import numpy as np
import pytest

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
    metrics = trainer.train(policy, task.demonstrations)
    assert metrics["sft_heldout_loss"] < 0.9 * metrics["sft_heldout_loss_before"]
    assert [s for s, _ in logger.history["train/sft_heldout_loss"]][0] == 0
    assert "train/sft_loss" in logger.history
    policy.save_pretrained(tmp_path / "sft")
    again = Policy.from_pretrained(tmp_path / "sft", device="cpu")
    held = task.demonstrations[:8]
    assert trainer.heldout_loss(again, held) == pytest.approx(trainer.heldout_loss(policy, held), rel=1e-5)


def test_sft_errors(policy: Policy) -> None:
    with pytest.raises(ValueError, match="at least one demonstration"):
        SFTTrainer(SFTConfig(), rng=np.random.default_rng(0)).train(policy, [])
    with pytest.raises(ValueError, match="heldout_fraction"):
        SFTConfig(heldout_fraction=1.0)
    with pytest.raises(TypeError, match="numpy Generator"):
        SFTTrainer(SFTConfig(), rng=0)  # type: ignore[arg-type]
