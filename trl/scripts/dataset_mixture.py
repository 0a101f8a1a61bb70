"""Which data a script trains on: [`DatasetConfig`], [`DatasetMixtureConfig`], [`get_dataset`] (mixtures of several
datasets, each with its own split, columns and share) and the loading helpers of the training scripts."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from datasets import DatasetDict

    from .utils import ScriptArguments


logger = logging.getLogger(__name__)


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
    return load_named_dataset(script_args.dataset_name, script_args.dataset_config, script_args.dataset_streaming)


# File extensions `--dataset_name` accepts for a local file, and the `datasets` builder that reads each.
DATA_FILE_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".txt": "text",
}


def load_named_dataset(name: str, config: str | None = None, streaming: bool = False):
    """
    Load what `--dataset_name` names: a local data file, a local folder, or a Hub id.

    - a file (`.json`, `.jsonl`, `.csv`, `.tsv` (tab separated), `.parquet`, `.arrow`, `.txt`) becomes the `train`
      split;
    - a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` is read with `datasets.load_from_disk`
      (a single `Dataset` becomes the `train` split);
    - any other folder, and a Hub id, go to `datasets.load_dataset(name, name=config)` (a folder of data files, or a
      dataset repository with configurations).

    Args:
        name (`str`):
            The path or Hub id.
        config (`str` or `None`, *optional*, defaults to `None`):
            The dataset configuration (`--dataset_config`), for folders with configurations and Hub ids.
        streaming (`bool`, *optional*, defaults to `False`):
            Stream instead of loading (not for saved datasets).

    Returns:
        [`~datasets.DatasetDict`] or [`~datasets.IterableDatasetDict`]: The splits.
    """
    import os

    import datasets

    path = os.path.expanduser(name)
    if os.path.isfile(path):
        extension = os.path.splitext(path)[1].lower()
        if extension not in DATA_FILE_BUILDERS:
            raise ValueError(
                f"--dataset_name {name!r} is a file with an unknown extension {extension!r}; use one of "
                f"{sorted(DATA_FILE_BUILDERS)}, a folder, or a Hub id."
            )
        kwargs = {"delimiter": "\t"} if extension == ".tsv" else {}
        builder = DATA_FILE_BUILDERS[extension]
        return datasets.load_dataset(builder, data_files={"train": path}, streaming=streaming, **kwargs)
    if os.path.isdir(path) and _is_saved_dataset(path):
        if streaming:
            raise ValueError(f"{name!r} is a dataset saved with `save_to_disk`, which cannot be streamed.")
        loaded = datasets.load_from_disk(path)
        return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})
    if not os.path.isdir(path) and (name.startswith((".", "/", "~")) or os.sep in name and name.count("/") > 1):
        raise FileNotFoundError(
            f"--dataset_name {name!r} looks like a local path but no such file or folder exists (the current "
            f"directory is {os.getcwd()}). A Hub id has the form `org/name`."
        )
    return datasets.load_dataset(path if os.path.isdir(path) else name, name=config, streaming=streaming)


def _is_saved_dataset(path: str) -> bool:
    import os

    if os.path.isfile(os.path.join(path, "dataset_dict.json")):
        return True
    return os.path.isfile(os.path.join(path, "state.json")) and os.path.isfile(os.path.join(path, "dataset_info.json"))


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
