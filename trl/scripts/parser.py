"""[`TrlParser`]: the dataclass-backed parser of every `trl` command and script; it also reads a YAML `--config` file
(command-line values win), its `env:` section, and the `accelerate launch` options a config may hold."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterable
from typing import Any

import yaml
from transformers import HfArgumentParser

from .cli_checks import check_config_types
from .launch import LAUNCHED_BY_TRL_ENV, is_launch_option


logger = logging.getLogger(__name__)


class TrlParser(HfArgumentParser):
    """
    A [`~transformers.HfArgumentParser`] that also reads a YAML config file given with `--config`.

    The YAML keys become the parser's defaults, so a command-line value overrides the file. An optional `env:`
    mapping is exported as environment variables. Keys that match no field are "remaining strings" (`--key value`),
    which `trl <command>` hands to `accelerate launch`.

    ```yaml
    # config.yaml
    env:
      WANDB_PROJECT: my-project
    model_name_or_path: Qwen/Qwen2.5-0.5B
    learning_rate: 2.0e-5
    num_processes: 2  # an accelerate launch option
    ```

    Args:
        dataclass_types (`type` or `Iterable[type]`, *optional*):
            Dataclasses whose fields become arguments. None of them may have a field named `config`.
        **kwargs:
            Passed to [`~transformers.HfArgumentParser`] (`prog`, `usage`, ...). `allow_abbrev` defaults to `False`
            so a misspelt option is reported instead of silently matching a longer one.
    """

    def __init__(self, dataclass_types: type | Iterable[type] | None = None, **kwargs):
        if dataclass_types is None:
            dataclass_types = []
        elif dataclasses.is_dataclass(dataclass_types) or not isinstance(dataclass_types, Iterable):
            dataclass_types = [dataclass_types]
        dataclass_types = list(dataclass_types)
        for dataclass_type in dataclass_types:
            if "config" in {f.name for f in dataclasses.fields(dataclass_type)}:
                raise ValueError(
                    f"{dataclass_type.__name__} has a field named `config`, which TrlParser reserves for the YAML "
                    "config file (`--config`); rename the field."
                )
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(dataclass_types=dataclass_types, **kwargs)

    def parse_args_and_config(
        self,
        args: Iterable[str] | None = None,
        return_remaining_strings: bool = False,
        fail_with_unknown_args: bool = True,
        separate_remaining_strings: bool = False,
    ) -> tuple:
        """
        Parse the command line, using a YAML `--config` file for the defaults.

        Args:
            args (`Iterable[str]` or `None`, *optional*, defaults to `None`):
                Arguments to parse; `sys.argv[1:]` when `None`.
            return_remaining_strings (`bool`, *optional*, defaults to `False`):
                Also return the strings that match no argument instead of failing on them.
            fail_with_unknown_args (`bool`, *optional*, defaults to `True`):
                Raise a `ValueError` on unknown arguments (from the config or the command line) when they are not
                returned. With `False` they are dropped with a warning.
            separate_remaining_strings (`bool`, *optional*, defaults to `False`):
                Return the config's and the command line's remaining strings as two lists (implies
                `return_remaining_strings`).

        Returns:
            `tuple`: One instance per dataclass (plus a namespace for non-dataclass arguments such as subcommands),
            then the remaining strings if requested: one list, or `(config_remaining, cli_remaining)`.
        """
        args = list(sys.argv[1:] if args is None else args)
        config_path, args = _pop_config_flag(args)
        config_remaining: list[str] = []
        if config_path is not None:
            config = _read_yaml_config(config_path)
            _export_env(config.pop("env", None))
            config_remaining = self.set_defaults_with_config(**config)
        *outputs, cli_remaining = self.parse_args_into_dataclasses(args=args, return_remaining_strings=True)
        if separate_remaining_strings:
            return (*outputs, config_remaining, cli_remaining)
        if return_remaining_strings:
            return (*outputs, config_remaining + cli_remaining)
        unknown = config_remaining + cli_remaining
        if unknown and fail_with_unknown_args:
            raise ValueError(
                f"Unknown arguments {option_names(unknown)}: `{self.prog}` has no such argument. Fix their "
                f"spelling or remove them (see `{self.prog} --help`)."
            )
        if unknown:
            logger.warning("Ignoring unknown arguments %s.", unknown)
        return tuple(outputs)

    def set_defaults_with_config(self, **kwargs: Any) -> list[str]:
        """
        Use `kwargs` as default values of the matching arguments, here and in every subparser.

        Matching arguments stop being required, and a later command-line value still overrides them.

        Args:
            **kwargs:
                Argument names and their new defaults.

        Returns:
            `list[str]`: The keys that match no argument, as command-line strings (`["--key", "value", ...]`).
        """
        check_config_types(self, self.dataclass_types, kwargs)
        used = _apply_defaults(self, kwargs)
        return config_to_argv({key: value for key, value in kwargs.items() if key not in used})


def _apply_defaults(parser: argparse.ArgumentParser, config: dict[str, Any]) -> set[str]:
    used: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                used |= _apply_defaults(subparser, config)
        elif action.dest in config and not isinstance(action, argparse._HelpAction):
            action.default = config[action.dest]
            action.required = False
            used.add(action.dest)
    return used


def config_to_argv(config: dict[str, Any]) -> list[str]:
    """
    Turn config entries into command-line strings: `{"a": 1, "b": [x, y]}` -> `["--a", "1", "--b", "x", "y"]`.

    Args:
        config (`dict[str, Any]`):
            Keys and values; dicts become JSON strings.
    """
    argv = []
    for key, value in config.items():
        argv.append(f"--{key}")
        if isinstance(value, (list, tuple)):
            argv.extend(str(item) for item in value)
        elif isinstance(value, dict):
            argv.append(json.dumps(value))
        else:
            argv.append(str(value))
    return argv


def option_names(strings: list[str]) -> list[str]:
    """The option names (`--key`, without `=value`) among command-line strings."""
    return [string.split("=", 1)[0] for string in strings if string.startswith("-") and not _is_number(string)]


def _is_number(string: str) -> bool:
    try:
        float(string)
    except ValueError:
        return False
    return True


def _pop_config_flag(args: list[str]) -> tuple[str | None, list[str]]:
    config_path, rest = None, []
    iterator = iter(args)
    for arg in iterator:
        if arg == "--config" or arg.startswith("--config="):
            if config_path is not None:
                raise ValueError("`--config` is given twice; pass a single YAML config file.")
            config_path = arg.split("=", 1)[1] if "=" in arg else next(iterator, None)
            if not config_path:
                raise ValueError("`--config` needs a value: the path of a YAML config file.")
        else:
            rest.append(arg)
    return config_path, rest


def _read_yaml_config(path: str) -> dict[str, Any]:
    with open(path) as file:
        config = yaml.safe_load(file)
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ValueError(f"The config file {path} must hold a YAML mapping (`key: value` lines), got {config!r}.")
    return config


def _export_env(env: Any) -> None:
    if env is None:
        return
    if not isinstance(env, dict):
        raise ValueError(f"`env` in the config file must be a mapping of variable names to values, got {env!r}.")
    for name, value in env.items():
        os.environ[str(name)] = str(value)


def parse_script_args(parser: TrlParser, args: Iterable[str] | None = None) -> tuple:
    """
    Parse a training script's arguments when it runs as `python trl/scripts/<name>.py` or under `trl <name>`.

    YAML keys that are `accelerate launch` options (e.g. `num_processes`, `accelerate_config`) are accepted: `trl`
    applies them before starting the script. Any other unknown argument raises.

    Args:
        parser ([`TrlParser`]):
            The script's parser.
        args (`Iterable[str]` or `None`, *optional*, defaults to `None`):
            Arguments to parse; `sys.argv[1:]` when `None`.

    Returns:
        `tuple`: One instance per dataclass of the parser.
    """
    *outputs, config_remaining, cli_remaining = parser.parse_args_and_config(args, separate_remaining_strings=True)
    if cli_remaining:
        raise ValueError(
            f"Unknown arguments {option_names(cli_remaining)}. `accelerate launch` options only work through "
            "`trl <command>` or `accelerate launch <script>`; anything else is misspelt (see `--help`)."
        )
    launch_options = option_names(config_remaining)
    unknown = [option for option in launch_options if not is_launch_option(option)]
    if unknown:
        raise ValueError(f"Unknown keys {unknown} in the config file: they are neither script nor launch options.")
    if launch_options and not os.environ.get(LAUNCHED_BY_TRL_ENV):
        warnings.warn(
            f"The config's launch options {launch_options} have no effect when the script runs directly; use "
            "`trl <command> --config ...` or `accelerate launch` to apply them.",
            stacklevel=2,
        )
    return tuple(outputs)
