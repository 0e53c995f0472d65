"""The `llm-gym` command (also `python -m llm_gym`).

    llm-gym demo                 # the main job: built-in task, tiny pretrained model, an episode loop
    llm-gym build-model          # build (or find cached) the built-in pretrained model, print perplexities
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

import numpy as np

__all__ = ["main"]

EXAMPLES = """examples:
  llm-gym demo
  llm-gym demo --episodes 2 --num-envs 4 --out runs
  llm-gym build-model --cache-dir /tmp/llm_gym_cache
"""


def _build_model(args: argparse.Namespace):
    from llm_gym.logger import Logger, make_run_dir
    from llm_gym.tiny_lm import TinyLMConfig, build_builtin_model, find_builtin_model

    config = TinyLMConfig.smoke() if args.smoke else TinyLMConfig()
    print(f"built-in model: {config.n_layer} layers x {config.n_embd} dims, vocab {config.vocab_size}, "
          f"{config.train_steps} pretraining steps (cache: {args.cache_dir or 'default'})", flush=True)
    report = find_builtin_model(config, cache_dir=args.cache_dir)
    if report is None:  # build it, logging the pretraining curve when there is a run folder
        logger = Logger(make_run_dir(args.out, "pretrain", seed=config.seed)) if getattr(args, "out", None) else None
        report = build_builtin_model(config, cache_dir=args.cache_dir, logger=logger)
        if logger is not None:
            logger.close()
    status = "found in cache" if report.cached else f"pretrained in {report.seconds:.0f}s"
    print(f"  {status}: {report.path}")
    print(f"  held-out perplexity: untrained {report.perplexity_before:.1f} -> pretrained {report.perplexity_after:.2f}")
    return report, config


def _cmd_build_model(args: argparse.Namespace) -> int:
    _build_model(args)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import gymnasium

    import llm_gym  # noqa: F401  (registers the environments)
    from llm_gym.logger import Logger, make_run_dir
    from llm_gym.policy import Policy, SamplingConfig
    from llm_gym.task import generate_review_task

    t0 = time.perf_counter()
    report, config = _build_model(args)
    task = generate_review_task(config.task)
    print(f"built-in task (seed {config.task.seed}): {len(task.pretrain_texts)} pretraining reviews, "
          f"{len(task.heldout_texts)} held-out, {len(task.prompts)} prompts, {len(task.demonstrations)} demonstrations")

    policy = Policy.from_pretrained(report.path)
    env = gymnasium.make_vec("llm_gym/ReviewSentiment-v0", num_envs=args.num_envs, task_config=config.task)
    run_dir = make_run_dir(args.out, "demo", seed=args.seed)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens)
    with Logger(run_dir) as logger:
        logger.log_hparams({"model": str(report.path), "num_envs": args.num_envs, "seed": args.seed,
                            "max_new_tokens": args.max_new_tokens, "temperature": sampling.temperature})
        prompts, _ = env.reset(seed=args.seed)
        for episode in range(args.episodes):
            rollout = policy.sample(list(prompts), sampling, seed=args.seed + episode)
            prompts, rewards, terminated, truncated, info = env.step(rollout.completions)
            assert terminated.all() and not truncated.any()
            lengths = rollout.completion_mask.sum(-1).float()
            logger.record("rollout/reward_mean", float(rewards.mean()))
            logger.record("objective/gold", float(info["gold"].mean()))
            logger.record("rollout/completion_tokens", float(lengths.mean()))
            logger.record("rollout/logprob_mean", float(rollout.logprobs.sum(-1).mean()))
            logger.dump(step=(episode + 1) * args.num_envs)
            sample = "\n".join(f"{p} |{c}   [{r:+.3f}]" for p, c, r in zip(info["prompt"], info["completion"], rewards))
            logger.log_text("rollout/samples", sample, step=(episode + 1) * args.num_envs)
            print(f"\nbatch {episode + 1}/{args.episodes}: mean reward {rewards.mean():+.3f}, "
                  f"mean completion length {lengths.mean():.1f} tokens")
            for p, c, r in list(zip(info["prompt"], info["completion"], rewards))[: args.show]:
                print(f"  [{r:+.3f}] {p} |{c}")
    demo_scores = task_scores(task)
    print(f"\nfor scale, gold score of the task's demonstrations: {demo_scores:+.3f} (what SFT will aim for)")
    print(f"TensorBoard logs: {run_dir}  (tensorboard --logdir {args.out})")
    print(f"done in {time.perf_counter() - t0:.0f}s")
    return 0


def task_scores(task) -> float:
    """Mean gold score of the task's demonstrations."""
    from llm_gym.task import GoldScorer

    demos = task.demonstrations
    return float(np.mean(GoldScorer()([d.prompt for d in demos], [d.completion for d in demos])))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-gym", description="RLHF with a language model as the agent.", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--cache-dir", default=None, help="where built models are cached (default: $LLM_GYM_CACHE or ~/.cache/llm_gym)")
        p.add_argument("--smoke", action="store_true", help="use the seconds-to-build smoke model instead of the default")

    p = sub.add_parser("demo", help="run the main job on the built-in task", epilog="example:\n  llm-gym demo --episodes 2",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    common(p)
    p.add_argument("--out", default="runs", help="root folder of TensorBoard runs (default: runs)")
    p.add_argument("--seed", type=int, default=0, help="seed of prompts and samples")
    p.add_argument("--episodes", type=int, default=3, help="batches of prompts to answer")
    p.add_argument("--num-envs", type=int, default=8, help="prompts per batch")
    p.add_argument("--max-new-tokens", type=int, default=24, help="tokens per completion at most")
    p.add_argument("--show", type=int, default=4, help="completions printed per batch")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("build-model", help="build (or find cached) the built-in pretrained model",
                       epilog="example:\n  llm-gym build-model --smoke", formatter_class=argparse.RawDescriptionHelpFormatter)
    common(p)
    p.set_defaults(func=_cmd_build_model)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `llm-gym` console script."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
