"""What KTO and BCO share: the forward pass over completion rows (and KTO's mismatched KL rows), the reference
log-probs of unpaired batches. The trainer base built on them is
`trl.trainer.unpaired_preference_trainer.UnpairedPreferenceTrainer`.

Forward pass. A batch from `DataCollatorForUnpairedPreference` holds B rows `prompt + completion` (`labels` says
which are desirable) and, for KTO, B rows `prompt_i + completion_{(i+1) mod B}`. The LM head runs only at the
positions that predict a completion token (a boolean `logits_to_keep`), and the sequence log-prob is the sum over the
completion tokens. The policy runs the completion rows with gradients, then the KL rows in their own no-grad pass
([`policy_scores`]); the reference scores both in one pass. Right-padded rows run without padding where the model keeps
packed sequences apart (`trl.trainer.packed_rows`; the padded forward otherwise).

Metrics follow the reference's sum/count scheme: per step the sums of rewards, log-probs and mean logits of the
desirable (`chosen`) and undesirable (`rejected`) examples and their counts are stored, summed over processes; at
logging time `rewards/chosen = rewards/chosen_sum / count/chosen` (and so on) and `rewards/margins` are added.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..kernels import token_logps
from .packed_rows import is_right_padded, packed_token_logps, packing_mode
from .utils import pad_to_length


@dataclass
class UnpairedScores:
    """Per-row results of one forward pass over B rows.

    `logps` (`[B]`, differentiable) is the sum of the completion tokens' log-probs, `mean_logits` (`[B]`, detached)
    the mean logit over the completion positions and the vocabulary, `aux_loss` the MoE router loss if any.
    """

    logps: torch.Tensor
    mean_logits: torch.Tensor
    aux_loss: torch.Tensor | None


@dataclass
class UnpairedLogps:
    """The inputs of an unpaired loss for one micro-batch of B examples (all `[B]`).

    `policy` (differentiable) and `reference` are the sequence log-probs of the completions; `policy_kl` and
    `reference_kl` those of the mismatched KL pairs (KTO; else `None`); `labels` is True for desirable examples;
    `weights` are per-example loss weights from the batch (BCO's UDM; else `None`).
    """

    policy: torch.Tensor
    reference: torch.Tensor
    policy_kl: torch.Tensor | None
    reference_kl: torch.Tensor | None
    labels: torch.Tensor
    weights: torch.Tensor | None

    def by_label(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(values of the desirable examples, values of the undesirable ones)`."""
        return values[self.labels], values[~self.labels]


def completion_scores(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    prefix: str = "",
    keep_logits: bool = True,
    padding_free: bool = False,
    pad_token_id: int = 0,
) -> UnpairedScores:
    """Sequence log-probs of the completions of the rows `{prefix}input_ids` of a collated batch.

    Args:
        model (`torch.nn.Module`):
            The causal LM (possibly wrapped).
        batch (`dict[str, torch.Tensor]`):
            Holds `{prefix}input_ids`, `{prefix}attention_mask` and `{prefix}completion_mask` of shape `[B, T]`.
        prefix (`str`, *optional*, defaults to `""`):
            `""` for the completion rows, `"kl_"` for the mismatched KL rows.
        keep_logits (`bool`, *optional*, defaults to `True`):
            Whether the model accepts a boolean `logits_to_keep` (the LM head then runs at completion positions
            only); otherwise the full logits are computed and those positions selected.
        padding_free (`bool`, *optional*, defaults to `False`):
            Run the rows without padding where `trl.trainer.packed_rows.packing_mode` allows it (same values to
            fp32 rounding).
        pad_token_id (`int`, *optional*, defaults to `0`):
            Fills the end of packed rows (any id: the filler is a sequence of its own).
    """
    rows = {key: batch[f"{prefix}{key}"] for key in ("input_ids", "attention_mask", "completion_mask")}
    mode = packing_mode(model, rows) if padding_free else None
    if mode is not None and is_right_padded(rows["attention_mask"]):
        token = packed_token_logps(model, rows, mode, pad_token_id, logits_to_keep=keep_logits)
    else:
        token = token_logps(model, rows, logits_to_keep=keep_logits)
    with torch.no_grad():
        # Sum, then mean, over each row's completion positions of the logit averaged over the vocabulary.
        rows_N = token.mask.nonzero()[:, 0]
        logit_sums_B = token.logps.new_zeros(token.mask.shape[0], dtype=torch.float32)
        logit_sums_B.index_add_(0, rows_N, token.mean_logits())
        mean_logits_B = logit_sums_B / token.mask.sum(dim=-1).clamp(min=1)
    return UnpairedScores(token.logps.sum(dim=-1), mean_logits_B, token.aux_loss)


def policy_scores(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], with_kl: bool, **options: Any
) -> tuple[UnpairedScores, torch.Tensor | None]:
    """The policy's scores of the completion rows and, `with_kl`, the log-probs `[B]` of the KL rows.

    The KL rows run in their own pass without gradients: scoring them in the completion rows' pass saves a forward
    but the backward then spans their positions too (measured ~28% slower a step on CPU).

    Args:
        model (`torch.nn.Module`):
            The policy.
        batch (`dict[str, torch.Tensor]`):
            A collated batch (with `kl_*` rows when `with_kl`).
        with_kl (`bool`):
            Whether to score the KL rows.
        **options:
            `keep_logits`, `padding_free`, `pad_token_id` of [`completion_scores`].
    """
    scores = completion_scores(model, batch, **options)
    if not with_kl:
        return scores, None
    with torch.no_grad():
        return scores, completion_scores(model, batch, "kl_", **options).logps


def stack_completion_and_kl_rows(batch: dict[str, torch.Tensor], pad_token_id: int) -> dict[str, torch.Tensor]:
    """The completion rows and the KL rows of a batch as one right-padded batch of 2B rows (completion rows first).

    Args:
        batch (`dict[str, torch.Tensor]`):
            A collated batch with KL rows.
        pad_token_id (`int`):
            Pads `input_ids`; masks are padded with 0.
    """
    length = max(batch["input_ids"].shape[1], batch["kl_input_ids"].shape[1])
    stacked = {}
    for key, value in (("input_ids", pad_token_id), ("attention_mask", 0), ("completion_mask", 0)):
        rows = (pad_to_length(batch[key], length, value), pad_to_length(batch[f"kl_{key}"], length, value))
        stacked[key] = torch.cat(rows)
    return stacked


def _without_kl_rows(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value for key, value in batch.items() if not key.startswith("kl_")}
