"""Stable-Baselines3 habits on every agent: `seed=`, SB3 callbacks (and lists of them), `predict`, and `act`'s refusal
of a bare string. One small set-up per agent; the same checks run over all of them."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO as SB3PPO
from stable_baselines3.common.callbacks import (BaseCallback, CallbackList, EveryNTimesteps, ProgressBarCallback,
                                                StopTrainingOnMaxEpisodes)
from stable_baselines3.common.vec_env import DummyVecEnv

from llm_gym import (
    Comparison,
    GoldScorer,
    Logger,
    Policy,
    PreferenceStore,
    RewardModel,
    RewardTrainer,
    RewardTrainerConfig,
    SamplingConfig,
    SyntheticOracle,
)
from llm_gym.agents import DPO, PPO, RLOO, BestOfN, BestOfNConfig, DPOConfig, PPOConfig, RLOOConfig, SB3Agent
from llm_gym.agents.base import Agent, StandInEnv, as_callback, vector_infos
from llm_gym.agents.lm_preferences import CompletionSource, RewardModelLearner
from llm_gym.agents.preference_loop import PreferenceLoop, PreferenceLoopConfig, RandomSelector
from llm_gym.envs import PromptBanditVecEnv
from llm_gym.envs.wrappers import LearnedRewardWrapper

PROMPTS = ["the film was", "the hotel is", "this novel", "my new phone is"]
SAMPLING = SamplingConfig(max_new_tokens=6)
GOOD, BAD = " it was great .", " it was awful ."


def e_count(prompts: list[str], completions: list[str]) -> list[float]:
    return [float(c.count("e")) for c in completions]


# ---------------------------------------------------------------------------------------------- one set-up per agent
def make_ppo(tiny_model, tmp_path, **randomness: Any) -> PPO:
    policy = Policy.from_pretrained(tiny_model.path, device="cpu")
    env = PromptBanditVecEnv(PROMPTS, e_count, num_envs=8)
    config = PPOConfig(sampling=SAMPLING, minibatch_size=8, n_epochs=1, log_samples_every=0)
    return PPO(policy, env, config, logger=Logger(None), **randomness)


def make_dpo(tiny_model, tmp_path, **randomness: Any) -> DPO:
    policy = Policy.from_pretrained(tiny_model.path, device="cpu")
    pairs = [Comparison(p, (GOOD, BAD), (0, 1)) for p in PROMPTS * 2]
    return DPO(policy, pairs, DPOConfig(batch_size=4, heldout_fraction=0.25, sampling=SAMPLING, learning_rate=1e-3),
               logger=Logger(None), **randomness)


def make_rloo(tiny_model, tmp_path, **randomness: Any) -> RLOO:
    policy = Policy.from_pretrained(tiny_model.path, device="cpu")
    env = PromptBanditVecEnv(PROMPTS, e_count, num_envs=4, group_size=2)
    config = RLOOConfig(sampling=SAMPLING, minibatch_size=4, group_size=2, n_epochs=1, log_samples_every=0)
    return RLOO(policy, env, config, logger=Logger(None), **randomness)


def make_best_of_n(tiny_model, tmp_path, **randomness: Any) -> BestOfN:
    policy = Policy.from_pretrained(tiny_model.path, device="cpu")
    return BestOfN(policy, e_count, BestOfNConfig(n=2, sampling=SAMPLING), **randomness)


def make_loop(tiny_model, tmp_path, **randomness: Any) -> PreferenceLoop:
    gold = GoldScorer()
    policy = Policy.from_pretrained(tiny_model.path, device="cpu")
    rm = RewardModel.from_pretrained(tiny_model.path, device="cpu", head_seed=0)
    inner = PPO(policy, PromptBanditVecEnv(PROMPTS, rm, num_envs=8), PPOConfig(sampling=SAMPLING, minibatch_size=8,
                n_epochs=1, log_samples_every=0), seed=0)
    trainer = RewardTrainer(RewardTrainerConfig(epochs=1, heldout_fraction=0.0), rng=np.random.default_rng(1))
    learner = RewardModelLearner(rm, trainer, rng=np.random.default_rng(2))
    source = CompletionSource(policy, PROMPTS, SAMPLING, rng=np.random.default_rng(3))
    oracle = SyntheticOracle(gold, rng=np.random.default_rng(4))
    config = PreferenceLoopConfig(total_labels=8, initial_labels=4, labels_per_round=2, steps_per_round=8, oversample=1)
    tmp_path.mkdir(exist_ok=True)
    store = PreferenceStore(tmp_path / "labels.sqlite")
    return PreferenceLoop(inner, source, RandomSelector(), oracle, learner, store, config, logger=Logger(None),
                          **randomness)


def make_sb3(tiny_model, tmp_path, **randomness: Any) -> SB3Agent:
    env = DummyVecEnv([lambda: LearnedRewardWrapper(gym.make("CartPole-v1"), None, None)])  # the true reward
    model = SB3PPO("MlpPolicy", env, n_steps=32, batch_size=32, n_epochs=1, seed=0, device="cpu")
    return SB3Agent(model, Logger(None), **randomness)


SEEDED: dict[str, Callable[..., Agent]] = {"ppo": make_ppo, "dpo": make_dpo, "best_of_n": make_best_of_n,
                                           "loop": make_loop}
"""The agents that take `rng=` or `seed=` (SB3Agent takes only `seed=`, SB3's own)."""
TRAINED = {"ppo": make_ppo, "dpo": make_dpo, "loop": make_loop}
"""The agents whose `learn` runs the SB3 callback protocol itself, with `self.model` the agent."""
LM = {"ppo": make_ppo, "dpo": make_dpo, "loop": make_loop, "best_of_n": make_best_of_n}


class Counter(BaseCallback):
    """A user's SB3 callback: records the protocol and stops training after `stop_after` steps."""

    def __init__(self, stop_after: int | None = None) -> None:
        super().__init__()
        self.stop_after = stop_after
        self.events: list[str] = []
        self.steps: list[int] = []

    def _init_callback(self) -> None:
        self.events.append("init")

    def _on_training_start(self) -> None:
        self.events.append("start")

    def _on_step(self) -> bool:
        self.steps.append(self.num_timesteps)
        return self.stop_after is None or self.n_calls < self.stop_after

    def _on_training_end(self) -> None:
        self.events.append("end")


# ---------------------------------------------------------------------------------------------- seed=
@pytest.mark.parametrize("name", SEEDED)
def test_seed_or_rng_one_of_them(tiny_model, tmp_path, name) -> None:
    make = SEEDED[name]
    with pytest.raises(TypeError, match="not both"):
        make(tiny_model, tmp_path, seed=0, rng=np.random.default_rng(0))
    with pytest.raises(TypeError, match=r"pass seed=<int> or rng="):
        make(tiny_model, tmp_path)
    with pytest.raises(TypeError, match="seed must be an int"):
        make(tiny_model, tmp_path, seed="0")
    seeded = make(tiny_model, tmp_path, seed=np.int64(3))
    given = make(tiny_model, tmp_path / "again", rng=np.random.default_rng(3))
    assert seeded.rng.bit_generator.state == given.rng.bit_generator.state, "seed=3 is rng=default_rng(3)"


def ppo_run(tiny_model, tmp_path, **randomness: Any) -> tuple[list[float], torch.Tensor]:
    agent = make_ppo(tiny_model, tmp_path, **randomness).learn(16)
    scores = [v for _, v in agent.logger.history["objective/rm_score"]]
    return scores, torch.cat([p.detach().flatten() for p in agent.policy.model.parameters()])


def test_the_same_seed_gives_the_same_ppo_run(tiny_model, tmp_path) -> None:
    scores, params = ppo_run(tiny_model, tmp_path, seed=7)
    again_scores, again_params = ppo_run(tiny_model, tmp_path, seed=7)
    rng_scores, rng_params = ppo_run(tiny_model, tmp_path, rng=np.random.default_rng(7))
    assert scores == again_scores == rng_scores and len(scores) == 2
    assert torch.equal(params, again_params) and torch.equal(params, rng_params)
    other_scores, other_params = ppo_run(tiny_model, tmp_path, seed=8)
    assert not torch.equal(params, other_params), "another seed, another run"


def test_the_same_seed_gives_the_same_dpo_run_and_best_of_n_answers(tiny_model, tmp_path) -> None:
    runs = [make_dpo(tiny_model, tmp_path, seed=5).learn(8), make_dpo(tiny_model, tmp_path, rng=np.random.default_rng(5)).learn(8)]
    assert runs[0].heldout_set == runs[1].heldout_set
    for a, b in zip(runs[0].policy.model.parameters(), runs[1].policy.model.parameters()):
        assert torch.equal(a, b)
    answers = [make_best_of_n(tiny_model, tmp_path, seed=2).act(PROMPTS) for _ in range(2)]
    assert answers[0] == answers[1]


def test_sb3_agent_seed_seeds_the_sb3_model(tiny_model, tmp_path) -> None:
    runs = [make_sb3(tiny_model, tmp_path, seed=4).learn(64) for _ in range(2)]
    for a, b in zip(runs[0].model.policy.parameters(), runs[1].model.policy.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(TypeError, match="seed must be an int"):
        make_sb3(tiny_model, tmp_path, seed=1.5)


# ---------------------------------------------------------------------------------------------- callbacks
@pytest.mark.parametrize("name", TRAINED)
def test_an_sb3_callback_sees_the_agent_and_stops_learn(tiny_model, tmp_path, name) -> None:
    agent = TRAINED[name](tiny_model, tmp_path, seed=0)
    counter = Counter(stop_after=2)
    assert agent.learn(10_000, callback=counter) is agent
    assert counter.events == ["init", "start", "end"], "on_training_end also follows a stop"
    assert counter.n_calls == 2 and counter.model is agent and counter.logger is agent.logger
    assert counter.steps[-1] == counter.num_timesteps == agent.num_timesteps < 10_000
    assert counter.locals["total_timesteps"] == 10_000 and counter.locals["self"] is agent
    if name != "dpo":  # DPO trains on comparisons, not in an environment
        assert counter.training_env is agent.get_env() is not None


def test_a_list_of_callbacks_is_one_callback_list_and_plain_functions_still_work(tiny_model, tmp_path) -> None:
    agent = make_ppo(tiny_model, tmp_path, seed=0)
    counter, seen = Counter(), []

    def stop_at_16(agent_: Agent, step: int) -> bool:
        seen.append((agent_, step))
        return step < 16

    agent.learn(10_000, callback=[counter, stop_at_16])
    assert seen == [(agent, 8), (agent, 16)] and counter.steps == [8, 16] and counter.events[-1] == "end"
    assert isinstance(as_callback([counter], agent), CallbackList)
    assert as_callback(counter, agent) is counter
    with pytest.raises(TypeError, match="BaseCallback"):
        agent.learn(8, callback="stop")  # type: ignore[arg-type]


def test_sb3_event_callbacks_work_on_an_lm_agent(tiny_model, tmp_path) -> None:
    """`EveryNTimesteps` reads only the agent's step count: it fires every 16 completions (two PPO iterations)."""
    agent = make_ppo(tiny_model, tmp_path, seed=0)
    inner = Counter()
    agent.learn(32, callback=EveryNTimesteps(n_steps=16, callback=inner))
    assert inner.steps == [16, 32] and inner.model is agent


def test_best_of_n_callback_sees_start_and_end_but_no_step(tiny_model, tmp_path) -> None:
    agent = make_best_of_n(tiny_model, tmp_path, seed=0)
    counter = Counter()
    agent.learn(100, callback=counter)
    assert counter.events == ["init", "start", "end"] and counter.n_calls == 0 and agent.num_timesteps == 0


def test_sb3_agent_hands_sb3_callbacks_to_sb3(tiny_model, tmp_path) -> None:
    agent = make_sb3(tiny_model, tmp_path)
    counter, seen = Counter(stop_after=5), []
    agent.learn(10_000, callback=[counter, lambda a, step: seen.append(a) or True])
    assert counter.n_calls == 5 and agent.num_timesteps == 5, "SB3 calls on_step per env step; False stops it"
    assert counter.model is agent.model and counter.events == ["init", "start", "end"]
    assert "dones" in counter.locals, "SB3's own rollout variables, as SB3 callbacks expect"
    assert len(seen) == 5 and seen[0] is agent, "a plain callback still receives the SB3Agent"


class Recorder(BaseCallback):
    """Records SB3's per-iteration protocol: rollout start/end, each step, and the locals each step sees."""

    def __init__(self, stop_after: int | None = None) -> None:
        super().__init__()
        self.stop_after = stop_after
        self.events: list[str] = []
        self.seen: list[dict[str, Any]] = []

    def _on_rollout_start(self) -> None:
        self.events.append("rollout_start")

    def _on_step(self) -> bool:
        self.events.append("step")
        self.seen.append(dict(self.locals))
        return self.stop_after is None or self.n_calls < self.stop_after

    def _on_rollout_end(self) -> None:
        self.events.append("rollout_end")


def test_on_policy_rollouts_bracket_each_iteration_and_locals_hold_sb3_names(tiny_model, tmp_path) -> None:
    agent = make_ppo(tiny_model, tmp_path, seed=0)
    rec = Recorder()
    agent.learn(24, callback=[rec])  # inside a CallbackList: update_locals must reach the children
    assert agent.iteration == 3 and rec.events == ["rollout_start", "step", "rollout_end"] * 3
    last = rec.seen[-1]
    assert last["dones"].dtype == bool and last["dones"].tolist() == [True] * 8, "every episode is one step"
    assert len(last["actions"]) == len(last["obs"]) == len(last["rewards"]) == len(last["infos"]) == 8
    assert [i["completion"] for i in last["infos"]] == list(last["actions"])
    assert last["rewards"].tolist() == e_count(last["obs"], last["actions"])
    assert last["self"] is agent and last["total_timesteps"] == 24, "the training-start locals stay"
    assert last["stats"] == {k: v[-1][1] for k, v in agent.logger.history.items() if v[-1][0] == 24}


def test_a_stop_skips_on_rollout_end_as_in_sb3(tiny_model, tmp_path) -> None:
    agent = make_ppo(tiny_model, tmp_path, seed=0)
    rec = Recorder(stop_after=2)
    agent.learn(10_000, callback=rec)
    assert rec.events == ["rollout_start", "step", "rollout_end", "rollout_start", "step"] and agent.num_timesteps == 16


def test_dpo_steps_are_batches_of_one_step_episodes(tiny_model, tmp_path) -> None:
    agent = make_dpo(tiny_model, tmp_path, seed=0)  # 6 training comparisons, batches of 4: 4, 2, 4, ...
    env = agent.get_env()
    assert isinstance(env, StandInEnv) and env.num_envs == 4, "batch_size before the first step"
    rec = Recorder()
    agent.learn(10, callback=rec)
    assert rec.events == ["rollout_start", "step", "rollout_end"] * 3 and agent.num_timesteps == 10
    assert [len(s["dones"]) for s in rec.seen] == [4, 2, 4] and all(s["dones"].all() for s in rec.seen)
    assert [i["query_id"] for i in rec.seen[1]["infos"]] == [c.query_id for c in rec.seen[1]["comparisons"]]
    assert rec.training_env is env and env.num_envs == 4


def test_preference_loop_callback_follows_the_inner_agents_iterations(tiny_model, tmp_path) -> None:
    agent = make_loop(tiny_model, tmp_path, seed=0)  # rounds of 8 completions: one inner iteration each
    rec = Recorder()
    agent.learn(16, callback=rec)
    assert rec.events == ["rollout_start", "step", "rollout_end"] * 2 and agent.num_timesteps == 16
    assert rec.seen[-1]["self"] is agent and rec.seen[-1]["total_timesteps"] == 16, "not the inner learn's"
    assert rec.seen[-1]["dones"].tolist() == [True] * 8 and rec.training_env is agent.inner.env


@pytest.mark.filterwarnings("ignore:rich is experimental")  # tqdm.rich's own notice, which SB3's bar uses
@pytest.mark.parametrize("name", ["ppo", "rloo", "dpo", "loop", "best_of_n"])
def test_progress_bar_callback_advances_by_the_steps_done(tiny_model, tmp_path, name) -> None:
    pytest.importorskip("tqdm", reason="SB3's ProgressBarCallback needs tqdm (stable-baselines3[extra])")
    pytest.importorskip("rich", reason="SB3's ProgressBarCallback draws with tqdm.rich, which needs rich")
    agent = {**LM, "rloo": make_rloo}[name](tiny_model, tmp_path, seed=0)
    bar = ProgressBarCallback()
    agent.learn(10, callback=bar)
    assert bar.pbar.total == 10 and bar.pbar.n == agent.num_timesteps, "one batch (num_envs) per on_step"
    assert agent.num_timesteps == {"ppo": 16, "rloo": 12, "dpo": 10, "loop": 16, "best_of_n": 0}[name]


@pytest.mark.parametrize(("name", "episodes", "expected"), [("ppo", 2, 16), ("rloo", 3, 12), ("dpo", 2, 10)])
def test_stop_training_on_max_episodes_counts_completions(tiny_model, tmp_path, name, episodes, expected) -> None:
    """SB3's semantics: `max_episodes` per env, `max_episodes * num_envs` in all (PPO: 8 envs, RLOO: 4; DPO: its
    stand-in's `batch_size` of 4, so at least 8 comparisons, reached within the third step: 4 + 2 + 4)."""
    agent = {"ppo": make_ppo, "rloo": make_rloo, "dpo": make_dpo}[name](tiny_model, tmp_path, seed=0)
    stop = StopTrainingOnMaxEpisodes(max_episodes=episodes)
    agent.learn(10_000, callback=stop)
    assert agent.num_timesteps == stop.n_episodes == expected


def test_stop_training_on_max_episodes_stops_the_preference_loop_and_inits_on_best_of_n(tiny_model, tmp_path) -> None:
    loop = make_loop(tiny_model, tmp_path, seed=0)
    stop = StopTrainingOnMaxEpisodes(max_episodes=1)
    loop.learn(10_000, callback=stop)
    assert loop.num_timesteps == loop.inner.num_timesteps == stop.n_episodes == 8 and loop.rounds == 0
    best = make_best_of_n(tiny_model, tmp_path, seed=0)
    best.learn(10, callback=StopTrainingOnMaxEpisodes(max_episodes=1))  # its stand-in env has num_envs = 1
    assert best.get_env().num_envs == 1 and best.num_timesteps == 0


def test_vector_infos_splits_a_gymnasium_info_by_env() -> None:
    info = {"gold": np.array([1.0, 2.0, 3.0]), "_gold": np.array([True, False, True]), "prompt_index": [4, 5, 6],
            "note": "all"}
    assert vector_infos(info, 3) == [{"gold": 1.0, "prompt_index": 4, "note": "all"},
                                     {"prompt_index": 5, "note": "all"},
                                     {"gold": 3.0, "prompt_index": 6, "note": "all"}]


@pytest.mark.parametrize("name", ["ppo", "dpo"])
def test_the_optimizer_holds_only_trainable_policy_parameters(tiny_model, tmp_path, name) -> None:
    make = {"ppo": make_ppo, "dpo": make_dpo}[name]
    plain = make(tiny_model, tmp_path, seed=0)
    every = list(plain.policy.model.parameters())
    assert plain.optimizer.param_groups[0]["params"] == every, "a plain model: every parameter, in order"
    original = Policy.from_pretrained
    frozen_first: list[torch.nn.Parameter] = []

    def from_pretrained(*args: Any, **kwargs: Any) -> Policy:
        policy = original(*args, **kwargs)
        first = next(policy.model.parameters())
        first.requires_grad_(False)  # a frozen part, as a LoRA policy's base
        frozen_first.append(first)
        return policy

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Policy, "from_pretrained", from_pretrained)
        agent = make(tiny_model, tmp_path, seed=0)
    held = agent.optimizer.param_groups[0]["params"]
    assert all(p is not frozen_first[0] for p in held)
    assert held == [p for p in agent.policy.model.parameters() if p.requires_grad] and len(held) == len(every) - 1


# ---------------------------------------------------------------------------------------------- predict and act
@pytest.mark.parametrize("name", ["ppo", "dpo", "loop"])
def test_predict_is_act_and_deterministic_means_greedy(tiny_model, tmp_path, name) -> None:
    agent = LM[name](tiny_model, tmp_path, seed=0)
    actions, state = agent.predict(PROMPTS, deterministic=True)
    assert state is None and actions == agent.act(PROMPTS, deterministic=True)
    policy = agent.inner.policy if name == "loop" else agent.policy
    greedy = policy.sample(PROMPTS, replace(SAMPLING, top_k=1), seed=12345).completions
    assert actions == greedy, "greedy decoding: the same completions whatever the seed"
    sampled, state = agent.predict(PROMPTS, state="ignored", episode_start=np.ones(4, dtype=bool))
    assert state is None and len(sampled) == len(PROMPTS) and all(isinstance(c, str) for c in sampled)


def test_best_of_n_refuses_deterministic_rather_than_ignoring_it(tiny_model, tmp_path) -> None:
    agent = make_best_of_n(tiny_model, tmp_path, seed=0)
    actions, state = agent.predict(PROMPTS[:2])
    assert state is None and len(actions) == 2
    with pytest.raises(ValueError, match="no deterministic"):
        agent.predict(PROMPTS[:2], deterministic=True)


def test_sb3_agent_predict_is_the_models_own(tiny_model, tmp_path) -> None:
    agent = make_sb3(tiny_model, tmp_path)
    obs = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    actions, state = agent.predict(obs, deterministic=True)
    assert state is None and actions.tolist() == agent.model.predict(obs, deterministic=True)[0].tolist()
    assert [int(a) for a in agent.act(obs, deterministic=True)] == actions.tolist()


@pytest.mark.parametrize("name", [*LM, "sb3"])
def test_act_refuses_a_bare_string(tiny_model, tmp_path, name) -> None:
    agent = {**LM, "sb3": make_sb3}[name](tiny_model, tmp_path, **({} if name == "sb3" else {"seed": 0}))
    with pytest.raises(TypeError, match=r"not one string; wrap it: agent.act\(\[prompt\]\)"):
        agent.act("the film was")
    with pytest.raises(TypeError, match="not one string"):
        agent.predict("the film was")
