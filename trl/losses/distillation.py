"""Distillation objectives: divergences between a student's and a teacher's next-token distributions.

With `s = log_softmax(student_logits / T)` and `t = log_softmax(teacher_logits / T)` at one position:

- forward KL (`beta = 0`, mode-covering): `KL(teacher || student) = sum_v p_t (t - s)`;
- reverse KL (`beta = 1`, mode-seeking): `KL(student || teacher) = sum_v p_s (s - t)`;
- generalised JSD (GKD, arXiv 2306.13649) for `0 < beta < 1`, with the mixture `m = beta p_t + (1 - beta) p_s`
  formed in log space: `JSD_beta = beta KL(teacher || m) + (1 - beta) KL(student || m)`. `beta = 0.5` is the
  symmetric Jensen-Shannon divergence.

[`distillation_loss`] optionally restricts both distributions to a small support first (`top_k`: the teacher's
top-k tokens for the forward term, the student's, or the sampled token, for the reverse one; their union for the
JSD) with the remaining probability mass kept as one "tail" bucket, as the on-policy distillation trainer does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


JSD_REDUCTIONS = ("batchmean", "sum", "mean", "none")
REVERSE_TOP_1_MODES = ("sampled", "argmax")
# exp(-1e4) is exactly 0 in float32: the log-prob of tokens outside a top-k support.
OFF_SUPPORT_LOGP = -1e4


def _kl_terms(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """`sum_v p_v (log p_v - log q_v)` over the last dimension; entries with `p_v = 0` (`log p_v = -inf`) add 0."""
    # Masked entries are replaced before the product, so that no NaN reaches the backward pass through them.
    present = torch.isfinite(log_p)
    log_p, log_q = log_p.masked_fill(~present, 0.0), log_q.masked_fill(~present, 0.0)
    return torch.where(present, log_p.exp() * (log_p - log_q), torch.zeros_like(log_p)).sum(dim=-1)


def token_forward_kl(student_logps: torch.Tensor, teacher_logps: torch.Tensor) -> torch.Tensor:
    """Per-position forward KL, `KL(teacher || student)`, from log-probabilities `[..., V]`; returns `[...]`."""
    return _kl_terms(teacher_logps, student_logps)


def token_reverse_kl(student_logps: torch.Tensor, teacher_logps: torch.Tensor) -> torch.Tensor:
    """Per-position reverse KL, `KL(student || teacher)`, from log-probabilities `[..., V]`; returns `[...]`."""
    return _kl_terms(student_logps, teacher_logps)


def sampled_reverse_kl(student_token_logps: torch.Tensor, teacher_token_logps: torch.Tensor) -> torch.Tensor:
    """Single-sample estimate of the reverse KL at tokens sampled from the student: `log p_s(y) - log p_t(y)`.

    Its expectation under the student is `KL(student || teacher)` (the k1 estimator); used as the per-token
    divergence metric of on-policy distillation, where only the sampled token's log-probs are at hand.
    """
    return student_token_logps - teacher_token_logps


def token_generalized_jsd(student_logps: torch.Tensor, teacher_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-position generalised JSD from log-probabilities `[..., V]`; returns `[...]`.

    `beta = 0` is the forward KL and `beta = 1` the reverse KL (the limits of the JSD vanish there, so the reference
    definition switches to the KL itself); otherwise `beta KL(t || m) + (1 - beta) KL(s || m)` with
    `m = beta p_t + (1 - beta) p_s`.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1] (0: forward KL, 1: reverse KL), got {beta}.")
    if beta == 0.0:
        return token_forward_kl(student_logps, teacher_logps)
    if beta == 1.0:
        return token_reverse_kl(student_logps, teacher_logps)
    mixture_logps = torch.logaddexp(student_logps + math.log(1 - beta), teacher_logps + math.log(beta))
    return beta * _kl_terms(teacher_logps, mixture_logps) + (1 - beta) * _kl_terms(student_logps, mixture_logps)


def _reduce(divergence: torch.Tensor, mask: torch.Tensor | None, reduction: str, num_items: int | None):
    if reduction not in JSD_REDUCTIONS:
        raise ValueError(f"reduction must be one of {JSD_REDUCTIONS}, got {reduction!r}.")
    if mask is not None:
        divergence = divergence * mask
    if reduction == "none":
        return divergence
    if reduction == "sum":
        return divergence.sum()
    if reduction == "mean":
        return divergence.sum() / divergence.numel()
    # batchmean: the mean over scored tokens, or over `num_items` (the tokens of the accumulated batch).
    count = num_items if num_items is not None else (mask.sum() if mask is not None else divergence.numel())
    return divergence.sum() / max(count, 1) if isinstance(count, int) else divergence.sum() / count.clamp(min=1)


def generalized_jsd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    beta: float = 0.5,
    temperature: float = 1.0,
    reduction: str = "batchmean",
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Generalised Jensen-Shannon divergence between student and teacher next-token distributions (GKD).

    Args:
        student_logits (`torch.Tensor` of shape `[..., V]`):
            Student logits, e.g. `[B, T, V]` or `[N, V]`.
        teacher_logits (`torch.Tensor` of shape `[..., V]`):
            Teacher logits at the same positions.
        labels (`torch.Tensor` of shape `[...]` or `None`, *optional*, defaults to `None`):
            Positions with `-100` are not counted; `None` counts every position.
        beta (`float`, *optional*, defaults to `0.5`):
            `0`: forward KL `KL(teacher || student)`; `1`: reverse KL `KL(student || teacher)`; in between, the
            generalised JSD with mixture `beta p_teacher + (1 - beta) p_student`.
        temperature (`float`, *optional*, defaults to `1.0`):
            Both logits are divided by it before the log-softmax.
        reduction (`str`, *optional*, defaults to `"batchmean"`):
            `"batchmean"`: sum over counted positions divided by their number (or by `num_items_in_batch`);
            `"sum"`; `"mean"`: the sum divided by the number of positions, masked ones included; `"none"`: the
            per-position divergence `[...]`, 0 at masked positions.
        num_items_in_batch (`int`, `torch.Tensor` or `None`, *optional*, defaults to `None`):
            Normaliser of `"batchmean"` (the counted tokens of the whole accumulated batch).

    Returns:
        `torch.Tensor`: a scalar, or `[...]` with `reduction="none"`.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}.")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ "
            "in shape: both models must score the same positions over the same vocabulary."
        )
    student_logps = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher_logps = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    divergence = token_generalized_jsd(student_logps, teacher_logps, beta)
    mask = (labels != -100).to(divergence.dtype) if labels is not None else None
    return _reduce(divergence, mask, reduction, num_items_in_batch)


def divergence_support(
    student_logps_N_V: torch.Tensor,
    teacher_logps_N_V: torch.Tensor,
    beta: float,
    top_k: int,
    sampled_ids_N: torch.Tensor | None = None,
    reverse_top_1_mode: str = "sampled",
) -> torch.Tensor:
    """Boolean `[N, V]` support of the top-k divergence: the teacher's top-k for the forward term (`beta < 1`), the
    student's top-k for the reverse term (`beta > 0`; with `top_k = 1`, the sampled token or the student's arg-max
    per `reverse_top_1_mode`), their union for the JSD."""
    if reverse_top_1_mode not in REVERSE_TOP_1_MODES:
        raise ValueError(f"reverse_top_1_mode must be one of {REVERSE_TOP_1_MODES}, got {reverse_top_1_mode!r}.")
    support = torch.zeros_like(student_logps_N_V, dtype=torch.bool)
    if beta < 1.0:
        support.scatter_(1, teacher_logps_N_V.topk(top_k, dim=-1).indices, True)
    if beta > 0.0:
        if top_k == 1 and reverse_top_1_mode == "sampled":
            if sampled_ids_N is None:
                raise ValueError("reverse_top_1_mode='sampled' needs the sampled token ids.")
            reverse = sampled_ids_N.unsqueeze(-1)
        else:
            reverse = student_logps_N_V.topk(top_k, dim=-1).indices
        support.scatter_(1, reverse, True)
    return support


def restrict_to_support(logps_N_V: torch.Tensor, support_N_V: torch.Tensor, add_tail: bool) -> torch.Tensor:
    """The distribution restricted to `support_N_V`: `[N, V + 1]` log-probs with the mass outside the support in the
    last (tail) entry when `add_tail`, else `[N, V]` renormalised over the support. Off the support the log-prob is
    `OFF_SUPPORT_LOGP` (exactly 0 probability in float32, yet finite, so gradients stay NaN-free)."""
    restricted = logps_N_V.masked_fill(~support_N_V, OFF_SUPPORT_LOGP)
    support_mass = torch.logsumexp(restricted, dim=-1, keepdim=True)
    if not add_tail:
        return restricted - support_mass
    # log(1 - exp(a)) for a <= 0, clamped so that a support holding all the mass gives a finite tiny tail.
    tail = torch.log(-torch.expm1(support_mass.clamp(max=-1e-7)))
    return torch.cat([restricted, tail], dim=-1)


def distillation_loss(
    student_logits_N_V: torch.Tensor,
    teacher_logits_N_V: torch.Tensor,
    beta: float = 1.0,
    temperature: float = 1.0,
    top_k: int = 0,
    add_tail: bool = True,
    sampled_ids_N: torch.Tensor | None = None,
    reverse_top_1_mode: str = "sampled",
    num_items_in_batch: int | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised JSD over the N scored positions, on the full vocabulary or on a top-k support.

    Args:
        student_logits_N_V (`torch.Tensor` of shape `[N, V]`):
            Student logits at the scored positions.
        teacher_logits_N_V (`torch.Tensor` of shape `[N, V]`):
            Teacher logits at the same positions.
        beta (`float`, *optional*, defaults to `1.0`):
            As in [`generalized_jsd_loss`].
        temperature (`float`, *optional*, defaults to `1.0`):
            Both logits are divided by it.
        top_k (`int`, *optional*, defaults to `0`):
            `0`: the full vocabulary; otherwise the support of [`divergence_support`].
        add_tail (`bool`, *optional*, defaults to `True`):
            Keep the mass outside the support as one extra bucket (else renormalise over the support).
        sampled_ids_N (`torch.Tensor` of shape `[N]` or `None`, *optional*, defaults to `None`):
            The tokens in the sequences (the reverse support when `top_k = 1` and `reverse_top_1_mode="sampled"`).
        reverse_top_1_mode (`str`, *optional*, defaults to `"sampled"`):
            `"sampled"` or `"argmax"` (the student's most likely token).
        num_items_in_batch (`int`, `torch.Tensor` or `None`, *optional*, defaults to `None`):
            The normaliser (`None`: N).

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: the loss (sum of per-position divergences over the normaliser) and the
        detached per-position divergence `[N]`.
    """
    assert student_logits_N_V.shape == teacher_logits_N_V.shape, "student and teacher logits are misaligned"
    student_logps = F.log_softmax(student_logits_N_V.float() / temperature, dim=-1)
    teacher_logps = F.log_softmax(teacher_logits_N_V.float() / temperature, dim=-1)
    if top_k:
        support = divergence_support(
            student_logps.detach(), teacher_logps, beta, top_k, sampled_ids_N, reverse_top_1_mode
        )
        student_logps = restrict_to_support(student_logps, support, add_tail)
        teacher_logps = restrict_to_support(teacher_logps, support, add_tail)
    divergence_N = token_generalized_jsd(student_logps, teacher_logps, beta)
    normaliser = num_items_in_batch if num_items_in_batch is not None else divergence_N.numel()
    loss = divergence_N.sum() / (normaliser if isinstance(normaliser, int) else normaliser.clamp(min=1))
    return loss, divergence_N.detach()
