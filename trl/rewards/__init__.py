"""Ready-made reward functions for online trainers (GRPO, RLOO, ...).

Every reward function follows the trainers' keyword interface `f(completions, **kwargs) -> list[float | None]`: the
trainer passes `prompts`, `completions`, `completion_ids`, `trainer_state` and every dataset column by keyword, and
a function returns one float per completion, or `None` where it does not apply. Completions are strings (standard
format) or message lists (conversational format: the last assistant message is scored). See docs/rewards.md.
"""

from .accuracy_rewards import accuracy_reward, get_cosine_scaled_reward, reasoning_accuracy_reward
from .format_rewards import completion_text, think_format_reward
from .other_rewards import get_repetition_penalty_reward, get_soft_overlong_punishment


__all__ = [
    "accuracy_reward",
    "completion_text",
    "get_cosine_scaled_reward",
    "get_repetition_penalty_reward",
    "get_soft_overlong_punishment",
    "reasoning_accuracy_reward",
    "think_format_reward",
]
