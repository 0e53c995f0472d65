"""The neural parts: a Hugging Face causal LM as a policy, reward models, and the LM helpers they share.

    text.py               text to token batches: encoding, EOS, left truncation keeping BOS, left/right padding
    policy.py             Policy: KV-cached batched sampling with log-probs, log-prob recomputation, SamplingConfig
    sampler.py            CompletionSampler: what evaluation needs of anything that answers prompts (a Policy, best-of-N)
    lm.py                 documents as a batch, the next-token loss, perplexity (pretraining, PPO-ptx, alignment tax)
    reward_model.py       RewardModel (backbone + scalar head): encoding, scoring, normalising; LearnedReward
    reward_losses.py      the Bradley-Terry losses: pairwise_loss, ranking_loss
    reward_checkpoint.py  the checkpoint format (safetensors + JSON, sha256-checked) of a model or an ensemble
    reward_trainer.py     RewardTrainerConfig, RewardTrainer.fit (a model, or an ensemble on bootstrap resamples)
    reward_ensemble.py    RewardEnsemble; reward_model_from_pretrained, load_reward_model (a model or an ensemble)
"""
