"""Vision-language data: image examples checked and rendered, and the collators that run the processor on the fly.

A vision example is conversational and carries its images in an `images` column (a list of PIL images) or an
`image` column (one image). Its message contents are strings or lists of parts; the images are attached with
[`~trl.data_utils.prepare_multimodal_messages`] (one `{"type": "image"}` part per image before the first user text,
unless the messages already hold image parts). Nothing is tokenised ahead of time: the collators render each batch
with the processor's chat template and call the processor on text and images together, so the image tokens are
expanded by the processor exactly as the model expects.

Rows with a prompt (prompt-completion, preference, unpaired preference) are built as the prompt processed with its
images (left-padded), followed by the completion tokenised alone (completions hold no image), then flushed left.
The completion tokens are therefore exactly the completion's tokens, and every image is processed once.

The batch holds what the processor returns (`pixel_values`, and per family `image_grid_thw`, `pixel_attention_mask`,
`image_sizes`, `token_type_ids`, `mm_token_type_ids`) next to `input_ids`, `attention_mask` and the loss masks;
per-token tensors are padded and truncated with the ids. `max_length` never cuts an image's tokens: a batch whose
image tokens reach past it raises an error naming the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.data.data_collator import DataCollatorMixin

from ..data_utils import apply_chat_template, is_conversational, prepare_multimodal_messages
from .tensor_utils import flush_left, pad_to_length


IGNORE_INDEX = -100
IMAGE_COLUMNS = ("images", "image")
# Per-token tensors a processor may return besides `input_ids` / `attention_mask` (0 is "text" in all of them).
_TOKEN_TYPE_KEYS = ("token_type_ids", "mm_token_type_ids")
# Tokens that belong to an image in the families trl knows: placeholders, their expansion and their delimiters.
_IMAGE_TOKEN_ATTRIBUTES = ("image_token", "boi_token", "eoi_token", "video_token", "fake_image_token")
_IMAGE_DELIMITERS = ("<|vision_start|>", "<|vision_end|>", "<global-img>", "<fake_token_around_image>")


# --------------------------------------------------------------------------------------------------------------------
# Examples
# --------------------------------------------------------------------------------------------------------------------


def has_images(example: dict[str, Any]) -> bool:
    """Whether an example carries images (a non-empty `images` column, or an `image` that is not `None`)."""
    return bool(example.get("images")) or example.get("image") is not None


def example_images(example: dict[str, Any]) -> list:
    """The images of an example, as a list (`images`, or `[image]`; empty when it has none)."""
    if example.get("images"):
        return list(example["images"])
    return [example["image"]] if example.get("image") is not None else []


def is_vision_dataset(columns: list[str] | tuple[str, ...]) -> bool:
    """Whether a dataset with these column names is a vision dataset (an `images` or `image` column)."""
    return any(column in columns for column in IMAGE_COLUMNS)


def is_processor(processing_class: Any) -> bool:
    """Whether `processing_class` processes images (a multimodal processor with an image processor)."""
    return getattr(processing_class, "image_processor", None) is not None


def check_vision_example(example: dict[str, Any], processing_class: Any, trainer_name: str) -> None:
    """Raise a clear error when an image example cannot be trained on: no image processor, or standard text.

    Args:
        example (`dict[str, Any]`):
            One example of the dataset (e.g. its first).
        processing_class (`PreTrainedTokenizerBase` or `ProcessorMixin`):
            The trainer's processing class.
        trainer_name (`str`):
            Named in the messages.
    """
    if not is_processor(processing_class):
        raise ValueError(
            f"The dataset has an image column ({', '.join(c for c in IMAGE_COLUMNS if c in example)}) but "
            f"{trainer_name} was given a text tokenizer ({type(processing_class).__name__}), which cannot process "
            "images: they would be dropped silently. Load a vision-language model with "
            "`AutoModelForImageTextToText` and pass its processor (`AutoProcessor.from_pretrained(model_id)`) as "
            "`processing_class`, or remove the 'image'/'images' column to train on the text alone."
        )
    if not is_conversational(example):
        raise ValueError(
            f"{trainer_name} trains vision-language models on conversational data only: this image dataset is in "
            "the standard (plain text) format. Convert each text to messages, e.g. "
            '`{"prompt": [{"role": "user", "content": text}]}`; the images are attached to the first user message.'
        )


def multimodal_conversation(example: dict[str, Any], keys: tuple[str, ...]) -> dict[str, list]:
    """The conversational fields `keys` of an example with the images attached to its first user message.

    `prompt` (when present) receives the image parts; the other fields are converted to content parts. Returns the
    converted fields (only those the example has).
    """
    images = example_images(example)
    first = "prompt" if "prompt" in example else keys[0]
    converted = {first: prepare_multimodal_messages(example[first], images)}
    for key in keys:
        if key != first and key in example:
            converted[key] = prepare_multimodal_messages(example[key], [])
    return converted


def render_prompt_and_completions(
    processor: Any, example: dict[str, Any], keys: tuple[str, ...], chat_template: str | None = None
) -> dict[str, str]:
    """Render a conversational image example into its prompt text and the text of each of `keys`.

    Uses [`~trl.data_utils.apply_chat_template`] on the example with its images attached, so the split between
    prompt and completion is the one of the text trainers.
    """
    converted = multimodal_conversation(example, ("prompt", *keys))
    kwargs = {"chat_template": chat_template} if chat_template is not None else {}
    return apply_chat_template(converted, processor, **kwargs)


def image_token_ids(processor: Any) -> set[int]:
    """The ids of the tokens that stand for images in `processor`'s tokenizer (placeholders and delimiters)."""
    tokenizer = getattr(processor, "tokenizer", processor)
    ids = {getattr(processor, "image_token_id", None), getattr(tokenizer, "image_token_id", None)}
    for source in (processor, tokenizer):
        for attribute in _IMAGE_TOKEN_ATTRIBUTES:
            token = getattr(source, attribute, None)
            if isinstance(token, str):
                ids.add(tokenizer.convert_tokens_to_ids(token))
    vocab = tokenizer.get_vocab()
    ids.update(vocab[token] for token in _IMAGE_DELIMITERS if token in vocab)
    # Idefics3 / SmolVLM image splitting: the `<row_i_col_j>` tags of the tiles.
    ids.update(getattr(processor, "row_col_ids", None) or ())
    ids.discard(None)
    ids.discard(getattr(tokenizer, "unk_token_id", None))
    return {int(i) for i in ids}


# The model inputs a vision batch adds to `input_ids` / `attention_mask`, passed on to the forward pass.
VISION_INPUT_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "pixel_attention_mask",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
)
# The raw columns the vision collators read: `Trainer` must not drop them as unknown to `model.forward`.
VISION_COLUMNS = ("images", "image", "messages", "prompt", "completion", "chosen", "rejected", "label")


def vision_inputs(batch: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The image inputs of a batch (the keys of `VISION_INPUT_KEYS` it has, read under `prefix`, e.g. `"kl_"`)."""
    return {key: batch[prefix + key] for key in VISION_INPUT_KEYS if prefix + key in batch}


def prepare_vision_dataset(
    dataset: Any,
    processing_class: Any,
    trainer_name: str,
    packing: bool = False,
    padding_free: bool = False,
    truncation_mode: str = "keep_start",
) -> bool:
    """Whether `dataset` is a vision dataset, after checking that it can be trained on as one.

    Vision datasets are not tokenised ahead of time (the vision collators process each batch), so a trainer returns
    such a dataset unchanged when this is `True`.

    Args:
        dataset (`Dataset` or `IterableDataset`):
            The data.
        processing_class (`PreTrainedTokenizerBase` or `ProcessorMixin`):
            The trainer's processing class; images need a processor.
        trainer_name (`str`):
            Named in error messages.
        packing (`bool`, *optional*, defaults to `False`):
            Whether packing was asked for (not supported with images).
        padding_free (`bool`, *optional*, defaults to `False`):
            Whether padding-free batches were asked for (not supported with images).
        truncation_mode (`str`, *optional*, defaults to `"keep_start"`):
            How rows over `max_length` are cut; `"keep_end"` is refused (it would cut the prompt and its images).

    Raises:
        `ValueError`: for images with a text tokenizer, standard-format image data, packing, padding-free or
        `truncation_mode="keep_end"`.
    """
    from ..data_utils import get_dataset_column_names
    from .data_preparation import first_example

    if not is_vision_dataset(get_dataset_column_names(dataset)):
        return False
    check_vision_example(first_example(dataset), processing_class, trainer_name)
    if packing or padding_free:
        option = "packing=True" if packing else "padding_free=True"
        raise ValueError(
            f"{option} is not supported with images: packed or flattened rows would mix the image features of "
            f"several examples, which vision-language models cannot tell apart. Set {option.split('=')[0]}=False."
        )
    if truncation_mode == "keep_end":
        raise ValueError(
            "truncation_mode='keep_end' is not supported with images: cutting the start of a row would cut the "
            "prompt's image tokens. Use truncation_mode='keep_start' (rows over max_length lose their end)."
        )
    return True


def prepare_vision_preference_dataset(dataset: Any, num_proc: int | None = None) -> Any:
    """Image preference data as the vision collators read it: ShareGPT turns as ChatML, implicit prompts extracted
    (the images stay in their column)."""
    from .data_preparation import convert_to_chatml
    from .preference_data import extract_prompts

    return extract_prompts(convert_to_chatml(dataset, num_proc), num_proc)


def prepare_vision_reward_dataset(dataset: Any, num_proc: int | None = None) -> Any:
    """Image preference data for the reward trainer: ShareGPT turns as ChatML (explicit and implicit prompts are
    both read by [`DataCollatorForVisionRewardPreference`])."""
    from .data_preparation import convert_to_chatml

    return convert_to_chatml(dataset, num_proc)


def prepare_vision_unpaired_dataset(dataset: Any, num_proc: int | None = None) -> Any:
    """Image data for KTO / BCO as the vision collator reads it: ShareGPT turns as ChatML, paired preference data
    unpaired (chosen rows `label=True`, rejected rows `label=False`, the images copied to both)."""
    from ..data_utils import get_dataset_column_names, maybe_unpair_preference_dataset
    from .data_preparation import convert_to_chatml

    if "chosen" in get_dataset_column_names(dataset):
        return maybe_unpair_preference_dataset(prepare_vision_preference_dataset(dataset, num_proc), num_proc)
    return convert_to_chatml(dataset, num_proc)


def stack_vision_inputs(batch: dict[str, Any], length: int, prefix: str = "kl_") -> dict[str, Any]:
    """The image inputs of a batch's rows followed by those of its `prefix` rows, as one batch of both.

    Per-token tensors (`token_type_ids`, `mm_token_type_ids`) are right-padded with 0 to `length` columns; the
    per-image tensors (`pixel_values`, `image_grid_thw`, ...) are concatenated, the first rows' images first.
    """
    stacked = {}
    for key, value in vision_inputs(batch).items():
        other = batch[prefix + key]
        if key in _TOKEN_TYPE_KEYS:
            value, other = pad_to_length(value, length, 0, dim=1), pad_to_length(other, length, 0, dim=1)
        stacked[key] = torch.cat([value, other])
    return stacked


# --------------------------------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------------------------------


def _nested_images(examples: list[dict[str, Any]]) -> list[list] | None:
    images = [example_images(example) for example in examples]
    return images if any(images) else None


def _token_keys(batch: dict[str, Any]) -> list[str]:
    return ["input_ids", "attention_mask", *(key for key in _TOKEN_TYPE_KEYS if key in batch)]


def truncate_keeping_images(
    batch: dict[str, Any], max_length: int | None, image_ids: set[int], extra_keys: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Truncate the per-token tensors of a right-padded batch to `max_length` columns, refusing to cut an image.

    Args:
        batch (`dict[str, Any]`):
            The batch; `input_ids`, `attention_mask`, the token-type tensors and `extra_keys` are truncated.
        max_length (`int` or `None`):
            The length to keep; `None` keeps everything.
        image_ids (`set[int]`):
            The image token ids ([`image_token_ids`]).
        extra_keys (`tuple[str, ...]`, *optional*, defaults to `()`):
            Other `[B, L]` tensors of the batch (`labels`, `completion_mask`, `assistant_masks`).

    Raises:
        `ValueError`: when a row has an image token at or after column `max_length`.
    """
    input_ids = batch["input_ids"]
    if max_length is None or input_ids.shape[1] <= max_length:
        return batch
    is_image = torch.isin(input_ids, torch.tensor(sorted(image_ids), dtype=input_ids.dtype))
    is_image &= batch["attention_mask"].bool()
    if is_image[:, max_length:].any():
        positions = torch.arange(input_ids.shape[1]).expand_as(input_ids)
        needed = int(positions[is_image].max()) + 1
        raise ValueError(
            f"max_length={max_length} would cut the image tokens of an example: its last image token is at position "
            f"{needed - 1}, so it needs at least {needed} tokens. Truncating inside an image breaks the match between "
            "image tokens and image features. Increase max_length (or set it to None), or use fewer / smaller images."
        )
    for key in (*_token_keys(batch), *extra_keys):
        if key in batch:
            batch[key] = batch[key][:, :max_length]
    return batch


def _pad_columns(batch: dict[str, Any], keys: list[str], multiple: int | None, pad_token_id: int) -> None:
    if not multiple:
        return
    length = batch["input_ids"].shape[1]
    target = -(-length // multiple) * multiple
    for key in keys:
        if key in batch:
            value = pad_token_id if key == "input_ids" else (IGNORE_INDEX if key == "labels" else 0)
            batch[key] = pad_to_length(batch[key], target, value, dim=1)


def prompt_completion_rows(
    processor: Any,
    prompts: list[str],
    completions: list[str],
    images: list[list] | None,
    max_length: int | None = None,
    pad_to_multiple_of: int | None = None,
) -> dict[str, Any]:
    """One right-padded row per (prompt, completion): the prompt processed with its images, then the completion.

    Args:
        processor (`ProcessorMixin`):
            The processor (its tokenizer tokenises the completions).
        prompts (`list[str]`):
            Rendered prompts, with the model's image placeholders.
        completions (`list[str]`):
            Rendered completions (text only).
        images (`list[list]` or `None`):
            The images of each row (`None`: no row has images).
        max_length (`int` or `None`, *optional*, defaults to `None`):
            Truncate the rows to this many tokens (never inside an image).
        pad_to_multiple_of (`int` or `None`, *optional*, defaults to `None`):
            Round the padded length up to a multiple of this value.

    Returns:
        `dict[str, Any]`: `input_ids`, `attention_mask`, `completion_mask` `[B, L]`, and the processor's image
        tensors (`pixel_values`, `image_grid_thw`, `pixel_attention_mask`, `image_sizes`, token-type ids, ...).
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    kwargs = {"images": images} if images is not None else {}
    batch = dict(processor(text=prompts, padding=True, padding_side="left", add_special_tokens=False,
                           return_tensors="pt", **kwargs))  # fmt: skip
    completion = tokenizer(completions, padding=True, padding_side="right", add_special_tokens=False,
                           return_tensors="pt")  # fmt: skip
    prompt_mask, completion_mask = batch["attention_mask"], completion["attention_mask"]
    keys = _token_keys(batch)
    columns = {
        "input_ids": torch.cat([batch["input_ids"], completion["input_ids"]], dim=1),
        "attention_mask": torch.cat([prompt_mask, completion_mask], dim=1),
        "completion_mask": torch.cat([torch.zeros_like(prompt_mask), completion_mask], dim=1),
    }
    for key in keys[2:]:
        columns[key] = torch.cat([batch[key], torch.zeros_like(completion["input_ids"])], dim=1)
    names = ["input_ids", "completion_mask", *keys[2:]]
    flushed = flush_left(columns["attention_mask"], *(columns[name] for name in names))
    batch["attention_mask"] = flushed[0]
    batch.update(zip(names, flushed[1:]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # Flushing leaves the pad id of the prompt's left padding in the freed columns; pad them as the tokenizer does.
    batch["input_ids"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, pad_id)
    batch = truncate_keeping_images(batch, max_length, image_token_ids(processor), ("completion_mask",))
    _pad_columns(batch, [*keys, "completion_mask"], pad_to_multiple_of, pad_id)
    return batch


def conversation_rows(
    processor: Any,
    conversations: list[list[dict[str, Any]]],
    max_length: int | None = None,
    pad_to_multiple_of: int | None = None,
    chat_template: str | None = None,
    assistant_masks: bool = False,
) -> dict[str, Any]:
    """One right-padded row per whole conversation (images in its content parts), rendered and processed at once.

    Args:
        processor (`ProcessorMixin`):
            The processor.
        conversations (`list[list[dict[str, Any]]]`):
            Conversations whose image parts hold their images ([`multimodal_conversation`]).
        max_length (`int` or `None`, *optional*, defaults to `None`):
            Truncate the rows to this many tokens (never inside an image).
        pad_to_multiple_of (`int` or `None`, *optional*, defaults to `None`):
            Round the padded length up to a multiple of this value.
        chat_template (`str` or `None`, *optional*, defaults to `None`):
            Template used instead of the processor's.
        assistant_masks (`bool`, *optional*, defaults to `False`):
            Also return `assistant_masks` (the template needs generation markers).
    """
    kwargs = {"chat_template": chat_template} if chat_template is not None else {}
    batch = dict(
        processor.apply_chat_template(
            conversations, tokenize=True, return_dict=True, return_assistant_tokens_mask=assistant_masks,
            processor_kwargs={"padding": True, "padding_side": "right", "return_tensors": "pt"}, **kwargs,
        )
    )  # fmt: skip
    if "assistant_masks" in batch:
        batch["assistant_masks"] = torch.as_tensor(batch["assistant_masks"])
    batch = truncate_keeping_images(batch, max_length, image_token_ids(processor), ("assistant_masks",))
    _pad_columns(batch, [*_token_keys(batch), "assistant_masks"], pad_to_multiple_of, _pad_id(processor))
    return batch


def _scalars(examples: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    # Imported here: `trl.trainer.collators` re-exports this module's collators.
    from .collators import _scalars as scalars

    return scalars(examples, keys)


def _pad_id(processor: Any) -> int:
    tokenizer = getattr(processor, "tokenizer", processor)
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


class _VisionCollator(DataCollatorMixin):
    """What the vision collators share: a multimodal processor and `return_tensors="pt"`, checked at creation."""

    def __post_init__(self) -> None:
        if self.return_tensors != "pt":
            raise ValueError(f"return_tensors={self.return_tensors!r} is not supported; use 'pt'.")
        if not is_processor(self.processor):
            raise ValueError(
                f"{type(self).__name__} needs a multimodal processor (with an image processor), got "
                f"{type(self.processor).__name__}. Pass `AutoProcessor.from_pretrained(model_id)`."
            )


@dataclass
class DataCollatorForVisionLanguageModeling(_VisionCollator):
    """Collator for SFT of vision-language models: renders and processes raw image examples on the fly.

    Examples are conversational with `images` (or `image`): language modelling (`messages`) or prompt-completion
    (`prompt`, `completion`). Output: `input_ids`, `attention_mask`, `labels` (`-100` on padding, on image tokens,
    and outside the completion with `completion_only_loss` / outside assistant turns with `assistant_only_loss`),
    plus the processor's image tensors (`pixel_values`, `image_grid_thw`, `pixel_attention_mask`, `image_sizes`,
    `token_type_ids`, `mm_token_type_ids`, depending on the model).

    Args:
        processor (`ProcessorMixin`):
            The model's processor.
        max_length (`int` or `None`, *optional*, defaults to `None`):
            Truncate the rows to this many tokens; a row whose image tokens would be cut raises an error.
        completion_only_loss (`bool`, *optional*, defaults to `False`):
            Train on the completion tokens only (prompt-completion data).
        pad_to_multiple_of (`int` or `None`, *optional*, defaults to `None`):
            Round the padded length up to a multiple of this value.
        dataset_text_field (`str`, *optional*, defaults to `"text"`):
            Kept for compatibility: vision data is conversational, so it is not read.
        assistant_only_loss (`bool`, *optional*, defaults to `False`):
            Train on the assistant turns only (`messages` data; the chat template needs generation markers).
        chat_template (`str` or `None`, *optional*, defaults to `None`):
            Template used instead of the processor's (e.g. its training version with generation markers).
        return_tensors (`str`, *optional*, defaults to `"pt"`):
            Only `"pt"` is supported.
    """

    processor: Any
    max_length: int | None = None
    completion_only_loss: bool = False
    pad_to_multiple_of: int | None = None
    dataset_text_field: str = "text"
    assistant_only_loss: bool = False
    chat_template: str | None = None
    return_tensors: str = "pt"

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        if "messages" in examples[0]:
            batch = self._language_modeling(examples)
            scored = batch.pop("assistant_masks", None) if self.assistant_only_loss else None
        else:
            batch = self._prompt_completion(examples)
            completion_mask = batch.pop("completion_mask")
            scored = completion_mask if self.completion_only_loss else None
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
        image_ids = torch.tensor(sorted(image_token_ids(self.processor)), dtype=labels.dtype)
        labels = labels.masked_fill(torch.isin(batch["input_ids"], image_ids), IGNORE_INDEX)
        if scored is not None:
            labels = labels.masked_fill(scored == 0, IGNORE_INDEX)
        batch["labels"] = labels
        return batch

    def _language_modeling(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        conversations = [multimodal_conversation(example, ("messages",))["messages"] for example in examples]
        return conversation_rows(
            self.processor, conversations, self.max_length, self.pad_to_multiple_of, self.chat_template,
            self.assistant_only_loss,
        )  # fmt: skip

    def _prompt_completion(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        rendered = [render_prompt_and_completions(self.processor, ex, ("completion",), self.chat_template)
                    for ex in examples]  # fmt: skip
        return prompt_completion_rows(
            self.processor, [r["prompt"] for r in rendered], [r["completion"] for r in rendered],
            _nested_images(examples), self.max_length, self.pad_to_multiple_of,
        )  # fmt: skip


@dataclass
class _VisionPairCollator(_VisionCollator):
    """The fields of the collators whose examples become two rows each (preference pairs)."""

    processor: Any
    max_length: int | None = None
    pad_to_multiple_of: int | None = None
    return_tensors: str = "pt"


@dataclass
class DataCollatorForVisionPreference(_VisionPairCollator):
    """Collator for DPO on image data: every pair becomes two rows, all chosen rows (prompt + chosen) before all
    rejected rows (prompt + rejected); each prompt is processed with its images for both rows.

    Examples are conversational with `images` / `image`, `prompt`, `chosen` and `rejected`. Output: `input_ids`,
    `attention_mask`, `completion_mask` `[2B, L]` and the processor's image tensors for the `2B` rows, plus
    `ref_chosen_logps` / `ref_rejected_logps` when the examples carry them.

    Args:
        processor, max_length, pad_to_multiple_of, return_tensors:
            As in [`DataCollatorForVisionLanguageModeling`] (`max_length` cuts each row, never inside an image).
    """

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        rendered = [render_prompt_and_completions(self.processor, ex, ("chosen", "rejected")) for ex in examples]
        prompts = [r["prompt"] for r in rendered]
        images = _nested_images(examples)
        batch = prompt_completion_rows(
            self.processor, prompts * 2, [r["chosen"] for r in rendered] + [r["rejected"] for r in rendered],
            images * 2 if images is not None else None, self.max_length, self.pad_to_multiple_of,
        )  # fmt: skip
        batch.update(_scalars(examples, ("ref_chosen_logps", "ref_rejected_logps")))
        return batch


@dataclass
class DataCollatorForVisionUnpairedPreference(_VisionCollator):
    """Collator for KTO on image data: one row per (prompt, completion, label) example.

    Output: `input_ids`, `attention_mask`, `completion_mask` `[B, L]`, the processor's image tensors, and `labels`
    (bool, `[B]`). With `calculate_kl`, also the mismatched rows (prompt `i` with the completion of example
    `(i + 1) mod B`) under the same names prefixed with `kl_` (`kl_input_ids`, `kl_pixel_values`, ...).

    Args:
        processor, max_length, pad_to_multiple_of, return_tensors:
            As in [`DataCollatorForVisionLanguageModeling`] (`max_length` cuts each row, never inside an image).
        calculate_kl (`bool`, *optional*, defaults to `True`):
            Also build the mismatched KL rows.
    """

    processor: Any
    max_length: int | None = None
    calculate_kl: bool = True
    pad_to_multiple_of: int | None = None
    return_tensors: str = "pt"

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        rendered = [render_prompt_and_completions(self.processor, ex, ("completion",)) for ex in examples]
        prompts, completions = [r["prompt"] for r in rendered], [r["completion"] for r in rendered]
        images = _nested_images(examples)
        rows = (self.processor, prompts)
        batch = prompt_completion_rows(*rows, completions, images, self.max_length, self.pad_to_multiple_of)
        batch["labels"] = torch.tensor([bool(example["label"]) for example in examples])
        if self.calculate_kl:
            shifted = completions[1:] + completions[:1]
            kl = prompt_completion_rows(*rows, shifted, images, self.max_length, self.pad_to_multiple_of)
            batch.update({f"kl_{key}": value for key, value in kl.items()})
        batch.update(_scalars(examples, ("ref_logps", "ref_kl_logps")))
        return batch


@dataclass
class DataCollatorForVisionRewardPreference(_VisionPairCollator):
    """Collator for reward modelling on image data: the chosen conversations (prompt + chosen, or the implicit-prompt
    `chosen`) then the rejected ones, each with its example's images.

    Output: `input_ids`, `attention_mask` `[2B, L]`, the processor's image tensors for the `2B` rows, and `margin`
    (float, `[B]`) when the examples have one.

    Args:
        processor, max_length, pad_to_multiple_of, return_tensors:
            As in [`DataCollatorForVisionLanguageModeling`] (`max_length` cuts each row, never inside an image).
    """

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        conversations = {"chosen": [], "rejected": []}
        for example in examples:
            for key in conversations:
                full = {"images": example_images(example), key: list(example.get("prompt") or []) + list(example[key])}
                conversations[key].append(multimodal_conversation(full, (key,))[key])
        rows = conversations["chosen"] + conversations["rejected"]
        batch = conversation_rows(self.processor, rows, self.max_length, self.pad_to_multiple_of)
        batch.update(_scalars(examples, ("margin",)))
        return batch
