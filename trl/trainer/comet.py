"""Comet ML helpers: the URL of the running experiment and logging a table to it (comet_ml is optional)."""

from __future__ import annotations

import importlib.util
from typing import Any


def _comet_available() -> bool:
    return importlib.util.find_spec("comet_ml") is not None


def get_comet_experiment_url() -> str | None:
    """URL of the running Comet experiment, or `None` without comet_ml or without a running experiment."""
    if not _comet_available():
        return None
    import comet_ml

    experiment = comet_ml.get_running_experiment()
    return None if experiment is None else experiment.url


def log_table_to_comet_experiment(name: str, table: Any) -> None:
    """Log `table` (a pandas `DataFrame`) as the file `name` of the running Comet experiment, if there is one.

    Args:
        name (`str`):
            File name of the table in the experiment (e.g. `"game_log.csv"`).
        table (`pandas.DataFrame`):
            The table.

    Raises:
        `ModuleNotFoundError`: comet_ml is not installed (`pip install comet_ml`).
    """
    if not _comet_available():
        raise ModuleNotFoundError(
            "log_table_to_comet_experiment needs comet_ml, which is not installed. Install it with "
            "`pip install comet_ml`."
        )
    import comet_ml

    experiment = comet_ml.get_running_experiment()
    if experiment is not None:
        experiment.log_table(tabular_data=table, filename=name)
