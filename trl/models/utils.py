"""Helpers for the extra models some trainers hold next to the policy: frozen reference copies, and wrapping them
for DeepSpeed / FSDP so they run where the policy runs without being trained."""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import torch

from ..import_utils import suppress_experimental_warning  # noqa: F401  (the reference's name here)


if TYPE_CHECKING:
    from accelerate import Accelerator


# Name patterns of the decoder blocks of common architectures, used to find "the first N layers".
_LAYER_PATTERNS = (
    r"(?:^|\.)layers\.(\d+)\.",  # Llama, Qwen, Mistral, Gemma, ...
    r"(?:^|\.)h\.(\d+)\.",  # GPT-2, GPT-J, Bloom, Falcon
    r"(?:^|\.)blocks\.(\d+)\.",
    r"(?:^|\.)block\.(\d+)\.",  # T5
    r"(?:^|\.)layer\.(\d+)\.",  # BERT-style encoders
)


def _is_zero3(model: torch.nn.Module) -> bool:
    return any(hasattr(param, "ds_id") for param in model.parameters())


def _layer_index(name: str, pattern: str | None) -> int | None:
    patterns = (pattern.replace("{layer}", r"(\d+)"),) if pattern else _LAYER_PATTERNS
    for regex in patterns:
        match = re.search(regex, name)
        if match:
            return int(match.group(1))
    return None


def create_reference_model(
    model: torch.nn.Module, num_shared_layers: int | None = None, pattern: str | None = None
) -> torch.nn.Module:
    """Return a frozen copy of `model` to use as a reference model (eval mode, no parameter requires grad).

    With `num_shared_layers`, the parameters of the first `num_shared_layers` decoder blocks (and everything before
    them, such as the embeddings) are shared with `model` instead of copied, and frozen in `model` too: the two models
    then differ only in the later layers, which saves memory.

    Args:
        model (`torch.nn.Module`):
            The model to copy.
        num_shared_layers (`int` or `None`, *optional*, defaults to `None`):
            Number of leading decoder blocks shared (and frozen) between the model and its copy; `None` shares
            nothing.
        pattern (`str` or `None`, *optional*, defaults to `None`):
            Regular expression of a block's parameter names with a `{layer}` placeholder for its index, e.g.
            `"model.layers.{layer}."`; by default the usual names (`layers.N.`, `h.N.`, `blocks.N.`, ...) are tried.
    """
    if _is_zero3(model):
        raise ValueError(
            "create_reference_model cannot copy a model partitioned by DeepSpeed ZeRO-3. Load the reference model "
            "separately (e.g. pass `ref_model`), or use `precompute_ref_log_probs=True`."
        )
    reference = copy.deepcopy(model)
    if num_shared_layers is not None:
        _share_leading_layers(model, reference, num_shared_layers, pattern)
    for param in reference.parameters():
        param.requires_grad_(False)
    return reference.eval()


def _share_leading_layers(model: torch.nn.Module, reference: torch.nn.Module, count: int, pattern: str | None) -> None:
    names = [name for name, _ in model.named_parameters()]
    indices = [_layer_index(name, pattern) for name in names]
    if all(index is None for index in indices):
        raise ValueError(
            "create_reference_model found no decoder blocks in the parameter names; pass `pattern` (e.g. "
            "'transformer.h.{layer}.') to name them."
        )
    first_unshared = next((i for i, index in enumerate(indices) if index is not None and index >= count), len(names))
    shared = set(names[:first_unshared])
    for name in shared:
        module_name, _, param_name = name.rpartition(".")
        target = reference.get_submodule(module_name) if module_name else reference
        source_param = model.get_parameter(name)
        source_param.requires_grad_(False)
        setattr(target, param_name, source_param)


def prepare_deepspeed(model: torch.nn.Module, accelerator: Accelerator) -> Any:
    """Wrap a model that is only run forward (reference, reward, teacher) in a DeepSpeed inference engine.

    The training DeepSpeed config is copied; ZeRO stage 3 is kept (parameters partitioned like the policy's), any
    other stage is set to 0 since a frozen model has no optimizer state to shard. The engine is in eval mode.

    Args:
        model (`torch.nn.Module`):
            The model to wrap.
        accelerator (`Accelerator`):
            The trainer's accelerator (DeepSpeed plugin configured).
    """
    import deepspeed

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    stage = config.get("zero_optimization", {}).get("stage", 0)
    if stage == 3:
        hidden_size = _hidden_size(model)
        if hidden_size is not None:
            config["zero_optimization"].update(
                {
                    "reduce_bucket_size": hidden_size * hidden_size,
                    "stage3_param_persistence_threshold": 10 * hidden_size,
                    "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
                }
            )
    else:
        config.setdefault("zero_optimization", {})["stage"] = 0
    config.pop("optimizer", None)
    config.pop("scheduler", None)
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine


def _hidden_size(model: torch.nn.Module) -> int | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    sizes = getattr(config, "hidden_sizes", None)
    return max(sizes) if sizes else getattr(config, "hidden_size", None)


def prepare_fsdp(model: torch.nn.Module, accelerator: Accelerator) -> torch.nn.Module:
    """Shard a model that is only run forward (reference, teacher) like the policy under FSDP, in eval mode.

    Args:
        model (`torch.nn.Module`):
            The model to wrap.
        accelerator (`Accelerator`):
            The trainer's accelerator (FSDP plugin configured).
    """
    plugin = accelerator.state.fsdp_plugin
    if getattr(plugin, "fsdp_version", 1) == 2:
        from torch.distributed.fsdp import fully_shard

        plugin.set_auto_wrap_policy(model)
        fully_shard(model, reshard_after_forward=True)
    else:
        from torch.distributed.fsdp import FullyShardedDataParallel

        plugin.set_auto_wrap_policy(model)
        model = FullyShardedDataParallel(
            model,
            sharding_strategy=plugin.sharding_strategy,
            cpu_offload=plugin.cpu_offload,
            auto_wrap_policy=plugin.auto_wrap_policy,
            mixed_precision=plugin.mixed_precision_policy,
            sync_module_states=plugin.sync_module_states,
            backward_prefetch=plugin.backward_prefetch,
            forward_prefetch=plugin.forward_prefetch,
            use_orig_params=plugin.use_orig_params,
            limit_all_gathers=plugin.limit_all_gathers,
            device_id=accelerator.device,
        )
    model.eval()
    return model


def prepare_ref_model(model: torch.nn.Module, accelerator: Accelerator) -> torch.nn.Module:
    """Place a frozen model for the accelerator's distributed setup: DeepSpeed engine, FSDP shards, or the device.

    Args:
        model (`torch.nn.Module`):
            The frozen model (reference, reward model, teacher).
        accelerator (`Accelerator`):
            The trainer's accelerator.
    """
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return prepare_deepspeed(model, accelerator)
    if accelerator.distributed_type == DistributedType.FSDP:
        return prepare_fsdp(model, accelerator)
    return accelerator.prepare_model(model, evaluation_mode=True).eval()


@contextmanager
def disable_gradient_checkpointing(model: Any, gradient_checkpointing_kwargs: dict | None = None):
    """Turn gradient checkpointing off inside the block (e.g. for generation) and back on afterwards if it was on.

    Args:
        model (`PreTrainedModel`):
            The model.
        gradient_checkpointing_kwargs (`dict` or `None`, *optional*, defaults to `None`):
            Passed to `gradient_checkpointing_enable` when turning it back on.
    """
    # transformers 5 renamed gradient checkpointing to activation checkpointing (the old names warn on every call):
    # use the new names when the model has them.
    renamed = hasattr(type(model), "is_activation_checkpointing")
    was_enabled = getattr(model, "is_activation_checkpointing" if renamed else "is_gradient_checkpointing", False)
    if was_enabled and renamed:
        model.activation_checkpointing_disable()
    elif was_enabled:
        model.gradient_checkpointing_disable()
    try:
        yield model
    finally:
        if was_enabled and renamed:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=gradient_checkpointing_kwargs)
        elif was_enabled:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)


# ---------------------------------------------------------------------------------------------------- generation
# Under DeepSpeed ZeRO-3 every module's forward has hooks that fetch its partitioned parameters and release them
# afterwards. When all parameters are gathered once for a whole `generate` call, those hooks would still fetch and
# release on every decoding step, so they are removed for the call and registered again afterwards.


def _parameter_offload(model: Any, needs: str) -> Any | None:
    """The object of a DeepSpeed ZeRO-3 engine that owns its parameter hooks, when it has the attribute `needs`."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return None
    offload = getattr(optimizer, "parameter_offload", optimizer)
    return offload if hasattr(offload, needs) else None


def get_all_parameters(sub_module: torch.nn.Module, recurse: bool = False) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """`(name, parameter)` pairs of a module, including the external parameters DeepSpeed ZeRO-3 attached to it.

    Args:
        sub_module (`torch.nn.Module`):
            A module of a ZeRO-3 model (DeepSpeed gives each one `ds_external_parameters`).
        recurse (`bool`, *optional*, defaults to `False`):
            Include the parameters of child modules.
    """
    external = sub_module.ds_external_parameters() if hasattr(sub_module, "ds_external_parameters") else []
    return itertools.chain(sub_module.named_parameters(recurse=recurse), external)


def iter_params(module: torch.nn.Module, recurse: bool = False) -> list[torch.nn.Parameter]:
    """The parameters of [`get_all_parameters`], without their names.

    Args:
        module (`torch.nn.Module`):
            A module of a ZeRO-3 model.
        recurse (`bool`, *optional*, defaults to `False`):
            Include the parameters of child modules.
    """
    return [param for _, param in get_all_parameters(module, recurse)]


def remove_hooks(model: Any) -> None:
    """Remove the parameter fetch/release hooks of a DeepSpeed ZeRO-3 engine (no-op for a model without them).

    Args:
        model (`deepspeed.DeepSpeedEngine`):
            The engine; its optimizer owns the hooks.
    """
    offload = _parameter_offload(model, "forward_hooks")
    if offload is None:
        return
    for param in iter_params(offload.module, recurse=True):
        param.ds_active_sub_modules.clear()
    for hook in list(offload.forward_hooks) + list(offload.backward_hooks):
        hook.remove()
    offload.forward_hooks = []
    offload.backward_hooks = []


def add_hooks(model: Any) -> None:
    """Register again the hooks that [`remove_hooks`] removed (same `model`)."""
    offload = _parameter_offload(model, "_register_hooks_recursively")
    if offload is not None:
        offload._register_hooks_recursively(offload.module)


def _zero_stage(accelerator: Accelerator | None) -> int | None:
    plugin = getattr(getattr(accelerator, "state", None), "deepspeed_plugin", None)
    return None if plugin is None else plugin.zero_stage


@contextmanager
def unwrap_model_for_generation(
    model: torch.nn.Module,
    accelerator: Accelerator | None = None,
    gather_deepspeed3_params: bool = True,
    generation_kwargs: dict[str, Any] | None = None,
    gradient_checkpointing_kwargs: dict[str, Any] | None = None,
) -> Iterator[torch.nn.Module]:
    """Yield the plain model behind an accelerate-prepared one, ready for `generate`.

    Under DeepSpeed ZeRO-3 the sharded parameters are gathered once for the whole block when
    `gather_deepspeed3_params` is set (fast generation, the full model in memory); otherwise every forward gathers
    them layer by layer. Gradient checkpointing, which turns the KV cache off, is disabled inside the block unless
    `generation_kwargs` asks for `use_cache=False`, and turned back on afterwards.

    Args:
        model (`torch.nn.Module`):
            The model, possibly wrapped (DDP, DeepSpeed engine, FSDP).
        accelerator (`accelerate.Accelerator` or `None`, *optional*, defaults to `None`):
            The accelerator that prepared it; `None` for a plain model.
        gather_deepspeed3_params (`bool`, *optional*, defaults to `True`):
            Gather ZeRO-3 parameters once for the whole generation.
        generation_kwargs (`dict` or `None`, *optional*, defaults to `None`):
            The keyword arguments the block will pass to `generate`; only `use_cache` is read here.
        gradient_checkpointing_kwargs (`dict` or `None`, *optional*, defaults to `None`):
            Passed to `gradient_checkpointing_enable` when checkpointing is turned back on.

    Example:
    ```python
    with unwrap_model_for_generation(model, accelerator) as unwrapped_model:
        output_ids = unwrapped_model.generate(input_ids)
    ```
    """
    unwrapped = accelerator.unwrap_model(model) if accelerator is not None else model
    keep_checkpointing = (generation_kwargs or {}).get("use_cache", True) is False
    checkpointing = (
        nullcontext()
        if keep_checkpointing
        else disable_gradient_checkpointing(unwrapped, gradient_checkpointing_kwargs)
    )
    with checkpointing:
        if _zero_stage(accelerator) != 3 or not gather_deepspeed3_params:
            yield unwrapped
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            remove_hooks(model)
            try:
                yield unwrapped
            finally:
                add_hooks(model)
