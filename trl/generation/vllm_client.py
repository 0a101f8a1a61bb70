"""
Client of the `trl vllm-serve` server: generation, chat, sequence log-probs and weight updates over HTTP.

Only the standard library is used for HTTP (`urllib`), so the client works wherever trl does. Every call has a
timeout: a server that is down fails within a few seconds (a bounded number of reconnection attempts), a wedged one
within `request_timeout`, with an error that names the server and says what to check, never a hang.

Weights travel one of two ways, chosen by the server (`get_server_info()["weight_transport"]`):

- `"nccl"` (vLLM server on GPUs): the client joins the server's workers in an NCCL group (`init_communicator`)
  and broadcasts each tensor after announcing it over HTTP, as in the reference protocol;
- `"http"` (`--backend transformers`, CPU): the tensor bytes are sent in the request body (base64, with dtype
  and shape), batched by [`VLLMClient.weight_update`] and [`VLLMClient.update_named_params`].
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import logging
import math
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from trl.import_utils import is_requests_available, is_vllm_available  # noqa: F401  (is_requests_available: the reference's name here)


if TYPE_CHECKING:
    import torch


from trl.generation.client_wire import (  # re-exported: part of this module's public names
    decode_tensor,
    encode_prompt_images,
    encode_tensor,
    parse_dtype,
    parse_logprobs,
    pil_to_base64,
    to_openai_messages,
)


__all__ = [
    "API_KEY_ENV",
    "VLLMClient",
    "decode_tensor",
    "encode_prompt_images",
    "encode_tensor",
    "parse_dtype",
    "parse_logprobs",
    "pil_to_base64",
    "to_openai_messages",
]

logger = logging.getLogger(__name__)

API_KEY_ENV = "TRL_VLLM_SERVER_API_KEY"  # the same variable `trl vllm-serve` reads

# Bytes of tensor data per weight-update request on the HTTP transport (before base64).
_HTTP_UPDATE_BATCH_BYTES = 64 * 2**20
_HEALTH_TIMEOUT = 5.0


class VLLMClient:
    """
    Talk to a `trl vllm-serve` server: generate completions and push updated weights.

    Args:
        base_url (`str` or `None`, *optional*, defaults to `None`):
            Server URL (`"http://10.0.0.2:8000"`, optionally with a path prefix). Takes priority over `host` and
            `server_port`.
        host (`str`, *optional*, defaults to `"0.0.0.0"`):
            Server address when `base_url` is not given.
        server_port (`int`, *optional*, defaults to `8000`):
            Server port when `base_url` is not given.
        group_port (`int`, *optional*, defaults to `51216`):
            Port of the NCCL weight-update group (vLLM server only).
        connection_timeout (`float`, *optional*, defaults to `0.0`):
            Seconds to wait for the server to come up before raising `ConnectionError`.
        request_timeout (`float`, *optional*, defaults to `600.0`):
            Seconds a request may wait for the server's answer before raising `TimeoutError` (keyword-only).
        max_retries (`int`, *optional*, defaults to `2`):
            Reconnection attempts (1 s, then 2 s, ... apart) when the server cannot be reached (keyword-only).
        api_key (`str` or `None`, *optional*, defaults to `None`):
            The server's API key (`trl vllm-serve --api_key`), sent as `Authorization: Bearer <api_key>` with every
            request; unset: `$TRL_VLLM_SERVER_API_KEY` when set, else no key (keyword-only).

    Example:

    ```python
    >>> from trl.generation.vllm_client import VLLMClient

    >>> client = VLLMClient(base_url="http://127.0.0.1:8000", connection_timeout=60)
    >>> answer = client.generate(["Hello, AI!"], n=4, max_tokens=8)  # prompt_ids, completion_ids, logprobs, ...
    >>> client.init_communicator(device="cuda")  # once
    >>> client.update_model_params(model)  # after each optimizer step
    >>> client.reset_prefix_cache()
    ```
    """

    def __init__(
        self,
        base_url: str | None = None,
        host: str = "0.0.0.0",
        server_port: int = 8000,
        group_port: int = 51216,
        connection_timeout: float = 0.0,
        *,
        request_timeout: float = 600.0,
        max_retries: int = 2,
        api_key: str | None = None,
    ):
        if base_url is not None:
            parsed = urlparse(base_url if "://" in base_url else f"http://{base_url}")
            self.host = parsed.hostname or host
            self.server_port = parsed.port or (443 if parsed.scheme == "https" else 80)
            self.base_url = f"{parsed.scheme or 'http'}://{parsed.netloc}{parsed.path.rstrip('/')}"
        else:
            self.host = host
            self.server_port = server_port
            self.base_url = f"http://{host}:{server_port}"
        self.group_port = group_port
        self.api_key = api_key or os.environ.get(API_KEY_ENV) or None
        self.request_timeout = request_timeout
        self.max_retries = max_retries
        self.communicator = None
        self._server_info: dict | None = None
        self._pending: list[dict] | None = None  # buffered HTTP weight updates inside `weight_update()`
        self._pending_bytes = 0
        self.check_server(connection_timeout)

    # ------------------------------------------------------------------ HTTP plumbing

    def _request(self, method: str, path: str, payload: Any = None, timeout: float | None = None) -> Any:
        timeout = self.request_timeout if timeout is None else timeout
        url = f"{self.base_url}{path}"
        data = json.dumps(payload).encode() if payload is not None else (b"{}" if method == "POST" else None)
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(url, data=data, method=method, headers=self._headers())
            request.add_header("Content-Type", "application/json")
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    return json.loads(response.read() or b"null")
            except urllib.error.HTTPError as error:
                raise _http_error(error, method, url) from None
            except TimeoutError as error:
                raise self._timeout_error(method, url, timeout) from error
            except (urllib.error.URLError, ConnectionError, http.client.HTTPException) as error:
                reason = getattr(error, "reason", error)
                if isinstance(reason, TimeoutError | socket.timeout):
                    raise self._timeout_error(method, url, timeout) from error
                if attempt == self.max_retries:
                    raise ConnectionError(
                        f"Cannot reach the generation server at {self.base_url} ({method} {url}: {reason}; "
                        f"{attempt + 1} attempt(s)). Make sure `trl vllm-serve` is running and reachable at this "
                        "address (check its `--host`/`--port` and its log)."
                    ) from error
                time.sleep(2.0**attempt)
        raise AssertionError("unreachable")

    def _timeout_error(self, method: str, url: str, timeout: float) -> TimeoutError:
        alive = self._is_alive()
        state = (
            "it answers health checks, so it is busy: raise `request_timeout` or send smaller batches"
            if alive
            else "it does not answer health checks either: it is wedged or gone, check the `trl vllm-serve` log"
        )
        return TimeoutError(
            f"The generation server at {self.base_url} did not answer {method} {url} within {timeout} s; {state}."
        )

    def _is_alive(self) -> bool:
        request = urllib.request.Request(f"{self.base_url}/health/", method="GET", headers=self._headers())
        try:
            with urllib.request.urlopen(request, timeout=min(_HEALTH_TIMEOUT, self.request_timeout)) as response:
                return response.status == 200
        except Exception:
            return False

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _get(self, path: str, timeout: float | None = None) -> Any:
        return self._request("GET", path, timeout=timeout)

    def _post(self, path: str, payload: Any = None, timeout: float | None = None) -> Any:
        return self._request("POST", path, payload, timeout=timeout)

    # ------------------------------------------------------------------ server state

    def check_server(self, total_timeout: float = 0.0, retry_interval: float = 2.0) -> None:
        """
        Poll `/health/` until the server answers, for at most `total_timeout` seconds.

        Args:
            total_timeout (`float`, *optional*, defaults to `0.0`):
                Seconds to keep trying; `0` tries once.
            retry_interval (`float`, *optional*, defaults to `2.0`):
                Seconds between attempts.

        Raises:
            ConnectionError: When the server is not up after `total_timeout` seconds.
        """
        deadline = time.monotonic() + total_timeout
        while True:
            if self._is_alive():
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConnectionError(
                    f"The generation server at {self.base_url} is not up after {total_timeout} s. Start it with "
                    "`trl vllm-serve --model <model>` (it can take minutes to load), check that the address and "
                    "port match, or wait longer (`vllm_server_timeout`)."
                )
            logger.info("Server at %s not up yet; retrying in %s s.", self.base_url, retry_interval)
            time.sleep(min(retry_interval, remaining))

    def get_server_info(self) -> dict[str, Any]:
        """
        The server's description: `backend` (`"vllm"` or `"transformers"`), `model`, `world_size`,
        `weight_transport` (`"nccl"` or `"http"`).
        """
        self._server_info = self._get("/get_server_info/", timeout=min(30.0, self.request_timeout))
        return self._server_info

    def get_world_size(self) -> int:
        """Number of server workers: `tensor_parallel_size * data_parallel_size`."""
        return self._get("/get_world_size/", timeout=min(30.0, self.request_timeout))["world_size"]

    def _transport(self) -> str:
        if self._server_info is None:
            self.get_server_info()
        return self._server_info.get("weight_transport", "nccl")

    # ------------------------------------------------------------------ generation

    def generate(
        self,
        prompts: list[str] | list[list[int]],
        images: list | None = None,
        n: int = 1,
        repetition_penalty: float = 1.0,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = -1,
        min_p: float = 0.0,
        max_tokens: int = 16,
        truncate_prompt_tokens: int | None = None,
        guided_decoding_regex: str | None = None,
        generation_kwargs: dict | None = None,
        logprobs: int | None = 0,
    ) -> dict[str, list]:
        """
        Generate `n` completions per prompt.

        Args:
            prompts (`list[str]` or `list[list[int]]`):
                Text prompts (tokenized by the server) or token ids.
            images (`list[PIL.Image.Image | list[PIL.Image.Image] | None]` or `None`, *optional*, defaults to `None`):
                The images of each prompt: one image, a list of images (in the order of its placeholders) or `None`.
                A prompt with images holds one image placeholder per image, as the chat template renders it with the
                tokenizer (the server expands them). Needs a vision-language model on the server.
            n (`int`, *optional*, defaults to `1`):
                Completions per prompt.
            repetition_penalty (`float`, *optional*, defaults to `1.0`):
                Penalty on repeated tokens; `1.0` disables it.
            temperature (`float`, *optional*, defaults to `1.0`):
                Sampling temperature; `0.0` is greedy.
            top_p (`float`, *optional*, defaults to `1.0`):
                Nucleus sampling mass.
            top_k (`int`, *optional*, defaults to `-1`):
                Top-k sampling; `-1` disables it.
            min_p (`float`, *optional*, defaults to `0.0`):
                Minimum relative probability; `0.0` disables it.
            max_tokens (`int`, *optional*, defaults to `16`):
                Most tokens per completion.
            truncate_prompt_tokens (`int` or `None`, *optional*, defaults to `None`):
                Keep only the last this many prompt tokens.
            guided_decoding_regex (`str` or `None`, *optional*, defaults to `None`):
                Constrain completions to a regular expression (vLLM server only).
            generation_kwargs (`dict` or `None`, *optional*, defaults to `None`):
                Extra sampling arguments (e.g. `seed`); they override the ones above.
            logprobs (`int` or `None`, *optional*, defaults to `0`):
                `0` returns the sampled token's log-prob at each position, `None` none.

        Returns:
            `dict`: `prompt_ids` (one per prompt), `completion_ids`, `logprobs` (`list[list[float | None]]` or
            `None`) and `finish_reasons` (one per completion, prompt-major).
        """
        payload = _sampling_fields(locals())
        payload.update(
            prompts=prompts, images=encode_prompt_images(images), truncate_prompt_tokens=truncate_prompt_tokens
        )
        return self._post("/generate/", payload)

    def chat(
        self,
        messages: list[list[dict]],
        n: int = 1,
        repetition_penalty: float = 1.0,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = -1,
        min_p: float = 0.0,
        max_tokens: int = 16,
        logprobs: int | None = 0,
        guided_decoding_regex: str | None = None,
        generation_kwargs: dict | None = None,
        chat_template_kwargs: dict | None = None,
        tools: list | None = None,
        chat_template: str | None = None,
    ) -> dict[str, list]:
        """
        Generate `n` completions per conversation; the server renders the chat template.

        Args:
            messages (`list[list[dict]]`):
                Conversations (`{"role", "content"}` messages). A content may be a list of parts: text
                (`{"type": "text", "text": ...}`) and PIL images (`{"type": "image", "image": <PIL.Image>}`), sent as
                base64 PNG; images need a vision-language model on the server.
            n, repetition_penalty, temperature, top_p, top_k, min_p, max_tokens, logprobs, guided_decoding_regex, generation_kwargs:
                As in [`~VLLMClient.generate`].
            chat_template_kwargs (`dict` or `None`, *optional*, defaults to `None`):
                Extra variables for the chat template (e.g. `{"enable_thinking": False}`).
            tools (`list[dict | Callable]` or `None`, *optional*, defaults to `None`):
                Tools rendered into the prompt (JSON schemas, or functions converted with `get_json_schema`).
            chat_template (`str` or `None`, *optional*, defaults to `None`):
                A Jinja template replacing the tokenizer's.

        Returns:
            `dict`: As [`~VLLMClient.generate`].
        """
        if tools:
            from transformers.utils import get_json_schema

            tools = [get_json_schema(tool) if callable(tool) else tool for tool in tools]
        payload = _sampling_fields(locals())
        payload["messages"] = [to_openai_messages(conversation) for conversation in messages]
        payload.update(
            chat_template_kwargs=chat_template_kwargs or {}, tools=tools or None, chat_template=chat_template
        )
        return self._post("/chat/", payload)

    def get_sequence_logprobs(
        self,
        sequences: list[list[int]],
        prompt_lengths: list[int],
        top_logprobs: int = 100,
        temperature: float = 1.0,
        chunk_size: int = 0,
        max_concurrent_requests: int = 4,
    ) -> dict[str, list]:
        """
        Score existing sequences (no generation): top-k log-probs at every completion position, e.g. for a teacher.

        Args:
            sequences (`list[list[int]]`):
                Prompt + completion token ids.
            prompt_lengths (`list[int]`):
                Prompt length of each sequence; positions from there on are scored.
            top_logprobs (`int`, *optional*, defaults to `100`):
                Log-probs returned per position.
            temperature (`float`, *optional*, defaults to `1.0`):
                The scores are `log_softmax(logits / temperature)`.
            chunk_size (`int`, *optional*, defaults to `0`):
                Sequences per request (sent concurrently); `0` sends one request.
            max_concurrent_requests (`int`, *optional*, defaults to `4`):
                Requests in flight at once when chunking.

        Returns:
            `dict`: `logprobs` and `logprob_token_ids` (`[batch][position][top_logprobs]`, by decreasing log-prob,
            padded with `-inf` / `0`), `actual_logprobs` and `actual_token_ids` (`[batch][position][1]`, the
            log-prob of the token actually in the sequence).
        """
        if temperature <= 0:
            raise ValueError(f"`temperature` must be positive, got {temperature}.")
        if len(sequences) != len(prompt_lengths):
            raise ValueError("`prompt_lengths` needs one entry per sequence.")
        size = chunk_size if chunk_size > 0 else max(len(sequences), 1)
        chunks = [(sequences[i : i + size], prompt_lengths[i : i + size]) for i in range(0, len(sequences), size)]

        def send(chunk):
            payload = {"sequences": chunk[0], "prompt_lengths": chunk[1], "top_logprobs": top_logprobs}
            return self._post("/get_sequence_logprobs/", {**payload, "temperature": temperature})

        with ThreadPoolExecutor(max_workers=max(1, min(max_concurrent_requests, len(chunks)))) as executor:
            answers = list(executor.map(send, chunks))
        merged = {key: [row for answer in answers for row in answer[key]] for key in answers[0]} if answers else {}
        for key in ("logprobs", "actual_logprobs"):
            if key in merged:
                merged[key] = [[[-math.inf if v is None else v for v in pos] for pos in row] for row in merged[key]]
        return merged

    def image_features(self, images: list, max_concurrent_requests: int = 64) -> list:
        """
        Not supported by the `trl vllm-serve` protocol: send images with `generate(images=...)` or inside `chat`
        messages instead.
        """
        raise NotImplementedError(
            "`image_features` belongs to vLLM's native server; with `trl vllm-serve`, pass images to "
            "`VLLMClient.generate(images=...)` or as image parts of `VLLMClient.chat` messages."
        )

    # ------------------------------------------------------------------ weight sync

    def init_communicator(self, device: torch.device | str | int = 0) -> None:
        """
        Prepare weight updates. On a vLLM server this joins its workers' NCCL group as the last rank (one call per
        training run); on a transformers server the weights travel over HTTP and nothing is set up.

        Args:
            device (`torch.device`, `str` or `int`, *optional*, defaults to `0`):
                The trainer's device holding the weights to broadcast (NCCL only).
        """
        if self._transport() == "http":
            self._post("/init_communicator/", {"host": "", "port": 0, "world_size": 0, "client_device_uuid": ""})
            self.communicator = "http"
            return
        self.communicator = _NcclCommunicator.connect(self, device)
        atexit.register(self.close_communicator)

    @contextlib.contextmanager
    def weight_update(self) -> Iterator[None]:
        """
        Group the [`~VLLMClient.update_named_param`] calls made inside into as few requests as possible (HTTP
        transport); sent when the block exits.

        ```python
        >>> with client.weight_update():
        ...     for name, param in model.named_parameters():
        ...         client.update_named_param(name, param.data)
        ```
        """
        outermost = self._pending is None
        if outermost:
            self._pending = []
        try:
            yield
            if outermost:
                self._flush_pending()
        finally:
            if outermost:
                self._pending = None

    def update_named_param(self, name: str, weights: torch.Tensor) -> None:
        """
        Replace one parameter of the served model.

        Args:
            name (`str`):
                The parameter's name in the plain (unwrapped, PEFT-merged) model.
            weights (`torch.Tensor`):
                Its new value.
        """
        if self._transport() == "http":
            entry = {"name": name, **encode_tensor(weights)}
            if self._pending is not None:
                self._pending.append(entry)
                self._pending_bytes += weights.numel() * weights.element_size()
                if self._pending_bytes >= _HTTP_UPDATE_BATCH_BYTES:
                    self._flush_pending()
            else:
                self._post("/update_named_param/", entry)
            return
        self._require_communicator()
        self._post("/update_named_param/", {"name": name, "dtype": str(weights.dtype), "shape": list(weights.shape)})
        self.communicator.broadcast(weights)

    def update_named_params(
        self, metadata: list[tuple[str, str, list[int]]] | None, named_params: Iterable[tuple[str, torch.Tensor]]
    ) -> None:
        """
        Replace several parameters, streamed in order.

        Args:
            metadata (`list[tuple[str, str, list[int]]]` or `None`):
                `(name, dtype, shape)` of each tensor in `named_params`, checked against them; `None` skips the check.
            named_params (`Iterable[tuple[str, torch.Tensor]]`):
                `(name, tensor)` pairs.
        """
        expected = iter(metadata) if metadata is not None else None
        with self.weight_update():
            for name, tensor in named_params:
                if expected is not None:
                    meta_name, _, meta_shape = next(expected)
                    if meta_name != name or list(meta_shape) != list(tensor.shape):
                        raise ValueError(f"Tensor {name} {list(tensor.shape)} does not match metadata {meta_name}.")
                self.update_named_param(name, tensor)

    def update_model_params(self, model: torch.nn.Module) -> None:
        """
        Replace every parameter of the served model with `model`'s.

        Args:
            model (`torch.nn.Module`):
                A plain model whose parameter names match the served model's (see
                [`~trl.generation.base.iter_inference_weights`] for wrapped or PEFT models).
        """
        self.update_named_params(None, ((name, param.data) for name, param in model.named_parameters()))

    def _flush_pending(self) -> None:
        batch, self._pending, self._pending_bytes = self._pending, [], 0
        if batch:
            self._post("/update_named_params/", {"params": batch})

    def _require_communicator(self) -> None:
        if self.communicator is None:
            raise RuntimeError("Call `init_communicator()` before updating weights on a vLLM server.")

    def reset_prefix_cache(self) -> None:
        """Drop the server's cached prompt prefixes (after a weight update they are stale)."""
        self._post("/reset_prefix_cache/")

    def close_communicator(self) -> None:
        """Leave the weight-update group. Safe to call twice, and when the server is already gone."""
        if self.communicator is None:
            return
        communicator, self.communicator = self.communicator, None
        with contextlib.suppress(ConnectionError, TimeoutError):
            self._post("/close_communicator/", timeout=min(_HEALTH_TIMEOUT * 2, self.request_timeout))
        if isinstance(communicator, _NcclCommunicator):
            communicator.close()


_SAMPLING_FIELDS = ("n", "repetition_penalty", "temperature", "top_p", "top_k", "min_p", "max_tokens", "logprobs")


def _sampling_fields(arguments: dict[str, Any]) -> dict[str, Any]:
    """The fields `/generate/` and `/chat/` share, from the arguments (`locals()`) of `generate` or `chat`."""
    fields = {name: arguments[name] for name in _SAMPLING_FIELDS}
    fields.update(guided_decoding_regex=arguments["guided_decoding_regex"])
    return {**fields, "generation_kwargs": arguments["generation_kwargs"] or {}}


def _http_error(error: urllib.error.HTTPError, method: str, url: str) -> Exception:
    try:
        detail = json.loads(error.read() or b"{}").get("detail", "")
    except (ValueError, AttributeError):
        detail = ""
    message = f"{method} {url} failed with HTTP {error.code}: {detail or error.reason}"
    return ValueError(message) if 400 <= error.code < 500 else RuntimeError(message)


class _NcclCommunicator:
    """The client's side of the NCCL group of a vLLM server (GPU only; imports vLLM lazily)."""

    def __init__(self, communicator, rank: int):
        self.pynccl = communicator
        self.rank = rank

    @classmethod
    def connect(cls, client: VLLMClient, device) -> _NcclCommunicator:
        import torch

        if not is_vllm_available():
            raise ImportError("vLLM is not installed. Please install it with `pip install trl[vllm]`.")
        if not torch.cuda.is_available():
            raise ValueError("NCCL weight sync with a vLLM server needs a CUDA device on the trainer side.")
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.utils import StatelessProcessGroup

        device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
        server_world_size = client.get_world_size()
        world_size = server_world_size + 1
        uuid = str(torch.cuda.get_device_properties(device).uuid)
        payload = {"host": "0.0.0.0", "port": client.group_port, "world_size": world_size}
        client._post("/init_communicator/", {**payload, "client_device_uuid": uuid})
        # The server answers before its workers join the rendezvous; give them a moment to start listening.
        time.sleep(0.1)
        group = StatelessProcessGroup.create(
            host=client.host, port=client.group_port, rank=server_world_size, world_size=world_size
        )
        return cls(PyNcclCommunicator(group, device=device), rank=server_world_size)

    def broadcast(self, tensor) -> None:
        self.pynccl.broadcast(tensor, src=self.rank)
        self.pynccl.group.barrier()

    def close(self) -> None:
        self.pynccl = None
