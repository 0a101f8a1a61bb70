"""The arguments of the [`BaseTrainer`] skeleton's steps: [`TrainerInputs`] (what the user passed, for `_validate`
and `_setup_auxiliary_models`) and [`LossCall`] (what `compute_loss` was called with, for `_loss_and_outputs`). Both
are importable from `trl.trainer.base_trainer` too."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class TrainerInputs:
    """What the user passed to a trainer, as given (`model` is `None` with `model_init`), for the steps that check or
    load from it: `_validate` and `_setup_auxiliary_models`."""

    model: Any
    ref_model: Any = None
    train_dataset: Any = None
    eval_dataset: Any = None
    processing_class: Any = None
    peft_config: Any = None
    quantization_config: Any = None
    model_init: Callable | None = None


@dataclass(frozen=True)
class LossCall:
    """What `compute_loss` was called with besides the model and the batch, for the `_loss_and_outputs` hook."""

    mode: str  # "train" or "eval" (`model.training`)
    num_items_in_batch: torch.Tensor | int | None = None  # `Trainer`'s labelled-token count (`None` in evaluation)
    return_outputs: bool = False  # whether the caller reads the outputs (evaluation predictions)
