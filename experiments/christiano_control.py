"""Christiano et al. 2017 on control tasks: an SB3 agent trained from synthetic preference labels vs the true reward.

For each env and seed, two arms with the same algorithm, env steps and seeds:

* true:    the SB3 agent on the env's own reward;
* learned: the same agent inside `PreferenceLoop`, paid only by the learned reward
           (`LearnedRewardWrapper` + `MLPRewardLearner`, an ensemble of 3 MLPs), labels from
           `segment_oracle` (segments compared by true return, Bradley-Terry temperature,
           random flips), queries chosen by ensemble disagreement, online schedule.

Both arms are scored the same way: mean true return of `--eval-episodes` deterministic
episodes on a fresh, unwrapped env. Results are appended to `--out` (JSON lines; runs
already there are skipped, so the script resumes) and the table is printed from the file.

    python experiments/christiano_control.py --env CartPole-v1 --seeds 5
    python experiments/christiano_control.py --env Pendulum-v1 --seeds 5            # PPO; --algo SAC for SAC
    python experiments/christiano_control.py --env CartPole-v1 --seeds 2 --arms learned --labels 50 100 250   # the label curve
    python experiments/christiano_control.py --table-only
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.vec_env import DummyVecEnv

from llm_gym.agents.mlp_reward import MLPRewardLearner
from llm_gym.agents.preference_loop import DisagreementSelector, PreferenceLoop, PreferenceLoopConfig, RandomSelector
from llm_gym.agents.sb3 import SB3Agent
from llm_gym.agents.segments import SegmentBuffer, SegmentSource, segment_oracle
from llm_gym.envs.wrappers import LearnedRewardWrapper
from llm_gym.feedback.store import PreferenceStore
from llm_gym.infra.logger import Logger

# Per (env, algorithm): its settings, env steps, segment length, label budget, loop schedule.
SETTINGS = {
    ("CartPole-v1", "PPO"): dict(
        n_envs=8, steps=50_000, segment_length=50, labels=500, steps_per_round=2048, label_rounds=12,
        # rl-baselines3-zoo's CartPole-v1 PPO settings (learning rate and clip range decay linearly over the run)
        kwargs=dict(n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20, ent_coef=0.0,
                    learning_rate=lambda p: 1e-3 * p, clip_range=lambda p: 0.2 * p),
    ),
    ("Pendulum-v1", "PPO"): dict(
        n_envs=4, steps=100_000, segment_length=25, labels=1000, steps_per_round=4096, label_rounds=12,
        # rl-baselines3-zoo's Pendulum-v1 PPO settings (gSDE exploration, gamma 0.9), without its VecNormalize
        kwargs=dict(n_steps=1024, gae_lambda=0.95, gamma=0.9, n_epochs=10, ent_coef=0.0, learning_rate=1e-3,
                    clip_range=0.2, use_sde=True, sde_sample_freq=4),
    ),
    ("Pendulum-v1", "SAC"): dict(
        n_envs=1, steps=15_000, segment_length=25, labels=1000, steps_per_round=1000, label_rounds=8,
        kwargs=dict(learning_starts=1000),
    ),
}
DEFAULT_ALGO = {"CartPole-v1": "PPO", "Pendulum-v1": "PPO"}
ORACLE = dict(temperature=1.0, flip_prob=0.05, tie_margin=0.0)  # in true-return units; 0.05 = Christiano's 10% random answers
PREFILL_STEPS = 1000  # random-action steps cut into the first segments (so the initial labels exist before training)


def evaluate(model, env_id: str, episodes: int, seed: int) -> float:
    env = gym.make(env_id)
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=10_000 + 100 * seed + i)
        done, total = False, 0.0
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, r, terminated, truncated, _ = env.step(action)
            total += float(r)
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def label_rounds_for(s: dict, steps: int, requested: int | None = None) -> int:
    """Rounds the labels after the initial quarter are spread over: `requested` (or the settings'), at most all rounds."""
    return min(requested or s["label_rounds"], steps // s["steps_per_round"])


def run(env_id: str, algo_name: str, seed: int, arm: str, labels: int | None, steps: int, eval_episodes: int,
        label_rounds: int) -> dict:
    """One arm on one seed: "true" (env reward), "learned" (disagreement-selected labels) or "random" (random labels)."""
    s = SETTINGS[env_id, algo_name]
    algo = {"PPO": PPO, "SAC": SAC}[algo_name]
    probe = gym.make(env_id)
    logger = Logger(None)
    t0 = time.time()
    if labels is None:  # the true-reward arm
        venv = DummyVecEnv([lambda: LearnedRewardWrapper(gym.make(env_id)) for _ in range(s["n_envs"])])
        venv.seed(seed)
        agent = SB3Agent(algo("MlpPolicy", venv, seed=seed, device="cpu", **s["kwargs"]), logger, planned_steps=steps)
        agent.learn(steps)
        logger.dump(agent.num_timesteps)
        used = 0
    else:
        buffer = SegmentBuffer(probe.observation_space, probe.action_space, s["segment_length"])
        learner = MLPRewardLearner(buffer, np.random.default_rng(seed), seed=seed)
        venv = DummyVecEnv([lambda: LearnedRewardWrapper(gym.make(env_id), learner.reward, buffer) for _ in range(s["n_envs"])])
        venv.seed(seed)
        model = algo("MlpPolicy", venv, seed=seed, device="cpu", **s["kwargs"])
        inner = SB3Agent(model, logger, relabel=learner.reward if algo_name == "SAC" else None, planned_steps=steps)
        # Random-action steps to cut the first segments from (Christiano's initial labels come from a random policy).
        prefill = LearnedRewardWrapper(gym.make(env_id), None, buffer)
        prefill.reset(seed=seed + 777)
        prefill.action_space.seed(seed)
        for _ in range(PREFILL_STEPS):
            *_, term, trunc, _ = prefill.step(prefill.action_space.sample())
            if term or trunc:
                prefill.reset()
        initial = labels // 4
        per_round = max(1, math.ceil((labels - initial) / label_rounds))
        config = PreferenceLoopConfig(total_labels=labels, initial_labels=initial, labels_per_round=per_round,
                                      steps_per_round=s["steps_per_round"], oversample=4)
        store = PreferenceStore(":memory:")
        loop = PreferenceLoop(inner, SegmentSource(buffer, env_id, np.random.default_rng(seed + 1), recent=20),
                              DisagreementSelector() if arm == "learned" else RandomSelector(), segment_oracle(buffer, np.random.default_rng(seed + 2), **ORACLE),
                              learner, store, config, rng=np.random.default_rng(seed + 3), logger=logger)
        loop.learn(steps)
        model = loop.inner.model
        used = store.counts()["answers"]
    final = evaluate(agent.model if labels is None else model, env_id, eval_episodes, seed)
    acc = [v for _, v in logger.history.get("reward_model/accuracy", [])]
    return dict(env=env_id, algo=algo_name, arm=arm, seed=seed, steps=steps,
                budget=labels, label_rounds=None if labels is None else label_rounds, labels_used=used, final_true_return=final, rm_heldout_accuracy_last=acc[-1] if acc else None,
                wall_s=round(time.time() - t0, 1))


def table(rows: list[dict]) -> str:
    out = []
    out.append(f"{'env':<12} {'algo':<4} {'arm':<8} {'labels':>6} {'steps':>6} {'seeds':>5} {'true return mean ± std':>24} {'ratio':>6} {'>= 90%':>6}")
    for env, algo, steps in sorted({(r["env"], r["algo"], r["steps"]) for r in rows}):
        mine = [r for r in rows if r["env"] == env and r["algo"] == algo and r["steps"] == steps]
        true = [r for r in mine if r["arm"] == "true"]
        t_mean = float(np.mean([r["final_true_return"] for r in true])) if true else float("nan")
        groups = [("true", None)] + sorted({(r["arm"], r["budget"]) for r in mine if r["arm"] != "true"}, key=lambda x: (x[1], x[0]))
        for arm, budget in groups:
            rs = [r for r in mine if r["arm"] == arm and r["budget"] == budget]
            if not rs:
                continue
            v = np.array([r["final_true_return"] for r in rs])
            # For negative returns (Pendulum), the ratio uses the gap to a random policy's return.
            lo = {"Pendulum-v1": -1200.0}.get(env, 0.0)
            ratio = (v.mean() - lo) / (t_mean - lo) if arm != "true" else 1.0
            ok = "" if arm == "true" else ("pass" if ratio >= 0.9 else "FAIL")
            out.append(f"{env:<12} {algo:<4} {arm:<8} {budget or 0:>6} {rs[0]['steps']:>6} {len(rs):>5} "
                       f"{v.mean():>12.1f} ± {v.std():<9.1f} {ratio:>6.2f} {ok:>6}")
        out.append("  per seed: " + "; ".join(
            f"{arm}{'' if b is None else '@' + str(b)}: " + ", ".join(f"{r['final_true_return']:.0f}" for r in sorted(
                [r for r in mine if r['arm'] == arm and r['budget'] == b], key=lambda r: r['seed']))
            for arm, b in groups))
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="both", choices=["CartPole-v1", "Pendulum-v1", "both"])
    p.add_argument("--algo", default=None, choices=["PPO", "SAC"], help="SB3 algorithm of both arms (default: PPO)")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="env steps per run (default: per env, see SETTINGS)")
    p.add_argument("--labels", type=int, nargs="*", default=None, help="label budgets of the learned arm (default: per env)")
    p.add_argument("--arms", nargs="+", default=["true", "learned"], choices=["true", "learned", "random"],
                   help="true: env reward; learned: labels chosen by ensemble disagreement; random: labels chosen at random")
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--label-rounds", type=int, default=None,
                   help="rounds the labels after the initial quarter are spread over (default: per env, see SETTINGS)")
    p.add_argument("--out", default="runs/christiano_control.jsonl")
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--include", nargs="*", default=[], help="more JSONL result files to merge into the printed table")
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if out.exists() else []
    if not args.table_only:
        envs = list(DEFAULT_ALGO) if args.env == "both" else [args.env]
        for env_id in envs:
            algo = args.algo or DEFAULT_ALGO[env_id]
            if (env_id, algo) not in SETTINGS:
                p.error(f"no settings for {algo} on {env_id}; choose one of {sorted(SETTINGS)}")
            s = SETTINGS[env_id, algo]
            steps = args.steps or s["steps"]
            budgets = args.labels or [s["labels"]]
            rounds_wanted = label_rounds_for(s, steps, args.label_rounds)
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                jobs = [("true", None)] if "true" in args.arms else []
                jobs += [(arm, b) for b in budgets for arm in ("learned", "random") if arm in args.arms]
                for arm, budget in jobs:
                    if any(r["env"] == env_id and r["algo"] == algo and r["seed"] == seed and r["arm"] == arm
                           and r["budget"] == budget and r["steps"] == steps
                           and (budget is None or r.get("label_rounds", label_rounds_for(s, steps)) == rounds_wanted) for r in rows):
                        continue
                    r = run(env_id, algo, seed, arm, budget, steps, args.eval_episodes, rounds_wanted)
                    print(json.dumps(r), flush=True)
                    rows.append(r)
                    with out.open("a") as f:
                        f.write(json.dumps(r) + "\n")
    extra = [json.loads(line) for f in args.include for line in Path(f).read_text().splitlines() if line.strip()]
    print(table(rows + extra))


if __name__ == "__main__":
    main()
