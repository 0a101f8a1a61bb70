"""Example-level data utilities: dataset types and formats, chat-template rendering, prompt extraction, unpairing,
truncation and packing (the last two in `trl.data_packing`, re-exported here).

Nothing here imports torch: the functions work on plain Python examples, `datasets` objects and pyarrow tables, so
they can be used (and tested) without a model.

Dataset types are named by their columns (the *conversational* variant stores lists of `{"role", "content"}`
messages where the *standard* one stores strings):

| type                         | columns                               |
|------------------------------|---------------------------------------|
| `language_modeling`          | `text` / `messages`                   |
| `prompt_only`                | `prompt`                              |
| `prompt_completion`          | `prompt`, `completion`                |
| `preference`                 | `prompt`, `chosen`, `rejected`        |
| `implicit_prompt_preference` | `chosen`, `rejected`                  |
| `unpaired_preference`        | `prompt`, `completion`, `label`       |
| `stepwise_supervision`       | `prompt`, `completions`, `labels`     |
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal  # noqa: F401  (Literal is a public name of the reference's module)

from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict

from .data_packing import DatasetType as DatasetType
from .data_packing import IterableDatasetType as IterableDatasetType
from .data_packing import _supported_map_kwargs
from .data_packing import pack_dataset as pack_dataset
from .data_packing import truncate_dataset as truncate_dataset


if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, ProcessorMixin


# Keys whose values can hold a conversation, in the order `is_conversational` inspects them.
_CONVERSATIONAL_KEYS = ("prompt", "chosen", "rejected", "completion", "messages")
_CHAT_TEMPLATE_KEYS = ("prompt", "chosen", "rejected", "completion", "messages", "label")
_SUPPORTED_KEY_SETS = (
    {"messages"},
    {"prompt"},
    {"prompt", "completion"},
    {"prompt", "chosen", "rejected"},
    {"chosen", "rejected"},
    {"prompt", "completion", "label"},
)

# Most specific first: a set is matched when all its columns are present.
DATASET_TYPES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("stepwise_supervision", ("prompt", "completions", "labels")),
    ("unpaired_preference", ("prompt", "completion", "label")),
    ("preference", ("prompt", "chosen", "rejected")),
    ("implicit_prompt_preference", ("chosen", "rejected")),
    ("prompt_completion", ("prompt", "completion")),
    ("language_modeling", ("messages",)),
    ("language_modeling", ("text",)),
    ("language_modeling", ("conversations",)),
    ("prompt_only", ("prompt",)),
)

# ShareGPT-style speaker names mapped to chat roles; unknown names are kept as they are.
_FROM_VALUE_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_response": "tool",
    "observation": "tool",
    "tool": "tool",
}


# --------------------------------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------------------------------


def _is_message_list(value: Any, key: str = "role") -> bool:
    return isinstance(value, list) and len(value) > 0 and isinstance(value[0], dict) and key in value[0]


def is_conversational(example: dict[str, Any]) -> bool:
    """Whether an example is in conversational format (lists of `{"role", "content"}` messages).

    The first key found among `prompt`, `chosen`, `rejected`, `completion` and `messages` decides.

    Args:
        example (`dict[str, Any]`):
            A single example.

    Returns:
        `bool`: `True` if that value is a non-empty list of dicts with a `"role"` key.

    Example:
    ```python
    >>> is_conversational({"prompt": [{"role": "user", "content": "What color is the sky?"}]})
    True
    >>> is_conversational({"prompt": "The sky is"})
    False
    ```
    """
    for key in _CONVERSATIONAL_KEYS:
        if key in example:
            return _is_message_list(example[key])
    return False


def is_conversational_from_value(example: dict[str, Any]) -> bool:
    """Whether an example holds a ShareGPT-style `conversations` list of `{"from", "value"}` messages.

    Args:
        example (`dict[str, Any]`):
            A single example.

    Returns:
        `bool`: `True` if `example["conversations"]` is a list of dicts with `"from"` and `"value"` keys.
    """
    conversations = example.get("conversations")
    return _is_message_list(conversations, "from") and "value" in conversations[0]


def get_dataset_type(example_or_columns: dict[str, Any] | Iterable[str]) -> str:
    """Name the type of a dataset from one of its examples or from its column names.

    Extra columns (`tools`, `images`, `margin`, ...) are allowed; the most specific matching column set wins.

    Args:
        example_or_columns (`dict[str, Any]` or `Iterable[str]`):
            An example (its keys are used) or the column names.

    Returns:
        `str`: one of `"language_modeling"`, `"prompt_only"`, `"prompt_completion"`, `"preference"`,
        `"implicit_prompt_preference"`, `"unpaired_preference"`, `"stepwise_supervision"`.

    Raises:
        `ValueError`: when no type matches; the message lists the expected column sets.
    """
    columns = set(example_or_columns.keys() if isinstance(example_or_columns, dict) else example_or_columns)
    for name, required in DATASET_TYPES:
        if columns.issuperset(required):
            return name
    expected = "; ".join(f"{name}: {', '.join(required)}" for name, required in DATASET_TYPES)
    raise ValueError(
        f"Cannot tell the dataset type from the columns {sorted(columns)}. Expected one of these column sets "
        f"({expected}). Rename your columns (`dataset.rename_column`) or convert the data to one of these types."
    )


def get_dataset_column_names(dataset: Dataset | IterableDataset) -> list[str]:
    """Column names of a dataset, also for an `IterableDataset` whose features are unknown (it peeks one example).

    Args:
        dataset (`Dataset`, `IterableDataset` or a dict of them):
            The dataset; for a `DatasetDict` the columns of its first split are returned.

    Returns:
        `list[str]`: the column names (empty for an empty iterable dataset without features).
    """
    if isinstance(dataset, (DatasetDict, IterableDatasetDict)):
        if not dataset:
            return []
        dataset = next(iter(dataset.values()))
    if not isinstance(dataset, (Dataset, IterableDataset)):
        raise TypeError(
            f"Expected a `datasets.Dataset` or `IterableDataset`, got a {type(dataset).__name__}. Wrap your rows with "
            "`datasets.Dataset.from_list(rows)` (a list of dicts) or `Dataset.from_dict(columns)` (a dict of lists)."
        )
    if dataset.column_names is not None:
        return list(dataset.column_names)
    for example in dataset:
        return list(example.keys())
    return []


def common_prefix_length(ids: list[int], other_ids: list[int]) -> int:
    """Number of leading elements two sequences share.

    Args:
        ids (`list[int]`):
            First sequence.
        other_ids (`list[int]`):
            Second sequence.

    Returns:
        `int`: the length of the longest common prefix.
    """
    length = 0
    for left, right in zip(ids, other_ids):
        if left != right:
            break
        length += 1
    return length


# --------------------------------------------------------------------------------------------------------------------
# Chat templates
# --------------------------------------------------------------------------------------------------------------------


def _example_tools(example: dict[str, Any], tools: list | None) -> list | None:
    # Without datasets' Json() feature, a `tools` column is stored as a JSON string.
    if tools is None:
        tools = example.get("tools")
    if isinstance(tools, str):
        tools = json.loads(tools)
    return tools or None


def _prompt_flags(prompt: list[dict[str, Any]]) -> dict[str, bool]:
    last_role = prompt[-1].get("role") if prompt else None
    if last_role in ("user", "tool"):
        return {"add_generation_prompt": True}
    if last_role == "assistant":
        # A trailing assistant message is a prefill: the model continues it rather than starting a new turn.
        return {"continue_final_message": True}
    raise ValueError(
        f"A conversational prompt must end with a 'user', 'tool' or 'assistant' message, got {last_role!r}. "
        "Move the trailing message into the completion, or end the prompt with a user turn."
    )


def _split_prompt(prompt: str, full: str, prompt_without_generation: str | None) -> tuple[str, str]:
    """Split `full` (prompt + X rendered) into the rendered prompt and the rendered X.

    Some templates inject tokens only with `add_generation_prompt` (e.g. an opening `<think>`), which the rendering
    of the whole conversation does not contain; the prompt is then the longest common prefix, as long as the
    difference lies inside the generation prompt. A template that rewrites earlier turns cannot be split.
    """
    if full.startswith(prompt):
        return prompt, full[len(prompt) :]
    length = common_prefix_length(prompt, full)
    if prompt_without_generation is not None and length >= len(prompt_without_generation):
        if full.startswith(prompt_without_generation):
            return full[:length], full[length:]
    raise ValueError(
        "The chat template is not prefix-preserving: rendering the prompt alone is not a prefix of rendering the "
        "prompt followed by its completion, so the completion cannot be located.\n"
        f"Prompt rendering: {prompt!r}\nFull rendering:   {full!r}\n"
        "Use a chat template that renders earlier turns unchanged (set `chat_template_path`, or assign "
        "`tokenizer.chat_template`), or convert the data to the language-modeling format (`messages`)."
    )


def apply_chat_template(
    example: dict[str, list[dict[str, str]]],
    processing_class: PreTrainedTokenizerBase | ProcessorMixin,
    tools: list[dict | Callable] | None = None,
    **template_kwargs,
) -> dict[str, str]:
    """Render a conversational example into text with the processing class's chat template.

    Supported key sets: `{messages}`, `{prompt}`, `{prompt, completion}`, `{prompt, chosen, rejected}`,
    `{chosen, rejected}` and `{prompt, completion, label}`; other keys (e.g. `tools`, `images`) are ignored. The
    prompt is rendered with `add_generation_prompt=True`, or with `continue_final_message=True` when it ends with an
    assistant message. `completion`, `chosen` and `rejected` are the rendering of prompt + that value with the
    rendered prompt removed. `label` is passed through. When the template adds text only to the generation prompt
    (e.g. an opening `<think>`), the prompt is cut to the longest common prefix of both renderings.

    Tools come from `tools`, else from the example's `tools` column (a list, or a JSON string). An example's
    `chat_template_kwargs` dict is merged over `template_kwargs`.

    Args:
        example (`dict[str, list[dict[str, str]]]`):
            A conversational example.
        processing_class (`PreTrainedTokenizerBase` or `ProcessorMixin`):
            The tokenizer or processor whose `apply_chat_template` is used.
        tools (`list[dict | Callable]` or `None`, *optional*, defaults to `None`):
            Tools (JSON schemas or functions) made available to the model.
        **template_kwargs:
            Extra keyword arguments forwarded to the chat template.

    Returns:
        `dict[str, str]`: the rendered fields (`text`, `prompt`, `completion`, `chosen`, `rejected`) and `label`.

    Raises:
        `KeyError`: for an unsupported key set.
        `ValueError`: when the template is not prefix-preserving, or the prompt ends with an unexpected role.

    Example:
    ```python
    >>> example = {"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hello"}]}
    >>> apply_chat_template(example, tokenizer)  # ChatML tokenizer
    {'prompt': '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n', 'completion': 'Hello<|im_end|>\\n'}
    ```
    """
    keys = {key for key in example if key in _CHAT_TEMPLATE_KEYS}
    if keys not in _SUPPORTED_KEY_SETS:
        raise KeyError(
            f"Invalid keys in the example: {sorted(keys)}. Expected one of {list(map(sorted, _SUPPORTED_KEY_SETS))}."
        )
    tools = _example_tools(example, tools)
    kwargs = {**template_kwargs, **(example.get("chat_template_kwargs") or {})}

    def render(messages: list[dict[str, Any]], **flags: Any) -> str:
        return processing_class.apply_chat_template(messages, tools=tools, tokenize=False, **{**kwargs, **flags})

    if "messages" in example:
        return {"text": render(example["messages"])}
    if "prompt" not in example:  # implicit prompt: both sides are whole conversations
        return {"chosen": render(example["chosen"]), "rejected": render(example["rejected"])}

    prompt_messages = example["prompt"]
    flags = _prompt_flags(prompt_messages)
    prompt = render(prompt_messages, **flags)
    output = {"prompt": prompt}
    if not any(key in example for key in ("completion", "chosen", "rejected")):
        return output
    no_flags = {"add_generation_prompt": False, "continue_final_message": False}
    for key in ("completion", "chosen", "rejected"):
        if key in example:
            full = render(prompt_messages + example[key], **no_flags)
            if full.startswith(prompt):
                output[key] = full[len(prompt) :]
                continue
            # The prompt without its generation prompt tells whether only the generation prompt differs.
            base = render(prompt_messages) if "add_generation_prompt" in flags else None
            output["prompt"], output[key] = _split_prompt(prompt, full, base)
    if "label" in example:
        output["label"] = example["label"]
    return output


def maybe_apply_chat_template(
    example: dict[str, list[dict[str, str]]],
    processing_class: PreTrainedTokenizerBase | ProcessorMixin,
    tools: list[dict | Callable] | None = None,
    **template_kwargs: Any,
) -> dict[str, str]:
    """Apply [`apply_chat_template`] when the example is conversational; return it unchanged otherwise.

    Args:
        example (`dict[str, list[dict[str, str]]]`):
            A single example, standard or conversational.
        processing_class (`PreTrainedTokenizerBase` or `ProcessorMixin`):
            The tokenizer or processor.
        tools (`list[dict | Callable]` or `None`, *optional*, defaults to `None`):
            Tools made available to the model.
        **template_kwargs:
            Extra keyword arguments forwarded to the chat template.

    Returns:
        `dict[str, str]`: the rendered example, or the example itself when it is standard.
    """
    if is_conversational(example):
        return apply_chat_template(example, processing_class, tools, **template_kwargs)
    return example


def _to_chatml_message(message: dict[str, Any]) -> dict[str, Any]:
    if "from" in message:
        speaker = message.pop("from")
        message["role"] = _FROM_VALUE_ROLES.get(speaker, speaker)
    if "value" in message:
        message["content"] = message.pop("value")
    return message


def maybe_convert_to_chatml(example: dict[str, list]) -> dict[str, list]:
    """Convert ShareGPT-style `{"from", "value"}` messages to ChatML `{"role", "content"}` messages, in place.

    Applies to `prompt`, `completion`, `chosen`, `rejected`, `messages` and `conversations`; speaker names are mapped
    to roles (`human` -> `user`, `gpt` -> `assistant`, ...; unknown names are kept) and `conversations` is renamed to
    `messages`. Examples already in ChatML are returned unchanged.

    Args:
        example (`dict[str, list]`):
            A single example.

    Returns:
        `dict[str, list]`: the same (modified) example.

    Example:
    ```python
    >>> maybe_convert_to_chatml({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey"}]})
    {'messages': [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hey'}]}
    ```
    """
    for key in ("prompt", "completion", "chosen", "rejected", "messages", "conversations"):
        value = example.get(key)
        if isinstance(value, list):
            for message in value:
                if isinstance(message, dict):
                    _to_chatml_message(message)
    if "conversations" in example:
        example["messages"] = example.pop("conversations")
    return example


def prepare_multimodal_messages(messages: list[dict[str, Any]], images: list | None = None) -> list[dict[str, Any]]:
    """Turn messages into the block format vision processors expect, with one image block per image.

    String contents become `[{"type": "text", "text": ...}]`. When `images` is given and the messages contain no
    image block yet, one `{"type": "image"}` block per image is inserted before the text of the first user message.
    Every image block without an image is then filled, in order, with the next image. The input is not modified.

    Args:
        messages (`list[dict[str, Any]]`):
            The conversation.
        images (`list` or `None`, *optional*, defaults to `None`):
            The images (e.g. PIL images) of the example.

    Returns:
        `list[dict[str, Any]]`: the converted copy of the messages.

    Raises:
        `ValueError`: for a role other than system/user/assistant/tool, or when the number of image blocks differs from
        the number of images.
    """
    images = list(images or [])
    messages = copy.deepcopy(messages)
    for message in messages:
        if message.get("role") not in ("system", "user", "assistant", "tool"):
            raise ValueError(
                f"Unsupported role {message.get('role')!r} in a multimodal conversation; use system, user, "
                "assistant or tool."
            )
        if isinstance(message.get("content"), str):
            message["content"] = [{"type": "text", "text": message["content"]}]
    blocks = [block for message in messages for block in message.get("content") or [] if block.get("type") == "image"]
    if images and not blocks:
        first_user = next((message for message in messages if message["role"] == "user"), None)
        if first_user is None:
            raise ValueError("The example has images but no user message to attach them to.")
        new_blocks = [{"type": "image"} for _ in images]
        first_user["content"] = new_blocks + list(first_user["content"] or [])
        blocks = new_blocks
    if len(blocks) != len(images):
        raise ValueError(
            f"The messages contain {len(blocks)} image block(s) but {len(images)} image(s) were given; they must match."
        )
    for block, image in zip(blocks, images):
        block.setdefault("image", image)
    return messages


# --------------------------------------------------------------------------------------------------------------------
# Preference data
# --------------------------------------------------------------------------------------------------------------------


def extract_prompt(example: dict[str, Sequence]) -> dict[str, Sequence]:
    """Split the common start of `chosen` and `rejected` into an explicit `prompt`.

    Elements (messages, or characters of strings) are compared up to the first difference. When the element just
    before it is a space, the space goes with the completions (`"The sky is"` / `" blue."`). When one side is a
    prefix of the other, the prompt is the whole shorter side.

    Args:
        example (`dict[str, Sequence]`):
            An implicit-prompt preference example with `chosen` and `rejected`.

    Returns:
        `dict[str, Sequence]`: `prompt`, `chosen` and `rejected`.

    Example:
    ```python
    >>> extract_prompt({"chosen": "The sky is blue.", "rejected": "The sky is green."})
    {'prompt': 'The sky is', 'chosen': ' blue.', 'rejected': ' green.'}
    ```
    """
    chosen, rejected = example["chosen"], example["rejected"]
    index = common_prefix_length(chosen, rejected)
    if 0 < index < min(len(chosen), len(rejected)) and chosen[index - 1] == " ":
        index -= 1
    return {"prompt": chosen[:index], "chosen": chosen[index:], "rejected": rejected[index:]}


def maybe_extract_prompt(example: dict[str, list]) -> dict[str, list]:
    """Extract the prompt of an implicit-prompt preference example; leave other examples unchanged.

    The example is returned as is when it is not a preference example (no `chosen`/`rejected`), or when it already
    has a `prompt` of the same kind (standard or conversational) as `chosen`. Otherwise the prompt is extracted
    with [`extract_prompt`] (replacing a standard prompt that sits next to conversational answers).

    Args:
        example (`dict[str, list]`):
            A single example.

    Returns:
        `dict[str, list]`: the example, or `prompt`, `chosen` and `rejected`.
    """
    if "chosen" not in example or "rejected" not in example:
        return example
    if "prompt" in example:
        chosen_is_chat = is_conversational({"chosen": example["chosen"]})
        prompt_is_chat = is_conversational({"prompt": example["prompt"]})
        if chosen_is_chat == prompt_is_chat:
            return example
    return extract_prompt({"chosen": example["chosen"], "rejected": example["rejected"]})


def _unpair_batch(batch: dict[str, list]) -> dict[str, list]:
    size = len(batch["chosen"])
    output = {key: values + values for key, values in batch.items() if key not in ("chosen", "rejected")}
    output["completion"] = batch["chosen"] + batch["rejected"]
    output["label"] = [True] * size + [False] * size
    return output


def unpair_preference_dataset(
    dataset: DatasetType | IterableDatasetType, **map_kwargs
) -> DatasetType | IterableDatasetType:
    """Turn a paired preference dataset into an unpaired one.

    Each `prompt, chosen, rejected` row becomes the rows `prompt, completion=chosen, label=True` and
    `prompt, completion=rejected, label=False`; every other column is duplicated.

    Args:
        dataset (`Dataset`, `DatasetDict`, `IterableDataset` or `IterableDatasetDict`):
            A preference dataset (explicit or implicit prompt).
        **map_kwargs:
            Forwarded to `map` (e.g. `num_proc`, `desc`; those an iterable dataset does not accept are dropped).

    Returns:
        The unpaired dataset, of the same class.

    Example:
    ```python
    >>> dataset = Dataset.from_dict({"prompt": ["The sky is"], "chosen": [" blue."], "rejected": [" green."]})
    >>> unpair_preference_dataset(dataset)[:]
    {'prompt': ['The sky is', 'The sky is'], 'completion': [' blue.', ' green.'], 'label': [True, False]}
    ```
    """
    kwargs = _supported_map_kwargs(dataset, map_kwargs)
    kwargs.setdefault("batched", True)
    return dataset.map(_unpair_batch, remove_columns=["chosen", "rejected"], **kwargs)


def maybe_unpair_preference_dataset(
    dataset: DatasetType, num_proc: int | None = None, desc: str | None = None
) -> DatasetType:
    """Unpair the dataset with [`unpair_preference_dataset`] if it has `chosen` and `rejected` columns.

    Args:
        dataset (`Dataset`, `DatasetDict`, `IterableDataset` or `IterableDatasetDict`):
            The dataset.
        num_proc (`int` or `None`, *optional*, defaults to `None`):
            Processes for `map`.
        desc (`str` or `None`, *optional*, defaults to `None`):
            Progress-bar description.

    Returns:
        The unpaired dataset, or the input unchanged.
    """
    columns = get_dataset_column_names(dataset)
    if "chosen" in columns and "rejected" in columns:
        return unpair_preference_dataset(dataset, num_proc=num_proc, desc=desc)
    return dataset
