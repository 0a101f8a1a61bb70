"""The supervised fine-tuning objectives, from the log-probs `log p(y_t)` of the N trained tokens.

- `nll`: the negative log-likelihood, `ℓ_t = −log p(y_t)`;
- `dft` (Dynamic Fine-Tuning, arXiv 2508.05629): each token's NLL weighted by its own probability, held constant
  (stop-gradient): `ℓ_t = −sg(p(y_t)) · log p(y_t)`. Its gradient is `p(y_t) · ∇(−log p(y_t))`, which damps the
  updates of tokens the model finds unlikely.

The loss is `Σ_t ℓ_t / N_items`, where `N_items` is the number of trained tokens of the whole accumulated batch
(all gradient-accumulation steps and processes, the trainer's `num_items_in_batch`) or, without it, of the
micro-batch; so splitting a batch does not change the loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def nll_token_losses(logps_N: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood `−log p(y_t)` of the `[N]` trained tokens."""
    return -logps_N


def dft_token_losses(logps_N: torch.Tensor) -> torch.Tensor:
    """Per-token Dynamic Fine-Tuning loss `−sg(p(y_t)) · log p(y_t)` of the `[N]` trained tokens."""
    return -logps_N.detach().exp() * logps_N


SFT_TOKEN_LOSSES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "nll": nll_token_losses,
    "dft": dft_token_losses,
}


def supervised_loss(
    logps_N: torch.Tensor, loss_type: str = "nll", num_items_in_batch: torch.Tensor | int | None = None
) -> torch.Tensor:
    """The SFT loss `Σ_t ℓ_t / N_items` of a micro-batch.

    Args:
        logps_N (`torch.Tensor` of shape `[N]`):
            Log-probs of the trained tokens of the micro-batch.
        loss_type (`str`, *optional*, defaults to `"nll"`):
            `"nll"` or `"dft"` (a key of `SFT_TOKEN_LOSSES`).
        num_items_in_batch (`torch.Tensor`, `int` or `None`, *optional*, defaults to `None`):
            Trained tokens of the whole accumulated batch; `None` uses N (at least 1, so an empty micro-batch gives
            a loss of 0 that is still part of the autograd graph).

    Returns:
        `torch.Tensor`: the scalar loss.
    """
    if loss_type not in SFT_TOKEN_LOSSES:
        raise ValueError(f"Unknown SFT loss_type {loss_type!r}; choose one of {tuple(SFT_TOKEN_LOSSES)}.")
    normaliser = num_items_in_batch if num_items_in_batch is not None else max(logps_N.numel(), 1)
    return SFT_TOKEN_LOSSES[loss_type](logps_N).sum() / normaliser
