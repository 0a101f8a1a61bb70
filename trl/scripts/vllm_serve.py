# /// script
# dependencies = [
#     "trl[vllm]",
# ]
# ///
"""
`trl vllm-serve`: a generation server that online trainers (GRPO, RLOO, Online DPO, ...) sample from and push
their updated weights to.

```bash
# vLLM on GPUs 0-3 (2-way tensor parallel x 2 data-parallel workers), the trainer on the other GPUs
CUDA_VISIBLE_DEVICES=0,1,2,3 trl vllm-serve --model Qwen/Qwen2.5-7B --tensor-parallel-size 2 --data-parallel-size 2

# transformers on CPU (no vLLM needed): the same endpoints, weights pushed over HTTP
trl vllm-serve --model Qwen/Qwen2.5-0.5B --backend transformers --host 127.0.0.1 --port 8000
```

Endpoints (JSON in, JSON out; a trailing `/` is optional):

| endpoint | request | answer |
|---|---|---|
| GET `/health/` | | `{"status": "ok"}` |
| GET `/get_world_size/` | | `{"world_size": tp * dp}` |
| GET `/get_server_info/` | | `backend`, `model`, `world_size`, `weight_transport` (`"nccl"`/`"http"`) |
| POST `/generate/` | `prompts` (texts or token ids), `images`, `n`, `repetition_penalty`, `temperature`, `top_p`, `top_k`, `min_p`, `max_tokens`, `truncate_prompt_tokens`, `guided_decoding_regex`, `generation_kwargs`, `logprobs` (0 or null) | `prompt_ids`, `completion_ids`, `logprobs`, `finish_reasons` |
| POST `/chat/` | `messages` (conversations), the sampling fields, `chat_template_kwargs`, `tools`, `chat_template` | as `/generate/` |
| POST `/get_sequence_logprobs/` | `sequences`, `prompt_lengths`, `top_logprobs`, `temperature` | `logprobs`, `logprob_token_ids`, `actual_logprobs`, `actual_token_ids` |
| POST `/init_communicator/` | `host`, `port`, `world_size`, `client_device_uuid` | NCCL group with the client as last rank (vLLM) |
| POST `/update_named_param/` | `name`, `dtype`, `shape` (+ `data`, base64 bytes, on the HTTP transport) | the workers load the tensor |
| POST `/update_named_params/` | `params`: a list of the above with `data` (HTTP transport) | |
| POST `/reset_prefix_cache/`, `/close_communicator/` | | |
| GET `/v1/models`, POST `/v1/completions`, `/v1/chat/completions` | OpenAI schema | OpenAI schema |

Completions are prompt-major: the `n` completions of prompt 0, then those of prompt 1, ...
"""

from __future__ import annotations

import base64
import io
import json
import logging
import multiprocessing
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from trl.generation.base import GenerationResult, SamplingParams, sanitize_logprob
from trl.generation.vllm_generation import vllm_sampling_kwargs
from trl.import_utils import is_vllm_available
from trl.scripts.utils import TrlParser


logger = logging.getLogger("trl.vllm_serve")

COMMAND = "vllm-serve"
DESCRIPTION = "Serve a model for online training: generation endpoints and weight updates (vLLM or transformers)."
VLLM_MISSING = "vLLM is not installed. Please install it with `pip install trl[vllm]`."


@dataclass
class ScriptArguments:
    """
    Arguments of `trl vllm-serve` (each accepted as `--name_with_underscores` or `--name-with-dashes`).

    Args:
        model (`str`):
            Model id or path.
        revision (`str` or `None`, *optional*, defaults to `None`):
            Model revision (branch, tag or commit).
        tensor_parallel_size (`int`, *optional*, defaults to `1`):
            GPUs per vLLM worker.
        data_parallel_size (`int`, *optional*, defaults to `1`):
            Number of vLLM workers; prompts are split between them.
        host (`str`, *optional*, defaults to `"0.0.0.0"`):
            Address to listen on.
        port (`int`, *optional*, defaults to `8000`):
            Port to listen on (`0` picks a free one, printed at start-up).
        gpu_memory_utilization (`float`, *optional*, defaults to `0.9`):
            Share of GPU memory vLLM may use.
        dtype (`str`, *optional*, defaults to `"auto"`):
            Weights dtype (`"auto"` keeps the checkpoint's).
        max_model_len (`int` or `None`, *optional*, defaults to `None`):
            Longest prompt + completion.
        enable_prefix_caching (`bool` or `None`, *optional*, defaults to `None`):
            vLLM prefix caching (vLLM's default when unset).
        enforce_eager (`bool` or `None`, *optional*, defaults to `False`):
            Disable CUDA graphs in vLLM.
        kv_cache_dtype (`str`, *optional*, defaults to `"auto"`):
            vLLM KV-cache dtype.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Allow custom model code.
        log_level (`str`, *optional*, defaults to `"info"`):
            `critical`, `error`, `warning`, `info`, `debug` or `trace`.
        vllm_model_impl (`str`, *optional*, defaults to `"vllm"`):
            vLLM model implementation: `"vllm"` or `"transformers"`.
        backend (`str` or `None`, *optional*, defaults to `None`):
            `"vllm"` (GPU) or `"transformers"` (CPU or GPU, weights over HTTP). Unset: `"vllm"` when installed.
        device (`str` or `None`, *optional*, defaults to `None`):
            Device of the transformers backend's model (`"cpu"`, `"cuda:1"`, ...); unset: the first GPU if any,
            else the CPU.
    """

    model: str = field(metadata={"help": "Model id or path."})
    revision: str | None = field(default=None, metadata={"help": "Model revision."})
    tensor_parallel_size: int = field(default=1, metadata={"help": "GPUs per vLLM worker."})
    data_parallel_size: int = field(default=1, metadata={"help": "Number of vLLM workers."})
    host: str = field(default="0.0.0.0", metadata={"help": "Address to listen on."})
    port: int = field(default=8000, metadata={"help": "Port to listen on (0: any free port)."})
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": "Share of GPU memory vLLM may use."})
    dtype: str = field(default="auto", metadata={"help": "Weights dtype."})
    max_model_len: int | None = field(default=None, metadata={"help": "Longest prompt + completion."})
    enable_prefix_caching: bool | None = field(default=None, metadata={"help": "vLLM prefix caching."})
    enforce_eager: bool | None = field(default=False, metadata={"help": "Disable CUDA graphs in vLLM."})
    kv_cache_dtype: str = field(default="auto", metadata={"help": "vLLM KV-cache dtype."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code."})
    log_level: str = field(default="info", metadata={"help": "critical, error, warning, info, debug or trace."})
    vllm_model_impl: str = field(default="vllm", metadata={"help": "vLLM model implementation: vllm or transformers."})
    backend: str | None = field(
        default=None,
        metadata={"help": "vllm or transformers (unset: vllm when installed).", "choices": ["vllm", "transformers"]},
    )
    device: str | None = field(
        default=None, metadata={"help": "Device of the transformers backend (unset: cuda if available, else cpu)."}
    )


def resolve_backend(backend: str | None) -> str:
    """
    The backend to serve with: the one asked for, else vLLM when installed.

    Args:
        backend (`str` or `None`):
            `"vllm"`, `"transformers"` or `None`.

    Raises:
        ImportError: When vLLM is needed but missing.
    """
    if backend == "transformers":
        return backend
    if not is_vllm_available():
        hint = "" if backend == "vllm" else " Or serve with transformers (CPU works): `--backend transformers`."
        raise ImportError(VLLM_MISSING + hint)
    return "vllm"


def chunk_list(items: list, n: int) -> list[list]:
    """
    Split `items` into `n` consecutive chunks whose sizes differ by at most one (the first ones are longer).

    Args:
        items (`list`):
            What to split.
        n (`int`):
            Number of chunks (some are empty when `n > len(items)`).

    Example:

    ```python
    >>> chunk_list([1, 2, 3, 4, 5, 6], 4)
    [[1, 2], [3, 4], [5], [6]]
    ```
    """
    size, extra = divmod(len(items), n)
    chunks, start = [], 0
    for index in range(n):
        end = start + size + (1 if index < extra else 0)
        chunks.append(items[start:end])
        start = end
    return chunks


class RequestError(ValueError):
    """A request the server cannot serve as asked (answered with HTTP 400 and this message)."""


class EndpointNotFound(LookupError):
    """No endpoint at this method and path (answered with HTTP 404)."""


# ======================================================================================================= engines


class TransformersEngine:
    """
    Serves a transformers model (CPU, or one GPU when available); weights arrive in the HTTP body.

    Args:
        args ([`ScriptArguments`]):
            The server arguments.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            The model's tokenizer (for EOS and padding ids).
    """

    backend = "transformers"
    weight_transport = "http"
    world_size = 1

    def __init__(self, args: ScriptArguments, tokenizer):
        import torch
        from transformers import AutoModelForCausalLM

        from trl.generation.transformers_backend import TransformersBackend
        from trl.generation.vllm_client import parse_dtype

        if args.tensor_parallel_size != 1 or args.data_parallel_size != 1:
            raise ValueError(
                "`--backend transformers` serves one model copy: leave `--tensor_parallel_size` and "
                "`--data_parallel_size` at 1, or use `--backend vllm`."
            )
        _warn_vllm_only_arguments(args)
        dtype = "auto" if args.dtype == "auto" else parse_dtype(args.dtype)
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForCausalLM.from_pretrained(
            args.model, revision=args.revision, dtype=dtype, trust_remote_code=args.trust_remote_code
        ).to(device)
        self.model.eval()
        eos = _as_list(self.model.generation_config.eos_token_id) + _as_list(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
        self.generator = TransformersBackend(self.model, pad_token_id=pad, eos_token_id=sorted(set(eos)))
        self.max_model_len = args.max_model_len or getattr(self.model.config, "max_position_embeddings", None)

    def generate(self, prompt_ids, sampling, texts=None, images=None, regex=None) -> GenerationResult:
        if images is not None and any(image is not None for image in images):
            raise RequestError("Images need `--backend vllm`; the transformers backend serves text models.")
        if regex is not None:
            raise RequestError("`guided_decoding_regex` needs `--backend vllm`.")
        if self.max_model_len is not None and max(map(len, prompt_ids)) + sampling.max_tokens > self.max_model_len:
            raise RequestError(
                f"Prompt + `max_tokens` exceeds the model length ({self.max_model_len}); lower `max_tokens` or "
                "`truncate_prompt_tokens`."
            )
        try:
            return self.generator.generate(prompt_ids, sampling)
        except ValueError as error:  # bad generation_kwargs and the like
            raise RequestError(str(error)) from error

    def sequence_logprobs(self, sequences, prompt_lengths, top_logprobs, temperature) -> dict[str, list]:
        import torch

        device = next(self.model.parameters()).device
        # Right padding keeps every sequence at positions 0..len-1 (a plain forward does not shift position ids
        # for left padding).
        longest = max(len(sequence) for sequence in sequences)
        input_ids = torch.full((len(sequences), longest), self.generator.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, sequence in enumerate(sequences):
            input_ids[row, : len(sequence)] = torch.as_tensor(sequence)
            attention_mask[row, : len(sequence)] = 1
        with torch.no_grad():
            logits = self.model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
        top = min(top_logprobs, logits.shape[-1])
        answer = {"logprobs": [], "logprob_token_ids": [], "actual_logprobs": [], "actual_token_ids": []}
        for row, (sequence, prompt_length) in enumerate(zip(sequences, prompt_lengths)):
            # Logits at position p - 1 predict the token at position p.
            logps = torch.log_softmax(logits[row, prompt_length - 1 : len(sequence) - 1].float() / temperature, -1)
            values, ids = logps.topk(top, dim=-1)
            actual_ids = torch.as_tensor(sequence[prompt_length:], device=logps.device, dtype=torch.long)
            actual = logps.gather(-1, actual_ids[:, None])
            pad = top_logprobs - top
            answer["logprobs"].append([[sanitize_logprob(v) for v in pos] + [None] * pad for pos in values.tolist()])
            answer["logprob_token_ids"].append([pos + [0] * pad for pos in ids.tolist()])
            answer["actual_logprobs"].append([[sanitize_logprob(v[0])] for v in actual.tolist()])
            answer["actual_token_ids"].append([[token] for token in sequence[prompt_length:]])
        return answer

    def init_communicator(self, **_) -> None:
        """Nothing to set up: weights arrive in the request body."""

    def update_named_params(self, params: list[dict]) -> None:
        from trl.generation.vllm_client import decode_tensor

        updates = []
        for entry in params:  # check everything before changing anything
            if "data" not in entry:
                raise RequestError(
                    "This server uses `--backend transformers`: send the tensor bytes in `data` (VLLMClient does so "
                    "after `init_communicator()`)."
                )
            target = self._parameter(entry["name"])
            tensor = decode_tensor(entry)
            if tuple(tensor.shape) != tuple(target.shape):
                raise RequestError(f"{entry['name']}: shape {list(tensor.shape)} != served {list(target.shape)}.")
            updates.append((target, tensor))
        import torch

        with torch.no_grad():
            for target, tensor in updates:
                target.copy_(tensor.to(device=target.device, dtype=target.dtype))

    def _parameter(self, name: str):
        try:
            return self.model.get_parameter(name)
        except AttributeError:
            try:
                return self.model.get_buffer(name)
            except AttributeError:
                raise RequestError(f"The served model has no parameter named {name!r}.") from None

    def reset_prefix_cache(self) -> None:
        """No cache outlives a request."""

    def close_communicator(self) -> None:
        """Nothing to tear down."""

    def shutdown(self) -> None:
        """Nothing to stop."""


class VLLMEngine:
    """
    `data_parallel_size` worker processes, each holding a `vllm.LLM` over `tensor_parallel_size` GPUs, driven
    through pipes. Weights arrive by NCCL broadcast from the trainer ([`WeightSyncWorkerExtension`]).

    Args:
        args ([`ScriptArguments`]):
            The server arguments.
    """

    backend = "vllm"
    weight_transport = "nccl"

    def __init__(self, args: ScriptArguments):
        if not is_vllm_available():
            raise ImportError(VLLM_MISSING)
        self.world_size = args.tensor_parallel_size * args.data_parallel_size
        self.max_model_len = args.max_model_len
        master_port = _free_port()
        context = multiprocessing.get_context("spawn")
        self.connections, self.processes = [], []
        for rank in range(args.data_parallel_size):
            parent, child = context.Pipe()
            process = context.Process(target=_vllm_worker, args=(args, rank, master_port, child))
            process.start()
            self.connections.append(parent)
            self.processes.append(process)
        for connection in self.connections:
            message = connection.recv()
            if message.get("status") != "ready":
                raise RuntimeError(f"A vLLM worker failed to start: {message}")

    def _call(self, method: str, per_worker_args: list[tuple], fire_and_forget: bool = False) -> list:
        kind = "fire_and_forget" if fire_and_forget else "call"
        for connection, args in zip(self.connections, per_worker_args):
            connection.send({"type": kind, "method": method, "args": args})
        if fire_and_forget:
            return []
        results = [connection.recv() for connection in self.connections]
        for result in results:
            if isinstance(result, dict) and "worker_error" in result:
                raise RuntimeError(f"vLLM worker error: {result['worker_error']}")
        return results

    def _broadcast(self, method: str, *args, fire_and_forget: bool = False) -> list:
        return self._call(method, [args] * len(self.connections), fire_and_forget)

    def generate(self, prompt_ids, sampling, texts=None, images=None, regex=None) -> GenerationResult:
        prompts = []
        for index, ids in enumerate(prompt_ids):
            image = images[index] if images else None
            if image is not None:
                if texts is None:
                    raise RequestError("Prompts with images must be texts (with the model's image placeholder).")
                prompts.append({"prompt": texts[index], "image_b64": image})
            else:
                prompts.append({"prompt_token_ids": ids})
        kwargs = vllm_sampling_kwargs(sampling)
        chunks = chunk_list(prompts, len(self.connections))
        # A worker with nothing to do still joins the data-parallel step, on a placeholder it then drops.
        padded = [chunk or [{"prompt": "<placeholder>"}] for chunk in chunks]
        results = self._call("trl_generate", [(chunk, kwargs, regex) for chunk in padded])
        rows = [row for chunk, result in zip(chunks, results) if chunk for row in result]
        return GenerationResult(
            completion_ids=[c["ids"] for row in rows for c in row["completions"]],
            finish_reasons=[c["finish_reason"] for row in rows for c in row["completions"]],
            logprobs=[c["logprobs"] for row in rows for c in row["completions"]] if sampling.return_logprobs else None,
            prompt_ids=[row["prompt_ids"] for row in rows],
        )

    def sequence_logprobs(self, sequences, prompt_lengths, top_logprobs, temperature) -> dict[str, list]:
        items = list(zip(sequences, prompt_lengths))
        chunks = chunk_list(items, len(self.connections))
        padded = [chunk or [([0, 0], 1)] for chunk in chunks]
        results = self._call("trl_sequence_logprobs", [(chunk, top_logprobs, temperature) for chunk in padded])
        kept = [result for chunk, result in zip(chunks, results) if chunk]
        return {key: [row for result in kept for row in result[key]] for key in kept[0]} if kept else {}

    def init_communicator(self, host: str, port: int, world_size: int, client_device_uuid: str) -> None:
        args = (host, port, world_size, client_device_uuid)
        self._broadcast("collective_rpc", "init_communicator", args, fire_and_forget=True)

    def update_named_param(self, name: str, dtype: str, shape: list[int]) -> None:
        # The workers then block in the NCCL broadcast that the client starts once this request returns.
        self._broadcast("collective_rpc", "update_named_param", (name, dtype, tuple(shape)), fire_and_forget=True)

    def update_named_params(self, params: list[dict]) -> None:
        raise RequestError("A vLLM server receives weights by NCCL: call `/update_named_param/` once per tensor.")

    def reset_prefix_cache(self) -> None:
        self._broadcast("reset_prefix_cache")

    def close_communicator(self) -> None:
        self._broadcast("collective_rpc", "close_communicator", (), fire_and_forget=True)

    def shutdown(self) -> None:
        for connection in self.connections:
            connection.send({"type": "shutdown"})
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()


def _vllm_worker(args: ScriptArguments, dp_rank: int, master_port: int, connection) -> None:
    """One data-parallel worker: builds its `vllm.LLM`, then serves commands from the pipe until shutdown."""
    os.environ["VLLM_DP_RANK"] = str(dp_rank)
    os.environ["VLLM_DP_RANK_LOCAL"] = str(dp_rank)
    os.environ["VLLM_DP_SIZE"] = str(args.data_parallel_size)
    os.environ["VLLM_DP_MASTER_PORT"] = str(master_port)
    from vllm import LLM

    llm = LLM(
        model=args.model,
        revision=args.revision,
        tensor_parallel_size=args.tensor_parallel_size,
        gpu_memory_utilization=args.gpu_memory_utilization,
        enforce_eager=args.enforce_eager,
        dtype=args.dtype,
        enable_prefix_caching=args.enable_prefix_caching,
        kv_cache_dtype=args.kv_cache_dtype,
        max_model_len=args.max_model_len,
        worker_extension_cls="trl.scripts.vllm_serve.WeightSyncWorkerExtension",
        trust_remote_code=args.trust_remote_code,
        model_impl=args.vllm_model_impl,
    )
    connection.send({"status": "ready"})
    handlers = {"trl_generate": _worker_generate, "trl_sequence_logprobs": _worker_sequence_logprobs}
    while True:
        try:
            command = connection.recv()
        except (EOFError, KeyboardInterrupt):
            break
        if command["type"] == "shutdown":
            break
        method, args = command["method"], command["args"]
        try:
            if method in handlers:
                result = handlers[method](llm, *args)
            elif method == "collective_rpc":  # args: (extension method, its arguments)
                result = llm.collective_rpc(args[0], args=tuple(args[1]))
            else:
                result = getattr(llm, method)(*args)
        except Exception as error:  # reported to the HTTP process, which answers 500
            logger.exception("vLLM worker %d failed on %s", dp_rank, command["method"])
            result = {"worker_error": f"{type(error).__name__}: {error}"}
        if command["type"] == "call":
            connection.send(result)


def _worker_generate(llm, prompts: list[dict], sampling_kwargs: dict, regex: str | None) -> list[dict]:
    from vllm import SamplingParams as VLLMSamplingParams

    from trl.generation.vllm_generation import guided_decoding_kwargs, sampled_token_logprobs

    kwargs = dict(sampling_kwargs)
    if regex is not None:
        kwargs.update(guided_decoding_kwargs(regex))
    inputs = []
    for prompt in prompts:
        if "image_b64" in prompt:
            inputs.append(
                {"prompt": prompt["prompt"], "multi_modal_data": {"image": _decode_image(prompt["image_b64"])}}
            )
        else:
            inputs.append(prompt)
    outputs = llm.generate(inputs, VLLMSamplingParams(**kwargs), use_tqdm=False)
    with_logprobs = kwargs.get("logprobs") is not None
    return [
        {
            "prompt_ids": list(output.prompt_token_ids),
            "completions": [
                {
                    "ids": list(sample.token_ids),
                    "finish_reason": "length" if sample.finish_reason == "length" else "stop",
                    "logprobs": [sanitize_logprob(v) for v in sampled_token_logprobs(sample)]
                    if with_logprobs
                    else None,
                }
                for sample in output.outputs
            ],
        }
        for output in outputs
    ]


def _worker_sequence_logprobs(llm, items: list, top_logprobs: int, temperature: float) -> dict[str, list]:
    from vllm import SamplingParams as VLLMSamplingParams

    params = VLLMSamplingParams(max_tokens=1, temperature=temperature, prompt_logprobs=top_logprobs)
    outputs = llm.generate([{"prompt_token_ids": list(seq)} for seq, _ in items], params, use_tqdm=False)
    answer = {"logprobs": [], "logprob_token_ids": [], "actual_logprobs": [], "actual_token_ids": []}
    for output, (sequence, prompt_length) in zip(outputs, items):
        rows = {key: [] for key in answer}
        for position in range(prompt_length, len(sequence)):
            entries = output.prompt_logprobs[position] or {}
            ranked = sorted(entries.items(), key=lambda item: item[1].rank)[:top_logprobs]
            pad = top_logprobs - len(ranked)
            rows["logprobs"].append([sanitize_logprob(lp.logprob) for _, lp in ranked] + [None] * pad)
            rows["logprob_token_ids"].append([int(token) for token, _ in ranked] + [0] * pad)
            actual = entries.get(sequence[position])
            rows["actual_logprobs"].append([sanitize_logprob(actual.logprob) if actual is not None else None])
            rows["actual_token_ids"].append([sequence[position]])
        for key in answer:
            answer[key].append(rows[key])
    return answer


def _decode_image(data: str):
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


class WeightSyncWorkerExtension:
    """
    Mixed into each vLLM worker (`worker_extension_cls`): joins the trainer's NCCL group and loads the tensors
    the trainer broadcasts. Runs inside vLLM's worker processes, where `self.device` and `self.model_runner` exist.
    """

    communicator = None
    client_rank = None

    def init_communicator(self, host: str, port: int, world_size: int, client_device_uuid: str) -> None:
        import torch
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.parallel_state import get_world_group
        from vllm.distributed.utils import StatelessProcessGroup

        if self.communicator is not None:
            raise RuntimeError("The weight-update group already exists; call `close_communicator` first.")
        if client_device_uuid == str(torch.cuda.get_device_properties(self.device).uuid):
            raise RuntimeError(
                "The trainer and this vLLM worker share a GPU, which NCCL cannot do: run `trl vllm-serve` on GPUs "
                "the trainer does not use (CUDA_VISIBLE_DEVICES)."
            )
        rank = get_world_group().rank
        group = StatelessProcessGroup.create(host=host, port=port, rank=rank, world_size=world_size)
        self.communicator = PyNcclCommunicator(group, device=self.device)
        self.client_rank = world_size - 1

    def update_named_param(self, name: str, dtype: str, shape: tuple[int, ...]) -> None:
        import torch

        from trl.generation.vllm_client import parse_dtype

        if self.communicator is None:
            raise RuntimeError("Call `init_communicator` before updating weights.")
        weight = torch.empty(shape, dtype=parse_dtype(dtype), device=self.device)
        self.communicator.broadcast(weight, src=self.client_rank)
        self.communicator.group.barrier()
        self.model_runner.model.load_weights(weights=[(name, weight)])

    def close_communicator(self) -> None:
        if self.communicator is not None:
            del self.communicator
            self.communicator = None
            self.client_rank = None


# ================================================================================================ request handling

_SAMPLING_DEFAULTS = {
    "n": 1,
    "repetition_penalty": 1.0,
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": -1,
    "min_p": 0.0,
    "max_tokens": 16,
}
_GENERATE_KEYS = {
    *_SAMPLING_DEFAULTS,
    "prompts",
    "images",
    "truncate_prompt_tokens",
    "guided_decoding_regex",
    "generation_kwargs",
    "logprobs",
}
_CHAT_KEYS = (_GENERATE_KEYS - {"prompts", "images", "truncate_prompt_tokens"}) | {
    "messages",
    "chat_template_kwargs",
    "tools",
    "chat_template",
}
# OpenAI fields accepted when they hold their neutral value (anything else is refused, never ignored).
_OPENAI_NEUTRAL = {
    "stream": (None, False),
    "stop": (None, [], ""),
    "echo": (None, False),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "suffix": (None, ""),
    "response_format": (None, {"type": "text"}),
    "stream_options": (None,),
    "continue_final_message": (None, False),
}
_OPENAI_COMMON = {"model", "n", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed", "user"}
_OPENAI_COMMON |= {"return_token_ids", "return_tokens_as_token_ids", "max_tokens", "best_of", *_OPENAI_NEUTRAL}
_COMPLETIONS_KEYS = _OPENAI_COMMON | {"prompt", "logprobs"}
_CHAT_COMPLETIONS_KEYS = _OPENAI_COMMON | {"messages", "max_completion_tokens", "logprobs", "top_logprobs"}
_CHAT_COMPLETIONS_KEYS |= {"tools", "tool_choice", "chat_template", "chat_template_kwargs", "add_generation_prompt"}


def _check_keys(body: dict, allowed: set[str], endpoint: str) -> None:
    if not isinstance(body, dict):
        raise RequestError(f"{endpoint} expects a JSON object.")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise RequestError(f"{endpoint} does not take {unknown}; accepted fields: {sorted(allowed)}.")


def sampling_from_request(body: dict, return_logprobs: bool) -> SamplingParams:
    """
    The [`SamplingParams`] of a `/generate/` or `/chat/` request; `generation_kwargs` override the named fields.

    Args:
        body (`dict`):
            The request.
        return_logprobs (`bool`):
            Whether log-probs were asked for.
    """
    values = {key: body[key] if body.get(key) is not None else default for key, default in _SAMPLING_DEFAULTS.items()}
    extra = dict(body.get("generation_kwargs") or {})
    for key in list(extra):
        if key in _SAMPLING_DEFAULTS:
            values[key] = extra.pop(key)
    try:
        return SamplingParams(**values, generation_kwargs=extra, return_logprobs=return_logprobs)
    except (TypeError, ValueError) as error:
        raise RequestError(str(error)) from error


def _wants_logprobs(value: Any, field_name: str = "logprobs") -> bool:
    if value is None or value is False:
        return False
    if value is True or value == 0:
        return True
    raise RequestError(
        f"`{field_name}={value}`: this server returns only the sampled token's log-prob; ask for 0 (or leave unset)."
    )


class ServerApp:
    """
    The endpoints, independent of HTTP: `dispatch(method, path, body)` returns the JSON answer.

    Args:
        engine (`TransformersEngine` or `VLLMEngine`):
            What generates.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Tokenizes text prompts, renders chat templates, decodes OpenAI answers.
        model_name (`str`):
            The id reported by `/v1/models`.
    """

    def __init__(self, engine, tokenizer, model_name: str):
        self.engine = engine
        self.tokenizer = tokenizer
        self.model_name = model_name
        # One request at a time touches the engine and the tokenizer (neither is thread-safe); status endpoints
        # stay lock-free so health checks are answered while a long generation runs.
        self.lock = threading.RLock()
        locked = {
            ("POST", "/generate"): self.generate,
            ("POST", "/chat"): self.chat,
            ("POST", "/get_sequence_logprobs"): self.get_sequence_logprobs,
            ("POST", "/init_communicator"): self.init_communicator,
            ("POST", "/update_named_param"): self.update_named_param,
            ("POST", "/update_named_params"): self.update_named_params,
            ("POST", "/reset_prefix_cache"): lambda body: self.engine.reset_prefix_cache(),
            ("POST", "/close_communicator"): lambda body: self.engine.close_communicator(),
            ("POST", "/v1/completions"): self.v1_completions,
            ("POST", "/v1/chat/completions"): self.v1_chat_completions,
        }
        self.routes: dict[tuple[str, str], Callable[[dict], Any]] = {
            ("GET", "/health"): lambda body: {"status": "ok"},
            ("GET", "/get_world_size"): lambda body: {"world_size": self.engine.world_size},
            ("GET", "/get_server_info"): self.server_info,
            ("GET", "/v1/models"): self.v1_models,
            **{route: self._locked(handler) for route, handler in locked.items()},
        }

    def _locked(self, function: Callable[[dict], Any]) -> Callable[[dict], Any]:
        def run(body: dict) -> Any:
            with self.lock:
                result = function(body)
            return {"status": "ok"} if result is None else result

        return run

    def dispatch(self, method: str, path: str, body: dict) -> Any:
        """
        Answer one request.

        Raises:
            EndpointNotFound: For an unknown path (404); `RequestError` for a bad request (400).
        """
        route = self.routes.get((method, path.rstrip("/") or "/"))
        if route is None:
            known = sorted(f"{m} {p}/" for m, p in self.routes)
            raise EndpointNotFound(f"No endpoint {method} {path}; the server has: {', '.join(known)}.")
        return route(body)

    def server_info(self, body: dict) -> dict:
        return {
            "backend": self.engine.backend,
            "model": self.model_name,
            "world_size": self.engine.world_size,
            "weight_transport": self.engine.weight_transport,
            "max_model_len": self.engine.max_model_len,
        }

    # ------------------------------------------------------------------ generation

    def generate(self, body: dict) -> dict:
        _check_keys(body, _GENERATE_KEYS, "/generate/")
        prompts = body.get("prompts")
        if not isinstance(prompts, list):
            raise RequestError("`prompts` must be a list of strings or of token-id lists.")
        texts = prompts if prompts and all(isinstance(p, str) for p in prompts) else None
        prompt_ids = self._tokenize(prompts, body.get("truncate_prompt_tokens"))
        sampling = sampling_from_request(body, _wants_logprobs(body.get("logprobs", 0)))
        images = body.get("images")
        if images is not None and len(images) != len(prompts):
            raise RequestError("`images` needs one entry (or null) per prompt.")
        result = self._run(prompt_ids, sampling, texts, images, body.get("guided_decoding_regex"))
        return _generation_answer(result)

    def chat(self, body: dict) -> dict:
        _check_keys(body, _CHAT_KEYS, "/chat/")
        conversations = body.get("messages")
        if not isinstance(conversations, list) or not all(isinstance(c, list) for c in conversations):
            raise RequestError("`messages` must be a list of conversations (lists of messages).")
        prompt_ids = [
            self._render_chat(c, body.get("tools"), body.get("chat_template"), body.get("chat_template_kwargs"))
            for c in conversations
        ]
        sampling = sampling_from_request(body, _wants_logprobs(body.get("logprobs", 0)))
        return _generation_answer(self._run(prompt_ids, sampling, None, None, body.get("guided_decoding_regex")))

    def get_sequence_logprobs(self, body: dict) -> dict:
        _check_keys(body, {"sequences", "prompt_lengths", "top_logprobs", "temperature"}, "/get_sequence_logprobs/")
        sequences, prompt_lengths = body.get("sequences"), body.get("prompt_lengths")
        top_logprobs, temperature = int(body.get("top_logprobs", 100)), float(body.get("temperature", 1.0))
        if not isinstance(sequences, list) or not isinstance(prompt_lengths, list):
            raise RequestError("`sequences` and `prompt_lengths` must be lists.")
        if len(sequences) != len(prompt_lengths):
            raise RequestError("`prompt_lengths` needs one entry per sequence.")
        if any(not 1 <= length <= len(seq) for seq, length in zip(sequences, prompt_lengths)):
            raise RequestError("Each prompt length must be between 1 and its sequence's length.")
        if temperature <= 0 or top_logprobs < 1:
            raise RequestError("`temperature` must be > 0 and `top_logprobs` >= 1.")
        if not sequences:
            return {"logprobs": [], "logprob_token_ids": [], "actual_logprobs": [], "actual_token_ids": []}
        return self.engine.sequence_logprobs(sequences, prompt_lengths, top_logprobs, temperature)

    def _run(self, prompt_ids, sampling, texts, images, regex) -> GenerationResult:
        if not prompt_ids:
            return GenerationResult(completion_ids=[], finish_reasons=[], logprobs=[], prompt_ids=[])
        return self.engine.generate(prompt_ids, sampling, texts=texts, images=images, regex=regex)

    def _tokenize(self, prompts: list, truncate: int | None) -> list[list[int]]:
        if all(isinstance(p, str) for p in prompts):
            ids = [self.tokenizer(p)["input_ids"] for p in prompts]
        elif all(isinstance(p, list) and all(isinstance(t, int) for t in p) for p in prompts):
            ids = [list(p) for p in prompts]
        else:
            raise RequestError("`prompts` must be all strings or all token-id lists.")
        if any(len(p) == 0 for p in ids):
            raise RequestError("Empty prompt: every prompt needs at least one token.")
        if truncate is not None:
            ids = [p[-truncate:] for p in ids]
        return ids

    def _render_chat(self, conversation, tools=None, chat_template=None, template_kwargs=None) -> list[int]:
        for message in conversation:
            content = message.get("content")
            if isinstance(content, list) and any(part.get("type") != "text" for part in content):
                raise RequestError("Only text content parts are supported in chat messages by `trl vllm-serve`.")
        if chat_template is None and getattr(self.tokenizer, "chat_template", None) is None:
            raise RequestError("The served tokenizer has no chat template; pass `chat_template`.")
        text = self.tokenizer.apply_chat_template(
            conversation,
            tools=tools,
            chat_template=chat_template,
            add_generation_prompt=True,
            tokenize=False,
            **(template_kwargs or {}),
        )
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    # ------------------------------------------------------------------ weight sync

    def init_communicator(self, body: dict) -> dict:
        _check_keys(body, {"host", "port", "world_size", "client_device_uuid"}, "/init_communicator/")
        self.engine.init_communicator(
            host=body.get("host"),
            port=body.get("port"),
            world_size=body.get("world_size"),
            client_device_uuid=body.get("client_device_uuid"),
        )
        return {"status": "ok"}

    def update_named_param(self, body: dict) -> dict:
        _check_keys(body, {"name", "dtype", "shape", "data"}, "/update_named_param/")
        if self.engine.weight_transport == "http":
            self.engine.update_named_params([body])
        else:
            if "data" in body:
                raise RequestError("A vLLM server receives tensors by NCCL: send `name`, `dtype`, `shape` only.")
            self.engine.update_named_param(body["name"], body["dtype"], body["shape"])
        return {"status": "ok"}

    def update_named_params(self, body: dict) -> dict:
        _check_keys(body, {"params"}, "/update_named_params/")
        self.engine.update_named_params(body.get("params") or [])
        return {"status": "ok"}

    # ------------------------------------------------------------------ OpenAI-compatible

    def v1_models(self, body: dict) -> dict:
        created = int(time.time())
        model = {"id": self.model_name, "object": "model", "created": created, "owned_by": "trl"}
        return {"object": "list", "data": [{**model, "max_model_len": self.engine.max_model_len}]}

    def v1_completions(self, body: dict) -> dict:
        _check_keys(body, _COMPLETIONS_KEYS, "/v1/completions")
        self._check_openai(body)
        prompt = body.get("prompt")
        if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], int)):
            prompt = [prompt]
        if not isinstance(prompt, list) or not prompt:
            raise RequestError("`prompt` must be a string, a token-id list, or a non-empty list of either.")
        prompt_ids = self._tokenize(prompt, None)
        with_logprobs = _wants_logprobs(body.get("logprobs"))
        sampling = self._openai_sampling(body, body.get("max_tokens"), with_logprobs, prompt_ids)
        result = self._run(prompt_ids, sampling, None, None, None)
        as_ids = bool(body.get("return_tokens_as_token_ids"))
        choices = []
        for index, completion in enumerate(result.completion_ids):
            choice = {
                "index": index,
                "text": self.tokenizer.decode(completion, skip_special_tokens=True),
                "logprobs": self._completion_logprobs(completion, result.logprobs[index], as_ids)
                if with_logprobs
                else None,
                "finish_reason": result.finish_reasons[index],
            }
            if body.get("return_token_ids"):
                choice.update(prompt_token_ids=prompt_ids[index // sampling.n], token_ids=completion)
            choices.append(choice)
        return self._openai_answer("cmpl", "text_completion", choices, prompt_ids, result)

    def v1_chat_completions(self, body: dict) -> dict:
        _check_keys(body, _CHAT_COMPLETIONS_KEYS, "/v1/chat/completions")
        self._check_openai(body)
        if body.get("add_generation_prompt") is False:
            raise RequestError("`add_generation_prompt=false` is not supported.")
        if body.get("tool_choice") not in (None, "none", "auto"):
            raise RequestError("Only `tool_choice` 'none' or 'auto' (tool calls are returned as text) is supported.")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError("`messages` must be a non-empty list of messages.")
        prompt_ids = [
            self._render_chat(messages, body.get("tools"), body.get("chat_template"), body.get("chat_template_kwargs"))
        ]
        with_logprobs = bool(body.get("logprobs")) and _wants_logprobs(body.get("top_logprobs") or 0, "top_logprobs")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        sampling = self._openai_sampling(body, max_tokens, with_logprobs, prompt_ids)
        result = self._run(prompt_ids, sampling, None, None, None)
        as_ids = bool(body.get("return_tokens_as_token_ids"))
        choices = []
        for index, completion in enumerate(result.completion_ids):
            content = self.tokenizer.decode(completion, skip_special_tokens=True)
            choice = {
                "index": index,
                "message": {"role": "assistant", "content": content},
                "logprobs": self._chat_logprobs(completion, result.logprobs[index], as_ids) if with_logprobs else None,
                "finish_reason": result.finish_reasons[index],
            }
            if body.get("return_token_ids"):
                choice["token_ids"] = completion
            choices.append(choice)
        answer = self._openai_answer("chatcmpl", "chat.completion", choices, prompt_ids, result)
        if body.get("return_token_ids"):
            answer["prompt_token_ids"] = prompt_ids[0]
        return answer

    def _check_openai(self, body: dict) -> None:
        model = body.get("model")
        if model not in (None, self.model_name):
            raise RequestError(f"The model {model!r} is not served here; this server serves {self.model_name!r}.")
        for key, neutral in _OPENAI_NEUTRAL.items():
            if key in body and body[key] not in neutral:
                raise RequestError(f"`{key}={body[key]!r}` is not supported by `trl vllm-serve`; leave it unset.")
        if body.get("best_of") not in (None, body.get("n", 1)):
            raise RequestError("`best_of` is not supported; leave it unset.")

    def _openai_sampling(self, body, max_tokens, with_logprobs, prompt_ids) -> SamplingParams:
        if max_tokens is None:
            if self.engine.max_model_len is None:
                raise RequestError("Set `max_tokens`: the server does not know the model's length.")
            max_tokens = self.engine.max_model_len - max(map(len, prompt_ids))
        request = {key: body.get(key) for key in ("n", "temperature", "top_p", "top_k", "min_p", "repetition_penalty")}
        seed = body.get("seed")
        request.update(max_tokens=max_tokens, generation_kwargs={"seed": seed} if seed is not None else {})
        return sampling_from_request(request, with_logprobs)

    def _token_text(self, token: int, as_ids: bool) -> str:
        return f"token_id:{token}" if as_ids else self.tokenizer.decode([token])

    def _completion_logprobs(self, completion: list[int], logprobs: list[float], as_ids: bool) -> dict:
        tokens = [self._token_text(token, as_ids) for token in completion]
        values = [sanitize_logprob(value) for value in logprobs]
        offsets, position = [], 0
        for token in tokens:
            offsets.append(position)
            position += len(token)
        top = [{token: value} for token, value in zip(tokens, values)]
        return {"tokens": tokens, "token_logprobs": values, "top_logprobs": top, "text_offset": offsets}

    def _chat_logprobs(self, completion: list[int], logprobs: list[float], as_ids: bool) -> dict:
        content = []
        for token, value in zip(completion, logprobs):
            text = self._token_text(token, as_ids)
            entry = {"token": text, "logprob": sanitize_logprob(value), "bytes": list(text.encode())}
            content.append({**entry, "top_logprobs": []})
        return {"content": content}

    def _openai_answer(self, prefix, kind, choices, prompt_ids, result: GenerationResult) -> dict:
        prompt_tokens = sum(len(p) for p in prompt_ids)
        completion_tokens = sum(len(c) for c in result.completion_ids)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
        return {
            "id": f"{prefix}-{uuid.uuid4().hex}",
            "object": kind,
            "created": int(time.time()),
            "model": self.model_name,
            "choices": choices,
            "usage": {**usage, "total_tokens": prompt_tokens + completion_tokens},
        }


def _generation_answer(result: GenerationResult) -> dict:
    logprobs = None
    if result.logprobs is not None:
        logprobs = [[sanitize_logprob(value) for value in row] for row in result.logprobs]
    return {
        "prompt_ids": result.prompt_ids,
        "completion_ids": result.completion_ids,
        "logprobs": logprobs,
        "finish_reasons": result.finish_reasons,
    }


# ============================================================================================================ HTTP


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "trl-vllm-serve"

    def do_GET(self):  # noqa: N802 (http.server naming)
        self._handle("GET")

    def do_POST(self):  # noqa: N802
        self._handle("POST")

    def _handle(self, method: str) -> None:
        path = urlsplit(self.path).path
        try:
            body = self._read_body()
            status, answer = 200, self.server.app.dispatch(method, path, body)
        except EndpointNotFound as error:
            status, answer = 404, {"detail": str(error)}
        except KeyError as error:
            status, answer = 400, {"detail": f"Missing field {error} in the request."}
        except (RequestError, json.JSONDecodeError) as error:
            status, answer = 400, {"detail": str(error)}
        except Exception as error:
            logger.exception("%s %s failed", method, path)
            status, answer = 500, {"detail": f"{type(error).__name__}: {error}"}
        self._send(status, answer)

    def _read_body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        if length == 0:
            return {}
        return json.loads(self.rfile.read(length))

    def _send(self, status: int, answer: Any) -> None:
        data = json.dumps(answer, allow_nan=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server signature)
        logger.debug("%s - %s", self.address_string(), format % args)


class TrlHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server bound to a [`ServerApp`] (health checks are answered while a request generates)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: ServerApp):
        self.app = app
        super().__init__(address, _Handler)


def build_app(script_args: ScriptArguments) -> ServerApp:
    """
    Load the tokenizer and the engine named by `script_args.backend` (resolved by [`resolve_backend`]).

    Args:
        script_args ([`ScriptArguments`]):
            The server arguments.
    """
    from transformers import AutoTokenizer

    backend = resolve_backend(script_args.backend)
    tokenizer = AutoTokenizer.from_pretrained(
        script_args.model, revision=script_args.revision, trust_remote_code=script_args.trust_remote_code
    )
    engine = TransformersEngine(script_args, tokenizer) if backend == "transformers" else VLLMEngine(script_args)
    return ServerApp(engine, tokenizer, script_args.model)


def _warn_vllm_only_arguments(args: ScriptArguments) -> None:
    defaults = {
        "gpu_memory_utilization": 0.9,
        "enable_prefix_caching": None,
        "enforce_eager": False,
        "kv_cache_dtype": "auto",
        "vllm_model_impl": "vllm",
    }
    changed = [name for name, default in defaults.items() if getattr(args, name) != default]
    if changed:
        logger.warning("%s only apply to `--backend vllm`; the transformers backend does not use them.", changed)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)


def make_parser(subparsers=None, prog: str | None = None) -> TrlParser:
    """
    Parser of `trl vllm-serve`: one [`ScriptArguments`].

    Args:
        subparsers (`argparse._SubParsersAction` or `None`, *optional*, defaults to `None`):
            When given (created with `parser_class=TrlParser`), `vllm-serve` is added to them.
        prog (`str` or `None`, *optional*, defaults to `None`):
            Program name shown in the usage line of a standalone parser.
    """
    if subparsers is not None:
        return subparsers.add_parser(
            COMMAND, help=DESCRIPTION, description=DESCRIPTION, dataclass_types=ScriptArguments
        )
    return TrlParser(ScriptArguments, prog=prog, description=DESCRIPTION)


def main(script_args: ScriptArguments) -> None:
    """
    Load the model and serve until interrupted (Ctrl+C or SIGTERM).

    Args:
        script_args ([`ScriptArguments`]):
            The server arguments.
    """
    level = "DEBUG" if script_args.log_level.lower() == "trace" else script_args.log_level.upper()
    logging.basicConfig(level=level, format="%(levelname)s %(asctime)s %(name)s: %(message)s")
    app = build_app(script_args)
    server = TrlHTTPServer((script_args.host, script_args.port), app)
    host, port = server.server_address[:2]
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    print(
        f"trl vllm-serve ready: serving {script_args.model} with the {app.engine.backend} backend on "
        f"http://{host}:{port}",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        logger.info("Shutting down.")
    finally:
        server.server_close()
        app.engine.shutdown()


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    main(*make_parser(prog="trl vllm-serve").parse_args_and_config())
