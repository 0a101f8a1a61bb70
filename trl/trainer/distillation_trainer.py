"""On-policy knowledge distillation of a student LM from a teacher (GKD, arXiv 2306.13649; on-policy distillation).

Objective: for each micro-batch, with probability `lmbda` (default 1: fully on-policy) the completions are sampled
from the student through the shared generation backends (transformers, vLLM colocate or server); otherwise the
dataset's completions are used. The student minimises, at every completion token, the generalised JSD to the frozen
teacher ([`~trl.losses.distillation_loss`]; `beta = 1`, the default, is the reverse KL `KL(student || teacher)`,
`beta = 0` the forward KL), both at temperature `temperature`:

    L = (1 / |T|) sum_{t in T} JSD_beta(p_teacher(. | y_<t) || p_student(. | y_<t)),

|T| being the completion tokens of the micro-batch (`Trainer` divides by the gradient-accumulation steps). With
`loss_top_k = K > 0` (default 1) both distributions are first restricted to K tokens (the teacher's top-K for the
forward term, the student's top-K or the sampled token for the reverse term, their union for the JSD), the rest of
the mass kept as one tail bucket (`loss_add_tail`). Sampling is not differentiated.

The machinery (teacher, coin, generation, loss, checkpoint state) is shared with [`GKDTrainer`]
(`trl.trainer.distillation_core`); this trainer adds a prompt(-completion) data pipeline without SFT's options.
"""

from __future__ import annotations

from typing import Any

import torch
from datasets import Dataset, IterableDataset
from transformers import PreTrainedModel, TrainingArguments

from ..data_utils import get_dataset_column_names
from .base_trainer import BaseTrainer, TrainerInputs
from .data_preparation import _map_kwargs, tokenize_prompt_completion_example
from .distillation_config import DistillationConfig
from .distillation_core import DataCollatorForDistillation, DistillationMixin, sampling_params, split_last_turn
from .model_utils import get_tokenizer
from .rollout_utils import render_prompts, tokenize_prompts


class DistillationTrainer(DistillationMixin, BaseTrainer):
    """Trainer for on-policy distillation of a student causal LM from a teacher sharing its tokenizer.

    Args:
        model (`str` or `PreTrainedModel`):
            The student: a model id / local path (loaded in float32 unless `model_init_kwargs` sets `dtype`) or a
            loaded model.
        teacher_model (`str`, `PreTrainedModel` or `None`, *optional*, defaults to `None`):
            The teacher: a loaded model, or an id / path loaded with `teacher_model_init_kwargs`. `None` uses
            `args.teacher_model_name_or_path`.
        args (`DistillationConfig`, `TrainingArguments` or `None`, *optional*, defaults to `None`):
            Training configuration. `None` uses `DistillationConfig(output_dir="<model>-Distillation")`.
        train_dataset (`Dataset` or `IterableDataset`):
            Prompt-only data (needs `lmbda=1`), prompt-completion data, or conversations (`messages`, the last turn
            being the completion); standard or conversational.
        eval_dataset (`Dataset`, `IterableDataset`, `dict[str, Dataset]` or `None`, *optional*, defaults to `None`):
            Evaluation data: the divergence on its completions, or on student samples for prompt-only data.
        processing_class (`PreTrainedTokenizerBase` or `None`, *optional*, defaults to `None`):
            Defaults to the student's tokenizer.
        callbacks, optimizers:
            As in [`~transformers.Trainer`].
        quantization_config (`BitsAndBytesConfig` or `None`, *optional*, defaults to `None`):
            Used when `model` is a string.
        peft_config (`PeftConfig` or `None`, *optional*, defaults to `None`):
            Adapter configuration for the student.
        tools (`list` or `None`, *optional*, defaults to `None`):
            Tool calling during generation is not supported: passing tools is an error.
    """

    _config_class = DistillationConfig
    _tag_names = ["trl", "distillation"]
    _name = "Distillation"

    def __init__(
        self,
        model: str | PreTrainedModel,
        teacher_model: str | PreTrainedModel | None = None,
        args: DistillationConfig | TrainingArguments | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Dataset | IterableDataset | dict[str, Dataset] | None = None,
        processing_class: Any = None,
        callbacks: list | None = None,
        optimizers: tuple = (None, None),
        quantization_config: Any = None,
        peft_config: Any = None,
        tools: list | None = None,
    ):
        if tools:
            raise ValueError("DistillationTrainer does not run tool calls during generation yet; pass tools=None.")
        self._teacher_arg = teacher_model
        super().__init__(
            model, args, None, train_dataset, eval_dataset, processing_class, callbacks=callbacks,
            optimizers=optimizers, peft_config=peft_config, quantization_config=quantization_config,
        )  # fmt: skip

    def _validate(self, args: DistillationConfig, inputs: TrainerInputs) -> None:
        super()._validate(args, inputs)
        self._validate_teacher(args)
        columns = set(get_dataset_column_names(inputs.train_dataset))
        if not ({"prompt", "messages"} & columns):
            raise ValueError(
                f"DistillationTrainer needs a 'prompt' column (optionally with 'completion') or 'messages'; the "
                f"train_dataset has columns {sorted(columns)}."
            )
        if args.lmbda < 1.0 and not ({"completion", "messages"} & columns):
            raise ValueError(
                f"lmbda={args.lmbda} trains a fraction of the micro-batches on dataset completions, but this dataset "
                "is prompt-only. Set lmbda=1.0 (fully on-policy) or add a 'completion' column."
            )

    def _setup_auxiliary_models(self, model: Any, args: DistillationConfig, inputs: TrainerInputs) -> dict[str, Any]:
        return {"teacher": self._setup_teacher(model, args)}

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: DistillationConfig, name: str) -> Any:
        dataset = split_last_turn(dataset)
        columns = get_dataset_column_names(dataset)
        tokenizer = get_tokenizer(processing_class)
        has_completion = "completion" in columns

        def tokenize(example: dict[str, Any]) -> dict[str, list[int]]:
            if has_completion:
                tokens = tokenize_prompt_completion_example(example, processing_class, tokenizer.eos_token)
            else:
                text = render_prompts([example], processing_class, **(args.chat_template_kwargs or {}))
                ids = tokenize_prompts(text, tokenizer)[0]
                tokens = {"input_ids": ids, "completion_mask": [0] * len(ids)}
            return truncate_prompt_completion(tokens, args.max_prompt_length, args.max_completion_length)

        with args.main_process_first(desc=f"preparing the {name} dataset"):
            remove = [column for column in columns if column not in ("input_ids", "completion_mask")]
            return dataset.map(tokenize, remove_columns=remove, **_map_kwargs(dataset, None, "Tokenizing"))

    def _default_collator(self, processing_class: Any, args: DistillationConfig) -> DataCollatorForDistillation:
        return DataCollatorForDistillation(self.pad_token_id, args.pad_to_multiple_of)

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = ["input_ids", "completion_mask"]

    def _get_train_sampler(self, train_dataset: Any = None):
        if not self.args.shuffle_dataset:
            return torch.utils.data.SequentialSampler(
                train_dataset if train_dataset is not None else self.train_dataset
            )
        return super()._get_train_sampler(train_dataset) if train_dataset is not None else super()._get_train_sampler()

    def _after_init(self, auxiliary_models: dict[str, Any]) -> None:
        self._setup_distillation(auxiliary_models["teacher"])

    def _sampling_params(self):
        args = self.args
        return sampling_params(args, args.max_completion_length, top_p=args.top_p, top_k=args.top_k)

    def _derived_quantities(self) -> dict[str, Any]:
        rows = super()._derived_quantities()
        rows["on-policy fraction (lmbda)"] = self.args.lmbda
        rows["divergence support"] = f"top-{self.args.loss_top_k}" if self.args.loss_top_k else "full vocabulary"
        return rows


def truncate_prompt_completion(
    tokens: dict[str, list[int]], max_prompt_length: int | None, max_completion_length: int | None
) -> dict[str, list[int]]:
    """Keep the last `max_prompt_length` prompt tokens and the first `max_completion_length` completion tokens."""
    ids, mask = tokens["input_ids"], tokens["completion_mask"]
    start = mask.index(1) if 1 in mask else len(ids)
    prompt, completion = ids[:start], ids[start:]
    if max_prompt_length is not None:
        prompt = prompt[-max_prompt_length:] if max_prompt_length > 0 else []
    if max_completion_length is not None:
        completion = completion[:max_completion_length]
    return {"input_ids": prompt + completion, "completion_mask": [0] * len(prompt) + [1] * len(completion)}
