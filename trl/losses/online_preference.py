"""Objectives of the online preference methods that compare two sampled completions per prompt.

- Online DPO (arXiv 2402.04792) uses the paired losses of `preference` (`sigmoid`, `ipo`) on the chosen / rejected
  completions picked by a judge or a reward;
- [`nash_md_loss`]: Nash-MD (arXiv 2312.00886), REINFORCE on the policy's samples with the preference against the
  geometric-mixture samples as the reward and a KL penalty to the reference;
- [`xpo_loss`]: XPO (arXiv 2405.21046), the DPO loss plus an exploration bonus on the reference's samples;
- [`preference_probability`]: the Bradley-Terry probability that the first completion is preferred.

Log-probs here are summed over completion tokens (`[B]`) unless their name says `_B_T` (per token).
"""

from __future__ import annotations

import torch

from .preference import PreferenceLossOutput, preference_loss


ONLINE_PREFERENCE_LOSS_TYPES = ("sigmoid", "ipo")


def preference_probability(first_scores_P: torch.Tensor, second_scores_P: torch.Tensor) -> torch.Tensor:
    """`P(first ≻ second) = σ(r_first − r_second)` (Bradley-Terry) for scores `[P]`."""
    return torch.sigmoid(first_scores_P - second_scores_P)


def nash_md_loss(
    logps_B_T: torch.Tensor,
    ref_logps_B_T: torch.Tensor,
    mask_B_T: torch.Tensor,
    probabilities_B: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The Nash-MD loss on completions `y ~ π_θ`, averaged over the sequences:

        L = mean_i [ β·Σ_t sg(log π_θ(y_it) − log π_ref(y_it))·log π_θ(y_it) − (p_i − ½)·Σ_t log π_θ(y_it) ]

    The first term is the REINFORCE estimator of the gradient of `β·KL(π_θ‖π_ref)`; the second is REINFORCE with the
    preference probability `p_i = P(y_i ≻ y'_i)` against a geometric-mixture sample `y'_i` as the reward and `½` as
    the baseline. Its value is not the objective: only its gradient is.

    Args:
        logps_B_T (`torch.Tensor` of shape `[B, T]`):
            Policy log-probs of the policy's completions (with gradient).
        ref_logps_B_T (`torch.Tensor` of shape `[B, T]`):
            Reference log-probs of the same tokens.
        mask_B_T (`torch.Tensor` of shape `[B, T]`):
            Completion mask.
        probabilities_B (`torch.Tensor` of shape `[B]`):
            Probability that each policy completion is preferred to its mixture completion.
        beta (`float`):
            KL coefficient β ≥ 0.

    Returns:
        `(loss, metrics)`: the scalar loss and, per sequence `[B]` (detached), `kl` (`Σ_t log π_θ − log π_ref`),
        `score` (`(p − ½)·Σ_t log π_θ`) and `entropy` (`−Σ_t log π_θ`).
    """
    if logps_B_T.shape != ref_logps_B_T.shape or logps_B_T.shape != mask_B_T.shape:
        raise ValueError(
            f"logps {tuple(logps_B_T.shape)}, ref_logps {tuple(ref_logps_B_T.shape)} and mask "
            f"{tuple(mask_B_T.shape)} must have the same shape."
        )
    if probabilities_B.shape != logps_B_T.shape[:1]:
        raise ValueError(f"probabilities {tuple(probabilities_B.shape)} must have one value per sequence.")
    mask = mask_B_T.bool()
    zero = torch.zeros((), dtype=logps_B_T.dtype, device=logps_B_T.device)
    logps_B_T = torch.where(mask, logps_B_T, zero)
    log_ratio_B_T = torch.where(mask, logps_B_T.detach() - ref_logps_B_T, zero)
    sequence_logps_B = logps_B_T.sum(dim=1)
    kl_term_B = (log_ratio_B_T * logps_B_T).sum(dim=1)
    score_B = (probabilities_B.to(logps_B_T.dtype) - 0.5) * sequence_logps_B
    loss = (beta * kl_term_B - score_B).mean()
    metrics = {"kl": log_ratio_B_T.sum(dim=1), "score": score_B.detach(), "entropy": -sequence_logps_B.detach()}
    return loss, metrics


def xpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    ref_sample_logps: torch.Tensor,
    *,
    beta: float,
    alpha: float,
    loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, PreferenceLossOutput]:
    """The XPO loss per pair: the DPO loss of the pair plus `α·log π_θ(y_ref)`, the exploration bonus on the
    reference's sample of the pair:

        L_i = dpo_i + α·Σ_t log π_θ(y_ref,it),   dpo_i = −logσ(βΔ_i) (sigmoid) or (Δ_i − 1/(2β))² (ipo),

    with `Δ = (log π_θ(y_c) − log π_ref(y_c)) − (log π_θ(y_r) − log π_ref(y_r))` on summed log-probs. Minimising the
    bonus lowers the policy's likelihood of what the reference would say, which drives exploration.

    Args:
        chosen_logps, rejected_logps (`torch.Tensor` of shape `[P]`):
            Policy log-probs of the chosen and rejected completions.
        ref_chosen_logps, ref_rejected_logps (`torch.Tensor` of shape `[P]`):
            Reference log-probs of the same completions.
        ref_sample_logps (`torch.Tensor` of shape `[P]`):
            Policy log-probs of the reference's completion of each pair (chosen or rejected).
        beta (`float`):
            β > 0 of the DPO loss.
        alpha (`float`):
            Weight α of the exploration bonus.
        loss_type (`str`, *optional*, defaults to `"sigmoid"`):
            `"sigmoid"` or `"ipo"`.

    Returns:
        `(losses, dpo)`: the per-pair loss `[P]` and the DPO part ([`PreferenceLossOutput`]).
    """
    if loss_type not in ONLINE_PREFERENCE_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {list(ONLINE_PREFERENCE_LOSS_TYPES)}, got {loss_type!r}.")
    if ref_sample_logps.shape != chosen_logps.shape:
        raise ValueError("ref_sample_logps must have one value per pair, like chosen_logps.")
    dpo = preference_loss(loss_type, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=beta)
    return dpo.losses + alpha * ref_sample_logps, dpo
