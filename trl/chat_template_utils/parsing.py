"""Parsing generated assistant messages (content and tool calls) with a per-template response schema."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, TypeVar

from ._common import template_of, tokenizer_of


if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


ProcessingClassT = TypeVar("ProcessingClassT")

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


def _content_schema(assistant_start: str, *end_of_turn: str) -> dict:
    # Families whose assistant turns carry no tool calls trl can parse: the answer is cut at the end of its turn.
    return {"assistant_start": assistant_start, "end_of_turn": list(end_of_turn), "tool_calls": None}


# Schema of each family key (`ChatTemplateFamily.response_schema`).
RESPONSE_SCHEMAS: dict[str, dict] = {
    "chatml": CHATML_RESPONSE_SCHEMA,
    "llama3": LLAMA3_RESPONSE_SCHEMA,
    "llama3_plain": _content_schema("<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
    "gemma": _content_schema("<start_of_turn>model\n", "<end_of_turn>"),
    "phi3": _content_schema("<|assistant|>\n", "<|end|>"),
    "cohere": _content_schema("<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>", "<|END_OF_TURN_TOKEN|>"),
    "idefics3": _content_schema("Assistant:", "<end_of_utterance>"),
    "llava_next": _content_schema("[/INST]", "</s>"),
}


def _infer_response_schema(processing_class: Any) -> dict:
    from .families import detect_chat_template_family  # families imports the checks; import here avoids a cycle

    family = detect_chat_template_family(processing_class)
    if family is not None and family.response_schema is not None:
        return dict(RESPONSE_SCHEMAS[family.response_schema])
    template = template_of(processing_class) or ""
    # A template no family renders like: fall back on its special tokens for the two generic formats.
    if family is None and "<|im_start|>" in template:
        return dict(CHATML_RESPONSE_SCHEMA)
    if family is None and "<|start_header_id|>" in template:
        return dict(LLAMA3_RESPONSE_SCHEMA)
    what = f"the {family.title} template" if family is not None else "this chat template"
    raise ValueError(
        f"No response schema is known for {what}: trl does not parse its assistant messages yet. Assign "
        "`processing_class.response_schema` a dict like trl.chat_template_utils.CHATML_RESPONSE_SCHEMA that "
        "describes it."
    )


def add_response_schema(processing_class: ProcessingClassT) -> ProcessingClassT:
    """Attach the response schema [`parse_response`] uses, chosen from the template's family.

    Tool calls are parsed for the ChatML families (trl ChatML, Qwen2.5, Qwen3, Qwen3 Instruct-2507, Qwen3-VL:
    `<tool_call>` JSON blocks) and the Llama 3.1 / 3.2 families (bare JSON); Llama 3, Gemma, Gemma 3, Phi-3, Phi-3.5,
    Cohere, Idefics3, SmolVLM and LLaVA-NeXT get a content-only schema (the answer is cut at the end of its turn).
    GPT-OSS, DeepSeek, GLM-4-MoE, Cohere 2 and LFM2 have no schema yet. An unrecognised template with ChatML or
    Llama 3 header tokens gets the matching generic schema.

    The schema is stored as `processing_class.response_schema` (and on its tokenizer): a dict with
    `assistant_start`, `end_of_turn`, `tool_calls` (`"tagged"`, `"json"` or `None`), `tool_call_open` /
    `tool_call_close` (for tagged calls) and `arguments_key`. Set that attribute yourself for another template.

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
    tokenizer = tokenizer_of(processing_class)
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
