"""`_BaseConfig`: the `TrainingArguments` subclass every trainer config extends."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from .input_checks import check_training_args


def _bf16_supported() -> bool:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    xpu = getattr(torch, "xpu", None)
    return bool(xpu is not None and xpu.is_available())


def parse_json_field(value: Any, name: str) -> Any:
    """Turn a JSON string coming from the CLI or YAML into a dict; leave other values alone.

    Args:
        value (`Any`):
            The field value.
        name (`str`):
            The field name, used in the error message.
    """
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"`{name}` must be a dict or a JSON string encoding one, got {value!r}.") from error
    return value


@dataclass
class _BaseConfig(TrainingArguments):
    r"""
    Defaults shared by every trl configuration on top of [`~transformers.TrainingArguments`].

    Parameters that differ from `TrainingArguments`:
        logging_steps (`float`, *optional*, defaults to `10`):
            Log every `logging_steps` steps.
        gradient_checkpointing (`bool`, *optional*, defaults to `True`):
            Trade compute for memory by recomputing activations in the backward pass.
        bf16 (`bool` or `None`, *optional*, defaults to `None`):
            Use bf16 mixed precision. `None` means "on when the accelerator supports it and `fp16` is off": on a
            CPU-only machine it resolves to `False` (transformers refuses bf16 there unless `use_cpu=True`).
        lr_scheduler_kwargs (`dict`, `str` or `None`, *optional*, defaults to `None`):
            Extra scheduler arguments, also as a JSON string.

    Parameters added by trl:
        overwrite_output_dir (`bool`, *optional*, defaults to `False`):
            Allow a run to write over a model (`*.safetensors`, `config.json`) or `README.md` already in `output_dir`
            that it did not create. Without it such a run stops before training; resuming from a checkpoint of
            `output_dir` is always allowed.
    """

    # Fields whose JSON-string form (CLI / YAML) is decoded in `__post_init__`.
    _json_dict_fields = ("model_init_kwargs", "generation_kwargs", "chat_template_kwargs", "dataset_kwargs")

    logging_steps: float = field(default=10, metadata={"help": "Log every X update steps."})
    gradient_checkpointing: bool = field(
        default=True, metadata={"help": "Recompute activations in the backward pass to save memory."}
    )
    bf16: bool | None = field(
        default=None,
        metadata={"help": "Use bf16 mixed precision. None: on when supported by the accelerator and fp16 is off."},
    )
    lr_scheduler_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Extra learning-rate scheduler arguments (dict or JSON string)."}
    )

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Allow writing over a model or README.md already in output_dir that this run did not create."},
    )

    def __post_init__(self):
        check_training_args(self)
        if self.bf16 is None:
            self.bf16 = not self.fp16 and not self.use_cpu and _bf16_supported()
        for name in self._json_dict_fields:
            if hasattr(self, name):
                setattr(self, name, parse_json_field(getattr(self, name), name))
        # transformers 5 renamed gradient_checkpointing to activation_checkpointing; trl keeps the old name as its
        # documented field, so it is forwarded here instead of going through the deprecation warning.
        if getattr(self, "activation_checkpointing", None) is None:
            self.activation_checkpointing = self.gradient_checkpointing
        if getattr(self, "activation_checkpointing_kwargs", None) is None:
            kwargs = self.gradient_checkpointing_kwargs
            if kwargs is None and self.activation_checkpointing:
                # Non-reentrant checkpointing works with frozen embeddings (PEFT) and inputs that need no grad.
                kwargs = {"use_reentrant": False}
            self.activation_checkpointing_kwargs = kwargs
        super().__post_init__()
