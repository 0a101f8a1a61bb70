"""
The trainer side of server mode: generation and weight sync through a `trl vllm-serve` server.

Only the main process talks to the server. Every process hands its prompts (and, for a vision-language model, their
images: `generate(prompt_ids, sampling, images=...)`, one list per prompt, each prompt holding one image
placeholder per image) to [`VLLMServerBackend.generate`]; they are gathered, sent in one request, and each process
gets back the completions of its own prompts. Weight sync
is collective too (DeepSpeed ZeRO-3 gathers parameters on every rank), so every process calls
[`VLLMServerBackend.sync_weights`].
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .base import GenerationBackend, GenerationResult, SamplingParams, check_prompts, iter_inference_weights
from .vllm_client import VLLMClient
from .vllm_generation import check_images


if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator


class VLLMServerBackend(GenerationBackend):
    """
    Generate with a remote `trl vllm-serve` server (vLLM on GPUs, or `--backend transformers`).

    Args:
        accelerator (`accelerate.Accelerator` or `None`, *optional*, defaults to `None`):
            The trainer's accelerator; `None` for a single process.
        server_timeout (`float`, *optional*, defaults to `240.0`):
            Seconds to wait for the server to come up (the client's `connection_timeout`).
        guided_decoding_regex (`str` or `None`, *optional*, defaults to `None`):
            Constrain completions to this regular expression (vLLM server only).
        client ([`VLLMClient`] or `None`, *optional*, defaults to `None`):
            An existing client to use instead of creating one.
        **client_kwargs:
            Where and how to reach the server, as [`VLLMClient`] takes them: `base_url` (takes priority over `host`
            and `server_port`), `host`, `server_port`, `group_port` (NCCL, vLLM server) and `request_timeout`
            (seconds one generation or weight-update request may take).
    """

    def __init__(
        self,
        accelerator: Accelerator | None = None,
        server_timeout: float = 240.0,
        guided_decoding_regex: str | None = None,
        client: VLLMClient | None = None,
        **client_kwargs: Any,
    ):
        self.accelerator = accelerator
        self.guided_decoding_regex = guided_decoding_regex
        self.client = None
        if self._is_main:
            self.client = client or VLLMClient(connection_timeout=server_timeout, **client_kwargs)
            self.client.init_communicator(device=accelerator.device if accelerator is not None else 0)
        self.provides_logprobs = True

    @property
    def _is_main(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    @property
    def _distributed(self) -> bool:
        return self.accelerator is not None and self.accelerator.num_processes > 1

    def generate(
        self, prompt_ids: list[list[int]], sampling: SamplingParams, images: list | None = None
    ) -> GenerationResult:
        """
        Generate `sampling.n` completions per prompt on the server.

        Args:
            prompt_ids (`list[list[int]]`):
                Token ids of each prompt; a prompt with images holds one image placeholder per image (the chat
                template rendered by the tokenizer, not the processor's expanded ids: the server expands them).
            sampling ([`~trl.generation.base.SamplingParams`]):
                How to sample.
            images (`list[list[PIL.Image.Image] | None]` or `None`, *optional*, defaults to `None`):
                The images of each prompt, in the order of its placeholders (a vision-language model served).
        """
        check_prompts(prompt_ids)
        check_images(images, len(prompt_ids))
        all_prompts, counts = self._gather_prompts(prompt_ids)
        all_images = self._gather_images(images, len(prompt_ids))
        answer = self._request(all_prompts, sampling, all_images) if self._is_main else None
        if self._distributed:
            from accelerate.utils import broadcast_object_list

            answer = broadcast_object_list([answer], from_process=0)[0]
        rank = self.accelerator.process_index if self._distributed else 0
        start = sum(counts[:rank]) * sampling.n
        end = start + len(prompt_ids) * sampling.n
        logprobs = answer["logprobs"]
        if sampling.return_logprobs and logprobs is not None:
            logprobs = [[math.nan if v is None else v for v in row] for row in logprobs[start:end]]
        else:
            logprobs = None
        return GenerationResult(
            completion_ids=answer["completion_ids"][start:end],
            finish_reasons=answer["finish_reasons"][start:end],
            logprobs=logprobs,
            prompt_ids=[list(p) for p in prompt_ids],
        )

    def _gather_prompts(self, prompt_ids: list[list[int]]) -> tuple[list[list[int]], list[int]]:
        if not self._distributed:
            return [list(p) for p in prompt_ids], [len(prompt_ids)]
        from accelerate.utils import gather_object

        counts = gather_object([len(prompt_ids)])
        return gather_object([list(p) for p in prompt_ids]), counts

    def _gather_images(self, images: list | None, num_prompts: int) -> list | None:
        """Every process's images, aligned with the gathered prompts (`None` when no process has any)."""
        rows = list(images) if images is not None else [None] * num_prompts
        if self._distributed:
            from accelerate.utils import gather_object

            rows = gather_object(rows)
        return rows if any(rows) else None

    def _request(self, prompts: list[list[int]], sampling: SamplingParams, images: list | None = None) -> dict:
        return self.client.generate(
            prompts=prompts,
            images=images,
            n=sampling.n,
            repetition_penalty=sampling.repetition_penalty,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            min_p=sampling.min_p,
            max_tokens=sampling.max_tokens,
            guided_decoding_regex=self.guided_decoding_regex,
            generation_kwargs=sampling.generation_kwargs,
            logprobs=0 if sampling.return_logprobs else None,
        )

    def sync_weights(self, model: torch.nn.Module) -> None:
        """
        Push the current weights of `model` to the server, then reset its prefix cache.

        Args:
            model (`torch.nn.Module`):
                The training model (PEFT adapters are merged for the push; ZeRO-3 / FSDP shards are gathered).
        """
        weights = iter_inference_weights(model, self.accelerator)
        if not self._is_main:
            for _ in weights:  # the other ranks still take part in the collective gathers
                pass
            return
        with self.client.weight_update():
            for name, tensor in weights:
                self.client.update_named_param(name, tensor)
        self.client.reset_prefix_cache()

    def close(self) -> None:
        if self.client is not None:
            self.client.close_communicator()
