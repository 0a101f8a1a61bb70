"""Helpers shared by the trainers, under the reference's import path `trl.trainer.utils`.

Split by concern: padding and flushing in `tensor_utils`, statistics and running moments in `stat_utils`, batches
and samplers in `batch_utils` (all re-exported here); this module keeps the model helpers (dropout, cache, PEFT
adapter switching), callables, FLOP accounting and the completions printout.

Torch only at import time: `transformers`, `accelerate` and `peft` are imported inside the functions that use them.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import inspect
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch

from ..import_utils import is_peft_available, is_rich_available  # noqa: F401  (the reference's names here)
from ..kernels import entropy_from_logits, selective_log_softmax, selective_log_softmax_and_entropy
from .batch_utils import RepeatSampler, remove_none_values, shuffle_sequence_dict, split_tensor_dict
from .comet import get_comet_experiment_url, log_table_to_comet_experiment  # noqa: F401  (re-exported)
from .model_config import ModelConfig  # noqa: F401  (re-exported: the reference's path)
from .peft_utils import get_peft_config, get_quantization_config  # noqa: F401  (re-exported)
from .runtime_utils import (
    FusedCausalLMOutput,
    add_fused_lm_head,
    create_model_from_path,
    ensure_master_addr_port,
    generate_model_card,
    get_peak_flops,
    get_peak_flops_per_device,
    get_trackio_space_url,
    global_then_local_main_first,
    is_triton_available,
    maybe_gather_lm_head_ctx,
    repeat_iterable_dataset,
    shutdown_event_loop_in_daemon,
    split_pixel_values_by_grid,
    start_event_loop_in_daemon,
    strip_images_from_messages,
    unsplit_pixel_values_by_grid,
)
from .stat_utils import (
    RunningMoments,
    cap_exp,
    compute_accuracy,
    exact_div,
    masked_mean,
    masked_var,
    masked_whiten,
    nanmax,
    nanmin,
    nanstd,
)
from .tensor_utils import first_true_indices, flush_left, flush_right, pad, pad_to_length, truncate_right


__all__ = [
    "FusedCausalLMOutput",
    "RepeatSampler",
    "RunningMoments",
    "add_fused_lm_head",
    "adjusted_mfu",
    "cap_exp",
    "compute_accuracy",
    "compute_flops_per_token",
    "compute_mfu",
    "create_model_from_path",
    "disable_dropout_in_model",
    "empty_cache",
    "ensure_master_addr_port",
    "entropy_from_logits",
    "exact_div",
    "first_true_indices",
    "flush_left",
    "flush_right",
    "generate_model_card",
    "get_callable_name",
    "get_config_model_id",  # noqa: F822  (lazy, below)
    "get_peak_flops",
    "get_peak_flops_per_device",
    "get_trackio_space_url",
    "global_then_local_main_first",
    "hash_module",
    "identity",
    "is_async_callable",
    "is_triton_available",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "maybe_gather_lm_head_ctx",
    "nanmax",
    "nanmin",
    "nanstd",
    "pad",
    "pad_to_length",
    "print_prompt_completions_sample",
    "remove_none_values",
    "repeat_iterable_dataset",
    "selective_log_softmax",
    "selective_log_softmax_and_entropy",
    "shuffle_sequence_dict",
    "shutdown_event_loop_in_daemon",
    "split_pixel_values_by_grid",
    "split_tensor_dict",
    "start_event_loop_in_daemon",
    "strip_images_from_messages",
    "truncate_right",
    "unsplit_pixel_values_by_grid",
    "use_adapter",
]


def __getattr__(name: str) -> Any:
    # `trl.experimental.merge_model_callback` imports transformers: load it only when the name is asked for (and
    # without the experimental warning: the name is public here).
    if name == "get_config_model_id":
        from ..import_utils import suppress_experimental_warning

        with suppress_experimental_warning():
            from ..experimental.merge_model_callback import get_config_model_id

        return get_config_model_id
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------------------------- models
def disable_dropout_in_model(model: torch.nn.Module) -> None:
    """Set the probability of every `torch.nn.Dropout` of `model` to 0."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0


def empty_cache() -> None:
    """Collect garbage and release the cached memory of the available accelerator (CUDA, XPU, MPS, NPU)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif hasattr(torch, "xpu") and torch.xpu.is_available():
        torch.xpu.empty_cache()
    elif torch.backends.mps.is_available():
        torch.mps.empty_cache()
    elif hasattr(torch, "npu") and torch.npu.is_available():
        torch.npu.empty_cache()


def hash_module(module: torch.nn.Module) -> str:
    """SHA-256 of the names, shapes, dtypes and values of the parameters and buffers of `module` (hex digest).

    Two modules have the same hash exactly when their state is identical, e.g. to check that weights were synced.
    """
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@contextmanager
def use_adapter(model: Any, adapter_name: str | None):
    """Context manager that runs a PEFT model with another adapter, or with its adapters disabled (`None`).

    The previously active adapter and the `requires_grad` flag of every parameter are restored on exit (PEFT's
    `set_adapter` makes the adapter it activates trainable).

    Args:
        model (`PeftModel`):
            The model whose adapter to switch.
        adapter_name (`str` or `None`):
            Adapter to activate inside the block; `None` runs the base model.
    """
    if adapter_name is None:
        with model.disable_adapter():
            yield model
        return
    if adapter_name not in model.peft_config:
        raise ValueError(
            f"Adapter {adapter_name!r} is not loaded (loaded: {sorted(model.peft_config)}). Load it with "
            "model.load_adapter(path, adapter_name=...) first."
        )
    previous = model.active_adapter
    trainable = {name: param.requires_grad for name, param in model.named_parameters()}
    try:
        model.set_adapter(adapter_name)
        yield model
    finally:
        model.set_adapter(previous)
        for name, param in model.named_parameters():
            param.requires_grad_(trainable.get(name, param.requires_grad))


# ------------------------------------------------------------------------------------------------ callables
def identity(x: Any) -> Any:
    """Return `x` unchanged (a picklable default for a transform)."""
    return x


def get_callable_name(func: Callable) -> str:
    """Readable name of a function, a `functools.partial` (its wrapped function) or a callable object (its class)."""
    while isinstance(func, functools.partial):
        func = func.func
    name = getattr(func, "__name__", None)
    return name if isinstance(name, str) else type(func).__name__


def is_async_callable(func: Callable) -> bool:
    """Whether calling `func` returns a coroutine (an `async def` function, method, partial or callable object)."""
    while isinstance(func, functools.partial):
        func = func.func
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004
    return call is not None and inspect.iscoroutinefunction(call)


# ---------------------------------------------------------------------------------------------- throughput
def compute_flops_per_token(config: Any, seq_len: int) -> int:
    """Training FLOPs (forward + backward) per token of a decoder-only transformer, the PaLM (appendix B) estimate:

        flops_per_token = 6 * N + 12 * L * h * d_head * seq_len

    - `N` counts the weights of the matmuls a token goes through: per layer the attention projections
      `d * h * d_head` (query) + `2 * d * h_kv * d_head` (key, value) + `h * d_head * d` (output) and a gated MLP
      `3 * d * d_ff` (SwiGLU: gate, up, down; for mixture-of-experts configs the `num_experts_per_tok` active experts
      of size `moe_intermediate_size`), plus the LM head `d * vocab_size`. Embedding lookups and norms are free.
    - Each weight costs 2 FLOPs per token forward and 4 backward: `6 * N`.
    - Attention scores `Q K^T` and the weighted sum `A V` cost `2 * 2 * h * d_head * seq_len` per token and layer
      forward, times 3 with the backward: `12 * L * h * d_head * seq_len`. As in PaLM, the full `seq_len` window is
      counted (the causal mask is not halved), so MFU figures compare with published ones.

    Args:
        config (`PreTrainedConfig`):
            Model configuration (`hidden_size`, `num_hidden_layers`, `num_attention_heads`, `intermediate_size`,
            `vocab_size`; `num_key_value_heads` and `head_dim` when they differ from the defaults).
        seq_len (`int`):
            Sequence length the attention term is computed for.

    Returns:
        `int`: FLOPs per token.
    """
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    d_model = config.hidden_size
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or d_model // heads
    d_ff = getattr(config, "intermediate_size", None) or 4 * d_model
    experts = getattr(config, "num_experts_per_tok", None)
    if experts:
        d_ff = experts * (getattr(config, "moe_intermediate_size", None) or d_ff)
    attention = d_model * heads * head_dim + 2 * d_model * kv_heads * head_dim + heads * head_dim * d_model
    mlp = 3 * d_model * d_ff
    matmul_params = layers * (attention + mlp) + d_model * config.vocab_size
    return int(6 * matmul_params + 12 * layers * heads * head_dim * seq_len)


def compute_mfu(
    flops_per_token: int, tokens_per_second: float, world_size: int, peak_flops_per_device: float
) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the peak FLOP/s of all devices,

        mfu = flops_per_token * tokens_per_second / (world_size * peak_flops_per_device)

    Args:
        flops_per_token (`int`):
            From [`compute_flops_per_token`].
        tokens_per_second (`float`):
            Training throughput summed over all processes.
        world_size (`int`):
            Number of devices.
        peak_flops_per_device (`float`):
            Peak FLOP/s of one device in the training dtype.

    Returns:
        `float`: the utilisation as a fraction (0.4 means 40%).
    """
    if world_size < 1 or peak_flops_per_device <= 0:
        raise ValueError(
            f"compute_mfu needs world_size >= 1 and peak_flops_per_device > 0 (got {world_size}, "
            f"{peak_flops_per_device})."
        )
    return flops_per_token * tokens_per_second / (world_size * peak_flops_per_device)


def adjusted_mfu(mfu: float, config: Any, seq_len: int) -> float:
    """Rescale an MFU computed from the parameter FLOPs alone (`6 * N` per token) to one that counts attention too.

        adjusted = mfu * compute_flops_per_token(config, seq_len) / compute_flops_per_token(config, 0)

    The result is in the unit of `mfu` (a fraction stays a fraction, a percentage a percentage); it grows with
    `seq_len`, since the attention scores cost `12 * L * h * d_head * seq_len` FLOPs per token on top of `6 * N`.

    Args:
        mfu (`float`):
            MFU measured with the `6 * N` estimate.
        config (`PreTrainedConfig`):
            Model configuration, as for [`compute_flops_per_token`].
        seq_len (`int`):
            Sequence length of the training batches.
    """
    base = compute_flops_per_token(config, 0)
    return mfu * compute_flops_per_token(config, seq_len) / base


def print_prompt_completions_sample(
    prompts: list,
    completions: list,
    rewards: dict[str, list[float]],
    advantages: list[float] | None,
    step: int,
    num_samples: int | None = None,
    extra: dict[str, list] | None = None,
) -> None:
    """Print a table of prompts, completions, rewards and advantages with rich (nothing happens without rich).

    Args:
        prompts (`list`):
            The prompts (strings or message lists).
        completions (`list`):
            The completions.
        rewards (`dict[str, list[float]]`):
            Reward of every completion, per reward function name.
        advantages (`list[float]` or `None`):
            Advantage of every completion.
        step (`int`):
            The training step, shown in the title.
        num_samples (`int` or `None`, *optional*, defaults to `None`):
            Print this many rows chosen at random (in their original order); `None` prints every row.
        extra (`dict[str, list]` or `None`, *optional*, defaults to `None`):
            More columns (e.g. logged by reward functions through `log_extra`).
    """
    try:
        from rich.console import Console
        from rich.panel import Panel
        from rich.table import Table
    except ImportError:
        return
    rows = list(range(len(prompts)))
    if num_samples is not None and num_samples < len(rows):
        import random

        rows = sorted(random.sample(rows, max(num_samples, 0)))
    extra = extra or {}
    # One row per completion: prompt and completion in wide wrapping columns, then one right-aligned column per
    # reward function, the advantage and any extra logged values; the whole table framed with the step as title.
    table = Table(show_header=True, header_style="bold white", expand=True, show_lines=True)
    table.add_column("Prompt", style="bright_yellow")
    table.add_column("Completion", style="bright_green")
    for name in rewards:
        table.add_column(name, style="bold cyan", justify="right")
    if advantages is not None:
        table.add_column("Advantage", style="bold magenta", justify="right")
    for name in extra:
        table.add_column(name, style="white")
    for i in rows:
        cells = [message_text(prompts[i]), message_text(completions[i])]
        cells += [f"{float(values[i]):.2f}" for values in rewards.values()]
        if advantages is not None:
            cells.append(f"{float(advantages[i]):.2f}")
        cells += [str(values[i]) for values in extra.values()]
        table.add_row(*cells)
    Console().print(Panel(table, expand=False, title=f"Step {step}", border_style="bold white"))


def message_text(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(f"{message['role']}: {message.get('content', '')}" for message in value)
    return str(value)
