"""Shared helpers of `trl.chat_template_utils`: reaching the template and tokenizer of a processing class, rendering,
`{% generation %}` markers, and the probe conversations every check renders."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


CHAT_TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "chat_templates"

_GENERATION_TAG = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")
_OPENING_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")

# Probe conversations: distinctive contents so they can be found in renderings.
PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "get_probe_weather",
        "description": "Weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name."}},
            "required": ["city"],
        },
    },
}
PROBE_SYSTEM = {"role": "system", "content": "You are a probe assistant."}
PROBE_USER = {"role": "user", "content": "What is the capital of France?"}
PROBE_ANSWER = {"role": "assistant", "content": "The capital of France is Paris."}
PROBE_USER_2 = {"role": "user", "content": "And of Italy?"}
PROBE_ANSWER_2 = {"role": "assistant", "content": "Rome is the capital of Italy."}
PROBE_TOOL_CALL = {
    "role": "assistant",
    "content": "",
    "tool_calls": [{"type": "function", "function": {"name": "get_probe_weather", "arguments": {"city": "Paris"}}}],
}
PROBE_TOOL_RESULT = {"role": "tool", "name": "get_probe_weather", "content": "probe-sunny-22C"}
PROBE_IMAGE_USER = {
    "role": "user",
    "content": [{"type": "image"}, {"type": "text", "text": "What is in the probe picture?"}],
}
PROBE_IMAGE_ANSWER = {"role": "assistant", "content": [{"type": "text", "text": "A probe cat."}]}


def tokenizer_of(processing_class: Any) -> PreTrainedTokenizerBase:
    """The text tokenizer of a processing class (a processor keeps it under `.tokenizer`)."""
    return getattr(processing_class, "tokenizer", None) or processing_class


def template_of(processing_class: Any, chat_template: str | None = None) -> str | None:
    """The chat template to use: `chat_template` if given, else the processor's, else its tokenizer's."""
    if chat_template is not None:
        return chat_template
    template = getattr(processing_class, "chat_template", None)
    if template is None:
        template = getattr(tokenizer_of(processing_class), "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default", next(iter(template.values()), None))
    return template


def render_text(tokenizer: Any, messages: list[dict], template: str | None, **kwargs: Any) -> str:
    """Render `messages` to text with `template`."""
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, **kwargs)


def render_ids(tokenizer: Any, messages: list[dict], template: str | None, **kwargs: Any) -> dict[str, list[int]]:
    """Render `messages` to token ids (and `assistant_masks` when asked for) with `template`."""
    output = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=True, return_dict=True, **kwargs)
    return {key: list(value) for key, value in output.items() if key in ("input_ids", "assistant_masks")}


def special_token_ids(tokenizer: Any) -> set[int]:
    """Ids of every special token of `tokenizer`, EOS included."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for token_id, token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(token, "special", False):
            ids.add(int(token_id))
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def has_generation_markers(chat_template: str | dict[str, str]) -> bool:
    """Whether a chat template contains `{% generation %}` markers (needed for assistant-only loss).

    Args:
        chat_template (`str` or `dict[str, str]`):
            A template, or a dict of named templates (any of them counts).

    Returns:
        `bool`: `True` if a `{% generation %}` block is present.
    """
    if isinstance(chat_template, dict):
        return any(has_generation_markers(template) for template in chat_template.values())
    return bool(chat_template) and _OPENING_GENERATION_TAG.search(chat_template) is not None


def strip_generation_markers(chat_template: str) -> str:
    """Remove the `{% generation %}` / `{% endgeneration %}` tags of a template, keeping what they wrap.

    The shipped templates emit all text through `{{- ... }}` expressions, so removing the tags changes no whitespace:
    the result renders exactly like the training template.

    Args:
        chat_template (`str`):
            A template with generation markers.

    Returns:
        `str`: The same template without them.
    """
    return _GENERATION_TAG.sub("", chat_template)


def text_probes() -> list[tuple[str, list[dict], dict[str, Any]]]:
    """(name, messages, keyword arguments) of the text probes: system prompt, multi-turn, generation prompts."""
    return [
        ("system prompt and multi-turn", [PROBE_SYSTEM, PROBE_USER, PROBE_ANSWER, PROBE_USER_2, PROBE_ANSWER_2], {}),
        ("single turn", [PROBE_USER, PROBE_ANSWER], {}),
        ("empty system prompt", [{"role": "system", "content": ""}, PROBE_USER, PROBE_ANSWER], {}),
        ("generation prompt", [PROBE_USER], {"add_generation_prompt": True}),
        ("system prompt and generation prompt", [PROBE_SYSTEM, PROBE_USER], {"add_generation_prompt": True}),
    ]


def tool_probes() -> list[tuple[str, list[dict], dict[str, Any]]]:
    """(name, messages, keyword arguments) of the tool-calling probes."""
    return [
        (
            "tool call",
            [PROBE_USER, PROBE_TOOL_CALL, PROBE_TOOL_RESULT, PROBE_ANSWER],
            {"tools": [PROBE_TOOL]},
        ),
        (
            "tool result and generation prompt",
            [PROBE_USER, PROBE_TOOL_CALL, PROBE_TOOL_RESULT],
            {"tools": [PROBE_TOOL]},
        ),
    ]


def vision_probes() -> list[tuple[str, list[dict], dict[str, Any]]]:
    """(name, messages, keyword arguments) of the probes with image placeholders in content parts."""
    return [
        ("image and text", [PROBE_IMAGE_USER, PROBE_IMAGE_ANSWER], {}),
        ("image and generation prompt", [PROBE_IMAGE_USER], {"add_generation_prompt": True}),
    ]
