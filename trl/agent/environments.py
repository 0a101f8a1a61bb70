"""`environment_factory`: one stateful environment instance per rollout, whose public methods are its tools.

An environment is any object made by the factory (a class, or any callable returning one):

- `reset(**row)` (optional) starts a rollout; it receives the dataset row's columns as keyword arguments and may
  return text, appended to the last user message of the prompt (or the prompt itself when the row has none).
- Every other public method (not starting with `_`) is a tool: type hints and a Google-style docstring describe
  it to the model (`transformers.utils.get_json_schema`), and the model's calls run on this rollout's instance.
  `reset`, `get_reward` and `close` are reserved and never exposed.
- `get_reward()` (optional) is called once the rollout is over: an extra reward source, weight 1, logged under
  the class name.
- `close()` (optional) is called when the trainer is done with the instance.

With a dict `{name: factory}` the dataset's `environment` column picks the factory of each row.

Instances are created once per rollout slot and reused: `reset()` is called at the start of every rollout. An
exception in `reset()` or `get_reward()` fails that rollout (it gets a zero advantage and is not trained) and is
counted; an exception in a tool method is returned to the model as the tool result, like any tool error.
"""

from __future__ import annotations

import inspect
import warnings
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from .tool_calls import tool_schemas


__all__ = ["RESERVED_METHODS", "EnvironmentPool", "environment_tools"]

RESERVED_METHODS = ("reset", "get_reward", "close")


def environment_tools(environment: Any) -> list[Callable]:
    """The public methods of an environment instance that the model may call (bound to that instance)."""
    tools = []
    for name, member in inspect.getmembers(type(environment)):
        if name.startswith("_") or name in RESERVED_METHODS or not callable(member):
            continue
        if isinstance(inspect.getattr_static(type(environment), name), (staticmethod, classmethod, property)):
            continue
        tools.append(getattr(environment, name))
    return tools


def _append_to_prompt(prompt: Any, text: str) -> Any:
    """The prompt with `text` appended to its last user message (a new user message when there is none)."""
    if isinstance(prompt, str):
        return prompt + ("\n\n" if prompt else "") + text
    messages = [dict(message) for message in prompt]
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content") or ""
            message["content"] = content + ("\n\n" if content else "") + text
            return messages
    return [*messages, {"role": "user", "content": text}]


def _accepted(method: Callable, row: dict[str, Any]) -> dict[str, Any]:
    """The row's columns that `method` accepts as keyword arguments (all of them with `**kwargs`)."""
    parameters = inspect.signature(method).parameters.values()
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        return row
    names = {parameter.name for parameter in parameters if parameter.kind is not inspect.Parameter.VAR_POSITIONAL}
    return {key: value for key, value in row.items() if key in names}


class EnvironmentPool:
    """The environment instances of a trainer, one per rollout slot of a generation batch.

    Args:
        environment_factory (`Callable` or `dict[str, Callable]`):
            Makes an environment; a dict names several, chosen per row by the `environment` column.
    """

    def __init__(self, environment_factory: Callable | dict[str, Callable]):
        factories = environment_factory if isinstance(environment_factory, dict) else {None: environment_factory}
        if not factories or not all(callable(factory) for factory in factories.values()):
            raise ValueError(
                "environment_factory must be a callable returning an environment (e.g. its class), or a non-empty "
                "dict mapping names to such callables."
            )
        self.factories = factories
        self.multiple = isinstance(environment_factory, dict)
        # One instance per factory is made now: it tells the tools and whether the environment scores itself.
        self.instances: dict[Any, list[Any]] = {name: [factory()] for name, factory in factories.items()}
        self.schemas = {name: tool_schemas(environment_tools(pool[0])) for name, pool in self.instances.items()}
        self.failures = 0  # failed rollouts since the start
        self.failed: set[int] = set()  # ids of this batch's environments whose rollout failed
        self._closed = False

    # ---------------------------------------------------------------------------------------------- rewards
    def reward_names(self) -> list[Any]:
        """The factories whose environments define `get_reward()`."""
        return [name for name, pool in self.instances.items() if callable(getattr(pool[0], "get_reward", None))]

    def reward_function(self, name: Any) -> Callable:
        """A reward function `f(environments, **kwargs)` calling `get_reward()` on the environments of factory
        `name` (`None` for the others, and for rollouts whose environment failed), named after the class."""
        class_name = type(self.instances[name][0]).__name__

        def environment_reward(environments=None, **kwargs):
            rewards = []
            for environment in environments or []:
                if environment is None or id(environment) in self.failed or type(environment).__name__ != class_name:
                    rewards.append(None)
                    continue
                try:
                    rewards.append(float(environment.get_reward()))
                except Exception as error:
                    self._fail(environment, "get_reward", error)
                    rewards.append(None)
            return rewards

        environment_reward.__name__ = class_name
        return environment_reward

    # --------------------------------------------------------------------------------------------- rollouts
    def _name_of(self, row: dict[str, Any]) -> Any:
        if not self.multiple:
            return None
        name = row.get("environment")
        if name not in self.factories:
            raise ValueError(
                f"A row selects environment {name!r}, but environment_factory names {sorted(self.factories)}: give "
                "every row an `environment` column with one of these names."
            )
        return name

    def acquire(self, rows: list[dict[str, Any]]) -> list[Any]:
        """One instance per row (the k-th row of a factory gets its k-th instance, made when first needed)."""
        used: dict[Any, int] = defaultdict(int)
        environments = []
        for row in rows:
            name = self._name_of(row)
            pool = self.instances[name]
            if used[name] == len(pool):
                pool.append(self.factories[name]())
            environments.append(pool[used[name]])
            used[name] += 1
        return environments

    def start(self, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Any]]:
        """Reset one environment per row: the rows with `reset()`'s text appended to their prompt and the tool
        schemas in their `tools` column, and the environments."""
        environments = self.acquire(rows)
        self.failed = set()
        started = []
        for row, environment in zip(rows, environments, strict=True):
            row = dict(row)
            if row.get("prompt") is None:  # a dataset without prompts: reset() supplies them
                row["prompt"] = [{"role": "user", "content": ""}]
            text = None
            if callable(getattr(environment, "reset", None)):
                try:
                    text = environment.reset(**_accepted(environment.reset, row))
                except Exception as error:
                    self._fail(environment, "reset", error)
            if text is not None:
                row["prompt"] = _append_to_prompt(row.get("prompt", ""), str(text))
            row["tools"] = list(row.get("tools") or []) + self.schemas[self._name_of(row)]
            started.append(row)
        return started, environments

    def failed_rows(self, environments: list[Any]) -> list[bool]:
        """Which of these environments' rollouts failed (in `reset()` or `get_reward()`)."""
        return [id(environment) in self.failed for environment in environments]

    def _fail(self, environment: Any, method: str, error: Exception) -> None:
        if id(environment) not in self.failed:
            self.failures += 1
        self.failed.add(id(environment))
        warnings.warn(
            f"{type(environment).__name__}.{method}() raised {type(error).__name__}: {error}. The rollout counts as failed (zero "
            "advantage, not trained) and training goes on.",
            UserWarning,
            stacklevel=3,
        )

    def close(self) -> None:
        """Call `close()` on every instance that has one (once)."""
        if self._closed:
            return
        self._closed = True
        for pool in self.instances.values():
            for environment in pool:
                close = getattr(environment, "close", None)
                if callable(close):
                    try:
                        close()
                    except Exception as error:
                        warnings.warn(f"Closing {type(environment).__name__} raised {error!r}.", stacklevel=2)
