"""The Christiano loop: an agent trains against a reward model that keeps learning from preference queries.

Deep RL from Human Preferences (Christiano et al. 2017): the agent acts; pairs of its
outputs are shown to a labeller; the reward model is trained on the comparisons *while*
the agent is optimised against the current reward model; repeat. `PreferenceLoop` is that
coordinator, itself an `Agent`, built from parts passed in as objects (the decomposition
of the `imitation` library's preference comparisons):

* `inner`: the agent that optimises the learned reward (any on-policy LM agent, PPO, RLOO or GRPO, on a prompt-bandit env
  whose `reward_fn` is the reward model; an SB3 algorithm behind a learned-reward wrapper);
* `source`: proposes candidate queries from the current policy (completions of one prompt;
  trajectory segments for control tasks);
* `selector`: picks which candidates to ask (random, or where an ensemble disagrees);
* `oracle`: answers some, all or none of them now; answers to earlier queries that arrive
  late are folded in at the next round (every round re-asks the store's pending queries);
* `learner`: trains the reward model on all comparisons so far (warm start by default);
* `store`: every answer lands there first, so a stopped run resumes with all its labels.

Schedules (`PreferenceLoopConfig`): *offline* = every label up front, then the agent
trains against a frozen reward model; *online* = labels spread over training in small
rounds with a warm-started reward model (Christiano); *rounds* = a few large rounds of
sample -> label -> retrain the reward model from its initial weights -> train the policy
against the now-frozen model (Stiennon et al. 2020). All three spend the same label budget.

Data parallel (`distributed=`): only the main process talks to the oracle (a human, a web
page) and reads or writes the store; the store's counts, pending queries and comparisons
are broadcast, so every process trains its reward-model replica on the same labels. The
other processes still propose and select (with the same rngs and weights, the same
queries), which keeps every rng stream in step across processes.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np

from llm_gym.agents.base import Agent, CallbackLike, resolve_rng
from llm_gym.infra.configio import check_finite
from llm_gym.infra.distributed import Distributed
from llm_gym.infra.logger import Logger
from llm_gym.feedback.oracles import NoAnswersError, PreferenceOracle, collect
from llm_gym.core.preferences import Comparison, Query
from llm_gym.feedback.store import PreferenceStore

if TYPE_CHECKING:
    from stable_baselines3.common.callbacks import BaseCallback

__all__ = [
    "DisagreementSelector",
    "PreferenceLoop",
    "PreferenceLoopConfig",
    "QuerySelector",
    "QuerySource",
    "RandomSelector",
    "RewardLearner",
]

_log = logging.getLogger(__name__)


@runtime_checkable
class QuerySource(Protocol):
    """Proposes candidate comparison queries from the current policy."""

    def propose(self, n: int) -> list[Query]:
        """Return `n` candidate queries (each comparing outputs of the current policy)."""
        ...


@runtime_checkable
class RewardLearner(Protocol):
    """Owns the reward model: trains it on comparisons and says how uncertain it is about queries."""

    def fit(self, comparisons: Sequence[Comparison], fresh: bool = False) -> dict[str, float]:
        """Train on all `comparisons` (warm start; `fresh=True` restarts from the initial weights)."""
        ...

    def disagreement(self, queries: Sequence[Query]) -> np.ndarray:
        """One number per query: how much the ensemble members disagree on its answer (higher = ask)."""
        ...


class QuerySelector(Protocol):
    """Chooses which candidate queries to send to the oracle."""

    def select(self, candidates: Sequence[Query], n: int, learner: RewardLearner, rng: np.random.Generator) -> list[Query]:
        ...


class RandomSelector:
    """Ask uniformly random candidates."""

    def select(self, candidates: Sequence[Query], n: int, learner: RewardLearner, rng: np.random.Generator) -> list[Query]:
        idx = rng.choice(len(candidates), size=min(n, len(candidates)), replace=False)
        return [candidates[i] for i in sorted(idx)]


class DisagreementSelector:
    """Christiano et al.'s active selection: ask where the reward-model ensemble disagrees most."""

    def select(self, candidates: Sequence[Query], n: int, learner: RewardLearner, rng: np.random.Generator) -> list[Query]:
        scores = np.asarray(learner.disagreement(candidates), dtype=np.float64)
        if scores.shape != (len(candidates),):
            raise ValueError(f"learner.disagreement returned shape {scores.shape} for {len(candidates)} candidates")
        jitter = rng.random(len(candidates)) * 1e-12  # break exact ties at random, not by position
        order = np.argsort(-(scores + jitter), kind="stable")
        return [candidates[i] for i in order[:n]]


@dataclass(frozen=True)
class PreferenceLoopConfig:
    """The label schedule and how the reward model is retrained."""

    total_labels: int = 1000
    """Label budget: queries posed to the oracle in total (answered or not)."""
    initial_labels: int = 200
    """Queries posed before the agent trains at all (= total_labels: the offline pipeline)."""
    labels_per_round: int = 100
    """Queries posed at each later round."""
    steps_per_round: int = 1024
    """Agent environment steps between two rounds."""
    oversample: int = 4
    """Candidates proposed per query asked (the selector chooses among them)."""
    mode: Literal["online", "rounds"] = "online"
    """online: warm-start the reward model each round (Christiano); rounds: retrain it from its
    initial weights on all labels each round and train the policy against it frozen (Stiennon)."""
    on_no_answers: Literal["raise", "wait"] = "raise"
    """What a round does when the oracle answered none of its queries (or only with ties) and the store holds no
    earlier preference to train on, so the reward model would stay untrained: "raise" stops `learn` with a
    `NoAnswersError` (the queries stay in the store, pending); "wait" trains the agent on regardless and logs a
    warning each such round, for a slow human labeller whose answers arrive later."""

    def __post_init__(self) -> None:
        check_finite(self)
        for name in ("total_labels", "labels_per_round", "steps_per_round", "oversample"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"PreferenceLoopConfig.{name} must be a positive int, got {v!r}")
        if not isinstance(self.initial_labels, int) or not 0 <= self.initial_labels <= self.total_labels:
            raise ValueError(
                f"PreferenceLoopConfig.initial_labels must be in [0, total_labels={self.total_labels}], got {self.initial_labels!r}"
            )
        if self.mode not in ("online", "rounds"):
            raise ValueError(f"PreferenceLoopConfig.mode must be 'online' or 'rounds', got {self.mode!r}")
        if self.on_no_answers not in ("raise", "wait"):
            raise ValueError(f"PreferenceLoopConfig.on_no_answers must be 'raise' or 'wait', got {self.on_no_answers!r}")


_INNER_OWN_LOCALS = frozenset({"self", "callback", "total_timesteps"})
"""The inner learn's locals that would mislead the loop's callback (it keeps the loop's own `self` and `total_timesteps`)."""


@functools.cache
def _relay_type() -> type[BaseCallback]:
    """`Relay`, made on first use so that importing llm_gym does not import Stable-Baselines3."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Relay(BaseCallback):
        """The inner agent's callback for one round: hands its rollouts and steps on to the loop's callback.

        The loop's steps are the inner agent's environment steps, so the loop's callback follows the
        inner protocol (`on_rollout_start`, `update_locals`, `on_step`, `on_rollout_end`) with the
        loop's `num_timesteps` advanced alongside the inner agent's (by the steps it did, which may
        pass the round's target by less than an inner iteration, as the inner agent's own count does).
        Its `on_training_start`/`on_training_end` are the inner learn's and stay here.
        """

        def __init__(self, loop: PreferenceLoop, outer: BaseCallback) -> None:
            super().__init__()
            self.loop, self.outer = loop, outer
            self.start, self.inner_start = loop.num_timesteps, loop.inner.num_timesteps
            self.stopped = False
            """Whether the loop's callback asked to stop (the inner learn stops; so must the loop)."""

        def _on_rollout_start(self) -> None:
            self.outer.on_rollout_start()

        def update_child_locals(self, locals_: dict[str, Any]) -> None:
            self.outer.update_locals({k: v for k, v in locals_.items() if k not in _INNER_OWN_LOCALS})

        def _on_step(self) -> bool:
            loop = self.loop
            loop.num_timesteps = self.start + loop.inner.num_timesteps - self.inner_start
            self.stopped = not self.outer.on_step()
            return not self.stopped

        def _on_rollout_end(self) -> None:
            self.outer.on_rollout_end()

    return Relay


class PreferenceLoop(Agent):
    """The Christiano loop as an agent: `learn` alternates label rounds and agent training.

    Args:
        inner: the agent optimising the learned reward; `inner.learn(total_steps)` must continue
            from where it stopped (cumulative `total_steps`, as `PPO.learn` and the SB3 adapter do).
        source: proposes candidate queries from the current policy.
        selector: chooses which candidates to ask.
        oracle: answers queries (possibly only some, possibly late).
        learner: the reward model's trainer.
        store: the durable preference store; labels already in it count toward the budget
            and are trained on before anything else (resume after a crash).
        config: the label schedule (and `on_no_answers`: what a round that got nothing to train on does).
        rng: the loop's randomness (selection).
        seed: instead of `rng`, an int as in Stable-Baselines3: `seed=s` is `rng=np.random.default_rng(s)` (pass one
            of the two, not both). It seeds the loop's selection only; the parts keep their own generators.
        logger: receives `oracle/*` and `reward_model/*`.
        distributed: the process group; None = a single process. Only the main process uses
            `oracle` and `store` (the others may pass the same objects; they stay untouched there).
    """

    def __init__(
        self,
        inner: Agent,
        source: QuerySource,
        selector: QuerySelector,
        oracle: PreferenceOracle,
        learner: RewardLearner,
        store: PreferenceStore,
        config: PreferenceLoopConfig,
        rng: np.random.Generator | None = None,
        logger: Logger | None = None,
        distributed: Distributed | None = None,
        *,
        seed: int | None = None,
    ) -> None:
        rng = resolve_rng(rng, seed, "PreferenceLoop")
        self.inner, self.source, self.selector, self.oracle = inner, source, selector, oracle
        self.learner, self.store, self.config, self.rng = learner, store, config, rng
        self.logger = logger if logger is not None else Logger(None)
        self.dist = distributed if distributed is not None else Distributed()
        self.num_timesteps = 0
        self.rounds = 0

    # ------------------------------------------------------------------ labels
    @property
    def labels_asked(self) -> int:
        """Queries posed so far (the store's queries: answered or pending)."""
        return self._counts()["queries"]

    def _counts(self) -> dict[str, int]:
        """The store's counts, read by the main process and broadcast."""
        return self.dist.broadcast_object(self.store.counts() if self.dist.is_main else None)

    def _ask(self, n: int) -> int:
        """Pose up to `n` new queries (within the budget) and re-ask pending ones; store every answer.

        Returns how many queries were posed (pending and new), the same number on every process.
        """
        n = min(n, self.config.total_labels - self.labels_asked)
        pending = self.dist.broadcast_object(self.store.pending() if self.dist.is_main else None)
        new: list[Query] = []
        if n > 0:
            candidates = self.source.propose(n * self.config.oversample)
            known = {q.query_id for q in pending}
            candidates = [q for q in candidates if q.query_id not in known]
            new = self.selector.select(candidates, n, self.learner, self.rng) if candidates else []
        if (pending or new) and self.dist.is_main:
            collect(self.oracle, list(pending) + new, self.store)
        counts = self._counts()
        self.logger.record("oracle/labels_total", counts["answers"])
        self.logger.record("oracle/queries_total", counts["queries"])
        self.logger.record("oracle/answered_fraction", counts["answers"] / max(counts["queries"], 1))
        return len(pending) + len(new)

    def _retrain(self) -> bool:
        """Train the reward model on every comparison in the store; False when none holds a preference (nothing to learn)."""
        comparisons = self.dist.broadcast_object(self.store.comparisons(include_ties=True) if self.dist.is_main else None)
        if not any(not c.is_tie for c in comparisons):
            return False  # nothing answered yet (a slow human): keep the reward model we have
        metrics = self.learner.fit(comparisons, fresh=self.config.mode == "rounds")
        for key in ("heldout_accuracy", "train_accuracy", "gold_agreement"):
            if key in metrics:
                name = "accuracy" if key == "heldout_accuracy" else key
                self.logger.record(f"reward_model/{name}", metrics[key])
        return True

    def _round(self, n: int) -> None:
        """Ask for labels (up to `n` new queries, and the pending ones) and retrain the reward model on them all.

        Raises:
            NoAnswersError: with `on_no_answers="raise"`, when the queries posed got no answer holding a
                preference and the store has none from before: training on would optimise an untrained
                reward model. Every query and answer is already in the store.
        """
        answers_before = self._counts()["answers"]
        posed = self._ask(n)
        retrained = self._retrain()
        if not posed:
            return
        counts = self._counts()
        answered = counts["answers"] - answers_before
        where = f"round {self.rounds}" if self.rounds else "the initial round"
        oracle = getattr(self.oracle, "name", type(self.oracle).__name__)
        if retrained:
            if answered == 0 and self.dist.is_main:  # an outage mid-run: trained on, but not unnoticed
                _log.warning("the oracle %r answered none of the %d queries of %s; the reward model is trained on the "
                             "%d answers given before (%d queries pending)", oracle, posed, where, counts["answers"],
                             counts["pending"])
            return
        if answered == 0:
            what = f"the oracle {oracle!r} answered none of the {posed} queries of {where}"
        else:
            what = f"the oracle {oracle!r} answered {answered} of the {posed} queries of {where}, all with ties"
        if self.config.on_no_answers == "wait":
            if self.dist.is_main:  # one warning per round, not one per process
                _log.warning("%s and the store holds no preference yet: the agent trains on against the untrained reward "
                             "model while the labeller catches up (on_no_answers='wait'); %d queries are pending",
                             what, counts["pending"])
            return
        raise NoAnswersError(
            f"{what}, and the store holds no earlier preference, so the reward model is untrained and the agent "
            "would be optimised against noise. The queries are kept in the store "
            f"({counts['queries']} queries, {counts['pending']} pending, {counts['answers']} answers): answer them "
            f"(`llm-gym label {self.store.path}`, or its --web page) and rerun, check that the "
            "oracle can answer (stdin, the web page, a recorded file that matches these queries), or set "
            "PreferenceLoopConfig(on_no_answers='wait') to keep training while a slow labeller catches up"
        )

    # ------------------------------------------------------------------ agent interface
    def learn(self, total_steps: int, callback: CallbackLike = None) -> PreferenceLoop:
        """Train the inner agent for `total_steps` environment steps in total, asking for labels on schedule.

        Rounds end at multiples of `steps_per_round`; where the inner agent's batch does not divide
        them, a round may pass its target by less than an inner iteration and `num_timesteps` counts
        the steps done, as the inner agent's own count does.

        The callback (a plain `callback(loop, step)`, an SB3 `BaseCallback` or a list of them,
        `agents/base.py`) follows the inner agent's steps: it is told after each of the inner agent's
        updates (an on-policy agent's iteration, an SB3 algorithm's env step), with the loop's
        `num_timesteps` advanced alongside, and sees the inner agent's `on_rollout_start`/`_end` and
        `update_locals` (`dones`, `infos`, `rewards`...; `training_env` is the inner agent's env). So
        `ProgressBarCallback` and `StopTrainingOnMaxEpisodes` count the inner agent's episodes.
        Returning False stops the inner agent at once and the loop with it, before that round's labels.

        Raises:
            NoAnswersError: a round's queries got no answer to train on and the store holds none from
                before (see `PreferenceLoopConfig.on_no_answers`); the store keeps every query.
        """
        if not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
        cfg = self.config
        with self._training_callback(callback, total_steps) as cb:
            if self.rounds == 0:
                self._round(cfg.initial_labels - self.labels_asked)
                self.logger.dump(self.num_timesteps)
            while self.num_timesteps < total_steps:
                target = min(total_steps, self.num_timesteps + cfg.steps_per_round)
                relay = _relay_type()(self, cb)
                self.inner.learn(target, callback=relay)
                if relay.stopped:
                    break
                # the steps done (an inner iteration may pass the target); the target when the inner was already past it
                self.num_timesteps = max(target, self.num_timesteps)
                self.rounds += 1
                counts = self._counts()
                if counts["queries"] < cfg.total_labels or counts["pending"]:
                    self._round(cfg.labels_per_round)
                self.logger.dump(self.num_timesteps)
        return self

    def _act(self, observations: Sequence[Any], deterministic: bool) -> list[Any]:
        """The inner agent's actions."""
        return self.inner.act(observations, deterministic=deterministic)

    def get_env(self) -> Any:
        """The inner agent's environment."""
        return self.inner.get_env()

    def save(self, path: str | PathLike[str]) -> None:
        """Save the inner agent; labels are already durable in the store."""
        self.inner.save(path)

    @classmethod
    def load(cls, path: str | PathLike[str], **components: Any) -> PreferenceLoop:
        """Rebuild from parts: pass `inner` (e.g. `PPO.load(path, ...)`) and the other components again.

        The store holds every label, so `learn` retrains the reward model on them and goes on
        with the remaining budget.
        """
        return cls(**components)
