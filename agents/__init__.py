"""llm_gym agents: algorithms behind one interface (`Agent`)."""

from llm_gym.agents.base import Agent, Callback

__all__ = ["Agent", "Callback"]
