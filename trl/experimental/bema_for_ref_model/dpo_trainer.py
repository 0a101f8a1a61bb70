"""A [`~trl.DPOTrainer`] whose callbacks receive the reference model (`ref_model=` in every event)."""

from __future__ import annotations

from ...trainer.dpo_trainer import DPOTrainer as _StableDPOTrainer
from .callback import CallbackHandlerWithRefModel


class DPOTrainer(_StableDPOTrainer):
    """[`~trl.DPOTrainer`] with a [`CallbackHandlerWithRefModel`], so that a callback such as
    [`~trl.experimental.bema_for_ref_model.BEMACallback`] can update the reference model during training.

    Takes the arguments of [`~trl.DPOTrainer`]. A reference model is needed (not the PEFT "adapters off" reference):
    without one, callbacks receive `ref_model=None`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        handler = self.callback_handler
        self.callback_handler = CallbackHandlerWithRefModel(
            handler.callbacks,
            handler.model,
            handler.processing_class,
            handler.optimizer,
            handler.lr_scheduler,
            ref_model=self.ref_model,
        )
