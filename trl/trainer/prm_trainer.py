"""Process reward modelling (PRM) on stepwise supervision.

A token-classification model with two classes reads the prompt followed by the reasoning steps, each step ended by
`step_separator`, and classifies the last token of every separator: 1 if the step is correct, 0 otherwise
(Uesato et al., 2022, arXiv 2211.14275; Lightman et al., 2023). Per (accumulated) batch,

    L = −Σ_{(b,t) ∈ S} log softmax(z_bt)[y_bt] / |S|,

where S holds the labelled positions (one per step, or only each example's last step with
`train_on_last_step_only`) and `y_bt` the step labels. The formula lives in
`trl.losses.token_classification_loss`. Like SFT, |S| counts the labelled positions of the whole accumulated batch
across processes, so splitting a batch into gradient-accumulation steps does not change the loss (the reference
averaged per micro-batch).

Each step is tokenised on its own and followed by the separator's tokens; the prompt gets a BOS token when the
tokenizer has one, then is cut from the left to `max_prompt_length`, the steps are cut from the right to
`max_completion_length`, and the whole sequence to `max_length`. At inference, join the prompt and the steps with
the same separator (ending with one) and read the class probabilities at the separator positions.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from datasets import Dataset, IterableDataset
from transformers import (
    AutoModelForTokenClassification,
    DataCollatorForTokenClassification,
    PreTrainedModel,
    TrainingArguments,
)
from transformers.trainer_utils import number_of_arguments

from ..data_utils import get_dataset_column_names, is_conversational
from ..losses import token_classification_loss
from .base_trainer import BaseTrainer, LossCall, TrainerInputs
from .data_preparation import _map_kwargs, first_example
from .input_checks import warn_unlearnable
from .model_utils import (
    classification_peft_config,
    get_tokenizer,
    load_trained_model,
    prepare_peft_model,
)
from .prm_config import PRMConfig
from .stepwise_data import (
    TOKENIZED_FEATURES,
    build_stepwise_example,
    check_stepwise_columns,
    check_stepwise_example,
    count_unlabelled,
    separator_token_ids,
    step_class_labels,
    tokenize_stepwise_batch,
)
from .utils import compute_accuracy, disable_dropout_in_model


_PRM_COLUMNS = ["input_ids", "labels", "attention_mask"]


# ---------------------------------------------------------------------------------------------------- model
def _is_two_class_token_classifier(model: torch.nn.Module) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    is_token_classifier = type(base).__name__.endswith("ForTokenClassification")
    return is_token_classifier and getattr(base.config, "num_labels", None) == 2


def _check_model(model: torch.nn.Module) -> None:
    if not _is_two_class_token_classifier(model):
        raise ValueError(
            f"PRMTrainer needs a token-classification model with 2 labels, got {type(model).__name__} "
            f"(num_labels={getattr(getattr(model, 'config', None), 'num_labels', None)}). Load it with "
            "AutoModelForTokenClassification.from_pretrained(path, num_labels=2), or pass the model id."
        )


class PRMTrainer(BaseTrainer):
    """Trainer for process reward models: token classification of every reasoning step.

    Args:
        model (`str`, `PreTrainedModel`, `PeftModel` or `None`, *optional*, defaults to `None`):
            Model id / local path, loaded with `AutoModelForTokenClassification.from_pretrained(model,
            num_labels=2, **model_init_kwargs)` (a causal LM checkpoint gets a new, randomly initialised head), or an
            instantiated token-classification model with 2 labels. `None` requires `model_init`.
        args (`PRMConfig`, `TrainingArguments` or `None`, *optional*, defaults to `None`):
            Training configuration. `None` uses `PRMConfig(output_dir="<model>-PRM")`.
        data_collator (`Callable` or `None`, *optional*, defaults to `None`):
            Defaults to [`~transformers.DataCollatorForTokenClassification`] (labels padded with -100).
        train_dataset (`Dataset`, `IterableDataset` or `None`, *optional*, defaults to `None`):
            Standard stepwise supervision (`prompt`, `completions`, `labels`), or pre-tokenised `input_ids` and
            `labels`, which are used as they are.
        eval_dataset (`Dataset`, `IterableDataset`, `dict[str, Dataset]` or `None`, *optional*, defaults to `None`):
            Evaluation data in the same formats; every step is labelled even with `train_on_last_step_only`.
        processing_class (`PreTrainedTokenizerBase` or `None`, *optional*, defaults to `None`):
            Defaults to the tokenizer of `model`. A tokenizer without a pad token pads with its EOS token.
        model_init (`Callable` or `None`, *optional*, defaults to `None`):
            Builds the model for hyperparameter search (with `model=None` and a `processing_class`).
        compute_metrics (`Callable` or `None`, *optional*, defaults to `None`):
            Defaults to `trl.trainer.utils.compute_accuracy`: token accuracy over the labelled positions, logged as
            `eval_accuracy`.
        callbacks, optimizers, preprocess_logits_for_metrics:
            As in [`~transformers.Trainer`].
        peft_config (`PeftConfig` or `None`, *optional*, defaults to `None`):
            Adapter configuration. Its task type is set to `TOKEN_CLS`, so the classification head is trained in
            full (PEFT adds it to `modules_to_save`).
    """

    _config_class = PRMConfig
    loss_normalization = "tokens"
    _requires_train_dataset = False
    _name = "PRM"
    _template_file = "rm_model_card.md"

    def __init__(
        self,
        model: str | PreTrainedModel | None = None,
        args: PRMConfig | TrainingArguments | None = None,
        data_collator: Callable | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Dataset | IterableDataset | dict[str, Dataset] | None = None,
        processing_class: Any = None,
        model_init: Callable | None = None,
        compute_metrics: Callable | None = None,
        callbacks: list | None = None,
        optimizers: tuple = (None, None),
        preprocess_logits_for_metrics: Callable | None = None,
        peft_config: Any = None,
    ):
        super().__init__(
            model, args, data_collator, train_dataset, eval_dataset, processing_class,
            compute_metrics if compute_metrics is not None else compute_accuracy, callbacks, optimizers, None,
            preprocess_logits_for_metrics, peft_config=peft_config, model_init=model_init,
        )  # fmt: skip

    # ------------------------------------------------------------------------------------------------ setup
    def _validate(self, args: PRMConfig, inputs: TrainerInputs) -> None:
        if inputs.model is None:
            if inputs.model_init is None:
                raise ValueError("PRMTrainer needs `model` (a model id or a token-classification model).")
            if inputs.processing_class is None:
                raise ValueError("With `model_init` and no `model`, pass the tokenizer as `processing_class`.")
            if inputs.peft_config is not None:
                raise ValueError("peft_config is not applied to models built by `model_init`; wrap them yourself.")
        elif inputs.model_init is not None:
            raise ValueError("Pass either `model` or `model_init` (for hyperparameter search), not both.")
        super()._validate(args, inputs)
        if (args.model_init_kwargs or {}).get("num_labels", 2) != 2:
            raise ValueError("A PRM has 2 labels (wrong / correct step): remove `num_labels` from model_init_kwargs.")

    def _setup_model(self, model: str | PreTrainedModel, args: PRMConfig, quantization_config: Any) -> PreTrainedModel:
        if isinstance(model, str):
            model = load_trained_model(model, args, AutoModelForTokenClassification, num_labels=2)
        _check_model(model)
        return model

    def _setup_model_init(self, model_init: Callable | None, args: PRMConfig) -> Callable | None:
        """Wrap `model_init` so that every model it builds is checked and gets dropout disabled."""
        if model_init is None:
            return None
        takes_trial = number_of_arguments(model_init) == 1

        def init(trial: Any = None) -> PreTrainedModel:
            model = model_init(trial) if takes_trial else model_init()
            _check_model(model)
            if args.disable_dropout:
                disable_dropout_in_model(model)
            return model

        return init

    def _setup_peft(self, model: PreTrainedModel, peft_config: Any, args: PRMConfig) -> Any:
        return prepare_peft_model(
            model, classification_peft_config(peft_config, model, "TOKEN_CLS", "process reward"), args
        )

    def _default_collator(self, processing_class: Any, args: PRMConfig) -> DataCollatorForTokenClassification:
        # DataCollatorForTokenClassification pads through the tokenizer; padded positions are masked and labelled
        # -100, so EOS works as padding. A tokenizer without that pad token is copied, never changed.
        tokenizer = get_tokenizer(processing_class)
        if tokenizer.pad_token_id != self.pad_token_id:
            tokenizer = copy.deepcopy(tokenizer)
            tokenizer.pad_token = tokenizer.convert_ids_to_tokens(self.pad_token_id)
        # Sequences are already truncated, so no `max_length` here (with padding=True it is ignored, with a warning on
        # every batch).
        return DataCollatorForTokenClassification(tokenizer)

    @staticmethod
    def tokenize_row(
        features: dict[str, Any],
        tokenizer: Any,
        step_separator: str,
        max_length: int | None,
        max_prompt_length: int | None,
        max_completion_length: int | None,
        train_on_last_step_only: bool,
        is_eval: bool,
    ) -> dict[str, list[int]]:
        """Tokenise one stepwise-supervision example into `input_ids` and `labels` (see `build_stepwise_example`).

        Args:
            features (`dict[str, Any]`):
                The example: `prompt` (str), `completions` (list of str) and `labels` (one bool per step).
            tokenizer (`PreTrainedTokenizerBase`):
                The tokenizer.
            step_separator (`str`):
                Text appended after every step; its last token carries the step's label.
            max_length, max_prompt_length, max_completion_length (`int` or `None`):
                Truncation limits.
            train_on_last_step_only (`bool`):
                Label only the last step (ignored when `is_eval`).
            is_eval (`bool`):
                Whether the example belongs to an evaluation set.
        """
        check_stepwise_example(features)
        steps = list(features["completions"])
        return build_stepwise_example(
            tokenizer(features["prompt"], add_special_tokens=False)["input_ids"],
            tokenizer(steps, add_special_tokens=False)["input_ids"] if steps else [],
            step_class_labels(features["labels"], train_on_last_step_only and not is_eval),
            separator_token_ids(tokenizer, step_separator),
            tokenizer.bos_token_id,
            max_length,
            max_prompt_length,
            max_completion_length,
        )

    def _prepare_dataset(
        self, dataset: Dataset | IterableDataset, processing_class: Any, args: PRMConfig, name: str
    ) -> Dataset | IterableDataset:
        tokenizer, is_eval = get_tokenizer(processing_class), name != "train"
        columns = get_dataset_column_names(dataset)
        if "input_ids" in columns:
            if "labels" not in columns:
                raise ValueError(
                    f"The pre-tokenised {name} dataset has 'input_ids' but no 'labels' (-100 except at the step "
                    "separators). Add them, or pass the raw 'prompt', 'completions' and 'labels' columns."
                )
            return dataset
        check_stepwise_columns(columns)
        example = first_example(dataset)
        if is_conversational(example):
            check_stepwise_example(example)  # raises the error that explains the standard format
        tokenize = partial(
            tokenize_stepwise_batch,
            tokenizer=tokenizer,
            separator_ids=separator_token_ids(tokenizer, args.step_separator),
            args=args,
            is_eval=is_eval,
        )
        with args.main_process_first(desc=f"preparing the {name} dataset"):
            dataset = dataset.map(
                tokenize,
                batched=True,
                remove_columns=columns,
                features=TOKENIZED_FEATURES,
                **_map_kwargs(dataset, args.dataset_num_proc, f"Tokenizing the {name} dataset"),
            )
        unlabelled = count_unlabelled(dataset)  # 0 for an iterable dataset, which has no length
        if unlabelled:
            limits = f"max_length={args.max_length}, max_prompt_length={args.max_prompt_length}, "
            limits += f"max_completion_length={args.max_completion_length}"
            rows = f"of {len(dataset)} examples of the {name} dataset have no labelled step left after truncation"
            warn_unlearnable(
                unlabelled, f"{rows} ({limits})", "Raise these limits or filter out the longest examples."
            )
        return dataset

    def _collator_columns(self) -> list[str]:
        return _PRM_COLUMNS

    def _derived_quantities(self) -> dict[str, Any]:
        rows = super()._derived_quantities()
        rows["step separator"] = repr(self.args.step_separator)
        rows["labelled steps"] = "last step only" if self.args.train_on_last_step_only else "every step"
        return rows

    # ------------------------------------------------------------------------------------------------- loss
    def _loss_and_outputs(self, model: torch.nn.Module, inputs: dict, call: LossCall) -> tuple[torch.Tensor, Any]:
        labels_B_T = inputs["labels"]
        outputs = model(**{key: value for key, value in inputs.items() if key != "labels"})
        logits_B_T_C = outputs.logits
        assert logits_B_T_C.shape[:2] == labels_B_T.shape, "token logits and labels are misaligned"
        loss, metrics = token_classification_loss(logits_B_T_C, labels_B_T, call.num_items_in_batch)
        loss = self.normalized_loss(loss, call.num_items_in_batch)
        # In evaluation, `compute_metrics` (token accuracy over the whole set by default) reports the accuracy.
        if call.mode == "train" or self.compute_metrics is None:
            self._log_accuracy(metrics, call.mode)
        return loss, outputs

    @torch.no_grad()
    def _log_accuracy(self, metrics: dict[str, torch.Tensor], mode: str) -> None:
        counts = torch.stack([metrics["num_correct"], metrics["num_labelled"]]).reshape(1, 2)
        correct, labelled = self.accelerator.gather(counts).sum(dim=0).tolist()
        if labelled > 0:
            self.log_metric("accuracy", correct / labelled, mode)
