"""[`RichProgressCallback`]: training and evaluation progress bars and a live table of the last logged metrics."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from ..import_utils import is_rich_available, require


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class RichProgressCallback(TrainerCallback):
    """Show training progress with [rich](https://github.com/Textualize/rich): a training bar, an evaluation bar while
    the trainer evaluates, and a table of the metrics of the last `log` call, all in one live panel.

    Only the main process draws. Pass `disable_tqdm=True` in the training arguments to drop the default tqdm bars,
    which would otherwise print next to the panel.

    Args:
        console (`rich.console.Console` or `None`, *optional*, defaults to `None`):
            Where to draw; `None` uses a console on standard output. An extension of the reference's signature, for
            recording the output (e.g. `Console(record=True)`) or sending it to a file.

    Example:
    ```python
    from trl import RichProgressCallback, SFTConfig, SFTTrainer

    trainer = SFTTrainer(model, args=SFTConfig(disable_tqdm=True), train_dataset=dataset)
    trainer.add_callback(RichProgressCallback())
    ```
    """

    def __init__(self, console: Any = None):
        require(is_rich_available(), "RichProgressCallback", "pip install rich")
        self.console = console
        self.live = None
        self.progress = None
        self.training_task = None
        self.prediction_task = None
        self.metrics: dict[str, str] = {}

    # ------------------------------------------------------------------------------------------------ rendering
    def _metrics_table(self) -> Any:
        from rich.table import Table

        table = Table(title="Last logged metrics", show_header=True, header_style="bold", expand=False)
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in self.metrics.items():
            table.add_row(key, value)
        return table

    def _renderable(self) -> Any:
        from rich.console import Group

        return Group(self.progress, self._metrics_table()) if self.metrics else Group(self.progress)

    def _refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._renderable(), refresh=True)

    # ------------------------------------------------------------------------------------------------ training
    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from rich.console import Console
        from rich.live import Live
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = self.console or Console()
        self.progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.training_task = self.progress.add_task("Training", total=state.max_steps)
        self.live = Live(self._renderable(), console=self.console, refresh_per_second=4)
        self.live.start()

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None and self.training_task is not None:
            self.progress.update(self.training_task, completed=state.global_step)
            self._refresh()

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if self.progress is None or eval_dataloader is None or not hasattr(eval_dataloader, "__len__"):
            return
        if self.prediction_task is None:
            self.prediction_task = self.progress.add_task("Evaluating", total=len(eval_dataloader))
        self.progress.advance(self.prediction_task, 1)
        self._refresh()

    def _end_prediction(self) -> None:
        if self.progress is not None and self.prediction_task is not None:
            self.progress.remove_task(self.prediction_task)
        self.prediction_task = None
        self._refresh()

    def on_evaluate(self, args, state, control, **kwargs):
        self._end_prediction()

    def on_predict(self, args, state, control, **kwargs):
        self._end_prediction()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is None or not logs:
            return
        # The table shows the latest value of every metric seen so far: train and eval logs arrive separately.
        self.metrics.update({key: _format_value(value) for key, value in logs.items() if key != "total_flos"})
        self._refresh()

    def on_train_end(self, args, state, control, **kwargs):
        if self.live is None:
            return
        self._refresh()
        self.live.stop()
        self.live = None
        self.progress = None
        self.training_task = None
        self.prediction_task = None
