"""Unpaired preference losses: KTO, APO-zero (unpaired) and BCO.

Each example is either desirable ("chosen") or undesirable ("rejected"), with no pairing: the two groups are
separate tensors of shapes `[N_c]` and `[N_r]`, either of which may be empty. The per-example losses come back
concatenated, desirable first, already multiplied by their weights; trainers average them.

Notation: `r = log π(y|x) − log π_ref(y|x)` for each example (reference log-probs `None` means 0), `σ` the logistic
function.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from ._signature import Parameter, public_loss, tensor_inputs
from .preference_pairs import _logratio


@dataclass
class UnpairedLossOutput:
    """Result of an unpaired preference loss.

    Args:
        losses (`torch.Tensor` of shape `[N_c + N_r]`):
            Weighted per-example losses, desirable examples first; differentiable.
        chosen_rewards (`torch.Tensor` of shape `[N_c]`):
            `β·r` of the desirable examples, detached.
        rejected_rewards (`torch.Tensor` of shape `[N_r]`):
            `β·r` of the undesirable examples, detached.
        kl (`torch.Tensor` or `None`, *optional*, defaults to `None`):
            KTO only: the clamped, detached KL estimate `z` the loss used (logged as `kl`).
        reward_mean (`torch.Tensor` or `None`, *optional*, defaults to `None`):
            BCO only: the mean of all implicit rewards of the batch, for the caller's running mean `δ`; `None` when
            the batch is empty.
    """

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    kl: torch.Tensor | None = None
    reward_mean: torch.Tensor | None = None


def kto_kl_estimate(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """Local estimate of KTO's reference point: `mean(log π(y'|x) − log π_ref(y'|x))` over mismatched pairs
    `(x, y')`, detached and not yet clamped.

    Trainers average it across processes, then pass it to [`kto_loss`] as `kl` (which clamps it at 0).

    Args:
        policy_kl_logps (`torch.Tensor` of shape `[N]`):
            Policy log-probs of the mismatched completions.
        ref_kl_logps (`torch.Tensor` of shape `[N]`):
            Reference log-probs of the same completions.
    """
    return (policy_kl_logps - ref_kl_logps).mean().detach()


_Logps = tuple[torch.Tensor | None, ...]


class _Terms(NamedTuple):
    """What an unpaired formula computes: the log-ratios `r` of both groups, their per-example losses, and extra
    fields of the output."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_losses: torch.Tensor
    rejected_losses: torch.Tensor
    extra: dict[str, torch.Tensor | None] = {}


_WEIGHT_OPTIONS = (
    Parameter("desirable_weight", Parameter.KEYWORD_ONLY, default=1.0, annotation="float"),
    Parameter("undesirable_weight", Parameter.KEYWORD_ONLY, default=1.0, annotation="float"),
)


def _unpaired_loss(
    inputs: str, *, weighted: bool
) -> Callable[[Callable[..., _Terms]], Callable[..., UnpairedLossOutput]]:
    """Decorator that turns a formula `name_loss(logps, beta, *, <options>) -> _Terms` into the public loss
    `name_loss`: the (required) tensor inputs named by `inputs` (the first two tensors, the others also `None`),
    keyword-only `beta`, with `weighted` the options `desirable_weight=1.0, undesirable_weight=1.0` (which multiply
    the two groups' losses), then the formula's options. The formula receives the inputs as the tuple `logps`, in
    that order; the output holds the losses concatenated (desirable first) and the detached rewards `β·r`."""
    parameters = tensor_inputs(inputs, nullable_from=2)

    def decorate(formula: Callable[..., _Terms]) -> Callable[..., UnpairedLossOutput]:
        def run(arguments: Mapping[str, Any], options: dict[str, Any]) -> UnpairedLossOutput:
            beta = arguments["beta"]
            terms = formula(tuple(arguments[p.name] for p in parameters), beta, **options)
            chosen_losses, rejected_losses = terms.chosen_losses, terms.rejected_losses
            if weighted:
                chosen_losses = arguments["desirable_weight"] * chosen_losses
                rejected_losses = arguments["undesirable_weight"] * rejected_losses
            rewards = (beta * terms.chosen).detach(), (beta * terms.rejected).detach()
            return UnpairedLossOutput(torch.cat([chosen_losses, rejected_losses]), *rewards, **terms.extra)

        leading = _WEIGHT_OPTIONS if weighted else ()
        return public_loss(formula, parameters, run, returns="UnpairedLossOutput", leading_options=leading)

    return decorate


def _logratios(*logps: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`(r_chosen, r_rejected)` of `logps = (chosen, rejected, ref_chosen, ref_rejected)`."""
    return _logratio(logps[0], logps[2]), _logratio(logps[1], logps[3])


@_unpaired_loss(
    "policy_chosen_logps policy_rejected_logps policy_kl_logps ref_chosen_logps ref_rejected_logps ref_kl_logps",
    weighted=True,
)
def kto_loss(logps: _Logps, beta: float, *, kl: torch.Tensor | float | None = None) -> _Terms:
    """KTO (arXiv 2402.01306, Eq. 7–8): desirable `w_d·(1 − σ(β(r − z)))`, undesirable `w_u·(1 − σ(β(z − r)))`.

    The reference point `z = max(0, KL)` is detached; `KL` is estimated on mismatched pairs `(x, y')` (completions
    shifted within the batch). Pass the estimate already averaged across processes as `kl` (see
    [`kto_kl_estimate`]), or the KL log-probs and it is estimated on this batch.

    Args:
        policy_chosen_logps (`torch.Tensor` of shape `[N_c]`):
            Policy log-probs of the desirable completions (summed over tokens).
        policy_rejected_logps (`torch.Tensor` of shape `[N_r]`):
            Policy log-probs of the undesirable completions.
        policy_kl_logps (`torch.Tensor` of shape `[N]` or `None`):
            Policy log-probs of the mismatched completions; unused when `kl` is given.
        ref_chosen_logps (`torch.Tensor` of shape `[N_c]` or `None`):
            Reference log-probs of the desirable completions.
        ref_rejected_logps (`torch.Tensor` of shape `[N_r]` or `None`):
            Reference log-probs of the undesirable completions.
        ref_kl_logps (`torch.Tensor` of shape `[N]` or `None`):
            Reference log-probs of the mismatched completions; unused when `kl` is given.
        beta (`float`):
            Inverse temperature β > 0.
        desirable_weight (`float`, *optional*, defaults to `1.0`):
            Weight `w_d` of desirable losses.
        undesirable_weight (`float`, *optional*, defaults to `1.0`):
            Weight `w_u` of undesirable losses.
        kl (`torch.Tensor`, `float` or `None`, *optional*, defaults to `None`):
            Pre-computed (e.g. gathered) KL estimate; clamped at 0 and detached here.
    """
    policy_chosen_logps, policy_rejected_logps, policy_kl_logps, ref_chosen_logps, ref_rejected_logps, ref_kl_logps = (
        logps
    )
    if kl is None:
        if policy_kl_logps is None or ref_kl_logps is None:
            raise ValueError(
                "kto_loss needs the KL estimate: pass `kl`, or both `policy_kl_logps` and `ref_kl_logps`."
            )
        kl = kto_kl_estimate(policy_kl_logps, ref_kl_logps)
    z = torch.as_tensor(kl, dtype=policy_chosen_logps.dtype, device=policy_chosen_logps.device).detach().clamp(min=0)
    chosen, rejected = _logratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    chosen_losses = 1 - torch.sigmoid(beta * (chosen - z))
    rejected_losses = 1 - torch.sigmoid(beta * (z - rejected))
    return _Terms(chosen, rejected, chosen_losses, rejected_losses, {"kl": z})


@_unpaired_loss("policy_chosen_logps policy_rejected_logps ref_chosen_logps ref_rejected_logps", weighted=True)
def apo_zero_unpaired_loss(logps: _Logps, beta: float) -> _Terms:
    """APO-zero for unpaired data (arXiv 2408.06266): desirable `w_d·(1 − σ(βr))`, undesirable `w_u·σ(βr)`; no KL
    term.

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta, desirable_weight,
        undesirable_weight:
            As in [`kto_loss`].
    """
    chosen, rejected = _logratios(*logps)
    return _Terms(chosen, rejected, 1 - torch.sigmoid(beta * chosen), torch.sigmoid(beta * rejected))


@_unpaired_loss("chosen_logps rejected_logps ref_chosen_logps ref_rejected_logps", weighted=False)
def bco_loss(
    logps: _Logps,
    beta: float,
    *,
    delta: float | torch.Tensor = 0.0,
    chosen_weights: torch.Tensor | None = None,
    rejected_weights: torch.Tensor | None = None,
) -> _Terms:
    """BCO (arXiv 2404.04656): a binary classifier on implicit rewards `ρ = β·r` with a reward shift `δ`:
    desirable `−logσ(ρ − δ)`, undesirable `−logσ(−(ρ − δ))`.

    `δ` is the running mean of all implicit rewards seen in training; the caller owns that state (`RunningMoments`),
    passes its current value and updates it with the returned `reward_mean`. Optional per-example weights multiply
    the losses, e.g. UDM density ratios for the undesirable examples ([`bco_udm_weights`]).

    Args:
        chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta:
            As `policy_chosen_logps`, `policy_rejected_logps`, `ref_chosen_logps`, `ref_rejected_logps` and `beta` in
            [`kto_loss`].
        delta (`float` or `torch.Tensor`, *optional*, defaults to `0.0`):
            Reward shift δ (detached).
        chosen_weights (`torch.Tensor` of shape `[N_c]`, *optional*, defaults to `None`):
            Weights of the desirable losses.
        rejected_weights (`torch.Tensor` of shape `[N_r]`, *optional*, defaults to `None`):
            Weights of the undesirable losses (UDM density ratios).
    """
    delta = delta.detach() if isinstance(delta, torch.Tensor) else delta
    chosen, rejected = _logratios(*logps)
    chosen_rewards, rejected_rewards = beta * chosen, beta * rejected
    chosen_losses = -F.logsigmoid(chosen_rewards - delta)
    rejected_losses = -F.logsigmoid(-(rejected_rewards - delta))
    if chosen_weights is not None:
        chosen_losses = chosen_weights * chosen_losses
    if rejected_weights is not None:
        rejected_losses = rejected_weights * rejected_losses
    all_rewards = torch.cat([chosen_rewards, rejected_rewards]).detach()
    reward_mean = all_rewards.mean() if all_rewards.numel() else None
    return _Terms(chosen, rejected, chosen_losses, rejected_losses, {"reward_mean": reward_mean})


def bco_udm_weights(
    desirable_probs: torch.Tensor, min_density_ratio: float = 0.5, max_density_ratio: float = 10.0
) -> torch.Tensor:
    """BCO's UDM density ratio `clamp(p / (1 − p + 1e-8), min_density_ratio, max_density_ratio)`, with `p` a prompt
    classifier's probability that a prompt comes from the desirable distribution.

    Args:
        desirable_probs (`torch.Tensor`):
            `p = P(desirable | prompt)` of each undesirable example's prompt.
        min_density_ratio (`float`, *optional*, defaults to `0.5`):
            Lower clamp.
        max_density_ratio (`float`, *optional*, defaults to `10.0`):
            Upper clamp.
    """
    return (desirable_probs / (1 - desirable_probs + 1e-8)).clamp(min=min_density_ratio, max=max_density_ratio)
