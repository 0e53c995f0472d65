"""The neural parts: a Hugging Face causal LM as a policy, reward models, and the LM helpers they share.

    policy.py        Policy: KV-cached batched sampling with log-probs, log-prob recomputation, SamplingConfig
    lm.py            documents as a batch, the next-token loss, perplexity (pretraining, PPO-ptx, alignment tax)
    reward_model.py  RewardModel (backbone + scalar head), Bradley-Terry losses, RewardTrainer, RewardEnsemble
"""
