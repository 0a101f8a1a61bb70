"""Reward modelling with the Bradley-Terry objective.

A sequence-classification model with one output scores each whole sequence (prompt + answer) at its last token:
r = f(x, y). Per batch of B pairs,

    L = mean_pairs(−log σ(r_c − r_r − m)) + c · mean_pairs((r_c + r_r)²)

where m is the optional per-pair `margin` column (Llama 2's preference strength; 0 when absent) and
c = `center_rewards_coefficient` (Eisenstein et al., 2023; the term is off when `None`). The formula lives in
`trl.losses.bradley_terry_loss`. Chosen and rejected sequences go through the model in one forward pass, without
padding where the model keeps packed sequences apart (`trl.trainer.packed_rows.sequence_classification_logits`; the
padded forward otherwise, or with `_padding_free = False`).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from datasets import Dataset, IterableDataset
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel

from ..losses import bradley_terry_loss
from .base_trainer import BaseTrainer, LossCall
from .collators import DataCollatorForRewardPreference
from .model_utils import (
    classification_head_name,
    classification_peft_config,
    get_tokenizer,
    load_trained_model,
    prepare_peft_model,
)
from .packed_rows import sequence_classification_logits
from .preference_data import TokenizeOptions, prepare_reward_dataset
from .reward_config import RewardConfig


_REWARD_COLUMNS = ["chosen_ids", "rejected_ids", "margin"]


class RewardTrainer(BaseTrainer):
    """Trainer for outcome reward models (Bradley-Terry on paired preferences).

    Args:
        model (`str`, `PreTrainedModel` or `PeftModel`):
            Model id / local path, loaded with `AutoModelForSequenceClassification.from_pretrained(model,
            num_labels=1, **model_init_kwargs)` (a causal LM checkpoint gets a new, randomly initialised score head),
            or an instantiated sequence-classification model with one label.
        args (`RewardConfig`, `TrainingArguments` or `None`, *optional*, defaults to `None`):
            Training configuration. `None` uses `RewardConfig(output_dir="<model>-Reward")`.
        data_collator (`Callable` or `None`, *optional*, defaults to `None`):
            Defaults to [`DataCollatorForRewardPreference`].
        train_dataset (`Dataset` or `IterableDataset`):
            Paired preference data, explicit (`prompt`, `chosen`, `rejected`) or implicit prompt (`chosen`,
            `rejected`), standard or conversational, with an optional `margin` column; or pre-tokenised
            (`chosen_ids`, `rejected_ids`, or the 0.x `input_ids_chosen`, `input_ids_rejected`).
        eval_dataset (`Dataset`, `IterableDataset`, `dict[str, Dataset]` or `None`, *optional*, defaults to `None`):
            Evaluation data in the same formats.
        processing_class (`PreTrainedTokenizerBase` or `None`, *optional*, defaults to `None`):
            Defaults to the tokenizer of `model`.
        compute_metrics (`Callable` or `None`, *optional*, defaults to `None`):
            Receives predictions of shape `[N, 2]` (chosen, rejected rewards) and labels 0, e.g.
            `trl.trainer.utils.compute_accuracy`.
        callbacks, optimizers, optimizer_cls_and_kwargs, preprocess_logits_for_metrics:
            As in [`~transformers.Trainer`].
        quantization_config (`BitsAndBytesConfig` or `None`, *optional*, defaults to `None`):
            Used when `model` is a string.
        peft_config (`PeftConfig` or `None`, *optional*, defaults to `None`):
            Adapter configuration. The score head is always trained in full (added to `modules_to_save`).
    """

    _config_class = RewardConfig
    _tag_names = ["trl", "reward-trainer"]
    _name = "Reward"
    _template_file = "rm_model_card.md"
    _predictions_from_loss = True  # the [N, 2] rewards, label 0 (BaseTrainer._eval_predictions)
    _padding_free = True  # False: the padded forward (same rewards to fp32 rounding)

    # ------------------------------------------------------------------------------------------------- setup
    def _setup_model(
        self, model: str | PreTrainedModel, args: RewardConfig, quantization_config: Any
    ) -> PreTrainedModel:
        if isinstance(model, str):
            config = AutoConfig.from_pretrained(model, trust_remote_code=args.trust_remote_code)
            architectures = getattr(config, "architectures", None) or []
            if not any(name.endswith("ForSequenceClassification") for name in architectures):
                warnings.warn(
                    f"{model} is a {', '.join(architectures) or 'base'} checkpoint: it is loaded as a "
                    "sequence-classification model whose score head (hidden size -> 1) is newly initialised at "
                    "random and trained from scratch. This is expected when turning a language model into a reward "
                    "model.",
                    UserWarning,
                    stacklevel=4,
                )
            overrides = {"num_labels": 1}
            if quantization_config is not None:
                overrides["quantization_config"] = quantization_config
            return load_trained_model(model, args, AutoModelForSequenceClassification, **overrides)
        if quantization_config is not None:
            raise ValueError("quantization_config only applies when `model` is a string; the model is already loaded.")
        if classification_head_name(model) is None or getattr(model.config, "num_labels", None) != 1:
            raise ValueError(
                f"RewardTrainer needs a sequence-classification model with one output, got {type(model).__name__} "
                f"(num_labels={getattr(model.config, 'num_labels', None)}). Load it with "
                "AutoModelForSequenceClassification.from_pretrained(path, num_labels=1), or pass the model id."
            )
        return model

    def _setup_peft(self, model: PreTrainedModel, peft_config: Any, args: RewardConfig) -> Any:
        return prepare_peft_model(model, classification_peft_config(peft_config, model, "SEQ_CLS", "reward"), args)

    def _setup_pad_token(self, model: Any, processing_class: Any, args: RewardConfig) -> int:
        pad_token_id = super()._setup_pad_token(model, processing_class, args)
        if model.config.pad_token_id is None:
            # The model scores the last non-pad token: it must know which id pads the batch.
            model.config.pad_token_id = pad_token_id
        return pad_token_id

    def _prepare_dataset(
        self, dataset: Dataset | IterableDataset, processing_class: Any, args: RewardConfig, name: str
    ) -> Dataset | IterableDataset:
        eos_token = args.eos_token or get_tokenizer(processing_class).eos_token
        options = TokenizeOptions("RewardTrainer", eos_token=eos_token, num_proc=args.dataset_num_proc)
        with args.main_process_first(desc=f"preparing the {name} dataset"):
            return prepare_reward_dataset(dataset, processing_class, options, args.max_length)

    def _default_collator(self, processing_class: Any, args: RewardConfig) -> DataCollatorForRewardPreference:
        return DataCollatorForRewardPreference(self.pad_token_id, pad_to_multiple_of=args.pad_to_multiple_of)

    def _after_init(self, auxiliary_models: dict[str, Any]) -> None:
        self._total_train_tokens = 0

    def _collator_columns(self) -> list[str]:
        return _REWARD_COLUMNS

    def _derived_quantities(self) -> dict[str, Any]:
        rows = super()._derived_quantities()
        global_pairs = rows.pop("global batch (sequences/step)")
        rows["global batch (pairs/step)"] = global_pairs
        if self.args.max_length:
            rows["max tokens per step"] = 2 * global_pairs * self.args.max_length
        rows["center_rewards_coefficient"] = self.args.center_rewards_coefficient
        return rows

    # --------------------------------------------------------------------------------------------------- loss
    def _loss_and_outputs(self, model: torch.nn.Module, inputs: dict, call: LossCall) -> tuple[torch.Tensor, Any]:
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        rewards_R = sequence_classification_logits(model, ids, mask, self._padding_free).squeeze(-1)
        half = rewards_R.shape[0] // 2
        chosen_rewards, rejected_rewards = rewards_R[:half], rewards_R[half:]
        loss, _ = bradley_terry_loss(
            chosen_rewards, rejected_rewards, inputs.get("margin"), self.args.center_rewards_coefficient
        )
        self._log_metrics(inputs, chosen_rewards.detach(), rejected_rewards.detach(), call.mode)
        return loss, {"chosen_rewards": chosen_rewards.detach(), "rejected_rewards": rejected_rewards.detach()}

    @torch.no_grad()
    def _log_metrics(
        self, inputs: dict[str, torch.Tensor], chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, mode: str
    ) -> None:
        # The metrics of the whole (all-process) batch, from the gathered rewards.
        gather = self.accelerator.gather_for_metrics
        _, metrics = bradley_terry_loss(gather(chosen_rewards.float()), gather(rejected_rewards.float()))
        for name, value in metrics.items():
            self.log_metric(name, value, mode)
        if mode == "train":
            num_tokens = inputs["attention_mask"].sum().reshape(1)
            self._total_train_tokens += int(self.accelerator.gather(num_tokens).sum().item())
            self.log_metric("num_tokens", self._total_train_tokens, mode)
