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
| GET `/health/` | | `{"status": "ok"}`, or 503 `{"status": "wedged"}` while a request holds the engine past `--request_timeout` |
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

Access and limits (see `ScriptArguments`): `--api_key` (or `$TRL_VLLM_SERVER_API_KEY`) makes every endpoint require
`Authorization: Bearer <key>`; `--weight_update_allowed_hosts` restricts the weight endpoints; body, prompt, `n`,
total-token and time limits answer 413 / 400 / 408 / 503 / 504; malformed fields get a 400 naming them. Listening
beyond loopback without a key prints a loud warning.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass, field

from trl.generation.server_app import TrlHTTPServer, build_app, resolve_backend
from trl.generation.server_engines import WeightSyncWorkerExtension, chunk_list
from trl.scripts.utils import TrlParser


# Re-exported: the reference defines these in this module.
__all__ = ["ScriptArguments", "WeightSyncWorkerExtension", "chunk_list", "main", "make_parser", "resolve_backend"]

logger = logging.getLogger("trl.vllm_serve")

COMMAND = "vllm-serve"
DESCRIPTION = "Serve a model for online training: generation endpoints and weight updates (vLLM or transformers)."


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
    app.policy.warn_if_exposed(script_args.host)
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
        app.close()


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    main(*make_parser(prog="trl vllm-serve").parse_args_and_config())
