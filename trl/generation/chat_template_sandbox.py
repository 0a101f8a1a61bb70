"""Time- and memory-limited rendering of request-supplied chat templates for `trl vllm-serve` (see
`_template_worker.py`, the process that renders them)."""

from __future__ import annotations

import json
import os
import queue
import select
import subprocess
import sys
import time
from pathlib import Path

from trl.generation.server_engines import RequestError
from trl.generation.server_guard import HTTPFailure


_WORKER = Path(__file__).with_name("_template_worker.py")


class ChatTemplateSandbox:
    """
    A few worker processes that render Jinja chat templates in jinja2's immutable sandbox; a render that takes
    longer than its time limit is stopped by killing its worker (a fresh one replaces it), so a runaway template
    never holds the server's engine or memory.

    Args:
        workers (`int`, *optional*, defaults to `2`):
            Renders that can run at once.
        memory_bytes (`int`, *optional*, defaults to `1073741824`):
            Address-space limit of each worker process (1 GiB).
    """

    def __init__(self, workers: int = 2, memory_bytes: int = 2**30):
        self.memory_bytes = memory_bytes
        self._idle: queue.Queue = queue.Queue()
        for _ in range(workers):
            self._idle.put(None)  # started on first use

    def render(self, template: str, variables: dict, timeout: float, max_chars: int) -> str:
        """
        Render `template` with `variables`.

        Args:
            template (`str`):
                The Jinja source.
            variables (`dict`):
                JSON-able template variables (`messages`, `tools`, `add_generation_prompt`, special tokens, ...).
            timeout (`float`):
                Seconds the render may take.
            max_chars (`int`):
                Longest accepted output.

        Raises:
            RequestError: When the template fails, is too slow or renders too much (HTTP 400).
        """
        try:
            worker = self._idle.get(timeout=timeout)
        except queue.Empty:
            raise HTTPFailure(503, "Every chat-template sandbox is busy: retry shortly.") from None
        try:
            if worker is None or worker.poll() is not None:
                worker = self._start()
            job = json.dumps({"template": template, "variables": variables, "max_chars": max_chars})
            answer = self._exchange(worker, job.encode() + b"\n", time.monotonic() + timeout)
        except TimeoutError:
            worker = _kill(worker)
            raise RequestError(
                f"`chat_template` took longer than {timeout} s to render and was stopped: simplify the template "
                "(the server's limit is `--chat_template_timeout`)."
            ) from None
        except (OSError, ValueError) as error:
            worker = _kill(worker)
            raise RequestError(f"`chat_template` could not be rendered: the sandbox stopped ({error}).") from None
        finally:
            self._idle.put(worker)
        if "error" in answer:
            raise RequestError(f"`chat_template` could not be rendered: {answer['error']}.")
        return answer["text"]

    def _start(self) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-I", str(_WORKER), str(self.memory_bytes)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={"PATH": os.environ.get("PATH", ""), "PYTHONHASHSEED": "0"},
        )

    @staticmethod
    def _exchange(worker: subprocess.Popen, job: bytes, deadline: float) -> dict:
        worker.stdin.write(job)
        worker.stdin.flush()
        output = worker.stdout.fileno()
        chunks = []
        while not chunks or not chunks[-1].endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([output], [], [], remaining)[0]:
                raise TimeoutError
            chunk = os.read(output, 1 << 16)
            if not chunk:
                raise OSError("the sandbox process exited")
            chunks.append(chunk)
        return json.loads(b"".join(chunks))

    def close(self) -> None:
        """Stop the worker processes."""
        while True:
            try:
                _kill(self._idle.get_nowait())
            except queue.Empty:
                return


def _kill(worker: subprocess.Popen | None) -> None:
    if worker is not None and worker.poll() is None:
        worker.kill()
        worker.wait(timeout=10)
    return None
