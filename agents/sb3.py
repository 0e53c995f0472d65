"""The Stable-Baselines3 adapter: any SB3 algorithm as the inner agent of the Christiano loop.

    SB3Agent   makes an SB3 algorithm (PPO, A2C, SAC, ...) an llm_gym `Agent`: cumulative
               `learn`, ``rollout/true_return`` logged next to ``rollout/learned_return``,
               replay-buffer relabelling for off-policy algorithms, schedules over the whole run

Deep RL from Human Preferences (Christiano et al. 2017) on ordinary Gymnasium control tasks,
with the same coordinator as the language-model loop (`agents/preference_loop.py`). The other
parts, one file each:

    envs/wrappers.py        `LearnedRewardWrapper`: pays the learned reward, keeps the true one
    agents/segments.py      `Segment`, `SegmentBuffer`, `SegmentSource`, `segment_oracle`,
                            `action_features`; terminations as absorbing states
    agents/mlp_reward.py    `RewardNet`, `MLPRewardLearnerConfig`, `MLPRewardLearner`

Their names are importable from here too, for scripts written before the split.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

from llm_gym.agents.base import Agent, CallbackLike, check_batch, as_callback
from llm_gym.agents.mlp_reward import MLPRewardLearner, MLPRewardLearnerConfig, RewardNet
from llm_gym.agents.segments import Segment, SegmentBuffer, SegmentSource, action_features, segment_oracle
from llm_gym.envs.wrappers import LearnedRewardWrapper, StepRewardFn
from llm_gym.infra.logger import Logger

__all__ = [
    "SB3Agent",
    # re-exported from their own files (above)
    "LearnedRewardWrapper",
    "MLPRewardLearner",
    "MLPRewardLearnerConfig",
    "RewardNet",
    "Segment",
    "SegmentBuffer",
    "SegmentSource",
    "action_features",
    "segment_oracle",
]


class SB3Agent(Agent):
    """Any Stable-Baselines3 algorithm as an llm_gym `Agent` (the inner agent of `PreferenceLoop`).

    Build the SB3 model on envs wrapped in `LearnedRewardWrapper`
    (``PPO("MlpPolicy", DummyVecEnv([lambda: LearnedRewardWrapper(gym.make(id), learner.reward, buffer)]))``).
    `learn(total_steps)` is cumulative (it trains up to `total_steps` env steps in all; SB3
    may overshoot to finish a rollout). After each `learn` it logs the mean true and learned
    return of the episodes finished meanwhile (``rollout/true_return``,
    ``rollout/learned_return``, ``rollout/episodes``) and dumps at the step count.

    Off-policy algorithms (SAC, TD3, DQN) keep old rewards in their replay buffer; with
    `relabel` (the learned reward function) every stored reward is recomputed with the
    current reward model before each `learn`, so the critic never trains on stale rewards.

    SB3 schedules (learning rate, clip range) run on the progress of one `model.learn` call;
    in chunks they would restart every chunk. With `planned_steps` (the run's total) they run
    over the whole run instead: progress is ``1 - num_timesteps / planned_steps``.

    Callbacks: an SB3 `BaseCallback` (or a list of them) passed to `learn` goes to the SB3 model's
    own `learn` unchanged, so it behaves exactly as in SB3 (its `self.model` is the SB3 algorithm,
    `on_step` follows every vectorised env step, `self.locals` holds SB3's rollout variables,
    built-ins such as `StopTrainingOnMaxEpisodes` work). A plain `callback(agent, step)` is
    called with this `SB3Agent` at every env step, as before.

    `predict` is the SB3 model's own (`(actions, state)`, recurrent state included); `act` is
    `predict` without the state, stochastic unless `deterministic=True`, as SB3's default.

    Args:
        model: the SB3 algorithm, built on its (wrapped) env.
        logger: receives the returns logged after each `learn`.
        relabel: the learned reward, to recompute an off-policy replay buffer's rewards (above).
        planned_steps: the run's total env steps, for schedules over the whole run (above).
        seed: as SB3's `seed=`: passed to `model.set_random_seed(seed)`, which seeds Python's, numpy's
            and torch's global generators, the action space and the env's next reset. The network's
            initial weights were drawn when the model was built: build it with `seed=` too for a run
            that repeats from the start. None = leave the model's seeding as it is. (There is no `rng=`:
            SB3 draws from the global generators.)
    """

    def __init__(
        self,
        model: Any,
        logger: Logger | None = None,
        relabel: StepRewardFn | None = None,
        planned_steps: int | None = None,
        *,
        seed: int | None = None,
    ) -> None:
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
                raise TypeError(f"SB3Agent: seed must be an int, got {type(seed).__name__}")
            model.set_random_seed(int(seed))
        self.model = model
        self.logger = logger if logger is not None else Logger(None)
        self.relabel = relabel
        self.planned_steps = planned_steps

    @property
    def num_timesteps(self) -> int:
        return int(self.model.num_timesteps)

    def get_env(self) -> Any:
        """The SB3 model's (vectorised) environment."""
        return self.model.get_env()

    def learn(self, total_steps: int, callback: CallbackLike = None) -> SB3Agent:
        """Train the SB3 model up to `total_steps` env steps in all (cumulative); the callback goes to SB3 (see the class)."""
        if not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
        remaining = total_steps - self.num_timesteps
        if remaining > 0:
            if self.relabel is not None:
                self._relabel()
            # SB3's learn runs the callback protocol itself (init_callback with the SB3 model, one on_step per env step)
            sb3_callback = as_callback(callback, self)
            if self.planned_steps is not None:
                planned, model = self.planned_steps, self.model

                def progress(num_timesteps: int, total_timesteps: int) -> None:
                    model._current_progress_remaining = max(0.0, 1.0 - num_timesteps / planned)

                model._update_current_progress_remaining = progress  # instance attribute, removed below (never saved)
            try:
                self.model.learn(remaining, reset_num_timesteps=False, callback=sb3_callback)
            finally:
                self.model.__dict__.pop("_update_current_progress_remaining", None)
        self._log()
        return self

    def _relabel(self) -> None:
        rb = getattr(self.model, "replay_buffer", None)
        if rb is None:
            return
        n = rb.buffer_size if rb.full else rb.pos
        if n == 0:
            return
        obs = rb.observations[:n].reshape(n * rb.n_envs, -1)
        actions = rb.actions[:n].reshape(n * rb.n_envs, *rb.action_space.shape) if rb.action_space.shape else rb.actions[:n].reshape(-1)
        if isinstance(self.model.action_space, spaces.Box):
            actions = self.model.policy.unscale_action(actions)  # the replay buffer stores actions scaled to [-1, 1]
        rb.rewards[:n] = np.asarray(self.relabel(obs, actions), dtype=np.float32).reshape(n, rb.n_envs)

    def episode_stats(self) -> tuple[list[float], list[float]]:
        """(true, learned) returns of the episodes finished since the last call, over all envs."""
        env = self.model.get_env()
        true, learned = [], []
        for t, lr in env.env_method("pop_episode_stats"):
            true += t
            learned += lr
        return true, learned

    def _log(self) -> None:
        true, learned = self.episode_stats()
        if true:
            self.logger.record("rollout/true_return", float(np.mean(true)))
            self.logger.record("rollout/learned_return", float(np.mean(learned)))
            self.logger.record("rollout/episodes", len(true))

    def _act(self, observations: Sequence[Any], deterministic: bool) -> list[Any]:
        """The SB3 policy's actions for a batch of observations (its mode when `deterministic`)."""
        actions, _ = self.model.predict(np.asarray(observations), deterministic=deterministic)
        return list(actions)

    def predict(
        self,
        observation: Any,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = False,
    ) -> tuple[Any, Any]:
        """The SB3 model's `predict`, unchanged: `(actions, next state)` (the state is None for non-recurrent policies)."""
        check_batch(observation)
        return self.model.predict(observation, state=state, episode_start=episode_start, deterministic=deterministic)

    def save(self, path: str | PathLike[str]) -> None:
        """Save the SB3 model as ``path/model.zip`` (SB3's own format)."""
        Path(path).mkdir(parents=True, exist_ok=True)
        self.model.save(Path(path) / "model.zip")

    @classmethod
    def load(cls, path: str | PathLike[str], **components: Any) -> SB3Agent:
        """Load with ``algorithm=PPO`` (the SB3 class), and optionally ``env``, ``logger``, ``relabel``."""
        algorithm = components.pop("algorithm", None)
        if algorithm is None:
            raise TypeError("SB3Agent.load needs algorithm=<the SB3 class>, e.g. SB3Agent.load(path, algorithm=PPO, env=env)")
        env = components.pop("env", None)
        model = algorithm.load(Path(path) / "model.zip", env=env)
        return cls(model, **components)
