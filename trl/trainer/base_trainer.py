"""`BaseTrainer`: what every trl trainer shares on top of `transformers.Trainer`.

- a per-mode metrics store (`self._metrics`) that `log()` averages, prefixes and clears;
- a derived-quantities table printed when training starts (global batch, steps per epoch, ...);
- model cards written next to every saved model;
- atomic checkpoints with one mechanism for extra state (`extra_state_dict()`, in `trl.trainer.checkpointing`).

Model loading, pad-token resolution and PEFT wrapping live in `trl.trainer.model_utils`, so that trainers call them
from their own `_setup_model` step before `Trainer.__init__` runs.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections import defaultdict
from typing import Any

import torch
from transformers import Trainer

from .. import __version__
from .checkpointing import CheckpointingMixin
from .input_checks import check_lengths_fit_model, check_output_dir, logged_num_tokens


class BaseTrainer(CheckpointingMixin, Trainer):
    """Base class of every trl trainer.

    Class attributes set by subclasses:
        _tag_names (`list[str]`): tags added to the model card, e.g. `["trl", "sft"]`.
        _name (`str`): the method's display name, e.g. `"SFT"`.
        _paper (`dict`): `{"title", "id", "citation"}` of the method's paper, shown on the model card.
        _template_file (`str`): the model-card template in `trl/templates/`.
    """

    _tag_names: list[str] = ["trl"]
    _name: str = "Base"
    _paper: dict[str, str] = {}
    _template_file: str = "lm_model_card.md"

    def __init__(self, *args: Any, **kwargs: Any):
        self._metrics: dict[str, defaultdict[str, list[float]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        if kwargs.get("args") is not None and kwargs.get("model") is not None:
            check_lengths_fit_model(kwargs["args"], kwargs["model"])
        super().__init__(*args, **kwargs)
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)

    # ------------------------------------------------------------------ metrics
    def _mode(self) -> str:
        return "train" if self.model.training else "eval"

    # Running totals: `log()` reports their latest value, not the mean over the logging window.
    _CUMULATIVE_METRICS = frozenset({"num_tokens"})

    def log_metric(self, name: str, value: float | torch.Tensor, mode: str | None = None) -> None:
        """Record one value of a metric; `log()` reports the mean of the values recorded since the last log (the
        latest value for running totals such as `num_tokens`)."""
        if isinstance(value, torch.Tensor):
            value = value.detach().float().mean().item()
        values = self._metrics[mode or self._mode()][name]
        if name in self._CUMULATIVE_METRICS:
            values.clear()
        values.append(float(value))

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        # A dict of eval datasets is evaluated one by one with prefixes "eval_<name>": remember the current one.
        self._eval_metric_prefix = metric_key_prefix
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        averaged = {key: sum(values) / len(values) for key, values in self._metrics[mode].items() if values}
        if mode == "eval":
            prefix = getattr(self, "_eval_metric_prefix", "eval")
            averaged = {f"{prefix}_{key}": value for key, value in averaged.items()}
        # Updated in place: `evaluate()` returns this same dict, so the averaged metrics reach its caller too.
        logs.update(averaged)
        super().log(logs, start_time)
        self._metrics[mode].clear()

    def router_aux_loss(self, aux_loss: torch.Tensor | None, mode: str) -> torch.Tensor | float:
        """The MoE router load-balancing term to add to the loss, logged as `aux_loss`.

        Its weight is the config's `router_aux_loss_coef`, or the model config's when that is `None`.

        Args:
            aux_loss (`torch.Tensor` or `None`):
                The model output's `aux_loss` (`None` for dense models, or when router logits are off).
            mode (`str`):
                `"train"` or `"eval"`.
        """
        if aux_loss is None:
            return 0.0
        coef = getattr(self.args, "router_aux_loss_coef", None)
        if coef is None:
            coef = getattr(self.accelerator.unwrap_model(self.model).config, "router_aux_loss_coef", 0.0)
        self.log_metric("aux_loss", self.accelerator.gather(aux_loss.detach().reshape(1)).mean(), mode)
        return coef * aux_loss

    def compute_loss_context_manager(self):
        context = super().compute_loss_context_manager()
        if not getattr(self.args, "activation_offloading", False):
            return context
        # Tensors saved for the backward pass live in (pinned) CPU memory until they are needed.
        stack = contextlib.ExitStack()
        stack.enter_context(context)
        stack.enter_context(torch.autograd.graph.save_on_cpu(pin_memory=True))
        return stack

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

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        self._print_derived_quantities()
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            from transformers.trainer_utils import get_last_checkpoint

            checkpoint = get_last_checkpoint(self.args.output_dir)
        if not checkpoint and not getattr(self, "_has_trained", False):
            # A second `train()` of this trainer writes over its own files; a fresh run may not write over others'.
            check_output_dir(self.args.output_dir, getattr(self.args, "overwrite_output_dir", False))
        self._has_trained = True
        if isinstance(checkpoint, str):
            self._restore_token_count(checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _restore_token_count(self, checkpoint: str) -> None:
        # The cumulative `num_tokens` metric continues from the last value logged before the checkpoint (exact when
        # `save_steps` is a multiple of `logging_steps`).
        if not hasattr(self, "_total_train_tokens"):
            return
        tokens = logged_num_tokens(checkpoint)
        if tokens is not None:
            self._total_train_tokens = tokens

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
        if not self.is_world_process_zero():
            return
        from .model_card import render_model_card

        output_dir = output_dir or self.args.output_dir
        base_model = getattr(getattr(self.model, "config", None), "_name_or_path", None)
        if base_model and os.path.isdir(base_model):
            base_model = None  # a local path says nothing to a reader of the card
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        card = render_model_card(
            template_file=self._template_file,
            base_model=base_model,
            model_name=model_name or os.path.basename(os.path.normpath(output_dir)),
            hub_model_id=self.hub_model_id if hasattr(self, "hub_model_id") else self.args.hub_model_id,
            dataset_name=dataset_name,
            tags=["generated_from_trainer", *tags, *self._tag_names],
            trainer_name=self._name,
            paper=self._paper,
            trl_version=__version__,
        )
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "README.md"), "w", encoding="utf-8") as file:
            file.write(card)
