"""From per-token log-probs to the sequence-level quantities the preference losses take.

- [`sequence_logps`]: sum (DPO, KTO, BCO) or mean (SimPO, CPO-SimPO, ORPO, IPO) over completion tokens;
- [`ld_dpo_logps`]: LD-DPO's down-weighting of the tokens past the shorter completion of a pair;
- [`wpo_sequence_weights`] and [`wpo_pair_weights`]: WPO's weighting of off-policy pairs.

Padded positions may hold anything (even `-inf`): they are selected out, never multiplied by a zero mask.
"""

from __future__ import annotations

import torch


def _masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.bool(), values, torch.zeros((), dtype=values.dtype, device=values.device)).sum(dim=-1)


def sequence_logps(per_token_logps: torch.Tensor, mask: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Reduce per-token log-probs `[B, T]` to sequence log-probs `[B]` over the positions where `mask` is 1.

    `"sum"` gives `log π(y|x)`; `"mean"` gives the length-normalised `log π(y|x) / |y|` (a completion with no token
    gives 0).

    Args:
        per_token_logps (`torch.Tensor` of shape `[B, T]`):
            Log-prob of each target token.
        mask (`torch.Tensor` of shape `[B, T]`):
            1 (or `True`) on completion tokens, 0 on prompt and padding.
        reduction (`str`, *optional*, defaults to `"sum"`):
            `"sum"` or `"mean"`.
    """
    if per_token_logps.shape != mask.shape:
        raise ValueError(f"per_token_logps {tuple(per_token_logps.shape)} and mask {tuple(mask.shape)} must match.")
    total = _masked_sum(per_token_logps, mask)
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / mask.sum(dim=-1).clamp(min=1).to(total.dtype)
    raise ValueError(f"Unknown reduction {reduction!r}: use 'sum' or 'mean'.")


def ld_dpo_logps(
    per_token_logps: torch.Tensor, mask: torch.Tensor, public_length: torch.Tensor, ld_alpha: float
) -> torch.Tensor:
    """LD-DPO sequence log-prob (arXiv 2409.06411): the sum over the first `public_length` completion tokens plus
    `ld_alpha` times the sum over the remaining ones.

    `public_length` is the length of the shorter completion of the pair, `min(|y_c|, |y_r|)`, and the same reduction
    is applied to the policy and the reference log-probs. `ld_alpha = 1` is the plain sum; `ld_alpha = 0` truncates
    both completions to the shared length.

    Args:
        per_token_logps (`torch.Tensor` of shape `[B, T]`):
            Log-prob of each target token.
        mask (`torch.Tensor` of shape `[B, T]`):
            1 on completion tokens (which need not start at position 0), 0 elsewhere.
        public_length (`torch.Tensor` of shape `[B]`):
            Number of leading completion tokens counted with weight 1.
        ld_alpha (`float`):
            Weight in [0, 1] of the tokens beyond `public_length`.
    """
    if not 0 <= ld_alpha <= 1:
        raise ValueError(f"ld_alpha must be in [0, 1], got {ld_alpha}.")
    if per_token_logps.shape != mask.shape:
        raise ValueError(f"per_token_logps {tuple(per_token_logps.shape)} and mask {tuple(mask.shape)} must match.")
    completion = mask.bool()
    position = completion.long().cumsum(dim=-1)  # 1-based index of each completion token
    public = completion & (position <= public_length.unsqueeze(-1))
    verbose = completion & ~public
    return _masked_sum(per_token_logps, public) + ld_alpha * _masked_sum(per_token_logps, verbose)


def wpo_sequence_weights(per_token_logps: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """WPO per-sequence weight `exp(mean_t[log π(y_t) − log Σ_v π(v)²])` over completion tokens (arXiv 2406.11827,
    Eq. 2), detached.

    The `Σ_v π(v)²` normaliser aligns the weight with the policy's own sampling distribution, so a completion the
    policy would likely generate weighs about 1.

    Args:
        per_token_logps (`torch.Tensor` of shape `[B, T]`):
            Policy log-prob of each target token.
        logits (`torch.Tensor` of shape `[B, T, V]`):
            The logits those log-probs come from.
        mask (`torch.Tensor` of shape `[B, T]`):
            1 on completion tokens.
    """
    with torch.no_grad():
        log_sum_sq = torch.logsumexp(2 * logits.float(), dim=-1) - 2 * torch.logsumexp(logits.float(), dim=-1)
        aligned = per_token_logps.float() - log_sum_sq
        return torch.exp(sequence_logps(aligned, mask, "mean")).to(per_token_logps.dtype)


def wpo_pair_weights(chosen_weights: torch.Tensor, rejected_weights: torch.Tensor) -> torch.Tensor:
    """WPO pair weight `min(1, w_c · w_r)` from the two [`wpo_sequence_weights`] (detached).

    `trl` 1.x drops the cap at 1; the cap keeps a pair the policy finds more likely than its own samples from
    weighing more than an on-policy pair.

    Args:
        chosen_weights (`torch.Tensor` of shape `[B]`):
            Weights of the chosen completions.
        rejected_weights (`torch.Tensor` of shape `[B]`):
            Weights of the rejected completions.
    """
    return (chosen_weights * rejected_weights).detach().clamp(max=1.0)
