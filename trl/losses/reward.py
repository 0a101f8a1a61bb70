"""Bradley-Terry loss of reward modelling, with the Llama-2 margin and reward centring."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | None = None,
    center_rewards_coefficient: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Bradley-Terry loss `mean(−logσ(r_c − r_r − m)) + c·mean((r_c + r_r)²)`.

    The margin `m` is the per-pair preference strength of Llama 2 (arXiv 2307.09288, Eq. 2); the centring term with
    coefficient `c` keeps rewards near zero mean (Eisenstein et al., arXiv 2312.09244).

    Returns the scalar loss and detached local metrics (trainers gather them across processes): `accuracy`
    (fraction of pairs with `r_c > r_r`), `margin` (mean `r_c − r_r`), and `min_reward`, `mean_reward`,
    `max_reward` over chosen and rejected rewards together.

    Args:
        chosen_rewards (`torch.Tensor` of shape `[B]`):
            Scores of the chosen sequences.
        rejected_rewards (`torch.Tensor` of shape `[B]`):
            Scores of the rejected sequences.
        margin (`torch.Tensor` of shape `[B]`, *optional*, defaults to `None`):
            Required reward gap `m` per pair.
        center_rewards_coefficient (`float`, *optional*, defaults to `None`):
            Coefficient `c` of the centring term (0.01 is recommended); `None` disables it.
    """
    if chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(
            f"chosen_rewards {tuple(chosen_rewards.shape)} and rejected_rewards {tuple(rejected_rewards.shape)} must "
            "have the same shape [B]."
        )
    if margin is not None and margin.shape != chosen_rewards.shape:
        raise ValueError(f"margin {tuple(margin.shape)} must have the rewards' shape {tuple(chosen_rewards.shape)}.")
    gap = chosen_rewards - rejected_rewards
    loss = -F.logsigmoid(gap if margin is None else gap - margin).mean()
    if center_rewards_coefficient is not None:
        loss = loss + center_rewards_coefficient * ((chosen_rewards + rejected_rewards) ** 2).mean()
    with torch.no_grad():
        all_rewards = torch.cat([chosen_rewards.flatten(), rejected_rewards.flatten()])
        metrics = {
            "accuracy": (gap > 0).float().mean(),
            "margin": gap.mean(),
            "min_reward": all_rewards.min(),
            "mean_reward": all_rewards.mean(),
            "max_reward": all_rewards.max(),
        }
    return loss, metrics
