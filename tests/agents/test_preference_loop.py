"""The Christiano loop on the tiny model: schedules, partial and late oracles, resume from the store, selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm_gym import (
    GoldScorer,
    Logger,
    Policy,
    PreferenceStore,
    RewardEnsemble,
    RewardModel,
    RewardTrainer,
    RewardTrainerConfig,
    SamplingConfig,
    SyntheticOracle,
)
from llm_gym.agents import PPO, RLOO, PPOConfig, RLOOConfig
from llm_gym.agents.lm_preferences import CompletionSource, RewardModelLearner
from llm_gym.agents.preference_loop import (
    DisagreementSelector,
    PreferenceLoop,
    PreferenceLoopConfig,
    RandomSelector,
)
from llm_gym.envs import PromptBanditVecEnv

from doubles import SlowOracle

PROMPTS = ["the film was", "review of the blender :", "i bought this laptop and", "the hotel is", "this novel"]
SAMPLING = SamplingConfig(max_new_tokens=8)


def build(tiny_model, store_path, oracle_wrapper=None, ensemble=False, selector=None, logger=None, inner="ppo", **schedule):
    gold = GoldScorer()
    policy = Policy.from_pretrained(tiny_model.path, device="cpu")
    if ensemble:
        rm = RewardEnsemble.from_pretrained(tiny_model.path, 2, device="cpu")
    else:
        rm = RewardModel.from_pretrained(tiny_model.path, device="cpu", head_seed=0)
    if inner == "rloo":  # any on-policy agent can be the inner agent: RLOO with groups of 4 completions per prompt
        env = PromptBanditVecEnv(PROMPTS, rm, num_envs=8, gold_fn=gold, group_size=4)
        inner = RLOO(policy, env, RLOOConfig(sampling=SAMPLING, minibatch_size=4, group_size=4, log_samples_every=0),
                     rng=np.random.default_rng(0), logger=logger)
    else:
        env = PromptBanditVecEnv(PROMPTS, rm, num_envs=8, gold_fn=gold)
        inner = PPO(policy, env, PPOConfig(sampling=SAMPLING, minibatch_size=4, n_epochs=1, log_samples_every=0),
                    rng=np.random.default_rng(0), logger=logger)
    oracle = SyntheticOracle(gold, rng=np.random.default_rng(1), temperature=0.5)
    if oracle_wrapper is not None:
        oracle = oracle_wrapper(oracle)
    trainer = RewardTrainer(RewardTrainerConfig(epochs=1, learning_rate=1e-3, heldout_fraction=0.2), rng=np.random.default_rng(2))
    learner = RewardModelLearner(rm, trainer, rng=np.random.default_rng(3), gold_fn=gold)
    source = CompletionSource(policy, PROMPTS, SAMPLING, rng=np.random.default_rng(4))
    config = PreferenceLoopConfig(**{"total_labels": 40, "initial_labels": 16, "labels_per_round": 8, "steps_per_round": 8,
                                     "oversample": 2, **schedule})
    store = PreferenceStore(store_path)
    loop = PreferenceLoop(inner, source, selector or RandomSelector(), oracle, learner, store, config,
                          rng=np.random.default_rng(5), logger=logger)
    return loop, store, rm


@pytest.mark.parametrize("inner", ["ppo", "rloo"])
def test_online_loop_spends_the_budget_and_logs(tiny_model, tmp_path, inner) -> None:
    logger = Logger(None)
    loop, store, rm = build(tiny_model, tmp_path / "labels.sqlite", logger=logger, inner=inner)
    before = rm.score(PROMPTS, [" great ."] * 5)
    assert loop.learn(total_steps=40) is loop
    counts = store.counts()
    assert counts["queries"] == 40 and counts["answers"] == 40 and counts["pending"] == 0
    assert loop.num_timesteps == 40 and loop.inner.num_timesteps == 40
    assert not np.allclose(before, rm.score(PROMPTS, [" great ."] * 5)), "the reward model was trained"
    labels = [v for _, v in logger.history["oracle/labels_total"]]
    assert labels[0] == 16 and labels[-1] == 40 and labels == sorted(labels), "labels arrive over training"
    assert {"oracle/answered_fraction", "reward_model/accuracy", "reward_model/gold_agreement", "objective/gold",
            "objective/rm_score"} <= set(logger.history)


def test_offline_asks_everything_up_front(tiny_model, tmp_path) -> None:
    logger = Logger(None)
    loop, store, _ = build(tiny_model, tmp_path / "labels.sqlite", logger=logger, total_labels=24, initial_labels=24)
    loop.learn(total_steps=24)
    assert [v for _, v in logger.history["oracle/labels_total"]] == [24] * len(logger.history["oracle/labels_total"])


def test_partial_and_late_answers_are_folded_in(tiny_model, tmp_path) -> None:
    loop, store, _ = build(tiny_model, tmp_path / "labels.sqlite", oracle_wrapper=SlowOracle, total_labels=24,
                           initial_labels=8, labels_per_round=8)
    loop.learn(total_steps=8)
    first = store.counts()
    assert first["answers"] < first["queries"], "the slow labeller left queries pending; training went on"
    loop.learn(total_steps=48)
    final = store.counts()
    assert final["queries"] == 24, "the budget counts queries posed"
    assert final["answers"] > first["answers"] and final["pending"] < final["queries"] / 2
    assert loop.oracle.calls >= 4


def test_a_stopped_run_resumes_with_all_its_labels(tiny_model, tmp_path) -> None:
    path = tmp_path / "labels.sqlite"
    loop, store, _ = build(tiny_model, path, total_labels=32, initial_labels=16)
    loop.learn(total_steps=8)
    asked = store.counts()["queries"]
    store.close()  # the run stops here
    again, store2, _ = build(tiny_model, path, total_labels=32, initial_labels=16)
    assert store2.counts()["queries"] == asked and store2.counts()["answers"] == asked
    again.learn(total_steps=32)
    assert store2.counts()["queries"] == 32, "the remaining budget only, not the whole budget again"


@pytest.mark.parametrize("mode, fresh", [("rounds", True), ("online", False)])
def test_rounds_retrain_from_scratch_online_warm_starts(tiny_model, tmp_path, mode, fresh) -> None:
    loop, store, rm = build(tiny_model, tmp_path / "labels.sqlite", mode=mode, total_labels=24, initial_labels=8)
    flags = []
    fit = loop.learner.fit
    loop.learner.fit = lambda comparisons, fresh=False: flags.append(fresh) or fit(comparisons, fresh)
    loop.learn(total_steps=16)
    assert flags and all(f is fresh for f in flags)


def test_fresh_fit_restores_the_initial_weights(tiny_model) -> None:
    rm = RewardModel.from_pretrained(tiny_model.path, device="cpu", head_seed=0)
    initial = [p.detach().clone() for p in rm.parameters()]
    trainer = RewardTrainer(RewardTrainerConfig(epochs=1, learning_rate=1e-2, heldout_fraction=0.0), rng=np.random.default_rng(0))
    learner = RewardModelLearner(rm, trainer, rng=np.random.default_rng(0))
    from llm_gym import Comparison

    data = [Comparison(p, (" great .", " bad ."), (0, 1)) for p in PROMPTS]
    learner.fit(data)
    assert any(not torch.equal(a, b) for a, b in zip(initial, rm.parameters())), "a fit moves the weights"
    trainer.fit = lambda *args, **kwargs: {}  # a fit that trains nothing: only the restore remains
    learner.fit(data, fresh=True)
    assert all(torch.equal(a, b) for a, b in zip(initial, rm.parameters()))


def test_disagreement_selection_prefers_uncertain_queries(tiny_model, tmp_path) -> None:
    loop, store, rm = build(tiny_model, tmp_path / "labels.sqlite", ensemble=True, selector=DisagreementSelector())
    queries = loop.source.propose(12)
    scores = loop.learner.disagreement(queries)
    assert scores.shape == (len(queries),) and (scores >= 0).all() and scores.max() > 0
    chosen = DisagreementSelector().select(queries, 3, loop.learner, np.random.default_rng(0))
    assert {q.query_id for q in chosen} == {queries[i].query_id for i in np.argsort(-scores)[:3]}
    single = RewardModelLearner(RewardModel.from_pretrained(tiny_model.path, device="cpu"), RewardTrainer(), np.random.default_rng(0))
    assert not single.disagreement(queries).any(), "one model has nothing to disagree with"
    loop.learn(total_steps=16)
    assert store.counts()["answers"] > 0


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="initial_labels"):
        PreferenceLoopConfig(total_labels=10, initial_labels=11)
    with pytest.raises(ValueError, match="mode"):
        PreferenceLoopConfig(mode="continuous")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="labels_per_round"):
        PreferenceLoopConfig(labels_per_round=0)
