"""The experiment application: what the `llm-gym` command runs.

    cli.py           the command line (`run`, `sweep`, `eval`, `label`, `demo`, `build-model`); imports lazily
    config.py        ExperimentConfig and the configs of its parts (model, task, oracle, each stage and run)
    stages.py        what the stages are built from: the task read from its environment (`load_task`), the checks
                     run before anything (`check_task`), environments, the labeller, the queries, label stores
    pipeline.py      the resumable runner: pretrain -> SFT -> RM -> RL runs -> preference loops -> evaluation
    summary.py       the run's table, with only the columns the task allows
    evaluation.py    one InstructGPT-style row per policy: gold, RM score, KL, win rate, perplexity
    sweep.py         grids of runs in subprocesses, HPARAMS, sweep.csv / sweep.png
"""
