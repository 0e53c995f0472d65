"""The vocabulary every part of llm_gym shares: plain types and protocols, no neural network code.

    preferences.py   Query, Answer, Comparison: one data model for pairwise choices, K-way rankings and ties
    reward.py        RewardFn (`fn(prompts, completions) -> floats`) and the check every reward passes through
    task.py          Task (prompts, held-out prompts, demonstrations, pretraining text, a gold judge), PromptTask
    data.py          prompt datasets and demonstrations from lists and files, with errors that name file and line
"""
