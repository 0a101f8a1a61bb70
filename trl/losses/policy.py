"""Policy-gradient losses shared by GRPO, RLOO, PPO and the other online trainers.

Every function takes per-token tensors named by meaning and shape: `logps_B_T` (log-probs of the sampled completion
tokens under the policy being trained), `old_logps_B_T` (under the policy that the advantages refer to: the
generating policy, recomputed by the training model), `ref_logps_B_T` (reference model), `mask_B_T` (completion
tokens; padding may hold anything, even `-inf`), `advantages_B` (one per completion) or `advantages_B_T` (per token,
PPO).

The pieces, composed by [`policy_loss`]:

1. importance ratio `ρ = π_θ/π_old` per token, or per sequence (GSPO) [`importance_weights`];
2. a per-token objective: the PPO clipped surrogate [`clipped_surrogate`] (`grpo`, `bnpo`, `dr_grpo`, `dapo`,
   `luspo`), CISPO, SAPO or VESPO;
3. multiplied by the off-policy mask, the entropy mask and the sampler (vLLM) importance-sampling weights;
4. plus `β·KL` with the k3 estimator when `beta > 0`;
5. reduced to a scalar by [`aggregate_loss`] according to `loss_type`.

The k1/k2/k3 KL estimators (`trl.losses.kl`), the entropy / off-policy masks and sampler correction weights
(`trl.losses.token_selection`) and the PPO value loss (`trl.losses.value`) live in their own modules and are
re-exported here. Advantages are computed in `trl.losses.advantages`.

Configurations of [`policy_loss`]:

- RLOO: `importance_sampling_level="sequence_sum"`, `loss_type="grpo"` (a per-sequence loss averaged over
  sequences), `beta=0`: RLOO subtracts `β·sequence_kl(...)` from the rewards instead.
- PPO: pass per-token advantages `[B, T]` (GAE), `loss_type="bnpo"`, `beta=0` (KL is in the rewards).
- On-policy (one iteration per generation): `old_logps_B_T=None` uses `logps_B_T.detach()`, so `ρ = 1` with the
  gradient of `log π_θ`.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any

import torch

from ._policy_inputs import _add_kl_term, _prepare_policy_inputs
from ._tokens import _bool_mask, _check_aligned, _masked_log_ratio, _masked_token_mean
from .kl import KL_ESTIMATORS, kl_estimate, kl_k1, kl_k2, kl_k3, sequence_kl
from .token_selection import SAMPLER_CORRECTION_MODES, entropy_mask, off_policy_mask, sampler_correction_weights
from .value import clipped_value_loss


# Re-exported: they were defined here, and `trl.losses.policy` is where callers import them from.
__all__ = [
    "IMPORTANCE_SAMPLING_LEVELS",
    "KL_ESTIMATORS",
    "LOSS_AGGREGATIONS",
    "POLICY_LOSS_TYPES",
    "PolicyLossOptions",
    "SAMPLER_CORRECTION_MODES",
    "aggregate_loss",
    "cispo_objective",
    "clip_fractions",
    "clipped_surrogate",
    "clipped_value_loss",
    "entropy_mask",
    "importance_weights",
    "kl_estimate",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "off_policy_mask",
    "policy_loss",
    "policy_loss_from_options",
    "sampler_correction_weights",
    "sapo_objective",
    "sequence_kl",
    "vespo_weights",
]


POLICY_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence", "sequence_token", "sequence_sum")

# The normalisation each loss type uses (the per-token objective is chosen separately).
LOSS_AGGREGATIONS = {
    "grpo": "grpo",
    "bnpo": "bnpo",
    "dr_grpo": "dr_grpo",
    "dapo": "dapo",
    "cispo": "dapo",
    "sapo": "grpo",
    "luspo": "luspo",
    "vespo": "dapo",
}

# VESPO's sequence log-ratio is clamped so that its weight stays finite (the reference's bounds).
_VESPO_LOG_RATIO_BOUNDS = (math.log(1e-8), 20.0)


# ------------------------------------------------------------------------------------------ importance ratios


def importance_weights(
    logps_B_T: torch.Tensor, old_logps_B_T: torch.Tensor, mask_B_T: torch.Tensor, level: str = "token"
) -> torch.Tensor:
    """Importance ratio `ρ = π_θ / π_old`, broadcast to shape `[B, T]`.

    - `"token"`: `ρ_t = exp(log π_θ(y_t) − log π_old(y_t))`;
    - `"sequence"` (GSPO, arXiv 2507.18071): `ρ = exp(mean_t(log π_θ − log π_old))` over the completion tokens,
      the same value at every token and independent of how much padding follows;
    - `"sequence_token"` (GSPO-token): the sequence value with per-token gradients,
      `exp(sg[mean_t log r_t] + log π_θ(y_t) − sg[log π_θ(y_t)])`;
    - `"sequence_sum"` (RLOO): `ρ = exp(Σ_t(log π_θ − log π_old))`, the likelihood ratio of the whole sequence.

    Padded positions hold 1 (a zero log-ratio).

    Args:
        logps_B_T (`torch.Tensor` of shape `[B, T]`):
            Current policy log-probs (with gradient).
        old_logps_B_T (`torch.Tensor` of shape `[B, T]`):
            Log-probs under the old policy (no gradient needed).
        mask_B_T (`torch.Tensor` of shape `[B, T]`):
            Completion mask.
        level (`str`, *optional*, defaults to `"token"`):
            One of `"token"`, `"sequence"`, `"sequence_token"`, `"sequence_sum"`.
    """
    _check_aligned(mask_B_T, logps_B_T=logps_B_T, old_logps_B_T=old_logps_B_T)
    mask = _bool_mask(mask_B_T)
    log_ratio = _masked_log_ratio(logps_B_T, old_logps_B_T.detach(), mask)
    if level == "token":
        return torch.exp(log_ratio)
    lengths = mask.sum(dim=1, keepdim=True).clamp(min=1).to(log_ratio.dtype)
    if level == "sequence":
        return torch.exp(log_ratio.sum(dim=1, keepdim=True) / lengths).expand_as(log_ratio)
    if level == "sequence_sum":
        return torch.exp(log_ratio.sum(dim=1, keepdim=True)).expand_as(log_ratio)
    if level == "sequence_token":
        sequence_log_ratio = (log_ratio.sum(dim=1, keepdim=True) / lengths).detach()
        safe_logps = torch.where(mask, logps_B_T, torch.zeros_like(logps_B_T))
        log_weight = sequence_log_ratio + safe_logps - safe_logps.detach()
        return torch.where(mask, torch.exp(log_weight), torch.ones_like(log_weight))
    raise ValueError(f"Unknown importance_sampling_level {level!r}: use one of {list(IMPORTANCE_SAMPLING_LEVELS)}.")


# -------------------------------------------------------------------------------------- per-token objectives


def clip_fractions(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    epsilon_low: float,
    epsilon_high: float | None = None,
    mask_B_T: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Fractions of tokens where the clip is active, the reference's `clip_ratio/*` metrics (local values).

    - low: `ρ < 1 − ε_low` and `A < 0` (the clipped term is the one `min` selects);
    - high: `ρ > 1 + ε_high` and `A > 0`;
    - region: either.

    Means are over masked tokens, or over every element when `mask_B_T` is `None` (pass `[B, 1]` sequence ratios
    without a mask to get fractions of sequences, as the reference does at sequence level). The trainer gathers
    them across processes and also logs `clip_ratio/low_min` and `clip_ratio/high_max`.

    Args:
        ratio (`torch.Tensor` of shape `[B, T]` or `[B, 1]`):
            Importance ratios before any `delta` cap.
        advantages (`torch.Tensor` of shape `[B]`, `[B, 1]` or `[B, T]`):
            Advantages.
        epsilon_low (`float`):
            Lower clip range ε.
        epsilon_high (`float`, *optional*, defaults to `None`):
            Upper clip range; `None` means `epsilon_low`.
        mask_B_T (`torch.Tensor` of shape `[B, T]`, *optional*, defaults to `None`):
            Completion mask.
    """
    epsilon_high = epsilon_low if epsilon_high is None else epsilon_high
    advantages = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    low = (ratio < 1 - epsilon_low) & (advantages < 0)
    high = (ratio > 1 + epsilon_high) & (advantages > 0)
    if mask_B_T is None:
        mask = torch.ones_like(low)
    else:
        mask = _bool_mask(mask_B_T)
        low, high = low.expand_as(mask), high.expand_as(mask)
    return {
        "clip_ratio/low_mean": _masked_token_mean(low, mask),
        "clip_ratio/high_mean": _masked_token_mean(high, mask),
        "clip_ratio/region_mean": _masked_token_mean(low | high, mask),
    }


def clipped_surrogate(
    ratio_B_T: torch.Tensor,
    advantages_B: torch.Tensor,
    epsilon_low: float,
    epsilon_high: float | None = None,
    delta: float | None = None,
    mask_B_T: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate per token (arXiv 1707.06347): `max(−A·ρ̃, −A·clip(ρ, 1 − ε_low, 1 + ε_high))`.

    `ρ̃ = min(ρ, δ)` when `delta` is set (two-sided clipping, INTELLECT-2 arXiv 2505.07291): for a negative advantage
    a huge ratio no longer gives an unbounded loss, the loss is capped at `δ·|A|`. Set `δ > 1 + ε_high`, or the cap
    also bites for positive advantages. `epsilon_high > epsilon_low` is DAPO's clip-higher (arXiv 2503.14476).

    Example with `ε = 0.2`: `ρ = 0.5, A = −1` gives `0.8` (low clip active), `ρ = 1.5, A = +1` gives `−1.2` (high
    clip active), `ρ = 1.5, A = −1` gives `1.5` (unclipped).

    Args:
        ratio_B_T (`torch.Tensor` of shape `[B, T]`):
            Importance ratios ([`importance_weights`]).
        advantages_B (`torch.Tensor` of shape `[B]` or `[B, T]`):
            Advantages per completion (or per token).
        epsilon_low (`float`):
            Lower clip range ε (`epsilon`).
        epsilon_high (`float`, *optional*, defaults to `None`):
            Upper clip range; `None` means `epsilon_low`.
        delta (`float`, *optional*, defaults to `None`):
            Upper cap of the unclipped ratio; `None` disables it.
        mask_B_T (`torch.Tensor` of shape `[B, T]`, *optional*, defaults to `None`):
            Completion mask, used only for the clip statistics.

    Returns:
        `tuple[torch.Tensor, dict[str, torch.Tensor]]`: the per-token loss (same shape as `ratio_B_T`, not masked)
        and [`clip_fractions`].
    """
    epsilon_high = epsilon_low if epsilon_high is None else epsilon_high
    advantages = advantages_B.unsqueeze(1) if advantages_B.dim() == 1 else advantages_B
    clipped = torch.clamp(ratio_B_T, 1 - epsilon_low, 1 + epsilon_high)
    unclipped = ratio_B_T if delta is None else torch.clamp(ratio_B_T, max=delta)
    per_token_loss = -torch.min(unclipped * advantages, clipped * advantages)
    return per_token_loss, clip_fractions(ratio_B_T.detach(), advantages, epsilon_low, epsilon_high, mask_B_T)


def cispo_objective(
    ratio_B_T: torch.Tensor, logps_B_T: torch.Tensor, advantages: torch.Tensor, epsilon_high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """CISPO (MiniMax-M1, arXiv 2506.13585): `−sg(min(ρ, ε_max))·A·log π_θ`.

    The truncated ratio only weights a REINFORCE term, so no token's gradient is dropped by clipping. `ε_max` is
    `epsilon_high` (an absolute bound, suggested 5.0).

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: the per-token loss and a boolean `[B, T]` of tokens where the truncation
        is active (`ρ > ε_max` and `A > 0`, the `cispo_clip_ratio` metric).
    """
    weight = torch.clamp(ratio_B_T, max=epsilon_high).detach()
    clipped = (ratio_B_T.detach() > epsilon_high) & (advantages > 0)
    return -weight * advantages * logps_B_T, clipped


def sapo_objective(
    ratio_B_T: torch.Tensor, advantages: torch.Tensor, temperature_pos: float, temperature_neg: float
) -> torch.Tensor:
    """SAPO (arXiv 2511.20347): `−(4/τ)·σ(τ(ρ − 1))·A`, with `τ = τ_pos` if `A > 0` else `τ_neg`.

    A smooth gate instead of a hard clip: at `ρ = 1` its value is `−2A/τ` and its slope in `ρ` is `−A`, like the
    unclipped surrogate, and the gradient decays smoothly as `ρ` moves away from 1.
    """
    if temperature_pos <= 0 or temperature_neg <= 0:
        raise ValueError("sapo_temperature_pos and sapo_temperature_neg must be > 0.")
    temperature = torch.where(advantages > 0, temperature_pos, temperature_neg).to(ratio_B_T.dtype)
    return -(4 / temperature) * torch.sigmoid(temperature * (ratio_B_T - 1)) * advantages


def vespo_weights(
    log_ratio_B_T: torch.Tensor,
    advantages_B: torch.Tensor,
    mask_B_T: torch.Tensor,
    k_pos: float = 2.0,
    lambda_pos: float = 3.0,
    k_neg: float = 3.0,
    lambda_neg: float = 2.0,
    sampler_weights_B_T: torch.Tensor | None = None,
) -> torch.Tensor:
    """VESPO's detached sequence weight `φ(w) = e^{λ}·w^{k}·e^{−λw}` (so `φ(1) = 1`), shape `[B, 1]`.

    `w = exp(Σ_t log ρ_t)` is the sequence likelihood ratio, with per-token log-ratios clamped to `[−20, 20]` and
    `log w` to `[log 1e-8, 20]`; sampler importance-sampling weights (token level) are folded into `w` rather than
    multiplying the loss. `(k, λ)` are `(k_pos, λ_pos)` for `A ≥ 0`, else `(k_neg, λ_neg)`.

    Args:
        log_ratio_B_T (`torch.Tensor` of shape `[B, T]`):
            `log π_θ − log π_old` per token.
        advantages_B (`torch.Tensor` of shape `[B]`):
            Advantages.
        mask_B_T (`torch.Tensor` of shape `[B, T]`):
            Completion mask.
        k_pos, lambda_pos, k_neg, lambda_neg (`float`):
            Gamma-shape parameters (`vespo_*` in `GRPOConfig`).
        sampler_weights_B_T (`torch.Tensor` of shape `[B, T]`, *optional*, defaults to `None`):
            Sampler correction weights from [`sampler_correction_weights`].
    """
    low, high = _VESPO_LOG_RATIO_BOUNDS
    mask = _bool_mask(mask_B_T)
    with torch.no_grad():
        log_ratio = torch.where(mask, log_ratio_B_T.float().clamp(-20.0, 20.0), 0.0)
        log_w = log_ratio.sum(dim=1, keepdim=True)
        if sampler_weights_B_T is not None:
            log_is = torch.log(sampler_weights_B_T.float().expand_as(log_ratio)).clamp(low, high)
            log_w = log_w + torch.where(mask, log_is, 0.0).sum(dim=1, keepdim=True)
        log_w = log_w.clamp(low, high)
        non_negative = advantages_B.reshape(-1, 1) >= 0
        k = torch.where(non_negative, k_pos, k_neg)
        lam = torch.where(non_negative, lambda_pos, lambda_neg).clamp(min=1e-4)
        phi = torch.exp(lam + k * log_w - lam * torch.exp(log_w))
        return torch.nan_to_num(phi, nan=0.0, posinf=0.0, neginf=0.0).to(log_ratio_B_T.dtype)


# ------------------------------------------------------------------------------------------------ aggregation


def aggregate_loss(
    per_token_loss_B_T: torch.Tensor,
    mask_B_T: torch.Tensor,
    loss_type: str = "dapo",
    max_completion_length: int | None = None,
    num_items_in_batch: int | float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss to a scalar, the normalisation that distinguishes the GRPO loss types.

    With `l` the per-token loss, `m` the mask, `B` the local batch size and `L = max_completion_length`:

    - `grpo` (and `sapo`): `mean_i[Σ_t l_it·m_it / Σ_t m_it]`, a token mean per sequence then a mean over sequences
      (long completions weigh less per token: the length bias of arXiv 2503.20783);
    - `bnpo`: `Σ l·m / Σ m` over the local batch;
    - `dr_grpo`: `Σ l·m / (B·L)`;
    - `dapo` (and `cispo`, `vespo`): `Σ l·m / N` with `N = num_items_in_batch`, the number of completion tokens in
      the *whole* accumulated batch across processes. Summing the losses of the micro-batches that make up that
      batch gives exactly the unsplit loss and gradient. A trainer whose framework averages gradients over `P`
      processes and divides by `GA` accumulation steps multiplies back by `P·GA` (or passes `N / (P·GA)`).
      Without `num_items_in_batch` it falls back to the local count (`bnpo`);
    - `luspo`: `mean_i Σ_t l_it·m_it`, a sum per sequence then a mean over sequences (LUSPO; meant for
      `importance_sampling_level="sequence"`, where it is `mean_i(|o_i|·l_i)`).

    Args:
        per_token_loss_B_T (`torch.Tensor` of shape `[B, T]` (or `[B, 1]`, broadcast over the mask)):
            Per-token loss; values at padded positions are ignored, even if not finite.
        mask_B_T (`torch.Tensor` of shape `[B, T]`):
            Completion mask.
        loss_type (`str`, *optional*, defaults to `"dapo"`):
            One of [`POLICY_LOSS_TYPES`].
        max_completion_length (`int`, *optional*):
            `L`; required by `dr_grpo`.
        num_items_in_batch (`int`, `float` or `torch.Tensor`, *optional*):
            Global completion-token count `N` for `dapo`, `cispo` and `vespo`.
    """
    if loss_type not in LOSS_AGGREGATIONS:
        raise ValueError(f"Unknown loss_type {loss_type!r}: use one of {list(POLICY_LOSS_TYPES)}.")
    mask = _bool_mask(mask_B_T)
    per_token_loss_B_T = per_token_loss_B_T.expand_as(mask)
    masked = torch.where(mask, per_token_loss_B_T, torch.zeros_like(per_token_loss_B_T))
    aggregation = LOSS_AGGREGATIONS[loss_type]
    if aggregation == "grpo":
        lengths = mask.sum(dim=1).clamp(min=1)
        return (masked.sum(dim=1) / lengths).mean()
    if aggregation == "luspo":
        return masked.sum(dim=1).mean()
    if aggregation == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("loss_type='dr_grpo' needs max_completion_length (the constant normaliser B·L).")
        return masked.sum() / (mask.shape[0] * max_completion_length)
    if aggregation == "dapo" and num_items_in_batch is not None:
        # A generation batch whose completions are all masked out has no tokens: the loss is then 0, not NaN.
        if isinstance(num_items_in_batch, torch.Tensor):
            return masked.sum() / num_items_in_batch.clamp(min=1)
        return masked.sum() / max(num_items_in_batch, 1)
    return masked.sum() / mask.sum().clamp(min=1)


# ------------------------------------------------------------------------------------------------ composition


def _per_token_objective(
    loss_type: str,
    ratio_B_T: torch.Tensor,
    logps_B_T: torch.Tensor,
    log_ratio_B_T: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    options: dict,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The per-token loss of `loss_type` and its metrics (before masks, sampler weights and KL)."""
    if loss_type == "cispo":
        per_token, clipped = cispo_objective(ratio_B_T, logps_B_T, advantages, options["epsilon_high"])
        return per_token, {"cispo_clip_ratio": _masked_token_mean(clipped, mask)}
    if loss_type == "sapo":
        temperatures = options["sapo_temperature_pos"], options["sapo_temperature_neg"]
        return sapo_objective(ratio_B_T, advantages, *temperatures), {}
    if loss_type == "vespo":
        phi_B_1 = vespo_weights(
            log_ratio_B_T,
            advantages,
            mask,
            options["vespo_k_pos"],
            options["vespo_lambda_pos"],
            options["vespo_k_neg"],
            options["vespo_lambda_neg"],
            options["sampler_weights_B_T"],
        )
        return -phi_B_1 * advantages * logps_B_T, {"vespo/phi_seq_mean": phi_B_1.float().mean()}
    per_token, stats = clipped_surrogate(
        ratio_B_T, advantages, options["epsilon"], options["epsilon_high"], options["delta"], mask
    )
    if options["importance_sampling_level"] != "token":
        # One ratio per sequence: report fractions of sequences, as the reference does.
        stats = clip_fractions(ratio_B_T[:, :1].detach(), advantages, options["epsilon"], options["epsilon_high"])
    return per_token, stats


def _apply_token_weights(
    per_token_loss: torch.Tensor,
    off_policy_mask_B: torch.Tensor | None,
    entropy_mask_B_T: torch.Tensor | None,
    sampler_weights_B_T: torch.Tensor | None,
) -> torch.Tensor:
    # In this order: the off-policy mask, the entropy mask, the (detached) sampler importance weights.
    if off_policy_mask_B is not None:
        per_token_loss = per_token_loss * off_policy_mask_B.reshape(-1, 1).to(per_token_loss.dtype)
    if entropy_mask_B_T is not None:
        per_token_loss = per_token_loss * entropy_mask_B_T.to(per_token_loss.dtype)
    if sampler_weights_B_T is not None:
        per_token_loss = per_token_loss * sampler_weights_B_T.detach()
    return per_token_loss


def policy_loss(
    logps_B_T: torch.Tensor,
    old_logps_B_T: torch.Tensor | None,
    advantages_B: torch.Tensor,
    mask_B_T: torch.Tensor,
    *,
    loss_type: str = "dapo",
    importance_sampling_level: str = "token",
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    delta: float | None = None,
    beta: float = 0.0,
    ref_logps_B_T: torch.Tensor | None = None,
    max_completion_length: int | None = None,
    num_items_in_batch: int | float | torch.Tensor | None = None,
    entropy_mask_B_T: torch.Tensor | None = None,
    off_policy_mask_B: torch.Tensor | None = None,
    sampler_weights_B_T: torch.Tensor | None = None,
    use_bias_correction_kl: bool = False,
    sapo_temperature_pos: float = 1.0,
    sapo_temperature_neg: float = 1.05,
    vespo_k_pos: float = 2.0,
    vespo_lambda_pos: float = 3.0,
    vespo_k_neg: float = 3.0,
    vespo_lambda_neg: float = 2.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The policy-gradient loss of GRPO and its relatives, as one scalar plus detached local metrics.

    Per token: `l = objective(ρ, A)` (by `loss_type`), multiplied in this order by the off-policy mask, the entropy
    mask and the sampler importance weights (not for `vespo`, which folds them into its weight), plus `β·KL` with the
    k3 estimator when `beta > 0` (times `ρ` with `use_bias_correction_kl`, DeepSeek-V3.2). Then [`aggregate_loss`].

    RLOO, PPO and on-policy training are configurations of it (see the module docstring).

    Args:
        logps_B_T (`torch.Tensor` of shape `[B, T]`):
            Per-token log-probs of the completions under the policy being trained.
        old_logps_B_T (`torch.Tensor` of shape `[B, T]` or `None`):
            Log-probs under the policy that generated the data (`None`: on-policy).
        advantages_B (`torch.Tensor` of shape `[B]` or `[B, T]`):
            Advantages per completion (or per token).
        mask_B_T (`torch.Tensor` of shape `[B, T]`):
            Completion mask (`mask_truncated_completions` zeroes whole rows before this call).
        loss_type (`str`, *optional*, defaults to `"dapo"`):
            One of [`POLICY_LOSS_TYPES`].
        importance_sampling_level (`str`, *optional*, defaults to `"token"`):
            `"token"`, `"sequence"` (GSPO), `"sequence_token"` (GSPO-token) or `"sequence_sum"` (RLOO).
        epsilon (`float`, *optional*, defaults to `0.2`):
            Lower clip range.
        epsilon_high (`float`, *optional*, defaults to `None`):
            Upper clip range (`None`: `epsilon`); CISPO's absolute truncation `ε_max`.
        delta (`float`, *optional*, defaults to `None`):
            Two-sided clipping cap.
        beta (`float`, *optional*, defaults to `0.0`):
            KL coefficient; needs `ref_logps_B_T` when non-zero.
        ref_logps_B_T (`torch.Tensor` of shape `[B, T]`, *optional*):
            Reference-model log-probs.
        max_completion_length (`int`, *optional*):
            Required by `dr_grpo`.
        num_items_in_batch (`int`, `float` or `torch.Tensor`, *optional*):
            Global completion-token count for `dapo`, `cispo`, `vespo` (see [`aggregate_loss`]).
        entropy_mask_B_T (`torch.Tensor` of shape `[B, T]`, *optional*):
            From [`entropy_mask`] (`top_entropy_quantile < 1`).
        off_policy_mask_B (`torch.Tensor` of shape `[B]` or `[B, 1]`, *optional*):
            From [`off_policy_mask`].
        sampler_weights_B_T (`torch.Tensor` of shape `[B, T]`, *optional*):
            From [`sampler_correction_weights`].
        use_bias_correction_kl (`bool`, *optional*, defaults to `False`):
            Multiply the KL term by the importance ratio.
        sapo_temperature_pos, sapo_temperature_neg (`float`):
            SAPO temperatures for positive / non-positive advantages.
        vespo_k_pos, vespo_lambda_pos, vespo_k_neg, vespo_lambda_neg (`float`):
            VESPO gamma parameters ([`vespo_weights`]).

    Returns:
        `tuple[torch.Tensor, dict[str, torch.Tensor]]`: the loss and metrics: `kl` (masked token mean of the KL
        term, when `beta != 0`), `clip_ratio/{low,high,region}_mean` (clipped surrogate types), `cispo_clip_ratio`,
        `vespo/phi_seq_mean`.
    """
    if loss_type not in POLICY_LOSS_TYPES:
        raise ValueError(f"Unknown loss_type {loss_type!r}: use one of {list(POLICY_LOSS_TYPES)}.")
    if loss_type == "vespo" and importance_sampling_level != "token":
        raise ValueError("loss_type='vespo' weighs whole sequences itself: set importance_sampling_level='token'.")
    old_logps_B_T, mask, advantages, log_ratio_B_T = _prepare_policy_inputs(
        logps_B_T, old_logps_B_T, advantages_B, mask_B_T, beta, ref_logps_B_T, entropy_mask_B_T, sampler_weights_B_T
    )
    safe_logps = torch.where(mask, logps_B_T, torch.zeros_like(logps_B_T))
    ratio_B_T = importance_weights(logps_B_T, old_logps_B_T, mask, importance_sampling_level)
    options = dict(
        epsilon=epsilon, epsilon_high=epsilon if epsilon_high is None else epsilon_high, delta=delta,
        importance_sampling_level=importance_sampling_level, sampler_weights_B_T=sampler_weights_B_T,
        sapo_temperature_pos=sapo_temperature_pos, sapo_temperature_neg=sapo_temperature_neg,
        vespo_k_pos=vespo_k_pos, vespo_lambda_pos=vespo_lambda_pos, vespo_k_neg=vespo_k_neg,
        vespo_lambda_neg=vespo_lambda_neg,
    )  # fmt: skip
    per_token_loss, metrics = _per_token_objective(
        loss_type, ratio_B_T, safe_logps, log_ratio_B_T, advantages, mask, options
    )
    # VESPO folds the sampler weights into its own weight.
    sampler_weights = sampler_weights_B_T if loss_type != "vespo" else None
    per_token_loss = _apply_token_weights(per_token_loss, off_policy_mask_B, entropy_mask_B_T, sampler_weights)
    kl_ratio_B_T = ratio_B_T if use_bias_correction_kl else None
    per_token_loss = _add_kl_term(per_token_loss, safe_logps, ref_logps_B_T, mask, beta, metrics, kl_ratio_B_T)
    loss = aggregate_loss(per_token_loss, mask, loss_type, max_completion_length, num_items_in_batch)
    return loss, metrics


# The keywords of `policy_loss` that change with every batch; all its other keywords are configuration options.
_BATCH_KEYWORDS = (
    "ref_logps_B_T",
    "num_items_in_batch",
    "entropy_mask_B_T",
    "off_policy_mask_B",
    "sampler_weights_B_T",
)


class _PolicyLossOptionsMethods:
    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> PolicyLossOptions:
        """Every field read from the attribute of `config` with its name, then `overrides` applied; a config without
        one of the names raises `AttributeError` naming it."""
        values = {field.name: getattr(config, field.name) for field in dataclasses.fields(cls)}
        return cls(**{**values, **overrides})

    def as_kwargs(self) -> dict[str, Any]:
        """The options as `policy_loss` keyword arguments."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


# The fields: `policy_loss`'s configuration keywords, in order, with their annotations and defaults (declared once).
PolicyLossOptions = dataclasses.make_dataclass(
    "PolicyLossOptions",
    [
        (parameter.name, parameter.annotation, dataclasses.field(default=parameter.default))
        for parameter in inspect.signature(policy_loss).parameters.values()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.name not in _BATCH_KEYWORDS
    ],
    bases=(_PolicyLossOptionsMethods,),
    frozen=True,
)
PolicyLossOptions.__module__ = __name__
PolicyLossOptions.__doc__ = """The configuration-level options of [`policy_loss`] (its keywords but the per-batch ones,
with its defaults), as one frozen object. Build it once with [`PolicyLossOptions.from_config`] (GRPO's fields carry
these names) or field by field (RLOO: `loss_type="grpo"`, `importance_sampling_level="sequence_sum"`), and call
[`policy_loss_from_options`]."""


def policy_loss_from_options(
    logps_B_T: torch.Tensor,
    old_logps_B_T: torch.Tensor | None,
    advantages_B: torch.Tensor,
    mask_B_T: torch.Tensor,
    options: PolicyLossOptions,
    **batch: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """[`policy_loss`] with its configuration options taken from `options`; `batch` holds the per-batch keyword
    arguments (`ref_logps_B_T`, `num_items_in_batch`, `entropy_mask_B_T`, `off_policy_mask_B`,
    `sampler_weights_B_T`). Naming an option in `batch` too raises `TypeError`."""
    clash = sorted(set(batch) & {field.name for field in dataclasses.fields(PolicyLossOptions)})
    if clash:
        raise TypeError(f"policy_loss_from_options got {clash} both in options and as keyword arguments.")
    return policy_loss(logps_B_T, old_logps_B_T, advantages_B, mask_B_T, **options.as_kwargs(), **batch)
