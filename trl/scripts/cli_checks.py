"""Checks of what a user gives the `trl` command line and YAML config files, and the one-line report of their mistakes.

- YAML values skip argparse's type conversion (a parsed YAML value is not a string), so [`check_config_types`]
  checks them against the parser's arguments: `max_steps: 2.7`, `learning_rate: true` or a list for a scalar
  argument are refused with the key and the expected type.
- [`report_user_errors`] turns a user mistake (a `ValueError` or `FileNotFoundError` raised while checking the
  arguments, loading the model or data, or validating the config) into one line on stderr and exit status 2. Set
  the environment variable `TRL_DEBUG=1` to get the full traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any


DEBUG_ENV = "TRL_DEBUG"
USER_ERRORS = (ValueError, FileNotFoundError)


# ------------------------------------------------------------------------------------------------------ YAML types
def _field_annotations(dataclass_types: list[type]) -> dict[str, str]:
    # Read from the classes: `HfArgumentParser` narrows `field.type` (e.g. `str | list[str]` becomes `str`).
    annotations: dict[str, str] = {}
    for cls in dataclass_types:
        for base in reversed(cls.__mro__):
            annotations.update({name: str(value) for name, value in vars(base).get("__annotations__", {}).items()})
    return annotations


def _expected(action: argparse.Action) -> tuple[str, tuple[type, ...]] | None:
    """The name and Python types a YAML value of `action` may have, or `None` when its type is not checked."""
    from transformers.hf_argparser import string_to_bool  # here: `trl --help` does not import transformers

    if action.type is int:
        return "an integer", (int,)
    if action.type is float:
        return "a number", (int, float)
    if action.type is string_to_bool:
        return "true or false", (bool,)
    return None


def _check_scalar(key: str, value: Any, action: argparse.Action) -> None:
    expected = _expected(action)
    # Strings go through the argument's own type conversion, as on the command line.
    if expected is None or isinstance(value, str):
        return
    description, types = expected
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        raise ValueError(
            f"Config key `{key}` must be {description}, got {value!r} ({type(value).__name__}). Fix its value in the "
            "YAML file."
        )


def check_config_types(parser: argparse.ArgumentParser, dataclass_types: list[type], config: dict[str, Any]) -> None:
    """Refuse YAML values whose type does not fit the argument they set.

    Args:
        parser (`argparse.ArgumentParser`):
            The parser whose arguments the config sets.
        dataclass_types (`list[type]`):
            The parser's dataclasses, whose field annotations say which arguments take lists or dicts.
        config (`dict[str, Any]`):
            The YAML mapping.
    """
    actions = {action.dest: action for action in parser._actions}
    annotations = _field_annotations(dataclass_types)
    for key, value in config.items():
        action = actions.get(key)
        if action is None or value is None:
            continue
        annotation = annotations.get(key, "")
        many = action.nargs in ("+", "*") or "list" in annotation.lower() or "tuple" in annotation.lower()
        if isinstance(value, dict) and "dict" not in annotation.lower():
            raise ValueError(f"Config key `{key}` takes a single value, got a mapping {value!r}. Fix the YAML file.")
        if isinstance(value, (list, tuple)):
            if not many:
                raise ValueError(
                    f"Config key `{key}` takes a single value, got a list {value!r}. Give one value in the YAML file."
                )
            for item in value:
                _check_scalar(key, item, action)
            continue
        if not isinstance(value, dict):
            _check_scalar(key, value, action)


# ------------------------------------------------------------------------------------------------------ errors
def debug_enabled() -> bool:
    """Whether `TRL_DEBUG` asks for full tracebacks."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


@contextlib.contextmanager
def report_user_errors(prog: str) -> Iterator[None]:
    """Print a user mistake raised inside the block as one line and exit with status 2 (unless `TRL_DEBUG=1`).

    Args:
        prog (`str`):
            The program name that prefixes the line, e.g. `"trl sft"`.
    """
    try:
        yield
    except USER_ERRORS as error:
        if debug_enabled():
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"{prog}: error: {message} (set {DEBUG_ENV}=1 for the traceback)", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


# ------------------------------------------------------------------------------------------------------ resume
def resolve_resume_from_checkpoint(value: str | bool | None) -> str | bool | None:
    """`--resume_from_checkpoint` as `Trainer.train` takes it: `true` resumes from the latest checkpoint of
    `output_dir`, `false` starts afresh, anything else is a checkpoint folder that must exist.

    Args:
        value (`str`, `bool` or `None`):
            The parsed argument (a string from the command line or YAML, or a YAML boolean).
    """
    if value is None or isinstance(value, bool):
        return value or None
    lowered = value.strip().lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0", "none", ""):
        return None
    if not os.path.isdir(value):
        raise FileNotFoundError(
            f"--resume_from_checkpoint {value!r} is not a folder. Pass a checkpoint folder (e.g. "
            "`<output_dir>/checkpoint-500`), or `true` to resume from the latest checkpoint of `output_dir`."
        )
    return value
