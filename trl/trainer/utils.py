"""Tensor helpers shared by the trainers: padding and flushing, NaN-aware and masked statistics, log-probabilities,
running moments, samplers, FLOP accounting, PEFT adapter switching.

Torch only at import time: `transformers`, `accelerate` and `peft` are imported inside the functions that use them.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import inspect
import json
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import Sampler

from ..kernels import entropy_from_logits, selective_log_softmax, selective_log_softmax_and_entropy


__all__ = [
    "RepeatSampler",
    "RunningMoments",
    "cap_exp",
    "compute_accuracy",
    "compute_flops_per_token",
    "compute_mfu",
    "disable_dropout_in_model",
    "empty_cache",
    "entropy_from_logits",
    "exact_div",
    "first_true_indices",
    "flush_left",
    "flush_right",
    "get_callable_name",
    "hash_module",
    "identity",
    "is_async_callable",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "nanmax",
    "nanmin",
    "nanstd",
    "pad",
    "pad_to_length",
    "remove_none_values",
    "selective_log_softmax",
    "selective_log_softmax_and_entropy",
    "shuffle_sequence_dict",
    "split_tensor_dict",
    "truncate_right",
    "use_adapter",
]

TListOrMapping = TypeVar("TListOrMapping", list, dict)


# ---------------------------------------------------------------------------------------------------- padding
def pad(
    tensors: list[torch.Tensor],
    padding_value: int = 0,
    padding_side: str = "right",
    pad_to_multiple_of: int | None = None,
) -> torch.Tensor:
    """Stack tensors of different shapes into one tensor, padding every dimension to the largest size.

    Args:
        tensors (`list[torch.Tensor]`):
            Tensors with the same number of dimensions.
        padding_value (`int`, *optional*, defaults to `0`):
            Value of the padded entries.
        padding_side (`str`, *optional*, defaults to `"right"`):
            `"right"` puts the values at the start of the first dimension, `"left"` at its end. Other dimensions are
            always padded at their end.
        pad_to_multiple_of (`int` or `None`, *optional*, defaults to `None`):
            Round the first dimension up to a multiple of this value.

    Returns:
        `torch.Tensor`: Tensor of shape `(len(tensors), *max_shape)`.

    Example:
        `pad([torch.tensor([1, 2, 3]), torch.tensor([4, 5])])` is `tensor([[1, 2, 3], [4, 5, 0]])`.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}.")
    if not tensors:
        raise ValueError("pad needs at least one tensor.")
    shape = np.max([t.shape for t in tensors], axis=0).tolist()
    if pad_to_multiple_of is not None and shape:
        shape[0] = math.ceil(shape[0] / pad_to_multiple_of) * pad_to_multiple_of
    output = torch.full((len(tensors), *shape), padding_value, dtype=tensors[0].dtype, device=tensors[0].device)
    for i, tensor in enumerate(tensors):
        if tensor.dim() == 0:
            output[i] = tensor
            continue
        length = tensor.shape[0]
        first = slice(0, length) if padding_side == "right" else slice(shape[0] - length, shape[0])
        output[(i, first, *(slice(0, s) for s in tensor.shape[1:]))] = tensor
    return output


def pad_to_length(tensor: torch.Tensor, length: int, pad_value: int | float, dim: int = -1) -> torch.Tensor:
    """Pad `tensor` with `pad_value` at the end of dimension `dim` up to `length` (unchanged if already as long)."""
    if tensor.size(dim) >= length:
        return tensor
    pad_size = list(tensor.shape)
    pad_size[dim] = length - tensor.size(dim)
    filler = torch.full(pad_size, pad_value, dtype=tensor.dtype, device=tensor.device)
    return torch.cat([tensor, filler], dim=dim)


def flush_left(mask: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Shift every row left so that its first `1` in `mask` lands in column 0, then drop the columns that are `0` in
    every row. The same shift is applied to `tensors` (same leading shape as `mask`).

    Example: mask `[[0, 0, 1, 1], [0, 1, 1, 0]]` becomes `[[1, 1], [1, 1]]`.

    Returns:
        The flushed mask if no `tensors` are given, else the tuple `(mask, *tensors)`.
    """
    return _flush(mask, tensors, left=True)


def flush_right(mask: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Shift every row right so that its last `1` in `mask` lands in the last column, then drop the columns that are
    `0` in every row. The mirror of [`flush_left`], with the same return convention."""
    return _flush(mask, tensors, left=False)


def _flush(mask: torch.Tensor, tensors: tuple[torch.Tensor, ...], left: bool):
    nonzero = mask != 0
    width = mask.shape[1]
    # Leading (left) or trailing (right) zeros of each row; a row of zeros gets `width`, a full turn (no shift).
    shift = first_true_indices(nonzero if left else nonzero.flip(1))
    columns = torch.arange(width, device=mask.device)
    source = (columns + shift.unsqueeze(1)) % width if left else (columns - shift.unsqueeze(1)) % width
    shifted = [mask.gather(1, source)] + [t.gather(1, _expand_index(source, t)) for t in tensors]
    used = (shifted[0] != 0).any(dim=0).nonzero().squeeze(-1)
    if left:
        shifted = [t[:, : int(used.max()) + 1 if used.numel() else 0] for t in shifted]
    else:
        shifted = [t[:, int(used.min()) if used.numel() else width :] for t in shifted]
    return shifted[0] if not tensors else tuple(shifted)


def _expand_index(index: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    extra = tensor.shape[2:]
    return index.view(*index.shape, *([1] * len(extra))).expand(*index.shape, *extra)


def first_true_indices(bools: torch.Tensor, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """Index of the first `True` along the last dimension; the dimension's length where a row has none."""
    length = bools.size(-1)
    positions = torch.arange(length, dtype=dtype, device=bools.device)
    return torch.where(bools, positions, torch.full_like(positions, length)).min(dim=-1).values


def truncate_right(
    input_ids: torch.Tensor, stop_token_id: int, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace everything after the first `stop_token_id` of each row by `pad_token_id`.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: the truncated ids, and a mask that is `1` up to and including the stop
        token (everywhere for rows without one).
    """
    stop_at = first_true_indices(input_ids == stop_token_id).unsqueeze(-1)
    after_stop = torch.arange(input_ids.shape[-1], device=input_ids.device) > stop_at
    return input_ids.masked_fill(after_stop, pad_token_id), (~after_stop).long()


# ------------------------------------------------------------------------------------------------- statistics
def nanstd(tensor: torch.Tensor, dim: int | tuple[int, ...] | None = None, keepdim: bool = False) -> torch.Tensor:
    """Standard deviation ignoring NaNs, with Bessel's correction (divides by `n - 1`, `n` the non-NaN count).

    NaN where fewer than two values are not NaN.
    """
    count = (~torch.isnan(tensor)).sum(dim=dim, keepdim=True)
    mean = torch.nansum(tensor, dim=dim, keepdim=True) / count
    squares = torch.nansum((tensor - mean) ** 2, dim=dim, keepdim=keepdim)
    if not keepdim:
        count = count.squeeze(dim) if dim is not None else count.reshape(())
    variance = squares / (count - 1)
    return torch.where(count > 1, variance.sqrt(), torch.full_like(variance, float("nan")))


def nanmin(tensor: torch.Tensor) -> torch.Tensor:
    """Minimum ignoring NaNs; NaN if every value is NaN."""
    if torch.isnan(tensor).all():
        return torch.tensor(float("nan"), dtype=tensor.dtype, device=tensor.device)
    return torch.min(tensor[~torch.isnan(tensor)])


def nanmax(tensor: torch.Tensor) -> torch.Tensor:
    """Maximum ignoring NaNs; NaN if every value is NaN."""
    if torch.isnan(tensor).all():
        return torch.tensor(float("nan"), dtype=tensor.dtype, device=tensor.device)
    return torch.max(tensor[~torch.isnan(tensor)])


def masked_mean(values: torch.Tensor, mask: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """Mean of `values` where `mask` is 1 (over `axis`, or over everything)."""
    if axis is None:
        return (values * mask).sum() / mask.sum()
    return (values * mask).sum(axis) / mask.sum(axis)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of `values` where `mask` is 1; `unbiased` applies Bessel's correction `n / (n - 1)`."""
    centered = values - masked_mean(values, mask)
    variance = masked_mean(centered**2, mask)
    if unbiased:
        count = mask.sum()
        if count < 2:
            raise ValueError(
                f"The mask selects {int(count)} value(s); an unbiased variance needs at least 2. Check the mask, or "
                "pass unbiased=False."
            )
        variance = variance * count / (count - 1)
    return variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise `values` to mean 0 and (unbiased) variance 1 over the masked entries.

    With `shift_mean=False` the mean is added back: only the scale changes.
    """
    mean, variance = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    return whitened if shift_mean else whitened + mean


def cap_exp(value: torch.Tensor, cap: float = -1) -> torch.Tensor:
    """`exp(min(value, cap))`; `cap < 0` uses the largest exponent whose `exp` is finite in `value.dtype`."""
    if cap >= 0:
        return torch.exp(torch.clamp(value, max=cap))
    limit = torch.tensor(math.log(torch.finfo(value.dtype).max), dtype=value.dtype, device=value.device)
    if torch.isinf(torch.exp(limit)):  # the logarithm rounded up in this dtype
        limit = torch.nextafter(limit, torch.tensor(-math.inf, dtype=value.dtype, device=value.device))
    return torch.exp(torch.minimum(value, limit))


def exact_div(a: int, b: int, custom_error_message: str = "") -> int:
    """`a // b`, raising `ValueError` when `b` does not divide `a`."""
    quotient = a // b
    if a != quotient * b:
        raise ValueError(f"{custom_error_message}, inexact division: {a} / {b} = {a / b}")
    return quotient


@dataclass
class RunningMoments:
    """Running mean and standard deviation of every value passed to [`~RunningMoments.update`].

    Args:
        accelerator (`Accelerator` or `None`, *optional*, defaults to `None`):
            When given, `update` combines the values of all processes (each process then holds the same moments).
    """

    accelerator: Any = None
    mean: float = 0.0
    std: float = 1.0
    var: float = 1.0
    count: float = 1e-24

    @torch.no_grad()
    def update(self, xs: torch.Tensor) -> tuple[float, float]:
        """Fold the batch `xs` into the running moments (parallel-variance merge of Chan et al.).

        Returns:
            `tuple[float, float]`: the batch mean and its Bessel-corrected standard deviation.
        """
        batch_mean, batch_var, batch_count = _global_moments(self.accelerator, xs)
        delta = batch_mean - self.mean
        total = self.count + batch_count
        merged_squares = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.mean += delta * batch_count / total
        self.var = merged_squares / total
        self.std = math.sqrt(self.var * total / (total - 1)) if total > 1 else 0.0
        self.count = total
        batch_std = math.sqrt(batch_var * batch_count / (batch_count - 1)) if batch_count > 1 else 0.0
        return batch_mean, batch_std

    def save_to_json(self, json_path: str) -> None:
        """Write the moments to `json_path` (from the main process only when an accelerator is set)."""
        if self.accelerator is not None and not self.accelerator.is_main_process:
            return
        with open(json_path, "w", encoding="utf-8") as file:
            json.dump(self.state_dict(), file, indent=2, sort_keys=True)

    @classmethod
    def load_from_json(cls, accelerator: Any, json_path: str) -> RunningMoments:
        with open(json_path, encoding="utf-8") as file:
            return cls(accelerator=accelerator, **json.load(file))

    def state_dict(self) -> dict[str, float]:
        """The moments as plain floats (for checkpoints)."""
        return {name: float(getattr(self, name)) for name in ("mean", "std", "var", "count")}


def _global_moments(accelerator: Any, xs: torch.Tensor) -> tuple[float, float, float]:
    """Mean, population variance and count of `xs` over all processes."""
    xs = xs.detach().double()
    stats = torch.stack([xs.sum(), torch.tensor(float(xs.numel()), dtype=torch.float64, device=xs.device)])
    if accelerator is not None and accelerator.num_processes > 1:
        stats = accelerator.reduce(stats, reduction="sum")
    total, count = stats.tolist()
    mean = total / count
    squares = ((xs - mean) ** 2).sum()
    if accelerator is not None and accelerator.num_processes > 1:
        squares = accelerator.reduce(squares, reduction="sum")
    return mean, float(squares) / count, count


def compute_accuracy(eval_pred: Any) -> dict[str, float]:
    """Accuracy of reward-model (or token-classification) predictions, for `Trainer(compute_metrics=...)`.

    - Predictions of shape `(N, 2)` hold the (chosen, rejected) rewards; the prediction is correct when the reward of
      the column given by the label (0 = chosen) is the larger one. Pairs with equal rewards are not counted (a
      warning says how many), since neither answer is preferred.
    - Predictions of shape `(N, T, C)` are token logits; accuracy is over positions whose label is not -100.
    """
    predictions, labels = eval_pred
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.ndim == 3:
        predicted = np.argmax(predictions, axis=-1)
        keep = labels != -100
        return {"accuracy": float((predicted[keep] == labels[keep]).mean())}
    ties = predictions[:, 0] == predictions[:, 1]
    if ties.any():
        warnings.warn(
            f"{int(ties.sum())} of {len(ties)} predictions give the chosen and the rejected answer the same reward; "
            "they are left out of the accuracy.",
            UserWarning,
            stacklevel=2,
        )
    predicted = np.argmax(predictions[~ties], axis=1)
    return {"accuracy": float((predicted == labels[~ties]).mean())}


# ------------------------------------------------------------------------------------------ batches and data
def split_tensor_dict(
    tensor_dict: dict[str, torch.Tensor | None], num_chunks: int
) -> list[dict[str, torch.Tensor | None]]:
    """Split every value of `tensor_dict` along its first dimension into `num_chunks` equal parts.

    `None` values and 0-dim tensors are copied into every part; lists are sliced like tensors.
    """
    batch_size = _batch_size(tensor_dict)
    chunk = exact_div(batch_size, num_chunks, f"split_tensor_dict: batch size {batch_size} into {num_chunks} chunks")

    def part(value: Any, i: int) -> Any:
        if value is None or (isinstance(value, torch.Tensor) and value.dim() == 0):
            return value
        return value[i * chunk : (i + 1) * chunk]

    return [{key: part(value, i) for key, value in tensor_dict.items()} for i in range(num_chunks)]


def shuffle_sequence_dict(seq_dict: dict[str, Sequence | None]) -> dict[str, Sequence | None]:
    """Apply one random permutation (from torch's global generator) to the first dimension of every value.

    `None` values and 0-dim tensors are returned unchanged.
    """
    permutation = torch.randperm(_batch_size(seq_dict))

    def permute(value: Any) -> Any:
        if value is None or (isinstance(value, torch.Tensor) and value.dim() == 0):
            return value
        if isinstance(value, torch.Tensor):
            return value[permutation.to(value.device)]
        return [value[i] for i in permutation.tolist()]

    return {key: permute(value) for key, value in seq_dict.items()}


def _batch_size(values: dict[str, Any]) -> int:
    for value in values.values():
        if value is not None and not (isinstance(value, torch.Tensor) and value.dim() == 0):
            return len(value)
    raise ValueError("Every value is None or a scalar: there is no batch dimension to split or shuffle.")


def remove_none_values(example: TListOrMapping) -> TListOrMapping:
    """Recursively drop the dict entries whose value is `None` (datasets fills absent keys of nested structs with
    `None`, e.g. `tool_calls` of messages that have none)."""
    if isinstance(example, list):
        return [remove_none_values(item) if isinstance(item, (dict, list)) else item for item in example]
    if isinstance(example, dict):
        return {
            key: remove_none_values(value) if isinstance(value, (dict, list)) else value
            for key, value in example.items()
            if value is not None
        }
    raise TypeError(f"remove_none_values expects a list or a dict, got {type(example).__name__}.")


class RepeatSampler(Sampler):
    """Sampler that repeats indices, so that one prompt yields several generations in the same batch.

    The (optionally shuffled) indices are cut into chunks of `batch_size` (an incomplete last chunk is dropped).
    Each chunk is emitted `repeat_count` times, and within it each index `mini_repeat_count` times in a row.

    Example: `RepeatSampler(range(4), mini_repeat_count=2, batch_size=2, repeat_count=2, shuffle=False)` yields
    `0 0 1 1 0 0 1 1 2 2 3 3 2 2 3 3`.

    Args:
        data_source (`Sized`):
            The dataset (only its length is used).
        mini_repeat_count (`int`):
            Consecutive repeats of each index (the number of generations per prompt).
        batch_size (`int`, *optional*, defaults to `1`):
            Number of unique indices per chunk.
        repeat_count (`int`, *optional*, defaults to `1`):
            Repeats of each whole chunk (e.g. reuse of the same prompts over several optimisation steps).
        shuffle (`bool`, *optional*, defaults to `True`):
            Shuffle the indices (a new permutation at every pass).
        seed (`int` or `None`, *optional*, defaults to `None`):
            Seed of the sampler's generator; `None` draws it from torch's global generator (so `set_seed` governs it).
    """

    def __init__(
        self,
        data_source: Sequence,
        mini_repeat_count: int,
        batch_size: int = 1,
        repeat_count: int = 1,
        shuffle: bool = True,
        seed: int | None = None,
    ):
        self.data_source = data_source
        self.mini_repeat_count = mini_repeat_count
        self.batch_size = batch_size
        self.repeat_count = repeat_count
        self.num_samples = len(data_source)
        self.shuffle = shuffle
        self.seed = seed
        if shuffle:
            self.generator = torch.Generator()
            if seed is None:
                seed = int(torch.randint(0, 2**62, (1,)).item())
            self.generator.manual_seed(seed)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = torch.randperm(self.num_samples, generator=self.generator).tolist()
        else:
            order = list(range(self.num_samples))
        for start in range(0, self.num_samples - self.batch_size + 1, self.batch_size):
            chunk = order[start : start + self.batch_size]
            for _ in range(self.repeat_count):
                for index in chunk:
                    yield from [index] * self.mini_repeat_count

    def __len__(self) -> int:
        return (self.num_samples // self.batch_size) * self.batch_size * self.mini_repeat_count * self.repeat_count


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
            Print this many rows chosen at random; `None` prints every row.
        extra (`dict[str, list]` or `None`, *optional*, defaults to `None`):
            More columns (e.g. logged by reward functions through `log_extra`).
    """
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        return
    rows = list(range(len(prompts)))
    if num_samples is not None and num_samples < len(rows):
        import random

        rows = sorted(random.Random(step).sample(rows, num_samples))
    table = Table(title=f"Step {step}", show_lines=True)
    extra = extra or {}
    for header in ("prompt", "completion", *rewards, *(["advantage"] if advantages is not None else []), *extra):
        table.add_column(header)
    for i in rows:
        cells = [message_text(prompts[i]), message_text(completions[i])]
        cells += [f"{values[i]:.2f}" for values in rewards.values()]
        if advantages is not None:
            cells.append(f"{advantages[i]:.2f}")
        cells += [str(values[i]) for values in extra.values()]
        table.add_row(*cells)
    Console().print(table)


def message_text(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(f"{message['role']}: {message.get('content', '')}" for message in value)
    return str(value)
