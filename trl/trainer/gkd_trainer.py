"""Generalized Knowledge Distillation (GKD, Agarwal et al., arXiv 2306.13649).

Objective: for each micro-batch, with probability `lmbda` the completions are sampled from the student (on-policy);
otherwise they are sampled from the teacher (`seq_kd=True`, sequence-level KD) or taken from the dataset. The
student then minimises the generalised Jensen-Shannon divergence to the frozen teacher at every completion token,

    L = (1 / |T|) sum_{t in T} JSD_beta(p_teacher(. | y_<t) || p_student(. | y_<t)),

both distributions at temperature `temperature`; `beta = 0` is the forward KL, `beta = 1` the reverse KL
([`~trl.losses.generalized_jsd_loss`]). |T| is the number of completion tokens of the micro-batch (the reference's
`batchmean`); `Trainer` divides by the gradient-accumulation steps. Gradients flow through the student's logits
only: sampling is not differentiated (as in the paper's on-policy variant).

The machinery (teacher, coin, generation, loss, checkpoint state) is shared with [`DistillationTrainer`]
(`trl.trainer.distillation_core`); this trainer adds SFT's data pipeline. Conversations are split into a prompt (all
turns but the last) and a completion (the last assistant turn), the split the reference's `DataCollatorForChatML`
makes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from datasets import Dataset, IterableDataset
from transformers import PreTrainedModel, TrainingArguments

from ..data_utils import get_dataset_column_names
from .base_trainer import TrainerInputs
from .distillation_core import DataCollatorForDistillation, DistillationMixin, sampling_params, split_last_turn
from .gkd_config import GKDConfig
from .sft_trainer import SFTTrainer


class GKDTrainer(DistillationMixin, SFTTrainer):
    """Trainer for Generalized Knowledge Distillation of a student causal LM from a teacher.

    Args:
        model (`str` or `PreTrainedModel`):
            The student to train, loaded or as an id / path (float32 unless `model_init_kwargs` sets `dtype`).
        teacher_model (`str`, `PreTrainedModel` or `None`, *optional*, defaults to `None`):
            A teacher sharing the student's tokenizer, loaded or as an id / path (`teacher_model_init_kwargs`). With
            `None` and no `args.teacher_model_name_or_path`, the teacher is the model itself: the live student,
            scored in eval mode under `no_grad` (a warning says when dropout is off, as the loss is then zero).
        args (`GKDConfig`, `TrainingArguments` or `None`, *optional*, defaults to `None`):
            `None` means `GKDConfig(output_dir="<model>-GKD")`.
        data_collator (`Callable` or `None`, *optional*, defaults to `None`):
            Defaults to [`~trl.trainer.distillation_core.DataCollatorForDistillation`] (left-padded prompts,
            right-padded completions).
        train_dataset (`Dataset` or `IterableDataset`):
            Prompt-completion data (standard or conversational) or conversations (`messages`, the last turn being
            the completion).
        eval_dataset (`Dataset`, `IterableDataset`, `dict[str, Dataset]` or `None`, *optional*, defaults to `None`):
            Evaluation data in the same formats; the loss is the divergence on its completions.
        processing_class (`PreTrainedTokenizerBase` or `None`, *optional*, defaults to `None`):
            Defaults to the student's tokenizer.
        compute_metrics, callbacks, optimizers, preprocess_logits_for_metrics:
            As in [`~transformers.Trainer`].
        peft_config (`PeftConfig` or `None`, *optional*, defaults to `None`):
            Adapter configuration for the student.
        formatting_func (`Callable` or `None`, *optional*, defaults to `None`):
            Not supported: it builds one text per example, with no prompt to generate from. Passing one is an error.
    """

    _config_class = GKDConfig
    _self_teacher_allowed = True  # teacher_model_name_or_path=None: the teacher is the model itself
    _student_token_metrics = True  # SFT's num_tokens, mean_token_accuracy and entropy, from the student's forward
    _name = "GKD"

    def __init__(
        self,
        model: str | PreTrainedModel | None = None,
        teacher_model: str | PreTrainedModel | None = None,
        args: GKDConfig | TrainingArguments | None = None,
        data_collator: Callable | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Dataset | IterableDataset | dict[str, Dataset] | None = None,
        processing_class: Any = None,
        compute_metrics: Callable | None = None,
        callbacks: list | None = None,
        optimizers: tuple = (None, None),
        preprocess_logits_for_metrics: Callable | None = None,
        peft_config: Any = None,
        formatting_func: Callable | None = None,
    ):
        if model is None:
            raise ValueError("GKDTrainer needs a student `model` (a model id / path or a loaded model).")
        self._teacher_arg = teacher_model
        super().__init__(
            model, args, data_collator, train_dataset, eval_dataset, processing_class,
            compute_metrics=compute_metrics, callbacks=callbacks, optimizers=optimizers,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics, peft_config=peft_config,
            formatting_func=formatting_func,
        )  # fmt: skip

    def _validate(self, args: GKDConfig, inputs: TrainerInputs) -> None:
        if self._formatting_func is not None:
            raise ValueError(
                "GKDTrainer does not take a formatting_func: it builds one text per example, leaving no prompt to "
                "sample completions from. Convert the data to prompt-completion format instead."
            )
        for name in ("packing", "padding_free"):
            if getattr(args, name):
                raise ValueError(f"GKDTrainer keeps prompts and completions apart; set {name}=False.")
        super()._validate(args, inputs)
        self._validate_teacher(args)
        columns = get_dataset_column_names(inputs.train_dataset)
        if not ({"prompt", "completion"} <= set(columns) or "messages" in columns):
            raise ValueError(
                f"GKDTrainer needs prompt-completion data ('prompt' and 'completion') or conversations ('messages'); "
                f"the train_dataset has columns {columns}."
            )

    def _setup_auxiliary_models(self, model: Any, args: GKDConfig, inputs: TrainerInputs) -> dict[str, Any]:
        return {"teacher": self._setup_teacher(model, args)}

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: GKDConfig, name: str) -> Any:
        return super()._prepare_dataset(split_last_turn(dataset, args.dataset_num_proc), processing_class, args, name)

    def _default_collator(self, processing_class: Any, args: GKDConfig) -> DataCollatorForDistillation:
        return DataCollatorForDistillation(self.pad_token_id, args.pad_to_multiple_of)

    def _after_init(self, auxiliary_models: dict[str, Any]) -> None:
        super()._after_init(auxiliary_models)
        self._setup_distillation(auxiliary_models["teacher"])

    def _sampling_params(self):
        return sampling_params(self.args, max_tokens=self.args.max_new_tokens)

    def _log_student_metrics(self, batch: dict[str, Any], student: Any, mode: str) -> None:
        self._log_token_metrics(batch, student, mode)

    def _derived_quantities(self) -> dict[str, Any]:
        rows = super()._derived_quantities()
        rows["on-policy fraction (lmbda)"] = self.args.lmbda
        rows["off-policy completions"] = "teacher samples" if self.args.seq_kd else "dataset"
        return rows
