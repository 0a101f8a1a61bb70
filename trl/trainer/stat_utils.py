"""NaN-aware and masked statistics, running moments over processes, and the evaluation accuracy. Re-exported by
`trl.trainer.utils`, the reference's import path."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


# ------------------------------------------------------------------------------------------------- statistics
def nanstd(tensor: torch.Tensor, dim: int | tuple[int, ...] | None = None, keepdim: bool = False) -> torch.Tensor:
    """Standard deviation ignoring NaNs, with Bessel's correction (divides by `n - 1`, `n` the non-NaN count).

    NaN where fewer than two values are not NaN.
    """
    count = (~torch.isnan(tensor)).sum(dim=dim, keepdim=True)
    mean = torch.nansum(tensor, dim=dim, keepdim=True) / count
    squares = torch.nansum((tensor - mean) ** 2, dim=dim, keepdim=keepdim)
    if not keepdim:
        count = count.squeeze(dim) if dim is not None else count.reshape(())
    variance = squares / (count - 1)
    return torch.where(count > 1, variance.sqrt(), torch.full_like(variance, float("nan")))


def nanmin(tensor: torch.Tensor) -> torch.Tensor:
    """Minimum ignoring NaNs; NaN if every value is NaN."""
    if torch.isnan(tensor).all():
        return torch.tensor(float("nan"), dtype=tensor.dtype, device=tensor.device)
    return torch.min(tensor[~torch.isnan(tensor)])


def nanmax(tensor: torch.Tensor) -> torch.Tensor:
    """Maximum ignoring NaNs; NaN if every value is NaN."""
    if torch.isnan(tensor).all():
        return torch.tensor(float("nan"), dtype=tensor.dtype, device=tensor.device)
    return torch.max(tensor[~torch.isnan(tensor)])


def masked_mean(values: torch.Tensor, mask: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """Mean of `values` where `mask` is 1 (over `axis`, or over everything)."""
    if axis is None:
        return (values * mask).sum() / mask.sum()
    return (values * mask).sum(axis) / mask.sum(axis)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of `values` where `mask` is 1; `unbiased` applies Bessel's correction `n / (n - 1)`."""
    centered = values - masked_mean(values, mask)
    variance = masked_mean(centered**2, mask)
    if unbiased:
        count = mask.sum()
        if count < 2:
            raise ValueError(
                f"The mask selects {int(count)} value(s); an unbiased variance needs at least 2. Check the mask, or "
                "pass unbiased=False."
            )
        variance = variance * count / (count - 1)
    return variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise `values` to mean 0 and (unbiased) variance 1 over the masked entries.

    With `shift_mean=False` the mean is added back: only the scale changes.
    """
    mean, variance = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    return whitened if shift_mean else whitened + mean


def cap_exp(value: torch.Tensor, cap: float = -1) -> torch.Tensor:
    """`exp(min(value, cap))`; `cap < 0` uses the largest exponent whose `exp` is finite in `value.dtype`."""
    if cap >= 0:
        return torch.exp(torch.clamp(value, max=cap))
    limit = torch.tensor(math.log(torch.finfo(value.dtype).max), dtype=value.dtype, device=value.device)
    if torch.isinf(torch.exp(limit)):  # the logarithm rounded up in this dtype
        limit = torch.nextafter(limit, torch.tensor(-math.inf, dtype=value.dtype, device=value.device))
    return torch.exp(torch.minimum(value, limit))


def exact_div(a: int, b: int, custom_error_message: str = "") -> int:
    """`a // b`, raising `ValueError` when `b` does not divide `a`."""
    quotient = a // b
    if a != quotient * b:
        raise ValueError(f"{custom_error_message}, inexact division: {a} / {b} = {a / b}")
    return quotient


@dataclass
class RunningMoments:
    """Running mean and standard deviation of every value passed to [`~RunningMoments.update`].

    Args:
        accelerator (`Accelerator` or `None`, *optional*, defaults to `None`):
            When given, `update` combines the values of all processes (each process then holds the same moments).
    """

    accelerator: Any = None
    mean: float = 0.0
    std: float = 1.0
    var: float = 1.0
    count: float = 1e-24

    @torch.no_grad()
    def update(self, xs: torch.Tensor) -> tuple[float, float]:
        """Fold the batch `xs` into the running moments (parallel-variance merge of Chan et al.).

        Returns:
            `tuple[float, float]`: the batch mean and its Bessel-corrected standard deviation.
        """
        batch_mean, batch_var, batch_count = _global_moments(self.accelerator, xs)
        delta = batch_mean - self.mean
        total = self.count + batch_count
        merged_squares = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.mean += delta * batch_count / total
        self.var = merged_squares / total
        self.std = math.sqrt(self.var * total / (total - 1)) if total > 1 else 0.0
        self.count = total
        batch_std = math.sqrt(batch_var * batch_count / (batch_count - 1)) if batch_count > 1 else 0.0
        return batch_mean, batch_std

    def save_to_json(self, json_path: str) -> None:
        """Write the moments to `json_path` (from the main process only when an accelerator is set)."""
        if self.accelerator is not None and not self.accelerator.is_main_process:
            return
        with open(json_path, "w", encoding="utf-8") as file:
            json.dump(self.state_dict(), file, indent=2, sort_keys=True)

    @classmethod
    def load_from_json(cls, accelerator: Any, json_path: str) -> RunningMoments:
        with open(json_path, encoding="utf-8") as file:
            return cls(accelerator=accelerator, **json.load(file))

    def state_dict(self) -> dict[str, float]:
        """The moments as plain floats (for checkpoints)."""
        return {name: float(getattr(self, name)) for name in ("mean", "std", "var", "count")}


def _global_moments(accelerator: Any, xs: torch.Tensor) -> tuple[float, float, float]:
    """Mean, population variance and count of `xs` over all processes."""
    xs = xs.detach().double()
    stats = torch.stack([xs.sum(), torch.tensor(float(xs.numel()), dtype=torch.float64, device=xs.device)])
    if accelerator is not None and accelerator.num_processes > 1:
        stats = accelerator.reduce(stats, reduction="sum")
    total, count = stats.tolist()
    mean = total / count
    squares = ((xs - mean) ** 2).sum()
    if accelerator is not None and accelerator.num_processes > 1:
        squares = accelerator.reduce(squares, reduction="sum")
    return mean, float(squares) / count, count


def compute_accuracy(eval_pred: Any) -> dict[str, float]:
    """Accuracy of reward-model (or token-classification) predictions, for `Trainer(compute_metrics=...)`.

    - Predictions of shape `(N, 2)` hold the (chosen, rejected) rewards; the prediction is correct when the reward of
      the column given by the label (0 = chosen) is the larger one. Pairs with equal rewards are not counted (a
      warning says how many), since neither answer is preferred.
    - Predictions of shape `(N, T, C)` are token logits; accuracy is over positions whose label is not -100.
    """
    predictions, labels = eval_pred
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.ndim == 3:
        predicted = np.argmax(predictions, axis=-1)
        keep = labels != -100
        return {"accuracy": float((predicted[keep] == labels[keep]).mean())}
    ties = predictions[:, 0] == predictions[:, 1]
    if ties.any():
        warnings.warn(
            f"{int(ties.sum())} of {len(ties)} predictions give the chosen and the rejected answer the same reward; "
            "they are left out of the accuracy.",
            UserWarning,
            stacklevel=2,
        )
    predicted = np.argmax(predictions[~ties], axis=1)
    return {"accuracy": float((predicted == labels[~ties]).mean())}
