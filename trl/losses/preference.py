"""Paired preference losses: the DPO family and its f-divergence variants (SimPO in `simpo`, shared plumbing in
`preference_pairs`), behind one `loss_type -> function` table.

Every function takes sequence log-probs of the chosen and rejected completions (shape `[B]`), optionally the
reference model's, and returns a [`PreferenceLossOutput`] holding the per-pair loss and the detached implicit rewards.
DPO, CPO, Online DPO and XPO reach these functions through the `loss_type -> function` table
[`PREFERENCE_LOSSES`] and the [`preference_loss`] dispatch.

Notation used in the docstrings, for one pair:

- `r_c = log π(y_c|x) − log π_ref(y_c|x)` and `r_r` likewise: the log-ratios. Reference-free training passes
  `ref_*_logps=None`, which means `log π_ref = 0`, so `r` is the policy log-prob itself.
- `h(r)` is the f-divergence score of a log-ratio ([`f_divergence_scores`]); `h(r) = r` under reverse KL (default).
- `Δ = h(r_c) − h(r_r)`, `σ` the logistic function, `ε = label_smoothing`.

The implicit rewards reported as metrics are always `β·r_c` and `β·r_r` (detached), whatever the loss.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

# The public names of `preference_pairs` are re-exported (`X as X`): callers import them from here.
from .preference_pairs import EXO_DEFAULT_EPSILON as EXO_DEFAULT_EPSILON
from .preference_pairs import F_DIVERGENCE_TYPES as F_DIVERGENCE_TYPES
from .preference_pairs import PreferenceLossOutput as PreferenceLossOutput
from .preference_pairs import _Pair, _smoothed_logistic, paired_loss
from .preference_pairs import capped_exp as capped_exp
from .preference_pairs import f_divergence_scores as f_divergence_scores
from .simpo import alphapo_reward as alphapo_reward
from .simpo import simpo_loss as simpo_loss


# ------------------------------------------------------------------------------------- the DPO loss family
# Each loss below is written as its formula `name_loss(pair, beta, *, <own options>)` of the batch's log-ratio pair;
# `paired_loss` makes it the public function (same name and docstring) with the shared arguments, documented once
# here:
#     chosen_logps, rejected_logps (`torch.Tensor` of shape `[B]`): policy sequence log-probs.
#     ref_chosen_logps, ref_rejected_logps (`torch.Tensor` of shape `[B]` or `None`): reference sequence log-probs;
#         `None` means reference-free (log π_ref = 0).
#     beta (`float`): inverse temperature β > 0 (IPO's τ, the hinge's inverse margin).
#     f_divergence_type, f_alpha_divergence_coef: see `f_divergence_scores`; only the losses declared with
#         `divergence=True` take them (after their own options) and score the log-ratios with them.


def _check_discopop_tau(arguments: Mapping[str, object]) -> None:
    if not arguments["discopop_tau"] > 0:
        raise ValueError(f"discopop_tau must be > 0, got {arguments['discopop_tau']}.")


@paired_loss(divergence=True, smoothing=(0.5, True))
def sigmoid_loss(pair: _Pair, beta: float, *, label_smoothing: float = 0.0) -> torch.Tensor:
    """DPO: `−logσ(βΔ)` (arXiv 2305.18290); with `ε > 0`, conservative DPO `−(1−ε)logσ(βΔ) − ε·logσ(−βΔ)` (cDPO).

    At initialisation (policy = reference) the loss is `ln 2`.

    Args:
        chosen_logps (`torch.Tensor` of shape `[B]`):
            Policy log-probs of the chosen completions, summed over completion tokens.
        rejected_logps (`torch.Tensor` of shape `[B]`):
            Policy log-probs of the rejected completions.
        ref_chosen_logps (`torch.Tensor` of shape `[B]`, *optional*, defaults to `None`):
            Reference log-probs of the chosen completions; `None` for reference-free training.
        ref_rejected_logps (`torch.Tensor` of shape `[B]`, *optional*, defaults to `None`):
            Reference log-probs of the rejected completions; `None` for reference-free training.
        beta (`float`):
            Inverse temperature β > 0; larger β keeps the policy closer to the reference.
        label_smoothing (`float`, *optional*, defaults to `0.0`):
            cDPO's probability ε ∈ [0, 0.5] that a preference label is flipped.
        f_divergence_type (`str`, *optional*, defaults to `"reverse_kl"`):
            Divergence used to score log-ratios, see [`f_divergence_scores`].
        f_alpha_divergence_coef (`float`, *optional*, defaults to `0.5`):
            α of the α-divergence.
    """
    return _smoothed_logistic(beta * pair.delta, label_smoothing)


@paired_loss(divergence=True, lengths="required")
def sigmoid_norm_loss(pair: _Pair, beta: float) -> torch.Tensor:
    """Length-normalised DPO: `−logσ(β·(h(r_c)/|y_c| − h(r_r)/|y_r|))` (Tülu 3, arXiv 2411.15124).

    Args:
        chosen_lengths (`torch.Tensor` of shape `[B]`):
            Number of completion tokens of each chosen completion (clamped to at least 1).
        rejected_lengths (`torch.Tensor` of shape `[B]`):
            Number of completion tokens of each rejected completion.

    The other arguments are those of [`sigmoid_loss`].
    """
    return -F.logsigmoid(beta * pair.delta)


@paired_loss(divergence=True)
def hinge_loss(pair: _Pair, beta: float) -> torch.Tensor:
    """Hinge loss of SLiC / RSO: `relu(1 − βΔ)`, β being the inverse margin (arXiv 2305.10425, 2309.06657).

    Arguments are those of [`sigmoid_loss`] (no label smoothing).
    """
    return torch.relu(1 - beta * pair.delta)


@paired_loss(divergence=True, lengths="optional")
def ipo_loss(pair: _Pair, beta: float) -> torch.Tensor:
    """IPO: `(Δ̄ − 1/(2β))²`, β being the paper's τ (arXiv 2310.12036, Eq. 17).

    `Δ̄` is computed from **per-token-averaged** log-ratios, as the reference implementation does (the paper's
    results use this normalisation). Either pass length-normalised (mean) log-probs, or pass summed log-probs with
    `chosen_lengths`/`rejected_lengths` and the scores are divided by them here. At initialisation the loss is
    `1/(4β²)`.

    Args:
        chosen_lengths (`torch.Tensor` of shape `[B]`, *optional*, defaults to `None`):
            Completion token counts to average summed scores by; `None` when the log-probs are already means.
        rejected_lengths (`torch.Tensor` of shape `[B]`, *optional*, defaults to `None`):
            Same for the rejected completions.

    The other arguments are those of [`sigmoid_loss`].
    """
    return (pair.delta - 1 / (2 * beta)) ** 2


@paired_loss(divergence=True, smoothing=(1.0, False))
def exo_pair_loss(pair: _Pair, beta: float, *, label_smoothing: float = 0.0) -> torch.Tensor:
    """EXO (pairwise): `KL(p_θ || p_ε)` with `p_θ = softmax(β·[h(r_c), h(r_r)])` and `p_ε = [1−ε, ε]` (arXiv 2402.00856,
    Eq. 16): `σ(βΔ)(logσ(βΔ) − log(1−ε)) + σ(−βΔ)(logσ(−βΔ) − log ε)`.

    Args:
        label_smoothing (`float`, *optional*, defaults to `0.0`):
            ε ∈ [0, 1); `0` is replaced by `1e-3` (the paper's recommended value) because `log ε` must be finite.

    The other arguments are those of [`sigmoid_loss`].
    """
    epsilon = label_smoothing or EXO_DEFAULT_EPSILON
    z = beta * pair.delta
    return torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-epsilon)) + torch.sigmoid(-z) * (
        F.logsigmoid(-z) - math.log(epsilon)
    )


@paired_loss()
def nca_pair_loss(pair: _Pair, beta: float) -> torch.Tensor:
    """NCA (pairwise): `−logσ(βr_c) − ½·logσ(−βr_c) − ½·logσ(−βr_r)` (arXiv 2402.05369). At initialisation: `2 ln 2`.

    Arguments are those of [`sigmoid_loss`] (reverse KL only).
    """
    chosen, rejected = beta * pair.chosen_logratios, beta * pair.rejected_logratios
    return -F.logsigmoid(chosen) - 0.5 * F.logsigmoid(-chosen) - 0.5 * F.logsigmoid(-rejected)


@paired_loss(divergence=True, smoothing=(0.5, False))
def robust_loss(pair: _Pair, beta: float, *, label_smoothing: float = 0.0) -> torch.Tensor:
    """Robust DPO: `[−(1−ε)·logσ(βΔ) + ε·logσ(−βΔ)] / (1 − 2ε)`, an unbiased loss under label flips with probability
    ε (arXiv 2403.00409, Eq. 6). At initialisation: `ln 2` for every ε.

    Args:
        label_smoothing (`float`, *optional*, defaults to `0.0`):
            Flip probability ε ∈ [0, 0.5).

    The other arguments are those of [`sigmoid_loss`].
    """
    z = beta * pair.delta
    return (-(1 - label_smoothing) * F.logsigmoid(z) + label_smoothing * F.logsigmoid(-z)) / (1 - 2 * label_smoothing)


@paired_loss()
def bco_pair_loss(pair: _Pair, beta: float, *, reward_shift: float | torch.Tensor = 0.0) -> PreferenceLossOutput:
    """BCO (pairwise): `−logσ(βr_c − δ) − logσ(−(βr_r − δ))` (arXiv 2404.04656), δ being the running mean of the
    implicit rewards.

    The caller owns the running statistics (`RunningMoments`): it passes the current mean as `reward_shift` and updates
    its state with the returned `reward_mean`. Updating before the call (as `trl` 0.x did) or after it only changes
    which batches δ averages over. At initialisation with δ = 0 the loss is `2 ln 2`.

    Args:
        reward_shift (`float` or `torch.Tensor`, *optional*, defaults to `0.0`):
            δ, the running mean of implicit rewards; `0` reproduces `trl` 1.x (no shift).

    The other arguments are those of [`sigmoid_loss`] (reverse KL only).
    """
    delta = reward_shift.detach() if isinstance(reward_shift, torch.Tensor) else reward_shift
    chosen, rejected = beta * pair.chosen_logratios, beta * pair.rejected_logratios
    losses = -F.logsigmoid(chosen - delta) - F.logsigmoid(-(rejected - delta))
    return pair.output(beta, losses, reward_mean=torch.cat([chosen, rejected]).mean().detach())


@paired_loss()
def sppo_hard_loss(pair: _Pair, beta: float) -> torch.Tensor:
    """SPPO with hard labels: `(r_c − 1/(2β))² + (r_r + 1/(2β))²` (arXiv 2405.00675, Eq. 4.7 with the win
    probability set to 1 for the chosen and 0 for the rejected completion). At initialisation: `1/(2β²)`.

    Arguments are those of [`sigmoid_loss`] (reverse KL only).
    """
    target = 1 / (2 * beta)
    return (pair.chosen_logratios - target) ** 2 + (pair.rejected_logratios + target) ** 2


@paired_loss(smoothing=(0.5, True))
def aot_loss(pair: _Pair, beta: float, *, label_smoothing: float = 0.0) -> torch.Tensor:
    """AOT (paired): distributional alignment by optimal transport over the batch (arXiv 2406.05882).

    Sort `log π_c − log π_r` and `log π_ref,c − log π_ref,r` over the batch separately; with `d` their difference
    (sorted order), the loss is `−(1−ε)·logσ(βd) − ε·logσ(−βd)`. The per-pair losses are in sorted order, so only
    their mean is meaningful.

    Args:
        label_smoothing (`float`, *optional*, defaults to `0.0`):
            ε ∈ [0, 0.5].

    The other arguments are those of [`sigmoid_loss`] (reverse KL only).
    """
    chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps = pair.logps
    policy_margin = chosen_logps - rejected_logps
    if ref_chosen_logps is None:
        ref_sorted = torch.zeros_like(policy_margin)
    else:
        ref_sorted = torch.sort(ref_chosen_logps - ref_rejected_logps, dim=0).values
    d = torch.sort(policy_margin, dim=0).values - ref_sorted
    return _smoothed_logistic(beta * d, label_smoothing)


@paired_loss(smoothing=(0.5, True))
def aot_pair_loss(pair: _Pair, beta: float, *, label_smoothing: float = 0.0) -> torch.Tensor:
    """AOT (unpaired form; `aot_pair` in `trl` 0.x, `aot_unpaired` in 1.x) (arXiv 2406.05882).

    Sort `r_c` and `r_r` over the batch separately; with `d = sort(r_c) − sort(r_r)`, the loss is
    `−(1−ε)·logσ(βd) − ε·logσ(−βd)`. The per-pair losses are in sorted order.

    Args:
        label_smoothing (`float`, *optional*, defaults to `0.0`):
            ε ∈ [0, 0.5].

    The other arguments are those of [`sigmoid_loss`] (reverse KL only).
    """
    d = torch.sort(pair.chosen_logratios, dim=0).values - torch.sort(pair.rejected_logratios, dim=0).values
    return _smoothed_logistic(beta * d, label_smoothing)


@paired_loss()
def apo_zero_loss(pair: _Pair, beta: float) -> torch.Tensor:
    """APO-zero: `(1 − σ(βr_c)) + σ(βr_r)` (arXiv 2408.06266, Eq. 7): raise the chosen likelihood, lower the rejected
    one; for chosen completions better than the model's own outputs. At initialisation: `1`.

    Arguments are those of [`sigmoid_loss`] (reverse KL only).
    """
    return (1 - torch.sigmoid(beta * pair.chosen_logratios)) + torch.sigmoid(beta * pair.rejected_logratios)


@paired_loss()
def apo_down_loss(pair: _Pair, beta: float) -> torch.Tensor:
    """APO-down: `σ(βr_c) + (1 − σ(β(r_c − r_r)))` (arXiv 2408.06266, Eq. 8): lower both likelihoods, the rejected
    one more; for chosen completions worse than the model's own outputs. At initialisation: `1`.

    Arguments are those of [`sigmoid_loss`] (reverse KL only).
    """
    chosen = pair.chosen_logratios
    return torch.sigmoid(beta * chosen) + (1 - torch.sigmoid(beta * (chosen - pair.rejected_logratios)))


@paired_loss(divergence=True, validate=_check_discopop_tau)
def discopop_loss(pair: _Pair, beta: float, *, discopop_tau: float = 0.05) -> torch.Tensor:
    """DiscoPOP (log-ratio modulated loss): with `z = βΔ`, `(1 − σ(z/τ))·(−logσ(z)) + σ(z/τ)·e^{−z}`
    (arXiv 2406.08414, Eq. 5). The second term is computed as `exp(logσ(z/τ) − z)`, finite for any margin.
    At initialisation: `½·ln 2 + ½`.

    Args:
        discopop_tau (`float`, *optional*, defaults to `0.05`):
            Temperature τ > 0 of the mixing coefficient.

    The other arguments are those of [`sigmoid_loss`].
    """
    z = beta * pair.delta
    logistic = torch.sigmoid(-z / discopop_tau) * -F.logsigmoid(z)
    return logistic + torch.exp(F.logsigmoid(z / discopop_tau) - z)


@paired_loss(both_references=False)
def sft_loss(pair: _Pair, beta: float) -> PreferenceLossOutput:
    """Negative log-likelihood of the chosen completion, `−log π(y_c|x)`: the generation term of MPO
    (arXiv 2411.10442) and, weighted by `rpo_alpha`, of RPO (arXiv 2404.19733).

    The caller picks the normalisation by what it passes: per-sequence means give a per-sequence token average; the
    reference implementation averages over all chosen tokens of the batch. Rewards are reported as 0 (no preference
    signal); `beta` and the rejected/reference log-probs do not enter the loss.

    Arguments are those of [`sigmoid_loss`].
    """
    zeros = torch.zeros_like(pair.chosen_logratios).detach()
    return PreferenceLossOutput(-pair.chosen_logratios, zeros, zeros.clone())


# ------------------------------------------------------------------------------------------------ dispatch

PREFERENCE_LOSSES: dict[str, Callable[..., PreferenceLossOutput]] = {
    "sigmoid": sigmoid_loss,
    "sigmoid_norm": sigmoid_norm_loss,
    "hinge": hinge_loss,
    "ipo": ipo_loss,
    "exo_pair": exo_pair_loss,
    "nca_pair": nca_pair_loss,
    "robust": robust_loss,
    "bco_pair": bco_pair_loss,
    "sppo_hard": sppo_hard_loss,
    "aot": aot_loss,
    "aot_pair": aot_pair_loss,
    "aot_unpaired": aot_pair_loss,
    "apo_zero": apo_zero_loss,
    "apo_down": apo_down_loss,
    "discopop": discopop_loss,
    "sft": sft_loss,
    "simpo": simpo_loss,
}

# Loss types that accept an f-divergence other than reverse KL. `sft` does not use the log-ratios at all, so any
# divergence is accepted (and has no effect), as in the reference.
F_DIVERGENCE_LOSS_TYPES = frozenset(
    {"sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft"}
)

_POSITIONAL = ("chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps", "beta")
_OPTIONS: dict[str, frozenset[str]] = {
    name: frozenset(p for p in inspect.signature(fn).parameters if p not in _POSITIONAL)
    for name, fn in PREFERENCE_LOSSES.items()
}
_ALL_OPTIONS = frozenset().union(*_OPTIONS.values())


def _lookup(loss_type: str) -> Callable[..., PreferenceLossOutput]:
    if loss_type not in PREFERENCE_LOSSES:
        raise ValueError(f"Unknown loss_type {loss_type!r}. Valid loss types: {sorted(PREFERENCE_LOSSES)}.")
    return PREFERENCE_LOSSES[loss_type]


def preference_loss_options(loss_type: str) -> frozenset[str]:
    """Names of the keyword options (besides `beta`) that `loss_type` uses, e.g. to warn about unused settings.

    Args:
        loss_type (`str`):
            A key of [`PREFERENCE_LOSSES`].
    """
    _lookup(loss_type)
    return _OPTIONS[loss_type]


def preference_loss(
    loss_type: str,
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None = None,
    ref_rejected_logps: torch.Tensor | None = None,
    *,
    beta: float,
    **options: object,
) -> PreferenceLossOutput:
    """Compute the paired preference loss named `loss_type`.

    Trainers pass one set of options for all their loss types (multi-loss training); each loss receives only the
    options it uses (see [`preference_loss_options`]). An unknown option name, or a non-default `f_divergence_type`
    with a loss that has no f-divergence form, raises `ValueError`.

    Args:
        loss_type (`str`):
            A key of [`PREFERENCE_LOSSES`].
        chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta:
            See [`sigmoid_loss`].
        **options:
            Loss-specific options: `label_smoothing`, `f_divergence_type`, `f_alpha_divergence_coef`,
            `discopop_tau`, `reward_shift`, `chosen_lengths`, `rejected_lengths`, `simpo_gamma`, `alpha`.
    """
    fn = _lookup(loss_type)
    unknown = set(options) - _ALL_OPTIONS
    if unknown:
        raise ValueError(f"Unknown preference-loss options {sorted(unknown)}; valid options: {sorted(_ALL_OPTIONS)}.")
    divergence = options.get("f_divergence_type", "reverse_kl")
    divergence = getattr(divergence, "value", divergence)
    if divergence != "reverse_kl" and loss_type not in F_DIVERGENCE_LOSS_TYPES:
        raise ValueError(
            f"loss_type={loss_type!r} has no f-divergence form; use f_divergence_type='reverse_kl' or one of "
            f"{sorted(F_DIVERGENCE_LOSS_TYPES)}."
        )
    kwargs = {name: value for name, value in options.items() if name in _OPTIONS[loss_type]}
    return fn(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=beta, **kwargs)


def combine_losses(
    losses: Mapping[str, torch.Tensor], weights: Mapping[str, float] | Sequence[float] | None = None
) -> torch.Tensor:
    """Weighted sum of several losses, `Σ_k w_k · mean(loss_k)` (multi-loss / MPO training, arXiv 2411.10442).

    Args:
        losses (`Mapping[str, torch.Tensor]`):
            Loss name to per-example losses (or a scalar), in order.
        weights (`Mapping[str, float]`, `Sequence[float]` or `None`, *optional*, defaults to `None`):
            One weight per loss, by name or in the order of `losses`; `None` weights every loss by 1.
    """
    if not losses:
        raise ValueError("combine_losses needs at least one loss.")
    names = list(losses)
    if weights is None:
        weight_of = dict.fromkeys(names, 1.0)
    elif isinstance(weights, Mapping):
        if set(weights) != set(names):
            raise ValueError(f"loss_weights names {sorted(weights)} must match the losses {sorted(names)}.")
        weight_of = dict(weights)
    else:
        if len(weights) != len(names):
            raise ValueError(
                f"Got {len(weights)} loss_weights for {len(names)} loss types {names}: give one weight per loss type."
            )
        weight_of = dict(zip(names, weights))
    return sum(weight_of[name] * losses[name].mean() for name in names)
