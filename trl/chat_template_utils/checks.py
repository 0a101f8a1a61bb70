"""Chat-template checks run when a trainer loads conversational data: prefix preservation, the end-of-turn token
inside the assistant mask, non-empty masks, tool-calling support. They render probe conversations; no model needed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..data_utils import common_prefix_length
from ._common import (
    PROBE_ANSWER,
    PROBE_ANSWER_2,
    PROBE_SYSTEM,
    PROBE_TOOL,
    PROBE_TOOL_CALL,
    PROBE_TOOL_RESULT,
    PROBE_USER,
    PROBE_USER_2,
    has_generation_markers,
    render_ids,
    render_text,
    special_token_ids,
    template_of,
    tokenizer_of,
)


if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, ProcessorMixin


def _prefix_pairs() -> list[tuple[list[dict], list[dict], dict[str, Any]]]:
    return [
        ([PROBE_USER], [PROBE_ANSWER], {}),
        ([PROBE_SYSTEM, PROBE_USER, PROBE_ANSWER, PROBE_USER_2], [PROBE_ANSWER_2], {}),
        ([PROBE_USER, PROBE_TOOL_CALL, PROBE_TOOL_RESULT], [PROBE_ANSWER], {"tools": [PROBE_TOOL]}),
    ]


def _prefix_failure(processing_class: Any, template: str | None = None) -> str | None:
    """Describe the first probe whose prompt tokens are not a prefix of its prompt + completion tokens."""
    tokenizer = tokenizer_of(processing_class)
    template = template_of(processing_class, template)
    for index, (prompt, completion, kwargs) in enumerate(_prefix_pairs()):
        try:
            prompt_ids = render_ids(tokenizer, prompt, template, add_generation_prompt=True, **kwargs)["input_ids"]
            full_ids = render_ids(tokenizer, prompt + completion, template, **kwargs)["input_ids"]
        except Exception as error:
            if index == 0:  # the basic probe must render; tool probes are optional
                return f"rendering a user/assistant exchange failed: {error}"
            continue
        if full_ids[: len(prompt_ids)] != prompt_ids:
            where = common_prefix_length(prompt_ids, full_ids)
            return (
                f"the prompt rendering (with the generation prompt) differs from the full conversation from token "
                f"{where} on: {tokenizer.decode(prompt_ids[where:])!r} vs {tokenizer.decode(full_ids[where:])!r}"
            )
    return None


def is_chat_template_prefix_preserving(processing_class: PreTrainedTokenizerBase | ProcessorMixin) -> bool:
    """Whether rendering a prompt (with the generation prompt) gives a token prefix of rendering prompt + answer.

    Trainers locate completion tokens by this prefix; templates that rewrite earlier turns (e.g. drop the reasoning
    of past assistant messages) or add text only in the generation prompt break it.

    Args:
        processing_class (`PreTrainedTokenizerBase` or `ProcessorMixin`):
            The tokenizer or processor.

    Returns:
        `bool`: `True` if every probe (single turn, multi-turn, tool call when supported) preserves the prefix.
    """
    return _prefix_failure(processing_class) is None


def _assistant_mask_probe(processing_class: Any, chat_template: str | None) -> tuple[list[int], list[int], int]:
    """Render a probe exchange with the assistant mask; return ids, mask and the index where the answer ends."""
    tokenizer = tokenizer_of(processing_class)
    template = template_of(processing_class, chat_template)
    messages = [PROBE_USER, PROBE_ANSWER]
    rendered = render_ids(tokenizer, messages, template, return_assistant_tokens_mask=True)
    text = render_text(tokenizer, messages, template)
    answer_end = text.rindex(PROBE_ANSWER["content"]) + len(PROBE_ANSWER["content"])
    head_ids = tokenizer(text[:answer_end], add_special_tokens=False)["input_ids"]
    ids = rendered["input_ids"]
    return ids, rendered.get("assistant_masks", [0] * len(ids)), common_prefix_length(head_ids, ids)


def is_chat_template_stop_token_trained(
    processing_class: PreTrainedTokenizerBase | ProcessorMixin, chat_template: str | None = None
) -> bool:
    """Whether the token that ends an assistant turn is inside the assistant mask (so the model learns to stop).

    The end-of-turn token is the first special token (or EOS) after the assistant's content in a probe exchange.

    Args:
        processing_class (`PreTrainedTokenizerBase` or `ProcessorMixin`):
            The tokenizer or processor.
        chat_template (`str` or `None`, *optional*, defaults to `None`):
            Template to check instead of the processing class's own.

    Returns:
        `bool`: `True` if that token has mask 1; `False` if it is outside the mask, or the turn has no such token.
    """
    if not has_generation_markers(template_of(processing_class, chat_template) or ""):
        return False  # without markers the mask is all zeros
    ids, mask, answer_end = _assistant_mask_probe(processing_class, chat_template)
    special = special_token_ids(tokenizer_of(processing_class))
    stop = next((index for index in range(answer_end, len(ids)) if ids[index] in special), None)
    return stop is not None and bool(mask[stop])


def chat_template_problems(
    processing_class: PreTrainedTokenizerBase | ProcessorMixin,
    assistant_only_loss: bool = False,
    require_prefix_preserving: bool = True,
) -> list[str]:
    """List what makes the processing class's chat template unfit for training; each problem names its fix.

    Args:
        processing_class (`PreTrainedTokenizerBase` or `ProcessorMixin`):
            The tokenizer or processor.
        assistant_only_loss (`bool`, *optional*, defaults to `False`):
            Also check the assistant mask: generation markers, end-of-turn token inside it, not all zeros.
        require_prefix_preserving (`bool`, *optional*, defaults to `True`):
            Check prefix preservation (needed for prompt-completion and preference data).

    Returns:
        `list[str]`: the problems found (empty when the template is fine).
    """
    template = template_of(processing_class)
    if template is None:
        return [
            "The processing class has no chat template. Set `chat_template_path` (a tokenizer or a .jinja file) or "
            "assign `tokenizer.chat_template`."
        ]
    problems = []
    if require_prefix_preserving:
        failure = _prefix_failure(processing_class)
        if failure is not None:
            problems.append(
                f"The chat template is not prefix-preserving ({failure}). Completion tokens cannot be located; use "
                "a template that renders earlier turns unchanged (`chat_template_path`), or language-modeling data."
            )
    if assistant_only_loss:
        problems.extend(_assistant_mask_problems(processing_class, template))
    return problems


def _assistant_mask_problems(processing_class: Any, template: str) -> list[str]:
    if not has_generation_markers(template):
        return [
            "assistant_only_loss=True needs {% generation %} markers in the chat template, and it has none. Use "
            "`tokenizer.chat_template = get_training_chat_template(tokenizer)` for a supported template, or set "
            "`chat_template_path` to a template with the markers."
        ]
    ids, mask, _ = _assistant_mask_probe(processing_class, None)
    if not any(mask):
        return [
            "The assistant mask is all zeros on a probe conversation: the {% generation %} block renders nothing. "
            "Wrap each assistant message's content and end-of-turn token in {% generation %} ... {% endgeneration %}."
        ]
    if not is_chat_template_stop_token_trained(processing_class):
        return [
            "The end-of-turn token of assistant messages lies outside the {% generation %} block, so the model "
            "would never learn to stop. Move the end-of-turn token inside the block (see trl/chat_templates/)."
        ]
    return []


def check_chat_template(
    processing_class: PreTrainedTokenizerBase | ProcessorMixin,
    assistant_only_loss: bool = False,
    require_prefix_preserving: bool = True,
) -> None:
    """Raise a `ValueError` listing every problem [`chat_template_problems`] finds.

    Args:
        processing_class (`PreTrainedTokenizerBase` or `ProcessorMixin`):
            The tokenizer or processor.
        assistant_only_loss (`bool`, *optional*, defaults to `False`):
            Also check the assistant mask.
        require_prefix_preserving (`bool`, *optional*, defaults to `True`):
            Check prefix preservation.
    """
    problems = chat_template_problems(processing_class, assistant_only_loss, require_prefix_preserving)
    if problems:
        raise ValueError("Unusable chat template:\n- " + "\n- ".join(problems))


def supports_tool_calling(processing_class) -> bool:
    """Whether the chat template renders assistant tool calls and tool results.

    Args:
        processing_class (`PreTrainedTokenizerBase` or `ProcessorMixin`):
            The tokenizer or processor.

    Returns:
        `bool`: `True` if a probe tool call (its function name and argument) and the tool result appear in the
        rendering.
    """
    template = template_of(processing_class)
    if template is None:
        return False
    messages = [PROBE_USER, PROBE_TOOL_CALL, PROBE_TOOL_RESULT]
    try:
        text = render_text(tokenizer_of(processing_class), messages, template)
    except Exception:
        return False
    return all(marker in text for marker in ("get_probe_weather", "Paris", PROBE_TOOL_RESULT["content"]))
