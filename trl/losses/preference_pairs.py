"""What every paired preference loss builds on: the output type, the log-ratio pair of a batch, f-divergence scores,
the numerics they share and [`paired_loss`], which makes a public loss of a formula. The losses themselves are in
`trl.losses.preference` (and SimPO in `trl.losses.simpo`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F

from ._signature import Parameter, public_loss, tensor_inputs


F_DIVERGENCE_TYPES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")

# EXO needs log(ε) and log(1 − ε); with ε = 0 it substitutes this value, as the reference does.
EXO_DEFAULT_EPSILON = 1e-3


@dataclass
class PreferenceLossOutput:
    """Result of a paired preference loss.

    Args:
        losses (`torch.Tensor` of shape `[B]`):
            Per-pair loss, differentiable. The trainer reduces it (usually the mean over pairs).
        chosen_rewards (`torch.Tensor` of shape `[B]`):
            Implicit reward of the chosen completions, `β·(log π − log π_ref)`, detached (a metric).
        rejected_rewards (`torch.Tensor` of shape `[B]`):
            Implicit reward of the rejected completions, detached.
        reward_mean (`torch.Tensor` or `None`, *optional*, defaults to `None`):
            `bco_pair` only: the mean of all implicit rewards of the batch (chosen and rejected), detached, for the
            caller to update its running mean `δ` with.
    """

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    reward_mean: torch.Tensor | None = None

    @property
    def margins(self) -> torch.Tensor:
        """`chosen_rewards − rejected_rewards` (detached)."""
        return self.chosen_rewards - self.rejected_rewards

    @property
    def accuracies(self) -> torch.Tensor:
        """`1.0` where the chosen reward is strictly higher than the rejected one, else `0.0`."""
        return (self.chosen_rewards > self.rejected_rewards).float()


# ----------------------------------------------------------------------------------------------- numerics


def capped_exp(x: torch.Tensor) -> torch.Tensor:
    """`exp(x)` with `x` capped at 45% of the dtype's overflow threshold, so that the result and its square (IPO
    squares scores) stay finite for any input.

    Args:
        x (`torch.Tensor`):
            Exponent, any floating dtype.
    """
    cap = 0.45 * math.log(torch.finfo(x.dtype).max)
    return torch.exp(x.clamp(max=cap))


def _smoothed_logistic(z: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """`−(1−ε)·logσ(z) − ε·logσ(−z)`: the logistic loss with labels flipped with probability ε (cDPO)."""
    loss = -F.logsigmoid(z)
    if label_smoothing:
        loss = (1 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-z)
    return loss


# ------------------------------------------------------------------------------------- f-divergence scores


def f_divergence_scores(
    logratios: torch.Tensor, f_divergence_type: str | Enum = "reverse_kl", f_alpha_divergence_coef: float = 0.5
) -> torch.Tensor:
    """f-DPO score `h(r) = f'(π/π_ref)` of log-ratios `r`, shifted so that `h(0) = 0` (arXiv 2309.16240).

    - `reverse_kl`: `h(r) = r` (standard DPO);
    - `forward_kl`: `h(r) = 1 − e^{−r}`;
    - `js_divergence`: `h(r) = log 2 + logσ(r)` (that is `log(2u / (1 + u))` with `u = e^r`);
    - `alpha_divergence`: `h(r) = (e^{(α−1)r} − 1) / (α − 1)`, which tends to `r` (reverse KL) as `α → 1` and equals
      forward KL at `α = 0`.

    The α convention is the one of `trl` 1.x (`f_alpha_divergence_coef`, default 0.5); the f-DPO paper's α is
    `1 − α` here. The two coincide at the default 0.5. Exponentials are capped ([`capped_exp`]), so large
    log-ratios give large finite scores; half-precision inputs are scored in float32.

    Args:
        logratios (`torch.Tensor`):
            `log π − log π_ref` per sequence.
        f_divergence_type (`str` or `FDivergenceType`, *optional*, defaults to `"reverse_kl"`):
            One of `"reverse_kl"`, `"forward_kl"`, `"js_divergence"`, `"alpha_divergence"` (an enum member with that
            `value` is accepted).
        f_alpha_divergence_coef (`float`, *optional*, defaults to `0.5`):
            α of the α-divergence; ignored by the other divergences.
    """
    kind = getattr(f_divergence_type, "value", f_divergence_type)
    if kind == "reverse_kl":
        return logratios
    if logratios.dtype in (torch.float16, torch.bfloat16):
        # Exponentials of log-ratios leave the half-precision range quickly: score in float32.
        logratios = logratios.float()
    if kind == "forward_kl":
        return 1 - capped_exp(-logratios)
    if kind == "js_divergence":
        return math.log(2) + F.logsigmoid(logratios)
    if kind == "alpha_divergence":
        alpha = float(f_alpha_divergence_coef)
        if abs(alpha - 1) < 1e-6:
            return logratios
        return (capped_exp((alpha - 1) * logratios) - 1) / (alpha - 1)
    raise ValueError(f"Unknown f_divergence_type {kind!r}: use one of {list(F_DIVERGENCE_TYPES)}.")


# ----------------------------------------------------------------------------------------- shared plumbing


def _logratio(logps: torch.Tensor, ref_logps: torch.Tensor | None) -> torch.Tensor:
    return logps if ref_logps is None else logps - ref_logps


def _check_inputs(beta: float, *tensors: torch.Tensor | None) -> None:
    if not isinstance(beta, torch.Tensor) and not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}.")
    shapes = {tuple(t.shape) for t in tensors if t is not None}
    if len(shapes) > 1:
        raise ValueError(
            f"Chosen, rejected and reference log-probs must have the same shape [B], got shapes {sorted(shapes)}."
        )


def _check_smoothing(label_smoothing: float, loss_type: str, *, upper: float, inclusive: bool) -> None:
    too_high = label_smoothing > upper if inclusive else label_smoothing >= upper
    if label_smoothing < 0 or too_high:
        bracket = "]" if inclusive else ")"
        raise ValueError(
            f"label_smoothing={label_smoothing} is outside [0, {upper}{bracket}, the valid range for "
            f"loss_type={loss_type!r}; set label_smoothing in that range."
        )


@dataclass
class _Pair:
    """Log-ratios of one batch of pairs and their scores (the log-ratios themselves under reverse KL), with the
    sequence log-probs they come from (`chosen, rejected, ref_chosen, ref_rejected`)."""

    chosen_logratios: torch.Tensor
    rejected_logratios: torch.Tensor
    chosen_scores: torch.Tensor
    rejected_scores: torch.Tensor
    logps: tuple[torch.Tensor | None, ...] = ()

    @property
    def delta(self) -> torch.Tensor:
        return self.chosen_scores - self.rejected_scores

    def scored(self, f_divergence_type: str | Enum, f_alpha_divergence_coef: float) -> _Pair:
        """The same pair with f-divergence scores `h(r)` in place of the log-ratios."""
        chosen = f_divergence_scores(self.chosen_logratios, f_divergence_type, f_alpha_divergence_coef)
        rejected = f_divergence_scores(self.rejected_logratios, f_divergence_type, f_alpha_divergence_coef)
        return replace(self, chosen_scores=chosen, rejected_scores=rejected)

    def output(self, beta: float, losses: torch.Tensor, **extra: torch.Tensor | None) -> PreferenceLossOutput:
        chosen_rewards = (beta * self.chosen_logratios).detach()
        rejected_rewards = (beta * self.rejected_logratios).detach()
        return PreferenceLossOutput(losses, chosen_rewards, rejected_rewards, **extra)


def _pair(beta: float, *logps: torch.Tensor | None, both_references: bool = True) -> _Pair:
    """The pair of `logps = (chosen, rejected[, ref_chosen, ref_rejected])` (missing references are `None`).

    `both_references=False` (a loss that ignores the reference) only checks the inputs; the pair then holds the
    policy log-probs in place of log-ratios.
    """
    chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps = (*logps, None, None)[:4]
    _check_inputs(beta, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    if not both_references:
        return _Pair(chosen_logps, rejected_logps, chosen_logps, rejected_logps, logps)
    if (ref_chosen_logps is None) != (ref_rejected_logps is None):
        raise ValueError("Pass both ref_chosen_logps and ref_rejected_logps, or neither (reference-free).")
    chosen = _logratio(chosen_logps, ref_chosen_logps)
    rejected = _logratio(rejected_logps, ref_rejected_logps)
    return _Pair(chosen, rejected, chosen, rejected, logps)


def _by_length(
    pair: _Pair, chosen_lengths: torch.Tensor | None, rejected_lengths: torch.Tensor | None, loss_type: str, need: str
) -> _Pair:
    """The pair's scores divided by the completion lengths (clamped to at least 1); `need="optional"` leaves them
    unchanged without lengths."""
    if need == "required" and (chosen_lengths is None or rejected_lengths is None):
        raise ValueError(
            f"loss_type={loss_type!r} needs chosen_lengths and rejected_lengths (completion token counts)."
        )
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError(f"loss_type={loss_type!r}: pass both chosen_lengths and rejected_lengths, or neither.")
    if chosen_lengths is None:
        return pair
    chosen_lengths = chosen_lengths.to(pair.chosen_scores.dtype).clamp(min=1)
    rejected_lengths = rejected_lengths.to(pair.rejected_scores.dtype).clamp(min=1)
    return replace(
        pair,
        chosen_scores=pair.chosen_scores / chosen_lengths,
        rejected_scores=pair.rejected_scores / rejected_lengths,
    )


# ------------------------------------------------------------------------------ assembling the public losses

_PAIR_INPUTS = tensor_inputs(
    "chosen_logps rejected_logps ref_chosen_logps ref_rejected_logps", nullable_from=2, default_from=2
)
_LENGTH_OPTIONS = (
    Parameter("chosen_lengths", Parameter.KEYWORD_ONLY, default=None, annotation="torch.Tensor | None"),
    Parameter("rejected_lengths", Parameter.KEYWORD_ONLY, default=None, annotation="torch.Tensor | None"),
)
_DIVERGENCE_OPTIONS = (
    Parameter("f_divergence_type", Parameter.KEYWORD_ONLY, default="reverse_kl", annotation="str | Enum"),
    Parameter("f_alpha_divergence_coef", Parameter.KEYWORD_ONLY, default=0.5, annotation="float"),
)


def paired_loss(
    *,
    divergence: bool = False,
    lengths: str | None = None,
    smoothing: tuple[float, bool] | None = None,
    validate: Callable[[Mapping[str, Any]], None] | None = None,
    both_references: bool = True,
) -> Callable[[Callable[..., Any]], Callable[..., PreferenceLossOutput]]:
    """Decorator that turns a formula `name_loss(pair, beta, *, <options>)` into the public paired loss `name_loss`
    `(chosen_logps, rejected_logps, ref_chosen_logps=None, ref_rejected_logps=None, *, beta, <options>)`.

    A call runs, in this order: `validate(arguments)`; the `label_smoothing` range check when `smoothing` is
    `(upper, inclusive)`; the [`_pair`] of the inputs (`both_references` as there); with `divergence`, the
    f-divergence scores (options `f_divergence_type="reverse_kl"`, `f_alpha_divergence_coef=0.5`); with `lengths`
    (`"required"` or `"optional"`), the scores divided by the completion lengths (options `chosen_lengths=None`,
    `rejected_lengths=None`); then the formula. The options added come after the formula's own, lengths first. A
    formula returns the per-pair losses (rewards `β·r` are added here) or a whole [`PreferenceLossOutput`].
    """

    def decorate(formula: Callable[..., Any]) -> Callable[..., PreferenceLossOutput]:
        loss_type = formula.__name__.removesuffix("_loss")

        def run(arguments: Mapping[str, Any], options: dict[str, Any]) -> PreferenceLossOutput:
            beta = arguments["beta"]
            if validate is not None:
                validate(arguments)
            if smoothing is not None:
                upper, inclusive = smoothing
                _check_smoothing(arguments["label_smoothing"], loss_type, upper=upper, inclusive=inclusive)
            logps = tuple(arguments[parameter.name] for parameter in _PAIR_INPUTS)
            pair = _pair(beta, *logps, both_references=both_references)
            if divergence:
                pair = pair.scored(arguments["f_divergence_type"], arguments["f_alpha_divergence_coef"])
            if lengths is not None:
                pair = _by_length(pair, arguments["chosen_lengths"], arguments["rejected_lengths"], loss_type, lengths)
            result = formula(pair, beta, **options)
            return result if isinstance(result, PreferenceLossOutput) else pair.output(beta, result)

        extra = (*(_LENGTH_OPTIONS if lengths else ()), *(_DIVERGENCE_OPTIONS if divergence else ()))
        return public_loss(formula, _PAIR_INPUTS, run, returns="PreferenceLossOutput", extra_options=extra)

    return decorate
