"""Configuration of [`XPOTrainer`]."""

from __future__ import annotations

from dataclasses import dataclass, field

from .online_dpo_config import OnlineDPOConfig


@dataclass
class XPOConfig(OnlineDPOConfig):
    r"""
    Configuration class for the [`XPOTrainer`]: the fields of [`OnlineDPOConfig`] plus

    alpha (`float` or `list[float]`, *optional*, defaults to `[1e-5]`):
        Weight α of the exploration bonus `α·log π_θ(y_ref)`; a list gives one value per epoch, the last one used for
        the remaining epochs.
    """

    _VALUE_LISTS = ("beta", "alpha")

    alpha: list[float] = field(
        default_factory=lambda: [1e-5], metadata={"help": "Exploration bonus weight, one value per epoch."}
    )
