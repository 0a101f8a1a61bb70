"""Strict checks of `trl vllm-serve` request fields: every malformed value is refused with a message naming the field
(HTTP 400), never converted, ignored or left to fail deep in the engine."""

from __future__ import annotations

import math
from typing import Any

from trl.generation.server_engines import RequestError


_MISSING = object()

# `generation_kwargs` that would bypass the server's limits or the fields it manages itself.
FORBIDDEN_GENERATION_KWARGS = {
    "max_new_tokens": "use `max_tokens`",
    "max_length": "use `max_tokens`",
    "min_length": "use `min_new_tokens`",
    "num_return_sequences": "use `n`",
    "num_beams": "beam search is not served",
    "num_beam_groups": "beam search is not served",
    "best_of": "use `n`",
    "max_time": "the server sets its own time limit (`--request_timeout`)",
    "prompt_logprobs": "use `/get_sequence_logprobs/`",
    "logprobs": "use the `logprobs` field",
    "output_logits": "use the `logprobs` field",
    "output_scores": "use the `logprobs` field",
    "output_hidden_states": "not served",
    "output_attentions": "not served",
    "return_dict_in_generate": "set by the server",
    "pad_token_id": "set by the server",
    "use_cache": "set by the server",
}


def integer(body: dict, name: str, default: Any = _MISSING, minimum: int | None = None) -> Any:
    """
    `body[name]` as an integer (a JSON number without a fraction; `true`/`false` and strings are refused).

    Args:
        body (`dict`):
            The request (or any JSON object).
        name (`str`):
            The field, named in the error.
        default (`Any`, *optional*):
            Returned when the field is absent or `null`; without one, the field is required.
        minimum (`int` or `None`, *optional*, defaults to `None`):
            Smallest accepted value.
    """
    value = body.get(name) if isinstance(body, dict) else None
    if value is None:
        if default is _MISSING:
            raise RequestError(f"`{name}` is required (an integer).")
        return default
    return check_integer(value, name, minimum)


def check_integer(value: Any, name: str, minimum: int | None = None) -> int:
    """
    `value` when it is an integer of at least `minimum`, else a `RequestError` naming `name`.

    Args:
        value (`Any`):
            The JSON value.
        name (`str`):
            The field, named in the error.
        minimum (`int` or `None`, *optional*, defaults to `None`):
            Smallest accepted value.
    """
    if isinstance(value, float) and value.is_integer() and math.isfinite(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"`{name}` must be an integer, got {_shown(value)}.")
    if minimum is not None and value < minimum:
        raise RequestError(f"`{name}` must be at least {minimum}, got {value}.")
    return value


def number(body: dict, name: str, default: Any = _MISSING) -> Any:
    """
    `body[name]` as a finite float (integers accepted; booleans, strings, NaN and infinities refused).

    Args:
        body (`dict`):
            The request.
        name (`str`):
            The field, named in the error.
        default (`Any`, *optional*):
            Returned when the field is absent or `null`; without one, the field is required.
    """
    value = body.get(name)
    if value is None:
        if default is _MISSING:
            raise RequestError(f"`{name}` is required (a number).")
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RequestError(f"`{name}` must be a finite number, got {_shown(value)}.")
    return float(value)


def optional(body: dict, name: str, kind: type | tuple, what: str) -> Any:
    """
    `body[name]` when absent, `null` or an instance of `kind`, else a `RequestError` naming the field.

    Args:
        body (`dict`):
            The request.
        name (`str`):
            The field.
        kind (`type` or `tuple`):
            Accepted JSON types (`str`, `list`, `dict`, `bool`).
        what (`str`):
            What the field must be, in words (for the error).
    """
    value = body.get(name)
    if value is not None and (not isinstance(value, kind) or (isinstance(value, bool) and bool not in _tuple(kind))):
        raise RequestError(f"`{name}` must be {what}, got {_shown(value)}.")
    return value


def token_ids(value: Any, name: str, vocab_size: int | None) -> list[int]:
    """
    `value` as a non-empty list of token ids in `[0, vocab_size)`.

    Args:
        value (`Any`):
            The JSON value.
        name (`str`):
            The field (e.g. `"prompts[3]"`), named in the error.
        vocab_size (`int` or `None`):
            Number of token ids the model has; `None` checks only the sign.
    """
    if not isinstance(value, list) or not value:
        raise RequestError(f"`{name}` must be a non-empty list of token ids, got {_shown(value)}.")
    for position, token in enumerate(value):
        if isinstance(token, bool) or not isinstance(token, int):
            raise RequestError(f"`{name}[{position}]` must be an integer token id, got {_shown(token)}.")
        if token < 0 or (vocab_size is not None and token >= vocab_size):
            bound = f"[0, {vocab_size})" if vocab_size is not None else "non-negative"
            raise RequestError(f"`{name}[{position}]` = {token} is not a token id of the model (ids are {bound}).")
    return value


def messages(conversation: Any, name: str) -> list[dict]:
    """
    `conversation` when it is a non-empty list of messages, each with a string `role` and a `content` that is a
    string, `null` or a list of parts: text (`{"type": "text", "text": ...}`) or image (`{"type": "image_url",
    "image_url": {"url": "data:image/png;base64,..."}}`, or `{"type": "image", "image": "<base64>"}`).

    Args:
        conversation (`Any`):
            The JSON value.
        name (`str`):
            The field (e.g. `"messages[0]"`), named in the error.
    """
    if not isinstance(conversation, list) or not conversation:
        raise RequestError(f"`{name}` must be a non-empty list of messages, got {_shown(conversation)}.")
    for index, message in enumerate(conversation):
        where = f"{name}[{index}]"
        if not isinstance(message, dict):
            raise RequestError(f"`{where}` must be an object with `role` and `content`, got {_shown(message)}.")
        if not isinstance(message.get("role"), str) or not message["role"]:
            raise RequestError(f"`{where}.role` is required: a string such as 'user', 'assistant' or 'system'.")
        content = message.get("content")
        if isinstance(content, list):
            for part_index, part in enumerate(content):
                if _image_part_data(part) is None and not (
                    isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
                ):
                    raise RequestError(
                        f"`{where}.content[{part_index}]` must be a text part `{{'type': 'text', 'text': ...}}` or "
                        "an image part `{'type': 'image_url', 'image_url': {'url': 'data:image/png;base64,...'}}`."
                    )
        elif content is not None and not isinstance(content, str):
            raise RequestError(f"`{where}.content` must be a string, a list of text and image parts, or null.")
    return conversation


def split_message_images(conversation: list[dict]) -> tuple[list[dict], list[str]]:
    """
    A checked conversation's image parts taken out: the conversation with `{"type": "image"}` in their place (what
    chat templates render as the model's image placeholder), and the images' base64 data in order.

    Args:
        conversation (`list[dict]`):
            Messages accepted by [`messages`]. They are not modified.
    """
    images, converted = [], []
    for message in conversation:
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                data = _image_part_data(part)
                if data is not None:
                    images.append(data)
                parts.append({"type": "image"} if data is not None else part)
            message = {**message, "content": parts}
        converted.append(message)
    return converted, images


def _image_part_data(part: Any) -> str | None:
    """The base64 data (or data URL) of an image content part, `None` for anything else."""
    if not isinstance(part, dict):
        return None
    if part.get("type") == "image_url" and isinstance(part.get("image_url"), dict):
        url = part["image_url"].get("url")
        return url if isinstance(url, str) and url.startswith("data:") else None
    if part.get("type") in ("image", "image_pil") and isinstance(part.get(part["type"]), str):
        return part[part["type"]]
    return None


def image_entries(value: Any, num_prompts: int) -> list[list[str]] | None:
    """
    The `images` field of `/generate/` as one list of base64 images per prompt (`None` when absent).

    Each entry is `null` (no image), one base64 string (the reference's one image per prompt) or a list of them
    (several images, in the order of the prompt's placeholders).

    Args:
        value (`Any`):
            The JSON value.
        num_prompts (`int`):
            The number of prompts.
    """
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != num_prompts:
        raise RequestError(
            f"`images` needs one entry per prompt ({num_prompts}): a base64 image, a list of them, or null."
        )
    entries = []
    for index, entry in enumerate(value):
        entry = [] if entry is None else [entry] if isinstance(entry, str) else entry
        if not isinstance(entry, list) or not all(isinstance(image, str) for image in entry):
            raise RequestError(f"`images[{index}]` must be a base64 image, a list of them, or null.")
        entries.append(entry)
    return entries if any(entries) else None


def generation_kwargs(value: Any) -> dict:
    """
    `value` (the `generation_kwargs` field) when it is an object whose keys the server lets through.

    Args:
        value (`Any`):
            The JSON value (`null` is an empty dict).
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(f"`generation_kwargs` must be an object (a dict), got {_shown(value)}.")
    for key, hint in FORBIDDEN_GENERATION_KWARGS.items():
        if key in value:
            raise RequestError(f"`generation_kwargs.{key}` is not accepted by the server: {hint}.")
    if "seed" in value and value["seed"] is not None:
        check_integer(value["seed"], "generation_kwargs.seed")
    return dict(value)


def template_kwargs(value: Any, reserved: set[str]) -> dict:
    """
    `value` (the `chat_template_kwargs` field) when it is an object with string keys outside `reserved`.

    Args:
        value (`Any`):
            The JSON value (`null` is an empty dict).
        reserved (`set[str]`):
            Names the server passes itself (`messages`, `tools`, ...).
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(f"`chat_template_kwargs` must be an object (a dict), got {_shown(value)}.")
    clash = sorted(set(value) & reserved)
    if clash:
        raise RequestError(f"`chat_template_kwargs` may not set {clash}: the server sets them.")
    return value


def _tuple(kind) -> tuple:
    return kind if isinstance(kind, tuple) else (kind,)


def _shown(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{text} ({type(value).__name__})"
