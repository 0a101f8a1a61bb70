"""The HTTP application of `trl vllm-serve`: the reference's endpoints (health, world size, generate, chat, weight
sync, prefix cache) plus OpenAI-compatible `/v1/completions` and `/v1/chat/completions`, served by the standard
library's threading HTTP server (`server_http.py`). Access rules, limits and bounded body reading live in `server_guard.py`, field
checks in `server_validation.py`."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from trl.generation import server_validation as check
from trl.generation.base import GenerationResult, SamplingParams, sanitize_logprob
from trl.generation.server_args import check_engine_flags
from trl.generation.server_engines import (
    TEXT_ONLY_MODEL,
    VLLM_MISSING,
    EndpointNotFound,
    RequestError,
    TransformersEngine,
    VLLMEngine,
)
from trl.generation.server_guard import HTTPFailure, ServerPolicy
from trl.generation.server_http import TrlHTTPServer
from trl.generation.server_openai import OpenAIEndpoints
from trl.import_utils import is_vllm_available


if TYPE_CHECKING:
    from trl.generation.server_args import ScriptArguments

__all__ = ["ServerApp", "TrlHTTPServer", "build_app", "resolve_backend"]

logger = logging.getLogger("trl.vllm_serve")

_SAMPLING_DEFAULTS = {
    "n": 1,
    "repetition_penalty": 1.0,
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": -1,
    "min_p": 0.0,
    "max_tokens": 16,
}
_INTEGER_FIELDS = {"n": 1, "top_k": -1, "max_tokens": 1}  # field -> smallest value
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
_TEMPLATE_RESERVED = {"messages", "conversation", "tools", "documents", "add_generation_prompt", "tokenize"}
_TEMPLATE_RESERVED |= {"chat_template", "return_dict", "return_tensors", "continue_final_message"}
_CHARS_PER_TOKEN = 16  # text prompts longer than this many characters per allowed token are refused untokenized


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


class ServerApp(OpenAIEndpoints):
    """
    The endpoints, independent of HTTP: `dispatch(method, path, body)` returns the JSON answer.

    Requests are checked, tokenized and their chat templates rendered outside the engine lock; only the engine
    call holds it, for at most `policy.request_timeout` seconds of waiting.

    Args:
        engine (`TransformersEngine` or `VLLMEngine`):
            What generates.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Tokenizes text prompts, renders chat templates, decodes OpenAI answers.
        model_name (`str`):
            The id reported by `/v1/models`.
        policy ([`~trl.generation.server_guard.ServerPolicy`] or `None`, *optional*, defaults to `None`):
            Access rules and limits; `None` uses the defaults (no API key).
    """

    def __init__(self, engine, tokenizer, model_name: str, policy: ServerPolicy | None = None):
        self.engine = engine
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.policy = policy or ServerPolicy()
        # One request at a time touches the engine, one at a time the tokenizer (neither is thread-safe); status
        # endpoints take no lock, so health checks are answered while a long generation runs.
        self.lock = threading.Lock()
        self.tokenizer_lock = threading.Lock()
        self.busy_since: float | None = None
        self._local = threading.local()
        self.vocab_size = max(len(tokenizer), getattr(engine, "vocab_size", None) or 0)
        self.templates = None
        self._vocabulary: dict | None = None
        if self.policy.allow_request_chat_template:
            from trl.generation.chat_template_sandbox import ChatTemplateSandbox

            self.templates = ChatTemplateSandbox()
        reset, close = self.engine.reset_prefix_cache, self.engine.close_communicator
        self.routes: dict[tuple[str, str], Callable[[dict], Any]] = {
            ("GET", "/health"): self.health,
            ("GET", "/get_world_size"): lambda body: {"world_size": self.engine.world_size},
            ("GET", "/get_server_info"): self.server_info,
            ("GET", "/v1/models"): self.v1_models,
            ("POST", "/generate"): self.generate,
            ("POST", "/chat"): self.chat,
            ("POST", "/get_sequence_logprobs"): self.get_sequence_logprobs,
            ("POST", "/init_communicator"): self.init_communicator,
            ("POST", "/update_named_param"): self.update_named_param,
            ("POST", "/update_named_params"): self.update_named_params,
            ("POST", "/reset_prefix_cache"): lambda body: self._engine_call(reset, late_is_error=False),
            ("POST", "/close_communicator"): lambda body: self._engine_call(close, late_is_error=False),
            ("POST", "/v1/completions"): self.v1_completions,
            ("POST", "/v1/chat/completions"): self.v1_chat_completions,
        }

    def close(self) -> None:
        """Stop the engine and the chat-template sandbox."""
        if self.templates is not None:
            self.templates.close()
        self.engine.shutdown()

    def route(self, method: str, path: str) -> Callable[[dict], Any]:
        """
        The handler of `method path` (a trailing `/` is optional).

        Raises:
            EndpointNotFound: For an unknown path (404).
        """
        route = self.routes.get((method, path.rstrip("/") or "/"))
        if route is None:
            known = sorted(f"{m} {p}/" for m, p in self.routes)
            raise EndpointNotFound(f"No endpoint {method} {path}; the server has: {', '.join(known)}.")
        return route

    def dispatch(self, method: str, path: str, body: dict) -> Any:
        """
        Answer one request.

        Raises:
            EndpointNotFound: For an unknown path (404); `RequestError` for a bad request (400); `HTTPFailure` for
                the other refusals (503 engine busy, 504 generation past `request_timeout`).
        """
        route = self.route(method, path)
        self._local.deadline = time.monotonic() + self.policy.request_timeout
        result = route(body)
        return {"status": "ok"} if result is None else result

    def _engine_call(self, function: Callable, *args, late_is_error: bool = True, **kwargs) -> Any:
        deadline = getattr(self._local, "deadline", None) or time.monotonic() + self.policy.request_timeout
        if not self.lock.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
            raise HTTPFailure(
                503,
                f"The engine stayed busy for this request's whole `--request_timeout` ({self.policy.request_timeout}"
                " s): retry later, send smaller requests, or raise the server's `--request_timeout`.",
            )
        try:
            self.busy_since = time.monotonic()
            result = function(*args, **kwargs)
        finally:
            self.busy_since = None
            self.lock.release()
        if late_is_error and time.monotonic() > deadline:
            raise HTTPFailure(
                504,
                f"Generation ran past the server's `--request_timeout` ({self.policy.request_timeout} s) and its "
                "result was dropped: send fewer prompts or tokens, or raise `--request_timeout`.",
            )
        return result

    def health(self, body: dict) -> dict:
        started = self.busy_since
        elapsed = time.monotonic() - started if started is not None else 0.0
        if elapsed > self.policy.request_timeout:
            raise HTTPFailure(
                503,
                f"The engine is wedged: one request has held it for {elapsed:.1f} s, past `--request_timeout` "
                f"({self.policy.request_timeout} s). Check the server log; restart the server if it does not recover.",
                extra={"status": "wedged", "busy_for_s": round(elapsed, 1)},
            )
        return {"status": "ok"}

    def server_info(self, body: dict) -> dict:
        return {
            "backend": self.engine.backend,
            "model": self.model_name,
            "world_size": self.engine.world_size,
            "weight_transport": self.engine.weight_transport,
            "max_model_len": self.engine.max_model_len,
            "vocabulary": self.vocabulary(),
            "limits": self.policy.describe(),
        }

    def vocabulary(self) -> dict:
        """The served tokenizer's [`~trl.generation.client_wire.vocabulary_fingerprint`] (computed once): a trainer
        distilling from this server checks that its student shares the tokenizer."""
        if self._vocabulary is None:
            from trl.generation.client_wire import vocabulary_fingerprint

            with self.tokenizer_lock:
                self._vocabulary = vocabulary_fingerprint(self.tokenizer)
        return self._vocabulary

    # ------------------------------------------------------------------ request checks

    @staticmethod
    def _check_keys(body: dict, allowed: set[str], endpoint: str) -> None:
        if not isinstance(body, dict):
            raise RequestError(f"{endpoint} expects a JSON object.")
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise RequestError(f"{endpoint} does not take {unknown}; accepted fields: {sorted(allowed)}.")

    @staticmethod
    def _wants_logprobs(value: Any, field_name: str = "logprobs") -> bool:
        if value is None or value is False:
            return False
        if value is True or value == 0:
            return True
        raise RequestError(
            f"`{field_name}={value}`: this server returns only the sampled token's log-prob; ask for 0 (or leave "
            "unset)."
        )

    def sampling_from_request(self, body: dict, return_logprobs: bool) -> SamplingParams:
        """
        The [`SamplingParams`] of a request; `generation_kwargs` override the named fields. Every field is checked
        (type, range, `--max_n`).

        Args:
            body (`dict`):
                The request.
            return_logprobs (`bool`):
                Whether log-probs were asked for.
        """
        extra = check.generation_kwargs(body.get("generation_kwargs"))
        fields = {key: (key, body.get(key)) for key in _SAMPLING_DEFAULTS}
        for key in list(extra):
            if key in _SAMPLING_DEFAULTS and extra[key] is not None:
                fields[key] = (f"generation_kwargs.{key}", extra.pop(key))
        values = {}
        for key, (name, value) in fields.items():
            if key in _INTEGER_FIELDS:
                values[key] = check.integer({name: value}, name, _SAMPLING_DEFAULTS[key], _INTEGER_FIELDS[key])
            else:
                values[key] = check.number({name: value}, name, _SAMPLING_DEFAULTS[key])
        if values["n"] > self.policy.max_n:
            raise RequestError(f"`n` = {values['n']} is over the server's `--max_n` ({self.policy.max_n}).")
        try:
            return SamplingParams(**values, generation_kwargs=extra, return_logprobs=return_logprobs)
        except (TypeError, ValueError) as error:
            raise RequestError(str(error)) from error

    def _check_budget(self, prompt_ids: list[list[int]], sampling: SamplingParams) -> None:
        total = sum(map(len, prompt_ids)) + len(prompt_ids) * sampling.n * sampling.max_tokens
        if total > self.policy.max_total_tokens:
            raise RequestError(
                f"This request involves {total} tokens (prompt tokens + prompts x `n` x `max_tokens`), over the "
                f"server's `--max_total_tokens` ({self.policy.max_total_tokens}): send fewer prompts or lower `n` "
                "or `max_tokens`."
            )

    def _tokenize(self, prompts: list, truncate: int | None, name: str = "prompts") -> list[list[int]]:
        limit = self.policy.max_prompt_tokens
        if all(isinstance(p, str) for p in prompts):
            for index, prompt in enumerate(prompts):
                if not prompt:
                    raise RequestError(f"`{name}[{index}]` is empty: every prompt needs at least one token.")
                if len(prompt) > limit * _CHARS_PER_TOKEN:
                    raise RequestError(
                        f"`{name}[{index}]` has {len(prompt)} characters, over the {limit * _CHARS_PER_TOKEN} a "
                        f"prompt may have ({_CHARS_PER_TOKEN} per token of `--max_prompt_tokens`)."
                    )
            with self.tokenizer_lock:
                ids = [self.tokenizer(p)["input_ids"] for p in prompts]
        elif all(isinstance(p, list) for p in prompts):
            ids = [list(check.token_ids(p, f"{name}[{i}]", self.vocab_size)) for i, p in enumerate(prompts)]
        else:
            raise RequestError(f"`{name}` must be all strings or all token-id lists.")
        if truncate is not None:
            ids = [p[-truncate:] for p in ids]
        for index, prompt in enumerate(ids):
            if len(prompt) > limit:
                raise RequestError(
                    f"`{name}[{index}]` has {len(prompt)} tokens, over the server's `--max_prompt_tokens` ({limit}): "
                    "shorten it or set `truncate_prompt_tokens`."
                )
        return ids

    def _decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        with self.tokenizer_lock:
            return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    # ------------------------------------------------------------------ generation

    def generate(self, body: dict) -> dict:
        self._check_keys(body, _GENERATE_KEYS, "/generate/")
        prompts = body.get("prompts")
        if not isinstance(prompts, list):
            raise RequestError("`prompts` must be a list of strings or of token-id lists.")
        truncate = check.integer(body, "truncate_prompt_tokens", None, minimum=1)
        regex = check.optional(body, "guided_decoding_regex", str, "a regular expression (a string)")
        images = check.image_entries(body.get("images"), len(prompts))
        sampling = self.sampling_from_request(body, self._wants_logprobs(body.get("logprobs", 0)))
        prompt_ids = self._tokenize(prompts, truncate) if prompts else []
        self._check_budget(prompt_ids, sampling)
        images = self._decode_images(images, "images") if images is not None else None
        return _generation_answer(self._run(prompt_ids, sampling, images, regex))

    def chat(self, body: dict) -> dict:
        self._check_keys(body, _CHAT_KEYS, "/chat/")
        conversations = body.get("messages")
        if not isinstance(conversations, list):
            raise RequestError("`messages` must be a list of conversations (lists of messages).")
        regex = check.optional(body, "guided_decoding_regex", str, "a regular expression (a string)")
        sampling = self.sampling_from_request(body, self._wants_logprobs(body.get("logprobs", 0)))
        tools, template, kwargs = body.get("tools"), body.get("chat_template"), body.get("chat_template_kwargs")
        rendered = [
            self._render_chat(c, f"messages[{i}]", tools, template, kwargs) for i, c in enumerate(conversations)
        ]
        prompt_ids = [ids for ids, _ in rendered]
        self._check_budget(prompt_ids, sampling)
        images = self._message_images([images for _, images in rendered], "messages")
        return _generation_answer(self._run(prompt_ids, sampling, images, regex))

    def get_sequence_logprobs(self, body: dict) -> dict:
        self._check_keys(
            body, {"sequences", "prompt_lengths", "top_logprobs", "temperature"}, "/get_sequence_logprobs/"
        )
        sequences, prompt_lengths = body.get("sequences"), body.get("prompt_lengths")
        if not isinstance(sequences, list) or not isinstance(prompt_lengths, list):
            raise RequestError("`sequences` and `prompt_lengths` must be lists.")
        if len(sequences) != len(prompt_lengths):
            raise RequestError("`prompt_lengths` needs one entry per sequence.")
        top_logprobs = check.integer(body, "top_logprobs", 100, minimum=1)
        temperature = check.number(body, "temperature", 1.0)
        if temperature <= 0:
            raise RequestError(f"`temperature` must be > 0, got {temperature}.")
        for index, (sequence, length) in enumerate(zip(sequences, prompt_lengths)):
            check.token_ids(sequence, f"sequences[{index}]", self.vocab_size)
            check.check_integer(length, f"prompt_lengths[{index}]", minimum=1)
            if length > len(sequence):
                raise RequestError(
                    f"`prompt_lengths[{index}]` = {length} is longer than its sequence ({len(sequence)})."
                )
        scored = sum(len(s) - length for s, length in zip(sequences, prompt_lengths))
        total = max(sum(map(len, sequences)), scored * min(top_logprobs, self.vocab_size))
        if total > self.policy.max_total_tokens:
            raise RequestError(
                f"This request involves {total} values (tokens, or scored positions x `top_logprobs`), over the "
                f"server's `--max_total_tokens` ({self.policy.max_total_tokens}): send fewer sequences per request "
                "(`chunk_size`) or a smaller `top_logprobs`."
            )
        if not sequences:
            return {"logprobs": [], "logprob_token_ids": [], "actual_logprobs": [], "actual_token_ids": []}
        return self._engine_call(self.engine.sequence_logprobs, sequences, prompt_lengths, top_logprobs, temperature)

    def _run(self, prompt_ids, sampling, images, regex) -> GenerationResult:
        if not prompt_ids:
            return GenerationResult(completion_ids=[], finish_reasons=[], logprobs=[], prompt_ids=[])
        deadline = getattr(self._local, "deadline", None)
        return self._engine_call(
            self.engine.generate, prompt_ids, sampling, images=images, regex=regex, deadline=deadline
        )

    def _message_images(self, images: list[list[str]], name: str) -> list[list[Any]] | None:
        """The decoded images of rendered conversations (`None` when there are none)."""
        return self._decode_images(images, name) if any(images) else None

    def _decode_images(self, images: list[list[str]], name: str) -> list[list[Any]]:
        if not getattr(self.engine, "accepts_images", False):
            raise RequestError(TEXT_ONLY_MODEL)
        return self.policy.decode_images(images, name)

    def _render_chat(self, conversation, name, tools=None, chat_template=None, template_kwargs=None):
        """The token ids of `conversation` rendered with the chat template (image parts become the model's image
        placeholder), and the base64 data of its images in order."""
        conversation, images = check.split_message_images(check.messages(conversation, name))
        if images and not getattr(self.engine, "accepts_images", False):
            raise RequestError(TEXT_ONLY_MODEL)
        check.optional({"tools": tools}, "tools", list, "a list of tool schemas (objects)")
        if tools is not None and not all(isinstance(tool, dict) for tool in tools):
            raise RequestError("`tools` must be a list of tool schemas (JSON objects).")
        template_kwargs = check.template_kwargs(template_kwargs, _TEMPLATE_RESERVED)
        max_chars = self.policy.max_prompt_tokens * _CHARS_PER_TOKEN
        if chat_template is not None:
            text = self._render_request_template(conversation, tools, chat_template, template_kwargs, max_chars)
        else:
            if getattr(self.tokenizer, "chat_template", None) is None:
                raise RequestError("The served tokenizer has no chat template, and `chat_template` is not set.")
            try:
                with self.tokenizer_lock:
                    text = self.tokenizer.apply_chat_template(
                        conversation, tools=tools, add_generation_prompt=True, tokenize=False, **template_kwargs
                    )
            except Exception as error:  # the (trusted) template refused these messages
                raise RequestError(f"`{name}`: the model's chat template failed on them: {error}") from error
        if len(text) > max_chars:
            raise RequestError(f"`{name}` renders to {len(text)} characters, over the {max_chars} allowed.")
        with self.tokenizer_lock:
            return self._tokenize_rendered(text, name), images

    def _tokenize_rendered(self, text: str, name: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > self.policy.max_prompt_tokens:
            raise RequestError(
                f"`{name}` renders to {len(ids)} tokens, over the server's `--max_prompt_tokens` "
                f"({self.policy.max_prompt_tokens})."
            )
        if not ids:
            raise RequestError(f"`{name}` renders to an empty prompt.")
        return ids

    def _render_request_template(self, conversation, tools, template, template_kwargs, max_chars) -> str:
        if self.templates is None:
            raise RequestError(
                "`chat_template` in requests is off on this server: leave it unset (the model's template is used) "
                "or start the server with `--allow_request_chat_template`."
            )
        if not isinstance(template, str):
            raise RequestError("`chat_template` must be a Jinja template (a string).")
        special = {
            key: str(value) for key, value in self.tokenizer.special_tokens_map.items() if isinstance(value, str)
        }
        variables = {**special, **template_kwargs, "messages": conversation, "tools": tools}
        variables["add_generation_prompt"] = True
        return self.templates.render(template, variables, self.policy.chat_template_timeout, max_chars)

    # ------------------------------------------------------------------ weight sync

    def init_communicator(self, body: dict) -> dict:
        self._check_keys(body, {"host", "port", "world_size", "client_device_uuid"}, "/init_communicator/")
        for key in ("host", "client_device_uuid"):
            check.optional(body, key, str, "a string")
        port = check.integer(body, "port", None, minimum=0)
        if port is not None and port > 65535:
            raise RequestError(f"`port` must be a TCP port (0-65535), got {port}.")
        world_size = check.integer(body, "world_size", None, minimum=0)
        self._engine_call(
            self.engine.init_communicator,
            host=body.get("host"),
            port=port,
            world_size=world_size,
            client_device_uuid=body.get("client_device_uuid"),
            late_is_error=False,
        )
        return {"status": "ok"}

    def update_named_param(self, body: dict) -> dict:
        self._check_keys(body, {"name", "dtype", "shape", "data"}, "/update_named_param/")
        _check_weight_entry(body, "", with_data=self.engine.weight_transport == "http")
        if self.engine.weight_transport == "http":
            self._engine_call(self.engine.update_named_params, [body], late_is_error=False)
        else:
            if "data" in body:
                raise RequestError("A vLLM server receives tensors by NCCL: send `name`, `dtype`, `shape` only.")
            update = self.engine.update_named_param
            self._engine_call(update, body["name"], body["dtype"], body["shape"], late_is_error=False)
        return {"status": "ok"}

    def update_named_params(self, body: dict) -> dict:
        self._check_keys(body, {"params"}, "/update_named_params/")
        params = check.optional(body, "params", list, "a list of `{name, dtype, shape, data}` objects") or []
        for index, entry in enumerate(params):
            if not isinstance(entry, dict):
                raise RequestError(f"`params[{index}]` must be an object with `name`, `dtype`, `shape`, `data`.")
            self._check_keys(entry, {"name", "dtype", "shape", "data"}, f"`params[{index}]`")
            _check_weight_entry(entry, f"params[{index}].", with_data=True)
        self._engine_call(self.engine.update_named_params, params, late_is_error=False)
        return {"status": "ok"}


def _check_weight_entry(entry: dict, prefix: str, with_data: bool) -> None:
    from trl.generation.vllm_client import parse_dtype

    if not isinstance(entry.get("name"), str) or not entry["name"]:
        raise RequestError(f"`{prefix}name` is required: the parameter's name (a string).")
    if not isinstance(entry.get("dtype"), str):
        raise RequestError(f"`{prefix}dtype` is required: a torch dtype name such as 'torch.float32'.")
    try:
        parse_dtype(entry["dtype"])
    except ValueError as error:
        raise RequestError(f"`{prefix}dtype`: {error}") from None
    shape = entry.get("shape")
    if not isinstance(shape, list):
        raise RequestError(f"`{prefix}shape` is required: a list of non-negative integers.")
    for index, size in enumerate(shape):
        check.check_integer(size, f"{prefix}shape[{index}]", minimum=0)
    if with_data and not isinstance(entry.get("data"), str):
        raise RequestError(f"`{prefix}data` is required on this server: the tensor's bytes in base64 (a string).")


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


def build_app(script_args: ScriptArguments) -> ServerApp:
    """
    Load the tokenizer and the engine named by `script_args.backend` (resolved by [`resolve_backend`]).

    Args:
        script_args ([`ScriptArguments`]):
            The server arguments.
    """
    from transformers import AutoTokenizer

    policy = ServerPolicy.from_args(script_args)  # checked before any model loads
    backend = resolve_backend(script_args.backend)
    check_engine_flags(script_args, backend)  # unknown flags: for vLLM, refused with transformers
    tokenizer = AutoTokenizer.from_pretrained(
        script_args.model, revision=script_args.revision, trust_remote_code=script_args.trust_remote_code
    )
    engine = TransformersEngine(script_args, tokenizer) if backend == "transformers" else VLLMEngine(script_args)
    return ServerApp(engine, tokenizer, script_args.model, policy)
