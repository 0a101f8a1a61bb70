"""What a trl run reports about itself, a base of [`BaseTrainer`]: the table of derived quantities printed when
training starts (global batch, steps per epoch, ...; trainers add their rows) and the model card written next to
every saved model and checkpoint."""

from __future__ import annotations

import math
import os
from typing import Any


class RunReportMixin:
    """The derived-quantities table (`_derived_quantities`, printed by `_print_derived_quantities` unless
    `TRL_QUIET` is set) and model cards (`create_model_card`, from the trainer's `_name`, `_paper`, `_tag_names` and
    `_template_file`)."""

    # ------------------------------------------------------------ training summary
    def _derived_quantities(self) -> dict[str, Any]:
        """The numbers a user should check before a long run; subclasses add their own rows."""
        args = self.args
        global_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        rows: dict[str, Any] = {
            "processes": args.world_size,
            "per-device batch": args.per_device_train_batch_size,
            "gradient accumulation": args.gradient_accumulation_steps,
            "global batch (sequences/step)": global_batch,
        }
        dataset = self.train_dataset
        if dataset is not None and hasattr(dataset, "__len__"):
            rows["training examples"] = len(dataset)
            rows["optimizer steps per epoch"] = max(1, math.ceil(len(dataset) / global_batch))
        if args.max_steps > 0:
            rows["total optimizer steps"] = args.max_steps
        elif "optimizer steps per epoch" in rows:
            rows["total optimizer steps"] = math.ceil(rows["optimizer steps per epoch"] * args.num_train_epochs)
        max_length = getattr(args, "max_length", None)
        if max_length:
            rows["max tokens per step"] = global_batch * max_length
        return rows

    def _print_derived_quantities(self) -> None:
        if not self.is_world_process_zero() or os.environ.get("TRL_QUIET"):
            return
        rows = self._derived_quantities()
        try:
            from rich.console import Console
            from rich.table import Table

            table = Table(title=f"{self._name} training run", show_header=False)
            for key, value in rows.items():
                table.add_row(key, str(value))
            Console().print(table)
        except ImportError:
            for key, value in rows.items():
                print(f"{key}: {value}")

    # ------------------------------------------------------------------ model card
    # Checkpoints (atomic, with `extra_state_dict()`) are written by `CheckpointingMixin`; running statistics
    # (`self.running`, e.g. BCO's reward mean δ) are part of that extra state.
    def _save_checkpoint(self, model, trial):
        if self.args.hub_model_id is None:
            model_name = os.path.basename(os.path.normpath(self.args.output_dir))
        else:
            model_name = self.args.hub_model_id.split("/")[-1]
        self.create_model_card(model_name=model_name)
        super()._save_checkpoint(model, trial)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        if not _internal_call:
            self.create_model_card(output_dir=output_dir)

    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | None = None,
        tags: str | list[str] | None = None,
        output_dir: str | None = None,
        **_: Any,
    ) -> None:
        """Write a `README.md` model card describing this training run.

        Args:
            model_name (`str` or `None`, *optional*, defaults to `None`):
                Name of the trained model; defaults to the output directory's name.
            dataset_name (`str` or `None`, *optional*, defaults to `None`):
                Dataset used for training.
            tags (`str`, `list[str]` or `None`, *optional*, defaults to `None`):
                Extra tags for the card's metadata.
            output_dir (`str` or `None`, *optional*, defaults to `None`):
                Where to write the card; defaults to `args.output_dir`.
        """
        if self.is_world_process_zero():
            from .model_card import write_model_card

            write_model_card(self, model_name, dataset_name, tags, output_dir or self.args.output_dir)
