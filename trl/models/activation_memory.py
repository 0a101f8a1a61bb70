"""Activation memory savers: offloading saved activations to CPU, and selective activation checkpointing.

[`get_act_offloading_ctx_manager`] is the configurable form of what `activation_offloading=True` does in the
trainers (`torch.autograd.graph.save_on_cpu`): it skips small tensors and the output head's activations, and on CUDA
copies on a side stream so the forward pass does not wait for each copy.
"""

from __future__ import annotations

import functools
import warnings
from collections import deque
from typing import Any

import torch


__all__ = ["enable_selective_activation_checkpointing", "get_act_offloading_ctx_manager"]


class _ActivationOffloader(torch.autograd.graph.saved_tensors_hooks):
    """Saved-tensor hooks that keep the large accelerator activations of the forward pass in CPU memory."""

    def __init__(self, use_pin_memory: bool, use_streams: bool, min_offload_size: int, max_fwd_stash_size: int):
        self.use_pin_memory = use_pin_memory
        self.min_offload_size = min_offload_size
        self.max_fwd_stash_size = max(1, max_fwd_stash_size)
        self.enabled = True
        self.offloaded = 0  # number of tensors moved to CPU (for inspection and tests)
        self.stream = torch.cuda.Stream() if use_streams and torch.cuda.is_available() else None
        # GPU tensors whose copy is still in flight on the side stream, with its completion event.
        self.stash: deque[tuple[torch.Tensor, torch.cuda.Event]] = deque()
        super().__init__(self.pack, self.unpack)

    def __enter__(self) -> _ActivationOffloader:
        super().__enter__()
        return self

    def _should_offload(self, tensor: torch.Tensor) -> bool:
        return (
            self.enabled
            and tensor.device.type != "cpu"
            and not isinstance(tensor, torch.nn.Parameter)
            and tensor.numel() * tensor.element_size() >= self.min_offload_size
        )

    def pack(self, tensor: torch.Tensor) -> Any:
        if not self._should_offload(tensor):
            return tensor
        pin = self.use_pin_memory and torch.cuda.is_available()
        cpu = torch.empty(tensor.size(), dtype=tensor.dtype, layout=tensor.layout, pin_memory=pin)
        if self.stream is not None:
            self.stream.wait_stream(torch.cuda.current_stream(tensor.device))
            with torch.cuda.stream(self.stream):
                cpu.copy_(tensor, non_blocking=pin)
                event = torch.cuda.Event()
                event.record(self.stream)
            self.stash.append((tensor, event))  # keep the source alive until the copy is done
            while len(self.stash) > self.max_fwd_stash_size:
                self.stash.popleft()[1].synchronize()
        else:
            cpu.copy_(tensor, non_blocking=pin)
        self.offloaded += 1
        return (tensor.device, cpu)

    def unpack(self, packed: Any) -> torch.Tensor:
        if isinstance(packed, torch.Tensor):
            return packed
        while self.stash:
            self.stash.popleft()[1].synchronize()
        device, cpu = packed
        return cpu.to(device, non_blocking=self.use_pin_memory)


def _output_head(model: torch.nn.Module) -> torch.nn.Module | None:
    unwrapped = getattr(model, "module", model)
    if hasattr(unwrapped, "get_output_embeddings"):
        try:
            head = unwrapped.get_output_embeddings()
        except (AttributeError, NotImplementedError):
            head = None
        if head is not None:
            return head
    for name in ("lm_head", "score", "classifier", "v_head"):
        if isinstance(getattr(unwrapped, name, None), torch.nn.Module):
            return getattr(unwrapped, name)
    return None


def get_act_offloading_ctx_manager(
    model: torch.nn.Module,
    use_pin_memory: bool = True,
    use_streams: bool = True,
    min_offload_size: int = 1024,
    max_fwd_stash_size: int = 5,
    warn_if_no_head: bool = True,
):
    """Context manager that keeps the activations saved for the backward pass in CPU memory.

    Run the forward pass (and the loss) inside it; the backward pass brings each tensor back when it needs it.
    Tensors already on CPU, parameters and tensors smaller than `min_offload_size` bytes stay where they are, and so
    do the activations of the output head (`get_output_embeddings()`, `lm_head`, `score`, ...): they are the first
    ones the backward pass needs, so moving them would only add a round trip.

    Args:
        model (`torch.nn.Module`):
            The model whose forward pass runs inside the context.
        use_pin_memory (`bool`, *optional*, defaults to `True`):
            Copy into pinned CPU memory (faster, asynchronous transfers; CUDA only).
        use_streams (`bool`, *optional*, defaults to `True`):
            On CUDA, copy on a side stream so the forward pass overlaps with the transfers.
        min_offload_size (`int`, *optional*, defaults to `1024`):
            Smallest tensor (in bytes) worth moving.
        max_fwd_stash_size (`int`, *optional*, defaults to `5`):
            With streams, how many copies may be in flight before the forward pass waits for the oldest (each holds
            its source tensor in accelerator memory until it completes).
        warn_if_no_head (`bool`, *optional*, defaults to `True`):
            Warn when no output head is found (then its activations are offloaded too).

    Returns:
        A context manager (a `torch.autograd.graph.saved_tensors_hooks`).
    """
    offloader = _ActivationOffloader(use_pin_memory, use_streams, min_offload_size, max_fwd_stash_size)
    head = _output_head(model)
    if head is None:
        if warn_if_no_head:
            warnings.warn(
                f"get_act_offloading_ctx_manager found no output head on {type(model).__name__}: its activations "
                "are offloaded too.",
                stacklevel=2,
            )
    else:
        head._trl_offloader = offloader  # the head's hooks pause the offloader created last
        if not getattr(head, "_trl_offload_hooks", None):

            def pause(module: torch.nn.Module, *_: Any) -> None:
                module._trl_offload_was_enabled = module._trl_offloader.enabled
                module._trl_offloader.enabled = False

            def resume(module: torch.nn.Module, *_: Any) -> None:
                module._trl_offloader.enabled = getattr(module, "_trl_offload_was_enabled", True)

            head._trl_offload_hooks = (head.register_forward_pre_hook(pause), head.register_forward_hook(resume))
    return offloader


# ------------------------------------------------------------------------------ selective checkpointing
def _is_compute_intensive(op: Any) -> bool:
    name = str(getattr(op, "_overloadpacket", op))
    return any(key in name for key in ("mm", "addmm", "bmm", "linear", "scaled_dot_product", "flash_attention"))


def _selective_policy(ctx: Any, op: Any, *args: Any, **kwargs: Any):
    from torch.utils.checkpoint import CheckpointPolicy

    return CheckpointPolicy.MUST_SAVE if _is_compute_intensive(op) else CheckpointPolicy.PREFER_RECOMPUTE


def _decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    unwrapped = getattr(model, "module", model)
    best = None
    for _, module in unwrapped.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0:
            kinds = {type(child) for child in module}
            if len(kinds) == 1 and (best is None or len(module) > len(best)):
                best = module
    if best is None:
        raise ValueError(f"enable_selective_activation_checkpointing found no stack of layers in {type(model)}.")
    return best


def enable_selective_activation_checkpointing(model: torch.nn.Module) -> torch.nn.Module:
    """Checkpoint each decoder layer selectively: keep the outputs of matmuls and attention, recompute the rest.

    The element-wise operations (norms, activations, residual adds) are cheap to recompute but hold as much memory as
    the matmul outputs; recomputing only them saves most of full checkpointing's memory at a fraction of its extra
    compute. Each layer of the model's largest stack of identical blocks (`model.layers`, `transformer.h`, ...) is
    wrapped with `torch.utils.checkpoint` and a selective policy (PyTorch >= 2.4); in eval mode or without
    gradients the layers run as before. The model is changed in place and returned.
    """
    from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts

    context_fn = functools.partial(create_selective_checkpoint_contexts, _selective_policy)
    for layer in _decoder_layers(model):
        if getattr(layer, "_trl_selective_checkpointing", False):
            continue
        forward = layer.forward

        def checkpointed(*args: Any, _forward=forward, _layer=layer, **kwargs: Any):
            if not (_layer.training and torch.is_grad_enabled()):
                return _forward(*args, **kwargs)
            # A KV cache would be written twice (forward and recomputation): training runs without one, as with
            # transformers' own gradient checkpointing.
            for key in ("past_key_values", "past_key_value", "cache"):
                if key in kwargs:
                    kwargs[key] = None
            if "use_cache" in kwargs:
                kwargs["use_cache"] = False
            return checkpoint(_forward, *args, use_reentrant=False, context_fn=context_fn, **kwargs)

        layer.forward = checkpointed
        layer._trl_selective_checkpointing = True
    return model
