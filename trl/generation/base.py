"""
The generation interface every online trainer calls, whatever produces the completions.

A trainer builds one [`GenerationBackend`] in its setup and then only ever calls:

- `backend.generate(prompt_ids, SamplingParams(...))` -> [`GenerationResult`] (prompt-major: the `n` completions
  of prompt 0, then those of prompt 1, ...);
- `backend.sync_weights(model)` after each optimizer step that changed the policy (a no-op for the transformers
  backend, which samples from the live model);
- `backend.close()` at the end.

The backends are [`~trl.generation.transformers_backend.TransformersBackend`] (default, CPU-friendly),
[`~trl.generation.vllm_generation.VLLMGeneration`] (vLLM colocated in the training processes) and
[`~trl.generation.server_backend.VLLMServerBackend`] (a `trl vllm-serve` server reached through
[`~trl.generation.vllm_client.VLLMClient`]).

This module also holds [`iter_inference_weights`], the weight export that the vLLM backends share: it turns a
training model (PEFT, DeepSpeed ZeRO-3 or FSDP wrapped) into the `(name, tensor)` pairs of the plain model.
"""

from __future__ import annotations

import contextlib
import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator


FINISH_STOP = "stop"
FINISH_LENGTH = "length"


@dataclass
class SamplingParams:
    """
    How to sample completions; the same fields for every backend.

    Args:
        n (`int`, *optional*, defaults to `1`):
            Completions per prompt.
        temperature (`float`, *optional*, defaults to `1.0`):
            Sampling temperature. `0.0` means greedy decoding.
        top_p (`float`, *optional*, defaults to `1.0`):
            Nucleus sampling mass; `1.0` keeps every token.
        top_k (`int`, *optional*, defaults to `-1`):
            Keep only the `top_k` most likely tokens; `-1` or `0` keeps every token.
        min_p (`float`, *optional*, defaults to `0.0`):
            Drop tokens whose probability is below `min_p` times the most likely token's; `0.0` disables it.
        repetition_penalty (`float`, *optional*, defaults to `1.0`):
            Penalty on tokens already in the sequence; `1.0` disables it.
        max_tokens (`int`, *optional*, defaults to `16`):
            Most tokens generated per completion (the EOS token counts).
        generation_kwargs (`dict[str, Any]`, *optional*, defaults to `{}`):
            Extra backend arguments that override the fields above: `GenerationConfig` fields for the transformers
            backend, `vllm.SamplingParams` fields for vLLM. `seed` is understood by every backend.
        return_logprobs (`bool`, *optional*, defaults to `False`):
            Also return the log-probability of each sampled token under the sampling distribution (the model's
            logits divided by the temperature).
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    max_tokens: int = 16
    generation_kwargs: dict[str, Any] = field(default_factory=dict)
    return_logprobs: bool = False

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"`n` must be at least 1, got {self.n}.")
        if self.max_tokens < 1:
            raise ValueError(f"`max_tokens` must be at least 1, got {self.max_tokens}.")
        if self.temperature < 0:
            raise ValueError(f"`temperature` must be >= 0 (0 means greedy), got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"`top_p` must be in (0, 1], got {self.top_p}.")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"`min_p` must be in [0, 1], got {self.min_p}.")
        if self.repetition_penalty <= 0:
            raise ValueError(f"`repetition_penalty` must be > 0 (1.0 disables it), got {self.repetition_penalty}.")

    @property
    def greedy(self) -> bool:
        """Whether decoding is greedy (`temperature == 0`)."""
        return self.temperature == 0


@dataclass
class GenerationResult:
    """
    Completions for a batch of prompts, prompt-major: entry `i * n + j` is the `j`-th completion of prompt `i`.

    Args:
        completion_ids (`list[list[int]]`):
            Generated token ids, ending with the EOS token when generation stopped there.
        finish_reasons (`list[str]`):
            `"stop"` (EOS or another stop condition) or `"length"` (`max_tokens` reached without EOS).
        logprobs (`list[list[float]]` or `None`, *optional*, defaults to `None`):
            Per-token log-probabilities of the sampled tokens under the sampling distribution, aligned with
            `completion_ids`, when requested and the backend provides them. A value the backend could not compute
            (NaN) is `nan`.
        prompt_ids (`list[list[int]]` or `None`, *optional*, defaults to `None`):
            The prompts as the backend saw them (one per prompt, not per completion).
    """

    completion_ids: list[list[int]]
    finish_reasons: list[str]
    logprobs: list[list[float]] | None = None
    prompt_ids: list[list[int]] | None = None

    def __post_init__(self):
        if len(self.finish_reasons) != len(self.completion_ids):
            raise ValueError("`finish_reasons` needs one entry per completion.")
        if self.logprobs is not None:
            if [len(row) for row in self.logprobs] != [len(row) for row in self.completion_ids]:
                raise ValueError("`logprobs` must have one value per completion token.")

    @property
    def truncated(self) -> list[bool]:
        """Per completion, whether it hit `max_tokens` without an EOS token."""
        return [reason == FINISH_LENGTH for reason in self.finish_reasons]

    def __len__(self) -> int:
        return len(self.completion_ids)


class GenerationBackend(ABC):
    """
    What a trainer needs from a generation engine. Subclasses implement [`~GenerationBackend.generate`] and, when
    they hold their own copy of the weights, [`~GenerationBackend.sync_weights`].
    """

    #: Whether [`~GenerationBackend.generate`] can return sampling log-probs (for importance-sampling correction).
    provides_logprobs: bool = True

    @abstractmethod
    def generate(self, prompt_ids: list[list[int]], sampling: SamplingParams) -> GenerationResult:
        """
        Generate `sampling.n` completions for each prompt.

        Args:
            prompt_ids (`list[list[int]]`):
                Token ids of each prompt, unpadded.
            sampling ([`SamplingParams`]):
                How to sample.

        Returns:
            [`GenerationResult`]: `len(prompt_ids) * sampling.n` completions, prompt-major.
        """

    def sync_weights(self, model: torch.nn.Module) -> None:
        """
        Make the engine generate from the current weights of `model`. Call it after each optimizer step.

        Args:
            model (`torch.nn.Module`):
                The training model (possibly wrapped by accelerate, PEFT, DeepSpeed or FSDP).
        """
        return None

    def close(self) -> None:
        """Release the engine's resources (communicators, GPU memory). The backend is unusable afterwards."""
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def check_prompts(prompt_ids: list[list[int]]) -> None:
    """
    Raise a `ValueError` unless `prompt_ids` is a list of non-empty lists of ints.

    Args:
        prompt_ids (`list[list[int]]`):
            The prompts given to a backend.
    """
    if not isinstance(prompt_ids, list | tuple) or any(not isinstance(p, list | tuple) for p in prompt_ids):
        raise ValueError("`prompt_ids` must be a list of token-id lists (tokenize text prompts first).")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("Every prompt needs at least one token; drop empty prompts or add a BOS token.")


def cut_at_eos(token_ids: list[int], eos_token_ids: set[int], max_tokens: int) -> tuple[list[int], str]:
    """
    Keep a generated row up to and including its first EOS token and tell why it ended.

    Args:
        token_ids (`list[int]`):
            The generated tokens (possibly followed by padding).
        eos_token_ids (`set[int]`):
            Ids that end a completion.
        max_tokens (`int`):
            The generation budget.

    Returns:
        `tuple[list[int], str]`: The completion and its finish reason, `"length"` when it used the whole budget
        without an EOS token, else `"stop"`.
    """
    for position, token in enumerate(token_ids):
        if token in eos_token_ids:
            return list(token_ids[: position + 1]), FINISH_STOP
    reason = FINISH_LENGTH if len(token_ids) >= max_tokens else FINISH_STOP
    return list(token_ids), reason


def sanitize_logprob(value: float | None) -> float | None:
    """
    A log-prob fit for JSON: `None` for NaN, infinite or missing values.

    Args:
        value (`float` or `None`):
            The log-prob.
    """
    if value is None or not math.isfinite(value):
        return None
    return float(value)


# --------------------------------------------------------------------------------------------------------------
# Weight export shared by the vLLM backends
# --------------------------------------------------------------------------------------------------------------

_PEFT_PREFIX = "base_model.model."
_PEFT_SKIPPED = ("lora_", "original_module", "lora_magnitude_vector")


def inference_param_name(name: str, is_peft: bool = False) -> str | None:
    """
    The name an inference engine knows a training parameter by, or `None` for parameters it does not have.

    Strips the wrappers that training adds: PEFT's `base_model.model.` prefix, `.base_layer` and
    `modules_to_save.default.`, FSDP's `_fsdp_wrapped_module.` and activation checkpointing's
    `_checkpoint_wrapped_module.`, torch.compile's `_orig_mod.`. LoRA tensors and PEFT's `original_module`
    copies have no counterpart once the adapter is merged, so they map to `None`.

    Args:
        name (`str`):
            The parameter name in the training model.
        is_peft (`bool`, *optional*, defaults to `False`):
            Whether the model is a PEFT model (LoRA tensors are then skipped).
    """
    for wrapper in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod."):
        name = name.replace(wrapper, "")
    if is_peft:
        if any(marker in name for marker in _PEFT_SKIPPED):
            return None
        name = name.removeprefix(_PEFT_PREFIX).replace(".base_layer", "").replace("modules_to_save.default.", "")
    return name


def iter_inference_weights(
    model: torch.nn.Module, accelerator: Accelerator | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """
    Yield `(name, tensor)` for every weight of the plain model behind a training model.

    PEFT adapters are merged for the duration of the iteration (and unmerged afterwards), so the tensors are the
    effective weights. Under DeepSpeed ZeRO-3 each parameter is gathered while it is yielded; under FSDP the full
    parameters are summoned. All processes must iterate (gathering is collective); only the consumer on the main
    process needs to use the tensors.

    Args:
        model (`torch.nn.Module`):
            The training model, possibly wrapped.
        accelerator (`accelerate.Accelerator` or `None`, *optional*, defaults to `None`):
            The trainer's accelerator, used to unwrap the model and to detect DeepSpeed / FSDP.
    """
    unwrapped = accelerator.unwrap_model(model) if accelerator is not None else model
    is_peft = hasattr(unwrapped, "merge_adapter") and hasattr(unwrapped, "peft_config")
    with _full_parameters(model, unwrapped, accelerator):
        if is_peft:
            unwrapped.merge_adapter()
        try:
            for name, param in unwrapped.named_parameters():
                target = inference_param_name(name, is_peft)
                if target is not None:
                    # FSDP2 shards parameters as DTensors; the engine needs the whole tensor.
                    tensor = param.data.full_tensor() if hasattr(param.data, "full_tensor") else param.data
                    yield target, tensor
        finally:
            if is_peft:
                unwrapped.unmerge_adapter()


@contextlib.contextmanager
def _full_parameters(model, unwrapped, accelerator):
    """Materialise sharded parameters (DeepSpeed ZeRO-3, FSDP1) for the duration of the context."""
    state = getattr(accelerator, "state", None)
    deepspeed_plugin = getattr(state, "deepspeed_plugin", None)
    if deepspeed_plugin is not None and deepspeed_plugin.zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(unwrapped.parameters())):
            yield
        return
    if getattr(state, "fsdp_plugin", None) is not None:
        from torch.distributed.fsdp import FullyShardedDataParallel

        if isinstance(model, FullyShardedDataParallel):
            with FullyShardedDataParallel.summon_full_params(model, recurse=True, writeback=False):
                yield
            return
    yield


# --------------------------------------------------------------------------------------------------------------
# Choosing the backend from a trainer config
# --------------------------------------------------------------------------------------------------------------


def build_generation_backend(
    args: Any,
    model: torch.nn.Module,
    accelerator: Accelerator | None = None,
    pad_token_id: int | None = None,
    eos_token_id: int | list[int] | None = None,
) -> GenerationBackend:
    """
    The backend a trainer config asks for: transformers unless `use_vllm`, then vLLM per `vllm_mode`.

    The one factory: every online trainer builds its backend here. Reads the config fields shared by the online
    trainers (`use_vllm`, `vllm_mode`, `ds3_gather_for_generation`, `vllm_server_base_url`, `vllm_server_host`,
    `vllm_server_port`, `vllm_server_timeout`, `vllm_group_port`, `vllm_tensor_parallel_size`,
    `vllm_gpu_memory_utilization`, `vllm_max_model_length`, `vllm_enable_sleep_mode`, `vllm_model_impl`,
    `vllm_structured_outputs_regex` / `vllm_guided_decoding_regex`, `trust_remote_code`, the `revision` of
    `model_init_kwargs`); a missing field takes its default.

    Args:
        args (`TrainingArguments`-like):
            The trainer config.
        model (`torch.nn.Module`):
            The policy (possibly wrapped); the colocated engine loads the checkpoint it was created from.
        accelerator (`accelerate.Accelerator` or `None`, *optional*, defaults to `None`):
            The trainer's accelerator.
        pad_token_id (`int` or `None`, *optional*, defaults to `None`):
            Padding id for the transformers backend (usually the tokenizer's).
        eos_token_id (`int`, `list[int]` or `None`, *optional*, defaults to `None`):
            EOS id(s) for the transformers backend (usually the tokenizer's).

    Raises:
        ValueError: For a `vllm_mode` other than `"server"` or `"colocate"`.
    """
    if not getattr(args, "use_vllm", False):
        from .transformers_backend import TransformersBackend, unwrap_model_for_generation

        # Under DeepSpeed ZeRO-3, `ds3_gather_for_generation=False` generates from the sharded parameters (slower,
        # but fits models whose full weights do not fit on one device).
        gather = getattr(args, "ds3_gather_for_generation", True)
        unwrap = functools.partial(unwrap_model_for_generation, gather_deepspeed3_params=gather)
        return TransformersBackend(
            model, accelerator, pad_token_id=pad_token_id, eos_token_id=eos_token_id, unwrap_context=unwrap
        )
    mode = getattr(args, "vllm_mode", "colocate")
    regex = getattr(args, "vllm_structured_outputs_regex", None) or getattr(args, "vllm_guided_decoding_regex", None)
    if mode == "server":
        from .server_backend import VLLMServerBackend

        return VLLMServerBackend(
            accelerator,
            base_url=getattr(args, "vllm_server_base_url", None),
            host=getattr(args, "vllm_server_host", "0.0.0.0"),
            server_port=getattr(args, "vllm_server_port", 8000),
            group_port=getattr(args, "vllm_group_port", 51216),
            server_timeout=getattr(args, "vllm_server_timeout", 240.0),
            guided_decoding_regex=regex,
        )
    if mode == "colocate":
        from .vllm_generation import VLLMGeneration

        unwrapped = accelerator.unwrap_model(model) if accelerator is not None else model
        base = unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped
        return VLLMGeneration(
            base.config._name_or_path,
            accelerator,
            tensor_parallel_size=getattr(args, "vllm_tensor_parallel_size", 1),
            gpu_memory_utilization=getattr(args, "vllm_gpu_memory_utilization", 0.3),
            max_model_len=getattr(args, "vllm_max_model_length", None),
            enable_sleep_mode=getattr(args, "vllm_enable_sleep_mode", False),
            model_impl=getattr(args, "vllm_model_impl", "vllm"),
            revision=(getattr(args, "model_init_kwargs", None) or {}).get("revision"),
            guided_decoding_regex=regex,
            trust_remote_code=getattr(args, "trust_remote_code", False),
        )
    raise ValueError(f"`vllm_mode` must be 'server' or 'colocate', got {mode!r}.")
