"""Runnable training scripts (`trl/scripts/<method>.py`, also behind `trl <method>`) and their shared parsing.

The names below are imported on first use, so `trl --help` and the cached `trl <command> --help` do not import
transformers.
"""

import importlib
from typing import TYPE_CHECKING


__all__ = [
    "DatasetConfig",
    "DatasetMixtureConfig",
    "ScriptArguments",
    "TrlParser",
    "get_dataset",
    "get_git_commit_hash",
    "init_zero_verbose",
]

if TYPE_CHECKING:
    from .utils import (
        DatasetConfig,
        DatasetMixtureConfig,
        ScriptArguments,
        TrlParser,
        get_dataset,
        get_git_commit_hash,
        init_zero_verbose,
    )


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module(".utils", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
