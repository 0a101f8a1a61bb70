"""Reference-free preference losses on length-normalised log-probs: SimPO (with CPO-SimPO's extra NLL term applied
by the trainer) and AlphaPO's reward shaping. Reached through `trl.losses.preference`'s `loss_type` table."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .preference_pairs import PreferenceLossOutput, _Pair, _pair, _smoothed_logistic, capped_exp, paired_loss


def alphapo_reward(logps: torch.Tensor, alpha: float) -> torch.Tensor:
    """AlphaPO reward shape `s = (1 − p^{−α})/α` with `p = e^{logps}` (arXiv 2501.03884); `s = logps` at `α = 0`.

    With length-normalised log-probs, `p` is the per-token geometric-mean probability, as in the paper.

    Args:
        logps (`torch.Tensor`):
            Sequence log-probs (usually per-token means).
        alpha (`float`):
            Shape parameter α; `0` leaves the log-probs unchanged (SimPO).
    """
    if alpha == 0:
        return logps
    return (1 - capped_exp(-alpha * logps)) / alpha


def _check_reference_free(arguments: Mapping[str, object]) -> None:
    if arguments["ref_chosen_logps"] is not None or arguments["ref_rejected_logps"] is not None:
        raise ValueError(
            "SimPO is reference-free: call simpo_loss with ref_chosen_logps=None, ref_rejected_logps=None."
        )


@paired_loss(smoothing=(0.5, True), validate=_check_reference_free)
def simpo_loss(
    pair: _Pair, beta: float, *, simpo_gamma: float = 0.5, label_smoothing: float = 0.0, alpha: float = 0.0
) -> PreferenceLossOutput:
    """SimPO: `−logσ(β(s_c − s_r) − γ)` with `s` the **length-normalised** log-prob (arXiv 2405.14734, Eq. 6).

    With `ε > 0`, the label-smoothed form `−(1−ε)·logσ(z) − ε·logσ(−z)` of `z = β(s_c − s_r) − γ` (CPO's `simpo`).
    With `alpha ≠ 0`, `s` is first shaped by [`alphapo_reward`] (AlphaPO). SimPO is reference-free: passing reference
    log-probs is an error. Rewards are `β·s` (detached). CPO-SimPO adds CPO's NLL term in the trainer
    (arXiv 2401.08417). At `s_c = s_r` the loss is `softplus(γ)`.

    Args:
        simpo_gamma (`float`, *optional*, defaults to `0.5`):
            Target reward margin γ.
        label_smoothing (`float`, *optional*, defaults to `0.0`):
            ε ∈ [0, 0.5].
        alpha (`float`, *optional*, defaults to `0.0`):
            AlphaPO shape parameter.

    The other arguments are those of [`sigmoid_loss`]; `ref_*_logps` must be `None`.
    """
    # Reference-free: the pair's log-ratios are the policy log-probs, shaped here.
    shaped = _pair(beta, alphapo_reward(pair.chosen_logratios, alpha), alphapo_reward(pair.rejected_logratios, alpha))
    return shaped.output(beta, _smoothed_logistic(beta * shaped.delta - simpo_gamma, label_smoothing))
