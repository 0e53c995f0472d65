"""The Christiano loop on the tiny model: schedules, partial and late oracles, resume from the store, selection."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pytest
import torch

from llm_gym import (
    Answer,
    GoldScorer,
    Logger,
    Policy,
    PreferenceStore,
    Query,
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
from llm_gym.feedback.oracles import NoAnswersError, PreferenceOracle

from doubles import SlowOracle


class AbsentOracle(PreferenceOracle):
    """A labeller who never answers (stdin closed, nobody at the web page)."""

    name = "absent"

    def answer(self, queries: Sequence[Query]) -> Iterator[Answer]:
        return iter(())


class TieOracle(PreferenceOracle):
    """Answers every query with a tie (nothing a reward model can learn from)."""

    name = "shrug"

    def answer(self, queries: Sequence[Query]) -> Iterator[Answer]:
        return (Answer(q.query_id, (0,) * q.k, self.name) for q in queries)


class FirstRoundOracle(PreferenceOracle):
    """Answers the first round, then goes away."""

    name = "first-round-only"

    def __init__(self, inner: PreferenceOracle) -> None:
        self.inner, self.calls = inner, 0

    def answer(self, queries: Sequence[Query]) -> Iterator[Answer]:
        self.calls += 1
        return self.inner.answer(queries) if self.calls == 1 else iter(())

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


def test_partial_and_late_answers_are_folded_in(tiny_model, tmp_path, caplog) -> None:
    loop, store, _ = build(tiny_model, tmp_path / "labels.sqlite", oracle_wrapper=SlowOracle, total_labels=24,
                           initial_labels=8, labels_per_round=8, on_no_answers="wait")
    with caplog.at_level("WARNING", logger="llm_gym.agents.preference_loop"):
        loop.learn(total_steps=8)
    first = store.counts()
    assert first["answers"] < first["queries"], "the slow labeller left queries pending; training went on"
    assert "answered none of the 8 queries of the initial round" in caplog.text, "waiting is said, not silent"
    loop.learn(total_steps=48)
    final = store.counts()
    assert final["queries"] == 24, "the budget counts queries posed"
    assert final["answers"] > first["answers"] and final["pending"] < final["queries"] / 2
    assert loop.oracle.calls >= 4


def test_an_oracle_that_answers_nothing_stops_the_loop_and_keeps_the_queries(tiny_model, tmp_path) -> None:
    """No answer and no earlier label: training would optimise an untrained reward model, so `learn` says so."""
    path = tmp_path / "labels.sqlite"
    loop, store, _ = build(tiny_model, path, oracle_wrapper=lambda _: AbsentOracle())
    with pytest.raises(NoAnswersError, match=r"'absent' answered none of the 16 queries of the initial round.*"
                                             r"16 pending.*llm-gym label .*on_no_answers='wait'"):
        loop.learn(total_steps=16)
    assert loop.inner.num_timesteps == 0, "the agent never trained against the untrained reward model"
    store.close()
    with PreferenceStore(path) as reopened:  # the queries were written before the raise
        assert reopened.counts() == {"queries": 16, "answers": 0, "pending": 16}


def test_an_oracle_that_answers_only_ties_stops_the_loop(tiny_model, tmp_path) -> None:
    loop, store, _ = build(tiny_model, tmp_path / "labels.sqlite", oracle_wrapper=lambda _: TieOracle())
    with pytest.raises(NoAnswersError, match="answered 16 of the 16 queries of the initial round, all with ties"):
        loop.learn(total_steps=16)
    assert store.counts()["answers"] == 16, "the ties stay in the store"


def test_on_no_answers_wait_trains_on_and_warns_each_round(tiny_model, tmp_path, caplog) -> None:
    loop, store, _ = build(tiny_model, tmp_path / "labels.sqlite", oracle_wrapper=lambda _: AbsentOracle(),
                           on_no_answers="wait")
    with caplog.at_level("WARNING", logger="llm_gym.agents.preference_loop"):
        loop.learn(total_steps=16)
    assert loop.inner.num_timesteps == 16, "a slow labeller: training goes on"
    warned = [r.getMessage() for r in caplog.records if "on_no_answers='wait'" in r.getMessage()]
    assert len(warned) == 3, "the initial round and both later rounds"
    assert "initial round" in warned[0] and "round 2" in warned[-1]
    assert store.counts() == {"queries": 32, "answers": 0, "pending": 32}


def test_a_round_without_answers_after_earlier_labels_goes_on_with_a_warning(tiny_model, tmp_path, caplog) -> None:
    """The reward model already learned from the first round: a silent round keeps it, and says so (an outage)."""
    loop, store, _ = build(tiny_model, tmp_path / "labels.sqlite", oracle_wrapper=FirstRoundOracle)
    with caplog.at_level("WARNING", logger="llm_gym.agents.preference_loop"):
        loop.learn(total_steps=16)
    assert loop.num_timesteps == 16 and store.counts()["answers"] == 16 and loop.oracle.calls == 3
    silent = [r.getMessage() for r in caplog.records if "answered none of the" in r.getMessage()]
    assert len(silent) == 2 and all("trained on the 16 answers given before" in m for m in silent), silent


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
    with pytest.raises(ValueError, match="on_no_answers must be 'raise' or 'wait'"):
        PreferenceLoopConfig(on_no_answers="ignore")  # type: ignore[arg-type]
