"""`ModelConfig`: the model-loading and LoRA / quantization arguments shared by every `trl` training script."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field


DTYPE_CHOICES = ("auto", "bfloat16", "float16", "float32")


@dataclass
class ModelConfig:
    r"""
    Arguments that say which model a training script loads and how: revision, dtype, attention implementation,
    LoRA adapter and k-bit quantization. Consumed by [`get_peft_config`], [`get_quantization_config`] and the
    `trl/scripts/*.py` scripts, which turn them into the trainer's `model_init_kwargs` and `peft_config`.

    Using [`~transformers.HfArgumentParser`] (or [`TrlParser`]) these fields become command-line flags.

    Parameters:
        model_name_or_path (`str` or `None`, *optional*, defaults to `None`):
            Model checkpoint: a Hub id or a local directory.
        model_revision (`str`, *optional*, defaults to `"main"`):
            Branch name, tag or commit id of the checkpoint.
        dtype (`str` or `None`, *optional*, defaults to `"float32"`):
            Dtype the weights are loaded in: `"auto"` (the checkpoint's dtype), `"bfloat16"`, `"float16"` or
            `"float32"`.
        torch_dtype (`str` or `None`, *optional*, defaults to `None`):
            Deprecated alias of `dtype`.
        attn_implementation (`str` or `None`, *optional*, defaults to `None`):
            Attention implementation passed to `from_pretrained`, e.g. `"sdpa"`, `"eager"` or
            `"flash_attention_2"`.
        use_peft (`bool`, *optional*, defaults to `False`):
            Train a LoRA adapter instead of the full model.
        lora_r (`int`, *optional*, defaults to `16`):
            LoRA rank.
        lora_alpha (`int`, *optional*, defaults to `32`):
            LoRA scaling numerator (the update is scaled by `lora_alpha / lora_r`).
        lora_dropout (`float`, *optional*, defaults to `0.05`):
            Dropout applied to the LoRA input.
        lora_target_modules (`list[str]` or `None`, *optional*, defaults to `None`):
            Module names LoRA is applied to, or `all-linear`. `None` uses PEFT's per-architecture default.
        lora_target_parameters (`list[str]` or `None`, *optional*, defaults to `None`):
            Parameter names LoRA is applied to directly (e.g. MoE expert weights).
        lora_modules_to_save (`list[str]` or `None`, *optional*, defaults to `None`):
            Modules, besides the adapter, that are trained and saved in full (e.g. `lm_head`).
        lora_task_type (`str`, *optional*, defaults to `"CAUSAL_LM"`):
            PEFT task type; reward and PRM scripts use `"SEQ_CLS"` / `"TOKEN_CLS"`.
        use_rslora (`bool`, *optional*, defaults to `False`):
            Rank-stabilised LoRA: scale by `lora_alpha / sqrt(lora_r)` instead of `lora_alpha / lora_r`.
        use_dora (`bool`, *optional*, defaults to `False`):
            Weight-decomposed LoRA (DoRA).
        load_in_8bit (`bool`, *optional*, defaults to `False`):
            Load the base model in 8-bit (bitsandbytes).
        load_in_4bit (`bool`, *optional*, defaults to `False`):
            Load the base model in 4-bit (bitsandbytes).
        bnb_4bit_quant_type (`str`, *optional*, defaults to `"nf4"`):
            4-bit quantization type: `"fp4"` or `"nf4"`.
        use_bnb_nested_quant (`bool`, *optional*, defaults to `False`):
            Quantize the quantization constants too (double quantization).
        bnb_4bit_quant_storage (`str` or `None`, *optional*, defaults to `None`):
            Storage dtype of the 4-bit weights (FSDP and ZeRO-3 need it to match the other parameters' dtype).

    `trust_remote_code` is not a field here: it lives in every trainer configuration (e.g.
    [`SFTConfig.trust_remote_code`]), which the scripts parse alongside this class.
    """

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Model checkpoint: a Hub id or a local directory."}
    )
    model_revision: str = field(default="main", metadata={"help": "Branch name, tag or commit id of the checkpoint."})
    dtype: str | None = field(
        default="float32",
        metadata={
            "help": "Dtype the weights are loaded in ('auto' keeps the checkpoint's).",
            "choices": DTYPE_CHOICES,
        },
    )
    torch_dtype: str | None = field(
        default=None, metadata={"help": "Deprecated alias of --dtype.", "choices": DTYPE_CHOICES}
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "Attention implementation, e.g. sdpa, eager or flash_attention_2."}
    )
    use_peft: bool = field(default=False, metadata={"help": "Train a LoRA adapter instead of the full model."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (the update is scaled by alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Module names LoRA is applied to, or all-linear (space separated)."}
    )
    lora_target_parameters: list[str] | None = field(
        default=None, metadata={"help": "Parameter names LoRA is applied to directly (space separated)."}
    )
    lora_modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules trained and saved in full besides the adapter (space separated)."}
    )
    lora_task_type: str = field(default="CAUSAL_LM", metadata={"help": "PEFT task type, e.g. CAUSAL_LM or SEQ_CLS."})
    use_rslora: bool = field(default=False, metadata={"help": "Rank-stabilised LoRA: scale by alpha / sqrt(r)."})
    use_dora: bool = field(default=False, metadata={"help": "Weight-decomposed LoRA (DoRA)."})
    load_in_8bit: bool = field(default=False, metadata={"help": "Load the base model in 8-bit (bitsandbytes)."})
    load_in_4bit: bool = field(default=False, metadata={"help": "Load the base model in 4-bit (bitsandbytes)."})
    bnb_4bit_quant_type: str = field(
        default="nf4", metadata={"help": "4-bit quantization type.", "choices": ["fp4", "nf4"]}
    )
    use_bnb_nested_quant: bool = field(default=False, metadata={"help": "Double quantization of the constants."})
    bnb_4bit_quant_storage: str | None = field(
        default=None, metadata={"help": "Storage dtype of the 4-bit weights (match it to the other parameters)."}
    )

    def __post_init__(self):
        if self.torch_dtype is not None:
            if self.dtype not in (DTYPE_CHOICES[-1], self.torch_dtype):
                raise ValueError(
                    f"Both `dtype={self.dtype!r}` and its deprecated alias `torch_dtype={self.torch_dtype!r}` are "
                    "set; keep only `dtype`."
                )
            warnings.warn("`torch_dtype` is deprecated; use `dtype` instead.", FutureWarning, stacklevel=2)
            self.dtype, self.torch_dtype = self.torch_dtype, None
        if self.dtype is not None and self.dtype not in DTYPE_CHOICES:
            raise ValueError(f"Invalid dtype {self.dtype!r}; choose one of {DTYPE_CHOICES}.")
        if self.load_in_8bit and self.load_in_4bit:
            raise ValueError("`load_in_8bit` and `load_in_4bit` are mutually exclusive; choose one of them.")
        # `--lora_target_modules all-linear` arrives as a one-element list, but PEFT only recognises the bare string.
        if isinstance(self.lora_target_modules, list) and self.lora_target_modules == ["all-linear"]:
            self.lora_target_modules = "all-linear"
