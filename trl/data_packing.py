"""Truncation and packing of tokenized datasets, on pyarrow tables: [`truncate_dataset`] and [`pack_dataset`] (best-fit
decreasing, with or without splitting long sequences, or wrapped). Re-exported by `trl.data_utils`."""

from __future__ import annotations

import inspect
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict


DatasetType = TypeVar("DatasetType", Dataset, DatasetDict)
IterableDatasetType = TypeVar("IterableDatasetType", IterableDataset, IterableDatasetDict)


def _supported_map_kwargs(dataset: Any, map_kwargs: dict[str, Any]) -> dict[str, Any]:
    # IterableDataset.map accepts fewer arguments (no num_proc, desc, caching options).
    if isinstance(dataset, (Dataset, DatasetDict)):
        return dict(map_kwargs)
    accepted = inspect.signature(IterableDataset.map).parameters
    return {key: value for key, value in map_kwargs.items() if key in accepted and value is not None}


def _is_list_type(arrow_type: pa.DataType) -> bool:
    return pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)


def _truncate_table(table: pa.Table, max_length: int) -> pa.Table:
    columns = [
        pc.list_slice(column, 0, max_length) if _is_list_type(column.type) else column for column in table.columns
    ]
    return pa.Table.from_arrays(columns, names=table.column_names)


def truncate_dataset(
    dataset: DatasetType | IterableDatasetType, max_length: int, map_kwargs: dict[str, Any] | None = None
) -> DatasetType | IterableDatasetType:
    """Keep the first `max_length` elements of every list column (`input_ids`, masks, ...).

    Args:
        dataset (`Dataset`, `DatasetDict`, `IterableDataset` or `IterableDatasetDict`):
            A tokenised dataset.
        max_length (`int`):
            Maximum length kept.
        map_kwargs (`dict[str, Any]` or `None`, *optional*, defaults to `None`):
            Extra keyword arguments for `map`.

    Returns:
        The truncated dataset.

    Example:
    ```python
    >>> dataset = Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5]]})
    >>> truncate_dataset(dataset, max_length=2)["input_ids"]
    [[1, 2], [4, 5]]
    ```
    """
    if max_length < 1:
        raise ValueError(f"max_length must be a positive integer, got {max_length}.")
    kwargs = _supported_map_kwargs(dataset, map_kwargs or {})
    if isinstance(dataset, (Dataset, DatasetDict)):
        truncated = dataset.with_format("arrow").map(
            _truncate_table, batched=True, fn_kwargs={"max_length": max_length}, **kwargs
        )
        return truncated.with_format(None)

    def truncate(example: dict[str, Any]) -> dict[str, Any]:
        return {key: value[:max_length] for key, value in example.items() if isinstance(value, list)}

    return dataset.map(truncate, **kwargs)


def _best_fit_decreasing(lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """Assign items to bins of `capacity` with best-fit decreasing; returns each bin's item indices, in order.

    Items are taken longest first (ties by index) and put in the bin whose free space is the smallest that still
    fits, opening a bin when none does. Bins are found in O(log capacity) through a sorted list of the distinct
    free-space values, each mapped to the bins (oldest first) that have it.
    """
    import bisect
    from collections import deque

    order = np.argsort(-lengths, kind="stable")
    bins: list[list[int]] = []
    bins_by_space: dict[int, deque[int]] = {}
    spaces: list[int] = []  # sorted distinct free-space values that some bin has
    free = []
    for item in order.tolist():
        length = int(lengths[item])
        position = bisect.bisect_left(spaces, length)
        if position < len(spaces):
            space = spaces[position]
            bin_index = bins_by_space[space].popleft()
            if not bins_by_space[space]:
                del bins_by_space[space]
                spaces.pop(position)
            bins[bin_index].append(item)
        else:
            bin_index = len(bins)
            bins.append([item])
            free.append(capacity)
        free[bin_index] -= length
        space = free[bin_index]
        if space > 0:
            if space not in bins_by_space:
                bins_by_space[space] = deque()
                bisect.insort(spaces, space)
            bins_by_space[space].append(bin_index)
    return bins


def _gather_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Indices `starts[i] .. starts[i] + lengths[i] - 1` for every i, concatenated (vectorised)."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - offsets, lengths) + np.arange(total, dtype=np.int64)


def _list_array(offsets: np.ndarray, values: pa.Array, like: pa.DataType) -> pa.Array:
    if pa.types.is_large_list(like):
        return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), values)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


def _reference_lengths(table: pa.Table) -> tuple[str, np.ndarray]:
    list_columns = [name for name in table.column_names if _is_list_type(table.schema.field(name).type)]
    if not list_columns:
        raise ValueError(f"pack_dataset needs at least one list column (e.g. 'input_ids'), got {table.column_names}.")
    reference = "input_ids" if "input_ids" in list_columns else list_columns[0]
    lengths = pc.list_value_length(table[reference]).to_numpy(zero_copy_only=False).astype(np.int64)
    for name in list_columns:
        other = pc.list_value_length(table[name]).to_numpy(zero_copy_only=False)
        if not np.array_equal(other, lengths):
            raise ValueError(
                f"Column '{name}' has rows whose length differs from '{reference}', so they cannot be packed "
                f"together. Remove '{name}' before packing, or make its rows as long as '{reference}'."
            )
    return reference, lengths


def _pieces(lengths: np.ndarray, seq_length: int, split: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, start, length) of the pieces to pack: truncated rows, or rows cut into `seq_length` chunks.

    Empty rows make no piece: a zero-length document would only add a 0 to `seq_lengths`.
    """
    counts = -(-lengths // seq_length) if split else np.minimum(lengths, 1)
    rows = np.repeat(np.arange(len(lengths), dtype=np.int64), counts)
    starts = (np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)) * seq_length
    return rows, starts, np.minimum(seq_length, lengths[rows] - starts)


def _pack_bfd_table(table: pa.Table, seq_length: int, split: bool) -> pa.Table:
    if "seq_lengths" in table.column_names:
        raise ValueError("The dataset already has a 'seq_lengths' column: it is already packed.")
    _, lengths = _reference_lengths(table)
    rows, starts, piece_lengths = _pieces(lengths, seq_length, split)
    bins = _best_fit_decreasing(piece_lengths, seq_length)
    order = np.fromiter((piece for members in bins for piece in members), dtype=np.int64, count=len(rows))
    bin_sizes = np.fromiter((len(members) for members in bins), dtype=np.int64, count=len(bins))
    piece_offsets = np.concatenate([[0], np.cumsum(bin_sizes)])
    ordered_lengths = piece_lengths[order]
    token_offsets = np.concatenate([[0], np.cumsum(ordered_lengths)])[piece_offsets]

    columns, names = [], []
    for name in table.column_names:
        column = table[name].combine_chunks()
        if _is_list_type(column.type):
            row_starts = column.offsets.to_numpy()[:-1].astype(np.int64) - column.offsets[0].as_py()
            index = _gather_ranges(row_starts[rows[order]] + starts[order], ordered_lengths)
            values = column.flatten().take(pa.array(index))
            columns.append(_list_array(token_offsets, values, column.type))
        else:  # per-document values become a list per packed row
            columns.append(_list_array(piece_offsets, column.take(pa.array(rows[order])), pa.list_(column.type)))
        names.append(name)
    columns.append(_list_array(piece_offsets, pa.array(ordered_lengths, pa.int64()), pa.list_(pa.int64())))
    names.append("seq_lengths")
    return pa.Table.from_arrays(columns, names=names)


def _pack_wrapped_table(table: pa.Table, seq_length: int) -> pa.Table:
    scalar_columns = [name for name in table.column_names if not _is_list_type(table.schema.field(name).type)]
    if scalar_columns:
        raise ValueError(
            f"The 'wrapped' packing strategy only concatenates list columns; remove {scalar_columns} first, or use "
            "strategy='bfd', which keeps per-document values."
        )
    _reference_lengths(table)
    columns = []
    for name in table.column_names:
        values = table[name].combine_chunks().flatten()
        offsets = np.append(np.arange(0, len(values), seq_length, dtype=np.int64), len(values))
        if len(values) == 0:
            offsets = np.zeros(1, dtype=np.int64)
        columns.append(_list_array(offsets, values, table.schema.field(name).type))
    return pa.Table.from_arrays(columns, names=table.column_names)


def _pack_table(table: pa.Table, seq_length: int, strategy: str) -> pa.Table:
    if strategy == "wrapped":
        return _pack_wrapped_table(table, seq_length)
    return _pack_bfd_table(table, seq_length, split=strategy == "bfd_split")


def _pack_dict_batch(batch: dict[str, list], seq_length: int, strategy: str) -> dict[str, list]:
    return _pack_table(pa.Table.from_pydict(batch), seq_length, strategy).to_pydict()


def pack_dataset(
    dataset: DatasetType, seq_length: int, strategy: str = "bfd", map_kwargs: dict[str, Any] | None = None
) -> DatasetType:
    """Pack tokenised sequences into rows of at most `seq_length` tokens.

    Every list column (`input_ids`, `completion_mask`, `assistant_masks`, ...) is packed the same way; rows must have
    the same length in all of them; empty sequences are dropped. Packing happens within each `map` batch (set `batch_size` in `map_kwargs` to
    pack across more rows).

    Strategies:
    - `"bfd"`: best-fit decreasing. Sequences longer than `seq_length` are truncated. Each packed row lists its
      documents' lengths in a new `seq_lengths` column (used to restart position ids); other non-list columns become
      lists of the per-document values.
    - `"bfd_split"`: like `"bfd"`, but the overflow of long sequences is split into further pieces instead of being
      dropped.
    - `"wrapped"`: concatenate everything and cut every `seq_length` tokens, ignoring document boundaries.

    Args:
        dataset (`Dataset`, `DatasetDict`, `IterableDataset` or `IterableDatasetDict`):
            A tokenised dataset.
        seq_length (`int`):
            Target length of the packed rows.
        strategy (`str`, *optional*, defaults to `"bfd"`):
            `"bfd"`, `"bfd_split"` or `"wrapped"`.
        map_kwargs (`dict[str, Any]` or `None`, *optional*, defaults to `None`):
            Extra keyword arguments for `map`.

    Returns:
        The packed dataset.

    Example:
    ```python
    >>> dataset = Dataset.from_dict({"input_ids": [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10], [11]]})
    >>> pack_dataset(dataset, seq_length=4, strategy="bfd")[:]
    {'input_ids': [[1, 2, 3, 4], [8, 9, 10, 11], [6, 7]], 'seq_lengths': [[4], [3, 1], [2]]}
    >>> pack_dataset(dataset, seq_length=4, strategy="bfd_split")[:]
    {'input_ids': [[1, 2, 3, 4], [8, 9, 10, 5], [6, 7, 11]], 'seq_lengths': [[4], [3, 1], [2, 1]]}
    ```
    """
    if strategy not in ("bfd", "bfd_split", "wrapped"):
        raise ValueError(f"Invalid packing strategy {strategy!r}; use 'bfd', 'bfd_split' or 'wrapped'.")
    if seq_length < 1:
        raise ValueError(f"seq_length must be a positive integer, got {seq_length}.")
    kwargs = _supported_map_kwargs(dataset, map_kwargs or {})
    fn_kwargs = {"seq_length": seq_length, "strategy": strategy}
    if isinstance(dataset, (Dataset, DatasetDict)):
        packed = dataset.with_format("arrow").map(_pack_table, batched=True, fn_kwargs=fn_kwargs, **kwargs)
        return packed.with_format(None)
    return dataset.map(_pack_dict_batch, batched=True, fn_kwargs=fn_kwargs, **kwargs)
