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
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import pyarrow.compute as pc
import torch
from datasets import Dataset, Features, IterableDataset, List, Value
from transformers import (
    AutoModelForTokenClassification,
    DataCollatorForTokenClassification,
    PreTrainedModel,
    TrainingArguments,
)
from transformers.trainer_utils import number_of_arguments

from ..data_utils import get_dataset_column_names, get_dataset_type, is_conversational
from ..losses import token_classification_loss
from .base_trainer import BaseTrainer
from .data_preparation import _map_kwargs, first_example
from .model_utils import (
    check_model_init_kwargs_unused,
    get_tokenizer,
    is_peft_model,
    load_model,
    load_processing_class,
    prepare_peft_model,
    resolve_pad_token_id,
)
from .prm_config import PRMConfig
from .sft_trainer import model_name_of, to_config
from .utils import compute_accuracy, disable_dropout_in_model


_PRM_COLUMNS = ["input_ids", "labels", "attention_mask"]
_STEPWISE_COLUMNS = ("prompt", "completions", "labels")
IGNORE_INDEX = -100
# Explicit types for the tokenised columns: `datasets` would otherwise keep the type of the input's bool `labels`
# column for the new integer `labels` (turning -100 into True).
_TOKENIZED_FEATURES = Features({"input_ids": List(Value("int32")), "labels": List(Value("int64"))})


# ---------------------------------------------------------------------------------------------- tokenisation
def step_class_labels(labels: Sequence[Any], last_step_only: bool = False) -> list[int]:
    """Turn per-step labels (bools, or 0/1 numbers) into class ids; `last_step_only` ignores all but the last.

    Args:
        labels (`Sequence[bool | int | float]`):
            One label per step.
        last_step_only (`bool`, *optional*, defaults to `False`):
            Give every step but the last the ignore index -100.
    """
    classes = []
    for label in labels:
        if isinstance(label, bool) or label in (0, 1):
            classes.append(int(label))
        else:
            raise ValueError(
                f"Step label {label!r} is not a class of the 2-label PRM: use booleans (or 0/1). Turn soft scores "
                "into classes first, e.g. `labels = [score > 0.5 for score in scores]`."
            )
    if last_step_only and classes:
        classes = [IGNORE_INDEX] * (len(classes) - 1) + classes[-1:]
    return classes


def build_stepwise_example(
    prompt_ids: list[int],
    steps_ids: list[list[int]],
    step_labels: list[int],
    separator_ids: list[int],
    bos_token_id: int | None = None,
    max_length: int | None = None,
    max_prompt_length: int | None = None,
    max_completion_length: int | None = None,
) -> dict[str, list[int]]:
    """Assemble `input_ids` and `labels` of one example from token ids.

    Every step is followed by `separator_ids`; the step's label sits on the last separator token and every other
    position (prompt included) gets -100. BOS is prepended to the prompt, which then keeps its last
    `max_prompt_length` tokens; the steps keep their first `max_completion_length` tokens and the sequence its first
    `max_length` tokens.

    Args:
        prompt_ids (`list[int]`):
            The prompt's token ids (no special tokens).
        steps_ids (`list[list[int]]`):
            Each step's token ids.
        step_labels (`list[int]`):
            Each step's class id, or -100 for a step that is not trained.
        separator_ids (`list[int]`):
            Token ids of the separator (at least one).
        bos_token_id (`int` or `None`, *optional*, defaults to `None`):
            Prepended to the prompt when not `None`.
        max_length, max_prompt_length, max_completion_length (`int` or `None`, *optional*, defaults to `None`):
            Truncation limits, `None` for none.
    """
    completion_ids: list[int] = []
    completion_labels: list[int] = []
    for ids, label in zip(steps_ids, step_labels, strict=True):
        completion_ids += [*ids, *separator_ids]
        completion_labels += [IGNORE_INDEX] * (len(ids) + len(separator_ids) - 1) + [label]
    if bos_token_id is not None:
        prompt_ids = [bos_token_id, *prompt_ids]
    if max_prompt_length is not None:
        prompt_ids = prompt_ids[-max_prompt_length:]
    if max_completion_length is not None:
        completion_ids = completion_ids[:max_completion_length]
        completion_labels = completion_labels[:max_completion_length]
    input_ids = prompt_ids + completion_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + completion_labels
    if max_length is not None:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return {"input_ids": input_ids, "labels": labels}


def separator_token_ids(tokenizer: Any, step_separator: str) -> list[int]:
    """Token ids of `step_separator` (without special tokens); raises if it tokenises to nothing."""
    ids = tokenizer.encode(step_separator, add_special_tokens=False)
    if not ids:
        raise ValueError(
            f"step_separator {step_separator!r} tokenises to no token, so there is no position for the step labels. "
            "Use a separator the tokenizer encodes, e.g. '\\n'."
        )
    return ids


def check_stepwise_example(example: dict[str, Any]) -> None:
    """Raise a `ValueError` naming the fix when an example is not standard stepwise supervision."""
    prompt, completions, labels = example["prompt"], example["completions"], example["labels"]
    if not isinstance(prompt, str) or not all(isinstance(step, str) for step in completions):
        raise ValueError(
            "PRMTrainer supports only the standard stepwise format: 'prompt' a string and 'completions' a list of "
            "strings. Render conversational prompts to text first (e.g. `tokenizer.apply_chat_template(prompt, "
            "tokenize=False, add_generation_prompt=True)`) and give each step as plain text."
        )
    if len(completions) != len(labels):
        raise ValueError(
            f"An example has {len(completions)} steps in 'completions' but {len(labels)} 'labels': every step needs "
            f"exactly one label. Prompt: {prompt[:80]!r}."
        )


def check_stepwise_columns(columns: list[str]) -> None:
    """Raise a `ValueError` naming the expected columns when a dataset is not stepwise supervision."""
    missing = [name for name in _STEPWISE_COLUMNS if name not in columns]
    if not missing:
        return
    try:
        found = f"it looks like a {get_dataset_type(columns)} dataset"
    except ValueError:
        found = "its format is not recognised"
    raise ValueError(
        f"PRMTrainer needs stepwise-supervision data with the columns 'prompt' (str), 'completions' (list of steps) "
        f"and 'labels' (one bool per step), or pre-tokenised 'input_ids' and 'labels'. The dataset has the columns "
        f"{sorted(columns)} (missing {missing}); {found}. Rename or convert the columns."
    )


def _tokenize_batch(
    batch: dict[str, list], tokenizer: Any, separator_ids: list[int], args: PRMConfig, is_eval: bool
) -> dict[str, list]:
    # One tokenizer call for all prompts and one for all steps of the batch: much faster than per-step calls.
    rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
    for row in rows:
        check_stepwise_example(row)
    prompts_ids = tokenizer(batch["prompt"], add_special_tokens=False)["input_ids"]
    flat_steps = [step for row in rows for step in row["completions"]]
    flat_ids = tokenizer(flat_steps, add_special_tokens=False)["input_ids"] if flat_steps else []
    output: dict[str, list] = {"input_ids": [], "labels": []}
    start = 0
    for row, prompt_ids in zip(rows, prompts_ids):
        steps_ids = flat_ids[start : start + len(row["completions"])]
        start += len(row["completions"])
        example = build_stepwise_example(
            prompt_ids,
            steps_ids,
            step_class_labels(row["labels"], args.train_on_last_step_only and not is_eval),
            separator_ids,
            tokenizer.bos_token_id,
            args.max_length,
            args.max_prompt_length,
            args.max_completion_length,
        )
        output["input_ids"].append(example["input_ids"])
        output["labels"].append(example["labels"])
    return output


def count_unlabelled(dataset: Dataset | IterableDataset) -> int:
    """Number of examples whose `labels` hold no label (every step was truncated away); 0 for iterable data."""
    if not isinstance(dataset, Dataset) or "labels" not in dataset.column_names or len(dataset) == 0:
        return 0
    labels = dataset.with_format("arrow")["labels"]
    labelled = pc.not_equal(pc.list_flatten(labels), IGNORE_INDEX)
    rows_with_label = pc.unique(pc.filter(pc.list_parent_indices(labels), labelled))
    return len(dataset) - len(rows_with_label)


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

    _tag_names = ["trl", "prm"]
    _name = "PRM"
    _template_file = "rm_model_card.md"
    _paper = {
        "title": "Solving math word problems with process- and outcome-based feedback",
        "id": "2211.14275",
        "citation": (
            "@article{uesato2022solving,\n"
            "    title        = {{Solving math word problems with process- and outcome-based feedback}},\n"
            "    author       = {Uesato, Jonathan and Kushman, Nate and Kumar, Ramana and Song, Francis and Siegel, "
            "Noah and Wang, Lisa and Creswell, Antonia and Irving, Geoffrey and Higgins, Irina},\n"
            "    year         = 2022,\n"
            "    journal      = {arXiv preprint arXiv:2211.14275},\n"
            "}"
        ),
    }

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
        args = to_config(args, PRMConfig, model_name_of(model) if model is not None else "model", self._name)
        self._validate_config(args, model, model_init, processing_class, peft_config)
        if model is not None:
            model = self._setup_model(model, args)
            processing_class = processing_class or load_processing_class(model.config._name_or_path, args)
            model = prepare_peft_model(model, self._token_classification_peft_config(peft_config, model), args)
            if args.disable_dropout:
                disable_dropout_in_model(model)
        else:
            model_init = self._checked_model_init(model_init, args)
        tokenizer = get_tokenizer(processing_class)
        self._ensure_pad_token(tokenizer)

        train_dataset = self._prepare_dataset(train_dataset, tokenizer, args, "train", is_eval=False)
        if isinstance(eval_dataset, dict):
            eval_dataset = {
                name: self._prepare_dataset(ds, tokenizer, args, name, is_eval=True)
                for name, ds in eval_dataset.items()
            }
        elif eval_dataset is not None:
            eval_dataset = self._prepare_dataset(eval_dataset, tokenizer, args, "eval", is_eval=True)
        if data_collator is None:
            # Sequences are already truncated, so no `max_length` here (with padding=True it is ignored, with a
            # warning on every batch).
            data_collator = DataCollatorForTokenClassification(tokenizer)
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            model_init=model_init,
            compute_metrics=compute_metrics if compute_metrics is not None else compute_accuracy,
            callbacks=callbacks,
            optimizers=optimizers,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        # The loss is normalised by the labelled-position count of the whole accumulated batch, which Trainer only
        # counts (as `num_items_in_batch`) when it believes the model takes loss kwargs.
        self.model_accepts_loss_kwargs = True
        self.loss_is_scaled_for_ga = True

    # ------------------------------------------------------------------------------------------------ setup
    @staticmethod
    def _validate_config(
        args: PRMConfig, model: Any, model_init: Callable | None, processing_class: Any, peft_config: Any
    ) -> None:
        if model is None:
            if model_init is None:
                raise ValueError("PRMTrainer needs `model` (a model id or a token-classification model).")
            if processing_class is None:
                raise ValueError("With `model_init` and no `model`, pass the tokenizer as `processing_class`.")
            if peft_config is not None:
                raise ValueError("peft_config is not applied to models built by `model_init`; wrap them yourself.")
        elif model_init is not None:
            raise ValueError("Pass either `model` or `model_init` (for hyperparameter search), not both.")
        check_model_init_kwargs_unused(model if model is not None else model_init, args)
        if (args.model_init_kwargs or {}).get("num_labels", 2) != 2:
            raise ValueError("A PRM has 2 labels (wrong / correct step): remove `num_labels` from model_init_kwargs.")

    @staticmethod
    def _setup_model(model: str | PreTrainedModel, args: PRMConfig) -> PreTrainedModel:
        if isinstance(model, str):
            model = load_model(model, args, AutoModelForTokenClassification, num_labels=2)
        _check_model(model)
        return model

    @staticmethod
    def _checked_model_init(model_init: Callable, args: PRMConfig) -> Callable:
        """Wrap `model_init` so that every model it builds is checked and gets dropout disabled."""
        takes_trial = number_of_arguments(model_init) == 1

        def init(trial: Any = None) -> PreTrainedModel:
            model = model_init(trial) if takes_trial else model_init()
            _check_model(model)
            if args.disable_dropout:
                disable_dropout_in_model(model)
            return model

        return init

    @staticmethod
    def _token_classification_peft_config(peft_config: Any, model: PreTrainedModel) -> Any:
        """A copy of `peft_config` with task type `TOKEN_CLS`, for which PEFT trains the head in full (it adds
        `score`/`classifier` to `modules_to_save`). A copy, because PEFT extends `modules_to_save` in place."""
        if peft_config is None or is_peft_model(model):
            return peft_config
        task_type = getattr(peft_config, "task_type", None)
        task_type = getattr(task_type, "value", task_type)
        if task_type not in (None, "TOKEN_CLS"):
            warnings.warn(
                f"peft_config.task_type={task_type!r} does not match a PRM (token classification); using "
                "'TOKEN_CLS'. Pass LoraConfig(task_type='TOKEN_CLS') to silence this warning.",
                UserWarning,
                stacklevel=4,
            )
        peft_config = copy.deepcopy(peft_config)
        peft_config.task_type = "TOKEN_CLS"
        return peft_config

    @staticmethod
    def _ensure_pad_token(tokenizer: Any) -> None:
        # DataCollatorForTokenClassification pads through the tokenizer; padded positions are masked and labelled
        # -100, so EOS works as padding.
        if tokenizer.pad_token is None:
            resolve_pad_token_id(tokenizer)  # raises, naming the fix, when there is no EOS token either
            tokenizer.pad_token = tokenizer.eos_token

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

    @staticmethod
    def _prepare_dataset(
        dataset: Dataset | IterableDataset | None, tokenizer: Any, args: PRMConfig, name: str, is_eval: bool
    ) -> Dataset | IterableDataset | None:
        if dataset is None:
            return None
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
            _tokenize_batch,
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
                features=_TOKENIZED_FEATURES,
                **_map_kwargs(dataset, args.dataset_num_proc, f"Tokenizing the {name} dataset"),
            )
        unlabelled = count_unlabelled(dataset)
        if unlabelled:
            warnings.warn(
                f"{unlabelled} of {len(dataset)} examples of the {name} dataset have no labelled step left after "
                f"truncation (max_length={args.max_length}, max_prompt_length={args.max_prompt_length}, "
                f"max_completion_length={args.max_completion_length}); they add nothing to the loss. Raise these "
                "limits or filter out the longest examples.",
                UserWarning,
                stacklevel=3,
            )
        return dataset

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = list(_PRM_COLUMNS)

    def _derived_quantities(self) -> dict[str, Any]:
        rows = super()._derived_quantities()
        rows["step separator"] = repr(self.args.step_separator)
        rows["labelled steps"] = "last step only" if self.args.train_on_last_step_only else "every step"
        return rows

    # ------------------------------------------------------------------------------------------------- loss
    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        mode = "train" if model.training else "eval"
        labels_B_T = inputs["labels"]
        outputs = model(**{key: value for key, value in inputs.items() if key != "labels"})
        logits_B_T_C = outputs.logits
        assert logits_B_T_C.shape[:2] == labels_B_T.shape, "token logits and labels are misaligned"
        loss, metrics = token_classification_loss(logits_B_T_C, labels_B_T, num_items_in_batch)
        if num_items_in_batch is not None and self.args.average_tokens_across_devices and self.args.world_size > 1:
            # num_items_in_batch counts every process's labels while DDP averages gradients over processes.
            loss = loss * self.accelerator.num_processes
        # In evaluation, `compute_metrics` (token accuracy over the whole set by default) reports the accuracy.
        if mode == "train" or self.compute_metrics is None:
            self._log_accuracy(metrics, mode)
        return (loss, outputs) if return_outputs else loss

    @torch.no_grad()
    def _log_accuracy(self, metrics: dict[str, torch.Tensor], mode: str) -> None:
        counts = torch.stack([metrics["num_correct"], metrics["num_labelled"]]).reshape(1, 2)
        correct, labelled = self.accelerator.gather(counts).sum(dim=0).tolist()
        if labelled > 0:
            self.log_metric("accuracy", correct / labelled, mode)
