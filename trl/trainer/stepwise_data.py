"""Stepwise-supervision data for process reward models: each step of a completion is followed by a separator whose
last token carries the step's label (1 correct, 0 incorrect); every other position is labelled -100.

Example-level functions (`build_stepwise_example`, ...) are pure; `tokenize_stepwise_batch` is the batched
`Dataset.map` function that tokenises all prompts and all steps of a batch in two tokenizer calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow.compute as pc
from datasets import Dataset, Features, IterableDataset, List, Value

from ..data_utils import get_dataset_type


_STEPWISE_COLUMNS = ("prompt", "completions", "labels")
IGNORE_INDEX = -100
# Explicit types for the tokenised columns: `datasets` would otherwise keep the type of the input's bool `labels`
# column for the new integer `labels` (turning -100 into True).
TOKENIZED_FEATURES = Features({"input_ids": List(Value("int32")), "labels": List(Value("int64"))})


# ---------------------------------------------------------------------------------------------- tokenisation
def step_class_labels(labels: Sequence[Any], last_step_only: bool = False) -> list[int]:
    """Turn per-step labels (bools, or 0/1 numbers) into class ids; `last_step_only` ignores all but the last.

    Args:
        labels (`Sequence[bool | int | float]`):
            One label per step.
        last_step_only (`bool`, *optional*, defaults to `False`):
            Give every step but the last the ignore index -100.
    """
    classes = []
    for label in labels:
        if isinstance(label, bool) or label in (0, 1):
            classes.append(int(label))
        else:
            raise ValueError(
                f"Step label {label!r} is not a class of the 2-label PRM: use booleans (or 0/1). Turn soft scores "
                "into classes first, e.g. `labels = [score > 0.5 for score in scores]`."
            )
    if last_step_only and classes:
        classes = [IGNORE_INDEX] * (len(classes) - 1) + classes[-1:]
    return classes


def build_stepwise_example(
    prompt_ids: list[int],
    steps_ids: list[list[int]],
    step_labels: list[int],
    separator_ids: list[int],
    bos_token_id: int | None = None,
    max_length: int | None = None,
    max_prompt_length: int | None = None,
    max_completion_length: int | None = None,
) -> dict[str, list[int]]:
    """Assemble `input_ids` and `labels` of one example from token ids.

    Every step is followed by `separator_ids`; the step's label sits on the last separator token and every other
    position (prompt included) gets -100. BOS is prepended to the prompt, which then keeps its last
    `max_prompt_length` tokens; the steps keep their first `max_completion_length` tokens and the sequence its first
    `max_length` tokens.

    Args:
        prompt_ids (`list[int]`):
            The prompt's token ids (no special tokens).
        steps_ids (`list[list[int]]`):
            Each step's token ids.
        step_labels (`list[int]`):
            Each step's class id, or -100 for a step that is not trained.
        separator_ids (`list[int]`):
            Token ids of the separator (at least one).
        bos_token_id (`int` or `None`, *optional*, defaults to `None`):
            Prepended to the prompt when not `None`.
        max_length, max_prompt_length, max_completion_length (`int` or `None`, *optional*, defaults to `None`):
            Truncation limits, `None` for none.
    """
    completion_ids: list[int] = []
    completion_labels: list[int] = []
    for ids, label in zip(steps_ids, step_labels, strict=True):
        completion_ids += [*ids, *separator_ids]
        completion_labels += [IGNORE_INDEX] * (len(ids) + len(separator_ids) - 1) + [label]
    if bos_token_id is not None:
        prompt_ids = [bos_token_id, *prompt_ids]
    if max_prompt_length is not None:
        prompt_ids = prompt_ids[-max_prompt_length:]
    if max_completion_length is not None:
        completion_ids = completion_ids[:max_completion_length]
        completion_labels = completion_labels[:max_completion_length]
    input_ids = prompt_ids + completion_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + completion_labels
    if max_length is not None:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return {"input_ids": input_ids, "labels": labels}


def separator_token_ids(tokenizer: Any, step_separator: str) -> list[int]:
    """Token ids of `step_separator` (without special tokens); raises if it tokenises to nothing."""
    ids = tokenizer.encode(step_separator, add_special_tokens=False)
    if not ids:
        raise ValueError(
            f"step_separator {step_separator!r} tokenises to no token, so there is no position for the step labels. "
            "Use a separator the tokenizer encodes, e.g. '\\n'."
        )
    return ids


def check_stepwise_example(example: dict[str, Any]) -> None:
    """Raise a `ValueError` naming the fix when an example is not standard stepwise supervision."""
    prompt, completions, labels = example["prompt"], example["completions"], example["labels"]
    if not isinstance(prompt, str) or not all(isinstance(step, str) for step in completions):
        raise ValueError(
            "PRMTrainer supports only the standard stepwise format: 'prompt' a string and 'completions' a list of "
            "strings. Render conversational prompts to text first (e.g. `tokenizer.apply_chat_template(prompt, "
            "tokenize=False, add_generation_prompt=True)`) and give each step as plain text."
        )
    if len(completions) != len(labels):
        raise ValueError(
            f"An example has {len(completions)} steps in 'completions' but {len(labels)} 'labels': every step needs "
            f"exactly one label. Prompt: {prompt[:80]!r}."
        )


def check_stepwise_columns(columns: list[str]) -> None:
    """Raise a `ValueError` naming the expected columns when a dataset is not stepwise supervision."""
    missing = [name for name in _STEPWISE_COLUMNS if name not in columns]
    if not missing:
        return
    try:
        found = f"it looks like a {get_dataset_type(columns)} dataset"
    except ValueError:
        found = "its format is not recognised"
    raise ValueError(
        f"PRMTrainer needs stepwise-supervision data with the columns 'prompt' (str), 'completions' (list of steps) "
        f"and 'labels' (one bool per step), or pre-tokenised 'input_ids' and 'labels'. The dataset has the columns "
        f"{sorted(columns)} (missing {missing}); {found}. Rename or convert the columns."
    )


def tokenize_stepwise_batch(
    batch: dict[str, list], tokenizer: Any, separator_ids: list[int], args: Any, is_eval: bool
) -> dict[str, list]:
    # One tokenizer call for all prompts and one for all steps of the batch: much faster than per-step calls.
    rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
    for row in rows:
        check_stepwise_example(row)
    prompts_ids = tokenizer(batch["prompt"], add_special_tokens=False)["input_ids"]
    flat_steps = [step for row in rows for step in row["completions"]]
    flat_ids = tokenizer(flat_steps, add_special_tokens=False)["input_ids"] if flat_steps else []
    output: dict[str, list] = {"input_ids": [], "labels": []}
    start = 0
    for row, prompt_ids in zip(rows, prompts_ids):
        steps_ids = flat_ids[start : start + len(row["completions"])]
        start += len(row["completions"])
        example = build_stepwise_example(
            prompt_ids,
            steps_ids,
            step_class_labels(row["labels"], args.train_on_last_step_only and not is_eval),
            separator_ids,
            tokenizer.bos_token_id,
            args.max_length,
            args.max_prompt_length,
            args.max_completion_length,
        )
        output["input_ids"].append(example["input_ids"])
        output["labels"].append(example["labels"])
    return output


def count_unlabelled(dataset: Dataset | IterableDataset) -> int:
    """Number of examples whose `labels` hold no label (every step was truncated away); 0 for iterable data."""
    if not isinstance(dataset, Dataset) or "labels" not in dataset.column_names or len(dataset) == 0:
        return 0
    labels = dataset.with_format("arrow")["labels"]
    labelled = pc.not_equal(pc.list_flatten(labels), IGNORE_INDEX)
    rows_with_label = pc.unique(pc.filter(pc.list_parent_indices(labels), labelled))
    return len(dataset) - len(rows_with_label)
