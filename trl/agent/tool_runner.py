"""Running the tool calls of a batch of rollouts: concurrently, each with a timeout, never raising.

Every call of the batch is started at once on one event loop: async tools as coroutines, sync tools each in its own
daemon thread. A call that raises, runs past its timeout, names an unknown tool or passes arguments that are not an
object gets an `"Error: ..."` text as its result, which the model reads in the next turn; the run goes on. A result
that is not a string is turned into text (JSON when it serialises, else `str()`).

A sync tool that hangs cannot be stopped from Python: its thread is abandoned (daemon, so it does not keep the
process alive) and the call is answered with the timeout error. Prefer async tools for I/O.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..trainer.reward_scoring import _run_async
from .tool_calls import tool_name


__all__ = ["DEFAULT_TOOL_TIMEOUT", "ToolResult", "ToolRunner", "format_tool_result", "tool_timeout"]

# Seconds a tool call may take unless the tool says otherwise (see `tool_timeout`).
DEFAULT_TOOL_TIMEOUT = 60.0


def tool_timeout(seconds: float) -> Callable[[Callable], Callable]:
    """Decorator setting the timeout of one tool, in seconds (the default is `DEFAULT_TOOL_TIMEOUT`).

    Example:
    ```python
    @tool_timeout(5)
    def search(query: str) -> str:
        ...
    ```
    """
    if not seconds > 0:
        raise ValueError(f"A tool timeout must be a positive number of seconds, got {seconds}.")

    def decorate(tool: Callable) -> Callable:
        tool.timeout = float(seconds)
        return tool

    return decorate


@dataclass
class ToolResult:
    """The outcome of one call: the text given back to the model and whether the call failed."""

    name: str
    content: str
    failed: bool = False


def format_tool_result(value: Any) -> str:
    """The text the model reads for a tool's return value: strings unchanged, `None` as an empty string, values
    that JSON can write (numbers, lists, dicts, booleans) as JSON, anything else as `str(value)`."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


def _run_in_daemon_thread(function: Callable, arguments: dict) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()

    def target():
        try:
            value, error = function(**arguments), None
        except BaseException as raised:  # noqa: BLE001 - every failure becomes the call's result
            value, error = None, raised
        with contextlib.suppress(concurrent.futures.InvalidStateError):  # abandoned after its timeout
            future.set_exception(error) if error is not None else future.set_result(value)

    threading.Thread(target=target, daemon=True, name=f"trl-tool-{tool_name(function)}").start()
    return future


class ToolRunner:
    """Runs tool calls by name.

    Args:
        tools (`list[Callable]`):
            Sync or async functions; a call names one by its `__name__`.
        default_timeout (`float`, *optional*, defaults to `DEFAULT_TOOL_TIMEOUT`):
            Seconds a call may take when its tool has no `timeout` attribute (see [`tool_timeout`]).
    """

    def __init__(self, tools: list[Callable], default_timeout: float = DEFAULT_TOOL_TIMEOUT):
        self.tools = {tool_name(tool): tool for tool in tools}
        self.default_timeout = default_timeout

    def timeout_of(self, tool: Callable) -> float:
        return float(getattr(tool, "timeout", None) or self.default_timeout)

    async def _call(self, call: dict, tools: dict[str, Callable]) -> ToolResult:
        function = call.get("function", call)
        name, arguments = function.get("name", ""), function.get("arguments", {})
        tool = tools.get(name)
        if tool is None:
            return ToolResult(name, f"Error: unknown tool {name!r}; the available tools are {sorted(tools)}.", True)
        if not isinstance(arguments, dict):
            return ToolResult(
                name, f"Error: the arguments of {name!r} must be a JSON object, got {arguments!r}.", True
            )
        timeout = self.timeout_of(tool)
        try:
            if inspect.iscoroutinefunction(tool):
                value = await asyncio.wait_for(tool(**arguments), timeout)
            else:
                value = await asyncio.wait_for(asyncio.wrap_future(_run_in_daemon_thread(tool, arguments)), timeout)
                if inspect.isawaitable(value):  # a sync wrapper returning a coroutine
                    value = await asyncio.wait_for(value, timeout)
        except TimeoutError:
            return ToolResult(name, f"Error: tool {name!r} timed out after {timeout:g} s.", True)
        except Exception as error:
            return ToolResult(name, f"Error: {type(error).__name__}: {error}", True)
        return ToolResult(name, format_tool_result(value))

    def run(self, calls_per_rollout: list[list[dict]], tools_per_rollout: list[dict] | None = None) -> list:
        """Run every call of every rollout concurrently.

        Args:
            calls_per_rollout (`list[list[dict]]`):
                The tool calls of each rollout (`{"function": {"name", "arguments"}}`).
            tools_per_rollout (`list[dict[str, Callable]]` or `None`, *optional*, defaults to `None`):
                The tools each rollout may call by name (environments give each rollout its own bound methods);
                `None` uses this runner's tools for every rollout.

        Returns:
            `list[list[ToolResult]]`: the results, in the order of the calls.
        """
        tools_per_rollout = tools_per_rollout or [self.tools] * len(calls_per_rollout)
        coroutines = [
            self._call(call, tools)
            for calls, tools in zip(calls_per_rollout, tools_per_rollout, strict=True)
            for call in calls
        ]
        flat = iter(_run_async(coroutines) if coroutines else [])
        return [[next(flat) for _ in calls] for calls in calls_per_rollout]
