"""What keeps `trl vllm-serve` from being taken over or wedged: the API key, the hosts allowed to change weights, the
size and time limits on requests, the bounded, time-limited reading of request bodies, and the bounded decoding of
request images."""

from __future__ import annotations

import base64
import binascii
import hmac
import io
import ipaddress
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

from trl.generation.server_engines import RequestError
from trl.generation.vllm_client import API_KEY_ENV  # read by the server and the client alike


logger = logging.getLogger("trl.vllm_serve")

# Endpoints that change the served weights or the weight-sync group (restricted by `weight_update_allowed_hosts`).
WEIGHT_ENDPOINTS = frozenset(
    {"/init_communicator", "/update_named_param", "/update_named_params", "/close_communicator"}
)
_WEIGHT_BODY_ENDPOINTS = frozenset({"/update_named_param", "/update_named_params"})
_READ_CHUNK = 1 << 16
# Pillow decoders a request image may use: still-image formats only (no TIFF, PSD, EPS or other exotic parsers).
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")


class HTTPFailure(Exception):
    """
    A request answered with `status` and this message (`{"detail": message, **extra}`).

    Args:
        status (`int`):
            The HTTP status.
        message (`str`):
            What went wrong and how to fix it.
        extra (`dict` or `None`, *optional*, defaults to `None`):
            More fields of the JSON answer.
        close (`bool`, *optional*, defaults to `False`):
            Close the connection after answering (the body may be unread).
        headers (`dict` or `None`, *optional*, defaults to `None`):
            Extra response headers.
    """

    def __init__(self, status: int, message: str, extra: dict | None = None, close: bool = False, headers=None):
        super().__init__(message)
        self.status = status
        self.extra = extra or {}
        self.close = close
        self.headers = headers or {}


@dataclass
class ServerPolicy:
    """
    The access rules and limits of a `trl vllm-serve` server (built from its arguments by [`ServerPolicy.from_args`]).

    Args:
        api_key (`str` or `None`, *optional*, defaults to `None`):
            When set, every request must send `Authorization: Bearer <api_key>` (401 otherwise).
        weight_update_allowed_hosts (`list[str]` or `None`, *optional*, defaults to `None`):
            Addresses, networks (`10.0.0.0/24`) or host names allowed to call the weight-update and communicator
            endpoints (403 for others). `None` allows every (authenticated) client.
        max_request_bytes (`int`, *optional*, defaults to `16777216`):
            Largest request body (16 MiB), weight updates excepted (413 above).
        max_weight_update_bytes (`int`, *optional*, defaults to `1073741824`):
            Largest body of `/update_named_param/` and `/update_named_params/` (1 GiB).
        max_prompt_tokens (`int`, *optional*, defaults to `32768`):
            Most tokens in one prompt (after `truncate_prompt_tokens`); text prompts over 16 characters per allowed
            token are refused before tokenizing.
        max_n (`int`, *optional*, defaults to `256`):
            Largest `n` (completions per prompt).
        max_total_tokens (`int`, *optional*, defaults to `8388608`):
            Most tokens one request may involve: prompt tokens plus `n * max_tokens` per prompt (for
            `/get_sequence_logprobs/`: the sequences' tokens, and scored positions times `top_logprobs`).
        request_timeout (`float`, *optional*, defaults to `600.0`):
            Seconds a request may wait for and use the engine (503 when it waits longer, 504 when generation runs
            longer); a generation running past it makes `/health/` report the engine wedged.
        read_timeout (`float`, *optional*, defaults to `60.0`):
            Seconds a client has to send a request's line, headers and body (408 after), and an idle kept-alive
            connection stays open.
        allow_request_chat_template (`bool`, *optional*, defaults to `False`):
            Accept a `chat_template` in requests (rendered in a sandboxed, memory-limited process).
        chat_template_timeout (`float`, *optional*, defaults to `2.0`):
            Seconds a request-supplied chat template may take to render.
        max_connections (`int`, *optional*, defaults to `256`):
            Connections served at once; more are answered 503 and closed.
        max_images (`int`, *optional*, defaults to `64`):
            Most images in one request (all prompts together).
        max_image_bytes (`int`, *optional*, defaults to `8388608`):
            Largest encoded image (8 MiB after base64 decoding).
        max_image_pixels (`int`, *optional*, defaults to `16777216`):
            Most pixels (width x height) of one image, read from its header before it is decoded (a guard against
            decompression bombs).
    """

    api_key: str | None = None
    weight_update_allowed_hosts: list[str] | None = None
    max_request_bytes: int = 16 * 2**20
    max_weight_update_bytes: int = 2**30
    max_prompt_tokens: int = 32768
    max_n: int = 256
    max_total_tokens: int = 2**23
    request_timeout: float = 600.0
    read_timeout: float = 60.0
    allow_request_chat_template: bool = False
    chat_template_timeout: float = 2.0
    max_connections: int = 256
    max_images: int = 64
    max_image_bytes: int = 8 * 2**20
    max_image_pixels: int = 2**24

    def __post_init__(self):
        for name in ("max_request_bytes", "max_weight_update_bytes", "max_prompt_tokens", "max_n"):
            if getattr(self, name) < 1:
                raise ValueError(f"`--{name}` must be at least 1, got {getattr(self, name)}.")
        for name in ("max_total_tokens", "max_connections", "max_images", "max_image_bytes", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"`--{name}` must be at least 1, got {getattr(self, name)}.")
        for name in ("request_timeout", "read_timeout", "chat_template_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`--{name}` must be a positive number of seconds, got {getattr(self, name)}.")
        self.api_key = self.api_key or None
        self._allowed = _resolve_networks(self.weight_update_allowed_hosts)

    @classmethod
    def from_args(cls, args: Any) -> ServerPolicy:
        """
        The policy of the `trl vllm-serve` arguments `args`; the API key falls back on `$TRL_VLLM_SERVER_API_KEY`.

        Args:
            args ([`~trl.generation.server_args.ScriptArguments`]):
                The server arguments.
        """
        names = [name for name in cls.__dataclass_fields__ if name != "api_key"]
        values = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
        return cls(api_key=getattr(args, "api_key", None) or os.environ.get(API_KEY_ENV), **values)

    # ------------------------------------------------------------------ access

    def authorize(self, headers, peer: str, path: str) -> None:
        """
        Check the API key, then (for weight endpoints) the client's address.

        Args:
            headers (`email.message.Message`):
                The request headers.
            peer (`str`):
                The client's IP address.
            path (`str`):
                The request path, without a trailing `/`.

        Raises:
            HTTPFailure: 401 without the right key, 403 for a weight endpoint called from a host not allowed.
        """
        if self.api_key is not None:
            scheme, _, token = (headers.get("Authorization") or "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
                raise HTTPFailure(
                    401,
                    "Missing or wrong API key: send `Authorization: Bearer <key>` (VLLMClient(api_key=...) or "
                    f"${API_KEY_ENV} does it).",
                    close=True,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        if path in WEIGHT_ENDPOINTS and self._allowed is not None and not _address_in(peer, self._allowed):
            raise HTTPFailure(
                403,
                f"{path}/ is not allowed from {peer}: add this address to the server's "
                "`--weight_update_allowed_hosts`.",
                close=True,
            )

    def body_limit(self, path: str) -> int:
        """The largest body accepted at `path` (without a trailing `/`)."""
        return self.max_weight_update_bytes if path in _WEIGHT_BODY_ENDPOINTS else self.max_request_bytes

    def limit_flag(self, path: str) -> str:
        return "--max_weight_update_bytes" if path in _WEIGHT_BODY_ENDPOINTS else "--max_request_bytes"

    def describe(self) -> dict:
        """The limits a client may want to know (reported by `/get_server_info/`)."""
        names = ["max_request_bytes", "max_weight_update_bytes", "max_prompt_tokens", "max_n", "max_total_tokens"]
        names += [
            "request_timeout",
            "allow_request_chat_template",
            "max_images",
            "max_image_bytes",
            "max_image_pixels",
        ]
        return {name: getattr(self, name) for name in names}

    def decode_images(self, entries: list[list[str]], name: str = "images") -> list[list[Any]]:
        """
        The RGB PIL images of a request, one list per prompt, decoded within the image limits.

        Args:
            entries (`list[list[str]]`):
                Base64 images (optionally `data:image/...;base64,` URLs), one list per prompt.
            name (`str`, *optional*, defaults to `"images"`):
                The field, named in errors.

        Raises:
            RequestError: More than `max_images` images, or an image that is not base64, too large, not one of
                [`IMAGE_FORMATS`] or corrupt (400).
        """
        total = sum(len(entry) for entry in entries)
        if total > self.max_images:
            raise RequestError(
                f"The request holds {total} images, over the server's `--max_images` ({self.max_images}): send "
                "fewer images per request."
            )
        decoded = []
        for i, row in enumerate(entries):
            decoded.append([self._decode_image(data, f"{name}[{i}][{j}]") for j, data in enumerate(row)])
        return decoded

    def _decode_image(self, data: str, name: str):
        from PIL import Image, UnidentifiedImageError

        if data.startswith("data:"):
            header, _, data = data.partition(",")
            if not header.endswith(";base64") or not header[5:].startswith("image/"):
                raise RequestError(f"`{name}`: a data URL must be `data:image/<format>;base64,<data>`.")
        if len(data) > 4 * (self.max_image_bytes // 3 + 1):
            raise RequestError(
                f"`{name}` is over the server's `--max_image_bytes` ({self.max_image_bytes}): send smaller images."
            )
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(f"`{name}` is not valid base64 (standard alphabet, with padding).") from None
        if len(raw) > self.max_image_bytes:
            raise RequestError(
                f"`{name}` is over the server's `--max_image_bytes` ({self.max_image_bytes}): send smaller images."
            )
        try:
            image = Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS)  # reads the header only
            width, height = image.size
            if width * height > self.max_image_pixels:
                raise RequestError(
                    f"`{name}` is {width}x{height} pixels, over the server's `--max_image_pixels` "
                    f"({self.max_image_pixels}): resize it before sending."
                )
            image.load()
            return image.convert("RGB")
        except RequestError:
            raise
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
            raise RequestError(
                f"`{name}` is not a readable {'/'.join(IMAGE_FORMATS)} image ({type(error).__name__}: {error})."
            ) from None

    def warn_if_exposed(self, host: str) -> None:
        """Warn loudly when the server listens beyond loopback without an API key."""
        if self.api_key is not None or is_loopback(host):
            return
        banner = "!" * 100
        message = (
            f"\n{banner}\n  trl vllm-serve listens on {host!r} WITHOUT AN API KEY: anyone who can reach this port can "
            "generate\n  with the model and REPLACE ITS WEIGHTS. Set `--api_key` (or $"
            f"{API_KEY_ENV}) and pass the same key to the\n  trainer (VLLMClient(api_key=...) or the same environment "
            "variable), restrict weight updates with\n  `--weight_update_allowed_hosts <trainer address>`, or listen "
            f"on loopback only (`--host 127.0.0.1`).\n{banner}"
        )
        logger.warning(message)
        print(message, file=sys.stderr, flush=True)


def is_loopback(host: str) -> bool:
    """
    Whether `host` (an address or a name) resolves only to loopback addresses.

    Args:
        host (`str`):
            The listening address, e.g. `"127.0.0.1"`, `"::1"`, `"localhost"` or `"0.0.0.0"`.
    """
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def _resolve_networks(hosts: list[str] | None) -> list | None:
    if hosts is None:
        return None
    if isinstance(hosts, str):
        hosts = [hosts]
    networks = []
    for entry in (part.strip() for host in hosts for part in str(host).split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
            continue
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(entry, None)
        except OSError as error:
            raise ValueError(
                f"`--weight_update_allowed_hosts`: cannot resolve {entry!r} ({error}); give an IP address, a "
                "network such as 10.0.0.0/24, or a resolvable host name."
            ) from None
        networks += [ipaddress.ip_network(info[4][0].split("%")[0]) for info in infos]
    return networks


def _address_in(peer: str, networks: list) -> bool:
    try:
        address = ipaddress.ip_address(peer.split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address.version == network.version and address in network for network in networks)


# ================================================================================================== body reading


class DeadlineSocketIO(socket.SocketIO):
    """
    The raw reader under a request handler's `rfile`: every read waits at most until the handler's
    `read_deadline`, so a client sending its request slowly (or not at all) cannot hold the connection.

    Args:
        sock (`socket.socket`):
            The connection.
        handler (`object`):
            Anything with a `read_deadline` attribute (a `time.monotonic()` value).
    """

    def __init__(self, sock: socket.socket, handler: Any):
        super().__init__(sock, "rb")
        self._handler = handler

    def readinto(self, buffer) -> int:
        remaining = self._handler.read_deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the client took too long to send its request")
        self._sock.settimeout(remaining)
        return super().readinto(buffer)


def read_body(rfile, headers, limit: int, flag: str) -> bytes:
    """
    The request body, read from `rfile` without ever holding more than `limit` bytes.

    Args:
        rfile (`io.BufferedReader`):
            The connection's reader (time-limited by [`DeadlineSocketIO`]).
        headers (`email.message.Message`):
            The request headers (`Content-Length` or `Transfer-Encoding: chunked`).
        limit (`int`):
            The most bytes accepted.
        flag (`str`):
            The server flag that raises the limit (named in the 413 answer).

    Raises:
        HTTPFailure: 400 for a bad `Content-Length` or chunk framing, 411 for neither header, 413 over `limit`,
            408 when the body does not arrive in time.
    """
    too_large = f"The request body is over the server's limit of {limit} bytes; send less or raise `{flag}`."
    encoding = (headers.get("Transfer-Encoding") or "").strip().lower()
    lengths = headers.get_all("Content-Length") or []
    try:
        if encoding:
            if encoding != "chunked" or lengths:
                message = f"`Transfer-Encoding: {encoding}` is not accepted: send the body `chunked` or with a "
                message += "`Content-Length`, not both."
                raise HTTPFailure(400, message, close=True)
            return _read_chunked(rfile, limit, too_large)
        if not lengths:
            return b""
        values = {value.strip() for value in lengths}
        if len(values) != 1 or not next(iter(values)).isdigit():
            raise HTTPFailure(400, f"Bad `Content-Length` {lengths}: send one non-negative integer.", close=True)
        length = int(next(iter(values)))
        if length > limit:
            raise HTTPFailure(413, too_large, close=True)
        data = rfile.read(length)
        if len(data) != length:
            message = f"The body ended after {len(data)} of the {length} bytes that `Content-Length` announced."
            raise HTTPFailure(400, message, close=True)
        return data
    except (TimeoutError, OSError):
        message = "The request body did not arrive within the server's `--read_timeout`."
        raise HTTPFailure(408, message, close=True) from None


def _read_chunked(rfile, limit: int, too_large: str) -> bytes:
    parts, total = [], 0
    while True:
        line = rfile.readline(1024)
        size_text = line.split(b";", 1)[0].strip()
        if not line.endswith(b"\n") or not size_text or any(c not in b"0123456789abcdefABCDEF" for c in size_text):
            raise HTTPFailure(400, "Bad chunked body: a chunk size line is not a hexadecimal number.", close=True)
        size = int(size_text, 16)
        if size == 0:
            while rfile.readline(1024) not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(parts)
        total += size
        if total > limit:
            raise HTTPFailure(413, too_large, close=True)
        while size > 0:
            chunk = rfile.read(min(size, _READ_CHUNK))
            if not chunk:
                raise HTTPFailure(400, "Bad chunked body: it ended inside a chunk.", close=True)
            parts.append(chunk)
            size -= len(chunk)
        if rfile.readline(3) not in (b"\r\n", b"\n"):
            raise HTTPFailure(400, "Bad chunked body: a chunk is longer than its announced size.", close=True)
