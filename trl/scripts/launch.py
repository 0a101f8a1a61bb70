"""`accelerate launch` options and the accelerate profiles shipped in `trl/accelerate_configs/`."""

from __future__ import annotations

import argparse
import os
from functools import lru_cache
from pathlib import Path


ACCELERATE_CONFIGS_DIR = Path(__file__).resolve().parent.parent / "accelerate_configs"


# Set by `trl <command>` for the script it launches: launch options in the YAML were already applied.
LAUNCHED_BY_TRL_ENV = "TRL_LAUNCHED_BY_CLI"


@lru_cache
def accelerate_launch_actions() -> dict[str, argparse.Action]:
    """The options of `accelerate launch`, as `{option string: argparse action}`."""
    from accelerate.commands.launch import launch_command_parser

    return dict(launch_command_parser()._option_string_actions)


def is_launch_option(option: str) -> bool:
    """
    Whether `option` (e.g. `"--num_processes"`) is an `accelerate launch` option or trl's `--accelerate_config`.

    Args:
        option (`str`):
            The option string, with its leading dashes.
    """
    option = option.split("=", 1)[0]
    if option in ("--accelerate_config", "--accelerate-config"):
        return True
    return option in accelerate_launch_actions()


def default_accelerate_config_file() -> str | None:
    """
    The accelerate default config file (written by `accelerate config`), when there is one.

    `accelerate launch` applies it to every launch, so `trl <command>` launches through accelerate when it exists.
    The location is accelerate's: `$HF_HOME/accelerate/default_config.yaml`, `HF_HOME` defaulting to
    `$XDG_CACHE_HOME/huggingface` (`~/.cache/huggingface`). Computed here because importing accelerate's config
    module imports torch.
    """
    cache_home = os.environ.get("HF_HOME", os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface"))
    path = os.path.join(os.path.expanduser(cache_home), "accelerate", "default_config.yaml")
    return path if os.path.isfile(path) else None


def available_accelerate_configs() -> list[str]:
    """Names of the accelerate profiles shipped in `trl/accelerate_configs/`."""
    return sorted(path.stem for path in ACCELERATE_CONFIGS_DIR.glob("*.yaml"))


def resolve_accelerate_config(name_or_path: str) -> str:
    """
    Path of the accelerate config named by `--accelerate_config`.

    Args:
        name_or_path (`str`):
            An existing file, or the name of a packaged profile (`single_gpu`, `multi_gpu`, `fsdp1`, `fsdp2`,
            `zero1`, `zero2`, `zero3`).

    Returns:
        `str`: The file path.
    """
    if os.path.isfile(name_or_path):
        return name_or_path
    packaged = ACCELERATE_CONFIGS_DIR / f"{name_or_path}.yaml"
    if packaged.is_file():
        return str(packaged)
    raise ValueError(
        f"Accelerate config {name_or_path!r} is neither a file nor a valid config in the trl package; pass a path "
        f"to an accelerate YAML file or one of {available_accelerate_configs()}."
    )
