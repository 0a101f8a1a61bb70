"""Dataset preparation shared by the trainers: tokenising language-modelling and prompt-completion data (standard
or conversational), then truncating or packing. SFT uses it as is; GKD and the preference trainers reuse pieces.

Every function here maps over a `datasets.Dataset` or `IterableDataset`; the per-example work is in small pure
functions so it can be tested alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from datasets import Dataset, IterableDataset

from ..data_utils import (
    get_dataset_column_names,
    is_conversational,
    maybe_convert_to_chatml,
    pack_dataset,
    truncate_dataset,
)


def _map_kwargs(dataset: Dataset | IterableDataset, num_proc: int | None, desc: str) -> dict[str, Any]:
    # IterableDataset.map accepts neither num_proc nor desc.
    if isinstance(dataset, Dataset):
        return {"num_proc": num_proc, "desc": desc}
    return {}


AnyDataset = Dataset | IterableDataset
DatasetOrDict = AnyDataset | dict[str, AnyDataset]


def map_datasets(
    datasets: DatasetOrDict | None, function: Callable[[AnyDataset, str], Any], name: str
) -> DatasetOrDict | None:
    """Apply `function(dataset, name)` to `None`, one dataset, or every dataset of a dict.

    A dict entry `key` is named `f"{name}_{key}"` (e.g. `"eval_test"`, the prefix its metrics are reported under), so
    only the training data is ever named `"train"`, whatever the dict's keys.

    Args:
        datasets (`Dataset`, `IterableDataset`, `dict[str, Dataset | IterableDataset]` or `None`):
            The data; `None` is returned unchanged.
        function (`Callable[[Dataset | IterableDataset, str], Any]`):
            Called on each dataset with its name.
        name (`str`):
            Name of a single dataset, and prefix of the names of a dict's datasets.
    """
    if datasets is None:
        return None
    if isinstance(datasets, dict):
        return {key: function(dataset, f"{name}_{key}") for key, dataset in datasets.items()}
    return function(datasets, name)


def prepare_train_and_eval(
    train_dataset: AnyDataset | None,
    eval_dataset: DatasetOrDict | None,
    prepare: Callable[[AnyDataset, str], AnyDataset],
) -> tuple[AnyDataset | None, DatasetOrDict | None]:
    """Prepare the training data and every evaluation dataset the same way: the one place every trainer calls.

    `prepare(dataset, name)` receives `"train"` for the training data and `"eval"` or `"eval_<key>"` for the
    evaluation data (a `Dataset`, an `IterableDataset`, or a dict of them, evaluated under their keys).

    Args:
        train_dataset (`Dataset`, `IterableDataset` or `None`):
            Training data.
        eval_dataset (`Dataset`, `IterableDataset`, `dict[str, Dataset | IterableDataset]` or `None`):
            Evaluation data.
        prepare (`Callable[[Dataset | IterableDataset, str], Dataset | IterableDataset]`):
            The trainer's preparation of one dataset.

    Returns:
        `tuple`: the prepared `(train_dataset, eval_dataset)`, `None` where `None` was given.
    """
    return map_datasets(train_dataset, prepare, "train"), map_datasets(eval_dataset, prepare, "eval")


def to_map_style(dataset: AnyDataset, name: str = "eval") -> Dataset:
    """Return `dataset` as a map-style `Dataset`, reading a streaming one into memory (a `Dataset` is returned as is).

    For data that must be indexed by a sampler and is finite, e.g. the evaluation prompts of the online trainers,
    each repeated `num_generations_eval` times.

    Args:
        dataset (`Dataset` or `IterableDataset`):
            The data.
        name (`str`, *optional*, defaults to `"eval"`):
            Its name, for the error raised when it is empty.
    """
    if isinstance(dataset, Dataset):
        return dataset
    rows = list(dataset)
    if not rows:
        raise ValueError(f"The {name} dataset is empty: pass a dataset with at least one example.")
    return Dataset.from_list(rows, features=dataset.features)


# The columns `maybe_convert_to_chatml` converts.
_MESSAGE_COLUMNS = ("prompt", "completion", "chosen", "rejected", "messages", "conversations")


def _is_sharegpt(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and "from" in value[0]


def convert_to_chatml(dataset: AnyDataset, num_proc: int | None = None) -> AnyDataset:
    """ShareGPT data (`{"from", "value"}` turns, a `conversations` column) as ChatML (`{"role", "content"}` turns,
    `messages`); other data is returned unchanged.

    Every trainer converts first, so that format detection and the chat-template checks see conversational data.

    Args:
        dataset (`Dataset` or `IterableDataset`):
            The data.
        num_proc (`int` or `None`, *optional*, defaults to `None`):
            Processes for `Dataset.map`.
    """
    columns = get_dataset_column_names(dataset)
    if "conversations" in columns and "messages" not in columns:
        dataset = dataset.rename_column("conversations", "messages")
    example = first_example(dataset)
    if any(_is_sharegpt(example.get(key)) for key in _MESSAGE_COLUMNS):
        dataset = dataset.map(maybe_convert_to_chatml, **_map_kwargs(dataset, num_proc, "Converting to ChatML"))
    return dataset


def check_conversational_template(
    dataset: AnyDataset,
    processing_class: Any,
    assistant_only_loss: bool = False,
    require_prefix_preserving: bool = True,
) -> bool:
    """Run the chat-template checks ([`~trl.chat_template_utils.check_chat_template`]) when `dataset` is
    conversational (after [`convert_to_chatml`]); every trainer calls this before rendering conversations.

    Args:
        dataset (`Dataset` or `IterableDataset`):
            The data, in ChatML form.
        processing_class (`PreTrainedTokenizerBase` or `ProcessorMixin`):
            The tokenizer or processor whose template renders the data.
        assistant_only_loss (`bool`, *optional*, defaults to `False`):
            Also check the assistant mask.
        require_prefix_preserving (`bool`, *optional*, defaults to `True`):
            Check that rendering a prompt is a prefix of rendering prompt + completion.

    Returns:
        `bool`: whether the dataset is conversational (and so was checked).
    """
    if not is_conversational(first_example(dataset)):
        return False
    from ..chat_template_utils import check_chat_template

    check_chat_template(processing_class, assistant_only_loss, require_prefix_preserving)
    return True


def first_example(dataset: Dataset | IterableDataset) -> dict[str, Any]:
    """Return the first example of a dataset, raising a clear error when it is empty."""
    for example in dataset:
        return example
    raise ValueError("The dataset is empty: pass a dataset with at least one example.")


def lm_dataset_kind(columns: list[str], text_field: str = "text") -> str:
    """Name the kind of a dataset that SFT-style trainers accept, from its columns.

    Returns one of `"tokenized"`, `"prompt_completion"`, `"messages"`, `"text"`.

    Args:
        columns (`list[str]`):
            The dataset's column names.
        text_field (`str`, *optional*, defaults to `"text"`):
            The column holding plain text (`dataset_text_field`).
    """
    if "input_ids" in columns:
        return "tokenized"
    if "prompt" in columns and "completion" in columns:
        return "prompt_completion"
    if "messages" in columns:
        return "messages"
    if text_field in columns:
        return "text"
    if "conversations" in columns:
        return "messages"
    raise ValueError(
        f"Cannot tell the dataset's format from its columns {sorted(columns)}. Supported: language modeling "
        f"(a '{text_field}' column, or 'messages' for conversations; set `dataset_text_field` for another column "
        "name), prompt-completion ('prompt' and 'completion'), or pre-tokenized ('input_ids'). Use "
        "`formatting_func` to build the text from other columns."
    )


def _chat_kwargs(example: dict[str, Any]) -> dict[str, Any]:
    kwargs = dict(example.get("chat_template_kwargs") or {})
    tools = example.get("tools")
    if tools is not None:
        kwargs["tools"] = tools
    return kwargs


def _render_ids(processing_class: Any, messages: list[dict], assistant_mask: bool, **kwargs: Any) -> dict[str, list]:
    output = processing_class.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=assistant_mask, **kwargs
    )
    result = {"input_ids": list(output["input_ids"])}
    if assistant_mask:
        result["assistant_masks"] = list(output["assistant_masks"])
    return result


def tokenize_lm_example(
    example: dict[str, Any],
    processing_class: Any,
    text_field: str = "text",
    eos_token: str | None = None,
    assistant_only_loss: bool = False,
) -> dict[str, list[int]]:
    """Tokenise one language-modelling example (`text` or `messages`).

    Standard text gets `eos_token` appended when missing, so the model learns to stop. Conversations are rendered
    with the chat template (and its `tools` / `chat_template_kwargs`); with `assistant_only_loss` the template's
    generation markers give `assistant_masks`.

    Args:
        example (`dict[str, Any]`):
            The example.
        processing_class (`PreTrainedTokenizerBase`):
            The tokenizer.
        text_field (`str`, *optional*, defaults to `"text"`):
            Column holding standard text.
        eos_token (`str` or `None`, *optional*, defaults to `None`):
            Token appended to standard text; `None` appends nothing.
        assistant_only_loss (`bool`, *optional*, defaults to `False`):
            Also return `assistant_masks`.
    """
    if "messages" in example and is_conversational(example):
        return _render_ids(processing_class, example["messages"], assistant_only_loss, **_chat_kwargs(example))
    text = example[text_field]
    if eos_token is not None and not text.endswith(eos_token):
        text = text + eos_token
    return {"input_ids": processing_class(text=text)["input_ids"]}


def _prompt_render_kwargs(prompt: list[dict]) -> dict[str, bool]:
    # A prompt that ends with an assistant turn is continued (prefill); otherwise the assistant header is added.
    if prompt and prompt[-1]["role"] == "assistant":
        return {"continue_final_message": True}
    return {"add_generation_prompt": True}


def tokenize_prompt_completion_example(
    example: dict[str, Any],
    processing_class: Any,
    eos_token: str | None = None,
    assistant_only_loss: bool = False,
) -> dict[str, list[int]]:
    """Tokenise one prompt-completion example into `input_ids` and a `completion_mask` (1 on completion tokens).

    The prompt and prompt + completion are tokenised separately; the completion is what the second adds to the
    first. When tokenising the concatenation changes the prompt's tokens (a merge across the boundary), the prompt's
    own tokens are kept and the completion tokenised alone, so the mask is always exact.

    Args:
        example (`dict[str, Any]`):
            The example, with `prompt` and `completion` (both strings, or both lists of messages).
        processing_class (`PreTrainedTokenizerBase`):
            The tokenizer.
        eos_token (`str` or `None`, *optional*, defaults to `None`):
            Appended to a standard completion that lacks it.
        assistant_only_loss (`bool`, *optional*, defaults to `False`):
            Also return `assistant_masks` (conversational only).
    """
    if is_conversational(example):
        kwargs = _chat_kwargs(example)
        prompt_ids = processing_class.apply_chat_template(
            example["prompt"], tokenize=True, return_dict=True, **_prompt_render_kwargs(example["prompt"]), **kwargs
        )["input_ids"]
        full = _render_ids(processing_class, example["prompt"] + example["completion"], assistant_only_loss, **kwargs)
        full_ids = full["input_ids"]
        if list(full_ids[: len(prompt_ids)]) != list(prompt_ids):
            raise ValueError(
                "The chat template is not prefix-preserving: rendering the prompt alone is not a prefix of rendering "
                "prompt + completion, so completion tokens cannot be located. Use a chat template that renders past "
                "turns unchanged (e.g. set `chat_template_path`), or convert the data to language-modeling format."
            )
        full["completion_mask"] = [0] * len(prompt_ids) + [1] * (len(full_ids) - len(prompt_ids))
        return full
    if assistant_only_loss:
        raise ValueError("assistant_only_loss needs conversational data; use completion_only_loss for standard data.")
    completion = example["completion"]
    if eos_token is not None and not completion.endswith(eos_token):
        completion = completion + eos_token
    prompt_ids = list(processing_class(text=example["prompt"])["input_ids"])
    full_ids = list(processing_class(text=example["prompt"] + completion)["input_ids"])
    if full_ids[: len(prompt_ids)] != prompt_ids:
        completion_ids = processing_class(text=completion, add_special_tokens=False)["input_ids"]
        full_ids = prompt_ids + list(completion_ids)
    return {"input_ids": full_ids, "completion_mask": [0] * len(prompt_ids) + [1] * (len(full_ids) - len(prompt_ids))}


def apply_formatting_func(
    dataset: Dataset | IterableDataset, formatting_func: Callable[[dict], str], text_field: str, num_proc: int | None
) -> Dataset | IterableDataset:
    """Map `formatting_func` (example -> string) over the dataset into the `text_field` column."""

    def _format(example: dict[str, Any]) -> dict[str, str]:
        text = formatting_func(example)
        if not isinstance(text, str):
            raise ValueError(
                f"formatting_func must return a string for one example, got {type(text).__name__}. The batched "
                "form (returning a list) is no longer supported: format a single example."
            )
        return {text_field: text}

    # The formatted text replaces the raw columns, so the result is a plain language-modelling dataset.
    remove = [name for name in get_dataset_column_names(dataset) if name != text_field]
    return dataset.map(
        _format, remove_columns=remove, **_map_kwargs(dataset, num_proc, "Applying formatting function")
    )


def tokenize_dataset(
    dataset: Dataset | IterableDataset,
    processing_class: Any,
    text_field: str = "text",
    eos_token: str | None = None,
    assistant_only_loss: bool = False,
    num_proc: int | None = None,
) -> Dataset | IterableDataset:
    """Tokenise a language-modelling or prompt-completion dataset, dropping the raw-text columns.

    `dataset` is the untokenised data and `num_proc` the processes of `Dataset.map`; the other arguments are those of
    [`tokenize_lm_example`] (`eos_token` is appended to standard texts and completions that lack it).
    """
    dataset = convert_to_chatml(dataset, num_proc)
    columns = get_dataset_column_names(dataset)
    kind = lm_dataset_kind(columns, text_field)
    example = first_example(dataset)
    if assistant_only_loss and not is_conversational(example):
        raise ValueError(
            "assistant_only_loss=True needs conversational data ('messages' or conversational prompt/completion). "
            "For standard prompt-completion data use completion_only_loss instead."
        )
    if kind == "prompt_completion":

        def tokenize(ex):
            return tokenize_prompt_completion_example(ex, processing_class, eos_token, assistant_only_loss)
    else:

        def tokenize(ex):
            return tokenize_lm_example(ex, processing_class, text_field, eos_token, assistant_only_loss)

    remove = [name for name in columns if name not in ("input_ids",)]
    return dataset.map(tokenize, remove_columns=remove, **_map_kwargs(dataset, num_proc, "Tokenizing dataset"))


def keep_end_truncate(dataset: Dataset | IterableDataset, max_length: int, num_proc: int | None = None):
    """Keep the last `max_length` tokens of every list column (the deprecated `truncation_mode="keep_end"`)."""

    def _truncate(example: dict[str, Any]) -> dict[str, Any]:
        return {key: value[-max_length:] for key, value in example.items() if isinstance(value, list)}

    return dataset.map(_truncate, **_map_kwargs(dataset, num_proc, "Truncating dataset (keep_end)"))


def truncate_or_pack(
    dataset: Dataset | IterableDataset,
    max_length: int | None,
    packing: bool,
    packing_strategy: str = "bfd",
    truncation_mode: str = "keep_start",
    num_proc: int | None = None,
) -> Dataset | IterableDataset:
    """Pack the tokenised dataset into rows of `max_length` tokens, or truncate each sequence to it."""
    if max_length is None:
        return dataset
    keep = [c for c in get_dataset_column_names(dataset) if c in ("input_ids", "completion_mask", "assistant_masks")]
    extra = [c for c in get_dataset_column_names(dataset) if c not in keep and c != "seq_lengths"]
    if packing:
        if extra:
            dataset = dataset.remove_columns(extra)
        return pack_dataset(
            dataset, max_length, packing_strategy, map_kwargs=_map_kwargs(dataset, num_proc, "Packing")
        )
    if truncation_mode == "keep_end":
        return keep_end_truncate(dataset, max_length, num_proc)
    return truncate_dataset(dataset, max_length, map_kwargs=_map_kwargs(dataset, num_proc, "Truncating"))


def count_unlearnable(dataset: Dataset, mask_column: str) -> int:
    """Count examples whose loss mask has no 1 (nothing to learn from them, e.g. the prompt filled `max_length`)."""
    if not isinstance(dataset, Dataset) or mask_column not in dataset.column_names:
        return 0
    return sum(1 for mask in dataset[mask_column] if not any(mask))
