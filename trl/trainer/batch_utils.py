"""Batches and samplers: splitting and shuffling dicts of tensors, dropping `None` values, `RepeatSampler`.
Re-exported by `trl.trainer.utils`, the reference's import path."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import torch
from torch.utils.data import Sampler

from .stat_utils import exact_div


TListOrMapping = TypeVar("TListOrMapping", list, dict)


# ------------------------------------------------------------------------------------------ batches and data
def split_tensor_dict(
    tensor_dict: dict[str, torch.Tensor | None], num_chunks: int
) -> list[dict[str, torch.Tensor | None]]:
    """Split every value of `tensor_dict` along its first dimension into `num_chunks` equal parts.

    `None` values and 0-dim tensors are copied into every part; lists are sliced like tensors.
    """
    batch_size = _batch_size(tensor_dict)
    chunk = exact_div(batch_size, num_chunks, f"split_tensor_dict: batch size {batch_size} into {num_chunks} chunks")

    def part(value: Any, i: int) -> Any:
        if value is None or (isinstance(value, torch.Tensor) and value.dim() == 0):
            return value
        return value[i * chunk : (i + 1) * chunk]

    return [{key: part(value, i) for key, value in tensor_dict.items()} for i in range(num_chunks)]


def shuffle_sequence_dict(seq_dict: dict[str, Sequence | None]) -> dict[str, Sequence | None]:
    """Apply one random permutation (from torch's global generator) to the first dimension of every value.

    `None` values and 0-dim tensors are returned unchanged.
    """
    permutation = torch.randperm(_batch_size(seq_dict))

    def permute(value: Any) -> Any:
        if value is None or (isinstance(value, torch.Tensor) and value.dim() == 0):
            return value
        if isinstance(value, torch.Tensor):
            return value[permutation.to(value.device)]
        return [value[i] for i in permutation.tolist()]

    return {key: permute(value) for key, value in seq_dict.items()}


def _batch_size(values: dict[str, Any]) -> int:
    for value in values.values():
        if value is not None and not (isinstance(value, torch.Tensor) and value.dim() == 0):
            return len(value)
    raise ValueError("Every value is None or a scalar: there is no batch dimension to split or shuffle.")


def remove_none_values(example: TListOrMapping) -> TListOrMapping:
    """Recursively drop the dict entries whose value is `None` (datasets fills absent keys of nested structs with
    `None`, e.g. `tool_calls` of messages that have none)."""
    if isinstance(example, list):
        return [remove_none_values(item) if isinstance(item, (dict, list)) else item for item in example]
    if isinstance(example, dict):
        return {
            key: remove_none_values(value) if isinstance(value, (dict, list)) else value
            for key, value in example.items()
            if value is not None
        }
    raise TypeError(f"remove_none_values expects a list or a dict, got {type(example).__name__}.")


class RepeatSampler(Sampler):
    """Sampler that repeats indices, so that one prompt yields several generations in the same batch.

    The (optionally shuffled) indices are cut into chunks of `batch_size` (an incomplete last chunk is dropped).
    Each chunk is emitted `repeat_count` times, and within it each index `mini_repeat_count` times in a row.

    Example: `RepeatSampler(range(4), mini_repeat_count=2, batch_size=2, repeat_count=2, shuffle=False)` yields
    `0 0 1 1 0 0 1 1 2 2 3 3 2 2 3 3`.

    Args:
        data_source (`Sized`):
            The dataset (only its length is used).
        mini_repeat_count (`int`):
            Consecutive repeats of each index (the number of generations per prompt).
        batch_size (`int`, *optional*, defaults to `1`):
            Number of unique indices per chunk.
        repeat_count (`int`, *optional*, defaults to `1`):
            Repeats of each whole chunk (e.g. reuse of the same prompts over several optimisation steps).
        shuffle (`bool`, *optional*, defaults to `True`):
            Shuffle the indices (a new permutation at every pass).
        seed (`int` or `None`, *optional*, defaults to `None`):
            Seed of the sampler's generator; `None` draws it from torch's global generator (so `set_seed` governs it).
    """

    def __init__(
        self,
        data_source: Sequence,
        mini_repeat_count: int,
        batch_size: int = 1,
        repeat_count: int = 1,
        shuffle: bool = True,
        seed: int | None = None,
    ):
        self.data_source = data_source
        self.mini_repeat_count = mini_repeat_count
        self.batch_size = batch_size
        self.repeat_count = repeat_count
        self.num_samples = len(data_source)
        self.shuffle = shuffle
        self.seed = seed
        if shuffle:
            self.generator = torch.Generator()
            if seed is None:
                seed = int(torch.randint(0, 2**62, (1,)).item())
            self.generator.manual_seed(seed)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = torch.randperm(self.num_samples, generator=self.generator).tolist()
        else:
            order = list(range(self.num_samples))
        for start in range(0, self.num_samples - self.batch_size + 1, self.batch_size):
            chunk = order[start : start + self.batch_size]
            for _ in range(self.repeat_count):
                for index in chunk:
                    yield from [index] * self.mini_repeat_count

    def __len__(self) -> int:
        return (self.num_samples // self.batch_size) * self.batch_size * self.mini_repeat_count * self.repeat_count
