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
    get_dataset_column_names,
    unpair_preference_dataset,
)
from .data_preparation import _map_kwargs, convert_to_chatml, first_example
from .preference_data import (
    PREFERENCE_TOKEN_COLUMNS,
    TokenizeOptions,
    _check_no_images,
    extract_prompts,
    tokenize_and_truncate,
    tokenize_prompt_completions,
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
    """Raise a clear error, naming `trainer_name` and the `columns` of the dataset, when they are neither unpaired
    nor paired preference data."""
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
    example: dict[str, Any], processing_class: Any, tools: list | None = None, eos_token: str | None = None
) -> dict[str, list[int]]:
    """Tokenise one unpaired example into `prompt_ids` and `completion_ids` (see
    [`~trl.trainer.preference_data.tokenize_prompt_completions`], whose arguments this function takes)."""
    return tokenize_prompt_completions(example, processing_class, ("completion",), tools, eos_token)


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
    dataset: Dataset | IterableDataset, processing_class: Any, options: TokenizeOptions | None = None, **fields: Any
) -> Dataset | IterableDataset:
    """Unpair (if paired), tokenise into `prompt_ids` / `completion_ids` (keeping `label`) and truncate: the
    unpaired counterpart of [`~trl.trainer.preference_data.prepare_preference_dataset`], with the same arguments
    (`dataset` is unpaired or paired preference data, see the module docstring)."""
    options = options or TokenizeOptions(**fields)
    check_unpaired_columns(get_dataset_column_names(dataset), options.trainer_name)
    _check_no_images(first_example(dataset), options.trainer_name)
    dataset = unpair_dataset(dataset, options.num_proc)
    example = first_example(dataset)
    _check_labels(example, options.trainer_name)
    if "completion_ids" not in example:
        dataset = convert_to_chatml(dataset, options.num_proc)
    return tokenize_and_truncate(dataset, processing_class, ("completion",), options)


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
