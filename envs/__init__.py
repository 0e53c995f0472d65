"""llm_gym environments, registered in Gymnasium's own registry under the `llm_gym/` namespace.

    >>> import gymnasium, llm_gym
    >>> env = gymnasium.make("llm_gym/ReviewSentiment-v0")
    >>> vec = gymnasium.make_vec("llm_gym/ReviewSentiment-v0", num_envs=4)
"""

from gymnasium.envs.registration import register

from llm_gym.envs.prompt_bandit import PromptBanditEnv, PromptBanditVecEnv
from llm_gym.envs.review import ReviewSentimentEnv, ReviewSentimentVecEnv, review_prompts

__all__ = ["PromptBanditEnv", "PromptBanditVecEnv", "ReviewSentimentEnv", "ReviewSentimentVecEnv", "review_prompts"]

register(
    id="llm_gym/PromptBandit-v0",
    entry_point="llm_gym.envs.prompt_bandit:PromptBanditEnv",
    vector_entry_point="llm_gym.envs.prompt_bandit:PromptBanditVecEnv",
    disable_env_checker=False,
)
register(
    id="llm_gym/ReviewSentiment-v0",
    entry_point="llm_gym.envs.review:ReviewSentimentEnv",
    vector_entry_point="llm_gym.envs.review:ReviewSentimentVecEnv",
)
