"""Format rewards, and how every reward function in `trl.rewards` reads a completion's text."""

from __future__ import annotations

import re
from typing import Any


# `<think>` opens the completion, is not reopened, and is closed; anything may follow the closing tag.
THINK_FORMAT_PATTERN = re.compile(r"^<think>(?!.*<think>)(.*?)</think>.*$", re.DOTALL)


def _content_text(content: Any) -> str:
    """Text of a message's `content`: a string, or a list of content blocks whose text parts are joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type", "text") == "text":
            parts.append(block.get("text", ""))
    return "".join(parts)


def completion_text(completion: str | list[dict[str, Any]]) -> str:
    """The text a reward function scores: the completion itself (standard format), or the content of the last
    assistant message (conversational format: a list of messages, possibly with tool calls and tool results).

    Args:
        completion (`str` or `list[dict]`):
            A standard completion, or a list of messages with `"role"` and `"content"` keys.

    Example:
    ```python
    >>> completion_text([{"role": "assistant", "content": "4"}])
    '4'
    ```
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _content_text(completion.get("content"))
    messages = list(completion)
    if not messages:
        return ""
    assistant = [message for message in messages if message.get("role", "assistant") == "assistant"]
    return _content_text((assistant or messages)[-1].get("content"))


def think_format_reward(completions: list[str] | list[list[dict[str, Any]]], **kwargs) -> list[float]:
    r"""1.0 when the completion starts with a `<think>...</think>` block (no nested or second `<think>`), else 0.0.

    The completion must match `^<think>(?!.*<think>)(.*?)</think>.*$` (`re.DOTALL`): reasoning enclosed in the tags,
    followed by anything, usually the answer.

    Args:
        completions (`list[str]` or `list[list[dict]]`):
            Completions, standard (strings) or conversational (the last assistant message is scored).
        **kwargs:
            The other columns the trainer passes (`prompts`, `completion_ids`, `trainer_state`, dataset columns);
            unused.

    Example:
    ```python
    >>> think_format_reward(["<think>\nreasoning\n</think>\nanswer", "<think>\nreasoning\nanswer"])
    [1.0, 0.0]
    ```
    """
    return [1.0 if THINK_FORMAT_PATTERN.match(completion_text(c)) else 0.0 for c in completions]
