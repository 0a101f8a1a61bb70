"""Trainer callbacks shipped with trl."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from transformers import TrainerCallback

# The reference's module also exposes these helpers; each is re-exported from where it is implemented.
from ..data_utils import maybe_apply_chat_template
from ..import_utils import is_rich_available, is_weave_available
from ..models.utils import unwrap_model_for_generation
from .bema_callback import BEMACallback
from .comet import log_table_to_comet_experiment
from .completions_callback import LogCompletionsCallback
from .rich_progress import RichProgressCallback
from .weave_callback import WeaveCallback
from .win_rate_callback import WinRateCallback


__all__ = [
    "BEMACallback",
    "LogCompletionsCallback",
    "RichProgressCallback",
    "SyncRefModelCallback",
    "WeaveCallback",
    "WinRateCallback",
    "is_rich_available",
    "is_weave_available",
    "log_table_to_comet_experiment",
    "maybe_apply_chat_template",
    "unwrap_model_for_generation",
]


class SyncRefModelCallback(TrainerCallback):
    """TR-DPO reference update (arXiv 2404.09656): every `args.ref_model_sync_steps` optimizer steps,
    `θ_ref ← α·θ + (1 − α)·θ_ref` with `α = args.ref_model_mixup_alpha`.

    Parameters partitioned by DeepSpeed ZeRO-3 are gathered for the update (and written back by the owning ranks).

    Args:
        ref_model (`torch.nn.Module`):
            The reference model to update (possibly wrapped by accelerate or DeepSpeed).
        accelerator (`Accelerator` or `None`):
            The trainer's accelerator, used to unwrap the policy.
    """

    def __init__(self, ref_model: torch.nn.Module, accelerator: Any):
        self.ref_model = ref_model
        self.accelerator = accelerator

    @staticmethod
    @torch.no_grad()
    def _sync_target_model(model: torch.nn.Module, target_model: torch.nn.Module, alpha: float) -> None:
        for target_param, param in zip(target_model.parameters(), model.parameters(), strict=True):
            target_param.data.mul_(1.0 - alpha).add_(param.data.to(target_param.dtype), alpha=alpha)

    @staticmethod
    def sync_target_model(model: torch.nn.Module, target_model: torch.nn.Module, alpha: float) -> None:
        """Set every parameter of `target_model` to `alpha * model + (1 - alpha) * target_model`, in place.

        Args:
            model (`torch.nn.Module`):
                The source (the policy).
            target_model (`torch.nn.Module`):
                The model updated in place (the reference), with the same parameter layout.
            alpha (`float`):
                Weight of the source, in [0, 1].
        """
        context = nullcontext()
        if any(hasattr(param, "ds_id") for param in target_model.parameters()):
            import deepspeed

            params = list(model.parameters()) + list(target_model.parameters())
            context = deepspeed.zero.GatheredParameters(params, modifier_rank=0)
        with context:
            SyncRefModelCallback._sync_target_model(model, target_model, alpha)

    def on_step_end(self, args, state, control, **kwargs):
        model = kwargs.get("model")
        if model is None or self.ref_model is None or state.global_step % args.ref_model_sync_steps != 0:
            return
        if self.accelerator is not None:
            model = self.accelerator.unwrap_model(model)
            target = self.accelerator.unwrap_model(self.ref_model)
        else:
            target = self.ref_model
        target = getattr(target, "module", target)  # a DeepSpeed inference engine wraps the module
        self.sync_target_model(model, target, args.ref_model_mixup_alpha)
