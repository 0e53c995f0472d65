"""Best-of-N: sample N completions from a base policy, answer with the one a reward function scores highest.

The simplest way to optimise a reward, with no training at all, and the reference point of the
RLHF papers: Stiennon et al. 2020 ("Learning to summarize from human feedback") compare their RL
policies with best-of-N against the reward model and derive, in their appendix, its KL to the
base policy; Gao et al. 2022 ("Scaling Laws for Reward Model Overoptimization") plot gold reward
against `d = sqrt(KL)` with that KL as the x-axis and fit

    KL_bon(N) = log N - (N - 1) / N,        gold(d) = d (alpha_bon - beta_bon d).

Where the formula comes from: for N independent draws of a reward with a continuous distribution
(no two completions score the same), the best one has density `p_bon(y) = N p(y) F(r(y))^(N-1)`,
F the reward's CDF under the base policy p, and `F(r(Y))` of the winner is the largest of N
uniforms, whose log has mean `-1/N`; so `KL = E[log N + (N-1) log F] = log N - (N-1)/N`.

When rewards tie (a finite set of completions, duplicates, a reward that often scores equal) the
formula is only an upper bound (Beirami et al. 2024, "Theoretical guarantees on the best-of-n
alignment policy"); over K equally likely completions the exact KL cannot exceed log K, whatever
N. On a categorical base policy, where the best-of-N distribution is exact
(`tests/agents/test_best_of_n.py` computes it), for N = 4 (formula 0.636 nats):

    K equally likely outcomes, distinct rewards    K = 4: 0.590    K = 10: 0.629    K = 100: 0.6362

and for N = 64 (formula 3.17) with K = 4 outcomes the exact KL is log 4 = 1.39: once N is large
next to the number of distinct completions the base produces, the formula overstates the KL.
A small language model with short completions repeats itself, so read the x-axis of a best-of-N
curve on the built-in task with that in mind.

How candidates are drawn: candidate column j (the j-th completion of every prompt) is one
`base.sample` call per `batch_size` prompts, columns in order, all from one generator seeded by
`seed`. So with `batch_size >= len(prompts)` the first candidate is exactly
`base.sample(prompts, sampling, seed)`, and the candidates of best-of-N' (N' < N) are the first N'
of best-of-N (whatever `batch_size`): with the same seed, best-of-N never scores below best-of-N' on
its own reward, prompt by prompt (nor, when the first candidate is the base's sample, below the
base) -- common random numbers, which keep the noise out of a comparison across N. Ties go to the
earliest candidate.

`BestOfN` satisfies `llm_gym.models.sampler.SelectionSampler`, so
`llm_gym.app.evaluation.evaluate_policy` evaluates it as it evaluates a `Policy`, reporting the
analytic KL when the reference is the base policy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llm_gym.agents.base import Agent, CallbackLike, StandInEnv, resolve_rng
from llm_gym.agents.checkpoint import load_policy, open_checkpoint, read_json, write_checkpoint
from llm_gym.core.reward import RewardFn, resolve_reward_fn, score_batch
from llm_gym.infra.configio import ConfigError, check_finite, from_dict, to_dict
from llm_gym.models.policy import Policy, Rollout, SamplingConfig, as_generator
from llm_gym.models.sampler import CompletionSampler, SelectionSampler

__all__ = ["BestOfN", "BestOfNConfig", "Selection", "best_of_n_kl"]

_FORMAT_VERSION = 1
_STATE = "best_of_n.json"


def best_of_n_kl(n: int) -> float:
    """The analytic KL of best-of-N to its base policy, `log N - (N - 1) / N` nats (Stiennon et al. 2020, appendix).

    Exact when the reward has no ties, an upper bound otherwise (see the module docstring).

    >>> best_of_n_kl(1)
    0.0
    >>> round(best_of_n_kl(4), 4)  # log 4 - 3/4
    0.6363
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"best-of-N needs an int N >= 1 (N = 1 is the base policy itself), got {n!r}")
    return math.log(n) - (n - 1) / n


@dataclass(frozen=True)
class BestOfNConfig:
    """Settings of best-of-N sampling (nothing here is trained)."""

    n: int = 4
    """N: candidates sampled per prompt (>= 1; 1 is the base policy). Its KL to the base is `log N - (N - 1) / N`:
    0.19 nats at N = 2, 0.64 at 4, 1.83 at 16, 3.17 at 64 (Gao et al. 2022 go up to N = 60,000)."""
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=24))
    """How `act` samples the candidates from the base policy (`sample` takes its settings as an argument)."""
    batch_size: int = 64
    """Prompts per call of the base policy's `sample`: N candidates of each prompt take N calls, so the memory of
    a forward pass grows with batch_size, not with N. The same seed gives the same completions only with the
    same batch_size."""

    def __post_init__(self) -> None:
        check_finite(self)
        for key in ("n", "batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"BestOfNConfig.{key} must be an int >= 1, got {value!r}")
        if not isinstance(self.sampling, SamplingConfig):
            raise TypeError(f"BestOfNConfig.sampling must be a SamplingConfig, got {type(self.sampling).__name__}; "
                            f"write sampling=SamplingConfig(max_new_tokens=...)")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (for checkpoints and hparams)."""
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BestOfNConfig:
        """The config back from `to_dict` (missing keys take their defaults; unknown keys are refused)."""
        return from_dict(cls, data)


class Selection(NamedTuple):
    """What `BestOfN.select` drew and which it kept."""

    rollout: Rollout
    """The kept completion of each prompt, in prompt order (token ids, masks, the base's log-probs)."""
    candidates: list[list[str]]
    """(B, N) every candidate completion, `candidates[i][j]` the j-th of prompt i."""
    scores: np.ndarray
    """(B, N) float64: the reward function's score of every candidate."""
    chosen: np.ndarray
    """(B,) int: the index of the kept candidate of each prompt (the first of equal best scores)."""


class BestOfN(Agent):
    """Best-of-N over a base policy: `act` samples N completions per prompt and keeps the highest-scoring one.

    The reward function is any `RewardFn`: a reward model (the proxy, as in Stiennon et al. and
    Gao et al.), the gold scorer (an upper reference), or a plain function. It is also a
    `SelectionSampler` (`sample`, `log_probs`, `model`, `tokenizer`, `kl_to_base`), so
    `evaluate_policy(best_of_n, ...)` reports its gold score, reward-model score, win rate,
    perplexity (the base's model: selection changes no weights) and KL (`kl_to_base` when the
    reference is the base policy).

    Args:
        base: the policy candidates are drawn from (usually the SFT policy).
        reward_fn: scores the candidates; a callable or an import path ``"package.module:name"``
            (a class there is instantiated with no arguments).
        config: N, sampling settings and batch size.
        rng: where `act` draws its sampling seeds from (reproducible from its seed; `save`
            records its state).
        seed: instead of `rng`, an int as in Stable-Baselines3: `seed=s` is `rng=np.random.default_rng(s)` and
            gives the same completions (pass one of the two, not both).

    Example:
        >>> agent = BestOfN(sft, GoldScorer(), BestOfNConfig(n=16), rng=np.random.default_rng(0))  # doctest: +SKIP
        >>> agent.act(["the film was"])  # doctest: +SKIP
    """

    algorithm = "best_of_n"
    """The name a checkpoint records (and an experiment file's `algorithm = ...` would use)."""

    def __init__(
        self,
        base: Policy,
        reward_fn: RewardFn | str,
        config: BestOfNConfig = BestOfNConfig(),
        *,
        rng: np.random.Generator | None = None,
        seed: int | None = None,
    ) -> None:
        if not isinstance(base, CompletionSampler):
            raise TypeError(f"base must be a Policy (or another CompletionSampler), got {type(base).__name__}; "
                            f"for an on-policy agent pass agent.policy")
        if isinstance(base, SelectionSampler):
            raise TypeError("base is itself a selecting sampler (best-of-N): best-of-M over best-of-N is not best-of-N "
                            "and its KL is not log N - (N-1)/N; use one BestOfN over the policy underneath")
        if not isinstance(config, BestOfNConfig):
            raise TypeError(f"config must be a BestOfNConfig, got {type(config).__name__}")
        rng = resolve_rng(rng, seed, type(self).__name__)
        self.base = base
        self.reward_fn = resolve_reward_fn(reward_fn)
        self.config = config
        self.rng = rng

    # ------------------------------------------------------------------ what evaluation reads (CompletionSampler)
    @property
    def model(self) -> PreTrainedModel:
        """The base policy's model (best-of-N trains nothing: its perplexity is the base's)."""
        return self.base.model

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The base policy's tokenizer."""
        return self.base.tokenizer

    @property
    def kl_to_base(self) -> float:
        """KL(best-of-N || base) in nats per completion, `log N - (N - 1) / N`.

        Exact without reward ties, else an upper bound (see the module docstring).
        """
        return best_of_n_kl(self.config.n)

    def log_probs(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        completion_ids: torch.Tensor,
        completion_mask: torch.Tensor,
        config: SamplingConfig = SamplingConfig(),
    ) -> torch.Tensor:
        """The base policy's per-token log-probs: every token of a candidate is drawn from it.

        Not the log-probs of the best-of-N distribution, which has no closed form per token; what
        the selection adds to the KL is `kl_to_base` (see `llm_gym.models.sampler`).
        """
        return self.base.log_probs(prompt_ids, prompt_mask, completion_ids, completion_mask, config)

    # ------------------------------------------------------------------ sampling
    def select(
        self,
        prompts: Sequence[str],
        config: SamplingConfig | None = None,
        seed: int | torch.Generator | None = None,
    ) -> Selection:
        """Draw N candidates per prompt from the base policy, score them all, keep the best of each prompt.

        Args:
            prompts: the prompt texts.
            config: how candidates are sampled (default: `self.config.sampling`).
            seed: an int seed or a `torch.Generator` on the base's device; the same seed (and the same
                `batch_size`) gives the same candidates. See the module docstring for the order they are drawn in.

        Raises:
            ValueError: the reward function returned NaN, inf or the wrong number of scores (nothing is kept).
        """
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, not one string; wrap it: [prompt]")
        prompts = list(prompts)
        if not prompts:
            raise ValueError("prompts is empty; pass at least one prompt")
        config = self.config.sampling if config is None else config
        n, size = self.config.n, self.config.batch_size
        gen = as_generator(seed, self.base.device)
        chunks = [prompts[start : start + size] for start in range(0, len(prompts), size)]
        scores = np.empty((len(prompts), n), dtype=np.float64)
        # draws[j][c]: candidate column j of chunk c (token ids are small next to a forward pass)
        draws: list[list[Rollout]] = []
        for j in range(n):  # column j: the j-th candidate of every prompt
            draws.append([self.base.sample(chunk, config, seed=gen) for chunk in chunks])
            scores[:, j] = score_batch(self.reward_fn, prompts, [c for ro in draws[j] for c in ro.completions])
        chosen = scores.argmax(axis=1)  # the first of equal maxima: ties keep the earlier candidate
        kept = [(draws[j][i // size], i % size) for i, j in enumerate(chosen.tolist())]
        rollout = _gather(kept, prompts, self.tokenizer.pad_token_id, sum(ro.num_truncated_prompts for ro in draws[0]))
        candidates = [[c for ro in column for c in ro.completions] for column in draws]
        return Selection(rollout, [list(row) for row in zip(*candidates)], scores, chosen)

    def sample(
        self,
        prompts: Sequence[str],
        config: SamplingConfig | None = None,
        seed: int | torch.Generator | None = None,
    ) -> Rollout:
        """The best of N candidates for each prompt, as a `Rollout` (`select` without the candidates).

        The rollout's `logprobs` are the base policy's, the distribution each token was drawn from.
        """
        return self.select(prompts, config, seed).rollout

    # ------------------------------------------------------------------ the Agent interface
    def _act(self, observations: Sequence[str], deterministic: bool) -> list[str]:
        """The best of N completions for each prompt, sampled with `config.sampling` and a seed drawn from the rng.

        There is no deterministic best-of-N: the most likely output of the selection has no closed form,
        and greedy candidates would all be the base's one greedy completion (best-of-1), so
        `deterministic=True` raises rather than quietly answering something else.
        """
        if deterministic:
            raise ValueError("best-of-N has no deterministic (greedy) form: greedy decoding would make all N "
                             "candidates the same completion. Call act(prompts) (or predict(..., deterministic=False)) "
                             "for best-of-N, or sample the base greedily: agent.base.sample(prompts, "
                             "dataclasses.replace(sampling, top_k=1))")
        seed = int(self.rng.integers(2**63 - 1))
        return self.sample(observations, self.config.sampling, seed=seed).completions

    def get_env(self) -> StandInEnv:
        """What SB3 callbacks see as `training_env`: best-of-N has no environment and never steps, so a stand-in
        with `num_envs = 1` (callbacks that read it when they start, such as `StopTrainingOnMaxEpisodes`, work)."""
        return StandInEnv(lambda: 1, "best-of-N trains nothing")

    def learn(self, total_steps: int, callback: CallbackLike = None) -> BestOfN:
        """Train nothing and return `self`.

        Best-of-N optimises at inference time: its behaviour is fixed by the base policy, the
        reward function and N, and there is nothing to update. `learn` exists so that a best-of-N
        run goes through the same loop as the trained agents (learn, then act or evaluate). A plain
        callback is never called, as no update happens; an SB3 `BaseCallback` sees `init_callback`,
        `on_training_start` and `on_training_end` only: no `on_rollout_start`/`on_rollout_end`,
        `update_locals` or `on_step` (`num_timesteps` stays 0; a `ProgressBarCallback` opens and
        closes at 0, and `StopTrainingOnMaxEpisodes` never stops anything).
        """
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 0:
            raise ValueError(f"total_steps must be an int >= 0, got {total_steps!r}")
        with self._training_callback(callback, total_steps):
            pass  # nothing to train: no update, so no on_step
        return self

    def save(self, path: str | PathLike[str]) -> None:
        """Write the config, the rng state and the base policy itself into the folder `path`, atomically.

        The base policy is copied (not referred to by path) so that the checkpoint stays whole when
        the folder the base came from is moved or rewritten (a pipeline rerun rewrites its SFT
        folder). A LoRA base is saved merged, as the plain model it computes (best-of-N trains
        nothing, so its adapter has no further use as one; see `Policy.save_pretrained`). The
        reward function is not saved: it may be any callable (pass it to `load`).
        """
        state = {"format_version": _FORMAT_VERSION, "algorithm": self.algorithm, "config": self.config.to_dict(),
                 "rng": self.rng.bit_generator.state}
        with write_checkpoint(path) as tmp:
            if getattr(self.base, "is_peft", False):
                self.base.save_pretrained(tmp / "base", merged=True)
            else:
                self.base.save_pretrained(tmp / "base")
            (tmp / _STATE).write_text(json.dumps(state, indent=2))

    @classmethod
    def load(
        cls,
        path: str | PathLike[str],
        reward_fn: RewardFn | str | None = None,
        rng: np.random.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> BestOfN:
        """Restore a best-of-N agent written by `save`; `act` then continues the saved rng's stream.

        A base that was a LoRA policy comes back as the plain model it computed (saved merged).

        Args:
            path: the folder `save` wrote.
            reward_fn: the reward function (not saved: pass the same one).
            rng: receives the saved rng state (a fresh Generator by default).
            device: where to load the base policy.
        """
        fix = "save the agent again"
        path = open_checkpoint(Path(path), marker=_STATE, kind=f"{cls.__name__} checkpoint", fix=fix)
        state = read_json(path / _STATE, fix=fix)
        if state.get("format_version") != _FORMAT_VERSION or state.get("algorithm") != cls.algorithm:
            raise ValueError(f"{path} holds a {state.get('algorithm')!r} checkpoint of format "
                             f"{state.get('format_version')}; {cls.__name__}.load reads {cls.algorithm!r} format "
                             f"{_FORMAT_VERSION}")
        if reward_fn is None:
            raise ValueError(f"{cls.__name__}.load needs the reward function (it is not saved): "
                             f"{cls.__name__}.load(path, reward_fn=...)")
        try:
            config = BestOfNConfig.from_dict(state["config"])
        except ConfigError as err:
            raise ValueError(f"{path / _STATE}: {err}") from err
        rng = rng if rng is not None else np.random.default_rng()
        rng.bit_generator.state = state["rng"]
        base = load_policy(path / "base", device=device, fix=fix)
        return cls(base, reward_fn, config, rng=rng)


def _gather(rows: Sequence[tuple[Rollout, int]], prompts: list[str], pad_id: int, num_truncated: int) -> Rollout:
    """Row `i` of each `(rollout, i)` as one Rollout: prompts left-padded, completions right-padded to the widest."""
    first = rows[0][0]
    batch = len(rows)
    prompt_width = max(ro.prompt_ids.shape[1] for ro, _ in rows)
    width = max(ro.completion_ids.shape[1] for ro, _ in rows)
    prompt_ids = first.prompt_ids.new_full((batch, prompt_width), pad_id)
    prompt_mask = first.prompt_mask.new_zeros((batch, prompt_width))
    completion_ids = first.completion_ids.new_full((batch, width), pad_id)
    completion_mask = first.completion_mask.new_zeros((batch, width))
    logprobs = first.logprobs.new_zeros((batch, width))
    sources: dict[int, tuple[Rollout, list[int], list[int]]] = {}  # one copy per source rollout, not per row
    for out, (ro, i) in enumerate(rows):
        _, outs, ins = sources.setdefault(id(ro), (ro, [], []))
        outs.append(out)
        ins.append(i)
    for ro, outs, ins in sources.values():
        dst, src = torch.tensor(outs, device=prompt_ids.device), torch.tensor(ins, device=prompt_ids.device)
        p, t = ro.prompt_ids.shape[1], ro.completion_ids.shape[1]
        prompt_ids[dst, prompt_width - p :] = ro.prompt_ids[src]
        prompt_mask[dst, prompt_width - p :] = ro.prompt_mask[src]
        completion_ids[dst, :t] = ro.completion_ids[src]
        completion_mask[dst, :t] = ro.completion_mask[src]
        logprobs[dst, :t] = ro.logprobs[src]
    return Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, logprobs, prompts,
                   [ro.completions[i] for ro, i in rows], num_truncated)
