"""BEMA as the reference model of DPO: [`BEMACallback`] can copy its bias-corrected EMA weights into the trainer's
reference model, which [`DPOTrainer`] hands to its callbacks."""

from .callback import BEMACallback, CallbackHandlerWithRefModel
from .dpo_trainer import DPOTrainer


__all__ = ["BEMACallback", "CallbackHandlerWithRefModel", "DPOTrainer"]
