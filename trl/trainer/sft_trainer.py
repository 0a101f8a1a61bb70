"""Supervised fine-tuning.

Objective: minimise the negative log-likelihood of the trained tokens,
    L = - sum_{t in T} log p(y_t | y_<t) / |T|,
where T is every labelled token of the (accumulated) batch: all tokens for language-modelling data, completion
tokens for prompt-completion data (`completion_only_loss`), assistant tokens with `assistant_only_loss`.
`loss_type="dft"` scales each token's term by its detached probability, -sg(p(y_t)) log p(y_t) (arXiv 2508.05629).

The normaliser |T| counts labelled tokens across gradient-accumulation steps and processes, so splitting a batch
does not change the loss. Logits are computed only at labelled positions (the LM head is the costliest layer of a
small model and prompt/padding positions carry no loss); entropy and accuracy come from those same logits.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from datasets import Dataset, IterableDataset
from transformers import PreTrainedModel, TrainingArguments

from ..chat_template_utils import get_training_chat_template
from ..data_utils import get_dataset_column_names, is_conversational
from ..kernels import TokenLogps, token_logps
from ..losses import supervised_loss
from .base_trainer import BaseTrainer, LossCall, TrainerInputs
from .collators import DataCollatorForLanguageModeling
from .data_preparation import (
    apply_formatting_func,
    check_conversational_template,
    convert_to_chatml,
    count_unlearnable,
    first_example,
    lm_dataset_kind,
    tokenize_dataset,
    truncate_or_pack,
)
from .input_checks import check_text_columns
from .model_utils import (
    accepts_logits_to_keep,
    get_tokenizer,
    num_prepended_virtual_tokens,
    uses_flash_attention,
)
from .sft_config import SFTConfig


# The collator's inputs; `Trainer` would otherwise drop the mask columns as unknown to `model.forward`.
_SFT_COLUMNS = [
    "input_ids",
    "labels",
    "attention_mask",
    "position_ids",
    "completion_mask",
    "assistant_masks",
    "seq_lengths",
]


class SFTTrainer(BaseTrainer):
    """Trainer for supervised fine-tuning (SFT) of causal language models.

    Args:
        model (`str` or `PreTrainedModel` or `PeftModel`):
            Model id / local path (loaded with `AutoModelForCausalLM.from_pretrained(model, **model_init_kwargs)`),
            or an instantiated model.
        args (`SFTConfig`, `TrainingArguments` or `None`, *optional*, defaults to `None`):
            Training configuration. `None` uses `SFTConfig(output_dir="<model>-SFT")`.
        data_collator (`Callable` or `None`, *optional*, defaults to `None`):
            Defaults to [`DataCollatorForLanguageModeling`] configured from `args`.
        train_dataset (`Dataset` or `IterableDataset`):
            Language-modelling (`text` / `messages`) or prompt-completion data, standard or conversational, or
            pre-tokenised data with `input_ids`.
        eval_dataset (`Dataset`, `IterableDataset`, `dict[str, Dataset]` or `None`, *optional*, defaults to `None`):
            Evaluation data in the same formats; a dict evaluates each dataset under its name.
        processing_class (`PreTrainedTokenizerBase` or `None`, *optional*, defaults to `None`):
            Defaults to the tokenizer of `model`.
        compute_loss_func (`Callable` or `None`, *optional*, defaults to `None`):
            Replaces the SFT loss: called as `compute_loss_func(outputs, labels, num_items_in_batch=...)`.
        compute_metrics, callbacks, optimizers, optimizer_cls_and_kwargs, preprocess_logits_for_metrics:
            As in [`~transformers.Trainer`].
        quantization_config (`BitsAndBytesConfig` or `None`, *optional*, defaults to `None`):
            Used when `model` is a string.
        peft_config (`PeftConfig` or `None`, *optional*, defaults to `None`):
            Adapter configuration; the model is wrapped with it.
        formatting_func (`Callable[[dict], str]` or `None`, *optional*, defaults to `None`):
            Builds the training text of one example.
    """

    _config_class = SFTConfig
    loss_normalization = "tokens"
    # SFT checks its text columns itself, after `formatting_func` and the ShareGPT conversion have run.
    _text_columns = ()
    _name = "SFT"
    # `token_logps`' chunked LM head (positions per chunk), or None for the logits path, which measures faster at
    # every size benchmarks/bench_token_logps.py covers.
    _logps_chunk_size: int | None = None

    def __init__(
        self,
        model: str | PreTrainedModel,
        args: SFTConfig | TrainingArguments | None = None,
        data_collator: Callable | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Dataset | IterableDataset | dict[str, Dataset] | None = None,
        processing_class: Any = None,
        compute_loss_func: Callable | None = None,
        compute_metrics: Callable | None = None,
        callbacks: list | None = None,
        optimizers: tuple = (None, None),
        optimizer_cls_and_kwargs: tuple | None = None,
        preprocess_logits_for_metrics: Callable | None = None,
        quantization_config: Any = None,
        peft_config: Any = None,
        formatting_func: Callable[[dict], str] | None = None,
    ):
        self._formatting_func = formatting_func
        super().__init__(
            model, args, data_collator, train_dataset, eval_dataset, processing_class, compute_metrics, callbacks,
            optimizers, optimizer_cls_and_kwargs, preprocess_logits_for_metrics, quantization_config, peft_config,
            compute_loss_func=compute_loss_func,
        )  # fmt: skip

    # ------------------------------------------------------------------ setup
    def _validate(self, args: SFTConfig, inputs: TrainerInputs) -> None:
        super()._validate(args, inputs)
        if self._formatting_func is not None and args.completion_only_loss:
            raise ValueError(
                "formatting_func builds one text per example, so there is no prompt/completion split for "
                "completion_only_loss=True. Use a prompt-completion dataset, or set completion_only_loss=False."
            )
        unknown = set(args.dataset_kwargs or {}) - {"skip_prepare_dataset"}
        if unknown:
            raise ValueError(
                f"Unknown dataset_kwargs keys {sorted(unknown)}: the only option is `skip_prepare_dataset`. Prepare "
                "the dataset yourself (e.g. with `dataset.map`) for anything else."
            )
        if args.use_liger_kernel:
            from ..import_utils import is_liger_kernel_available, require

            require(is_liger_kernel_available(), "use_liger_kernel=True", "pip install trl[liger]")

    def _resolve_options(self, model: Any, processing_class: Any, args: SFTConfig, inputs: TrainerInputs) -> None:
        self.padding_free = self._resolve_padding_free(model, args)
        self.eos_token = self._resolve_eos_token(processing_class, args)
        kind = "text" if self._formatting_func is not None else self._dataset_kind(inputs.train_dataset, args)
        self.completion_only_loss = self._resolve_completion_only_loss(args, kind, self._formatting_func)

    def _default_collator(self, processing_class: Any, args: SFTConfig) -> DataCollatorForLanguageModeling:
        return DataCollatorForLanguageModeling(
            pad_token_id=self.pad_token_id,
            completion_only_loss=self.completion_only_loss,
            padding_free=self.padding_free,
            pad_to_multiple_of=args.pad_to_multiple_of,
        )

    def _after_init(self, auxiliary_models: dict[str, Any]) -> None:
        self._total_train_tokens = 0
        unwrapped = self.accelerator.unwrap_model(self.model)
        self._logits_to_keep_supported = accepts_logits_to_keep(unwrapped)
        self._num_virtual_tokens = num_prepended_virtual_tokens(unwrapped)

    @staticmethod
    def _resolve_padding_free(model: PreTrainedModel, args: SFTConfig) -> bool:
        if num_prepended_virtual_tokens(model):
            if args.padding_free:
                raise ValueError(
                    "padding_free=True tells the sequences of a flattened batch apart by their position_ids, which "
                    "PEFT prompt tuning drops (it prepends its virtual tokens to the row). Set padding_free=False."
                )
            return False
        flash = uses_flash_attention(model)
        if args.padding_free and not flash:
            warnings.warn(
                "padding_free=True flattens each batch into one row; without FlashAttention, attention is then "
                "computed over the whole flattened batch (quadratic in its total length), which is slower than "
                "padded batches. Load the model with attn_implementation='flash_attention_2', or use packing=True, "
                "whose packed rows keep documents apart row by row.",
                UserWarning,
                stacklevel=5,
            )
        # bfd packing keeps documents apart either way: flattened for FlashAttention, packed rows otherwise.
        return args.padding_free or (args.packing and args.packing_strategy != "wrapped" and flash)

    @staticmethod
    def _resolve_eos_token(processing_class: Any, args: SFTConfig) -> str | None:
        tokenizer = get_tokenizer(processing_class)
        if args.eos_token is None:
            return tokenizer.eos_token
        if tokenizer.convert_tokens_to_ids(args.eos_token) in (None, tokenizer.unk_token_id):
            raise ValueError(
                f"eos_token {args.eos_token!r} is not a token of the tokenizer's vocabulary. Pass one of its special "
                f"tokens (e.g. {tokenizer.eos_token!r}) or add it with tokenizer.add_special_tokens first."
            )
        return args.eos_token

    @staticmethod
    def _dataset_kind(dataset: Dataset | IterableDataset | None, args: SFTConfig) -> str:
        if dataset is None:
            raise ValueError("SFTTrainer needs a train_dataset.")
        return lm_dataset_kind(get_dataset_column_names(dataset), args.dataset_text_field)

    @staticmethod
    def _resolve_completion_only_loss(args: SFTConfig, kind: str, formatting_func: Callable | None) -> bool:
        if args.completion_only_loss is None:
            return kind in ("prompt_completion", "tokenized")
        if args.completion_only_loss and kind in ("text", "messages") and formatting_func is None:
            raise ValueError(
                "completion_only_loss=True needs prompt-completion data ('prompt' and 'completion' columns); this "
                "dataset is language-modeling. Use assistant_only_loss=True for conversations, or convert the data."
            )
        return args.completion_only_loss

    def _prepare_dataset(
        self, dataset: Dataset | IterableDataset, processing_class: Any, args: SFTConfig, name: str
    ) -> Dataset | IterableDataset:
        formatting_func = self._formatting_func
        if (args.dataset_kwargs or {}).get("skip_prepare_dataset", False):
            return dataset
        packing = args.packing if name == "train" or args.eval_packing is None else args.eval_packing
        if name == "train" and args.shuffle_dataset:
            dataset = dataset.shuffle(seed=args.seed)
        with args.main_process_first(desc=f"preparing the {name} dataset"):
            if formatting_func is not None:
                dataset = apply_formatting_func(
                    dataset, formatting_func, args.dataset_text_field, args.dataset_num_proc
                )
            if "input_ids" not in get_dataset_column_names(dataset):
                # ShareGPT data is converted first, so that the checks below see it as the conversations it is.
                dataset = convert_to_chatml(dataset, args.dataset_num_proc)
                text_field = args.dataset_text_field
                columns = (text_field, "prompt", "completion", "messages", "conversations")
                check_text_columns(dataset, columns, name, non_empty=(text_field,))
                self._check_chat_template(dataset, processing_class, args)
                dataset = tokenize_dataset(
                    dataset,
                    get_tokenizer(processing_class),
                    text_field=args.dataset_text_field,
                    eos_token=self.eos_token,
                    assistant_only_loss=args.assistant_only_loss,
                    num_proc=args.dataset_num_proc,
                )
            dataset = truncate_or_pack(
                dataset, args.max_length, packing, args.packing_strategy, args.truncation_mode, args.dataset_num_proc
            )
        self._check_learnable(dataset, args, name)
        return dataset

    @staticmethod
    def _check_chat_template(dataset: Dataset | IterableDataset, processing_class: Any, args: SFTConfig) -> None:
        tokenizer = get_tokenizer(processing_class)
        if args.assistant_only_loss:
            if not is_conversational(first_example(dataset)):
                raise ValueError(
                    "assistant_only_loss=True needs conversational data (lists of role/content messages). For "
                    "standard prompt-completion data use completion_only_loss instead."
                )
            # The shipped training version of the template (with generation markers) gives the assistant mask.
            training_template = get_training_chat_template(tokenizer) if tokenizer.chat_template else None
            if training_template is not None:
                tokenizer.chat_template = training_template
        check_conversational_template(dataset, tokenizer, assistant_only_loss=args.assistant_only_loss)

    def _check_learnable(self, dataset: Dataset | IterableDataset, args: SFTConfig, name: str) -> None:
        for column, enabled in (("completion_mask", self.completion_only_loss), ("assistant_masks", True)):
            if not enabled:
                continue
            empty = count_unlearnable(dataset, column)
            if empty:
                raise ValueError(
                    f"{empty} example(s) of the {name} dataset have no trainable token in '{column}' after "
                    f"truncation to max_length={args.max_length}: their prompt fills the whole length (or their "
                    "completion / assistant turns are empty). Increase max_length, or filter out those examples."
                )

    def _collator_columns(self) -> list[str]:
        return _SFT_COLUMNS

    # ------------------------------------------------------------------ loss
    def _loss_and_outputs(self, model: torch.nn.Module, inputs: dict, call: LossCall) -> tuple[torch.Tensor, Any]:
        if self.compute_loss_func is not None or self.label_smoother is not None:
            return super()._loss_and_outputs(model, inputs, call)

        # The LM head runs only at the positions that predict a labelled token (every position when the caller wants
        # the outputs); prompt tuning's virtual tokens come first in the model's sequence and are never kept.
        token = token_logps(
            model,
            inputs,
            return_entropy=True,
            return_top1=True,
            chunk_size=self._logps_chunk_size,
            logits_to_keep=self._logits_to_keep_supported and not call.return_outputs,
            num_virtual_tokens=self._num_virtual_tokens,
        )
        loss = self.normalized_loss(supervised_loss(token.logps_N, self.args.loss_type, call.num_items_in_batch),
                                    call.num_items_in_batch)  # fmt: skip
        loss = loss + self.router_aux_loss(token.aux_loss, call.mode)
        self._log_token_metrics(inputs, token, call.mode)
        return loss, token.outputs

    @torch.no_grad()
    def _log_token_metrics(self, inputs: dict[str, torch.Tensor], token: TokenLogps, mode: str) -> None:
        gather = self.accelerator.gather_for_metrics
        device = token.mask.device
        if mode == "train":
            if "attention_mask" in inputs:
                num_tokens = inputs["attention_mask"].sum()
            else:
                num_tokens = torch.tensor(inputs["input_ids"].numel(), device=device)
            self._total_train_tokens += int(gather(num_tokens.reshape(1)).sum().item())
            self.log_metric("num_tokens", self._total_train_tokens, mode)
        # Entropy and accuracy come from the forward pass's own logits (no extra pass over the vocabulary).
        entropy_sum = token.entropy[token.mask].float().sum()
        correct = token.is_top1[token.mask].sum().float()
        count = token.mask.sum().float()
        totals = gather(torch.stack([entropy_sum, correct, count]).reshape(1, 3)).sum(dim=0)
        if totals[2] > 0:
            self.log_metric("entropy", (totals[0] / totals[2]).item(), mode)
            self.log_metric("mean_token_accuracy", (totals[1] / totals[2]).item(), mode)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # Without compute_metrics nothing reads the logits: skip collecting them (and keep logits_to_keep).
        if self.compute_metrics is None and self.preprocess_logits_for_metrics is None:
            prediction_loss_only = True
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)

    def _derived_quantities(self) -> dict[str, Any]:
        rows = super()._derived_quantities()
        rows["packing"] = f"{self.args.packing_strategy}" if self.args.packing else "off"
        rows["padding-free batches"] = self.padding_free
        rows["loss on"] = "completion tokens" if self.completion_only_loss else "all tokens"
        if self.args.assistant_only_loss:
            rows["loss on"] = "assistant tokens"
        return rows
