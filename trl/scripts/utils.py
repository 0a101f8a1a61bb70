"""Shared pieces of the `trl` command line and the `trl/scripts/*.py` scripts, under the reference's import path.

This module holds [`ScriptArguments`] and a few helpers, and re-exports the rest from the modules that own them:

- `trl.scripts.parser`: [`TrlParser`] (dataclasses + YAML `--config` + CLI overrides), `parse_script_args`;
- `trl.scripts.dataset_mixture`: [`DatasetConfig`], [`DatasetMixtureConfig`], [`get_dataset`], dataset loading;
- `trl.scripts.launch`: `accelerate launch` options and the packaged accelerate profiles;
- `trl.scripts.training_script`: the flow every training script shares (`make_training_parser`, `run_training`).
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING  # noqa: F401  (the reference's name here)

from transformers.hf_argparser import DataClass, DataClassType, HfArgumentParser  # noqa: F401  (re-exported)

from .dataset_mixture import (
    DatasetConfig,
    DatasetMixtureConfig,
    get_dataset,
    get_split,
    load_dataset_from_args,
    mixture_row_counts,
)
from .launch import (
    ACCELERATE_CONFIGS_DIR,
    LAUNCHED_BY_TRL_ENV,
    accelerate_launch_actions,
    available_accelerate_configs,
    is_launch_option,
    resolve_accelerate_config,
)
from .parser import TrlParser, config_to_argv, option_names, parse_script_args
from .training_script import (
    ignore_bool_buffers,
    make_training_parser,
    merge_model_init_kwargs,
    model_init_kwargs_from_args,
    run_training,
)


__all__ = [
    "ACCELERATE_CONFIGS_DIR",
    "LAUNCHED_BY_TRL_ENV",
    "DatasetConfig",
    "DatasetMixtureConfig",
    "ScriptArguments",
    "TrlParser",
    "accelerate_launch_actions",
    "available_accelerate_configs",
    "config_to_argv",
    "get_dataset",
    "get_git_commit_hash",
    "get_split",
    "ignore_bool_buffers",
    "init_zero_verbose",
    "is_launch_option",
    "load_dataset_from_args",
    "make_training_parser",
    "merge_model_init_kwargs",
    "mixture_row_counts",
    "model_init_kwargs_from_args",
    "option_names",
    "parse_script_args",
    "resolve_accelerate_config",
    "run_training",
]

logger = logging.getLogger(__name__)


@dataclass
class ScriptArguments:
    """
    Dataset arguments shared by the `trl` training scripts.

    Parameters:
        dataset_name (`str` or `None`, *optional*, defaults to `None`):
            Dataset to train on: a Hub id or a local path, loaded with `datasets.load_dataset`. Ignored when a
            `datasets:` mixture is given in the config file.
        dataset_config (`str` or `None`, *optional*, defaults to `None`):
            Dataset configuration name (the `name` argument of `datasets.load_dataset`).
        dataset_train_split (`str`, *optional*, defaults to `"train"`):
            Split used for training.
        dataset_test_split (`str`, *optional*, defaults to `"test"`):
            Split used for evaluation (when `eval_strategy` is not `"no"`).
        dataset_streaming (`bool`, *optional*, defaults to `False`):
            Stream the dataset instead of downloading it.
        ignore_bias_buffers (`bool`, *optional*, defaults to `False`):
            Tell DDP to skip the model's boolean buffers (e.g. attention bias masks), which it cannot broadcast.
    """

    dataset_name: str | None = field(default=None, metadata={"help": "Dataset Hub id or local path."})
    dataset_config: str | None = field(
        default=None, metadata={"help": "Dataset configuration name (the name argument of load_dataset)."}
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Split used for training."})
    dataset_test_split: str = field(default="test", metadata={"help": "Split used for evaluation."})
    dataset_streaming: bool = field(default=False, metadata={"help": "Stream the dataset instead of downloading."})
    ignore_bias_buffers: bool = field(
        default=False, metadata={"help": "Tell DDP to skip boolean buffers it cannot broadcast."}
    )


def init_zero_verbose() -> None:
    """
    Keep only errors in the logs, with warnings routed through logging (hence hidden too).

    DeepSpeed ZeRO-3 prints a lot from every process; scripts call this first when they run under it.
    """
    handlers = None
    if importlib.util.find_spec("rich") is not None:
        from rich.logging import RichHandler

        handlers = [RichHandler()]
    logging.basicConfig(format="%(message)s", datefmt="[%X]", handlers=handlers, level=logging.ERROR, force=True)
    logging.captureWarnings(True)


def get_git_commit_hash(package_name: str) -> str | None:
    """
    Commit of the git checkout a package is imported from.

    Args:
        package_name (`str`):
            Importable package name, e.g. `"trl"`.

    Returns:
        `str` or `None`: The full commit hash, or `None` when the package is not imported from a git checkout.
    """
    package_file = _package_file(package_name)
    if package_file is None:
        return None
    repo_root = Path(package_file).resolve().parent.parent
    if not (repo_root / ".git").exists():
        return None
    try:
        result = subprocess.run(
            ["git", "-C", str(repo_root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def _package_file(package_name: str) -> str | None:
    module = sys.modules.get(package_name)
    if module is not None and getattr(module, "__file__", None):
        # Already imported (possibly as a lazy module without `__spec__`, which `find_spec` rejects).
        return module.__file__
    try:
        spec = importlib.util.find_spec(package_name)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None else None
