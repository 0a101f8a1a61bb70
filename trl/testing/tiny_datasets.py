"""Tiny datasets in every TRL format, shipped with the package and loadable offline with `datasets.load_dataset`."""

from pathlib import Path


_DATASETS_DIR = Path(__file__).resolve().parent / "data" / "datasets"

DATASET_CONFIGS = (
    "standard_language_modeling",
    "standard_prompt_only",
    "standard_prompt_completion",
    "standard_preference",
    "standard_implicit_prompt_preference",
    "standard_unpaired_preference",
    "standard_stepwise_supervision",
    "conversational_language_modeling",
    "conversational_prompt_only",
    "conversational_prompt_completion",
    "conversational_preference",
    "conversational_implicit_prompt_preference",
    "conversational_unpaired_preference",
    "conversational_tool_calling",
)


def get_dataset_path() -> str:
    """
    Returns the directory of the bundled test datasets.

    Returns:
        `str`: A directory that `datasets.load_dataset(path, config_name)` loads offline, with `train` (48 rows)
        and `test` (8 rows) splits for each name in `DATASET_CONFIGS`.
    """
    return str(_DATASETS_DIR)


def load_test_dataset(config_name: str, split: str = "train"):
    """
    Loads one split of a bundled test dataset.

    Args:
        config_name (`str`):
            One of `DATASET_CONFIGS`, e.g. `"standard_preference"` or `"conversational_prompt_only"`.
        split (`str`, *optional*, defaults to `"train"`):
            `"train"` or `"test"`.

    Returns:
        [`~datasets.Dataset`]: The split.
    """
    from datasets import load_dataset

    if config_name not in DATASET_CONFIGS:
        raise ValueError(f"Unknown dataset config {config_name!r}; choose one of {DATASET_CONFIGS}.")
    return load_dataset(get_dataset_path(), config_name, split=split)
