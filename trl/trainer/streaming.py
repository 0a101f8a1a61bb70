"""Streaming (`IterableDataset`) training sets for the online trainers.

A dataset that can only be iterated has no indices for [`~trl.trainer.rollout_utils.RolloutSampler`]; its rows are
put in the same order by [`~trl.trainer.utils.repeat_iterable_dataset`] instead: `generation_batch_size //
num_generations` prompts are read at a time, each repeated `num_generations` times in a row, and the whole chunk
`steps_per_generation × num_iterations` times (so no generation batch is split, and every process receives its slice
of the same groups). [`RepeatedStream`] never ends: when the stream is exhausted it starts over with the next epoch,
calling the dataset's `set_epoch` (a stream shuffled with `dataset.shuffle(seed, buffer_size)` is then reshuffled).
Training length therefore comes from `max_steps`.

A resumed run is exact: the trainer skips the micro-steps already trained, and the stream is deterministic (same
epochs, same order), so the skipped rows are the ones the interrupted run consumed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from .runtime_utils import repeat_iterable_dataset


__all__ = ["RepeatedStream", "check_streaming_dataset", "is_streaming", "read_on_every_process", "training_rows"]


def is_streaming(dataset: Any) -> bool:
    """Whether `dataset` can only be iterated (no length)."""
    return dataset is not None and not hasattr(dataset, "__len__")


def check_streaming_dataset(args: Any, dataset: Any, name: str = "train_dataset") -> None:
    """Refuse a streaming training set without `max_steps` (its length is unknown), naming the fix."""
    if is_streaming(dataset) and (args.max_steps is None or args.max_steps <= 0):
        raise ValueError(
            f"The {name} is a streaming (iterable) dataset, whose length is unknown: set max_steps to the number of "
            "optimizer steps to train (e.g. max_steps=1000), or load the dataset without streaming."
        )


class RepeatedStream(torch.utils.data.IterableDataset):
    """An endless stream of a dataset's rows in the rollout order (module docstring).

    Args:
        dataset (`IterableDataset` or any iterable of rows):
            The streaming training set.
        mini_repeat_count (`int`):
            Consecutive repeats of each prompt (`num_generations`).
        batch_size (`int`):
            Distinct prompts per generation batch (`generation_batch_size // num_generations`).
        repeat_count (`int`):
            Repeats of each generation batch (`steps_per_generation × num_iterations`).
    """

    def __init__(self, dataset: Any, mini_repeat_count: int, batch_size: int, repeat_count: int):
        super().__init__()
        self.dataset = dataset
        self.mini_repeat_count, self.batch_size, self.repeat_count = mini_repeat_count, batch_size, repeat_count

    def __iter__(self) -> Iterator[Any]:
        epoch = 0
        while True:
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
            yielded = False
            for row in repeat_iterable_dataset(
                self.dataset, self.mini_repeat_count, self.batch_size, self.repeat_count
            ):
                yielded = True
                yield row
            if not yielded:
                raise ValueError(
                    f"The streaming train_dataset holds fewer rows than one generation batch needs ({self.batch_size} "
                    "prompts): use a larger dataset or a smaller generation_batch_size."
                )
            epoch += 1


@contextlib.contextmanager
def read_on_every_process(accelerator: Any) -> Iterator[None]:
    """Prepare dataloaders in this block without batch dispatching: every process reads the stream itself and keeps
    its slice of each global batch (accelerate's dispatcher would concatenate the batches, which are lists of row
    dicts, not tensors)."""
    config = accelerator.dataloader_config
    dispatch = config.dispatch_batches
    config.dispatch_batches = False
    try:
        yield
    finally:
        config.dispatch_batches = dispatch


@contextlib.contextmanager
def training_rows(trainer: Any) -> Iterator[Any]:
    """The dataset an online trainer's train dataloader reads, for the block that prepares it: the train dataset,
    or for a streaming one a [`RepeatedStream`] read by every process (see [`read_on_every_process`]). Without a
    train dataset, environments whose `reset()` supplies the prompts get an endless stream of empty prompts (it
    becomes `trainer.train_dataset`); otherwise `None`."""
    args = trainer.args
    if trainer.train_dataset is None and getattr(trainer, "_agent_features", {}).get("environment_factory"):
        from ..agent.agent_rollout import environment_prompts

        trainer.train_dataset = environment_prompts()
    dataset = trainer.train_dataset
    if not is_streaming(dataset):
        yield dataset
        return
    prompts = args.generation_batch_size // args.num_generations
    stream = RepeatedStream(dataset, args.num_generations, prompts, args.num_iterations * args.steps_per_generation)
    with read_on_every_process(trainer.accelerator):
        yield stream
