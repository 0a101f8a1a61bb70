"""Rewards to advantages: reward aggregation, GRPO group advantages, RLOO leave-one-out, and PPO's GAE.

Online trainers score each completion with several reward functions (`rewards_B_F`, one column per function). A
function returns `None` for samples it does not apply to; those arrive here as NaN and every statistic below is
NaN-aware. Completions come in groups of `num_generations` (`G`) consecutive rows that share a prompt, so
`rewards_B.view(-1, G)` is `rewards_P_G` (`P` prompts).

Conventions fixed here (and tested in `tests/test_losses_policy.py`):

- Standard deviations are Bessel-corrected (divide by `n − 1`) over the non-NaN values; fewer than two values give a
  standard deviation of 0.
- A completion whose reward is NaN (every reward function returned `None`) is *unscorable*: it is left out of its
  group's mean and standard deviation and gets an advantage of exactly 0, so it contributes no policy gradient.
- `frac_reward_zero_std` is the fraction of groups whose reward standard deviation is 0: groups that carry no
  learning signal. It is measured on groups whatever `scale_rewards` is (the reference measures the batch standard
  deviation under `scale_rewards="batch"`, which says nothing about the groups).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


SCALE_REWARDS = ("group", "batch", "none")
MULTI_OBJECTIVE_AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")


# ----------------------------------------------------------------------------------------------- NaN-aware stats


def nan_mean_std(values: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> tuple[torch.Tensor, ...]:
    """Mean and Bessel-corrected standard deviation over the non-NaN entries of `values`.

    A slice with no valid entry has mean NaN; a slice with fewer than two valid entries has standard deviation 0.

    Args:
        values (`torch.Tensor`):
            Any shape; NaN marks a missing value.
        dim (`int` or `None`, *optional*, defaults to `None`):
            Dimension to reduce; `None` reduces over every element.
        keepdim (`bool`, *optional*, defaults to `False`):
            Keep the reduced dimension (with size 1).

    Returns:
        `tuple[torch.Tensor, torch.Tensor, torch.Tensor]`: the mean, the standard deviation and the number of valid
        entries.
    """
    if dim is None:
        values, dim = values.reshape(-1), 0
    valid = ~torch.isnan(values)
    count = valid.sum(dim=dim, keepdim=True)
    filled = torch.where(valid, values, torch.zeros_like(values))
    mean = filled.sum(dim=dim, keepdim=True) / count.clamp(min=1)
    deviations = torch.where(valid, values - mean, torch.zeros_like(values))
    variance = deviations.square().sum(dim=dim, keepdim=True) / (count - 1).clamp(min=1)
    std = torch.where(count >= 2, variance.sqrt(), torch.zeros_like(variance))
    mean = torch.where(count >= 1, mean, torch.full_like(mean, float("nan")))
    if not keepdim:
        mean, std, count = mean.squeeze(dim), std.squeeze(dim), count.squeeze(dim)
    return mean, std, count


def _grouped(rewards_B: torch.Tensor, num_generations: int) -> torch.Tensor:
    if rewards_B.dim() != 1:
        raise ValueError(f"rewards must have shape [B], got {tuple(rewards_B.shape)}.")
    if num_generations < 1 or rewards_B.numel() % num_generations != 0:
        raise ValueError(
            f"The batch of {rewards_B.numel()} rewards is not a whole number of groups of num_generations="
            f"{num_generations}: pass the rewards of complete groups (gather them across processes first)."
        )
    return rewards_B.view(-1, num_generations)


def _group_stats(rewards_P_G: torch.Tensor) -> dict[str, torch.Tensor]:
    mean_P, std_P, _ = nan_mean_std(rewards_P_G, dim=1)
    return {
        "mean_P": mean_P,
        "std_P": std_P,
        "reward": nan_mean_std(rewards_P_G)[0],
        "frac_reward_zero_std": torch.isclose(std_P, torch.zeros_like(std_P)).float().mean(),
    }


# ---------------------------------------------------------------------------------------------- reward aggregation


def aggregate_rewards(
    rewards_B_F: torch.Tensor,
    weights_F: torch.Tensor | Sequence[float] | None = None,
    multi_objective_aggregation: str = "sum_then_normalize",
    num_generations: int | None = None,
    eps: float = 1e-4,
) -> torch.Tensor:
    """Combine the rewards of several reward functions into one reward per completion.

    - `"sum_then_normalize"` (default): `r = Σ_k w_k·r_k` over the functions that scored the row (NaN-aware sum).
    - `"normalize_then_sum"` (GDPO, arXiv 2601.05242): each function's rewards are first normalised within their
      group, `(r_k − mean_group) / (std_group + eps)`, then summed with the weights. [`compute_advantages`]
      batch-normalises the result.

    A row where every function returned `None` (all NaN) gets a NaN reward: it is unscorable, and
    [`group_advantages`] gives it a zero advantage. (The reference sums NaNs to a reward of 0, which then pulls the
    group mean.)

    Args:
        rewards_B_F (`torch.Tensor` of shape `[B, F]`):
            Reward of each completion under each of the `F` reward functions; NaN where a function returned `None`.
        weights_F (`torch.Tensor` or `Sequence[float]`, *optional*, defaults to `None`):
            Weight of each function (`reward_weights`); `None` weighs them all 1.
        multi_objective_aggregation (`str`, *optional*, defaults to `"sum_then_normalize"`):
            `"sum_then_normalize"` or `"normalize_then_sum"`.
        num_generations (`int`, *optional*):
            Group size; required by `"normalize_then_sum"`.
        eps (`float`, *optional*, defaults to `1e-4`):
            Added to the group standard deviation by `"normalize_then_sum"`.

    Returns:
        `torch.Tensor` of shape `[B]`: the aggregated rewards.
    """
    if rewards_B_F.dim() != 2:
        raise ValueError(f"rewards_B_F must have shape [B, F], got {tuple(rewards_B_F.shape)}.")
    num_funcs = rewards_B_F.shape[1]
    if weights_F is None:
        weights_F = torch.ones(num_funcs, dtype=rewards_B_F.dtype, device=rewards_B_F.device)
    weights_F = torch.as_tensor(weights_F, dtype=rewards_B_F.dtype, device=rewards_B_F.device)
    if weights_F.shape != (num_funcs,):
        raise ValueError(
            f"Got {weights_F.numel()} reward weights for {num_funcs} reward functions: pass one weight per reward "
            "function (reward_weights)."
        )
    if multi_objective_aggregation == "normalize_then_sum":
        if num_generations is None:
            raise ValueError("multi_objective_aggregation='normalize_then_sum' needs num_generations.")
        grouped = rewards_B_F.view(-1, num_generations, num_funcs)
        mean, std, _ = nan_mean_std(grouped, dim=1, keepdim=True)
        rewards_B_F = ((grouped - mean) / (std + eps)).view(-1, num_funcs)
    elif multi_objective_aggregation != "sum_then_normalize":
        raise ValueError(
            f"Unknown multi_objective_aggregation {multi_objective_aggregation!r}: use one of "
            f"{list(MULTI_OBJECTIVE_AGGREGATIONS)}."
        )
    scored = ~torch.isnan(rewards_B_F)
    weighted = torch.where(scored, rewards_B_F * weights_F, torch.zeros_like(rewards_B_F))
    total = weighted.sum(dim=1)
    return torch.where(scored.any(dim=1), total, torch.full_like(total, float("nan")))


# ---------------------------------------------------------------------------------------------------- advantages


def _normalise_scale_rewards(scale_rewards: str | bool) -> str:
    # GRPOConfig accepts the v0.x booleans: True meant per-group scaling, False none.
    if scale_rewards is True:
        return "group"
    if scale_rewards is False:
        return "none"
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"Unknown scale_rewards {scale_rewards!r}: use one of {list(SCALE_REWARDS)}.")
    return scale_rewards


def group_advantages(
    rewards_B: torch.Tensor, num_generations: int, scale_rewards: str | bool = "group", eps: float = 1e-4
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO advantages (arXiv 2402.03300): `A = r − mean_group(r)`, scaled by `scale_rewards`.

    - `"group"`: divided by `std_group + eps`;
    - `"batch"`: divided by `std_batch + eps` (the group mean is still subtracted; arXiv 2508.08221);
    - `"none"`: not divided (Dr. GRPO, arXiv 2503.20783).

    Example: rewards `[1, 0, 0, 0]` have mean 0.25 and standard deviation 0.5, so `"group"` gives
    `[0.75, −0.25, −0.25, −0.25] / 0.5001`.

    Args:
        rewards_B (`torch.Tensor` of shape `[B]`):
            One reward per completion, groups of `num_generations` consecutive rows; NaN marks an unscorable row.
        num_generations (`int`):
            Group size `G`; must divide `B`.
        scale_rewards (`str` or `bool`, *optional*, defaults to `"group"`):
            `"group"`, `"batch"` or `"none"` (`True` means `"group"`, `False` means `"none"`).
        eps (`float`, *optional*, defaults to `1e-4`):
            Added to the standard deviation before dividing.

    Returns:
        `tuple[torch.Tensor, dict[str, torch.Tensor]]`: the advantages `[B]` (0 for NaN rewards) and statistics:
        `mean_P` and `std_P` (per group), `reward` (mean of the valid rewards), `reward_std` (the mean of the group
        standard deviations, or the batch standard deviation under `"batch"`), `frac_reward_zero_std`.
    """
    scale_rewards = _normalise_scale_rewards(scale_rewards)
    rewards_P_G = _grouped(rewards_B, num_generations)
    stats = _group_stats(rewards_P_G)
    advantages_P_G = rewards_P_G - stats["mean_P"].unsqueeze(1)
    if scale_rewards == "batch":
        std = nan_mean_std(rewards_B)[1]
        stats["reward_std"] = std
    else:
        std = stats["std_P"].unsqueeze(1)
        stats["reward_std"] = stats["std_P"].mean()
    if scale_rewards != "none":
        advantages_P_G = advantages_P_G / (std + eps)
    advantages_B = advantages_P_G.reshape(-1)
    return torch.nan_to_num(advantages_B, nan=0.0), stats


def rloo_advantages(
    rewards_B: torch.Tensor, num_generations: int, normalize: bool = False, eps: float = 1e-4
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """RLOO advantages (arXiv 2402.14740): `A_i = r_i − mean_{j≠i} r_j`, the leave-one-out baseline.

    Over a group of `G` valid rewards this equals `G/(G−1)·(r_i − mean(r))`: `[1, 0, 0, 0]` gives
    `[1, −1/3, −1/3, −1/3]`. The baseline averages the *scorable* siblings only; a row with a NaN reward, or with no
    scorable sibling, gets advantage 0. RLOO folds its KL penalty into the rewards before this call
    (`r ← r − β·sequence_kl(...)`), not into the loss.

    Args:
        rewards_B (`torch.Tensor` of shape `[B]`):
            One reward per completion in groups of `num_generations` consecutive rows; NaN marks an unscorable row.
        num_generations (`int`):
            Group size `G` (at least 2 for a non-zero baseline).
        normalize (`bool`, *optional*, defaults to `False`):
            `normalize_advantages`: then `A ← (A − mean(A)) / (std(A) + eps)` over the batch's scorable rows.
        eps (`float`, *optional*, defaults to `1e-4`):
            Added to the standard deviation when normalising.

    Returns:
        `tuple[torch.Tensor, dict[str, torch.Tensor]]`: the advantages `[B]` and the same statistics as
        [`group_advantages`] (`reward_std` is the mean group standard deviation).
    """
    rewards_P_G = _grouped(rewards_B, num_generations)
    stats = _group_stats(rewards_P_G)
    stats["reward_std"] = stats["std_P"].mean()
    valid = ~torch.isnan(rewards_P_G)
    filled = torch.where(valid, rewards_P_G, torch.zeros_like(rewards_P_G))
    sibling_sum = filled.sum(dim=1, keepdim=True) - filled
    sibling_count = valid.sum(dim=1, keepdim=True) - valid.long()
    baseline = sibling_sum / sibling_count.clamp(min=1)
    has_baseline = valid & (sibling_count > 0)
    advantages_P_G = torch.where(has_baseline, rewards_P_G - baseline, torch.zeros_like(rewards_P_G))
    advantages_B = advantages_P_G.reshape(-1)
    if normalize:
        scored = has_baseline.reshape(-1)
        mean, std, _ = nan_mean_std(torch.where(scored, advantages_B, torch.full_like(advantages_B, float("nan"))))
        normalised = (advantages_B - mean) / (std + eps)
        advantages_B = torch.where(scored, normalised, torch.zeros_like(advantages_B))
    return advantages_B, stats


def compute_advantages(
    rewards_B_F: torch.Tensor,
    num_generations: int,
    weights_F: torch.Tensor | Sequence[float] | None = None,
    scale_rewards: str | bool = "group",
    multi_objective_aggregation: str = "sum_then_normalize",
    eps: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO's rewards-to-advantages step in one call: aggregate the reward functions, then normalise.

    - `"sum_then_normalize"`: `r = Σ_k w_k·r_k`, then [`group_advantages`] with `scale_rewards`.
    - `"normalize_then_sum"` (GDPO): per-function group normalisation, weighted sum `s`, then batch normalisation
      `A = (s − mean_batch(s)) / (std_batch(s) + eps)`; `scale_rewards` does not apply.

    Args:
        rewards_B_F (`torch.Tensor` of shape `[B, F]`):
            Rewards of every function for every completion (gathered across processes), NaN for `None`.
        num_generations (`int`):
            Group size `G`.
        weights_F (`torch.Tensor` or `Sequence[float]`, *optional*, defaults to `None`):
            `reward_weights`; `None` weighs every function 1.
        scale_rewards (`str` or `bool`, *optional*, defaults to `"group"`):
            `"group"`, `"batch"` or `"none"`.
        multi_objective_aggregation (`str`, *optional*, defaults to `"sum_then_normalize"`):
            `"sum_then_normalize"` or `"normalize_then_sum"`.
        eps (`float`, *optional*, defaults to `1e-4`):
            Added to every standard deviation before dividing.

    Returns:
        `tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]`: advantages `[B]`, aggregated rewards `[B]`
        (NaN for unscorable rows) and the statistics of [`group_advantages`].
    """
    rewards_B = aggregate_rewards(rewards_B_F, weights_F, multi_objective_aggregation, num_generations, eps)
    if multi_objective_aggregation == "sum_then_normalize":
        advantages_B, stats = group_advantages(rewards_B, num_generations, scale_rewards, eps)
        return advantages_B, rewards_B, stats
    stats = _group_stats(_grouped(rewards_B, num_generations))
    mean, std, _ = nan_mean_std(rewards_B)
    stats["reward_std"] = std
    advantages_B = torch.nan_to_num((rewards_B - mean) / (std + eps), nan=0.0)
    return advantages_B, rewards_B, stats


# ------------------------------------------------------------------------------------------ PPO (token-level GAE)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `values` where `mask` is true (over `dim`, or over everything)."""
    mask = mask.bool()
    filled = torch.where(mask, values, torch.zeros_like(values))
    if dim is None:
        return filled.sum() / mask.sum().clamp(min=1)
    return filled.sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(
    values_B_T: torch.Tensor, mask_B_T: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Whiten `values` over the masked positions: `(x − mean) / sqrt(var + eps)`, Bessel-corrected variance.

    With `shift_mean=False` the mean is added back, so only the scale changes (PPO's `whiten_rewards`). Positions
    outside the mask are returned as 0.

    Args:
        values_B_T (`torch.Tensor` of shape `[B, T]`):
            Values to whiten.
        mask_B_T (`torch.Tensor` of shape `[B, T]`):
            Which positions count.
        shift_mean (`bool`, *optional*, defaults to `True`):
            Centre the result on 0.
        eps (`float`, *optional*, defaults to `1e-8`):
            Added to the variance.
    """
    mask = mask_B_T.bool()
    nan = torch.full_like(values_B_T, float("nan"))
    mean, std, _ = nan_mean_std(torch.where(mask, values_B_T, nan))
    whitened = (values_B_T - mean) * torch.rsqrt(std.square() + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened, torch.zeros_like(whitened))


def gae_advantages(
    rewards_B_T: torch.Tensor, values_B_T: torch.Tensor, mask_B_T: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (arXiv 1506.02438) over completion tokens.

    `δ_t = r_t + γ·V_{t+1} − V_t` and `A_t = δ_t + γλ·A_{t+1}`, with `V` and `r` taken as 0 outside the mask (after
    the end of each completion), so the last token bootstraps from 0. Returns `(advantages, returns = A + V)`, both
    detached and 0 outside the mask. PPO whitens the advantages afterwards ([`masked_whiten`]).

    Args:
        rewards_B_T (`torch.Tensor` of shape `[B, T]`):
            Per-token rewards (PPO: `−kl_coef·KL`, plus the score on the last token).
        values_B_T (`torch.Tensor` of shape `[B, T]`):
            Value-model estimates at each token.
        mask_B_T (`torch.Tensor` of shape `[B, T]`):
            Completion mask (right-padded).
        gamma (`float`, *optional*, defaults to `1.0`):
            Discount factor.
        lam (`float`, *optional*, defaults to `0.95`):
            GAE λ.
    """
    mask = mask_B_T.bool()
    rewards = torch.where(mask, rewards_B_T, torch.zeros_like(rewards_B_T)).detach()
    values = torch.where(mask, values_B_T, torch.zeros_like(values_B_T)).detach()
    advantages = torch.zeros_like(values)
    last = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        next_values = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        last = delta + gamma * lam * last
        advantages[:, t] = last
    advantages = torch.where(mask, advantages, torch.zeros_like(advantages))
    return advantages, torch.where(mask, advantages + values, torch.zeros_like(values))
