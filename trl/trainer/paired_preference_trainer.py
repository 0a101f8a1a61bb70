"""The base of the paired preference trainers (DPO, CPO, ORPO), on the [`BaseTrainer`] skeleton.

[`PairedPreferenceTrainer`] holds what the three share: [chosen; rejected] pairs tokenised by
`trl.trainer.preference_data`, the [`DataCollatorForPreference`] default, the pair rows of the derived-quantities
table and the evaluation predictions (`[N, 2]` rewards, label 0). The reference is optional: DPO mixes in
[`~trl.trainer.reference.ReferenceModelMixin`], which adds the reference model as an auxiliary model of the
skeleton. [`_ReferenceFreePairedTrainer`] is the reference-free scaffolding of CPO and ORPO (causal or
encoder-decoder models; a subclass adds its `_pair_loss`). The forward pass itself is `trl.trainer.paired_forward`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from datasets import Dataset, IterableDataset
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, PreTrainedModel, TrainingArguments

from .base_config import _ReferenceFreePairedConfig
from .base_trainer import BaseTrainer, LossCall, TrainerInputs
from .collators import DataCollatorForPreference
from .model_utils import accepts_logits_to_keep, get_tokenizer, load_trained_model
from .paired_forward import PairedScores, paired_forward
from .preference_data import (
    PREFERENCE_TOKEN_COLUMNS,
    PreferenceDatasetStep,
    count_empty_completions,
    prepare_preference_dataset,
)
from .utils import pad


class PairedPreferenceTrainer(BaseTrainer):
    """What DPO, CPO and ORPO share on top of the skeleton (the loss is a mean over the pairs of a micro-batch).

    A subclass implements `_prepare_dataset` and `compute_loss`, and may set `_ref_columns` (precomputed reference
    columns kept by `Trainer`) and override `_collator_truncation_mode` and `_loss_description`.
    """

    loss_normalization = "examples"
    _predictions_from_loss = True  # the [N, 2] rewards, label 0 (BaseTrainer._eval_predictions)
    _ref_columns: tuple[str, ...] = ()

    def _collator_truncation_mode(self, args: Any) -> str:
        """How the collator cuts rows longer than `max_length`."""
        return args.truncation_mode

    def _default_collator(self, processing_class: Any, args: Any) -> DataCollatorForPreference:
        return DataCollatorForPreference(
            pad_token_id=self.pad_token_id,
            max_length=args.max_length,
            truncation_mode=self._collator_truncation_mode(args),
            pad_to_multiple_of=getattr(args, "pad_to_multiple_of", None),
        )

    def _collator_columns(self) -> list[str]:
        return [*PREFERENCE_TOKEN_COLUMNS, *self._ref_columns]

    def _loss_description(self) -> str:
        return self._name

    def _reference_description(self) -> str:
        return "none (reference-free)"

    def _derived_quantities(self) -> dict[str, Any]:
        rows = super()._derived_quantities()
        global_pairs = rows.pop("global batch (sequences/step)")
        rows["global batch (pairs/step)"] = global_pairs
        rows["sequences per forward pass"] = 2 * self.args.per_device_train_batch_size
        if self.args.max_length:
            rows["max tokens per step"] = 2 * global_pairs * self.args.max_length
        rows["loss"] = self._loss_description()
        rows["beta"] = self.args.beta
        rows["reference"] = self._reference_description()
        return rows


# ================================================================================ reference-free (CPO, ORPO)
def _check_encoder_decoder(args: _ReferenceFreePairedConfig, config: Any, name: str) -> None:
    actual = bool(config.is_encoder_decoder)
    if args.is_encoder_decoder is not None and args.is_encoder_decoder != actual:
        kind = "an encoder-decoder" if actual else "a decoder-only"
        raise ValueError(
            f"is_encoder_decoder={args.is_encoder_decoder} but {name} is {kind} model. Leave is_encoder_decoder=None "
            "(it is read from the model's config)."
        )


class _ReferenceFreePairedTrainer(PreferenceDatasetStep, PairedPreferenceTrainer):
    """Scaffolding of the trainers that score [chosen; rejected] pairs with the policy alone (CPO, ORPO).

    It loads the model (a causal LM, or an encoder-decoder), wraps it with PEFT, tokenises paired preference data
    with `trl.trainer.preference_data`, collates with [`DataCollatorForPreference`], runs one forward pass per batch
    ([`paired_forward`]), adds the MoE router loss and evaluates. A subclass sets `_config_class` and implements
    `_pair_loss`, the method's loss and rewards.

    Args:
        model (`str`, `PreTrainedModel` or `PeftModel`):
            Model id / local path (loaded with `AutoModelForCausalLM`, or `AutoModelForSeq2SeqLM` for an
            encoder-decoder, `.from_pretrained(model, **model_init_kwargs)`), or an instantiated model.
        args (`TrainingArguments` or `None`, *optional*, defaults to `None`):
            The method's configuration (`CPOConfig`, `ORPOConfig`; a plain `TrainingArguments` is converted). `None`
            uses its defaults with `output_dir="<model>-<method>"`.
        data_collator (`Callable` or `None`, *optional*, defaults to `None`):
            Defaults to [`DataCollatorForPreference`] (rows cut to `max_length`).
        train_dataset, eval_dataset, processing_class:
            As in [`DPOTrainer`]: paired preference data, standard, conversational or pre-tokenised (a dict of
            evaluation sets is evaluated set by set), and the tokenizer (`None`: that of `model`).
        model_init (`None`):
            Not supported (raises): pass `model`.
        callbacks, optimizers, preprocess_logits_for_metrics:
            As in [`~transformers.Trainer`].
        peft_config (`PeftConfig` or `None`, *optional*, defaults to `None`):
            Adapter configuration; the model is wrapped with it.
        compute_metrics (`Callable` or `None`, *optional*, defaults to `None`):
            Receives an `EvalPrediction` whose predictions are the `[N, 2]` rewards (chosen, rejected) and whose
            labels are 0 (the chosen column), e.g. `trl.trainer.utils.compute_accuracy`.
    """

    _config_class: type = _ReferenceFreePairedConfig
    # The `_prepare_dataset` step (`PreferenceDatasetStep`); the collator keeps the start of rows over `max_length`.
    _prepare_preference_data = prepare_preference_dataset
    _count_empty_rows = partial(count_empty_completions, truncation_mode="keep_start")
    _data_rows = "pair(s)"

    def __init__(
        self,
        model: str | PreTrainedModel | None = None,
        args: TrainingArguments | None = None,
        data_collator: Callable | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Dataset | IterableDataset | dict[str, Dataset] | None = None,
        processing_class: Any = None,
        model_init: Callable | None = None,
        callbacks: list | None = None,
        optimizers: tuple = (None, None),
        preprocess_logits_for_metrics: Callable | None = None,
        peft_config: Any = None,
        compute_metrics: Callable | None = None,
    ):
        super().__init__(
            model, args, data_collator, train_dataset, eval_dataset, processing_class, compute_metrics, callbacks,
            optimizers, None, preprocess_logits_for_metrics, peft_config=peft_config, model_init=model_init,
        )  # fmt: skip

    # ------------------------------------------------------------------------------------------------- setup
    def _validate(self, args: _ReferenceFreePairedConfig, inputs: TrainerInputs) -> None:
        if inputs.model is None or inputs.model_init is not None:
            raise ValueError(
                f"{type(self).__name__} needs `model` (a model id, a local path or a loaded model); `model_init` is "
                "not supported. Pass the model instead."
            )
        super()._validate(args, inputs)
        if args.generate_during_eval and importlib.util.find_spec("wandb") is None:
            raise ValueError("generate_during_eval=True logs a table to Weights & Biases: `pip install wandb`.")

    def _setup_model(
        self, model: str | PreTrainedModel, args: _ReferenceFreePairedConfig, quantization_config: Any
    ) -> PreTrainedModel:
        if isinstance(model, str):
            revision = (args.model_init_kwargs or {}).get("revision")
            config = AutoConfig.from_pretrained(model, revision=revision, trust_remote_code=args.trust_remote_code)
            _check_encoder_decoder(args, config, model)
            auto_class = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
            return load_trained_model(model, args, auto_class)
        _check_encoder_decoder(args, model.config, type(model).__name__)
        return model

    def _resolve_options(self, model: Any, processing_class: Any, args: Any, inputs: TrainerInputs) -> None:
        self.is_encoder_decoder = bool(model.config.is_encoder_decoder)

    def _collator_truncation_mode(self, args: Any) -> str:
        # Rows longer than max_length lose the end of their completion: the prompt was cut already.
        return "keep_start"

    def _after_init(self, auxiliary_models: dict[str, Any]) -> None:
        unwrapped = self.accelerator.unwrap_model(self.model)
        self._logits_to_keep_supported = not self.is_encoder_decoder and accepts_logits_to_keep(unwrapped)

    # --------------------------------------------------------------------------------------------------- loss
    def _loss_and_outputs(self, model: torch.nn.Module, inputs: dict, call: LossCall) -> tuple[torch.Tensor, Any]:
        options = {"logits_to_keep": self._logits_to_keep_supported, "is_encoder_decoder": self.is_encoder_decoder}
        scores = paired_forward(model, inputs, **options)
        loss, chosen_rewards, rejected_rewards = self._pair_loss(scores, call.mode)
        loss = loss + self.router_aux_loss(scores.aux_loss, call.mode)
        return loss, {"chosen_rewards": chosen_rewards, "rejected_rewards": rejected_rewards}

    def _pair_loss(self, scores: PairedScores, mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The method's loss of a batch and the `[B]` chosen and rejected rewards; logs the method's metrics."""
        raise NotImplementedError

    def store_metrics(self, metrics: dict[str, float], train_eval: str = "train") -> None:
        """Record metric values (the 0.x API of these trainers); `log()` reports their means."""
        for key, value in metrics.items():
            self.log_metric(key, value, train_eval)

    # ------------------------------------------------------------------------------------------- evaluation
    def evaluation_loop(self, dataloader, *args: Any, **kwargs: Any):
        output = super().evaluation_loop(dataloader, *args, **kwargs)
        if self.args.generate_during_eval:
            self._log_generations(dataloader.dataset)
        return output

    @torch.no_grad()
    def _log_generations(self, dataset: Any) -> None:
        """Sample completions of the first evaluation prompts and log them to Weights & Biases as `game_log`."""
        import wandb

        if wandb.run is None or not self.accelerator.is_main_process or not hasattr(dataset, "__getitem__"):
            return
        count = min(len(dataset), self.args.per_device_eval_batch_size)
        prompts = [torch.tensor(dataset[i]["prompt_ids"]) for i in range(count)]
        device = self.accelerator.device
        input_ids = pad(prompts, self.pad_token_id, padding_side="left").to(device)
        attention_mask = pad([torch.ones_like(p) for p in prompts], 0, padding_side="left").to(device)
        model = self.accelerator.unwrap_model(self.model)
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=self.args.max_completion_length or 64,
            do_sample=True,
            pad_token_id=self.pad_token_id,
        )
        # A decoder-only model returns prompt + completion; an encoder-decoder only the decoded completion.
        completions = generated if self.is_encoder_decoder else generated[:, input_ids.shape[1] :]
        tokenizer = get_tokenizer(self.processing_class)
        texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
        rows = [[tokenizer.decode(p, skip_special_tokens=True), text] for p, text in zip(prompts, texts)]
        wandb.log({"game_log": wandb.Table(columns=["Prompt", "Policy"], rows=rows)})
