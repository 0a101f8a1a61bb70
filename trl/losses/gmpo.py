"""Geometric-Mean Policy Optimization (GMPO, Zhao et al. 2025, arXiv 2507.20673).

GRPO maximises the arithmetic mean over a completion's tokens of the clipped token objectives `ρ_t·A`; GMPO
maximises their geometric mean, which an outlier ratio moves far less:

    J_i = sgn(A_i) · ( Π_t |min(ρ_t·A_i, clip(ρ_t, e^{−ε_low}, e^{ε_high})·A_i)| )^{1/|o_i|}
        = A_i · exp( mean_t ℓ̃_t ),

    ℓ_t = log π_θ(y_t) − log π_old(y_t),   ℓ̃_t = min(ℓ_t, ε_high)  if A_i > 0,   max(ℓ_t, −ε_low)  otherwise.

The clip is applied per token, in log space, and one-sided by the sign of the advantage (PPO's trust region: a
token whose ratio already moved in the advantage's direction beyond the range gets no gradient), before the mean is
taken. `ε` is therefore a log-space range: the paper uses `(e^{−0.4}, e^{0.4})`, much wider than GRPO's `1 ± 0.2`.

The loss of a completion is `−J_i` (plus `β·k3` KL to a reference per token, when `β > 0`), one value spread over
its tokens and reduced by [`~trl.losses.aggregate_loss`]: `loss_type="grpo"` (a mean over completions, the paper's
`1/G Σ_i`) or the token-weighted `dapo` / `bnpo` / `dr_grpo` / `luspo`.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ._policy_inputs import _add_kl_term, _prepare_policy_inputs
from ._tokens import _bool_mask
from .policy import LOSS_AGGREGATIONS, PolicyLossOptions, _apply_token_weights, aggregate_loss, clip_fractions


__all__ = ["GMPO_LOSS_TYPES", "gmpo_loss", "gmpo_loss_from_options"]

# The reductions GMPO accepts: the `loss_type`s that only normalise (cispo, sapo and vespo replace the objective).
GMPO_LOSS_TYPES = tuple(name for name, aggregation in LOSS_AGGREGATIONS.items() if name == aggregation)


def gmpo_loss(
    logps_B_T: torch.Tensor,
    old_logps_B_T: torch.Tensor | None,
    advantages_B: torch.Tensor,
    mask_B_T: torch.Tensor,
    *,
    loss_type: str = "grpo",
    epsilon: float = 0.4,
    epsilon_high: float | None = None,
    beta: float = 0.0,
    ref_logps_B_T: torch.Tensor | None = None,
    max_completion_length: int | None = None,
    num_items_in_batch: int | float | torch.Tensor | None = None,
    entropy_mask_B_T: torch.Tensor | None = None,
    off_policy_mask_B: torch.Tensor | None = None,
    sampler_weights_B_T: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GMPO loss (see the module docstring) as one scalar, plus detached local metrics.

    Args:
        logps_B_T (`torch.Tensor` of shape `[B, T]`):
            Per-token log-probs of the completions under the policy being trained.
        old_logps_B_T (`torch.Tensor` of shape `[B, T]` or `None`):
            Log-probs under the generating policy (`None`: on-policy, `logps_B_T.detach()`).
        advantages_B (`torch.Tensor` of shape `[B]`):
            One advantage per completion.
        mask_B_T (`torch.Tensor` of shape `[B, T]`):
            Completion mask (padding may hold anything, even `-inf`).
        loss_type (`str`, *optional*, defaults to `"grpo"`):
            The reduction, one of [`GMPO_LOSS_TYPES`] (see [`~trl.losses.aggregate_loss`]).
        epsilon (`float`, *optional*, defaults to `0.4`):
            Lower clip range in log space: token ratios below `exp(−epsilon)` are clipped (for `A ≤ 0`).
        epsilon_high (`float`, *optional*, defaults to `None`):
            Upper clip range in log space (`None`: `epsilon`): ratios above `exp(epsilon_high)` are clipped (`A > 0`).
        beta (`float`, *optional*, defaults to `0.0`):
            Weight of the per-token k3 KL to the reference; needs `ref_logps_B_T` when non-zero.
        ref_logps_B_T (`torch.Tensor` of shape `[B, T]`, *optional*):
            Reference-model log-probs.
        max_completion_length (`int`, *optional*):
            Required by `loss_type="dr_grpo"`.
        num_items_in_batch (`int`, `float` or `torch.Tensor`, *optional*):
            Global completion-token count for `loss_type="dapo"`.
        entropy_mask_B_T (`torch.Tensor` of shape `[B, T]`, *optional*):
            Tokens kept in the geometric mean ([`~trl.losses.entropy_mask`]); a completion with none left has ratio 1
            (no gradient). The reduction still counts every completion token.
        off_policy_mask_B (`torch.Tensor` of shape `[B]` or `[B, 1]`, *optional*):
            Completions to drop ([`~trl.losses.off_policy_mask`]).
        sampler_weights_B_T (`torch.Tensor` of shape `[B, T]`, *optional*):
            Sampler importance weights ([`~trl.losses.sampler_correction_weights`]), multiplying the policy term.

    Returns:
        `tuple[torch.Tensor, dict[str, torch.Tensor]]`: the loss and the metrics `clip_ratio/{low,high,region}_mean`
        (fractions of completion tokens whose log-ratio is beyond the range in the advantage's direction) and `kl`
        (masked token mean, when `beta != 0`).
    """
    if loss_type not in GMPO_LOSS_TYPES:
        raise ValueError(
            f"GMPO reduces its sequence objective with loss_type in {list(GMPO_LOSS_TYPES)}; got {loss_type!r} (a "
            "different objective). Use loss_type='grpo', the paper's mean over completions."
        )
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    _, mask, advantages, log_ratio_B_T = _prepare_policy_inputs(
        logps_B_T, old_logps_B_T, advantages_B, mask_B_T, beta, ref_logps_B_T, entropy_mask_B_T, sampler_weights_B_T
    )
    if advantages.shape[1] != 1:
        raise ValueError("GMPO weighs whole completions: pass one advantage per completion, shape [B].")
    clipped_B_T = torch.where(
        advantages > 0, torch.clamp(log_ratio_B_T, max=epsilon_high), torch.clamp(log_ratio_B_T, min=-epsilon)
    )
    kept = mask if entropy_mask_B_T is None else mask & _bool_mask(entropy_mask_B_T)
    kept_clipped = torch.where(kept, clipped_B_T, torch.zeros_like(clipped_B_T))
    mean_log_ratio_B_1 = kept_clipped.sum(dim=1, keepdim=True) / kept.sum(dim=1, keepdim=True).clamp(min=1)
    per_token_loss = (-advantages * torch.exp(mean_log_ratio_B_1)).expand_as(log_ratio_B_T)
    per_token_loss = _apply_token_weights(per_token_loss, off_policy_mask_B, None, sampler_weights_B_T)
    # The clip is active where the log-ratio left the range in the advantage's direction (ratio space bounds).
    bounds = 1.0 - math.exp(-epsilon), math.expm1(epsilon_high)
    metrics = clip_fractions(torch.exp(log_ratio_B_T.detach()), advantages, *bounds, mask)
    per_token_loss = _add_kl_term(per_token_loss, logps_B_T, ref_logps_B_T, mask, beta, metrics)
    loss = aggregate_loss(per_token_loss, mask, loss_type, max_completion_length, num_items_in_batch)
    return loss, metrics


# The options of `PolicyLossOptions` (built from a `GRPOConfig`) that GMPO reads; it has no other settings.
_GMPO_OPTIONS = ("loss_type", "epsilon", "epsilon_high", "beta", "max_completion_length")


def gmpo_loss_from_options(
    logps_B_T: torch.Tensor,
    old_logps_B_T: torch.Tensor | None,
    advantages_B: torch.Tensor,
    mask_B_T: torch.Tensor,
    options: PolicyLossOptions,
    **batch: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """[`gmpo_loss`] called like [`~trl.losses.policy_loss_from_options`] (the GRPO trainer's loss call): its
    `loss_type`, `epsilon`, `epsilon_high`, `beta` and `max_completion_length` are read from `options`, the per-batch
    tensors from `batch`. The other options (importance-sampling level, `delta`, SAPO / VESPO parameters, the KL bias
    correction) belong to GRPO's objectives and are not read."""
    values = options.as_kwargs()
    return gmpo_loss(
        logps_B_T, old_logps_B_T, advantages_B, mask_B_T, **{name: values[name] for name in _GMPO_OPTIONS}, **batch
    )
