"""ORPO's odds-ratio term (arXiv 2403.07691): a reference-free preference penalty added to the SFT loss."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """`log(1 − e^x)` for `x < 0`, accurate over the whole range (Mächler 2012: `log(−expm1(x))` near 0,
    `log1p(−e^x)` below `−ln 2`).

    Args:
        x (`torch.Tensor`):
            Negative values (log-probabilities).
    """
    near_zero = x > -math.log(2)
    # Each branch is evaluated on inputs where it is finite, so neither poisons the gradient through torch.where.
    safe_near = torch.where(near_zero, x, torch.full_like(x, -1.0))
    safe_far = torch.where(near_zero, torch.full_like(x, -1.0), x)
    return torch.where(near_zero, torch.log(-torch.expm1(safe_near)), torch.log1p(-torch.exp(safe_far)))


@dataclass
class OddsRatioLossOutput:
    """Result of [`odds_ratio_loss`], per pair.

    Args:
        losses (`torch.Tensor` of shape `[B]`):
            `−β·logσ(log_odds)`, differentiable; ORPO's objective is `NLL(chosen) + mean(losses)`.
        chosen_rewards (`torch.Tensor` of shape `[B]`):
            `β·ℓ_c`, detached.
        rejected_rewards (`torch.Tensor` of shape `[B]`):
            `β·ℓ_r`, detached.
        log_odds_ratio (`torch.Tensor` of shape `[B]`):
            `logσ(log_odds)`, detached (logged as `log_odds_ratio`).
        log_odds_chosen (`torch.Tensor` of shape `[B]`):
            `log_odds`, detached (logged as `log_odds_chosen`).
    """

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    log_odds_ratio: torch.Tensor
    log_odds_chosen: torch.Tensor


def odds_ratio_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, beta: float) -> OddsRatioLossOutput:
    """ORPO odds-ratio loss `−β·logσ(log_odds)` (arXiv 2403.07691, Eq. 7, with β the paper's λ).

    With `ℓ` the **length-normalised** log-prob and `odds(y) = P/(1 − P)` for `P = e^ℓ`:
    `log_odds = (ℓ_c − ℓ_r) − (log(1 − e^{ℓ_c}) − log(1 − e^{ℓ_r}))`, computed with [`log1mexp`]. A mean log-prob
    that rounds to 0 is capped just below it (at `−eps` of the dtype) so the odds stay finite.

    Args:
        chosen_logps (`torch.Tensor` of shape `[B]`):
            Mean per-token log-probs of the chosen completions.
        rejected_logps (`torch.Tensor` of shape `[B]`):
            Mean per-token log-probs of the rejected completions.
        beta (`float`):
            Weight λ of the odds-ratio term.
    """
    if chosen_logps.shape != rejected_logps.shape:
        raise ValueError(
            f"chosen_logps {tuple(chosen_logps.shape)} and rejected_logps {tuple(rejected_logps.shape)} must match."
        )
    cap = -torch.finfo(chosen_logps.dtype).eps
    chosen, rejected = chosen_logps.clamp(max=cap), rejected_logps.clamp(max=cap)
    log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
    log_odds_ratio = F.logsigmoid(log_odds)
    return OddsRatioLossOutput(
        losses=-beta * log_odds_ratio,
        chosen_rewards=(beta * chosen_logps).detach(),
        rejected_rewards=(beta * rejected_logps).detach(),
        log_odds_ratio=log_odds_ratio.detach(),
        log_odds_chosen=log_odds.detach(),
    )
