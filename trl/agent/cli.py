"""`trl grpo --tools module:function,... --environment_factory module:Class`: the agent arguments of the scripts.

Each name is `module:attribute` (or `module.attribute`), imported as `python -m` would (the current directory
first), so `--tools my_tools:add` finds `my_tools.py` next to where `trl` runs. Several tools are separated by
commas or given as several values (`--tools a:f b:g`, or a YAML list).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from typing import Any


__all__ = ["agent_trainer_kwargs", "import_object", "split_names"]


def split_names(values: str | list[str] | None) -> list[str]:
    """`"a:f,b:g"`, `["a:f", "b:g"]` or `["a:f,b:g"]` as `["a:f", "b:g"]`."""
    if values is None:
        return []
    values = [values] if isinstance(values, str) else list(values)
    return [name.strip() for value in values for name in str(value).split(",") if name.strip()]


def import_object(name: str, what: str = "object") -> Any:
    """The object a `module:attribute` (or dotted `module.attribute`) name points to.

    Raises:
        `ValueError`: naming what was looked for and where, when the module or the attribute is missing.
    """
    module_name, separator, attribute = name.partition(":")
    if not separator:
        module_name, _, attribute = name.rpartition(".")
    if not module_name or not attribute:
        raise ValueError(f"The {what} {name!r} must be written `module:attribute`, e.g. `my_tools:add`.")
    if os.getcwd() not in sys.path and "" not in sys.path:  # as `python -m`: the current directory first
        sys.path.insert(0, os.getcwd())
    if importlib.util.find_spec(module_name.split(".")[0]) is None:
        raise ValueError(
            f"Cannot import the {what} {name!r}: no module named {module_name.split('.')[0]!r} in the current "
            f"directory ({os.getcwd()}) nor on the Python path. Run trl from the folder holding the module, or add "
            "its folder to PYTHONPATH."
        )
    module = importlib.import_module(module_name)
    if not hasattr(module, attribute):
        raise ValueError(f"Cannot import the {what} {name!r}: module {module_name!r} has no attribute {attribute!r}.")
    return getattr(module, attribute)


def agent_trainer_kwargs(tools: str | list[str] | None, environment_factory: str | None) -> dict[str, Any]:
    """The `tools` / `environment_factory` trainer arguments of the script's `--tools` / `--environment_factory`
    (only those that are set)."""
    kwargs: dict[str, Any] = {}
    names = split_names(tools)
    if names:
        functions: list[Callable] = [import_object(name, "tool") for name in names]
        not_callable = [name for name, function in zip(names, functions) if not callable(function)]
        if not_callable:
            raise ValueError(f"--tools names {not_callable}, which are not functions.")
        kwargs["tools"] = functions
    if environment_factory:
        kwargs["environment_factory"] = import_object(environment_factory, "environment factory")
    return kwargs
