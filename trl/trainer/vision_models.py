"""Vision-language models given by name: which auto class loads them, and their processor.

A model id whose config is a vision-language one (a key of transformers' image-text-to-text mapping, e.g.
`qwen2_vl`, `idefics3`, `llava`, `gemma3`) is loaded with `AutoModelForImageTextToText` instead of
`AutoModelForCausalLM`, and its processing class with `AutoProcessor` instead of `AutoTokenizer`.
"""

from __future__ import annotations

from typing import Any


def is_vision_language_config(config: Any) -> bool:
    """Whether a model config describes a vision-language model that `AutoModelForImageTextToText` builds."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return getattr(config, "model_type", None) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


def _config_of(model_id: str, kwargs: dict[str, Any]) -> Any:
    from transformers import AutoConfig

    keys = ("revision", "trust_remote_code", "token", "cache_dir", "local_files_only")
    try:
        return AutoConfig.from_pretrained(model_id, **{key: kwargs[key] for key in keys if key in kwargs})
    except (OSError, ValueError):
        # Not a transformers config (or not reachable): the caller's own loading reports the problem.
        return None


def is_vision_language_model_id(model_id: str, **kwargs: Any) -> bool:
    """Whether the model at `model_id` (a local path or Hub id) is a vision-language model.

    Args:
        model_id (`str`):
            The model.
        **kwargs:
            `revision`, `trust_remote_code`, `token`, `cache_dir`, `local_files_only` for reading its config.
    """
    config = _config_of(model_id, kwargs)
    return config is not None and is_vision_language_config(config)


def auto_class_for(model_id: str, auto_class: Any, kwargs: dict[str, Any]) -> Any:
    """`AutoModelForImageTextToText` for a vision-language `model_id` loaded as a causal LM, else `auto_class`."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    if auto_class is AutoModelForCausalLM and is_vision_language_model_id(model_id, **kwargs):
        return AutoModelForImageTextToText
    return auto_class


def load_processor(model_id: str, **kwargs: Any) -> Any:
    """The `AutoProcessor` of a vision-language model, with a clear error when transformers cannot build it.

    Args:
        model_id (`str`):
            The model.
        **kwargs:
            Passed to `AutoProcessor.from_pretrained` (`revision`, `trust_remote_code`, ...).
    """
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(model_id, **kwargs)
    except (AttributeError, ImportError, OSError, ValueError, TypeError) as error:
        raise ValueError(
            f"{model_id} is a vision-language model, but transformers could not build its processor ({error}). Some "
            "processors need torchvision (`pip install torchvision`), e.g. those with a video processor. Or build "
            "the processor yourself and pass it as `processing_class`."
        ) from error
