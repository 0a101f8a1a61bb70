"""Which tokens the policy loss trains on, and with what weight: the entropy mask (top-entropy tokens), the
off-policy mask (sequences the sampler drifted from) and the sampler (vLLM) correction weights (truncated
importance sampling)."""

from __future__ import annotations

import torch

from ._tokens import _bool_mask, _check_aligned, _masked_log_ratio


SAMPLER_CORRECTION_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def entropy_mask(entropies_B_T: torch.Tensor, mask_B_T: torch.Tensor, quantile: float = 1.0) -> torch.Tensor:
    """Keep only the highest-entropy tokens (`top_entropy_quantile`, arXiv 2506.01939).

    The threshold is the `(1 − quantile)` quantile (linear interpolation) of the entropies of the masked tokens of
    the batch; a token is kept when its entropy is at least the threshold. `quantile=1.0` keeps every completion
    token, `quantile=0.2` about the top 20%, `quantile=0.0` only the maximum-entropy tokens.

    Args:
        entropies_B_T (`torch.Tensor` of shape `[B, T]`):
            Per-token entropies of the policy's predictive distribution.
        mask_B_T (`torch.Tensor` of shape `[B, T]`):
            Completion mask.
        quantile (`float`, *optional*, defaults to `1.0`):
            Fraction of tokens to keep, in `[0, 1]`.

    Returns:
        `torch.Tensor` of shape `[B, T]`, `bool`: the kept tokens (always inside the mask).
    """
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"top_entropy_quantile must be in [0, 1], got {quantile}.")
    _check_aligned(mask_B_T, entropies_B_T=entropies_B_T)
    mask = _bool_mask(mask_B_T)
    if quantile == 1.0 or not mask.any():
        return mask.clone()
    entropies = entropies_B_T.detach().float()
    threshold = torch.quantile(entropies[mask], 1.0 - quantile)
    return mask & (entropies >= threshold)


def off_policy_mask(
    logps_B_T: torch.Tensor,
    sampler_logps_B_T: torch.Tensor,
    advantages_B: torch.Tensor,
    mask_B_T: torch.Tensor,
    threshold: float,
) -> torch.Tensor:
    """Off-policy sequence mask (DeepSeek-V3.2, `off_policy_mask_threshold`), shape `[B, 1]`, detached.

    A completion with a negative advantage is dropped (0) when the policy has drifted from the sampler on it:
    `mean_t(log π_sampler − log π_θ) > threshold` over its tokens. Every other completion keeps weight 1.

    Args:
        logps_B_T (`torch.Tensor` of shape `[B, T]`):
            Current policy log-probs.
        sampler_logps_B_T (`torch.Tensor` of shape `[B, T]`):
            Log-probs of the generating policy (vLLM's, or the old log-probs).
        advantages_B (`torch.Tensor` of shape `[B]`):
            Advantages.
        mask_B_T (`torch.Tensor` of shape `[B, T]`):
            Completion mask.
        threshold (`float`):
            δ, in nats per token.
    """
    _check_aligned(mask_B_T, logps_B_T=logps_B_T, sampler_logps_B_T=sampler_logps_B_T)
    mask = _bool_mask(mask_B_T)
    with torch.no_grad():
        drift = _masked_log_ratio(sampler_logps_B_T, logps_B_T, mask).sum(dim=1, keepdim=True)
        drift = drift / mask.sum(dim=1, keepdim=True).clamp(min=1)
        drop = (advantages_B.reshape(-1, 1) < 0) & (drift > threshold)
        return (~drop).to(logps_B_T.dtype)


def _check_sampler_bounds(mode: str, clip_min: float | None, clip_max: float | None) -> None:
    if mode not in SAMPLER_CORRECTION_MODES:
        raise ValueError(
            f"Unknown vllm_importance_sampling_mode {mode!r}: use one of {list(SAMPLER_CORRECTION_MODES)}."
        )
    if clip_min is not None and clip_max is not None and not clip_min < clip_max:
        raise ValueError(
            f"vllm_importance_sampling_clip_min ({clip_min}) must be below vllm_importance_sampling_clip_max "
            f"({clip_max})."
        )
    if mode.endswith("_truncate") and clip_min is None and clip_max is None:
        raise ValueError(
            f"vllm_importance_sampling_mode={mode!r} truncates the ratio: set vllm_importance_sampling_clip_max "
            "and/or vllm_importance_sampling_clip_min."
        )


def sampler_correction_weights(
    old_logps_B_T: torch.Tensor,
    sampler_logps_B_T: torch.Tensor,
    mask_B_T: torch.Tensor,
    mode: str = "sequence_mask",
    clip_min: float | None = None,
    clip_max: float | None = 3.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Importance weights correcting the generation/training mismatch (truncated importance sampling, SPEC §5.5).

    The sampler (vLLM) and the training model disagree slightly on the same policy; the loss is reweighted by
    `ρ = exp(log π_old,train − log π_sampler)`:

    - `token_*`: one ratio per token; `sequence_*`: `exp(mean_t(log π_old,train − log π_sampler))` per completion,
      broadcast over its tokens (the mean, never the sum, so the weight does not explode with the length; trl 1.x
      uses the sum);
    - `*_truncate`: `ρ` clamped to `[clip_min, clip_max]`; `*_mask`: `ρ` set to 0 outside `[clip_min, clip_max]`
      (a `None` bound is open).

    A NaN sampler log-prob counts as a difference of 0. Both sides must come from logits divided by the same
    temperature. The v0.x behaviour is `mode="token_truncate", clip_max=vllm_importance_sampling_cap` (2.0).

    Args:
        old_logps_B_T (`torch.Tensor` of shape `[B, T]`):
            Log-probs of the completion under the training model, before the update.
        sampler_logps_B_T (`torch.Tensor` of shape `[B, T]`):
            Log-probs the sampler reported for the same tokens.
        mask_B_T (`torch.Tensor` of shape `[B, T]`):
            Completion mask.
        mode (`str`, *optional*, defaults to `"sequence_mask"`):
            One of `"token_truncate"`, `"token_mask"`, `"sequence_truncate"`, `"sequence_mask"`.
        clip_min (`float`, *optional*, defaults to `None`):
            Lower bound (`vllm_importance_sampling_clip_min`).
        clip_max (`float`, *optional*, defaults to `3.0`):
            Upper bound (`vllm_importance_sampling_clip_max`).

    Returns:
        `tuple[torch.Tensor, dict[str, torch.Tensor]]`: detached weights `[B, T]` (0 at padding) and the metrics
        `sampling/sampling_logp_difference/{mean,max}` (absolute per-token difference) and
        `sampling/importance_sampling_ratio/{min,mean,max}` (over tokens or sequences, after correction).
    """
    _check_sampler_bounds(mode, clip_min, clip_max)
    _check_aligned(mask_B_T, old_logps_B_T=old_logps_B_T, sampler_logps_B_T=sampler_logps_B_T)
    mask = _bool_mask(mask_B_T)
    with torch.no_grad():
        difference = _masked_log_ratio(old_logps_B_T, sampler_logps_B_T, mask).nan_to_num(nan=0.0)
        if mode.startswith("token"):
            ratio, counted = torch.exp(difference), mask
        else:
            lengths = mask.sum(dim=1, keepdim=True).clamp(min=1)
            ratio, counted = torch.exp(difference.sum(dim=1, keepdim=True) / lengths), mask.any(dim=1, keepdim=True)
        if mode.endswith("_truncate"):
            ratio = ratio.clamp(min=clip_min, max=clip_max)
        else:
            outside = torch.zeros_like(ratio, dtype=torch.bool)
            if clip_min is not None:
                outside |= ratio < clip_min
            if clip_max is not None:
                outside |= ratio > clip_max
            ratio = torch.where(outside, torch.zeros_like(ratio), ratio)
        absolute = difference.abs()[mask]
        kept = ratio.expand_as(counted)[counted] if counted.any() else ratio.new_zeros(1)
        stats = {
            "sampling/sampling_logp_difference/mean": absolute.mean() if absolute.numel() else absolute.new_zeros(()),
            "sampling/sampling_logp_difference/max": absolute.max() if absolute.numel() else absolute.new_zeros(()),
            "sampling/importance_sampling_ratio/min": kept.min(),
            "sampling/importance_sampling_ratio/mean": kept.mean(),
            "sampling/importance_sampling_ratio/max": kept.max(),
        }
        weights = torch.where(mask, ratio.expand_as(difference), torch.zeros_like(difference))
    return weights, stats
