"""The HTTP application of `trl vllm-serve`: the reference's endpoints (health, world size, generate, chat, weight
sync, prefix cache) plus OpenAI-compatible `/v1/completions` and `/v1/chat/completions`, served by the standard
library's threading HTTP server."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from trl.generation.base import GenerationResult, SamplingParams, sanitize_logprob
from trl.generation.server_engines import (
    VLLM_MISSING,
    EndpointNotFound,
    RequestError,
    TransformersEngine,
    VLLMEngine,
)
from trl.import_utils import is_vllm_available


if TYPE_CHECKING:
    from trl.scripts.vllm_serve import ScriptArguments

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
