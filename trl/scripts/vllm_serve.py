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

Images: `images` holds one entry per prompt, `null`, one base64 image or a list of them, and `/chat/` and
`/v1/chat/completions` take image parts (`{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}`).
A prompt with images holds one image placeholder per image, as the tokenizer renders the chat template; the server
expands them (the transformers backend with the model's processor, vLLM with its own). A vision-language checkpoint
is loaded with `AutoModelForImageTextToText` and its `AutoProcessor`; a text-only model answers 400 to images.
Images are decoded with Pillow (PNG, JPEG, WEBP, GIF, BMP only) within `--max_images` per request,
`--max_image_bytes` and `--max_image_pixels` (read from the header before decoding).

Access and limits (see `ScriptArguments`): `--api_key` (or `$TRL_VLLM_SERVER_API_KEY`) makes every endpoint require
`Authorization: Bearer <key>`; `--weight_update_allowed_hosts` restricts the weight endpoints; body, prompt, `n`,
total-token and time limits answer 413 / 400 / 408 / 503 / 504; malformed fields get a 400 naming them. Listening
beyond loopback without a key prints a loud warning.
"""

from __future__ import annotations

import logging
import signal

from trl.generation.server_app import TrlHTTPServer, build_app, resolve_backend
from trl.generation.server_args import ScriptArguments
from trl.generation.server_engines import WeightSyncWorkerExtension, chunk_list
from trl.scripts.utils import TrlParser


# Re-exported: the reference defines these in this module (the arguments live with the server they configure).
__all__ = [
    "ScriptArguments",
    "VLLMServeParser",
    "WeightSyncWorkerExtension",
    "chunk_list",
    "main",
    "make_parser",
    "resolve_backend",
]

logger = logging.getLogger("trl.vllm_serve")

COMMAND = "vllm-serve"
DESCRIPTION = "Serve a model for online training: generation endpoints and weight updates (vLLM or transformers)."


class VLLMServeParser(TrlParser):
    """A [`~trl.TrlParser`] that keeps the flags `trl vllm-serve` does not define, for the vLLM engine.

    Like the reference, `trl vllm-serve --model M --max-num-seqs 64` passes `--max-num-seqs 64` to vLLM instead of
    rejecting it: every unknown flag (command line or YAML config) lands in `ScriptArguments.vllm_engine_args`.
    The transformers backend refuses them with a clear error when the server is built.
    """

    def parse_args_and_config(
        self,
        args=None,
        return_remaining_strings: bool = False,
        fail_with_unknown_args: bool = True,
        separate_remaining_strings: bool = False,
    ) -> tuple:
        *outputs, config_remaining, cli_remaining = super().parse_args_and_config(
            args, separate_remaining_strings=True
        )
        script_args = outputs[0]
        script_args.vllm_engine_args = [*(script_args.vllm_engine_args or []), *config_remaining, *cli_remaining]
        if separate_remaining_strings:
            return (*outputs, [], [])
        return (*outputs, []) if return_remaining_strings else tuple(outputs)


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
    return VLLMServeParser(ScriptArguments, prog=prog, description=DESCRIPTION)


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
