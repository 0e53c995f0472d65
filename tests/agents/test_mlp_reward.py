"""The MLP reward learner: fits segment comparisons, scores staying alive above the absorbing state, restores with fresh."""

from __future__ import annotations

import numpy as np
import torch

from llm_gym import PreferenceStore, Query
from llm_gym.agents.mlp_reward import MLPRewardLearner, MLPRewardLearnerConfig
from llm_gym.agents.segments import SegmentSource, segment_oracle
from llm_gym.feedback.oracles import collect

from cartpole import cartpole_buffer, fill


def test_mlp_learner_fits_comparisons_and_fresh_restores() -> None:
    buffer = cartpole_buffer(L=20)
    fill(buffer, 1500)
    source = SegmentSource(buffer, "CartPole-v1", np.random.default_rng(1))
    with PreferenceStore(":memory:") as store:
        collect(segment_oracle(buffer, np.random.default_rng(2), temperature=0.0), source.propose(200), store)
        data = store.comparisons()
    train, test = data[:150], data[150:]
    learner = MLPRewardLearner(buffer, np.random.default_rng(0), MLPRewardLearnerConfig(epochs=10))
    initial = [p.detach().clone() for m in learner.members for p in m.parameters()]
    metrics = learner.fit(train)
    assert metrics["train_accuracy"] > 0.8
    held = learner.fit(test)  # heldout_accuracy is measured before training on the new comparisons
    assert held["heldout_accuracy"] > 0.8
    assert learner.scale > 0
    o, a = buffer.recent_obs_act(500)
    assert np.mean(learner.raw(o, a) > 0) > 0.9, "staying alive scores above the absorbing state's 0"
    d = learner.disagreement([Query(c.prompt, c.completions) for c in test[:10]])
    assert d.shape == (10,) and (d >= 0).all()
    learner.fit([], fresh=True)
    assert all(torch.equal(x, y) for x, y in zip(initial, (p for m in learner.members for p in m.parameters())))
