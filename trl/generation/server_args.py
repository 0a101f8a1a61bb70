"""Arguments of the generation server (`trl vllm-serve`): they live with the server, so `trl.generation` never imports
from `trl.scripts`; `trl.scripts.vllm_serve.ScriptArguments` re-exports them under the reference's path."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


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
        api_key (`str` or `None`, *optional*, defaults to `None`):
            Require `Authorization: Bearer <api_key>` on every request (401 otherwise); unset:
            `$TRL_VLLM_SERVER_API_KEY` when set, else no key (a loud warning when listening beyond loopback).
        weight_update_allowed_hosts (`list[str]` or `None`, *optional*, defaults to `None`):
            Addresses, networks (`10.0.0.0/24`) or host names allowed to call the weight-update and communicator
            endpoints (403 for others); unset: any client holding the key.
        max_request_bytes (`int`, *optional*, defaults to `16777216`):
            Largest request body, weight updates excepted (413 above).
        max_weight_update_bytes (`int`, *optional*, defaults to `1073741824`):
            Largest body of `/update_named_param/` and `/update_named_params/`.
        max_prompt_tokens (`int`, *optional*, defaults to `32768`):
            Most tokens in one prompt (after `truncate_prompt_tokens`); text prompts are also limited to 16
            characters per token before tokenizing.
        max_n (`int`, *optional*, defaults to `256`):
            Largest `n`.
        max_total_tokens (`int`, *optional*, defaults to `8388608`):
            Most tokens per request: prompt tokens + prompts x `n` x `max_tokens`.
        request_timeout (`float`, *optional*, defaults to `600.0`):
            Seconds a request may wait for and use the engine (503 / 504 after); a generation running longer makes
            `/health/` answer 503 `"wedged"`.
        read_timeout (`float`, *optional*, defaults to `60.0`):
            Seconds a client has to send a whole request (408 after); also the idle time of a kept-alive
            connection.
        allow_request_chat_template (`bool`, *optional*, defaults to `False`):
            Accept a `chat_template` field in requests, rendered in a sandboxed, memory-limited process.
        chat_template_timeout (`float`, *optional*, defaults to `2.0`):
            Seconds a request-supplied chat template may take to render.
        max_connections (`int`, *optional*, defaults to `256`):
            Connections served at once (more are answered 503).
        max_images (`int`, *optional*, defaults to `64`):
            Most images in one request (400 above).
        max_image_bytes (`int`, *optional*, defaults to `8388608`):
            Largest encoded image of a request, after base64 decoding (400 above).
        max_image_pixels (`int`, *optional*, defaults to `16777216`):
            Most pixels (width x height) of one request image, checked from its header before decoding.
        vllm_engine_args (`list[str]` or `None`, *optional*, defaults to `None`):
            Flags of the vLLM engine that `trl vllm-serve` does not define itself (e.g. `--max-num-seqs 64`,
            `--quantization awq`): the command line collects every flag it does not know here, as the reference
            does, and they are passed to `vllm.LLM` (see [`engine_kwargs_from_flags`]). Refused with
            `--backend transformers`.
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
    api_key: str | None = field(
        default=None, metadata={"help": "Required as `Authorization: Bearer <key>` (or $TRL_VLLM_SERVER_API_KEY)."}
    )
    weight_update_allowed_hosts: list[str] | None = field(
        default=None, metadata={"help": "Addresses/networks/hosts allowed to update weights (unset: any)."}
    )
    max_request_bytes: int = field(default=16 * 2**20, metadata={"help": "Largest request body (bytes)."})
    max_weight_update_bytes: int = field(default=2**30, metadata={"help": "Largest weight-update body (bytes)."})
    max_prompt_tokens: int = field(default=32768, metadata={"help": "Most tokens in one prompt."})
    max_n: int = field(default=256, metadata={"help": "Largest n (completions per prompt)."})
    max_total_tokens: int = field(default=2**23, metadata={"help": "Most tokens per request (prompts + n x max)."})
    request_timeout: float = field(default=600.0, metadata={"help": "Seconds a request may wait for/use the engine."})
    read_timeout: float = field(default=60.0, metadata={"help": "Seconds a client has to send a whole request."})
    allow_request_chat_template: bool = field(
        default=False, metadata={"help": "Accept `chat_template` in requests (sandboxed, time-limited)."}
    )
    chat_template_timeout: float = field(default=2.0, metadata={"help": "Seconds a request chat template may take."})
    max_connections: int = field(default=256, metadata={"help": "Connections served at once."})
    max_images: int = field(default=64, metadata={"help": "Most images in one request."})
    max_image_bytes: int = field(default=8 * 2**20, metadata={"help": "Largest encoded request image (bytes)."})
    max_image_pixels: int = field(default=2**24, metadata={"help": "Most pixels (width x height) of one image."})
    vllm_engine_args: list[str] | None = field(
        default=None, metadata={"help": "vLLM engine flags trl does not define (filled with every unknown flag)."}
    )


def _flag_value(text: str) -> Any:
    """A flag value as vLLM would mostly read it: JSON when it parses (numbers, booleans, lists, dicts), else text."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return json.loads(text)
    except ValueError:
        return text


def engine_kwargs_from_flags(flags: list[str]) -> dict[str, Any]:
    """Turn vLLM command-line flags into `vllm.LLM` keyword arguments.

    `--name value` and `--name=value` give `name=value` (dashes become underscores, the value read as JSON when it
    parses); a flag without a value is `True`, and `--no-name` is `name=False`.

    Args:
        flags (`list[str]`):
            The flags, e.g. `["--max-num-seqs", "64", "--enable-chunked-prefill"]`.

    Raises:
        ValueError: A value with no flag before it.
    """
    kwargs: dict[str, Any] = {}
    i = 0
    while i < len(flags):
        flag = flags[i]
        if not flag.startswith("--") or len(flag) == 2:
            raise ValueError(f"Unexpected argument {flag!r}: vLLM engine flags look like --name value or --name.")
        name, _, inline = flag[2:].partition("=")
        key = name.replace("-", "_")
        if inline:
            kwargs[key] = _flag_value(inline)
        elif i + 1 < len(flags) and not flags[i + 1].startswith("--"):
            i += 1
            kwargs[key] = _flag_value(flags[i])
        elif key.startswith("no_"):
            kwargs[key[3:]] = False
        else:
            kwargs[key] = True
        i += 1
    return kwargs


def check_engine_flags(args: ScriptArguments, backend: str) -> dict[str, Any]:
    """The extra vLLM engine keyword arguments of `args`, checked before any model loads.

    Args:
        args ([`ScriptArguments`]):
            The server arguments.
        backend (`str`):
            The resolved backend.

    Raises:
        ValueError: Extra flags with the transformers backend, which has no vLLM engine to pass them to.
    """
    flags = list(args.vllm_engine_args or [])
    if flags and backend == "transformers":
        raise ValueError(
            f"trl vllm-serve does not know {' '.join(flags)}: flags it does not define are passed to the vLLM "
            "engine, and --backend transformers has none. Remove them, or serve with --backend vllm."
        )
    return engine_kwargs_from_flags(flags)
