"""The BEMA callback extended with periodic updates of a reference model, and the callback handler that passes the
reference model to callbacks."""

from __future__ import annotations

import inspect
from typing import Any

from transformers.trainer_callback import CallbackHandler

from ...trainer.bema_callback import BEMACallback as _StableBEMACallback


class CallbackHandlerWithRefModel(CallbackHandler):
    """A [`~transformers.trainer_callback.CallbackHandler`] that also passes `ref_model` to every event.

    Args:
        callbacks, model, processing_class, optimizer, lr_scheduler:
            As for the transformers handler.
        ref_model (`torch.nn.Module` or `None`, *optional*, defaults to `None`):
            The trainer's reference model.
    """

    def __init__(self, callbacks, model, processing_class, optimizer, lr_scheduler, ref_model=None):
        super().__init__(callbacks, model, processing_class, optimizer, lr_scheduler)
        self.ref_model = ref_model

    def call_event(self, event, args, state, control, **kwargs):
        kwargs.setdefault("ref_model", self.ref_model)
        return super().call_event(event, args, state, control, **kwargs)


class BEMACallback(_StableBEMACallback):
    """[`~trl.BEMACallback`] that can also overwrite the reference model with the BEMA weights.

    Args:
        update_freq, ema_power, bias_power, lag, update_after, multiplier, min_ema_multiplier, device:
            As for [`~trl.BEMACallback`].
        update_ref_model (`bool`, *optional*, defaults to `False`):
            Copy the BEMA weights into the `ref_model` the trainer passes to callbacks (see
            [`CallbackHandlerWithRefModel`]).
        ref_model_update_freq (`int`, *optional*, defaults to `400`):
            Copy every this many steps.
        ref_model_update_after (`int`, *optional*, defaults to `0`):
            No copy before this step.
    """

    def __init__(
        self,
        *args: Any,
        update_ref_model: bool = False,
        ref_model_update_freq: int = 400,
        ref_model_update_after: int = 0,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)  # the parameters of the stable callback
        if update_ref_model and ref_model_update_freq < 1:
            raise ValueError(f"ref_model_update_freq must be >= 1 (got {ref_model_update_freq}).")
        self.update_ref_model = update_ref_model
        self.ref_model_update_freq = ref_model_update_freq
        self.ref_model_update_after = ref_model_update_after
        self.num_ref_model_updates = 0

    def _ref_model_due(self, step: int) -> bool:
        offset = step - self.ref_model_update_after
        return self.update_ref_model and offset >= 0 and offset % self.ref_model_update_freq == 0

    def on_step_end(self, args, state, control, model=None, ref_model=None, **kwargs):
        super().on_step_end(args, state, control, model=model, **kwargs)
        if not self._ref_model_due(state.global_step) or self.num_updates == 0:
            return
        if ref_model is None:
            raise ValueError(
                "BEMACallback(update_ref_model=True) needs the trainer to pass `ref_model` to its callbacks: use "
                "trl.experimental.bema_for_ref_model.DPOTrainer, which does."
            )
        self.load_bema_into(ref_model)
        self.num_ref_model_updates += 1


def _signature() -> inspect.Signature:
    """The stable callback's parameters, then this one's own (keyword-only): what `help()` and IDEs show."""
    stable = list(inspect.signature(_StableBEMACallback.__init__).parameters.values())
    own = [
        parameter
        for parameter in inspect.signature(BEMACallback.__init__).parameters.values()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    return inspect.Signature([*stable, *own])


BEMACallback.__init__.__signature__ = _signature()
