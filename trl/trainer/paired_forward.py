"""The forward pass of the paired preference trainers (DPO, CPO, ORPO) and what they share around it.

A batch of B pairs from [`DataCollatorForPreference`] holds 2B rows: the B chosen rows (prompt + chosen), then the B
rejected rows (prompt + rejected). One forward pass scores all of them:

- [`completion_logps`]: per-token log-probs of the completion tokens. The LM head runs only at the positions that
  predict a completion token (a boolean `logits_to_keep` when the model's forward accepts it, otherwise the full
  logits are computed and those positions selected). Rows may be flattened into one without padding
  (`padding_free`). For encoder-decoder models the prompt feeds the encoder and the completion the decoder.
- [`paired_scores`]: from those, per sequence, the summed and the length-normalised log-probs and the completion
  lengths, plus the NLL of the chosen completions (the mean over every chosen completion token of the micro-batch),
  the sums behind the `logits/*` metrics and the MoE router auxiliary loss. [`paired_forward`] chains the two.
- [`log_paired_metrics`] and [`router_aux_loss`]: the metrics every paired trainer logs (`rewards/*`, `logps/*`,
  `logits/*`, `nll_loss`, `aux_loss`), gathered across processes.

The trainers built on it live in `trl.trainer.paired_preference_trainer` (the paired base, and the
reference-free scaffolding of CPO and ORPO) and `trl.trainer.dpo_trainer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from ..losses import sequence_logps
from .base_trainer import BaseTrainer
from .utils import flush_left, selective_log_softmax


# ================================================================================================== forward pass
class TokenLogps(NamedTuple):
    """Per-token output of [`completion_logps`] for R rows (R = 2B: chosen rows, then rejected rows).

    Args:
        logps (`torch.Tensor` of shape `[R, T]`):
            Log-prob of each completion token, 0 elsewhere.
        mask (`torch.Tensor` of shape `[R, T]`, bool):
            True at the positions of `logps` that hold a completion token.
        logits (`torch.Tensor` of shape `[N, V]`):
            The logits of those N positions, in row-major order of `mask`.
        outputs (`ModelOutput`):
            The model's output (for `aux_loss`).
    """

    logps: torch.Tensor
    mask: torch.Tensor
    logits: torch.Tensor
    outputs: Any


def completion_positions(completion_mask: torch.Tensor) -> torch.Tensor:
    """Boolean `[R, T]` mask of the positions whose logits predict a completion token (position t predicts t + 1).

    Args:
        completion_mask (`torch.Tensor` of shape `[R, T]`):
            1 on completion tokens, 0 on prompt and padding.
    """
    keep = torch.zeros_like(completion_mask, dtype=torch.bool)
    keep[:, :-1] = completion_mask[:, 1:].bool()
    return keep


def forward_inputs(
    batch: dict[str, torch.Tensor], keep: torch.Tensor, padding_free: bool = False, attn_implementation: str = ""
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Forward kwargs for the padded rows, or for the rows flattened into one without padding, and the positions
    (in the same layout) whose logits are needed.

    Args:
        batch (`dict[str, torch.Tensor]`):
            `input_ids` and `attention_mask` of shape `[R, T]`.
        keep (`torch.Tensor` of shape `[R, T]`):
            The positions whose logits are needed, see [`completion_positions`].
        padding_free (`bool`, *optional*, defaults to `False`):
            Flatten the real tokens of every row into one row with per-sequence `position_ids`.
        attn_implementation (`str`, *optional*, defaults to `""`):
            The model's attention implementation; FlashAttention also gets the cumulative sequence lengths.
    """
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    if not padding_free:
        return {"input_ids": input_ids, "attention_mask": attention_mask}, keep
    real = attention_mask.bool()
    # Position ids restart at 0 for every row: attention then keeps the sequences apart (no attention mask).
    position_ids = (attention_mask.long().cumsum(dim=-1) - 1)[real].unsqueeze(0)
    inputs = {"input_ids": input_ids[real].unsqueeze(0), "position_ids": position_ids}
    if attn_implementation.startswith("flash"):
        lengths = attention_mask.sum(dim=-1)
        cu = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
        max_len = int(lengths.max())
        inputs.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max_len, max_length_k=max_len)
    return inputs, keep[real].unsqueeze(0)


def _attn_implementation(model: torch.nn.Module) -> str:
    config = getattr(getattr(model, "module", model), "config", None)
    return getattr(config, "_attn_implementation", "") or ""


def completion_logps(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    *,
    padding_free: bool = False,
    logits_to_keep: bool = True,
    is_encoder_decoder: bool = False,
) -> TokenLogps:
    """Per-token log-probs of the completion tokens of every row, in one forward pass.

    Args:
        model (`torch.nn.Module`):
            The causal (or encoder-decoder) language model.
        batch (`dict[str, torch.Tensor]`):
            Output of [`DataCollatorForPreference`]: `input_ids`, `attention_mask`, `completion_mask` of shape
            `[R, T]`, each row prompt + completion, right-padded.
        padding_free (`bool`, *optional*, defaults to `False`):
            Run the rows flattened into one without padding (same result; needs an attention implementation that
            honours `position_ids` boundaries).
        logits_to_keep (`bool`, *optional*, defaults to `True`):
            Pass the completion positions as `logits_to_keep` so the LM head runs only there. `False` for models
            whose forward has no such argument.
        is_encoder_decoder (`bool`, *optional*, defaults to `False`):
            Encode the prompt and decode the completion.
    """
    if is_encoder_decoder:
        return _encoder_decoder_logps(model, batch)
    input_ids = batch["input_ids"]
    keep_R_T = completion_positions(batch["completion_mask"])
    targets_N = input_ids[:, 1:][keep_R_T[:, :-1]]
    inputs, keep_model = forward_inputs(batch, keep_R_T, padding_free, _attn_implementation(model))
    if logits_to_keep:
        inputs["logits_to_keep"] = keep_model
    outputs = model(**inputs, use_cache=False)
    logits_N_V = outputs.logits if logits_to_keep else outputs.logits[keep_model]
    assert logits_N_V.shape[0] == targets_N.shape[0], "kept logits and completion targets are misaligned"
    logps_N = selective_log_softmax(logits_N_V, targets_N)
    logps_R_T = logps_N.new_zeros(keep_R_T.shape).masked_scatter(keep_R_T, logps_N)
    return TokenLogps(logps_R_T, keep_R_T, logits_N_V, outputs)


def _encoder_decoder_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> TokenLogps:
    """Encoder-decoder form of [`completion_logps`]: the rows are split back into the prompt (encoder input, the
    start of each row) and the completion (decoder targets, moved to the start of their row)."""
    input_ids, completion = batch["input_ids"], batch["completion_mask"].bool()
    prompt_mask = batch["attention_mask"].bool() & ~completion
    width = max(int(prompt_mask.sum(dim=-1).max()), 1)
    mask_R_T, labels_R_T = flush_left(completion, input_ids)
    config = getattr(model, "module", model).config
    start = config.decoder_start_token_id if config.decoder_start_token_id is not None else config.pad_token_id
    # Teacher forcing: the decoder reads the start token then the completion shifted right by one.
    decoder_input_ids = torch.cat([torch.full_like(labels_R_T[:, :1], start), labels_R_T[:, :-1]], dim=1)
    decoder_input_ids = decoder_input_ids.masked_fill(~torch.cat([mask_R_T[:, :1], mask_R_T[:, :-1]], dim=1), start)
    outputs = model(
        input_ids=input_ids[:, :width],
        attention_mask=prompt_mask[:, :width].long(),
        decoder_input_ids=decoder_input_ids,
        decoder_attention_mask=mask_R_T.long(),
        use_cache=False,
    )
    logits_N_V = outputs.logits[mask_R_T]
    logps_N = selective_log_softmax(logits_N_V, labels_R_T[mask_R_T])
    logps_R_T = logps_N.new_zeros(mask_R_T.shape).masked_scatter(mask_R_T, logps_N)
    return TokenLogps(logps_R_T, mask_R_T, logits_N_V, outputs)


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
    logps_R_T, mask_R_T, logits_N_V = token.logps, token.mask, token.logits
    half = mask_R_T.shape[0] // 2
    sums_R = sequence_logps(logps_R_T, mask_R_T, "sum") if summed_logps is None else summed_logps
    means_R = sequence_logps(logps_R_T, mask_R_T, "mean")
    lengths_R = mask_R_T.sum(dim=-1)
    chosen_tokens = mask_R_T[:half]
    nll_loss = -logps_R_T[:half][chosen_tokens].sum() / chosen_tokens.sum().clamp(min=1)
    with torch.no_grad():
        mean_logit_N = logits_N_V.float().mean(dim=-1)
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
        aux_loss=getattr(token.outputs, "aux_loss", None),
    )


def paired_forward(model: torch.nn.Module, batch: dict[str, torch.Tensor], **options: bool) -> PairedScores:
    """[`completion_logps`] then [`paired_scores`]: one forward pass over the [chosen; rejected] rows of a batch.

    Args:
        model (`torch.nn.Module`):
            The language model.
        batch (`dict[str, torch.Tensor]`):
            Output of [`DataCollatorForPreference`].
        **options:
            `padding_free`, `logits_to_keep`, `is_encoder_decoder` of [`completion_logps`].
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


def router_aux_loss(
    trainer: BaseTrainer, aux_loss: torch.Tensor | None, mode: str, coef: float | None = None
) -> torch.Tensor | float:
    """`coef · aux_loss`, the MoE load-balancing term to add to the loss (0 without one), logging `aux_loss`.

    Args:
        trainer ([`BaseTrainer`]):
            Gathers and logs the metric; its model's config gives the default coefficient.
        aux_loss (`torch.Tensor` or `None`):
            The model output's `aux_loss` (present when the model returns router logits).
        mode (`str`):
            `"train"` or `"eval"`.
        coef (`float` or `None`, *optional*, defaults to `None`):
            The weight; `None` uses the model config's `router_aux_loss_coef`.
    """
    if aux_loss is None:
        return 0.0
    if coef is None:
        coef = getattr(trainer.accelerator.unwrap_model(trainer.model).config, "router_aux_loss_coef", 0.0)
    trainer.log_metric("aux_loss", _gathered_mean(trainer, aux_loss), mode)
    return coef * aux_loss


def paired_prediction_step(
    trainer: BaseTrainer, model: torch.nn.Module, inputs: dict[str, torch.Tensor], prediction_loss_only: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """`Trainer.prediction_step` of the paired trainers: the loss, and for `compute_metrics` the `[B, 2]`
    (chosen, rejected) rewards as predictions with label 0 (the chosen column), e.g. for
    `trl.trainer.utils.compute_accuracy`.

    Args:
        trainer ([`BaseTrainer`]):
            Its `compute_loss(model, inputs, return_outputs=True)` returns `(loss, {"chosen_rewards",
            "rejected_rewards"})`.
        model (`torch.nn.Module`):
            The model being evaluated.
        inputs (`dict[str, torch.Tensor]`):
            A collated batch.
        prediction_loss_only (`bool`):
            Return the loss alone.
    """
    inputs = trainer._prepare_inputs(inputs)
    with torch.no_grad(), trainer.compute_loss_context_manager():
        loss, outputs = trainer.compute_loss(model, inputs, return_outputs=True)
    if prediction_loss_only:
        return loss.detach(), None, None
    rewards_B_2 = torch.stack([outputs["chosen_rewards"], outputs["rejected_rewards"]], dim=1)
    return loss.detach(), rewards_B_2, torch.zeros(rewards_B_2.shape[0], dtype=torch.long, device=loss.device)
