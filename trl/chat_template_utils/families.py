"""The model families trl ships chat templates for, how a tokenizer's template is recognised as one of them, and
[`get_training_chat_template`].

Each family has one file, `trl/chat_templates/<name>_training.jinja`, written from the family's documented format with
`{% generation %}` ... `{% endgeneration %}` around what the assistant writes (its content, tool calls and the token
that ends its turn). The plain template (`<name>_chat_template`) is that file without the markers; both are module
attributes (`qwen3_chat_template`, `qwen3_training_chat_template`, ...).

Recognition cannot compare template text with the official templates (trl does not download them), so it is
structural: the family's special tokens (`markers`) must all appear in the template, and then the family's template
must render the probe conversations exactly like the user's template does. The rendering decides; the markers only
narrow the candidates and name the family in error messages.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._common import (
    CHAT_TEMPLATES_DIR,
    has_generation_markers,
    render_text,
    strip_generation_markers,
    template_of,
    text_probes,
    tokenizer_of,
    tool_probes,
    vision_probes,
)
from .checks import is_chat_template_prefix_preserving


if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, ProcessorMixin


@dataclass(frozen=True)
class ChatTemplateFamily:
    """A model family's chat format, as shipped in `trl/chat_templates/<name>_training.jinja`.

    Args:
        name (`str`):
            File stem and attribute prefix (`qwen3` gives `qwen3_chat_template` and `qwen3_training_chat_template`).
        title (`str`):
            Human-readable name used in messages.
        markers (`tuple[str, ...]`):
            Literal strings (special tokens) that all appear in any template of the family.
        vision (`bool`, *optional*, defaults to `False`):
            Whether messages may hold image content parts (checked with image probes).
        response_schema (`str` or `None`, *optional*, defaults to `None`):
            Key of the schema [`add_response_schema`] attaches, when trl can parse this family's tool calls.
    """

    name: str
    title: str
    markers: tuple[str, ...]
    vision: bool = False
    response_schema: str | None = None

    @property
    def training_chat_template(self) -> str:
        return _TRAINING_TEMPLATES[self.name]

    @property
    def chat_template(self) -> str:
        return strip_generation_markers(self.training_chat_template)


# Candidate order matters only between families that render the probes identically: the stricter one comes first
# (Gemma refuses system messages that Gemma 3 folds into the first user turn).
FAMILIES: tuple[ChatTemplateFamily, ...] = (
    ChatTemplateFamily("chatml", "trl ChatML", ("<|im_start|>",), response_schema="chatml"),
    ChatTemplateFamily("tiny_llama3", "trl Llama-3 style", ("<|start_header_id|>",), response_schema="llama3"),
    ChatTemplateFamily("qwen2_5", "Qwen2.5", ("<|im_start|>", "<tool_call>"), response_schema="chatml"),
    ChatTemplateFamily("qwen3", "Qwen3", ("<|im_start|>", "<think>"), response_schema="chatml"),
    ChatTemplateFamily(
        "qwen3_instruct_2507", "Qwen3 Instruct-2507", ("<|im_start|>", "<tool_call>"), response_schema="chatml"
    ),
    ChatTemplateFamily(
        "qwen3_vl", "Qwen3-VL", ("<|im_start|>", "<|vision_start|>"), vision=True, response_schema="chatml"
    ),
    ChatTemplateFamily("llama3", "Llama 3", ("<|start_header_id|>",), response_schema="llama3_plain"),
    ChatTemplateFamily(
        "llama3_1", "Llama 3.1", ("<|start_header_id|>", "Cutting Knowledge"), response_schema="llama3"
    ),
    ChatTemplateFamily(
        "llama3_2", "Llama 3.2", ("<|start_header_id|>", "Cutting Knowledge"), response_schema="llama3"
    ),
    ChatTemplateFamily("gemma", "Gemma", ("<start_of_turn>",), response_schema="gemma"),
    ChatTemplateFamily("gemma3", "Gemma 3", ("<start_of_turn>",), vision=True, response_schema="gemma"),
    ChatTemplateFamily("phi3", "Phi-3", ("<|assistant|>", "<|end|>"), response_schema="phi3"),
    ChatTemplateFamily("phi3_5", "Phi-3.5", ("<|assistant|>", "<|end|>"), response_schema="phi3"),
    ChatTemplateFamily("gptoss", "GPT-OSS (harmony)", ("<|start|>", "<|channel|>", "<|message|>")),
    ChatTemplateFamily("deepseek_r1_distill", "DeepSeek-R1-Distill", ("<｜Assistant｜>", "<think>")),
    ChatTemplateFamily("deepseekv3", "DeepSeek-V3", ("<｜Assistant｜>",)),
    ChatTemplateFamily("glm4moe", "GLM-4-MoE", ("[gMASK]", "<|assistant|>")),
    ChatTemplateFamily(
        "cohere", "Cohere (Command R)", ("<|START_OF_TURN_TOKEN|>", "<|CHATBOT_TOKEN|>"), response_schema="cohere"
    ),
    ChatTemplateFamily("cohere2", "Cohere 2 (Command R7B / A)", ("<|START_OF_TURN_TOKEN|>", "<|START_RESPONSE|>")),
    ChatTemplateFamily("lfm2", "LFM2", ("<|im_start|>", "<|tool_list_start|>")),
    ChatTemplateFamily(
        "idefics3", "Idefics3", ("<end_of_utterance>", "<|begin_of_text|>"), vision=True, response_schema="idefics3"
    ),
    ChatTemplateFamily(
        "smolvlm", "SmolVLM", ("<end_of_utterance>", "<|im_start|>"), vision=True, response_schema="idefics3"
    ),
    ChatTemplateFamily(
        "llava_next", "LLaVA-NeXT (Mistral)", ("[INST]", "<image>"), vision=True, response_schema="llava_next"
    ),
)

_TRAINING_TEMPLATES = {
    family.name: (CHAT_TEMPLATES_DIR / f"{family.name}_training.jinja").read_text(encoding="utf-8")
    for family in FAMILIES
}

# `<name>_chat_template` and `<name>_training_chat_template` for every family (the reference's attribute names).
TEMPLATE_ATTRIBUTES: dict[str, str] = {}
for _family in FAMILIES:
    TEMPLATE_ATTRIBUTES[f"{_family.name}_chat_template"] = _family.chat_template
    TEMPLATE_ATTRIBUTES[f"{_family.name}_training_chat_template"] = _family.training_chat_template
globals().update(TEMPLATE_ATTRIBUTES)


def get_family(name: str) -> ChatTemplateFamily:
    """The family called `name` (see `FAMILIES`)."""
    for family in FAMILIES:
        if family.name == name:
            return family
    raise KeyError(f"Unknown chat-template family {name!r}; known: {', '.join(f.name for f in FAMILIES)}.")


@dataclass
class _Comparison:
    """How a candidate template renders the probes compared with the user's template."""

    compared: int = 0
    text_difference: str | None = None
    tool_difference: str | None = None

    @property
    def matches(self) -> bool:
        return self.compared > 0 and self.text_difference is None and self.tool_difference is None


def _difference(probe: str, expected: str, got: str) -> str:
    position = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
    return (
        f"on the {probe!r} probe from character {position}: yours renders {expected[position : position + 40]!r}, "
        f"trl's renders {got[position : position + 40]!r}"
    )


def _first_difference(tokenizer: Any, template: str, candidate: str, probes: list) -> tuple[int, str | None]:
    """Compare renderings on `probes`; return how many were compared and the first difference (or `None`)."""
    compared = 0
    for name, messages, kwargs in probes:
        try:
            expected = render_text(tokenizer, messages, template, **kwargs)
        except Exception:
            continue  # a feature the user's template does not support need not match
        try:
            got = render_text(tokenizer, messages, candidate, **kwargs)
        except Exception as error:
            return compared, f"on the {name!r} probe trl's template fails: {error}"
        if got != expected:
            return compared, _difference(name, expected, got)
        compared += 1
    return compared, None


def _compare(tokenizer: Any, template: str, family: ChatTemplateFamily) -> _Comparison:
    # Image probes for every candidate: a text family must not pass for a vision template by rendering text alike.
    text = text_probes() + vision_probes()
    compared, text_difference = _first_difference(tokenizer, template, family.chat_template, text)
    if text_difference is not None:
        return _Comparison(compared, text_difference)
    tools_compared, tool_difference = _first_difference(tokenizer, template, family.chat_template, tool_probes())
    return _Comparison(compared + tools_compared, None, tool_difference)


def _candidates(template: str) -> list[ChatTemplateFamily]:
    return [family for family in FAMILIES if all(marker in template for marker in family.markers)]


def _exact_family(template: str) -> ChatTemplateFamily | None:
    for family in FAMILIES:
        if template in (family.chat_template, family.training_chat_template):
            return family
    return None


def detect_chat_template_family(
    processing_class: PreTrainedTokenizerBase | ProcessorMixin, chat_template: str | None = None
) -> ChatTemplateFamily | None:
    """The family whose template renders every probe conversation exactly like the processing class's template.

    Args:
        processing_class (`PreTrainedTokenizerBase` or `ProcessorMixin`):
            The tokenizer or processor.
        chat_template (`str` or `None`, *optional*, defaults to `None`):
            Template to recognise instead of the processing class's own.

    Returns:
        [`ChatTemplateFamily`] or `None`: the family, or `None` when no family renders identically.
    """
    template = template_of(processing_class, chat_template)
    if template is None:
        return None
    exact = _exact_family(template)
    if exact is not None:
        return exact
    tokenizer = tokenizer_of(processing_class)
    return next((f for f in _candidates(template) if _compare(tokenizer, template, f).matches), None)


def _resolve_processing_class(processing_class: Any, tokenizer: Any) -> Any:
    if tokenizer is not None:
        if processing_class is not None:
            raise TypeError("Pass only `processing_class`; `tokenizer` is its deprecated alias.")
        warnings.warn(
            "The `tokenizer` argument of get_training_chat_template is deprecated; use `processing_class`.",
            FutureWarning,
            stacklevel=3,
        )
        return tokenizer
    if processing_class is None:
        raise ValueError("Pass the tokenizer or processor as `processing_class`.")
    return processing_class


_FIX = (
    "Set `chat_template_path` (or `tokenizer.chat_template`) to a template with {% generation %} markers around "
    "the assistant turns, e.g. one of trl.chat_template_utils.<family>_training_chat_template."
)


def _unrecognised(template: str, comparisons: list[tuple[ChatTemplateFamily, _Comparison]]) -> ValueError:
    if not comparisons:
        known = ", ".join(family.title for family in FAMILIES)
        return ValueError(
            "The chat template is not training-compatible (no {% generation %} markers, or not prefix-preserving) "
            f"and its family is not recognised (none of the special tokens of {known}). {_FIX}"
        )
    # Name the most specific candidate: the one whose markers say most about the template.
    family, comparison = max(comparisons, key=lambda pair: len(pair[0].markers))
    reason = comparison.text_difference or "it renders none of the probe conversations"
    return ValueError(
        f"The chat template has the special tokens of {family.title} but does not render like trl's {family.title} "
        f"template ({reason}), so trl will not swap it for its training template. If the difference is acceptable, "
        f"use it explicitly: `tokenizer.chat_template = trl.chat_template_utils.{family.name}_training_chat_template`"
        f". Otherwise add {{% generation %}} markers to your own template and set `chat_template_path` to it."
    )


def _family_for_training(tokenizer: Any, template: str) -> ChatTemplateFamily:
    exact = _exact_family(template)
    if exact is not None:
        return exact
    comparisons = [(family, _compare(tokenizer, template, family)) for family in _candidates(template)]
    for family, comparison in comparisons:
        if comparison.matches:
            return family
    for family, comparison in comparisons:
        if comparison.compared and comparison.text_difference is None:
            warnings.warn(
                f"The chat template renders like trl's {family.title} template except in tool conversations "
                f"({comparison.tool_difference}). Its training template is used: tool conversations are rendered "
                f"in trl's {family.title} tool format. Set `chat_template_path` to keep your own.",
                UserWarning,
                stacklevel=3,
            )
            return family
    raise _unrecognised(template, comparisons)


def get_training_chat_template(
    processing_class: PreTrainedTokenizerBase | ProcessorMixin | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> str | None:
    """Find the training version (with `{% generation %}` markers) of the processing class's chat template.

    The template's family is recognised by its special tokens, then confirmed by rendering: the family's template
    must render probe conversations (system prompt, multi-turn, generation prompt, image parts for vision families)
    exactly like the current one. A template that differs only on tool conversations is accepted with a warning.
    Assign the result to `tokenizer.chat_template` to train with `assistant_only_loss=True`.

    Args:
        processing_class (`PreTrainedTokenizerBase` or `ProcessorMixin`, *optional*):
            The tokenizer or processor.
        tokenizer (`PreTrainedTokenizerBase`, *optional*):
            Deprecated alias of `processing_class`.

    Returns:
        `str` or `None`: the training template, or `None` when the current template already has generation markers
        and is prefix-preserving.

    Raises:
        `ValueError`: when there is no template, or its family is not recognised or renders differently; the
        message names the fix.
    """
    processing_class = _resolve_processing_class(processing_class, tokenizer)
    template = template_of(processing_class)
    if template is None:
        raise ValueError(
            "The processing class has no chat template. Set `chat_template_path` (a tokenizer or a .jinja file with "
            "{% generation %} markers) or assign `tokenizer.chat_template`."
        )
    if has_generation_markers(template) and is_chat_template_prefix_preserving(processing_class):
        return None
    return _family_for_training(tokenizer_of(processing_class), template).training_chat_template
