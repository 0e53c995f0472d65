"""Ready-made tasks, at the edge: nothing generic imports this folder; the `llm-gym` command uses it as its default.

    review.py        the built-in review-continuation task (Ziegler et al. 2019's positive-sentiment task in
                     miniature): corpus, prompts, demonstrations, held-out text and the GoldScorer that plays the human
    arithmetic.py    the built-in verifiable task: chain sums ("7 - 2 + 9 =") over a corpus of worksheets, checked
                     by an AnswerChecker (RL from verifiable rewards in miniature)
    tiny_lm.py       the built-in tiny GPT-2: a BPE tokenizer and a model pretrained on a task's corpus (the review corpus by
                     default), cached and loaded through `from_pretrained` like any Hub model
"""
