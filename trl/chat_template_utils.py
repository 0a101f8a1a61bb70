"""Chat-template utilities: copying a template between tokenizers, training templates with `{% generation %}`
markers, template checks run when a trainer loads its data, and parsing of generated assistant messages.

The checks render small probe conversations with the processing class's own template; they never need a model.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .data_utils import common_prefix_length


if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, ProcessorMixin


ProcessingClassT = TypeVar("ProcessingClassT")

CHAT_TEMPLATES_DIR = Path(__file__).parent / "chat_templates"

_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")

# Probe conversations: distinctive contents so they can be found in renderings.
_PROBE_TOOL = {
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
_PROBE_SYSTEM = {"role": "system", "content": "You are a probe assistant."}
_PROBE_USER = {"role": "user", "content": "What is the capital of France?"}
_PROBE_ANSWER = {"role": "assistant", "content": "The capital of France is Paris."}
_PROBE_USER_2 = {"role": "user", "content": "And of Italy?"}
_PROBE_ANSWER_2 = {"role": "assistant", "content": "Rome is the capital of Italy."}
_PROBE_TOOL_CALL = {
    "role": "assistant",
    "content": "",
    "tool_calls": [{"type": "function", "function": {"name": "get_probe_weather", "arguments": {"city": "Paris"}}}],
}
_PROBE_TOOL_RESULT = {"role": "tool", "name": "get_probe_weather", "content": "probe-sunny-22C"}


# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------


def _tokenizer_of(processing_class: Any) -> PreTrainedTokenizerBase:
    # A processor (vision/audio) keeps its text tokenizer under `.tokenizer`.
    return getattr(processing_class, "tokenizer", None) or processing_class


def _template_of(processing_class: Any, chat_template: str | None = None) -> str | None:
    if chat_template is not None:
        return chat_template
    template = getattr(processing_class, "chat_template", None)
    if template is None:
        template = getattr(_tokenizer_of(processing_class), "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default", next(iter(template.values()), None))
    return template


def _render_text(tokenizer: Any, messages: list[dict], template: str | None, **kwargs: Any) -> str:
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, **kwargs)


def _render_ids(tokenizer: Any, messages: list[dict], template: str | None, **kwargs: Any) -> dict[str, list[int]]:
    output = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=True, return_dict=True, **kwargs)
    return {key: list(value) for key, value in output.items() if key in ("input_ids", "assistant_masks")}


def _special_token_ids(tokenizer: Any) -> set[int]:
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
    return bool(chat_template) and _GENERATION_TAG.search(chat_template) is not None


# --------------------------------------------------------------------------------------------------------------------
# Copying templates and special tokens
# --------------------------------------------------------------------------------------------------------------------


def _resize_embeddings(model: PreTrainedModel, num_tokens: int, multiple_of: int | None) -> None:
    # Grow only: shrinking would drop rows that already-trained tokens may use.
    current = model.get_input_embeddings().weight.shape[0]
    target = max(current, num_tokens)
    if multiple_of:
        target = math.ceil(target / multiple_of) * multiple_of
    if target != current:
        model.resize_token_embeddings(target)


def _set_model_token_ids(model: PreTrainedModel, **token_ids: int | None) -> None:
    for name, value in token_ids.items():
        setattr(model.config, name, value)
        if getattr(model, "generation_config", None) is not None:
            setattr(model.generation_config, name, value)


def clone_chat_template(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    source_tokenizer_path: str,
    resize_to_multiple_of: int | None = 64,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, list[int]]:
    """Copy the chat template and special tokens of another tokenizer onto `tokenizer`, and fit the model to it.

    The source's added tokens missing from `tokenizer` are added (keeping their special flag), the source's EOS
    token becomes the EOS token of the tokenizer, model config and generation config, and the input embeddings are
    grown to cover the new vocabulary, rounded up to a multiple of `resize_to_multiple_of`.

    Args:
        model (`PreTrainedModel`):
            The model to adapt.
        tokenizer (`PreTrainedTokenizerBase`):
            The tokenizer to adapt (modified in place).
        source_tokenizer_path (`str`):
            Local path (or Hub id) of the tokenizer whose template is copied.
        resize_to_multiple_of (`int` or `None`, *optional*, defaults to `64`):
            Round the embedding size up to this multiple; `None` resizes to the exact vocabulary size.

    Returns:
        `tuple[PreTrainedModel, PreTrainedTokenizerBase, list[int]]`: the model, the tokenizer and the ids of the
        tokens that were added.
    """
    from transformers import AutoTokenizer

    source = AutoTokenizer.from_pretrained(source_tokenizer_path)
    if source.chat_template is None:
        raise ValueError(
            f"The tokenizer at {source_tokenizer_path!r} has no chat template to copy; point `chat_template_path` "
            "to a tokenizer with one, or to a .jinja file."
        )
    tokenizer.chat_template = source.chat_template

    vocabulary = tokenizer.get_vocab()
    missing = [token for _, token in sorted(source.added_tokens_decoder.items()) if token.content not in vocabulary]
    special = [token.content for token in missing if token.special]
    regular = [token.content for token in missing if not token.special]
    if special:
        tokenizer.add_tokens(special, special_tokens=True)
    if regular:
        tokenizer.add_tokens(regular)
    added_ids = tokenizer.convert_tokens_to_ids([token.content for token in missing])

    if source.eos_token is not None:
        tokenizer.eos_token = source.eos_token
        _set_model_token_ids(model, eos_token_id=tokenizer.eos_token_id)
    _resize_embeddings(model, len(tokenizer), resize_to_multiple_of)
    return model, tokenizer, list(added_ids)


def setup_chat_format(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    format: str | None = "chatml",
    resize_to_multiple_of: int | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Give a model without a chat template the ChatML format (deprecated: use [`clone_chat_template`]).

    Adds `<|im_start|>` (BOS) and `<|im_end|>` (EOS and padding) as special tokens, sets the ChatML training
    template (with `{% generation %}` markers), updates the model's token ids and grows its embeddings.

    Args:
        model (`PreTrainedModel`):
            The model.
        tokenizer (`PreTrainedTokenizerBase`):
            A tokenizer without a chat template (modified in place).
        format (`str` or `None`, *optional*, defaults to `"chatml"`):
            The format; only `"chatml"` exists.
        resize_to_multiple_of (`int` or `None`, *optional*, defaults to `None`):
            Round the embedding size up to this multiple.

    Returns:
        `tuple[PreTrainedModel, PreTrainedTokenizerBase]`: the model and the tokenizer.
    """
    warnings.warn(
        "setup_chat_format is deprecated and will be removed; use clone_chat_template(model, tokenizer, "
        "source_tokenizer_path) or SFTConfig(chat_template_path=...) instead.",
        FutureWarning,
        stacklevel=2,
    )
    if tokenizer.chat_template is not None:
        raise ValueError(
            "The tokenizer already has a chat template; setup_chat_format would add a second format. Keep the "
            "existing template, or set `tokenizer.chat_template = None` first (or use clone_chat_template)."
        )
    if format != "chatml":
        raise ValueError(f"Unsupported format {format!r}; only 'chatml' is available.")
    tokenizer.add_special_tokens(
        {
            "bos_token": "<|im_start|>",
            "eos_token": "<|im_end|>",
            "pad_token": "<|im_end|>",
            "extra_special_tokens": ["<|im_start|>", "<|im_end|>"],
        },
        replace_extra_special_tokens=False,
    )
    tokenizer.chat_template = (CHAT_TEMPLATES_DIR / "chatml.jinja").read_text(encoding="utf-8")
    _resize_embeddings(model, len(tokenizer), resize_to_multiple_of)
    _set_model_token_ids(
        model,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model, tokenizer


# --------------------------------------------------------------------------------------------------------------------
# Training templates and template checks
# --------------------------------------------------------------------------------------------------------------------


def _probes() -> list[tuple[list[dict], dict[str, Any]]]:
    """(messages, keyword arguments) pairs covering system prompts, multi-turn, generation prompts and tools."""
    return [
        ([_PROBE_SYSTEM, _PROBE_USER, _PROBE_ANSWER, _PROBE_USER_2, _PROBE_ANSWER_2], {}),
        ([_PROBE_USER, _PROBE_ANSWER], {}),
        ([_PROBE_USER], {"add_generation_prompt": True}),
        ([_PROBE_SYSTEM, _PROBE_USER], {"add_generation_prompt": True}),
        ([_PROBE_USER, _PROBE_TOOL_CALL, _PROBE_TOOL_RESULT, _PROBE_ANSWER], {"tools": [_PROBE_TOOL]}),
    ]


def _renders_like(tokenizer: Any, template: str, candidate: str) -> bool:
    compared = 0
    for messages, kwargs in _probes():
        try:
            expected = _render_text(tokenizer, messages, template, **kwargs)
        except Exception:
            continue  # a feature the original template does not support need not match
        try:
            if _render_text(tokenizer, messages, candidate, **kwargs) != expected:
                return False
        except Exception:
            return False
        compared += 1
    return compared > 0


def get_training_chat_template(
    processing_class: PreTrainedTokenizerBase | ProcessorMixin | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> str | None:
    """Find a training version (with `{% generation %}` markers) of the processing class's chat template.

    Each template shipped in `trl/chat_templates/` is compared with the current one on probe conversations (system
    prompt, multi-turn, generation prompt, tool calls); the first that renders identically is returned. Assign it to
    `tokenizer.chat_template` to train with `assistant_only_loss=True`.

    Args:
        processing_class (`PreTrainedTokenizerBase` or `ProcessorMixin`, *optional*):
            The tokenizer or processor.
        tokenizer (`PreTrainedTokenizerBase`, *optional*):
            Alias of `processing_class` (older name).

    Returns:
        `str` or `None`: the training template; `None` when the current template already has generation markers,
        when there is no template, or when no shipped template matches it.
    """
    processing_class = processing_class if processing_class is not None else tokenizer
    if processing_class is None:
        raise ValueError("Pass the tokenizer or processor as `processing_class`.")
    template = _template_of(processing_class)
    if template is None or has_generation_markers(template):
        return None
    text_tokenizer = _tokenizer_of(processing_class)
    for path in sorted(CHAT_TEMPLATES_DIR.glob("*.jinja")):
        candidate = path.read_text(encoding="utf-8")
        if _renders_like(text_tokenizer, template, candidate):
            return candidate
    return None


def _prefix_pairs() -> list[tuple[list[dict], list[dict], dict[str, Any]]]:
    return [
        ([_PROBE_USER], [_PROBE_ANSWER], {}),
        ([_PROBE_SYSTEM, _PROBE_USER, _PROBE_ANSWER, _PROBE_USER_2], [_PROBE_ANSWER_2], {}),
        ([_PROBE_USER, _PROBE_TOOL_CALL, _PROBE_TOOL_RESULT], [_PROBE_ANSWER], {"tools": [_PROBE_TOOL]}),
    ]


def _prefix_failure(processing_class: Any, template: str | None = None) -> str | None:
    """Describe the first probe whose prompt tokens are not a prefix of its prompt + completion tokens."""
    tokenizer = _tokenizer_of(processing_class)
    template = _template_of(processing_class, template)
    for index, (prompt, completion, kwargs) in enumerate(_prefix_pairs()):
        try:
            prompt_ids = _render_ids(tokenizer, prompt, template, add_generation_prompt=True, **kwargs)["input_ids"]
            full_ids = _render_ids(tokenizer, prompt + completion, template, **kwargs)["input_ids"]
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
    tokenizer = _tokenizer_of(processing_class)
    template = _template_of(processing_class, chat_template)
    messages = [_PROBE_USER, _PROBE_ANSWER]
    rendered = _render_ids(tokenizer, messages, template, return_assistant_tokens_mask=True)
    text = _render_text(tokenizer, messages, template)
    answer_end = text.rindex(_PROBE_ANSWER["content"]) + len(_PROBE_ANSWER["content"])
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
    if not has_generation_markers(_template_of(processing_class, chat_template) or ""):
        return False  # without markers the mask is all zeros
    ids, mask, answer_end = _assistant_mask_probe(processing_class, chat_template)
    special = _special_token_ids(_tokenizer_of(processing_class))
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
    template = _template_of(processing_class)
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
    template = _template_of(processing_class)
    if template is None:
        return False
    messages = [_PROBE_USER, _PROBE_TOOL_CALL, _PROBE_TOOL_RESULT]
    try:
        text = _render_text(_tokenizer_of(processing_class), messages, template)
    except Exception:
        return False
    return all(marker in text for marker in ("get_probe_weather", "Paris", _PROBE_TOOL_RESULT["content"]))


# --------------------------------------------------------------------------------------------------------------------
# Parsing generated messages
# --------------------------------------------------------------------------------------------------------------------

# `assistant_start` opens an assistant turn (used to find a prefilled start in the prompt); `end_of_turn` tokens
# end it; tool calls are `<tool_call>{json}</tool_call>` blocks ("tagged") or bare JSON objects ("json").
CHATML_RESPONSE_SCHEMA = {
    "assistant_start": "<|im_start|>assistant\n",
    "end_of_turn": ["<|im_end|>"],
    "tool_calls": "tagged",
    "tool_call_open": "<tool_call>",
    "tool_call_close": "</tool_call>",
    "arguments_key": "arguments",
}
LLAMA3_RESPONSE_SCHEMA = {
    "assistant_start": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "end_of_turn": ["<|eot_id|>", "<|eom_id|>"],
    "tool_calls": "json",
    "arguments_key": "parameters",
}


def _infer_response_schema(processing_class: Any) -> dict:
    template = _template_of(processing_class) or ""
    if "<|im_start|>" in template:
        schema = CHATML_RESPONSE_SCHEMA
    elif "<|start_header_id|>" in template:
        schema = LLAMA3_RESPONSE_SCHEMA
    else:
        raise ValueError(
            "Unrecognised chat template: no response schema is known for it. Assign `processing_class."
            "response_schema` a dict like trl.chat_template_utils.CHATML_RESPONSE_SCHEMA that describes it."
        )
    return dict(schema)


def add_response_schema(processing_class: ProcessingClassT) -> ProcessingClassT:
    """Attach the response schema [`parse_response`] uses, for the recognised templates (ChatML, Llama 3).

    The schema is stored as `processing_class.response_schema` (and on its tokenizer): a dict with
    `assistant_start`, `end_of_turn`, `tool_calls` (`"tagged"` or `"json"`), `tool_call_open` / `tool_call_close`
    (for tagged calls) and `arguments_key`. Set that attribute yourself for another template.

    Args:
        processing_class (`PreTrainedTokenizerBase` or `ProcessorMixin`):
            The tokenizer or processor.

    Returns:
        The same processing class.

    Raises:
        `ValueError`: when the template is not recognised.
    """
    schema = _infer_response_schema(processing_class)
    processing_class.response_schema = dict(schema)
    tokenizer = _tokenizer_of(processing_class)
    if tokenizer is not processing_class:
        tokenizer.response_schema = dict(schema)
    return processing_class


def _tool_call(payload: str, arguments_key: str) -> dict | None:
    try:
        call = json.loads(payload)
    except json.JSONDecodeError:
        return None
    if not isinstance(call, dict) or "name" not in call:
        return None
    arguments = call.get(arguments_key, call.get("arguments", call.get("parameters", {})))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            pass
    return {"type": "function", "function": {"name": call["name"], "arguments": arguments}}


def _split_tool_calls(text: str, schema: dict) -> tuple[str, list[dict]]:
    calls = []
    if schema.get("tool_calls") == "tagged":
        pattern = re.compile(
            re.escape(schema["tool_call_open"]) + r"(.*?)" + re.escape(schema["tool_call_close"]), re.S
        )
        kept = []
        position = 0
        for match in pattern.finditer(text):
            call = _tool_call(match.group(1).strip(), schema["arguments_key"])
            if call is None:
                continue  # malformed calls stay in the content, where a reward can see them
            kept.append(text[position : match.start()])
            position = match.end()
            calls.append(call)
        return ("".join(kept) + text[position:]).strip(), calls
    if schema.get("tool_calls") == "json":
        lines = [line for line in text.strip().splitlines() if line.strip()]
        parsed = [_tool_call(line.strip(), schema["arguments_key"]) for line in lines]
        if lines and all(call is not None for call in parsed):
            return "", parsed
    return text.strip(), calls


def _prefill(tokenizer: Any, prefix: list[int] | None, schema: dict) -> str:
    # A prompt rendered with continue_final_message ends inside the assistant turn: that text belongs to the answer.
    if not prefix:
        return ""
    text = tokenizer.decode(prefix, skip_special_tokens=False)
    start = text.rfind(schema["assistant_start"])
    if start < 0:
        return ""
    tail = text[start + len(schema["assistant_start"]) :]
    return "" if any(token in tail for token in schema["end_of_turn"]) else tail


def parse_response(
    tokenizer: PreTrainedTokenizerBase,
    ids: list[int],
    prefix: list[int] | None = None,
    tools: list[dict | Any] | None = None,
) -> dict:
    """Parse generated token ids into an assistant message, extracting tool calls.

    Generation is cut at the first end-of-turn token (or EOS); special tokens are dropped. The schema comes from
    `tokenizer.response_schema` (see [`add_response_schema`]) or is inferred from the template.

    Args:
        tokenizer (`PreTrainedTokenizerBase`):
            The tokenizer used for generation.
        ids (`list[int]`):
            The generated ids (completion only).
        prefix (`list[int]` or `None`, *optional*, defaults to `None`):
            The prompt ids; text prefilled in an open assistant turn is prepended to the answer.
        tools (`list[dict | Callable]` or `None`, *optional*, defaults to `None`):
            Available tools; when a call names a function outside this list, no call is extracted and the whole
            answer is returned as content.

    Returns:
        `dict`: `{"role": "assistant", "content": str}`, plus `"tool_calls"` (a list of
        `{"type": "function", "function": {"name", "arguments"}}`) when the answer calls tools.
    """
    schema = getattr(tokenizer, "response_schema", None)
    if schema is None:
        schema = _infer_response_schema(tokenizer)
    vocabulary = tokenizer.get_vocab()
    stop_ids = {vocabulary[token] for token in schema["end_of_turn"] if token in vocabulary}
    stop_ids.add(tokenizer.eos_token_id)
    ids = list(ids)
    end = next((index for index, token in enumerate(ids) if token in stop_ids), len(ids))
    text = _prefill(tokenizer, prefix, schema) + tokenizer.decode(ids[:end], skip_special_tokens=True)
    content, calls = _split_tool_calls(text, schema)
    if tools is not None and calls:
        names = {_tool_name(tool) for tool in tools}
        unknown = [call for call in calls if call["function"]["name"] not in names]
        if unknown:
            return {"role": "assistant", "content": text.strip()}
    message = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    return message


def _tool_name(tool: dict | Any) -> str:
    if isinstance(tool, dict):
        return tool.get("function", tool).get("name", "")
    return getattr(tool, "__name__", "")
