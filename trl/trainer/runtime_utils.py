"""Process, event-loop, dataset, vision-batch, peak-FLOPs and fused-LM-head helpers (re-exported by `trl.trainer.utils`).

Torch only at import time: `transformers`, `accelerate` and `deepspeed` are imported inside the functions that use
them.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from ..import_utils import _is_package_available


__all__ = [
    "FusedCausalLMOutput",
    "add_fused_lm_head",
    "generate_model_card",
    "ensure_master_addr_port",
    "get_peak_flops",
    "get_peak_flops_per_device",
    "get_trackio_space_url",
    "global_then_local_main_first",
    "create_model_from_path",
    "is_triton_available",
    "maybe_gather_lm_head_ctx",
    "repeat_iterable_dataset",
    "shutdown_event_loop_in_daemon",
    "split_pixel_values_by_grid",
    "start_event_loop_in_daemon",
    "strip_images_from_messages",
    "unsplit_pixel_values_by_grid",
]


# -------------------------------------------------------------------------------------------- processes
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def ensure_master_addr_port(addr: str | None = None, port: int | None = None) -> None:
    """Make sure `MASTER_ADDR` and `MASTER_PORT` are set, for `torch.distributed` outside a launcher.

    An explicit `addr` / `port` overwrites the environment; otherwise a value already set is kept, and a missing one
    becomes `localhost` / a free TCP port.
    """
    if addr is not None:
        os.environ["MASTER_ADDR"] = str(addr)
    else:
        os.environ.setdefault("MASTER_ADDR", "localhost")
    if port is not None:
        os.environ["MASTER_PORT"] = str(port)
    elif not os.environ.get("MASTER_PORT"):
        os.environ["MASTER_PORT"] = str(_free_port())


@contextmanager
def global_then_local_main_first():
    """Run the block on the global main process first, then on each node's local main process, then on the others.

    For work whose result the global main process writes to a shared cache (e.g. a download), which every node's
    local main process then reads into a node-local one. Every process enters the same two barriers, so the block
    may be entered from all processes at once; on a single process it simply runs.
    """
    from accelerate import PartialState

    state = PartialState()
    is_global_main, is_local_main = state.is_main_process, state.is_local_main_process
    if not is_global_main:
        state.wait_for_everyone()  # 1: the global main process is done
    if not is_local_main:
        state.wait_for_everyone()  # 2: the local main processes are done
    try:
        yield
    finally:
        if is_global_main:
            state.wait_for_everyone()  # 1
        if is_local_main:
            state.wait_for_everyone()  # 2


def get_trackio_space_url() -> str | None:
    """Address of the Hugging Face Space the current Trackio run logs to, or `None` (no trackio, or a local run).

    The Space comes from the running trackio run when there is one, else from `TRACKIO_SPACE_ID`.
    """
    space_id = None
    if _is_package_available("trackio"):
        try:
            import trackio.context_vars as context_vars

            space_id = context_vars.current_space_id.get()
        except Exception:  # older or newer trackio without this context variable
            space_id = None
    space_id = space_id or os.environ.get("TRACKIO_SPACE_ID")
    if not space_id:
        return None
    if space_id.startswith("http"):
        return space_id
    return f"https://huggingface.co/spaces/{space_id}"


def is_triton_available(min_version: str = "1.0.0") -> bool:
    """Whether `triton` is installed, at `min_version` or newer."""
    return _is_package_available("triton", min_version)


# ------------------------------------------------------------------------------------------- event loops
def start_event_loop_in_daemon(name: str | None = None) -> tuple[threading.Thread, asyncio.AbstractEventLoop]:
    """Start a new asyncio event loop running forever in a daemon thread.

    Submit work to it with `asyncio.run_coroutine_threadsafe(coro, loop)`; stop it with
    [`shutdown_event_loop_in_daemon`].

    Returns:
        `tuple[threading.Thread, asyncio.AbstractEventLoop]`: the thread and its loop (already running).
    """
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(started.set)
        loop.run_forever()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    started.wait()
    return thread, loop


def shutdown_event_loop_in_daemon(thread: threading.Thread | None, loop: asyncio.AbstractEventLoop | None) -> None:
    """Cancel the pending tasks of a loop started by [`start_event_loop_in_daemon`], stop it, join its thread, close it."""
    if loop is None:
        return
    if not loop.is_closed() and loop.is_running():

        async def cancel_pending() -> None:
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(cancel_pending(), loop).result(timeout=10)
        except Exception:
            pass
        loop.call_soon_threadsafe(loop.stop)
    if thread is not None:
        thread.join(timeout=10)
    if not loop.is_closed() and not loop.is_running():
        loop.close()


# --------------------------------------------------------------------------------------------- datasets
def repeat_iterable_dataset(
    dataset: Iterable[Any], mini_repeat_count: int, batch_size: int = 1, repeat_count: int = 1
) -> Iterator[Any]:
    """The order of [`RepeatSampler`] for a dataset that can only be iterated (e.g. a streamed `IterableDataset`).

    Examples are taken `batch_size` at a time; each such chunk is yielded `repeat_count` times, and within it each
    example `mini_repeat_count` times in a row. A last chunk shorter than `batch_size` is dropped, as the sampler does.

    Example:
    ```python
    >>> list(repeat_iterable_dataset(["a", "b", "c", "d"], mini_repeat_count=2, batch_size=2, repeat_count=2))
    ['a', 'a', 'b', 'b', 'a', 'a', 'b', 'b', 'c', 'c', 'd', 'd', 'c', 'c', 'd', 'd']
    ```
    """
    if mini_repeat_count < 1 or batch_size < 1 or repeat_count < 1:
        raise ValueError(
            "repeat_iterable_dataset needs mini_repeat_count, batch_size and repeat_count >= 1 (got "
            f"{mini_repeat_count}, {batch_size}, {repeat_count})."
        )
    chunk: list[Any] = []
    for example in dataset:
        chunk.append(example)
        if len(chunk) == batch_size:
            for _ in range(repeat_count):
                for item in chunk:
                    for _ in range(mini_repeat_count):
                        yield item
            chunk = []


# ---------------------------------------------------------------------------------------------- vision
def _images_per_sample(batch: dict[str, Any]) -> list[int]:
    grid = batch["image_grid_thw"]
    if "num_images" in batch:
        return [int(n) for n in batch["num_images"]]
    return [1] * len(grid)


def split_pixel_values_by_grid(batch: dict[str, Any]) -> dict[str, Any]:
    """Split the flat `pixel_values` of a Qwen-VL-style batch into one tensor per sample.

    Such processors concatenate the patches of every image into `pixel_values` of shape `(total_patches, dim)`, with
    `image_grid_thw` (one `(t, h, w)` row per image, `t * h * w` patches) and, when samples hold several images,
    `num_images` (images per sample). The result holds `pixel_values` as a list of per-sample tensors and
    `image_grid_thw` as a list of per-sample grids, so the batch can be sliced by sample. A batch without
    `image_grid_thw` / `pixel_values` is returned unchanged.
    """
    if "image_grid_thw" not in batch or "pixel_values" not in batch or not torch.is_tensor(batch["pixel_values"]):
        return batch
    grid = batch["image_grid_thw"]
    patches_per_image = grid.prod(dim=-1).tolist()
    counts = _images_per_sample(batch)
    if sum(counts) != len(patches_per_image):
        raise ValueError(f"num_images sums to {sum(counts)} but image_grid_thw has {len(patches_per_image)} rows.")
    patches_per_sample, grids, start = [], [], 0
    for count in counts:
        patches_per_sample.append(int(sum(patches_per_image[start : start + count])))
        grids.append(grid[start : start + count])
        start += count
    if sum(patches_per_sample) != batch["pixel_values"].shape[0]:
        raise ValueError(
            f"image_grid_thw counts {sum(patches_per_sample)} patches but pixel_values has "
            f"{batch['pixel_values'].shape[0]}."
        )
    return {
        **batch,
        "pixel_values": list(torch.split(batch["pixel_values"], patches_per_sample, dim=0)),
        "image_grid_thw": grids,
    }


def unsplit_pixel_values_by_grid(batch: dict[str, Any]) -> dict[str, Any]:
    """Inverse of [`split_pixel_values_by_grid`]: concatenate per-sample `pixel_values` and `image_grid_thw` back."""
    pixel_values = batch.get("pixel_values")
    if not isinstance(pixel_values, (list, tuple)):
        return batch
    result = {**batch, "pixel_values": torch.cat(list(pixel_values), dim=0)}
    grid = batch.get("image_grid_thw")
    if isinstance(grid, (list, tuple)):
        result["image_grid_thw"] = torch.cat(list(grid), dim=0)
    return result


def strip_images_from_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copy of a conversation without its image parts (`{"type": "image", ...}` entries of list contents).

    String contents and the other parts are kept; the input is not modified.
    """
    stripped = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = [part for part in content if not (isinstance(part, dict) and part.get("type") == "image")]
            message = {**message, "content": content}
        else:
            message = dict(message)
        stripped.append(message)
    return stripped


# ------------------------------------------------------------------------------------------------ models
def create_model_from_path(model_id: str, architecture: Any = None, **kwargs: Any):
    """Load a pretrained model from a Hub id or a local path.

    Args:
        model_id (`str`):
            Hub id or local directory.
        architecture (`type` or `str` or `None`, *optional*, defaults to `None`):
            Model class (e.g. `AutoModelForCausalLM`) or the name of a `transformers` class. `None` uses the first
            entry of the config's `architectures`, or `AutoModelForCausalLM` when there is none.
        **kwargs:
            Passed to `from_pretrained`. `dtype` (or `torch_dtype`) may be a string (`"bfloat16"`, `"auto"`).
    """
    import transformers

    dtype = kwargs.pop("dtype", kwargs.pop("torch_dtype", None))
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if isinstance(architecture, str):
        architecture = getattr(transformers, architecture)
    if architecture is None:
        config = transformers.AutoConfig.from_pretrained(
            model_id, trust_remote_code=kwargs.get("trust_remote_code", False), revision=kwargs.get("revision")
        )
        names = getattr(config, "architectures", None) or []
        architecture = getattr(transformers, names[0], None) if names else None
        architecture = architecture or transformers.AutoModelForCausalLM
    return architecture.from_pretrained(model_id, **kwargs)


def generate_model_card(
    base_model: str | None,
    model_name: str,
    hub_model_id: str | None,
    dataset_name: str | None,
    tags: list[str],
    wandb_url: str | None,
    trackio_url: str | None,
    trainer_name: str,
    trainer_citation: str | None = None,
    template_file: str | None = None,
    paper_title: str | None = None,
    paper_id: str | None = None,
    comet_url: str | None = None,
):
    """Model card of a trained model, as a `huggingface_hub.ModelCard` (save it with `card.save(path)`).

    The card is rendered from the trainer templates in `trl/templates/` (`template_file`, default
    `"lm_model_card.md"`); the experiment-tracker links given (`wandb_url`, `trackio_url`, `comet_url`) are listed
    in a "Training runs" section.
    """
    from huggingface_hub import ModelCard

    from .. import __version__
    from .model_card import render_model_card

    paper = {key: value for key, value in (("title", paper_title), ("id", paper_id), ("citation", trainer_citation))}
    text = render_model_card(
        template_file=template_file or "lm_model_card.md",
        base_model=base_model,
        model_name=model_name,
        hub_model_id=hub_model_id,
        dataset_name=dataset_name,
        tags=list(tags or []),
        trainer_name=trainer_name,
        paper={key: value for key, value in paper.items() if value},
        trl_version=__version__,
    )
    links = [
        (name, url)
        for name, url in (("Weights & Biases", wandb_url), ("Trackio", trackio_url), ("Comet", comet_url))
        if url
    ]
    if links:
        text += "\n\n## Training runs\n\n" + "\n".join(f"- [{name}]({url})" for name, url in links) + "\n"
    return ModelCard(text)


# ----------------------------------------------------------------------------------------- peak FLOP/s
# Dense (no sparsity) peak FLOP/s of one device, per compute dtype, from the vendors' data sheets. Matched by the
# first key that occurs in the device name (more specific names first).
_PEAK_FLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("GB200", {"bf16": 2.5e15, "fp16": 2.5e15, "fp32": 80e12}),
    ("B200", {"bf16": 2.25e15, "fp16": 2.25e15, "fp32": 80e12}),
    ("H200", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),
    ("H100 PCIE", {"bf16": 756e12, "fp16": 756e12, "fp32": 51e12}),
    ("H100", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),
    ("H800", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),
    ("GH200", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),
    ("A100", {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12}),
    ("A800", {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12}),
    ("L40S", {"bf16": 362e12, "fp16": 362e12, "fp32": 91.6e12}),
    ("L40", {"bf16": 181e12, "fp16": 181e12, "fp32": 90.5e12}),
    ("L4", {"bf16": 121e12, "fp16": 121e12, "fp32": 30.3e12}),
    ("A10G", {"bf16": 70e12, "fp16": 70e12, "fp32": 31.2e12}),
    ("A10", {"bf16": 125e12, "fp16": 125e12, "fp32": 31.2e12}),
    ("V100", {"fp16": 125e12, "fp32": 15.7e12}),
    ("T4", {"fp16": 65e12, "fp32": 8.1e12}),
    ("RTX 4090", {"bf16": 165e12, "fp16": 165e12, "fp32": 82.6e12}),
    ("RTX 3090", {"bf16": 71e12, "fp16": 71e12, "fp32": 35.6e12}),
    ("MI300X", {"bf16": 1.307e15, "fp16": 1.307e15, "fp32": 163.4e12}),
    ("MI250X", {"bf16": 383e12, "fp16": 383e12, "fp32": 47.9e12}),
)


def _dtype_key(dtype: Any) -> str:
    if isinstance(dtype, torch.dtype):
        return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(dtype, str(dtype))
    text = str(dtype).lower().replace("torch.", "")
    return {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}.get(text, text)


def get_peak_flops(device_name: str, dtype: Any) -> float | None:
    """Dense peak FLOP/s of one device of this name in this compute dtype, or `None` when it is not known.

    Args:
        device_name (`str`):
            E.g. `torch.cuda.get_device_name()`, `"NVIDIA H100 80GB HBM3"` (matched case-insensitively).
        dtype (`torch.dtype` or `str`):
            `torch.bfloat16` / `"bf16"`, `torch.float16` / `"fp16"` or `torch.float32` / `"fp32"`.

    Returns:
        `float` or `None`: FLOP/s (e.g. `989e12` for an H100 SXM in bf16).
    """
    name = device_name.upper()
    key = _dtype_key(dtype)
    for pattern, table in _PEAK_FLOPS:
        if pattern in name:
            return table.get(key)
    return None


def get_peak_flops_per_device(accelerator: Any, dtype: Any) -> float | None:
    """[`get_peak_flops`] of the device `accelerator` (an `accelerate.Accelerator`) trains on; `None` off CUDA."""
    device = getattr(accelerator, "device", accelerator)
    device = torch.device(device) if not isinstance(device, torch.device) else device
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return get_peak_flops(torch.cuda.get_device_name(device), dtype)


# ------------------------------------------------------------------------------------------ fused LM head
@dataclass
class FusedCausalLMOutput:
    """Output of a model patched by [`add_fused_lm_head`]: per-token scores instead of `(batch, seq, vocab)` logits.

    Attributes:
        log_probs (`torch.Tensor` or `None`):
            `log p(label)` of shape `(batch, seq)`, at the positions of `labels` (0 where a label is `-100`).
        entropy (`torch.Tensor` or `None`):
            Entropy of the next-token distribution at each labelled position (0 elsewhere), when `"entropy"` is
            among the outputs.
        loss (`torch.Tensor` or `None`):
            Mean negative log-likelihood of the labelled tokens.
        past_key_values, hidden_states, attentions:
            As returned by the base model.
    """

    log_probs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    past_key_values: Any = None
    hidden_states: Any = None
    attentions: Any = None


def maybe_gather_lm_head_ctx(params: Any):
    """Context in which the LM head's parameters are whole: DeepSpeed ZeRO-3 gathers partitioned ones, else nothing."""
    params = [params] if isinstance(params, torch.nn.Parameter) else list(params)
    if any(hasattr(param, "ds_id") for param in params):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    return nullcontext()


_FUSED_OUTPUTS = ("log_probs", "entropy", "loss")


def add_fused_lm_head(
    model: torch.nn.Module,
    temperature: float = 1.0,
    cast_lm_head_to_fp32: bool = False,
    outputs: tuple[str, ...] = ("log_probs",),
) -> torch.nn.Module:
    """Patch a causal LM so that `model(input_ids, labels=...)` returns [`FusedCausalLMOutput`] without full logits.

    The base model computes the final hidden states; the LM head is then applied chunk by chunk and reduced on the
    fly to the requested per-token values (`"log_probs"`, `"entropy"`, `"loss"`), so the `(batch, seq, vocab)` logits
    are never held at once. `labels` are aligned with `input_ids` (as for the usual loss: position t is scored
    against label t + 1; `-100` is ignored). A call without `labels` runs the original forward.

    Args:
        model (`PreTrainedModel`):
            A causal LM with `get_output_embeddings()` returning a `torch.nn.Linear` and a `.model` base (or
            `base_model`). Patched in place and returned.
        temperature (`float`, *optional*, defaults to `1.0`):
            Divides the logits before the softmax.
        cast_lm_head_to_fp32 (`bool`, *optional*, defaults to `False`):
            Project in float32 (hidden states and head weight upcast).
        outputs (`tuple[str, ...]`, *optional*, defaults to `("log_probs",)`):
            Which of `"log_probs"`, `"entropy"`, `"loss"` to compute.
    """
    from ..kernels.chunked_log_prob import chunked_selective_log_softmax

    unknown = set(outputs) - set(_FUSED_OUTPUTS)
    if unknown:
        raise ValueError(f"add_fused_lm_head outputs must be among {_FUSED_OUTPUTS}; got {sorted(unknown)}.")
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(f"add_fused_lm_head needs a linear output head; {type(model).__name__} has {type(head)}.")
    base = getattr(model, "model", None) or getattr(model, "base_model", None)
    if base is None or base is model:
        raise ValueError(f"add_fused_lm_head cannot find the base model of {type(model).__name__}.")
    original_forward = model.forward

    def forward(*args: Any, labels: torch.Tensor | None = None, **kwargs: Any):
        if labels is None:
            return original_forward(*args, **kwargs)
        kwargs.pop("logits_to_keep", None)
        kwargs.pop("return_dict", None)
        base_out = base(*args, return_dict=True, **kwargs)
        hidden = base_out.last_hidden_state[:, :-1]
        targets = labels[:, 1:]
        weight, bias = head.weight, head.bias
        with maybe_gather_lm_head_ctx([p for p in (weight, bias) if p is not None]):
            if cast_lm_head_to_fp32:
                hidden, weight = hidden.float(), weight.float()
                bias = bias.float() if bias is not None else None
            log_probs, entropy = chunked_selective_log_softmax(
                hidden,
                weight,
                targets,
                temperature=temperature,
                return_entropy=True,
                lm_head_bias=bias,
            )
        valid = targets != -100
        log_probs = log_probs.masked_fill(~valid, 0.0)
        pad = log_probs.new_zeros(log_probs.shape[0], 1)
        result = FusedCausalLMOutput(
            past_key_values=getattr(base_out, "past_key_values", None),
            hidden_states=getattr(base_out, "hidden_states", None),
            attentions=getattr(base_out, "attentions", None),
        )
        if "log_probs" in outputs:
            result.log_probs = torch.cat([log_probs, pad], dim=1)
        if "entropy" in outputs:
            result.entropy = torch.cat([entropy, pad], dim=1)
        if "loss" in outputs:
            result.loss = -(log_probs.sum() / valid.sum().clamp(min=1))
        return result

    model.forward = forward
    return model
