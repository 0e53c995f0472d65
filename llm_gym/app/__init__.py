"""The experiment application: what the `llm-gym` command runs.

    cli.py           the command line (`run`, `sweep`, `eval`, `label`, `demo`, `build-model`); imports lazily
    pipeline.py      ExperimentConfig and the resumable Pipeline: pretrain -> SFT -> RM -> RL runs -> evaluation
    evaluation.py    one InstructGPT-style row per policy: gold, RM score, KL, win rate, perplexity
    sweep.py         grids of runs in subprocesses, HPARAMS, sweep.csv / sweep.png
"""
