"""Model helpers: frozen reference copies and wrapping of models that are only run forward."""

from .utils import (
    create_reference_model,
    disable_gradient_checkpointing,
    prepare_deepspeed,
    prepare_fsdp,
    prepare_ref_model,
)


__all__ = [
    "create_reference_model",
    "disable_gradient_checkpointing",
    "prepare_deepspeed",
    "prepare_fsdp",
    "prepare_ref_model",
]
