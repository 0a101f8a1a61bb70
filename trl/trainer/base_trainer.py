"""`BaseTrainer`: what every trl trainer shares on top of `transformers.Trainer`.

- the trainer skeleton: `__init__` runs one fixed sequence of small steps, and a trainer overrides only the steps it
  needs (see [`BaseTrainer`]);
- one declared loss normalisation (`loss_normalization = "tokens"` or `"examples"`), applied once;
- a per-mode metrics store (`self._metrics`) that `log()` averages, prefixes and clears;
- one `compute_loss` template calling the method's `_loss_and_outputs` hook, `normalized_loss` for it, and one
  `prediction_step` (`_predictions_from_loss`, `_eval_predictions`);
- a derived-quantities table printed when training starts and model cards (`trl.trainer.run_report`);
- atomic checkpoints with one mechanism for extra state (`extra_state_dict()`, in `trl.trainer.checkpointing`).

Model loading, pad-token resolution, PEFT wrapping and auxiliary (reference, teacher, reward) models live in
`trl.trainer.model_utils`; the skeleton's default steps call them.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import Trainer, set_seed

from .checkpointing import CheckpointingMixin
from .data_preparation import prepare_train_and_eval
from .input_checks import check_lengths_fit_model, check_output_dir, check_text_columns, logged_num_tokens
from .model_utils import (
    apply_chat_template_path,
    check_activation_offloading,
    check_model_init_kwargs_unused,
    load_policy,
    load_processing_class,
    model_name_of,
    prepare_peft_model,
    resolve_pad_token_id,
    to_config,
)
from .papers import PAPERS
from .run_report import RunReportMixin
from .trainer_inputs import LossCall, TrainerInputs  # the skeleton's step arguments, importable from here
from .utils import disable_dropout_in_model


# `loss_normalization` -> (`model_accepts_loss_kwargs`, `loss_is_scaled_for_ga`) of `transformers.Trainer`.
# "tokens": `compute_loss` divides a sum by `num_items_in_batch`, the labelled-token count of the accumulated batch on
# every process (Trainer counts it only for models it believes take loss kwargs) and is already scaled for gradient
# accumulation. "examples": a mean over the micro-batch, which Trainer divides by the accumulation steps. "step": the
# trainer normalises by its own optimizer-step count (online trainers): Trainer neither counts nor divides.
_LOSS_NORMALIZATIONS = {"tokens": (True, True), "examples": (False, False), "step": (False, True)}


class BaseTrainer(RunReportMixin, CheckpointingMixin, Trainer):
    """Base class of every trl trainer, and the skeleton of their `__init__`.

    A trainer's public `__init__` keeps the reference library's signature, stores what only it takes (e.g.
    `formatting_func`) and calls `BaseTrainer.__init__`, which runs, in this order:

    1. `_resolve_args(args, model)`: the config as `_config_class` (`None`: its defaults, `output_dir="<model>-<name>"`);
    2. `_validate(args, inputs)`: every check that needs no model, before any model loads;
    3. `_setup_model(model, args, quantization_config)` (or `_setup_model_init(model_init, args)` without a model);
    4. `_setup_processing_class(processing_class, model, args)`: the tokenizer / processor, and `chat_template_path`;
    5. `_setup_peft(model, peft_config, args)`;
    6. `disable_dropout` on the policy (the one place it is applied to it);
    7. `_setup_pad_token(model, processing_class, args)` -> `self.pad_token_id` (one rule, see
       [`~trl.trainer.model_utils.resolve_pad_token_id`]; the tokenizer is never changed);
    8. `_setup_auxiliary_models(model, args, inputs)` -> `{name: model}` (reference, teacher, reward, ...: built with
       [`~trl.trainer.model_utils.prepare_auxiliary_model`], frozen, eval mode, dropout off);
    9. `_resolve_options(model, processing_class, args, inputs)`: settings derived from all of the above;
    10. `_prepare_dataset(dataset, processing_class, args, name)` on the training data and on every evaluation set
        (`None`, a `Dataset`, an `IterableDataset` or a dict of them: `prepare_train_and_eval`);
    11. `_default_collator(processing_class, args)` unless a `data_collator` was passed;
    12. `transformers.Trainer.__init__`, then the declared `loss_normalization`;
    13. `_after_init(auxiliary_models)`.

    A subclass that sets no `_config_class` (not yet on the skeleton) passes a prepared model and everything
    `Trainer` needs; only step 12 runs.

    Class attributes: `_config_class` (e.g. `SFTConfig`), `loss_normalization` (`"tokens"`, `"examples"` or
    `"step"`, see `_LOSS_NORMALIZATIONS`), `_requires_train_dataset`, and for the model card `_name` (e.g. `"SFT"`),
    `_tag_names` (defaults to `["trl", "<_name lower-cased, spaces as dashes>"]`) and `_template_file`; the paper
    cited (`_paper`, `{"title", "id", "citation"}`) is the entry of `_name` in `trl.trainer.papers.PAPERS`.
    """

    _config_class: type | None = None
    loss_normalization: str = "examples"
    _requires_train_dataset: bool = True
    # Untokenised columns whose values must be text or role/content messages (those a dataset lacks are skipped).
    _text_columns: tuple[str, ...] = ("prompt", "completion", "chosen", "rejected", "text", "messages")
    _tag_names: list[str] = ["trl"]
    _name: str = "Base"
    _template_file: str = "lm_model_card.md"

    @property
    def _paper(self) -> dict[str, str]:
        # The paper of the method, for the model card: `trl.trainer.papers.PAPERS[_name]` (`{}` for none).
        return PAPERS.get(self._name, {})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A trainer that names itself (`_name = "Online DPO"`) is tagged `["trl", "online-dpo"]` unless it sets tags.
        if "_name" in cls.__dict__ and "_tag_names" not in cls.__dict__:
            cls._tag_names = ["trl", cls._name.lower().replace(" ", "-")]

    def __init__(
        self,
        model: Any = None,
        args: Any = None,
        data_collator: Callable | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        compute_metrics: Callable | None = None,
        callbacks: list | None = None,
        optimizers: tuple = (None, None),
        optimizer_cls_and_kwargs: tuple | None = None,
        preprocess_logits_for_metrics: Callable | None = None,
        quantization_config: Any = None,
        peft_config: Any = None,
        *,
        ref_model: Any = None,
        model_init: Callable | None = None,
        compute_loss_func: Callable | None = None,
    ):
        trainer_kwargs = dict(compute_metrics=compute_metrics, callbacks=callbacks, optimizers=optimizers,
                              optimizer_cls_and_kwargs=optimizer_cls_and_kwargs, compute_loss_func=compute_loss_func,
                              preprocess_logits_for_metrics=preprocess_logits_for_metrics)  # fmt: skip
        if self._config_class is None:
            self._init_trainer(model, args, data_collator, train_dataset, eval_dataset, processing_class,
                               model_init=model_init, **trainer_kwargs)  # fmt: skip
            return
        inputs = TrainerInputs(model, ref_model, train_dataset, eval_dataset, processing_class, peft_config,
                               quantization_config, model_init)  # fmt: skip
        args = self._resolve_args(args, model)
        self._validate(args, inputs)
        if isinstance(model, str):
            # Heads missing from the checkpoint (a reward or PRM score head) are initialised from the config's seed,
            # so two runs of one config start alike; `Trainer.__init__` seeds again the same way afterwards.
            set_seed(args.seed)
        if model is not None:
            model = self._setup_model(model, args, quantization_config)
        model_init = self._setup_model_init(model_init, args)
        processing_class = self._setup_processing_class(processing_class, model, args)
        if model is not None:
            model = self._setup_peft(model, peft_config, args)
            if getattr(args, "disable_dropout", False):
                disable_dropout_in_model(model)
        self.pad_token_id = self._setup_pad_token(model, processing_class, args)
        auxiliary_models = self._setup_auxiliary_models(model, args, inputs)
        self._resolve_options(model, processing_class, args, inputs)
        train_dataset, eval_dataset = prepare_train_and_eval(
            train_dataset, eval_dataset, lambda data, name: self._prepare_checked(data, processing_class, args, name)
        )
        if data_collator is None:
            data_collator = self._default_collator(processing_class, args)
        self._init_trainer(model, args, data_collator, train_dataset, eval_dataset, processing_class,
                           model_init=model_init, **trainer_kwargs)  # fmt: skip
        self._after_init(auxiliary_models)

    def _init_trainer(self, model: Any, args: Any, *trainer_args: Any, **trainer_kwargs: Any) -> None:
        # Step 12: `transformers.Trainer.__init__`, then the declared loss normalisation and the model tags.
        self._metrics: dict[str, defaultdict[str, list[float]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        if args is not None and model is not None:
            check_lengths_fit_model(args, model)
        Trainer.__init__(self, model, args, *trainer_args, **trainer_kwargs)
        if self._config_class is not None:
            self.model_accepts_loss_kwargs, self.loss_is_scaled_for_ga = _LOSS_NORMALIZATIONS[self.loss_normalization]
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)

    # ------------------------------------------------------------------ skeleton steps (override as needed)
    def _resolve_args(self, args: Any, model: Any) -> Any:
        """Step 1: `args` as an instance of `_config_class`; `None` gives its defaults."""
        name = model_name_of(model) if model is not None else "model"
        return to_config(args, self._config_class, name, self._name)

    def _validate(self, args: Any, inputs: TrainerInputs) -> None:
        """Step 2: checks that need no model. Extend with `super()._validate(args, inputs)`."""
        check_model_init_kwargs_unused(inputs.model if inputs.model is not None else inputs.model_init, args)
        if self._requires_train_dataset and inputs.train_dataset is None:
            raise ValueError(f"{type(self).__name__} needs a train_dataset.")
        check_activation_offloading(args)

    def _setup_model(self, model: Any, args: Any, quantization_config: Any) -> Any:
        """Step 3: the trained model, loaded from a string (float32 unless `model_init_kwargs` sets `dtype`)."""
        return load_policy(model, args, quantization_config)

    def _setup_model_init(self, model_init: Callable | None, args: Any) -> Callable | None:
        """Step 3 without a model: the `model_init` factory `Trainer` calls (hyperparameter search)."""
        return model_init

    def _setup_processing_class(self, processing_class: Any, model: Any, args: Any) -> Any:
        """Step 4: the tokenizer of `model` unless one was passed; `chat_template_path` applied when set."""
        if processing_class is None:
            processing_class = load_processing_class(model.config._name_or_path, args)
        path = getattr(args, "chat_template_path", None)
        if path is not None and model is not None:
            _, processing_class = apply_chat_template_path(model, processing_class, path)
        return processing_class

    def _setup_peft(self, model: Any, peft_config: Any, args: Any) -> Any:
        """Step 5: the model wrapped with `peft_config` (unchanged without one)."""
        return prepare_peft_model(model, peft_config, args)

    def _setup_pad_token(self, model: Any, processing_class: Any, args: Any) -> int:
        """Step 7: the pad id of the collators (`padding_value`, `pad_token`, the tokenizer's pad, else EOS)."""
        return resolve_pad_token_id(
            processing_class, getattr(args, "pad_token", None), getattr(args, "padding_value", None)
        )

    def _setup_auxiliary_models(self, model: Any, args: Any, inputs: TrainerInputs) -> dict[str, Any]:
        """Step 8: the models the trainer runs but does not train, by name (`{}`: none)."""
        return {}

    def _resolve_options(self, model: Any, processing_class: Any, args: Any, inputs: TrainerInputs) -> None:
        """Step 9: the trainer's settings derived from the model, the tokenizer and the raw data."""

    def _prepare_checked(self, dataset: Any, processing_class: Any, args: Any, name: str) -> Any:
        # Before any tokenisation: a non-text value or a message without a role is named with its column and row.
        check_text_columns(dataset, self._text_columns, name)
        return self._prepare_dataset(dataset, processing_class, args, name)

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, name: str) -> Any:
        """Step 10: one dataset made ready for the collator; `name` is `"train"`, `"eval"` or `"eval_<key>"`."""
        return dataset

    def _default_collator(self, processing_class: Any, args: Any) -> Callable | None:
        """Step 11: the collator used when none is passed (`None`: `Trainer`'s default)."""
        return None

    def _after_init(self, auxiliary_models: dict[str, Any]) -> None:
        """Step 13: what needs the accelerator (placing auxiliary models, callbacks, flags read from the model)."""

    def _collator_columns(self) -> Sequence[str] | None:
        """The dataset columns the collator reads, which `Trainer` keeps (with `remove_unused_columns=True` it drops
        every column `model.forward` does not take); `None` leaves `Trainer`'s rule."""
        return None

    def _set_signature_columns_if_needed(self) -> None:
        columns = self._collator_columns()
        if self._signature_columns is None and columns is not None:
            self._signature_columns = list(columns)
        super()._set_signature_columns_if_needed()

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

    @property
    def aux_loss_enabled(self) -> bool:
        """Whether the MoE router loss is on: the model config's `output_router_logits` (the reference's attribute)."""
        config = getattr(self.accelerator.unwrap_model(self.model), "config", None)
        return bool(getattr(config, "output_router_logits", False))

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

    def normalized_loss(self, loss: torch.Tensor, num_items_in_batch: torch.Tensor | int | None) -> torch.Tensor:
        """`loss` as the declared `loss_normalization` hands it to `Trainer`'s backward pass.

        With `"tokens"`, `loss` is a sum divided by `num_items_in_batch`, the labelled tokens of every process; DDP
        then averages the gradients over the processes, so the loss is multiplied by their number (as
        `Trainer.compute_loss` does for models that take loss kwargs). Other normalisations return `loss` unchanged.

        Args:
            loss (`torch.Tensor`):
                The micro-batch's loss from `compute_loss`.
            num_items_in_batch (`torch.Tensor`, `int` or `None`):
                `compute_loss`'s argument (`None` in evaluation).
        """
        across_devices = getattr(self.args, "average_tokens_across_devices", False) and self.args.world_size > 1
        if self.loss_normalization == "tokens" and num_items_in_batch is not None and across_devices:
            return loss * self.accelerator.num_processes
        return loss

    # ------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The loss of a micro-batch (with `return_outputs=True`, `(loss, outputs)`: what `_eval_predictions` reads).

        The template of the offline trainers: the method's part is its one hook, `_loss_and_outputs(model, inputs,
        call)`, with `call` the [`LossCall`] of this call (the mode, from `model.training`).
        """
        call = LossCall("train" if model.training else "eval", num_items_in_batch, return_outputs)
        loss, outputs = self._loss_and_outputs(model, inputs, call)
        return (loss, outputs) if return_outputs else loss

    def _loss_and_outputs(self, model: torch.nn.Module, inputs: dict, call: LossCall) -> tuple[torch.Tensor, Any]:
        """`(loss, outputs)` of a micro-batch: the hook of `compute_loss` that a trainer implements. The default is
        `transformers.Trainer.compute_loss` (the model's own loss, or `compute_loss_func` / the label smoother)."""
        return Trainer.compute_loss(self, model, dict(inputs), True, call.num_items_in_batch)

    # `prediction_step` computes the loss once with `return_outputs=True` and reads the predictions from its outputs
    # (`_eval_predictions`); False keeps `Trainer.prediction_step` (logits of the model outputs).
    _predictions_from_loss: bool = False

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if not self._predictions_from_loss:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        return (loss.detach(), *self._eval_predictions(outputs, inputs))

    def _eval_predictions(
        self, outputs: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(predictions, labels)` for `compute_metrics`, from `compute_loss`'s outputs.

        The default is that of the pairwise trainers (DPO, CPO, ORPO, Reward): the `[B, 2]` (chosen, rejected)
        rewards, with label 0 naming the chosen column (e.g. for `trl.trainer.utils.compute_accuracy`).
        """
        rewards_B_2 = torch.stack([outputs["chosen_rewards"], outputs["rejected_rewards"]], dim=1)
        return rewards_B_2, torch.zeros(rewards_B_2.shape[0], dtype=torch.long, device=rewards_B_2.device)

    def compute_loss_context_manager(self):
        context = super().compute_loss_context_manager()
        if not getattr(self.args, "activation_offloading", False):
            return context
        # Tensors saved for the backward pass live in (pinned) CPU memory until they are needed.
        stack = contextlib.ExitStack()
        stack.enter_context(context)
        stack.enter_context(torch.autograd.graph.save_on_cpu(pin_memory=True))
        return stack

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
