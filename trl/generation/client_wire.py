"""What travels between [`~trl.generation.vllm_client.VLLMClient`] and `trl vllm-serve` besides plain JSON: images
as base64 PNG, tensors as base64 bytes with dtype and shape, and OpenAI-format log-probs read back into lists. Every
name here is also importable from `trl.generation.vllm_client`."""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
import math
from collections.abc import Iterator
from io import BytesIO
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    import torch


def pil_to_base64(image) -> str:
    """
    Encode a PIL image as base64 PNG.

    Args:
        image (`PIL.Image.Image`):
            The image.
    """
    buffer = BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def encode_prompt_images(images: list | None) -> list | None:
    """
    The `images` field of a `/generate/` request: per prompt, `None`, one base64 PNG (for one image, the
    reference's format) or a list of them.

    Args:
        images (`list` or `None`):
            One entry per prompt: `None`, a PIL image, or a list of PIL images (in the order of the prompt's image
            placeholders).
    """
    if not images:
        return None
    encoded = []
    for entry in images:
        if entry is None or isinstance(entry, list | tuple):
            encoded.append([pil_to_base64(image) for image in entry] if entry else None)
        else:
            encoded.append(pil_to_base64(entry))
    return encoded if any(entry is not None for entry in encoded) else None


def to_openai_messages(messages: list[dict]) -> list[dict]:
    """
    Turn trl-style messages into OpenAI-style ones: image parts (`{"type": "image", "image": <PIL>}` or
    `{"type": "image_pil", "image_pil": <PIL>}`) become `{"type": "image_url", "image_url": {"url": "data:..."}}`.

    Args:
        messages (`list[dict]`):
            The conversation. It is not modified.

    Returns:
        `list[dict]`: A converted copy.
    """
    converted = copy.deepcopy(messages)
    for message in converted:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for index, part in enumerate(content):
            kind = part.get("type")
            if kind in ("image", "image_pil") and not isinstance(part.get(kind), str | type(None)):
                url = f"data:image/png;base64,{pil_to_base64(part[kind])}"
                content[index] = {"type": "image_url", "image_url": {"url": url}}
    return converted


def parse_logprobs(choices_logprobs: list[dict | None]) -> tuple[list | None, list | None]:
    """
    Read the OpenAI-format log-probs of a batch of choices into `(logprobs, token_ids)` lists of shape
    `[sequence][position][rank]`, ranks sorted by decreasing log-prob, the sampled token always included.

    The tokens must be sent as ids (`"token_id:<id>"`, the server's `return_tokens_as_token_ids=True`).

    Args:
        choices_logprobs (`list[dict | None]`):
            Each choice's `logprobs` field: `{"tokens", "token_logprobs", "top_logprobs"}` (completions) or
            `{"content": [{"token", "logprob", "top_logprobs"}]}` (chat completions).

    Returns:
        `tuple`: `(logprobs, token_ids)`, or `(None, None)` when the choices carry no log-probs. A NaN log-prob
        becomes `None`.
    """
    if not choices_logprobs or choices_logprobs[0] is None:
        return None, None
    all_logprobs, all_token_ids = [], []
    for choice in choices_logprobs:
        sequence_logprobs, sequence_ids = [], []
        for token, logprob, top in _logprob_positions(choice):
            candidates = {token: logprob, **(top or {})}
            ranked = sorted(candidates.items(), key=lambda item: -_sortable(item[1]))
            sequence_ids.append([_token_id(name) for name, _ in ranked])
            sequence_logprobs.append([None if value is None or math.isnan(value) else value for _, value in ranked])
        all_logprobs.append(sequence_logprobs)
        all_token_ids.append(sequence_ids)
    return all_logprobs, all_token_ids


def _logprob_positions(choice: dict) -> Iterator[tuple[str, float | None, dict | None]]:
    if "content" in choice:
        for entry in choice["content"] or []:
            top = {item["token"]: item["logprob"] for item in entry.get("top_logprobs") or []}
            yield entry["token"], entry["logprob"], top
    else:
        tops = choice.get("top_logprobs") or [None] * len(choice["tokens"])
        yield from zip(choice["tokens"], choice["token_logprobs"], tops)


def _sortable(value: float | None) -> float:
    return -math.inf if value is None or math.isnan(value) else value


def _token_id(token: str) -> int:
    if not token.startswith("token_id:"):
        raise ValueError(
            f"Token {token!r} is not an id: request the log-probs with `return_tokens_as_token_ids=True`."
        )
    return int(token.removeprefix("token_id:"))


def vocabulary_fingerprint(tokenizer) -> dict[str, Any]:
    """
    `{"size", "sha256"}` of a tokenizer's vocabulary (every `token -> id` pair): two tokenizers with the same
    fingerprint map every token to the same id. `trl vllm-serve` reports it in `/get_server_info/`, so a trainer
    can check that a served teacher shares its student's tokenizer.

    Args:
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            The tokenizer.
    """
    pairs = sorted(tokenizer.get_vocab().items())
    digest = hashlib.sha256(json.dumps(pairs, ensure_ascii=False).encode()).hexdigest()
    return {"size": len(pairs), "sha256": digest}


def encode_tensor(tensor: torch.Tensor) -> dict[str, Any]:
    """
    A JSON-able `{"dtype", "shape", "data"}` description of a tensor, its raw bytes in base64.

    Args:
        tensor (`torch.Tensor`):
            Any dtype (bfloat16 included), any device.
    """
    import torch

    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    raw = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
    return {"dtype": str(tensor.dtype), "shape": list(tensor.shape), "data": base64.b64encode(raw).decode("ascii")}


def decode_tensor(payload: dict[str, Any]) -> torch.Tensor:
    """
    The tensor described by [`encode_tensor`]'s output (on CPU).

    Args:
        payload (`dict`):
            `{"dtype": "torch.float32", "shape": [..], "data": "<base64>"}`.
    """
    import torch

    dtype = parse_dtype(payload["dtype"])
    shape = [int(size) for size in payload["shape"]]
    try:
        raw = base64.b64decode(payload["data"], validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise ValueError("`data` is not valid base64 (standard alphabet, with padding).") from None
    if not raw:
        if math.prod(shape) != 0:
            raise ValueError(f"Tensor data is empty but shape {shape} needs {math.prod(shape)} values.")
        return torch.empty(shape, dtype=dtype)
    itemsize = torch.empty((), dtype=dtype).element_size()
    if len(raw) % itemsize:
        raise ValueError(f"Tensor data holds {len(raw)} bytes, not a whole number of {dtype} values.")
    tensor = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype)
    if tensor.numel() != math.prod(shape):
        raise ValueError(f"Tensor data holds {tensor.numel()} values but shape {shape} needs {math.prod(shape)}.")
    return tensor.reshape(shape)


def parse_dtype(name: str) -> torch.dtype:
    """
    The torch dtype called `name` (`"torch.bfloat16"` or `"bfloat16"`).

    Args:
        name (`str`):
            The dtype's name.
    """
    import torch

    dtype = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"Unknown dtype {name!r}; use a torch dtype name such as 'torch.bfloat16'.")
    return dtype
