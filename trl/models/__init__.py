"""Model helpers: value-head models, frozen reference copies and wrapping of models that are only run forward."""

from .activation_memory import enable_selective_activation_checkpointing, get_act_offloading_ctx_manager
from .geometric_mixture import GeometricMixtureWrapper
from .modeling_base import PreTrainedModelWrapper
from .modeling_value_head import (
    SUPPORTED_ARCHITECTURES,
    AutoModelForCausalLMWithValueHead,
    AutoModelForSeq2SeqLMWithValueHead,
    ValueHead,
)
from .utils import (
    create_reference_model,
    disable_gradient_checkpointing,
    prepare_deepspeed,
    prepare_fsdp,
    prepare_ref_model,
    unwrap_model_for_generation,
)


__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "AutoModelForCausalLMWithValueHead",
    "AutoModelForSeq2SeqLMWithValueHead",
    "GeometricMixtureWrapper",
    "PreTrainedModelWrapper",
    "ValueHead",
    "create_reference_model",
    "disable_gradient_checkpointing",
    "enable_selective_activation_checkpointing",
    "get_act_offloading_ctx_manager",
    "prepare_deepspeed",
    "prepare_fsdp",
    "prepare_ref_model",
    "unwrap_model_for_generation",
]
