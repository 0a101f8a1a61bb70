"""Data collators of every trainer: tokenised examples (lists of ids and masks) in, padded tensors out.

Padding-free batches and packed sequences
-----------------------------------------
`DataCollatorForLanguageModeling(padding_free=True)` concatenates the batch into a single row `[1, total]` without
padding and describes where each sequence (or each document of a packed row, from `seq_lengths`) starts in two ways:

- `position_ids` that restart at 0 at every sequence start;
- the flash-attention varlen kwargs `cu_seq_lens_q` / `cu_seq_lens_k` (int32 cumulative lengths starting at 0) and
  `max_length_q` / `max_length_k` (the longest sequence, a Python int), plus `seq_idx` (int32 index of the sequence
  of every token, read by the Mamba-style kernels of hybrid models).

Which attention implementations keep the sequences apart (checked against transformers 5.x,
`masking_utils._preprocess_mask_arguments` / `find_packed_sequence_indices` and
`modeling_flash_attention_utils._flash_attention_forward`):

- `flash_attention_2/3/4`: yes. The varlen kwargs are used when given; without them the boundaries are read from
  `position_ids` (batch size 1 only). The key-value cache does not interfere.
- `sdpa`, `eager`, `flex_attention`: yes, through a block-diagonal causal mask that transformers builds from
  `position_ids` (a new sequence wherever the position does not increase by exactly 1), but ONLY when
  `attention_mask is None` and no cache is passed. Models create a `DynamicCache` by themselves whenever
  `use_cache` is true, which is the default of most configs even in training mode (gradient checkpointing turns it
  off): callers must pass `use_cache=False` to the forward, otherwise the sequences attend to each other silently.
  The varlen kwargs are ignored by these implementations.
- Packed rows without `padding_free` (examples with several `seq_lengths`) stay rows: the collator returns
  `position_ids` restarting at every document, makes each row's right padding one more document, and returns no
  `attention_mask`, so sdpa / eager / flex keep the documents apart row by row. That costs one row's length squared
  per row, where a flattened batch costs the whole batch's length squared: with these implementations packed rows
  are much faster than `padding_free=True`. FlashAttention needs the flattened form (`padding_free=True`): with a
  batch of several rows and no mask it would let the documents of a row attend to each other.
- Ordinary padded batches (one document per row) carry an `attention_mask`.

No token is predicted across a boundary: the label of the first token of every sequence / document is -100.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers.data.data_collator import DataCollatorMixin

from .utils import pad


IGNORE_INDEX = -100


def _as_tensor(values: Sequence[int] | torch.Tensor, dtype: torch.dtype = torch.long) -> torch.Tensor:
    return values.to(dtype) if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=dtype)


def _check_return_tensors(return_tensors: str) -> None:
    if return_tensors != "pt":
        raise ValueError(
            f"return_tensors={return_tensors!r} is not supported: the collators build torch tensors; use 'pt'."
        )


def _round_up(length: int, multiple: int | None) -> int:
    return length if multiple is None else math.ceil(length / multiple) * multiple


def _document_lengths(example: dict[str, Any], length: int) -> list[int]:
    """Lengths of the documents in an example's row: its `seq_lengths` (packed rows), else the whole row."""
    if "seq_lengths" not in example or example["seq_lengths"] is None:
        return [length]
    lengths = [int(n) for n in example["seq_lengths"]]
    if sum(lengths) != length or any(n <= 0 for n in lengths):
        raise ValueError(
            f"seq_lengths {lengths} must be positive and sum to the row length {length}. Pack the dataset with "
            "trl.pack_dataset, or drop the 'seq_lengths' column."
        )
    return lengths


def _positions(lengths: list[int]) -> torch.Tensor:
    return torch.cat([torch.arange(n) for n in lengths])


def _document_starts(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *lengths[:-1]]).cumsum(0)


def _cumulative(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)


@dataclass
class DataCollatorForLanguageModeling(DataCollatorMixin):
    """Collator for language modelling (SFT, GKD): pads or flattens `input_ids` and builds the `labels`.

    Each example has `input_ids` and optionally `labels` (else a copy of `input_ids`), `completion_mask`,
    `assistant_masks` (1 on the tokens to train on) and `seq_lengths` (lengths of the documents packed in the row).
    Labels are -100 on padding, outside `completion_mask` when `completion_only_loss`, outside `assistant_masks`
    when present, and at the first token of every document when the example has `seq_lengths` or the batch is
    padding-free. Packed rows (several `seq_lengths`) come back as rows with per-document `position_ids` and no
    `attention_mask`. See the module docstring for which attention implementations honour these boundaries.

    Args:
        pad_token_id (`int`):
            Token id used to pad `input_ids`.
        completion_only_loss (`bool`, *optional*, defaults to `True`):
            Mask the labels outside `completion_mask` (when the examples have one).
        padding_free (`bool`, *optional*, defaults to `False`):
            Concatenate the batch into one row `[1, total]` with `position_ids` restarting at every sequence and the
            flash-attention kwargs `cu_seq_lens_q/k`, `max_length_q/k`, plus `seq_idx`; no `attention_mask`.
        return_position_ids (`bool`, *optional*, defaults to `False`):
            In padded mode, also return `position_ids` (restarting at each document of packed rows). Padding-free
            batches always have them.
        pad_to_multiple_of (`int` or `None`, *optional*, defaults to `None`):
            Round the padded length (or, padding-free, the flattened row) up to a multiple of this value.
        return_tensors (`str`, *optional*, defaults to `"pt"`):
            Only `"pt"` is supported.

    Example:
        `DataCollatorForLanguageModeling(pad_token_id=0)([{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5]}])` gives
        `input_ids [[1, 2, 3], [4, 5, 0]]`, `attention_mask [[1, 1, 1], [1, 1, 0]]`,
        `labels [[1, 2, 3], [4, 5, -100]]` (plus `position_ids [[0, 1, 2], [0, 1, 0]]` with
        `return_position_ids=True`).
    """

    pad_token_id: int
    completion_only_loss: bool = True
    padding_free: bool = False
    return_position_ids: bool = False
    pad_to_multiple_of: int | None = None
    return_tensors: str = "pt"

    def __post_init__(self) -> None:
        _check_return_tensors(self.return_tensors)

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        input_ids = [_as_tensor(example["input_ids"]) for example in examples]
        empty = [i for i, ids in enumerate(input_ids) if ids.numel() == 0]
        if empty:
            raise ValueError(
                f"Examples {empty} of the batch have no input_ids; filter empty examples out of the dataset."
            )
        documents = [_document_lengths(example, len(ids)) for example, ids in zip(examples, input_ids)]
        labels = [self._labels(example, ids, docs) for example, ids, docs in zip(examples, input_ids, documents)]
        if self.padding_free:
            return self._flatten(input_ids, labels, [_positions(docs) for docs in documents], documents)
        if any(len(docs) > 1 for docs in documents):
            return self._packed_rows(input_ids, labels, documents)
        padded_ids = pad(input_ids, self.pad_token_id, pad_to_multiple_of=self.pad_to_multiple_of)
        # Ones over each row's tokens, zeros over the right padding, built in one comparison.
        lengths = torch.tensor([len(ids) for ids in input_ids])
        attention_mask = (torch.arange(padded_ids.shape[1]) < lengths[:, None]).long()
        batch = {
            "input_ids": padded_ids,
            "attention_mask": attention_mask,
            "labels": pad(labels, IGNORE_INDEX, pad_to_multiple_of=self.pad_to_multiple_of),
        }
        if self.return_position_ids:
            positions = [_positions(docs) for docs in documents]
            batch["position_ids"] = pad(positions, 0, pad_to_multiple_of=self.pad_to_multiple_of)
        return batch

    def _labels(self, example: dict[str, Any], input_ids: torch.Tensor, documents: list[int]) -> torch.Tensor:
        labels = _as_tensor(example["labels"]) if example.get("labels") is not None else input_ids.clone()
        if labels.shape != input_ids.shape:
            raise ValueError(
                f"labels has {labels.numel()} tokens but input_ids has {input_ids.numel()}; they must align."
            )
        masks = ["assistant_masks"] + (["completion_mask"] if self.completion_only_loss else [])
        for name in masks:
            if example.get(name) is not None:
                labels = labels.masked_fill(_as_tensor(example[name]) == 0, IGNORE_INDEX)
        if self.padding_free or "seq_lengths" in example:
            labels = labels.index_fill(0, _document_starts(documents), IGNORE_INDEX)
        return labels

    def _flatten(
        self,
        input_ids: list[torch.Tensor],
        labels: list[torch.Tensor],
        positions: list[torch.Tensor],
        documents: list[list[int]],
    ) -> dict[str, Any]:
        lengths = [n for docs in documents for n in docs]
        total = sum(lengths)
        filler = _round_up(total, self.pad_to_multiple_of) - total
        if filler:
            # The padding forms one more sequence, so the varlen kwargs still cover the whole row.
            lengths.append(filler)
            input_ids.append(torch.full((filler,), self.pad_token_id))
            labels.append(torch.full((filler,), IGNORE_INDEX))
            positions.append(torch.arange(filler))
        cu_seq_lens = _cumulative(lengths)
        longest = max(lengths) if lengths else 0
        seq_idx = torch.repeat_interleave(torch.arange(len(lengths), dtype=torch.int32), torch.tensor(lengths))
        return {
            "input_ids": torch.cat(input_ids).unsqueeze(0),
            "labels": torch.cat(labels).unsqueeze(0),
            "position_ids": torch.cat(positions).unsqueeze(0),
            "cu_seq_lens_q": cu_seq_lens,
            "cu_seq_lens_k": cu_seq_lens.clone(),
            "max_length_q": longest,
            "max_length_k": longest,
            "seq_idx": seq_idx.unsqueeze(0),
        }

    def _packed_rows(
        self, input_ids: list[torch.Tensor], labels: list[torch.Tensor], documents: list[list[int]]
    ) -> dict[str, Any]:
        """Packed rows kept as rows: `position_ids` restart at every document and the right padding of a row forms
        one more document, with no `attention_mask`, so transformers derives a block-diagonal mask per row
        (sdpa, eager, flex). Attention then costs one row's length squared per row, instead of the whole batch's
        length squared when the batch is flattened into one row (which only pays off with FlashAttention)."""
        width = _round_up(max(len(ids) for ids in input_ids), self.pad_to_multiple_of)
        positions = []
        for ids, docs in zip(input_ids, documents):
            filler = width - len(ids)
            positions.append(_positions(docs + ([filler] if filler else [])))
        return {
            "input_ids": pad(input_ids, self.pad_token_id, pad_to_multiple_of=self.pad_to_multiple_of),
            "labels": pad(labels, IGNORE_INDEX, pad_to_multiple_of=self.pad_to_multiple_of),
            "position_ids": torch.stack(positions),
        }


def _pair_rows(
    prompts: list[torch.Tensor], completions: list[torch.Tensor], max_length: int | None, truncation_mode: str
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Concatenate prompt and completion of each pair; returns the rows and their completion masks."""
    rows, masks = [], []
    for prompt, completion in zip(prompts, completions):
        row = torch.cat([prompt, completion])
        mask = torch.cat([torch.zeros_like(prompt), torch.ones_like(completion)])
        if max_length is not None and row.numel() > max_length:
            keep = slice(0, max_length) if truncation_mode == "keep_start" else slice(row.numel() - max_length, None)
            row, mask = row[keep], mask[keep]
        rows.append(row)
        masks.append(mask)
    return rows, masks


def _check_truncation_mode(truncation_mode: str) -> None:
    if truncation_mode not in ("keep_start", "keep_end"):
        raise ValueError(f"truncation_mode must be 'keep_start' or 'keep_end', got {truncation_mode!r}.")


def _padded_rows(rows: list[torch.Tensor], pad_token_id: int, multiple: int | None) -> dict[str, torch.Tensor]:
    return {
        "input_ids": pad(rows, pad_token_id, pad_to_multiple_of=multiple),
        "attention_mask": pad([torch.ones_like(row) for row in rows], 0, pad_to_multiple_of=multiple),
    }


def _scalars(examples: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Per-example scalars (e.g. precomputed reference log-probs) as float tensors, for the keys present."""
    return {
        key: torch.tensor([float(example[key]) for example in examples])
        for key in keys
        if key in examples[0] and examples[0][key] is not None
    }


@dataclass
class DataCollatorForPreference(DataCollatorMixin):
    """Collator for DPO: every pair becomes two rows, all chosen rows (prompt + chosen) before all rejected rows
    (prompt + rejected), right-padded.

    Examples have `prompt_ids`, `chosen_ids`, `rejected_ids` and optionally `ref_chosen_logps` /
    `ref_rejected_logps` (precomputed reference log-probs, passed through as float tensors of shape `[B]`).
    Output: `input_ids` and `attention_mask` of shape `[2B, L]`, and `completion_mask` (1 on chosen / rejected tokens).

    Args:
        pad_token_id (`int`):
            Token id used to pad `input_ids`.
        max_length (`int` or `None`, *optional*, defaults to `None`):
            Truncate each prompt + completion row to this many tokens.
        truncation_mode (`str`, *optional*, defaults to `"keep_start"`):
            `"keep_start"` keeps the first `max_length` tokens, `"keep_end"` the last ones.
        pad_to_multiple_of (`int` or `None`, *optional*, defaults to `None`):
            Round the padded length up to a multiple of this value.
        return_tensors (`str`, *optional*, defaults to `"pt"`):
            Only `"pt"` is supported.
    """

    pad_token_id: int
    max_length: int | None = None
    truncation_mode: str = "keep_start"
    pad_to_multiple_of: int | None = None
    return_tensors: str = "pt"

    def __post_init__(self) -> None:
        _check_return_tensors(self.return_tensors)
        _check_truncation_mode(self.truncation_mode)

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        prompts = [_as_tensor(example["prompt_ids"]) for example in examples] * 2
        completions = [_as_tensor(example["chosen_ids"]) for example in examples]
        completions += [_as_tensor(example["rejected_ids"]) for example in examples]
        rows, masks = _pair_rows(prompts, completions, self.max_length, self.truncation_mode)
        batch = _padded_rows(rows, self.pad_token_id, self.pad_to_multiple_of)
        batch["completion_mask"] = pad(masks, 0, pad_to_multiple_of=self.pad_to_multiple_of)
        batch.update(_scalars(examples, ("ref_chosen_logps", "ref_rejected_logps")))
        return batch


@dataclass
class DataCollatorForRewardPreference(DataCollatorMixin):
    """Collator for reward modelling: chosen rows then rejected rows, right-padded.

    Examples have `chosen_ids`, `rejected_ids` (full prompt + answer sequences) and optionally `margin`.
    Output: `input_ids` and `attention_mask` of shape `[2B, L]`, and `margin` (float, `[B]`) when present.

    Args:
        pad_token_id (`int`):
            Token id used to pad `input_ids`.
        pad_to_multiple_of (`int` or `None`, *optional*, defaults to `None`):
            Round the padded length up to a multiple of this value.
        return_tensors (`str`, *optional*, defaults to `"pt"`):
            Only `"pt"` is supported.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    return_tensors: str = "pt"

    def __post_init__(self) -> None:
        _check_return_tensors(self.return_tensors)

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        rows = [_as_tensor(example["chosen_ids"]) for example in examples]
        rows += [_as_tensor(example["rejected_ids"]) for example in examples]
        batch = _padded_rows(rows, self.pad_token_id, self.pad_to_multiple_of)
        batch.update(_scalars(examples, ("margin",)))
        return batch


@dataclass
class DataCollatorForUnpairedPreference(DataCollatorMixin):
    """Collator for KTO / BCO: one row per (prompt, completion, label) example, right-padded.

    Output: `input_ids`, `attention_mask`, `completion_mask` of shape `[B, L]` and `labels` (bool, `[B]`, True for
    desirable completions); `ref_logps` / `ref_kl_logps` are passed through as float tensors when present.

    With `calculate_kl`, also `kl_input_ids`, `kl_attention_mask` and `kl_completion_mask`: mismatched pairs that
    estimate the KL reference point of KTO, built by pairing prompt `i` with the completion of example
    `(i + 1) mod B`. With a batch of one the pair is the example itself, so the trainer needs batches of 2 or more.

    Args:
        pad_token_id (`int`):
            Token id used to pad `input_ids`.
        max_length (`int` or `None`, *optional*, defaults to `None`):
            Truncate each prompt + completion row to its first `max_length` tokens.
        pad_to_multiple_of (`int` or `None`, *optional*, defaults to `None`):
            Round the padded length up to a multiple of this value.
        calculate_kl (`bool`, *optional*, defaults to `True`):
            Also build the mismatched KL rows.
        return_tensors (`str`, *optional*, defaults to `"pt"`):
            Only `"pt"` is supported.
    """

    pad_token_id: int
    max_length: int | None = None
    pad_to_multiple_of: int | None = None
    calculate_kl: bool = True
    return_tensors: str = "pt"

    def __post_init__(self) -> None:
        _check_return_tensors(self.return_tensors)

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        prompts = [_as_tensor(example["prompt_ids"]) for example in examples]
        completions = [_as_tensor(example["completion_ids"]) for example in examples]
        batch = self._rows(prompts, completions, prefix="")
        batch["labels"] = torch.tensor([bool(example["label"]) for example in examples])
        if self.calculate_kl:
            shifted = completions[1:] + completions[:1]
            batch.update(self._rows(prompts, shifted, prefix="kl_"))
        batch.update(_scalars(examples, ("ref_logps", "ref_kl_logps")))
        return batch

    def _rows(self, prompts: list[torch.Tensor], completions: list[torch.Tensor], prefix: str) -> dict[str, Any]:
        rows, masks = _pair_rows(prompts, completions, self.max_length, "keep_start")
        batch = _padded_rows(rows, self.pad_token_id, self.pad_to_multiple_of)
        batch["completion_mask"] = pad(masks, 0, pad_to_multiple_of=self.pad_to_multiple_of)
        return {prefix + key: value for key, value in batch.items()}
