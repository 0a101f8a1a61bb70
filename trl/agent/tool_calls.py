"""Tool schemas for the chat template, and the tool calls of a generated assistant turn.

Three call formats are recognised:

- **Qwen / ChatML** (`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks) and **Llama 3.1 / 3.2**
  (a bare `{"name": ..., "parameters": {...}}` JSON object per line): parsed by
  [`~trl.chat_template_utils.parse_response`] with the template's response schema.
- **GPT-OSS / Harmony** (`<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{...}<|call|>`):
  parsed here from the text decoded with its special tokens, since the channel markers are special tokens.

A call the model tried to write but that does not parse (broken JSON, no name) is *malformed*: the turn is kept as
plain text (trained like any other text, and visible to the reward functions) and counted in the metrics.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..chat_template_utils import parse_response
from ..chat_template_utils._common import template_of, tokenizer_of


__all__ = ["ParsedTurn", "call_style", "parse_harmony", "parse_turn", "tool_name", "tool_schemas"]

# A Harmony message: its header (role, channel, recipient `to=functions.NAME`, constraint) then its body.
_HARMONY_MESSAGE = re.compile(
    r"((?:(?!<\|message\|>).)*)<\|message\|>(.*?)(?:<\|call\|>|<\|end\|>|<\|return\|>|$)", re.S
)
_HARMONY_RECIPIENT = re.compile(r"\bto=functions\.([\w\-.]+)")
_HARMONY_CHANNEL = re.compile(r"<\|channel\|>\s*(\w+)")


@dataclass
class ParsedTurn:
    """One generated assistant turn.

    Attributes:
        message (`dict`):
            The assistant message: `{"role": "assistant", "content": str}` plus `"tool_calls"` (a list of
            `{"type": "function", "function": {"name", "arguments"}}`) when the turn calls tools.
        malformed (`int`):
            Attempted calls that did not parse (kept in `content`).
    """

    message: dict
    malformed: int = 0
    calls: list[dict] = field(init=False)

    def __post_init__(self):
        self.calls = list(self.message.get("tool_calls") or [])


def tool_name(tool: Callable | dict) -> str:
    """The name a tool is called by: a function's `__name__`, or the `name` of a JSON schema."""
    if isinstance(tool, dict):
        return tool.get("function", tool).get("name", "")
    return getattr(tool, "__name__", type(tool).__name__)


def tool_schemas(tools: list[Callable]) -> list[dict]:
    """The JSON schema of each tool (`transformers.utils.get_json_schema`), as the chat template receives them.

    Raises:
        `ValueError`: naming the tool and the fix when its signature cannot be described (a missing docstring,
        argument description or type hint).
    """
    from transformers.utils import get_json_schema

    schemas = []
    for tool in tools:
        try:
            schemas.append(get_json_schema(tool))
        except Exception as error:
            raise ValueError(
                f"Tool {tool_name(tool)!r} cannot be described to the model ({error}). Give it type hints for every "
                "argument and a Google-style docstring with an `Args:` section describing each argument."
            ) from error
    names = [schema["function"]["name"] for schema in schemas]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"Several tools are named {duplicates}: give every tool a distinct name.")
    return schemas


def call_style(processing_class: Any) -> str:
    """`"harmony"` for GPT-OSS templates (channel markers), else `"schema"` (the response schema of the template,
    see [`~trl.chat_template_utils.add_response_schema`])."""
    template = template_of(processing_class) or ""
    return "harmony" if "<|channel|>" in template and "to=functions" in template else "schema"


def parse_harmony(text: str) -> ParsedTurn:
    """Parse a GPT-OSS (Harmony) assistant turn decoded with its special tokens.

    The `final` channel is the content; each message addressed `to=functions.NAME` (in its channel or role header)
    is a call whose body is the JSON arguments; `analysis` messages are reasoning and dropped. Text without any
    message marker (an un-prefixed answer) is the content.

    Example:
        `parse_harmony('<|channel|>commentary to=functions.add <|constrain|>json<|message|>{"a": 1}<|call|>')`
        gives one call of `add` with arguments `{"a": 1}`.
    """
    calls, finals, malformed = [], [], 0
    for header, body in _HARMONY_MESSAGE.findall(text):
        recipient, channel = _HARMONY_RECIPIENT.search(header), _HARMONY_CHANNEL.search(header)
        if recipient is not None:
            try:
                arguments = json.loads(body.strip() or "{}")
            except json.JSONDecodeError:
                malformed += 1
                continue
            calls.append({"type": "function", "function": {"name": recipient.group(1), "arguments": arguments}})
        elif channel is not None and channel.group(1) == "final":
            finals.append(body)
    if finals:
        content = finals[-1]
    elif "<|message|>" in text:
        content = ""  # only analysis or calls
    else:
        content = re.sub(r"<\|[a-z_]+\|>", "", text)  # an answer without channels
    message = {"role": "assistant", "content": content.strip()}
    if calls:
        message["tool_calls"] = calls
    return ParsedTurn(message, malformed)


def _looks_like_a_call(content: str, schema: dict) -> bool:
    """Whether unparsed content holds an attempted call of the schema's format."""
    if schema.get("tool_calls") == "tagged":
        return schema["tool_call_open"] in content
    if schema.get("tool_calls") == "json":
        stripped = content.strip()
        return stripped.startswith("{") and '"name"' in stripped
    return False


def parse_turn(processing_class: Any, completion_ids: list[int], prompt_ids: list[int] | None = None) -> ParsedTurn:
    """Parse the ids of one generated assistant turn into a message with its tool calls.

    Args:
        processing_class (`PreTrainedTokenizerBase` or `ProcessorMixin`):
            The tokenizer (its `response_schema`, see [`~trl.chat_template_utils.add_response_schema`], or the one
            inferred from its template; GPT-OSS templates are parsed as Harmony).
        completion_ids (`list[int]`):
            The generated ids of this turn.
        prompt_ids (`list[int]` or `None`, *optional*, defaults to `None`):
            What the model was conditioned on (text prefilled in an open assistant turn belongs to the answer).
    """
    tokenizer = tokenizer_of(processing_class)
    if call_style(processing_class) == "harmony":
        return parse_harmony(tokenizer.decode(list(completion_ids), skip_special_tokens=False))
    schema = _response_schema(tokenizer)
    message = parse_response(tokenizer, list(completion_ids), prefix=prompt_ids)
    malformed = 0 if message.get("tool_calls") else int(_looks_like_a_call(message["content"], schema))
    return ParsedTurn(message, malformed)


def _response_schema(tokenizer: Any) -> dict:
    """The tokenizer's response schema, inferred from its template once and then kept on it (as
    [`~trl.chat_template_utils.add_response_schema`] does)."""
    schema = getattr(tokenizer, "response_schema", None)
    if schema is None:
        from ..chat_template_utils.parsing import _infer_response_schema

        schema = tokenizer.response_schema = _infer_response_schema(tokenizer)
    return schema
