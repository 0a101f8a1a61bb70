"""Helpers of the experimental trainers, under the reference's import path `trl.experimental.utils`.

Most names are the stable implementations, re-exported: padding and flushing (`trl.trainer.utils`), chat templates
and conversations (`trl.data_utils`), dataset truncation (`trl.data_packing`), reference models (`trl.models`),
PEFT preparation (`trl.trainer.model_utils`) and the device checks of `transformers`. Defined here: the legacy DPO
tokenisation helpers and collator, gradient checkpointing / k-bit preparation, the PPO reward read-out and the
byte-offset helpers used to align two tokenizers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from transformers.utils import (  # noqa: F401  (re-exported)
    is_torch_mlu_available,
    is_torch_mps_available,
    is_torch_npu_available,
    is_torch_xpu_available,
)

from ..data_packing import truncate_dataset  # noqa: F401  (re-exported)
from ..data_utils import apply_chat_template, is_conversational, prepare_multimodal_messages  # noqa: F401
from ..import_utils import is_peft_available  # noqa: F401  (re-exported)
from ..models.utils import create_reference_model  # noqa: F401  (re-exported)
from ..trainer.model_utils import cast_adapters_to_bf16, prepare_peft_model  # noqa: F401  (re-exported)
from ..trainer.utils import (  # noqa: F401  (re-exported)
    empty_cache,
    first_true_indices,
    flush_left,
    pad,
    pad_to_length,
)


__all__ = [
    "LAYER_PATTERNS",
    "DPODataCollatorWithPadding",
    "DataCollatorForChatML",
    "add_bos_token_if_needed",
    "add_eos_token_if_needed",
    "apply_chat_template",
    "create_reference_model",
    "empty_cache",
    "enable_gradient_checkpointing",
    "encode_with_byte_offsets",
    "first_true_indices",
    "flush_left",
    "get_reward",
    "is_byte_level_tokenizer",
    "is_conversational",
    "is_peft_available",
    "is_torch_mlu_available",
    "is_torch_mps_available",
    "is_torch_npu_available",
    "is_torch_xpu_available",
    "pad",
    "pad_byte_offsets",
    "pad_to_length",
    "peft_module_casting_to_bf16",
    "piece_byte_len",
    "prepare_model_for_kbit_training",
    "prepare_multimodal_messages",
    "prepare_peft_model",
    "truncate_dataset",
    "truncate_right",
]

# Module paths of the decoder blocks of common architectures, as `pattern` values for `create_reference_model`
# (`{layer}` stands for the block index).
LAYER_PATTERNS = [
    "transformer.h.{layer}",
    "model.decoder.layers.{layer}",
    "gpt_neox.layers.{layer}",
    "model.layers.{layer}",
]

# The QLoRA casting of the reference's name: trainable adapter weights to bf16, norms to fp32.
peft_module_casting_to_bf16 = cast_adapters_to_bf16


# ------------------------------------------------------------------------------- legacy DPO tokenisation
def _prepend(tokens: dict[str, list[int]], prefix: str, token_id: int) -> None:
    tokens[f"{prefix}input_ids"] = [token_id, *tokens[f"{prefix}input_ids"]]
    tokens[f"{prefix}attention_mask"] = [1, *tokens[f"{prefix}attention_mask"]]


def add_bos_token_if_needed(
    bos_token_id: int | None,
    prompt_len_input_ids: int,
    prompt_tokens: dict[str, list[int]],
    chosen_prompt_len_input_ids: int,
    chosen_tokens: dict[str, list[int]],
    rejected_prompt_len_input_ids: int,
    rejected_tokens: dict[str, list[int]],
) -> tuple[dict[str, list[int]], dict[str, list[int]], dict[str, list[int]]]:
    """Prepend `bos_token_id` to the `prompt_input_ids` (and a 1 to `prompt_attention_mask`) of the three token dicts
    whose prompt is empty or does not start with it. Nothing changes when `bos_token_id` is `None`.

    Returns:
        `tuple`: `(prompt_tokens, chosen_tokens, rejected_tokens)`, updated.
    """
    if bos_token_id is None:
        return prompt_tokens, chosen_tokens, rejected_tokens
    for length, tokens in (
        (prompt_len_input_ids, prompt_tokens),
        (chosen_prompt_len_input_ids, chosen_tokens),
        (rejected_prompt_len_input_ids, rejected_tokens),
    ):
        if length == 0 or tokens["prompt_input_ids"][0] != bos_token_id:
            _prepend(tokens, "prompt_", bos_token_id)
    return prompt_tokens, chosen_tokens, rejected_tokens


def add_eos_token_if_needed(
    eos_token_id: int, chosen_tokens: dict[str, list[int]], rejected_tokens: dict[str, list[int]]
) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Append `eos_token_id` to `input_ids` (and a 1 to `attention_mask`) of the chosen / rejected token dicts that
    do not already end with it.

    Returns:
        `tuple`: `(chosen_tokens, rejected_tokens)`, updated.
    """
    for tokens in (chosen_tokens, rejected_tokens):
        if not tokens["input_ids"] or tokens["input_ids"][-1] != eos_token_id:
            tokens["input_ids"] = [*tokens["input_ids"], eos_token_id]
            tokens["attention_mask"] = [*tokens["attention_mask"], 1]
    return chosen_tokens, rejected_tokens


@dataclass
class DPODataCollatorWithPadding:
    """Pad the tokenised columns of a batch of (legacy DPO) examples to the longest one.

    Keys ending in `input_ids` are padded with `pad_token_id`, in `labels` with `label_pad_token_id`, in
    `attention_mask` with 0 and `pixel_values` with 0; prompt columns (`prompt*`) are padded on the left for a
    decoder-only model, everything else on the right (all on the right for an encoder-decoder). Keys ending in
    `_logps` become float tensors; any other key is passed through as a list.

    Args:
        pad_token_id (`int`, *optional*, defaults to `0`):
            Padding of the token ids.
        label_pad_token_id (`int`, *optional*, defaults to `-100`):
            Padding of the labels.
        is_encoder_decoder (`bool`, *optional*, defaults to `False`):
            Pad the prompts on the right too.
    """

    pad_token_id: int = 0
    label_pad_token_id: int = -100
    is_encoder_decoder: bool | None = False

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {}
        for key in features[0]:
            values = [feature[key] for feature in features]
            if key.endswith(("input_ids", "attention_mask", "labels", "pixel_values")):
                if key.endswith("input_ids"):
                    padding_value = self.pad_token_id
                elif key.endswith("labels"):
                    padding_value = self.label_pad_token_id
                else:
                    padding_value = 0
                side = "left" if key.startswith("prompt") and not self.is_encoder_decoder else "right"
                dtype = torch.float32 if key.endswith("pixel_values") else torch.long
                tensors = [torch.as_tensor(value, dtype=dtype) for value in values]
                batch[key] = pad(tensors, padding_value=padding_value, padding_side=side)
            elif key.endswith("_logps"):
                batch[key] = torch.tensor(values, dtype=torch.float32)
            else:
                batch[key] = values
        return batch


def truncate_right(
    input_ids: torch.Tensor, stop_token_ids: int | list[int] | torch.Tensor, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace everything after the first stop token of each row (any of `stop_token_ids`) by `pad_token_id`.

    The several-stop-tokens form of `trl.trainer.utils.truncate_right`.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: the truncated ids, and a mask that is `1` up to and including the stop
        token (everywhere for rows without one).
    """
    stops = torch.as_tensor(stop_token_ids, device=input_ids.device).reshape(-1)
    is_stop = torch.isin(input_ids, stops)
    stop_at = first_true_indices(is_stop).unsqueeze(-1)
    after_stop = torch.arange(input_ids.shape[-1], device=input_ids.device) > stop_at
    return input_ids.masked_fill(after_stop, pad_token_id), (~after_stop).long()


@dataclass
class DataCollatorForChatML:
    """Tokenise conversations with the chat template and train on the last (assistant) message only.

    Each example has `messages_key` (a conversation) and optionally `prompt_key` (the already rendered prompt);
    without one, the prompt is every message but the last, rendered with the generation prompt. The batch is padded
    on the left (the prompts too, for generation).

    Args:
        tokenizer (`PreTrainedTokenizerBase`):
            Tokenizer with a chat template (and a pad token).
        ignore_index (`int`, *optional*, defaults to `-100`):
            Label of the prompt and padding tokens.
        max_length (`int` or `None`, *optional*, defaults to `None`):
            Truncate the conversations (from the right) to this many tokens; `None` uses `tokenizer.model_max_length`.
        prompt_key (`str`, *optional*, defaults to `"prompt"`):
            Column of the rendered prompt.
        messages_key (`str`, *optional*, defaults to `"messages"`):
            Column of the conversation.

    Returns (per call): `input_ids`, `attention_mask`, `labels`, `prompts` and `prompt_attention_mask`.
    """

    tokenizer: Any
    ignore_index: int = -100
    max_length: int | None = None
    prompt_key: str = "prompt"
    messages_key: str = "messages"

    def __post_init__(self) -> None:
        if self.tokenizer.pad_token_id is None:
            raise ValueError("DataCollatorForChatML needs a tokenizer with a pad token.")
        if self.max_length is None:
            self.max_length = self.tokenizer.model_max_length

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        input_ids, labels, prompts = [], [], []
        for example in examples:
            messages = example[self.messages_key]
            prompt = example.get(self.prompt_key)
            if prompt is None:
                prompt = self.tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
            text = self.tokenizer.apply_chat_template(messages, tokenize=False)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][: self.max_length]
            prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            if ids[: len(prompt_ids)] != prompt_ids:
                raise ValueError(
                    "The rendered conversation does not start with its rendered prompt; the chat template changes "
                    "earlier turns when a message is added, so the prompt tokens cannot be masked."
                )
            prompt_length = min(len(prompt_ids), len(ids))
            input_ids.append(torch.tensor(ids))
            labels.append(torch.tensor([self.ignore_index] * prompt_length + ids[prompt_length:]))
            prompts.append(torch.tensor(prompt_ids))
        pad_id = self.tokenizer.pad_token_id
        return {
            "input_ids": pad(input_ids, padding_value=pad_id, padding_side="left"),
            "attention_mask": pad([torch.ones_like(t) for t in input_ids], padding_value=0, padding_side="left"),
            "labels": pad(labels, padding_value=self.ignore_index, padding_side="left"),
            "prompts": pad(prompts, padding_value=pad_id, padding_side="left"),
            "prompt_attention_mask": pad([torch.ones_like(t) for t in prompts], padding_value=0, padding_side="left"),
        }


# ----------------------------------------------------------------------------------------------- models
def enable_gradient_checkpointing(
    model: torch.nn.Module, gradient_checkpointing_kwargs: dict[str, Any] | None
) -> torch.nn.Module:
    """Turn on gradient checkpointing (non-reentrant unless `gradient_checkpointing_kwargs` says otherwise).

    With reentrant checkpointing the inputs of the checkpointed blocks must require gradients, so the input
    embeddings are made to produce tensors that do (needed when the embeddings are frozen, e.g. under PEFT).
    """
    kwargs = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if kwargs["use_reentrant"] and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    return model


def prepare_model_for_kbit_training(
    model: torch.nn.Module,
    use_gradient_checkpointing: bool = True,
    gradient_checkpointing_kwargs: dict[str, Any] | None = None,
) -> torch.nn.Module:
    """Ready a (quantized) model for adapter training: freeze every weight, upcast the half-precision ones that are
    not quantized to float32, and turn on gradient checkpointing (with input gradients) when asked.
    """
    quantized = getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_loaded_in_4bit", False)
    for param in model.parameters():
        param.requires_grad_(False)
        if param.dtype in (torch.float16, torch.bfloat16) and (
            not quantized or param.__class__.__name__ == "Parameter"
        ):
            param.data = param.data.to(torch.float32)
    if use_gradient_checkpointing:
        kwargs = {"use_reentrant": True, **(gradient_checkpointing_kwargs or {})}
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return model


def get_reward(
    model: torch.nn.Module, query_responses: torch.Tensor, pad_token_id: int, context_length: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Score query-response sequences with a sequence-classification (reward or value) model, PPO style.

    Runs the model's backbone on `query_responses` (padding masked out, positions counted over real tokens) and its
    `score` head on every position.

    Args:
        model (`PreTrainedModel`):
            A `*ForSequenceClassification` model (a backbone under `base_model_prefix` and a `score` head).
        query_responses (`torch.Tensor`):
            Token ids of shape `(batch, seq)`: the query in the first `context_length` positions, then the response.
        pad_token_id (`int`):
            Padding id.
        context_length (`int`):
            Length of the query part.

    Returns:
        `tuple`: the per-position scores `(batch, seq, num_labels)`, the score at the last response token
        `(batch,)` (`num_labels == 1`) and the index of that token `(batch,)`.
    """
    attention_mask = query_responses != pad_token_id
    position_ids = attention_mask.cumsum(1) - attention_mask.long()
    backbone = getattr(model, model.base_model_prefix)
    input_ids = torch.masked_fill(query_responses, ~attention_mask, 0)
    output = backbone(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        return_dict=True,
        output_hidden_states=True,
        use_cache=False,
    )
    reward_logits = model.score(output.hidden_states[-1])
    sequence_lengths = first_true_indices(query_responses[:, context_length:] == pad_token_id) - 1 + context_length
    rows = torch.arange(reward_logits.size(0), device=reward_logits.device)
    return reward_logits, reward_logits[rows, sequence_lengths].squeeze(-1), sequence_lengths


# ------------------------------------------------------------------------------------------ byte offsets
@lru_cache(maxsize=1)
def _byte_level_alphabet() -> dict[str, int]:
    """The printable-character alphabet of byte-level BPE (GPT-2): character -> the byte it stands for."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {byte: byte for byte in printable}
    shift = 0
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = 256 + shift
            shift += 1
    return {chr(code): byte for byte, code in mapping.items()}


def piece_byte_len(piece: str) -> int:
    """Number of bytes of text a vocabulary piece stands for.

    Byte-level BPE pieces (`"Ġhello"`) count one byte per alphabet character; SentencePiece byte-fallback pieces
    (`"<0x0A>"`) one byte; the metaspace `"▁"` one byte (a space); any other character its UTF-8 length.
    """
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        return 1
    alphabet = _byte_level_alphabet()
    if all(char in alphabet for char in piece):
        return len(piece)
    return sum(1 if char == "▁" else len(char.encode("utf-8")) for char in piece)


def _backend(backend: Any) -> Any:
    return getattr(backend, "backend_tokenizer", backend)


def is_byte_level_tokenizer(backend: Any) -> bool:
    """Whether a `tokenizers.Tokenizer` (or a fast tokenizer wrapping one) uses byte-level pre-tokenisation or
    decoding (GPT-2, Llama 3, Qwen): its pieces then map one-to-one to bytes."""
    spec = json.loads(_backend(backend).to_str())

    def has_byte_level(node: Any) -> bool:
        if isinstance(node, dict):
            return node.get("type") == "ByteLevel" or any(has_byte_level(value) for value in node.values())
        if isinstance(node, list):
            return any(has_byte_level(value) for value in node)
        return False

    return has_byte_level(spec.get("pre_tokenizer")) or has_byte_level(spec.get("decoder"))


def encode_with_byte_offsets(
    backend: Any, texts: list[str], add_special_tokens: bool = False
) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
    """Tokenise `texts` and give each token's span as UTF-8 byte offsets `(start, end)` into its text.

    The tokenizer reports character offsets; they are converted with the byte length of each character, so two
    tokenizers' tokens can be aligned on the same bytes. Special tokens added by the template get `(0, 0)`.

    Returns:
        `tuple`: the token ids and the byte offsets of every text.
    """
    encodings = _backend(backend).encode_batch(list(texts), add_special_tokens=add_special_tokens)
    all_ids, all_offsets = [], []
    for text, encoding in zip(texts, encodings, strict=True):
        byte_at = [0]
        for char in text:
            byte_at.append(byte_at[-1] + len(char.encode("utf-8")))
        all_ids.append(list(encoding.ids))
        all_offsets.append([(byte_at[start], byte_at[end]) for start, end in encoding.offsets])
    return all_ids, all_offsets


def pad_byte_offsets(offsets: list[tuple[int, int]], target_length: int, padding_side: str) -> list[tuple[int, int]]:
    """Pad a token's byte-offset list with `(0, 0)` spans to `target_length`, on `padding_side` (`"left"` or
    `"right"`), as the token ids are padded; longer lists are an error."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right' (got {padding_side!r}).")
    missing = target_length - len(offsets)
    if missing < 0:
        raise ValueError(f"{len(offsets)} offsets do not fit in target_length={target_length}.")
    filler = [(0, 0)] * missing
    return [*filler, *offsets] if padding_side == "left" else [*offsets, *filler]
