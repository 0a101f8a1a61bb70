"""Token-classification cross-entropy, the objective of process reward models (PRM).

A PRM labels a few positions of each sequence (the last token of the separator that ends every reasoning step) with
the class of that step (0 = wrong, 1 = correct); every other position carries the ignore index. The loss is the
cross-entropy over the labelled positions only,

    L = −Σ_{(b,t): y_bt ≠ −100} log softmax(z_bt)[y_bt] / N,

where `N` is the number of labelled positions of the micro-batch, or the count over the whole accumulated (and
gathered) batch when the trainer passes `num_items_in_batch`, which makes the loss independent of how a batch is
split across gradient-accumulation steps and processes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_classification_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = -100,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy summed over the labelled positions and divided by their count.

    Only the labelled positions are selected before the softmax, so padding and unlabelled positions may hold any
    value (even `-inf`). A batch without a labelled position gives a loss of exactly 0 that still belongs to the
    autograd graph, so every process of a distributed run takes part in the backward pass.

    Returns the scalar loss and detached local metrics (trainers gather the counts across processes):
    `num_labelled`, `num_correct` (argmax equals the label) and `accuracy` (`num_correct / num_labelled`, NaN when
    nothing is labelled).

    Args:
        logits (`torch.Tensor` of shape `[B, T, C]`):
            Per-position class scores (any leading shape, classes last).
        labels (`torch.Tensor` of shape `[B, T]`):
            Class index of each labelled position, `ignore_index` elsewhere.
        num_items_in_batch (`torch.Tensor`, `int` or `None`, *optional*, defaults to `None`):
            Normaliser `N`; defaults to the number of labelled positions of `labels` (at least 1).
        ignore_index (`int`, *optional*, defaults to `-100`):
            Label value of the positions that carry no loss.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} must be labels {tuple(labels.shape)} plus a trailing class dimension."
        )
    mask = labels != ignore_index
    # Half-precision logits are scored in float32; float64 stays float64.
    logits_N_C = logits[mask].to(torch.promote_types(logits.dtype, torch.float32))
    targets_N = labels[mask]
    count = targets_N.numel()
    if count == 0:
        loss = logits.sum() * 0.0
    else:
        normaliser = num_items_in_batch if num_items_in_batch is not None else count
        loss = F.cross_entropy(logits_N_C, targets_N, reduction="sum") / normaliser
    with torch.no_grad():
        num_correct = (logits_N_C.argmax(dim=-1) == targets_N).sum().float()
        num_labelled = torch.tensor(float(count), device=logits.device)
        metrics = {
            "num_labelled": num_labelled,
            "num_correct": num_correct,
            "accuracy": num_correct / num_labelled if count else torch.tensor(float("nan"), device=logits.device),
        }
    return loss, metrics
