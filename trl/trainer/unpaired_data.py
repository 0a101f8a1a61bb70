"""Preparation of unpaired preference data (`prompt`, `completion`, `label`) for KTO and BCO.

Accepted input, per row: standard (strings) or conversational (lists of messages, also the ShareGPT `{"from",
"value"}` style) unpaired preference data; or paired preference data (`prompt`?, `chosen`, `rejected`), which is
unpaired first (`chosen` -> `label=True`, `rejected` -> `label=False`, implicit prompts extracted); or either kind
already tokenised (`prompt_ids`, `completion_ids`, `label` / `prompt_ids`, `chosen_ids`, `rejected_ids`).

Out come `prompt_ids`, `completion_ids` and `label`. Tokenisation follows the paired preference data (see
`trl.trainer.preference_data`): `prompt_ids + completion_ids` equals tokenising `prompt + completion` unless a
token merges across the boundary, conversations are rendered with the chat template, standard completions get the
EOS token.

KTO estimates its KL reference point on mismatched pairs: within each batch, prompt `i` with the completion of row
`(i + 1) mod B` (`DataCollatorForUnpairedPreference`). [`kl_pairs_dataset`] builds the same pairs as a dataset, for
precomputing their reference log-probs.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset, IterableDataset

from ..data_utils import (
    apply_chat_template,
    get_dataset_column_names,
    is_conversational,
    unpair_preference_dataset,
)
from .data_preparation import _map_kwargs, check_conversational_template, convert_to_chatml, first_example
from .model_utils import get_tokenizer
from .preference_data import (
    PREFERENCE_TOKEN_COLUMNS,
    _chat_kwargs,
    _check_no_images,
    _completion_ids,
    extract_prompts,
)


UNPAIRED_TOKEN_COLUMNS = ("prompt_ids", "completion_ids", "label")
_TEXT_COLUMNS = ("prompt", "completion", "label")
# Hints for the data types of the other trainers, by a column that identifies them.
_OTHER_FORMATS = (
    ("completions", "stepwise supervision (use PRMTrainer)"),
    ("messages", "language modeling (use SFTTrainer)"),
    ("text", "language modeling (use SFTTrainer)"),
)


# ---------------------------------------------------------------------------------------------- checks
def check_unpaired_columns(columns: list[str], trainer_name: str) -> None:
    """Raise a clear error when a dataset is neither unpaired nor paired preference data.

    Args:
        columns (`list[str]`):
            The dataset's column names.
        trainer_name (`str`):
            Named in the message, e.g. `"KTOTrainer"`.
    """
    present = set(columns)
    if present.issuperset(_TEXT_COLUMNS) or present.issuperset(UNPAIRED_TOKEN_COLUMNS):
        return
    if present.issuperset(("chosen", "rejected")) or present.issuperset(PREFERENCE_TOKEN_COLUMNS):
        return
    hint = next((f" The columns look like {kind}." for name, kind in _OTHER_FORMATS if name in present), "")
    if not hint and present.issuperset(("prompt", "completion")):
        hint = " Add a boolean 'label' column (True for desirable completions)."
    raise ValueError(
        f"{trainer_name} needs unpaired preference data ('prompt', 'completion', 'label') or paired preference data "
        f"('chosen', 'rejected', optionally 'prompt'); the dataset has {sorted(columns)}.{hint}"
    )


def _check_labels(example: dict[str, Any], trainer_name: str) -> None:
    label = example["label"]
    if not isinstance(label, bool) and label not in (0, 1):
        raise ValueError(
            f"{trainer_name} needs a boolean 'label' (True: desirable completion, False: undesirable), got "
            f"{label!r}. Map your labels to booleans first, e.g. `dataset.map(lambda x: {{'label': x['score'] > 0}})`."
        )


# ------------------------------------------------------------------------------------------ tokenising
def tokenize_unpaired_example(
    example: dict[str, Any],
    processing_class: Any,
    tools: list | None = None,
    eos_token: str | None = None,
) -> dict[str, list[int]]:
    """Tokenise one unpaired example into `prompt_ids` and `completion_ids`.

    Args:
        example (`dict[str, Any]`):
            A row with `prompt` and `completion` (strings, or lists of messages), optionally `tools` and
            `chat_template_kwargs`.
        processing_class (`PreTrainedTokenizerBase` or `ProcessorMixin`):
            The tokenizer (or a processor holding one).
        tools (`list` or `None`, *optional*, defaults to `None`):
            Tools for the chat template when the row has no `tools` column.
        eos_token (`str` or `None`, *optional*, defaults to `None`):
            Appended to a standard completion that does not end with it; `None` appends nothing.
    """
    tokenizer = get_tokenizer(processing_class)
    if is_conversational(example):
        messages = {"prompt": example["prompt"], "completion": example["completion"]}
        rendered = apply_chat_template(messages, tokenizer, **_chat_kwargs(example, tools))
        prompt, completion, special = rendered["prompt"], rendered["completion"], False
    else:
        prompt, completion, special = example["prompt"], example["completion"], True
        if eos_token is not None and not completion.endswith(eos_token):
            completion = completion + eos_token
    prompt_ids = list(tokenizer(text=prompt, add_special_tokens=special)["input_ids"])
    return {
        "prompt_ids": prompt_ids,
        "completion_ids": _completion_ids(tokenizer, prompt, prompt_ids, completion, special),
    }


def truncate_unpaired_example(
    example: dict[str, Any],
    max_prompt_length: int | None,
    max_completion_length: int | None,
    truncation_mode: str = "keep_end",
) -> dict[str, list[int]]:
    """Cut the prompt to `max_prompt_length` tokens and the completion to its first `max_completion_length` tokens.

    Args:
        example (`dict[str, Any]`):
            A tokenised row (`prompt_ids`, `completion_ids`).
        max_prompt_length (`int` or `None`):
            Prompt budget; `None` keeps the whole prompt.
        max_completion_length (`int` or `None`):
            Completion budget; `None` keeps it whole.
        truncation_mode (`str`, *optional*, defaults to `"keep_end"`):
            Which end of a long prompt to keep: `"keep_end"` (the text next to the completion) or `"keep_start"`.
    """
    prompt_ids = example["prompt_ids"]
    if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
        keep_end = truncation_mode == "keep_end"
        prompt_ids = prompt_ids[-max_prompt_length:] if keep_end else prompt_ids[:max_prompt_length]
    return {"prompt_ids": prompt_ids, "completion_ids": example["completion_ids"][:max_completion_length]}


def unpair_dataset(dataset: Dataset | IterableDataset, num_proc: int | None = None) -> Dataset | IterableDataset:
    """Turn paired preference data (text with explicit or implicit prompts, or tokenised) into unpaired data; leave
    unpaired data unchanged.

    Args:
        dataset (`Dataset` or `IterableDataset`):
            Preference data, paired or unpaired.
        num_proc (`int` or `None`, *optional*, defaults to `None`):
            Processes for `Dataset.map`.
    """
    columns = get_dataset_column_names(dataset)
    kwargs = _map_kwargs(dataset, num_proc, "Unpairing the preference data")
    if all(name in columns for name in PREFERENCE_TOKEN_COLUMNS):
        dataset = dataset.rename_columns({"chosen_ids": "chosen", "rejected_ids": "rejected"})
        return unpair_preference_dataset(dataset, **kwargs).rename_column("completion", "completion_ids")
    if "chosen" in columns and "rejected" in columns:
        return unpair_preference_dataset(extract_prompts(dataset, num_proc), **kwargs)
    return dataset


def prepare_unpaired_dataset(
    dataset: Dataset | IterableDataset,
    processing_class: Any,
    *,
    trainer_name: str,
    tools: list | None = None,
    eos_token: str | None = None,
    max_prompt_length: int | None = None,
    max_completion_length: int | None = None,
    truncation_mode: str = "keep_end",
    num_proc: int | None = None,
) -> Dataset | IterableDataset:
    """Unpair (if paired), tokenise into `prompt_ids` / `completion_ids` (keeping `label`) and truncate.

    Other columns (e.g. precomputed `ref_logps`) are kept; the text columns are removed.

    Args:
        dataset (`Dataset` or `IterableDataset`):
            Preference data (see the module docstring).
        processing_class (`PreTrainedTokenizerBase` or `ProcessorMixin`):
            The tokenizer.
        trainer_name (`str`):
            Named in error messages.
        tools (`list` or `None`, *optional*, defaults to `None`):
            Tools for the chat template.
        eos_token (`str` or `None`, *optional*, defaults to `None`):
            Appended to standard completions.
        max_prompt_length (`int` or `None`, *optional*, defaults to `None`):
            Prompt budget (see [`truncate_unpaired_example`]).
        max_completion_length (`int` or `None`, *optional*, defaults to `None`):
            Keep the first tokens of each completion.
        truncation_mode (`str`, *optional*, defaults to `"keep_end"`):
            Which end of a long prompt to keep.
        num_proc (`int` or `None`, *optional*, defaults to `None`):
            Processes for `Dataset.map`.
    """
    check_unpaired_columns(get_dataset_column_names(dataset), trainer_name)
    example = first_example(dataset)
    _check_no_images(example, trainer_name)
    dataset = unpair_dataset(dataset, num_proc)
    example = first_example(dataset)
    _check_labels(example, trainer_name)
    if "completion_ids" not in example:
        dataset = convert_to_chatml(dataset, num_proc)
        check_conversational_template(dataset, processing_class)

        def tokenize(example: dict[str, Any]) -> dict[str, list[int]]:
            return tokenize_unpaired_example(example, processing_class, tools, eos_token)

        remove = ["prompt", "completion"]
        dataset = dataset.map(tokenize, remove_columns=remove, **_map_kwargs(dataset, num_proc, "Tokenizing"))
    if max_prompt_length is not None or max_completion_length is not None:

        def truncate(example: dict[str, Any]) -> dict[str, list[int]]:
            return truncate_unpaired_example(example, max_prompt_length, max_completion_length, truncation_mode)

        dataset = dataset.map(truncate, **_map_kwargs(dataset, num_proc, "Truncating"))
    return dataset


# ---------------------------------------------------------------------------------------- dataset facts
def label_counts(dataset: Any) -> tuple[int, int] | None:
    """`(desirable, undesirable)` row counts of a prepared map-style dataset; `None` for an iterable one.

    Args:
        dataset (`Dataset` or `IterableDataset`):
            Prepared unpaired data.
    """
    if not isinstance(dataset, Dataset):
        return None
    desirable = sum(bool(label) for label in dataset["label"])
    return desirable, len(dataset) - desirable


def count_empty_completions(dataset: Any, max_length: int | None) -> int:
    """Rows whose completion has no token left once the row is cut to its first `max_length` tokens.

    Args:
        dataset (`Dataset`):
            Prepared unpaired data.
        max_length (`int` or `None`):
            Row length limit; `None` means no cut.
    """
    if not isinstance(dataset, Dataset):
        return 0
    return sum(
        1
        for prompt, completion in zip(dataset["prompt_ids"], dataset["completion_ids"])
        if not completion or (max_length is not None and len(prompt) >= max_length)
    )


def kl_pairs_dataset(dataset: Dataset, batch_size: int) -> Dataset:
    """The mismatched pairs KTO's KL estimate uses, one per row: `prompt_ids` of row `i` and `completion_ids` of row
    `(i + 1) mod n` within consecutive blocks of `batch_size` rows (the last block may be shorter).

    These are the pairs `DataCollatorForUnpairedPreference` builds for batches that are consecutive blocks of the
    dataset, which is what sequential sampling gives every process (each takes whole per-device batches).

    Args:
        dataset (`Dataset`):
            Prepared unpaired data.
        batch_size (`int`):
            The per-device batch size of the loader that will read `dataset`.
    """

    def shift(batch: dict[str, list]) -> dict[str, list]:
        completions = batch["completion_ids"]
        return {**batch, "completion_ids": completions[1:] + completions[:1]}

    rows = dataset.select_columns(list(UNPAIRED_TOKEN_COLUMNS))
    # One map batch is one block: no num_proc, which would split the dataset at other boundaries.
    return rows.map(shift, batched=True, batch_size=batch_size, desc="Pairing prompts with other completions")
