"""Turn a [`ModelConfig`] into the PEFT and quantization objects a trainer expects."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..import_utils import is_bitsandbytes_available, is_peft_available, require


if TYPE_CHECKING:
    from .model_config import ModelConfig


def get_peft_config(model_args: ModelConfig) -> Any:
    """
    Build the LoRA configuration described by the `lora_*` fields of `model_args`.

    Args:
        model_args ([`ModelConfig`]):
            The model arguments.

    Returns:
        `peft.LoraConfig` or `None`: `None` unless `model_args.use_peft` is set.

    Raises:
        ImportError: When `use_peft` is set and PEFT is not installed.
    """
    if not model_args.use_peft:
        return None
    require(is_peft_available(), "`use_peft=True`", "pip install peft")
    from peft import LoraConfig

    kwargs = dict(
        task_type=model_args.lora_task_type,
        r=model_args.lora_r,
        target_modules=model_args.lora_target_modules,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        bias="none",
        use_rslora=model_args.use_rslora,
        use_dora=model_args.use_dora,
        modules_to_save=model_args.lora_modules_to_save,
    )
    # Older PEFT releases have no `target_parameters`; only pass it when the user asked for it.
    if model_args.lora_target_parameters is not None:
        kwargs["target_parameters"] = model_args.lora_target_parameters
    return LoraConfig(**kwargs)


def get_quantization_config(model_args: ModelConfig) -> Any:
    """
    Build the bitsandbytes quantization configuration requested by `load_in_4bit` / `load_in_8bit`.

    Args:
        model_args ([`ModelConfig`]):
            The model arguments.

    Returns:
        [`~transformers.BitsAndBytesConfig`] or `None`: `None` when neither 4-bit nor 8-bit loading is requested.
        The 4-bit configuration computes in `model_args.dtype` (float32 when it is `"auto"` or `None`).

    Raises:
        ImportError: When quantization is requested and bitsandbytes is not installed.
    """
    if not (model_args.load_in_4bit or model_args.load_in_8bit):
        return None
    flag = "`load_in_4bit=True`" if model_args.load_in_4bit else "`load_in_8bit=True`"
    require(is_bitsandbytes_available(), flag, "pip install bitsandbytes")
    from transformers import BitsAndBytesConfig

    if model_args.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute_dtype = None if model_args.dtype in (None, "auto") else model_args.dtype
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_type=model_args.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=model_args.use_bnb_nested_quant,
        bnb_4bit_quant_storage=model_args.bnb_4bit_quant_storage,
    )


def get_kbit_device_map() -> dict[str, int] | None:
    """
    Device map that puts a whole quantized model on this process's accelerator.

    Returns:
        `dict[str, int]` or `None`: `{"": local_process_index}` when CUDA or XPU is available, else `None`.
    """
    import torch

    xpu = getattr(torch, "xpu", None)
    if torch.cuda.is_available() or (xpu is not None and xpu.is_available()):
        from accelerate import PartialState

        return {"": PartialState().local_process_index}
    return None
