"""Configuration of [`NashMDTrainer`]."""

from __future__ import annotations

from dataclasses import dataclass, field

from .online_dpo_config import OnlineDPOConfig


@dataclass
class NashMDConfig(OnlineDPOConfig):
    r"""
    Configuration class for the [`NashMDTrainer`]: the fields of [`OnlineDPOConfig`] plus

    mixture_coef (`float` or `list[float]`, *optional*, defaults to `[0.5]`):
        λ of the geometric mixture `λ·logits_ref + (1 − λ)·logits_θ` the second completion of each pair is sampled
        from; a list gives one value per epoch, the last one used for the remaining epochs. Each must be in [0, 1].

    `beta` is the KL coefficient of the Nash-MD loss; `loss_type` is not used by Nash-MD (only `"sigmoid"`, the
    default, is accepted).
    """

    _VALUE_LISTS = ("beta", "mixture_coef")

    mixture_coef: list[float] = field(
        default_factory=lambda: [0.5], metadata={"help": "Geometric mixture coefficient, one value per epoch."}
    )

    def __post_init__(self):
        super().__post_init__()
        if any(not 0.0 <= value <= 1.0 for value in self.mixture_coef):
            raise ValueError(f"Every mixture_coef must be in [0, 1], got {self.mixture_coef}.")
        if self.loss_type != "sigmoid":
            raise ValueError(f"Nash-MD has one loss; loss_type={self.loss_type!r} is not used. Leave it 'sigmoid'.")
