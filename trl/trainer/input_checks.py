"""Checks of what a user passes to a trainer: the config, the model path, the dataset's values, the output directory.

Each check raises a `ValueError` (or `FileNotFoundError` / `TypeError`) whose message names the offending field,
column or row and the fix, before any training step runs, instead of letting a cryptic error surface later (or a
run train on nothing). Mistakes that leave a run able to train sensibly only warn.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import warnings
from collections.abc import Iterable
from typing import Any

from datasets import Dataset, IterableDataset

from ..data_utils import get_dataset_column_names


# ------------------------------------------------------------------------------------------------------ config
def check_training_args(args: Any) -> None:
    """Refuse batch sizes, accumulation steps and step/epoch counts that divide by zero or train nothing.

    Args:
        args (`TrainingArguments`):
            The trainer config.
    """
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        value = getattr(args, name, None)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}. Set it to 1 or more.")
    max_steps, epochs = args.max_steps, args.num_train_epochs
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int)):
        raise ValueError(f"`max_steps` must be an integer, got {max_steps!r}. Use a whole number of steps, or -1.")
    if (max_steps is None or max_steps <= 0) and not epochs > 0:
        raise ValueError(
            f"`max_steps={max_steps}` with `num_train_epochs={epochs}` trains nothing: set `max_steps` to a positive "
            "number of steps, or leave it at -1 and set `num_train_epochs` > 0."
        )


_LENGTH_FIELDS = ("max_length", "max_prompt_length", "max_completion_length")


def model_position_limit(model: Any) -> int | None:
    """The longest sequence the model's position embeddings cover (`max_position_embeddings` / `n_positions`)."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _field_default(args: Any, name: str) -> Any:
    for field in dataclasses.fields(type(args)):
        if field.name == name:
            return field.default
    return dataclasses.MISSING


def check_lengths_fit_model(args: Any, model: Any) -> None:
    """Refuse a length limit set beyond the model's position limit (its sequences would overflow the positions).

    Only values the user set are checked: a trl default larger than a small model's limit only caps sequences the
    data is unlikely to reach.

    Args:
        args (`TrainingArguments`):
            The trainer config (`max_length`, `max_prompt_length`, `max_completion_length` where it has them).
        model (`PreTrainedModel`):
            The model, whose config gives the limit.
    """
    limit = model_position_limit(model)
    if limit is None:
        return
    for name in _LENGTH_FIELDS:
        value = getattr(args, name, None)
        if isinstance(value, int) and value > limit and value != _field_default(args, name):
            raise ValueError(
                f"`{name}={value}` exceeds the model's position limit of {limit} tokens (max_position_embeddings): "
                f"sequences that long cannot be encoded. Set `{name}` to at most {limit}."
            )


# ------------------------------------------------------------------------------------------------------ model path
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def check_model_path(model: Any) -> None:
    """Refuse a model string that is meant as a local path but does not exist (the Hub would report it as a malformed
    repo id).

    Args:
        model (`str` or `PreTrainedModel`):
            What the user passed as the model.
    """
    if not isinstance(model, str) or os.path.exists(model):
        return
    looks_like_path = model.startswith(("/", ".", "~")) or "\\" in model or not _HUB_ID.match(model)
    if looks_like_path or ".." in model or "--" in model:
        raise FileNotFoundError(
            f"The model path {model!r} does not exist. Check the path (it is resolved from {os.getcwd()!r}), or pass "
            "a Hub model id such as 'Qwen/Qwen2.5-0.5B'."
        )


# ------------------------------------------------------------------------------------------------------ datasets
def _check_messages(messages: list, column: str, row: int, name: str) -> None:
    for index, message in enumerate(messages):
        # ShareGPT-style messages ('from' / 'value') are converted to role/content later.
        if not isinstance(message.get("role", message.get("from")), str):
            raise ValueError(
                f"Message {index} of row {row} in the {name} dataset's '{column}' column has no 'role' (got "
                f"{message!r}). Every message needs a 'role' ('system', 'user', 'assistant' or 'tool'); fix or filter "
                "that row."
            )


def _check_value(value: Any, column: str, row: int, name: str) -> None:
    if isinstance(value, str):
        return
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        _check_messages(value, column, row, name)
        return
    raise ValueError(
        f"Row {row} of the {name} dataset's '{column}' column holds {value!r} ({type(value).__name__}), not a "
        f"string or a list of role/content messages. Convert the column to text (e.g. `dataset.map(lambda x: "
        f"{{'{column}': str(x['{column}'])}})`) or filter out the rows where it is missing."
    )


def _rows(dataset: Dataset | IterableDataset, column: str) -> Iterable[Any]:
    if isinstance(dataset, Dataset):
        return dataset[column]
    # A stream cannot be scanned ahead of training: its first example stands for the rest.
    for example in dataset:
        return [example[column]]
    return []


def check_text_columns(
    dataset: Dataset | IterableDataset, columns: Iterable[str], name: str, non_empty: Iterable[str] = ()
) -> None:
    """Check that the text columns hold strings (or lists of role/content messages), naming the first bad row.

    Rows of empty text carry no token to learn from: all of them empty raises, some of them warns.

    Args:
        dataset (`Dataset` or `IterableDataset`):
            The untokenised data.
        columns (`Iterable[str]`):
            The columns to check; those the dataset lacks are skipped.
        name (`str`):
            The dataset's name in messages (`"train"`, `"eval"`, ...).
        non_empty (`Iterable[str]`, *optional*, defaults to `()`):
            Columns whose empty strings are reported.
    """
    present = [column for column in dict.fromkeys(columns) if column in get_dataset_column_names(dataset)]
    for column in present:
        empty = total = 0
        for row, value in enumerate(_rows(dataset, column)):
            _check_value(value, column, row, name)
            total += 1
            empty += isinstance(value, str) and not value.strip()
        if column in non_empty and empty:
            _report_empty(column, empty, total, name)


def _report_empty(column: str, empty: int, total: int, name: str) -> None:
    message = (
        f"{empty} of {total} rows of the {name} dataset have an empty '{column}': they contain no token to learn "
        f"from (their loss is 0). Filter them out, e.g. `dataset.filter(lambda x: x['{column}'].strip() != '')`."
    )
    if empty == total:
        raise ValueError(message)
    warnings.warn(message, UserWarning, stacklevel=4)


def warn_unlearnable(count: int, rows: str, fix: str) -> None:
    """Warn that `count` rows of a prepared dataset add nothing to the loss; nothing when `count` is 0.

    Args:
        count (`int`):
            How many rows.
        rows (`str`):
            What they are, read after the count: e.g. `"example(s) of the train dataset have no completion token
            left after truncation (max_length=8)"`.
        fix (`str`):
            What to change.
    """
    if count:
        warnings.warn(f"{count} {rows}: they add nothing to the loss. {fix}", UserWarning, stacklevel=4)


def check_distinct_pairs(dataset: Dataset, name: str) -> None:
    """Refuse preference pairs whose chosen and rejected completions are the same tokens (their gradient is 0).

    All pairs identical raises; some warns.

    Args:
        dataset (`Dataset`):
            Tokenised preference data (`chosen_ids`, `rejected_ids`).
        name (`str`):
            The dataset's name in messages.
    """
    if not isinstance(dataset, Dataset) or not {"chosen_ids", "rejected_ids"} <= set(dataset.column_names):
        return
    pairs = list(zip(dataset["chosen_ids"], dataset["rejected_ids"]))
    same = sum(1 for chosen, rejected in pairs if list(chosen) == list(rejected))
    if not same:
        return
    message = (
        f"{same} of {len(pairs)} pairs of the {name} dataset have identical chosen and rejected completions: the "
        "preference loss gives them no gradient. Remove them, e.g. `dataset.filter(lambda x: x['chosen'] != "
        "x['rejected'])`."
    )
    if same == len(pairs):
        raise ValueError(message)
    warnings.warn(message, UserWarning, stacklevel=3)


# ------------------------------------------------------------------------------------------------------ output dir
_MODEL_FILES = ("README.md", "config.json", "adapter_config.json", "*.safetensors", "pytorch_model*.bin")


def files_to_overwrite(output_dir: str) -> list[str]:
    """The model files a run would write over in `output_dir` (its top level, not the `checkpoint-*` folders)."""
    if not os.path.isdir(output_dir):
        return []
    found: list[str] = []
    for pattern in _MODEL_FILES:
        found += [os.path.basename(path) for path in glob.glob(os.path.join(glob.escape(output_dir), pattern))]
    return sorted(set(found))


def check_output_dir(output_dir: str, overwrite_output_dir: bool) -> None:
    """Refuse to start a run whose output directory already holds a model or model card this run did not write.

    Args:
        output_dir (`str`):
            The run's `output_dir`.
        overwrite_output_dir (`bool`):
            The config's `overwrite_output_dir`: `True` allows writing over them.
    """
    if overwrite_output_dir:
        return
    existing = files_to_overwrite(output_dir)
    if existing:
        raise ValueError(
            f"The output directory {output_dir!r} already holds {existing}, which this run would overwrite. Choose "
            "another `output_dir`, resume with `resume_from_checkpoint`, or set `overwrite_output_dir=True` to "
            "write over them."
        )


# ------------------------------------------------------------------------------------------------------ resume
def logged_num_tokens(checkpoint: str) -> int | None:
    """The last `num_tokens` logged before `checkpoint` was saved (from its `trainer_state.json`), or `None`."""
    path = os.path.join(checkpoint, "trainer_state.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as file:
        history = json.load(file).get("log_history", [])
    for entry in reversed(history):
        if "num_tokens" in entry:
            return int(entry["num_tokens"])
    return None
