"""Arguments of the generation server (`trl vllm-serve`): they live with the server, so `trl.generation` never imports
from `trl.scripts`; `trl.scripts.vllm_serve.ScriptArguments` re-exports them under the reference's path."""

from __future__ import annotations

from dataclasses import dataclass, field


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
