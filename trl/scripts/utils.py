"""Argument parsing and dataset loading shared by the `trl` command line and the `trl/scripts/*.py` scripts.

- [`TrlParser`]: dataclass-backed parser that also reads a YAML `--config` file (command-line values win).
- [`ScriptArguments`], [`DatasetConfig`], [`DatasetMixtureConfig`], [`get_dataset`]: which data a script trains on.
- Helpers the scripts share: model-loading kwargs from a [`ModelConfig`], dataset loading, `accelerate launch`
  options and the packaged accelerate profiles.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from transformers import HfArgumentParser

from .cli_checks import check_config_types, report_user_errors, resolve_resume_from_checkpoint


if TYPE_CHECKING:
    from datasets import DatasetDict

    from ..trainer.model_config import ModelConfig


logger = logging.getLogger(__name__)

ACCELERATE_CONFIGS_DIR = Path(__file__).resolve().parent.parent / "accelerate_configs"
# Set by `trl <command>` for the script it launches: launch options in the YAML were already applied.
LAUNCHED_BY_TRL_ENV = "TRL_LAUNCHED_BY_CLI"


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


@dataclass
class DatasetConfig:
    """
    One dataset of a [`DatasetMixtureConfig`], loaded with `datasets.load_dataset`.

    Parameters:
        path (`str`):
            Hub id, local directory or builder name (`"json"`, `"csv"`, ...).
        name (`str` or `None`, *optional*, defaults to `None`):
            Dataset configuration name.
        data_dir (`str` or `None`, *optional*, defaults to `None`):
            `data_dir` of `load_dataset`.
        data_files (`str`, `list[str]`, `dict[str, str]` or `None`, *optional*, defaults to `None`):
            `data_files` of `load_dataset`.
        split (`str`, *optional*, defaults to `"train"`):
            Split to load.
        columns (`list[str]` or `None`, *optional*, defaults to `None`):
            Keep only these columns (all datasets of a mixture need the same columns).
        fraction (`float` or `None`, *optional*, defaults to `None`):
            Relative weight of this dataset in the mixture; see [`get_dataset`].
    """

    path: str
    name: str | None = None
    data_dir: str | None = None
    data_files: str | list[str] | dict[str, str] | None = None
    split: str = "train"
    columns: list[str] | None = None
    fraction: float | None = None

    def __post_init__(self):
        if self.fraction is not None and not self.fraction > 0:
            raise ValueError(f"Dataset {self.path!r} has fraction {self.fraction}; fractions must be positive.")


@dataclass
class DatasetMixtureConfig:
    """
    A mixture of datasets, written as a `datasets:` list in the YAML config of a `trl` command:

    ```yaml
    datasets:
      - path: trl-lib/tldr
        columns: [prompt, completion]
      - path: json
        data_files: extra.jsonl
    test_split_size: 0.1
    ```

    Parameters:
        datasets (`list[DatasetConfig]`, *optional*, defaults to `[]`):
            The datasets; dicts are turned into [`DatasetConfig`]s.
        streaming (`bool`, *optional*, defaults to `False`):
            Stream every dataset of the mixture.
        test_split_size (`float` or `None`, *optional*, defaults to `None`):
            When set, split the mixture into `train` and `test` (a fraction below 1, or a number of rows).
    """

    datasets: list[DatasetConfig] = field(
        default_factory=list, metadata={"help": "Datasets of the mixture (a `datasets:` list in the YAML config)."}
    )
    streaming: bool = field(default=False, metadata={"help": "Stream every dataset of the mixture."})
    test_split_size: float | None = field(
        default=None, metadata={"help": "Split the mixture into train and test (fraction below 1, or row count)."}
    )

    def __post_init__(self):
        self.datasets = [_to_dataset_config(entry) for entry in self.datasets or []]
        if self.test_split_size is not None and self.test_split_size >= 1:
            self.test_split_size = int(self.test_split_size)


def _to_dataset_config(entry: DatasetConfig | dict | str) -> DatasetConfig:
    if isinstance(entry, DatasetConfig):
        return entry
    if isinstance(entry, str):
        return DatasetConfig(path=entry)
    if not isinstance(entry, dict):
        raise ValueError(f"Each `datasets:` entry must be a mapping with at least a `path`, got {entry!r}.")
    known = {f.name for f in dataclasses.fields(DatasetConfig)}
    unknown = sorted(set(entry) - known)
    if unknown or "path" not in entry:
        problem = f"unknown keys {unknown}" if unknown else "no `path`"
        raise ValueError(f"Invalid `datasets:` entry {entry!r}: {problem}. Allowed keys: {sorted(known)}.")
    return DatasetConfig(**entry)


def get_dataset(mixture_config: DatasetMixtureConfig) -> DatasetDict:
    """
    Load and concatenate the datasets of a mixture.

    1. Each dataset is loaded with `datasets.load_dataset` and reduced to its `columns`.
    2. If fractions are given (for every dataset, never with streaming), they are normalised to weights `w_i`
       summing to 1. With `n_i` rows in dataset `i`, the mixture total is `T = min_i n_i / w_i` (the largest total
       that needs no oversampling) and dataset `i` contributes its first `round(w_i * T)` rows.
    3. The datasets are concatenated in order.
    4. If `test_split_size` is set, the result is split (with a fixed seed, so every process gets the same split).

    Args:
        mixture_config ([`DatasetMixtureConfig`]):
            The mixture.

    Returns:
        [`~datasets.DatasetDict`]: With a `"train"` split, plus `"test"` when `test_split_size` is set (an
        [`~datasets.IterableDatasetDict`] when streaming).
    """
    import datasets

    _check_mixture(mixture_config)
    parts = [_load_mixture_part(config, mixture_config.streaming) for config in mixture_config.datasets]
    if mixture_config.datasets[0].fraction is not None:
        weights = _normalised_fractions(mixture_config.datasets)
        counts = mixture_row_counts([len(part) for part in parts], weights)
        parts = [part.select(range(count)) for part, count in zip(parts, counts)]
    try:
        combined = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    except ValueError as error:
        raise ValueError(
            f"Could not concatenate the mixture's datasets ({error}); give every entry the same `columns:`."
        ) from error
    dict_class = datasets.IterableDatasetDict if mixture_config.streaming else datasets.DatasetDict
    if mixture_config.test_split_size is None:
        return dict_class({"train": combined})
    split = combined.train_test_split(test_size=mixture_config.test_split_size, seed=0)
    return dict_class({"train": split["train"], "test": split["test"]})


def _check_mixture(mixture_config: DatasetMixtureConfig) -> None:
    configs = mixture_config.datasets
    if not configs:
        raise ValueError("The dataset mixture is empty: add at least one entry (with a `path`) under `datasets:`.")
    with_fraction = [config.fraction is not None for config in configs]
    if any(with_fraction) and not all(with_fraction):
        missing = [config.path for config in configs if config.fraction is None]
        raise ValueError(f"Give a `fraction` to every dataset of the mixture or to none; missing for {missing}.")
    if any(with_fraction) and mixture_config.streaming:
        raise ValueError("`fraction` needs the dataset sizes, which streaming does not know; set `streaming: false`.")
    if mixture_config.streaming and mixture_config.test_split_size is not None:
        raise ValueError("`test_split_size` cannot split a streamed mixture; set `streaming: false`.")


def _normalised_fractions(configs: list[DatasetConfig]) -> list[float]:
    total = sum(config.fraction for config in configs)
    return [config.fraction / total for config in configs]


def mixture_row_counts(sizes: list[int], weights: list[float]) -> list[int]:
    """
    Rows each dataset contributes to a weighted mixture without oversampling.

    Args:
        sizes (`list[int]`):
            Number of rows of each dataset.
        weights (`list[float]`):
            Normalised weights (summing to 1).

    Returns:
        `list[int]`: `round(w_i * T)` for each dataset (capped at its size), with `T = min_i sizes_i / w_i`.
    """
    total = min(size / weight for size, weight in zip(sizes, weights))
    return [min(size, round(weight * total)) for size, weight in zip(sizes, weights)]


def _load_mixture_part(config: DatasetConfig, streaming: bool):
    import datasets

    logger.info("Loading dataset %s (name=%s, split=%s)", config.path, config.name, config.split)
    dataset = datasets.load_dataset(
        config.path,
        name=config.name,
        data_dir=config.data_dir,
        data_files=config.data_files,
        split=config.split,
        streaming=streaming,
    )
    if config.columns is not None:
        dataset = dataset.select_columns(config.columns)
    return dataset


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


# ----------------------------------------------------------------------------------------------------------------
# Helpers for the training scripts
# ----------------------------------------------------------------------------------------------------------------


def model_init_kwargs_from_args(model_args: ModelConfig) -> dict[str, Any]:
    """
    Keyword arguments for `from_pretrained` described by a [`ModelConfig`].

    Args:
        model_args ([`ModelConfig`]):
            The model arguments.

    Returns:
        `dict[str, Any]`: `revision`, `dtype`, `attn_implementation` (when set) and, for k-bit loading,
        `quantization_config` and `device_map`.
    """
    from ..trainer.peft_utils import get_kbit_device_map, get_quantization_config

    kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        kwargs["device_map"] = get_kbit_device_map()
    return {key: value for key, value in kwargs.items() if value is not None}


def merge_model_init_kwargs(from_model_args: dict[str, Any], explicit: dict[str, Any] | None) -> dict[str, Any]:
    """
    Combine the kwargs built from a [`ModelConfig`] with a config's explicit `model_init_kwargs`, which win.

    Args:
        from_model_args (`dict[str, Any]`):
            Output of [`model_init_kwargs_from_args`].
        explicit (`dict[str, Any]` or `None`):
            The trainer config's `model_init_kwargs`; its `torch_dtype` counts as `dtype`.
    """
    merged = dict(from_model_args)
    explicit = explicit or {}
    if "torch_dtype" in explicit:
        merged.pop("dtype", None)
    merged.update(explicit)
    return merged


def load_dataset_from_args(script_args: ScriptArguments, dataset_args: DatasetMixtureConfig | None = None):
    """
    Load a script's dataset: the `datasets:` mixture if there is one, else `dataset_name`.

    Args:
        script_args ([`ScriptArguments`]):
            Gives `dataset_name`, `dataset_config` and `dataset_streaming`.
        dataset_args ([`DatasetMixtureConfig`] or `None`, *optional*, defaults to `None`):
            The mixture; used (with a warning) when `dataset_name` is set too.

    Returns:
        [`~datasets.DatasetDict`] or [`~datasets.IterableDatasetDict`]: The dataset's splits.
    """
    has_mixture = dataset_args is not None and bool(dataset_args.datasets)
    if has_mixture:
        if script_args.dataset_name is not None:
            logger.warning(
                "Both `dataset_name` and a `datasets:` mixture are set; the mixture is used. Remove one of them."
            )
        return get_dataset(dataset_args)
    if script_args.dataset_name is None:
        raise ValueError("No dataset given: set `--dataset_name`, or a `datasets:` mixture in the YAML config.")
    import datasets

    return datasets.load_dataset(
        script_args.dataset_name, name=script_args.dataset_config, streaming=script_args.dataset_streaming
    )


def get_split(dataset, split: str, flag: str):
    """
    One split of a loaded dataset, with an error that names the flag to change when it is missing.

    Args:
        dataset (`DatasetDict` or `IterableDatasetDict`):
            The loaded splits.
        split (`str`):
            The split name.
        flag (`str`):
            The argument that chose it, e.g. `"--dataset_test_split"`.
    """
    if split not in dataset:
        raise ValueError(f"The dataset has no split {split!r} (it has {list(dataset)}); set `{flag}`.")
    return dataset[split]


def ignore_bool_buffers(model) -> None:
    """
    Make DDP skip the model's boolean buffers, which it cannot broadcast (`--ignore_bias_buffers`).

    Args:
        model (`torch.nn.Module`):
            The model about to be wrapped in DDP.
    """
    import torch

    model._ddp_params_and_buffers_to_ignore = [
        name for name, buffer in model.named_buffers() if buffer.dtype == torch.bool
    ]


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


# ----------------------------------------------------------------------------------------------------------------
# accelerate launch options and packaged profiles
# ----------------------------------------------------------------------------------------------------------------


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


def make_training_parser(
    command: str,
    description: str,
    config_class: type,
    subparsers: Any = None,
    prog: str | None = None,
    lora_task_type: str | None = None,
    script_args_class: type | None = None,
) -> TrlParser:
    """
    Parser of a training script: `(ScriptArguments, <config_class>, ModelConfig, DatasetMixtureConfig)`.

    Args:
        command (`str`):
            The `trl` subcommand, e.g. `"sft"`.
        description (`str`):
            One-line description shown in `--help`.
        config_class (`type`):
            The trainer's config dataclass.
        subparsers (`argparse._SubParsersAction` or `None`, *optional*, defaults to `None`):
            When given (created with `parser_class=TrlParser`), the command is added to them.
        prog (`str` or `None`, *optional*, defaults to `None`):
            Program name shown in the usage line of a standalone parser.
        lora_task_type (`str` or `None`, *optional*, defaults to `None`):
            Default `--lora_task_type` (e.g. `"SEQ_CLS"` for reward models); `None` keeps `CAUSAL_LM`.
        script_args_class (`type` or `None`, *optional*, defaults to `None`):
            A [`ScriptArguments`] subclass with the command's own arguments (e.g. GRPO's `--reward_funcs`).
    """
    from ..trainer.model_config import ModelConfig

    dataclass_types = (script_args_class or ScriptArguments, config_class, ModelConfig, DatasetMixtureConfig)
    if subparsers is not None:
        parser = subparsers.add_parser(
            command, help=description, description=description, dataclass_types=dataclass_types
        )
    else:
        parser = TrlParser(dataclass_types, prog=prog, description=description)
    if lora_task_type is not None:
        parser.set_defaults(lora_task_type=lora_task_type)
    return parser


def run_training(
    trainer_class: type,
    script_args: ScriptArguments,
    training_args: Any,
    model_args: ModelConfig,
    dataset_args: DatasetMixtureConfig | None = None,
    **trainer_kwargs: Any,
):
    """
    The flow every training script shares: model kwargs from `model_args`, dataset loading, train, save, push.

    Args:
        trainer_class (`type`):
            The trainer, e.g. `SFTTrainer`.
        script_args ([`ScriptArguments`]):
            Dataset name, configuration and splits.
        training_args:
            The trainer configuration.
        model_args ([`ModelConfig`]):
            Model to load, dtype, LoRA and quantization options.
        dataset_args ([`DatasetMixtureConfig`] or `None`, *optional*, defaults to `None`):
            A dataset mixture (used instead of `dataset_name` when it lists datasets).
        **trainer_kwargs:
            Extra trainer arguments (e.g. `reward_funcs` for GRPO).

    Returns:
        The trained trainer.
    """
    with report_user_errors(f"trl {trainer_class._name.lower()}"):
        return _run_training(trainer_class, script_args, training_args, model_args, dataset_args, **trainer_kwargs)


def _run_training(trainer_class, script_args, training_args, model_args, dataset_args, **trainer_kwargs):
    from trl.trainer.input_checks import check_model_path
    from trl.trainer.peft_utils import get_peft_config

    if model_args.model_name_or_path is None:
        raise ValueError("No model given: set `--model_name_or_path` (a Hub id or a local directory).")
    check_model_path(model_args.model_name_or_path)  # before the dataset loads
    resume_from_checkpoint = resolve_resume_from_checkpoint(training_args.resume_from_checkpoint)
    training_args.model_init_kwargs = merge_model_init_kwargs(
        model_init_kwargs_from_args(model_args), training_args.model_init_kwargs
    )
    dataset = load_dataset_from_args(script_args, dataset_args)
    eval_dataset = None
    if training_args.eval_strategy != "no":
        eval_dataset = get_split(dataset, script_args.dataset_test_split, "--dataset_test_split")
    trainer = trainer_class(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=get_split(dataset, script_args.dataset_train_split, "--dataset_train_split"),
        eval_dataset=eval_dataset,
        peft_config=get_peft_config(model_args),
        **trainer_kwargs,
    )
    if script_args.ignore_bias_buffers:
        ignore_bool_buffers(trainer.model)
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    return trainer
