"""`PreTrainedModelWrapper`: a transformers model with extra trl modules (a value head), loaded and saved as one.

The wrapper keeps the transformers model as `pretrained_model` and adds its own modules next to it. It is saved with
the model's `save_pretrained`, the extra modules' weights under their own prefix (`v_head.*`) in the same
safetensors file (in `v_head.safetensors` for a PEFT model, whose `save_pretrained` writes only the adapter), and
`from_pretrained` loads them back; a checkpoint without them (a plain language model) gets freshly initialised
modules. Nothing is ever unpickled: legacy `pytorch_model.bin` files are read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

# The reference library defines the Nash-MD geometric mixture here; it lives in `geometric_mixture.py`.
from .geometric_mixture import GeometricMixtureWrapper


__all__ = ["GeometricMixtureWrapper", "PreTrainedModelWrapper"]

# Files that may hold the wrapper's extra weights, in the order they are looked for.
_EXTRA_WEIGHTS_FILE = "v_head.safetensors"
_SAFE_WEIGHTS, _SAFE_INDEX = "model.safetensors", "model.safetensors.index.json"
_LEGACY_WEIGHTS, _LEGACY_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"


def _is_peft_model(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


class PreTrainedModelWrapper(nn.Module):
    """A transformers model with extra modules that are saved and loaded with it.

    Subclasses set `transformers_parent_class` (the `AutoModel*` class that loads the wrapped model),
    `supported_args` (the `from_pretrained` keyword arguments that belong to the wrapper) and implement
    `post_init(state_dict)`, which loads the extra modules' weights.

    Args:
        pretrained_model (`PreTrainedModel` or `PeftModel`):
            The wrapped model.
        score_module (`nn.Module` or `None`, *optional*, defaults to `None`):
            A reward-model score head (multi-adapter RL); kept as `score`.
        supports_rm_adapter (`bool`, *optional*, defaults to `False`):
            Whether a reward adapter is loaded (not supported by this version).
        rm_adapter_name (`str` or `None`, *optional*, defaults to `None`):
            Name of the reward adapter.
    """

    transformers_parent_class: Any = None
    supported_args: tuple[str, ...] = ()
    supported_modules = ("v_head",)
    supported_rm_modules = ("score",)

    def __init__(
        self,
        pretrained_model: PreTrainedModel | None = None,
        score_module: nn.Module | None = None,
        supports_rm_adapter: bool = False,
        rm_adapter_name: str | None = None,
        **kwargs: Any,
    ):
        super().__init__()
        if pretrained_model is None:
            raise ValueError(f"{type(self).__name__} wraps a model: pass `pretrained_model` or use from_pretrained().")
        self.pretrained_model = pretrained_model
        self.config = pretrained_model.config
        self.prepare_inputs_for_generation = getattr(pretrained_model, "prepare_inputs_for_generation", None)
        self.is_loaded_in_8bit = getattr(pretrained_model, "is_loaded_in_8bit", False)
        self.is_loaded_in_4bit = getattr(pretrained_model, "is_loaded_in_4bit", False)
        self.is_sequential_parallel = False
        self.is_peft_model = _is_peft_model(pretrained_model)
        self.supports_rm_adapter = supports_rm_adapter
        self.rm_adapter_name = rm_adapter_name
        self.policy_adapter_name = "default" if self.is_peft_model else None
        if score_module is not None:
            self.score = score_module
        self.is_resuming_training = False

    # ------------------------------------------------------------------------------------------------ loading
    @classmethod
    def _split_kwargs(cls, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Split `from_pretrained` keyword arguments into (wrapper, transformers, PEFT-quantization) arguments."""
        peft_names = ("load_in_8bit", "load_in_4bit")
        wrapper = {key: value for key, value in kwargs.items() if key in cls.supported_args}
        peft = {key: value for key, value in kwargs.items() if key in peft_names}
        model = {key: value for key, value in kwargs.items() if key not in wrapper}
        return wrapper, model, peft

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *model_args: Any, **kwargs: Any):
        """Load the wrapped model and the wrapper's modules.

        Args:
            pretrained_model_name_or_path (`str`, `PreTrainedModel` or `PeftModel`):
                A model id / local directory (a PEFT adapter directory loads its base model and the adapter), or
                an already loaded model.
            *model_args:
                Forwarded to `transformers_parent_class.from_pretrained`.
            **kwargs:
                `supported_args` go to the wrapper (e.g. `summary_dropout_prob`, `v_head_init_strategy`);
                `peft_config` wraps the model with PEFT; `is_trainable` applies to a loaded adapter; the rest go to
                `from_pretrained`.
        """
        peft_config = kwargs.pop("peft_config", None)
        is_trainable = kwargs.pop("is_trainable", False)
        for name in ("reward_adapter", "reward_adapter_name"):
            if kwargs.pop(name, None) is not None:
                raise NotImplementedError(
                    f"`{name}` (multi-adapter RL with a reward adapter) is not supported by this version: score "
                    "with a separate reward model instead."
                )
        wrapper_kwargs, model_kwargs, _ = cls._split_kwargs(kwargs)
        path = pretrained_model_name_or_path
        if isinstance(path, str):
            model = cls._load_transformers_model(path, is_trainable, *model_args, **model_kwargs)
        elif isinstance(path, nn.Module):
            model = path
            path = getattr(getattr(model, "config", None), "_name_or_path", None)
        else:
            raise TypeError(
                f"pretrained_model_name_or_path must be a model id, a directory or a model, got {type(path).__name__}."
            )
        if peft_config is not None:
            if _is_peft_model(model):
                raise ValueError("The model already has PEFT adapters: pass either a PEFT model or a peft_config.")
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        wrapper = cls(model, **wrapper_kwargs)
        state_dict = _extra_state_dict(path) if isinstance(path, str) and os.path.isdir(path) else None
        if state_dict:
            wrapper.post_init(state_dict=state_dict)
            wrapper.is_resuming_training = True
        return wrapper

    @classmethod
    def _load_transformers_model(cls, path: str, is_trainable: bool, *model_args: Any, **kwargs: Any) -> Any:
        adapter_config = os.path.join(path, "adapter_config.json")
        if not os.path.isfile(adapter_config):
            return cls.transformers_parent_class.from_pretrained(path, *model_args, **kwargs)
        from peft import PeftModel

        with open(adapter_config) as handle:
            base_path = json.load(handle)["base_model_name_or_path"]
        base = cls.transformers_parent_class.from_pretrained(base_path, *model_args, **kwargs)
        return PeftModel.from_pretrained(base, path, is_trainable=is_trainable)

    def post_init(self, *args: Any, **kwargs: Any) -> None:
        """Load the wrapper's modules from a state dict (keys with their prefix, e.g. `v_head.summary.weight`)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------------- saving
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """The wrapped model's state dict plus the wrapper's modules under their prefix (only the latter for a
        PEFT model, whose adapter is saved by PEFT)."""
        raise NotImplementedError

    def save_pretrained(self, save_directory: str, *args: Any, **kwargs: Any) -> None:
        """Save the wrapped model with the wrapper's modules, as safetensors.

        A plain model writes its weights and the `v_head.*` tensors into the same `model.safetensors`; a PEFT model
        writes its adapter with PEFT and the `v_head.*` tensors into `v_head.safetensors`.
        """
        from safetensors.torch import save_file

        state_dict = kwargs.pop("state_dict", None)
        if state_dict is None:
            state_dict = self.state_dict()
        kwargs.pop("safe_serialization", None)  # always safetensors
        if self.is_peft_model:
            os.makedirs(save_directory, exist_ok=True)
            extra = {key: value.detach().contiguous().cpu() for key, value in state_dict.items() if _is_extra(key)}
            save_file(extra, os.path.join(save_directory, _EXTRA_WEIGHTS_FILE), metadata={"format": "pt"})
            return self.pretrained_model.save_pretrained(save_directory, *args, **kwargs)
        return self.pretrained_model.save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)

    def push_to_hub(self, *args: Any, **kwargs: Any) -> Any:
        """Push the wrapped model with the wrapper's modules (see `save_pretrained`)."""
        raise NotImplementedError

    def compute_reward_score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        """Reward of a reward adapter (multi-adapter RL); not supported by this version."""
        raise NotImplementedError(
            "compute_reward_score needs a reward adapter, which this version does not support: score with a separate "
            "reward model (AutoModelForSequenceClassification) instead."
        )

    # ------------------------------------------------------------------------------------------- passthroughs
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        self.pretrained_model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs=gradient_checkpointing_kwargs
        )

    def gradient_checkpointing_disable(self) -> None:
        self.pretrained_model.gradient_checkpointing_disable()

    @property
    def generation_config(self) -> Any:
        return getattr(self.pretrained_model, "generation_config", None)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def _is_extra(key: str) -> bool:
    return key.split(".", 1)[0] in PreTrainedModelWrapper.supported_modules


def _extra_state_dict(directory: str) -> dict[str, torch.Tensor]:
    """The wrapper's tensors (`v_head.*`) saved in `directory`, or `{}` (a plain model: fresh modules)."""
    from safetensors import safe_open

    extra_file = os.path.join(directory, _EXTRA_WEIGHTS_FILE)
    files = [extra_file] if os.path.isfile(extra_file) else _weight_files(directory, _SAFE_WEIGHTS, _SAFE_INDEX)
    state: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(file, framework="pt") as handle:
            state.update({key: handle.get_tensor(key) for key in handle.keys() if _is_extra(key)})
    if state or files:
        return state
    for file in _weight_files(directory, _LEGACY_WEIGHTS, _LEGACY_INDEX):
        legacy = torch.load(file, map_location="cpu", weights_only=True)  # refuses to build arbitrary objects
        state.update({key: value for key, value in legacy.items() if _is_extra(key)})
    return state


def _weight_files(directory: str, single: str, index: str) -> list[str]:
    if os.path.isfile(os.path.join(directory, single)):
        return [os.path.join(directory, single)]
    index_path = os.path.join(directory, index)
    if not os.path.isfile(index_path):
        return []
    with open(index_path) as handle:
        weight_map = json.load(handle)["weight_map"]
    return sorted({os.path.join(directory, name) for key, name in weight_map.items() if _is_extra(key)})
