"""The OpenAI-compatible endpoints of `trl vllm-serve`: `/v1/models`, `/v1/completions`, `/v1/chat/completions`
(mixed into [`~trl.generation.server_app.ServerApp`])."""

from __future__ import annotations

import time
import uuid

from trl.generation.base import GenerationResult, SamplingParams, sanitize_logprob
from trl.generation.server_engines import RequestError
from trl.generation.server_validation import check_integer, integer, optional


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
COMPLETIONS_KEYS = _OPENAI_COMMON | {"prompt", "logprobs"}
CHAT_COMPLETIONS_KEYS = _OPENAI_COMMON | {"messages", "max_completion_tokens", "logprobs", "top_logprobs"}
CHAT_COMPLETIONS_KEYS |= {"tools", "tool_choice", "chat_template", "chat_template_kwargs", "add_generation_prompt"}


class OpenAIEndpoints:
    """The `/v1/*` handlers; the host class provides `engine`, `tokenizer`, `model_name`, `_tokenize`,
    `_render_chat`, `_message_images`, `_run`, `_check_budget`, `_decode` and `sampling_from_request`."""

    def v1_models(self, body: dict) -> dict:
        created = int(time.time())
        model = {"id": self.model_name, "object": "model", "created": created, "owned_by": "trl"}
        return {"object": "list", "data": [{**model, "max_model_len": self.engine.max_model_len}]}

    def v1_completions(self, body: dict) -> dict:
        self._check_keys(body, COMPLETIONS_KEYS, "/v1/completions")
        self._check_openai(body)
        prompt = body.get("prompt")
        if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], int)):
            prompt = [prompt]
        if not isinstance(prompt, list) or not prompt:
            raise RequestError("`prompt` must be a string, a token-id list, or a non-empty list of either.")
        logprobs = body.get("logprobs")
        if logprobs is not None and not isinstance(logprobs, bool):
            check_integer(logprobs, "logprobs", minimum=0)
        with_logprobs = self._wants_logprobs(logprobs)
        prompt_ids = self._tokenize(prompt, None, "prompt")
        sampling = self._openai_sampling(body, body.get("max_tokens"), with_logprobs, prompt_ids, "max_tokens")
        result = self._run(prompt_ids, sampling, None, None)
        logprobs_format = self._completion_logprobs if with_logprobs else None
        choices = self._choices(body, result, logprobs_format, lambda ids: {"text": self._decode(ids)})
        if body.get("return_token_ids"):
            for index, (choice, completion) in enumerate(zip(choices, result.completion_ids)):
                choice.update(prompt_token_ids=prompt_ids[index // sampling.n], token_ids=completion)
        return self._openai_answer("cmpl", "text_completion", choices, prompt_ids, result)

    def v1_chat_completions(self, body: dict) -> dict:
        self._check_keys(body, CHAT_COMPLETIONS_KEYS, "/v1/chat/completions")
        self._check_openai(body)
        if body.get("add_generation_prompt") is False:
            raise RequestError("`add_generation_prompt=false` is not supported.")
        if body.get("tool_choice") not in (None, "none", "auto"):
            raise RequestError("Only `tool_choice` 'none' or 'auto' (tool calls are returned as text) is supported.")
        optional(body, "logprobs", bool, "true or false")
        top_logprobs = integer(body, "top_logprobs", 0, minimum=0)
        conversation, tools = body.get("messages"), body.get("tools")
        template, template_kwargs = body.get("chat_template"), body.get("chat_template_kwargs")
        prompt, images = self._render_chat(conversation, "messages", tools, template, template_kwargs)
        prompt_ids = [prompt]
        with_logprobs = bool(body.get("logprobs")) and self._wants_logprobs(top_logprobs, "top_logprobs")
        name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        sampling = self._openai_sampling(body, body.get(name), with_logprobs, prompt_ids, name)
        result = self._run(prompt_ids, sampling, self._message_images([images], "messages"), None)
        message = lambda ids: {"message": {"role": "assistant", "content": self._decode(ids)}}  # noqa: E731
        choices = self._choices(body, result, self._chat_logprobs if with_logprobs else None, message)
        if body.get("return_token_ids"):
            for choice, completion in zip(choices, result.completion_ids):
                choice["token_ids"] = completion
        answer = self._openai_answer("chatcmpl", "chat.completion", choices, prompt_ids, result)
        if body.get("return_token_ids"):
            answer["prompt_token_ids"] = prompt_ids[0]
        return answer

    def _choices(self, body: dict, result: GenerationResult, logprobs_format, content) -> list[dict]:
        """One OpenAI choice per completion: its `content(ids)` (text or message), log-probs in `logprobs_format`
        (`None`: not asked for) and finish reason."""
        as_ids = bool(body.get("return_tokens_as_token_ids"))
        return [
            {
                "index": index,
                **content(completion),
                "logprobs": logprobs_format(completion, result.logprobs[index], as_ids) if logprobs_format else None,
                "finish_reason": result.finish_reasons[index],
            }
            for index, completion in enumerate(result.completion_ids)
        ]

    def _check_openai(self, body: dict) -> None:
        model = optional(body, "model", str, "the served model's id")
        if model not in (None, self.model_name):
            raise RequestError(f"The model {model!r} is not served here; this server serves {self.model_name!r}.")
        for key, neutral in _OPENAI_NEUTRAL.items():
            if key in body and body[key] not in neutral:
                raise RequestError(f"`{key}={body[key]!r}` is not supported by `trl vllm-serve`; leave it unset.")
        if body.get("best_of") not in (None, body.get("n", 1)):
            raise RequestError("`best_of` is not supported; leave it unset.")
        for key in ("return_token_ids", "return_tokens_as_token_ids"):
            optional(body, key, bool, "true or false")
        optional(body, "user", str, "a string")

    def _openai_sampling(self, body, max_tokens, with_logprobs, prompt_ids, name) -> SamplingParams:
        if max_tokens is None:
            if self.engine.max_model_len is None:
                raise RequestError("Set `max_tokens`: the server does not know the model's length.")
            max_tokens = self.engine.max_model_len - max(map(len, prompt_ids))
        else:
            max_tokens = check_integer(max_tokens, name, minimum=1)
        request = {key: body.get(key) for key in ("n", "temperature", "top_p", "top_k", "min_p", "repetition_penalty")}
        seed = integer(body, "seed", None)
        request.update(max_tokens=max_tokens, generation_kwargs={"seed": seed} if seed is not None else {})
        sampling = self.sampling_from_request(request, with_logprobs)
        self._check_budget(prompt_ids, sampling)
        return sampling

    def _token_text(self, token: int, as_ids: bool) -> str:
        return f"token_id:{token}" if as_ids else self._decode([token], skip_special_tokens=False)

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
