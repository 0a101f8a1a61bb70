"""
vLLM colocated with training: every training process owns a vLLM engine on its own GPU (GPU only).

Processes form tensor-parallel groups of `tensor_parallel_size` consecutive ranks; a group's prompts are gathered,
generated once by its engine (`distributed_executor_backend="external_launcher"`) and sliced back. Weights are
loaded straight into the engine's model after each optimizer step. With sleep mode, the engine frees its weights
and KV cache between generations (`sleep(level=2)`) and wakes up the weights for the sync and the KV cache for
generating, which keeps GPU memory for the optimizer step.

vLLM is imported only when [`VLLMGeneration`] is built; nothing here runs without `pip install trl[vllm]` and CUDA.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

from ..import_utils import is_vllm_available
from .base import GenerationBackend, GenerationResult, SamplingParams, check_prompts, iter_inference_weights


if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator


VLLM_MISSING = "vLLM is not installed. Please install it with `pip install trl[vllm]`."


class VLLMGeneration(GenerationBackend):
    """
    Colocated vLLM engine (one per training process, or per tensor-parallel group).

    Args:
        model (`str`):
            Model id or path to load the engine from (the trainer's starting weights).
        accelerator (`accelerate.Accelerator` or `None`, *optional*, defaults to `None`):
            The trainer's accelerator (ranks, devices, unwrapping for weight sync).
        tensor_parallel_size (`int`, *optional*, defaults to `1`):
            GPUs per engine; must divide the number of processes.
        gpu_memory_utilization (`float`, *optional*, defaults to `0.3`):
            Share of each GPU's memory vLLM may take (weights + KV cache).
        max_model_len (`int` or `None`, *optional*, defaults to `None`):
            Longest prompt + completion; `None` uses the model's maximum.
        max_num_seqs (`int` or `None`, *optional*, defaults to `None`):
            Most sequences scheduled together.
        enable_sleep_mode (`bool`, *optional*, defaults to `False`):
            Free the engine's GPU memory between generations.
        model_impl (`str`, *optional*, defaults to `"vllm"`):
            `"vllm"` or `"transformers"` model implementation.
        dtype (`str`, *optional*, defaults to `"auto"`):
            Engine dtype.
        revision (`str` or `None`, *optional*, defaults to `None`):
            Model revision.
        guided_decoding_regex (`str` or `None`, *optional*, defaults to `None`):
            Constrain completions to this regular expression.
        enable_prefix_caching (`bool`, *optional*, defaults to `True`):
            Reuse the KV cache of shared prompt prefixes (the `n` completions of a prompt share it).
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Allow custom model code.

    Raises:
        ImportError: When vLLM is not installed.
        ValueError: Without CUDA, or when `tensor_parallel_size` does not divide the number of processes.
    """

    def __init__(
        self,
        model: str,
        accelerator: Accelerator | None = None,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.3,
        max_model_len: int | None = None,
        max_num_seqs: int | None = None,
        enable_sleep_mode: bool = False,
        model_impl: str = "vllm",
        dtype: str = "auto",
        revision: str | None = None,
        guided_decoding_regex: str | None = None,
        enable_prefix_caching: bool = True,
        trust_remote_code: bool = False,
    ):
        if not is_vllm_available():
            raise ImportError(VLLM_MISSING)
        import torch

        if not torch.cuda.is_available():
            raise ValueError(
                "vLLM colocate mode needs CUDA GPUs. On CPU, leave `use_vllm=False` (transformers generation) or run "
                "a server with `trl vllm-serve --backend transformers` and use `vllm_mode='server'`."
            )
        self.accelerator = accelerator
        world_size = accelerator.num_processes if accelerator is not None else 1
        rank = accelerator.process_index if accelerator is not None else 0
        if world_size % tensor_parallel_size != 0:
            raise ValueError(
                f"`vllm_tensor_parallel_size` ({tensor_parallel_size}) must divide the number of processes "
                f"({world_size}); change one of them."
            )
        self.tensor_parallel_size = tensor_parallel_size
        self.guided_decoding_regex = guided_decoding_regex
        self.enable_sleep_mode = enable_sleep_mode
        self.tp_group = _tensor_parallel_group(tensor_parallel_size, world_size, rank)
        _set_launcher_environment(accelerator)

        from vllm import LLM

        self.llm = LLM(
            model=model,
            revision=revision,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            distributed_executor_backend="external_launcher",
            # Engines of one TP group must sample identically; different groups must not.
            seed=rank // tensor_parallel_size,
            enable_sleep_mode=enable_sleep_mode,
            enable_prefix_caching=enable_prefix_caching,
            model_impl=model_impl,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
        )
        # The engine starts from the checkpoint's weights, which equal the trainer's until the first step.
        self._weights_loaded = True
        if enable_sleep_mode:
            self.llm.sleep(level=2)
            self._weights_loaded = False

    def generate(
        self, prompt_ids: list[list[int]], sampling: SamplingParams, images: list | None = None
    ) -> GenerationResult:
        """
        Generate `sampling.n` completions per prompt.

        Args:
            prompt_ids (`list[list[int]]`):
                Token ids of each prompt; a prompt with images holds one image placeholder per image (the
                tokenizer's rendering of the chat template: vLLM expands the placeholders itself).
            sampling ([`~trl.generation.base.SamplingParams`]):
                How to sample.
            images (`list[list[PIL.Image.Image] | None]` or `None`, *optional*, defaults to `None`):
                The images of each prompt (see [`vllm_prompts`]).
        """
        check_prompts(prompt_ids)
        if not self._weights_loaded:
            raise RuntimeError("The sleeping vLLM engine dropped its weights: call `sync_weights(model)` first.")
        check_images(images, len(prompt_ids))
        group_prompts, offset = self._gather_group(vllm_prompts(prompt_ids, images))
        if self.enable_sleep_mode:
            self.llm.wake_up(tags=["kv_cache"])
        outputs = self.llm.generate(group_prompts, self._vllm_sampling(sampling), use_tqdm=False)
        if self.enable_sleep_mode:
            self.llm.sleep(level=2)
            self._weights_loaded = False
        completions, reasons, logprobs = [], [], []
        for output in outputs:
            for sample in output.outputs:
                completions.append(list(sample.token_ids))
                reasons.append("length" if sample.finish_reason == "length" else "stop")
                logprobs.append(sampled_token_logprobs(sample) if sampling.return_logprobs else None)
        start, end = offset * sampling.n, (offset + len(prompt_ids)) * sampling.n
        return GenerationResult(
            completion_ids=completions[start:end],
            finish_reasons=reasons[start:end],
            logprobs=logprobs[start:end] if sampling.return_logprobs else None,
            prompt_ids=[list(p) for p in prompt_ids],
        )

    def _vllm_sampling(self, sampling: SamplingParams):
        from vllm import SamplingParams as VLLMSamplingParams

        kwargs = vllm_sampling_kwargs(sampling)
        if self.guided_decoding_regex is not None:
            kwargs.update(guided_decoding_kwargs(self.guided_decoding_regex))
        return VLLMSamplingParams(**kwargs)

    def _gather_group(self, prompts: list[dict]) -> tuple[list[dict], int]:
        """All vLLM prompts of this process's TP group, and where this process's prompts start among them."""
        if self.tp_group is None:
            return prompts, 0
        import torch.distributed as dist

        gathered: list = [None] * self.tensor_parallel_size
        dist.all_gather_object(gathered, prompts, group=self.tp_group)
        local_rank = dist.get_rank(group=self.tp_group)
        return [p for part in gathered for p in part], sum(len(part) for part in gathered[:local_rank])

    def sync_weights(self, model: torch.nn.Module) -> None:
        """
        Load the current weights of `model` into the engine, then reset its prefix cache.

        Args:
            model (`torch.nn.Module`):
                The training model (PEFT adapters are merged for the copy; ZeRO-3 / FSDP shards are gathered).
        """
        import torch

        if self.enable_sleep_mode:
            torch.cuda.empty_cache()
            self.llm.wake_up(tags=["weights"])
        engine_model = _engine_model(self.llm)
        for name, tensor in iter_inference_weights(model, self.accelerator):
            engine_model.load_weights([(name, tensor)])
        self.llm.reset_prefix_cache()
        self._weights_loaded = True

    def close(self) -> None:
        import torch

        self.llm = None
        torch.cuda.empty_cache()


def check_images(images: list | None, num_prompts: int) -> None:
    """
    Raise a `ValueError` unless `images` is `None` or holds one entry (`None`, or a list of images) per prompt.

    Args:
        images (`list` or `None`):
            The images given to a backend.
        num_prompts (`int`):
            The number of prompts.
    """
    if images is None:
        return
    if not isinstance(images, list | tuple) or len(images) != num_prompts:
        raise ValueError(f"`images` needs one entry per prompt ({num_prompts}): a list of images, or None.")
    if any(entry is not None and not isinstance(entry, list | tuple) for entry in images):
        raise ValueError("Each entry of `images` must be a list of PIL images (or None for a prompt without any).")


def vllm_prompts(prompt_ids: list[list[int]], images: list | None = None) -> list[dict]:
    """
    The prompts of a `vllm.LLM.generate` call: `{"prompt_token_ids": ids}`, with `"multi_modal_data": {"image":
    [...]}` for a prompt that has images.

    vLLM's multimodal processor expands each image placeholder itself, so the prompts must hold one placeholder per
    image (the chat template rendered by the tokenizer), not the processor's expanded ids.

    Args:
        prompt_ids (`list[list[int]]`):
            Token ids of each prompt.
        images (`list[list[PIL.Image.Image] | None]` or `None`, *optional*, defaults to `None`):
            The images of each prompt, in the order of its placeholders.
    """
    prompts = []
    for index, ids in enumerate(prompt_ids):
        prompt = {"prompt_token_ids": list(ids)}
        row_images = images[index] if images is not None else None
        if row_images:
            prompt["multi_modal_data"] = {"image": list(row_images)}
        prompts.append(prompt)
    return prompts


def vllm_sampling_kwargs(sampling: SamplingParams) -> dict:
    """
    The `vllm.SamplingParams` arguments for `sampling` (`generation_kwargs` last, so they override).

    Args:
        sampling ([`~trl.generation.base.SamplingParams`]):
            The sampling parameters.
    """
    kwargs = {
        "n": sampling.n,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
        "min_p": sampling.min_p,
        "repetition_penalty": sampling.repetition_penalty,
        "max_tokens": sampling.max_tokens,
        # 0: the log-prob of the sampled token only.
        "logprobs": 0 if sampling.return_logprobs else None,
    }
    kwargs.update(sampling.generation_kwargs)
    return kwargs


def guided_decoding_kwargs(regex: str) -> dict:
    """
    `vllm.SamplingParams` arguments that constrain completions to `regex`, for old and new vLLM versions.

    Args:
        regex (`str`):
            The regular expression.
    """
    try:
        from vllm.sampling_params import StructuredOutputsParams

        return {"structured_outputs": StructuredOutputsParams(regex=regex)}
    except ImportError:
        from vllm.sampling_params import GuidedDecodingParams

        return {"guided_decoding": GuidedDecodingParams(regex=regex)}


def sampled_token_logprobs(sample) -> list[float]:
    """The sampled token's log-prob at each position (`logprobs=0`), NaN where vLLM gave none."""
    values = []
    for token, position in zip(sample.token_ids, sample.logprobs or [None] * len(sample.token_ids)):
        entry = position.get(token) if position else None
        values.append(entry.logprob if entry is not None and math.isfinite(entry.logprob) else math.nan)
    return values


def _engine_model(llm):
    """The model object inside a vLLM engine, across the vLLM versions that keep it in-process."""
    executor = llm.llm_engine.model_executor
    worker = executor.driver_worker
    worker = getattr(worker, "worker", worker)
    return worker.model_runner.model


def _tensor_parallel_group(tensor_parallel_size: int, world_size: int, rank: int):
    if tensor_parallel_size == 1:
        return None
    import torch.distributed as dist

    groups = [list(range(start, start + tensor_parallel_size)) for start in range(0, world_size, tensor_parallel_size)]
    group, _ = dist.new_subgroups_by_enumeration(groups)
    return group


def _set_launcher_environment(accelerator: Accelerator | None) -> None:
    """The variables `external_launcher` reads; accelerate sets most of them, single-process runs need defaults."""
    os.environ.setdefault("MASTER_ADDR", "localhost")
    if os.environ.get("MASTER_PORT", "auto") == "auto":
        os.environ["MASTER_PORT"] = "12345"
    if accelerator is not None:
        os.environ.setdefault("RANK", str(accelerator.process_index))
        os.environ.setdefault("LOCAL_RANK", str(accelerator.local_process_index))
        os.environ.setdefault("WORLD_SIZE", str(accelerator.num_processes))
    else:
        for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
            os.environ.setdefault(name, value)
