"""Runnable training scripts (`trl/scripts/<method>.py`, also behind `trl <method>`) and their shared parsing."""

from .utils import (
    DatasetConfig,
    DatasetMixtureConfig,
    ScriptArguments,
    TrlParser,
    get_dataset,
    get_git_commit_hash,
    init_zero_verbose,
)


__all__ = [
    "DatasetConfig",
    "DatasetMixtureConfig",
    "ScriptArguments",
    "TrlParser",
    "get_dataset",
    "get_git_commit_hash",
    "init_zero_verbose",
]
