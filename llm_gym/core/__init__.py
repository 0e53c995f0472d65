"""The vocabulary every part of llm_gym shares: plain types and protocols, no neural network code.

    preferences.py   Query, Answer, Comparison: one data model for pairwise choices, K-way rankings and ties
    reward.py        RewardFn (`fn(prompts, completions) -> floats`) and the check every reward passes through
    task.py          Task (prompts, held-out prompts, demonstrations, pretraining text, a gold judge), PromptTask
    chat.py          chat messages (TRL's conversational layout) to prompt and completion text via the chat template
    data.py          prompts and demonstrations from JSONL/JSON/CSV/Parquet/txt files, Datasets, DataFrames and lists,
                     with errors that name the file, line or row, and the columns found
"""
