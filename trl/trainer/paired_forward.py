"""The forward pass of the paired preference trainers (DPO, CPO, ORPO) and what they share around it.

A batch of B pairs from [`DataCollatorForPreference`] holds 2B rows: the B chosen rows (prompt + chosen), then the B
rejected rows (prompt + rejected). One forward pass scores all of them:

- [`completion_logps`]: per-token log-probs of the completion tokens, from the one forward module
  [`~trl.kernels.token_logps`] (LM head only at the positions that predict a completion token; padded or
  padding-free rows; logits or chunked head; encoder-decoder).
- [`paired_scores`]: from those, per sequence, the summed and the length-normalised log-probs and the completion
  lengths, plus the NLL of the chosen completions (the mean over every chosen completion token of the micro-batch),
  the sums behind the `logits/*` metrics and the MoE router auxiliary loss. [`paired_forward`] chains the two.
- [`log_paired_metrics`]: the metrics every paired trainer logs (`rewards/*`, `logps/*`, `logits/*`, `nll_loss`),
  gathered across processes (the MoE `aux_loss` is `BaseTrainer.router_aux_loss`'s).

The trainers built on it live in `trl.trainer.paired_preference_trainer` (the paired base, and the
reference-free scaffolding of CPO and ORPO) and `trl.trainer.dpo_trainer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..kernels.token_logps import TokenLogps, completion_positions, token_logps  # noqa: F401 (re-exported)
from ..losses import sequence_logps
from .base_trainer import BaseTrainer


# ================================================================================================== forward pass
def completion_logps(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    *,
    padding_free: bool = False,
    logits_to_keep: bool = True,
    is_encoder_decoder: bool = False,
    chunk_size: int | None = None,
) -> TokenLogps:
    """[`~trl.kernels.token_logps`] of the completion tokens of the rows of a [`DataCollatorForPreference`] batch
    (`input_ids`, `attention_mask`, `completion_mask` of shape `[R, T]`; other keys of the batch are not model
    inputs); the options are those of `token_logps`."""
    rows = {key: batch[key] for key in ("input_ids", "attention_mask", "completion_mask")}
    return token_logps(
        model,
        rows,
        padding_free=padding_free,
        logits_to_keep=logits_to_keep,
        is_encoder_decoder=is_encoder_decoder,
        chunk_size=chunk_size,
    )


@dataclass
class PairedScores:
    """Per-pair quantities of one forward pass over B pairs, for the loss and the metrics.

    Args:
        chosen_logps (`torch.Tensor` of shape `[B]`):
            `log π(y_c|x)`, the sum over the chosen completion tokens (DPO's LD-DPO replaces it).
        rejected_logps (`torch.Tensor` of shape `[B]`):
            The same for the rejected completions.
        chosen_mean_logps (`torch.Tensor` of shape `[B]`):
            The length-normalised `log π(y_c|x) / |y_c|` (0 for an empty completion).
        rejected_mean_logps (`torch.Tensor` of shape `[B]`):
            The same for the rejected completions.
        chosen_lengths (`torch.Tensor` of shape `[B]`):
            Number of chosen completion tokens.
        rejected_lengths (`torch.Tensor` of shape `[B]`):
            Number of rejected completion tokens.
        nll_loss (`torch.Tensor`, scalar):
            Mean negative log-likelihood over every chosen completion token of the batch.
        logit_stats (`torch.Tensor` of shape `[4]`):
            Sum and count of the per-token mean logit over chosen tokens, then over rejected tokens (detached);
            summed across processes they give the `logits/*` metrics.
        aux_loss (`torch.Tensor` or `None`):
            The MoE router auxiliary loss when the model returns one.
        pair_weights (`torch.Tensor` of shape `[B]` or `None`, *optional*, defaults to `None`):
            Per-pair loss weights a trainer may set (DPO's WPO).
    """

    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    chosen_mean_logps: torch.Tensor
    rejected_mean_logps: torch.Tensor
    chosen_lengths: torch.Tensor
    rejected_lengths: torch.Tensor
    nll_loss: torch.Tensor
    logit_stats: torch.Tensor
    aux_loss: torch.Tensor | None
    pair_weights: torch.Tensor | None = None


def paired_scores(token: TokenLogps, summed_logps: torch.Tensor | None = None) -> PairedScores:
    """Reduce the per-token output of [`completion_logps`] over 2B rows to the per-pair [`PairedScores`].

    Args:
        token ([`TokenLogps`]):
            Chosen rows first, then rejected rows.
        summed_logps (`torch.Tensor` of shape `[2B]` or `None`, *optional*, defaults to `None`):
            Replaces the summed sequence log-probs (e.g. LD-DPO's weighted sum); `None` sums the completion tokens.
    """
    logps_R_T, mask_R_T = token.logps, token.mask
    half = mask_R_T.shape[0] // 2
    sums_R = sequence_logps(logps_R_T, mask_R_T, "sum") if summed_logps is None else summed_logps
    means_R = sequence_logps(logps_R_T, mask_R_T, "mean")
    lengths_R = mask_R_T.sum(dim=-1)
    chosen_tokens = mask_R_T[:half]
    nll_loss = -logps_R_T[:half][chosen_tokens].sum() / chosen_tokens.sum().clamp(min=1)
    with torch.no_grad():
        mean_logit_N = token.mean_logits()
        is_chosen_N = mask_R_T.nonzero()[:, 0] < half
        logit_stats = torch.stack(
            [
                mean_logit_N[is_chosen_N].sum(),
                is_chosen_N.sum().float(),
                mean_logit_N[~is_chosen_N].sum(),
                (~is_chosen_N).sum().float(),
            ]
        )
    return PairedScores(
        chosen_logps=sums_R[:half],
        rejected_logps=sums_R[half:],
        chosen_mean_logps=means_R[:half],
        rejected_mean_logps=means_R[half:],
        chosen_lengths=lengths_R[:half],
        rejected_lengths=lengths_R[half:],
        nll_loss=nll_loss,
        logit_stats=logit_stats,
        aux_loss=token.aux_loss,
    )


def paired_forward(model: torch.nn.Module, batch: dict[str, torch.Tensor], **options: Any) -> PairedScores:
    """[`completion_logps`] then [`paired_scores`]: one forward pass over the [chosen; rejected] rows of a batch.

    Args:
        model (`torch.nn.Module`):
            The language model.
        batch (`dict[str, torch.Tensor]`):
            Output of [`DataCollatorForPreference`].
        **options:
            `padding_free`, `logits_to_keep`, `is_encoder_decoder`, `chunk_size` of [`completion_logps`].
    """
    return paired_scores(completion_logps(model, batch, **options))


# ======================================================================================================= metrics
def _gathered_mean(trainer: BaseTrainer, value: torch.Tensor) -> torch.Tensor:
    return trainer.accelerator.gather(value.detach().float().reshape(1)).mean()


@torch.no_grad()
def log_paired_metrics(
    trainer: BaseTrainer,
    scores: PairedScores,
    rewards: tuple[torch.Tensor, torch.Tensor],
    mode: str,
    *,
    mean_logps: bool = False,
    log_nll: bool = False,
) -> None:
    """Record the metrics of a paired trainer, averaged over the pairs of every process.

    `rewards/chosen`, `rewards/rejected`, `rewards/accuracies` (share of pairs whose chosen reward is strictly
    higher), `rewards/margins`, `logps/chosen`, `logps/rejected`, `logits/chosen`, `logits/rejected` (mean logit over
    the completion tokens and the vocabulary) and, with `log_nll`, `nll_loss`.

    Args:
        trainer ([`BaseTrainer`]):
            Its `accelerator` gathers the values, its `log_metric` stores them.
        scores ([`PairedScores`]):
            Output of the forward pass.
        rewards (`tuple[torch.Tensor, torch.Tensor]`):
            Chosen and rejected rewards of shape `[B]`, as the method defines them.
        mode (`str`):
            `"train"` or `"eval"`.
        mean_logps (`bool`, *optional*, defaults to `False`):
            Log the length-normalised log-probs as `logps/*` instead of the sums.
        log_nll (`bool`, *optional*, defaults to `False`):
            Also log `nll_loss`.
    """
    chosen_rewards, rejected_rewards = (reward.detach() for reward in rewards)
    chosen_logps, rejected_logps = (
        (scores.chosen_mean_logps, scores.rejected_mean_logps)
        if mean_logps
        else (scores.chosen_logps, scores.rejected_logps)
    )
    per_pair = torch.stack(
        [
            chosen_rewards,
            rejected_rewards,
            (chosen_rewards > rejected_rewards).float(),
            chosen_rewards - rejected_rewards,
            chosen_logps.detach(),
            rejected_logps.detach(),
        ],
        dim=1,
    ).float()
    means = trainer.accelerator.gather_for_metrics(per_pair).mean(dim=0).tolist()
    names = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen")
    for name, value in zip((*names, "logps/rejected"), means):
        trainer.log_metric(name, value, mode)
    chosen_sum, chosen_count, rejected_sum, rejected_count = (
        trainer.accelerator.gather(scores.logit_stats.reshape(1, 4)).sum(dim=0).tolist()
    )
    if chosen_count:
        trainer.log_metric("logits/chosen", chosen_sum / chosen_count, mode)
    if rejected_count:
        trainer.log_metric("logits/rejected", rejected_sum / rejected_count, mode)
    if log_nll:
        trainer.log_metric("nll_loss", _gathered_mean(trainer, scores.nll_loss), mode)
