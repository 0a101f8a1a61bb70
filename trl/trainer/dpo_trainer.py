"""Direct Preference Optimization (arXiv 2305.18290) and its variants.

Objective, per pair (x, y_c, y_r): with the log-ratios r = log π(y|x) − log π_ref(y|x),

    L = Σ_k w_k · mean_pairs(ℓ_k(r_c, r_r))                               (`loss_type` list, `loss_weights`)
      + rpo_alpha · NLL(y_c)                                                (RPO, when `rpo_alpha` is set)
      + router_aux_loss_coef · aux_loss                                     (MoE models with router logits)

where ℓ_sigmoid = −log σ(β(r_c − r_r)) (cDPO with `label_smoothing`), and every other ℓ_k is the function of that
name in `trl.losses.preference` (the formulas and their papers are in docs/losses.md).

- log π(y|x) is the **sum** of the completion tokens' log-probs. IPO and `sigmoid_norm` divide it by the completion
  length (the reference's per-token average); LD-DPO (`ld_alpha`) weighs the tokens past the shorter completion of the
  pair by `ld_alpha`, for the policy and the reference alike.
- NLL(y_c), used by RPO and by the `sft` loss type, is the mean over all chosen completion tokens of the micro-batch.
- WPO (`use_weighting`) multiplies each pair's preference losses (not the NLL) by min(1, w_c·w_r), detached.
- `bco_pair` shifts the rewards by δ, the running mean of the implicit rewards over training (as in BCO).
- Reference: an explicit `ref_model`; otherwise a frozen copy of the initial policy; under PEFT the same model with
  its adapters disabled (or `ref_adapter_name` active), never a copy; with `precompute_ref_log_probs` the log-probs
  are computed once before training and read from the dataset; `reference_free` sets them to 0.

Chosen and rejected rows go through the model in **one** forward pass ([chosen; rejected], right-padded, or
flattened without padding with `padding_free`), and the LM head is applied only at completion positions.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from datasets import Dataset, IterableDataset
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, PreTrainedModel, TrainingArguments

from ..losses import (
    combine_losses,
    ld_dpo_logps,
    preference_loss,
    sequence_logps,
    wpo_pair_weights,
    wpo_sequence_weights,
)
from ..models.utils import create_reference_model, prepare_ref_model
from .base_trainer import BaseTrainer
from .callbacks import SyncRefModelCallback
from .collators import DataCollatorForPreference
from .dpo_config import DPOConfig
from .model_utils import (
    check_model_init_kwargs_unused,
    get_tokenizer,
    is_peft_model,
    load_model,
    load_processing_class,
    prepare_peft_model,
    resolve_pad_token_id,
)
from .preference_data import PREFERENCE_TOKEN_COLUMNS, count_empty_completions, prepare_preference_dataset
from .sft_trainer import _accepts_logits_to_keep, _is_moe, model_name_of, to_config
from .utils import RunningMoments, disable_dropout_in_model, pad, selective_log_softmax, use_adapter


_REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


@dataclass
class CompletionScores:
    """What one forward pass over [chosen; rejected] rows gives the loss and the metrics (B pairs).

    `chosen_logps`/`rejected_logps` are the sequence log-probs (sum, or LD-DPO), `*_lengths` the completion token
    counts, `nll_loss` the mean NLL of the chosen tokens, `pair_weights` the WPO weights (or `None`), and
    `logit_stats` the sums and counts of the mean completion logit of chosen and rejected rows (for metrics).
    """

    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    chosen_lengths: torch.Tensor
    rejected_lengths: torch.Tensor
    nll_loss: torch.Tensor
    pair_weights: torch.Tensor | None
    logit_stats: torch.Tensor
    aux_loss: torch.Tensor | None


class DPOTrainer(BaseTrainer):
    """Trainer for Direct Preference Optimization and its variants (see `loss_type`).

    Args:
        model (`str`, `PreTrainedModel` or `PeftModel`):
            Model id / local path (loaded with `AutoModelForCausalLM.from_pretrained(model, **model_init_kwargs)`),
            or an instantiated causal language model.
        ref_model (`str`, `PreTrainedModel` or `None`, *optional*, defaults to `None`):
            Reference model. `None` uses a frozen copy of the initial model, or, under PEFT, the model with its
            adapters disabled (no copy).
        args (`DPOConfig`, `TrainingArguments` or `None`, *optional*, defaults to `None`):
            Training configuration. `None` uses `DPOConfig(output_dir="<model>-DPO")`.
        data_collator (`Callable` or `None`, *optional*, defaults to `None`):
            Defaults to [`DataCollatorForPreference`] configured from `args`.
        train_dataset (`Dataset` or `IterableDataset`):
            Paired preference data (`prompt`, `chosen`, `rejected`; or implicit prompt `chosen`, `rejected`),
            standard or conversational, or pre-tokenised (`prompt_ids`, `chosen_ids`, `rejected_ids`).
        eval_dataset (`Dataset`, `IterableDataset`, `dict[str, Dataset]` or `None`, *optional*, defaults to `None`):
            Evaluation data in the same formats; a dict evaluates each dataset under its name.
        processing_class (`PreTrainedTokenizerBase` or `None`, *optional*, defaults to `None`):
            Defaults to the tokenizer of `model`.
        compute_metrics (`Callable` or `None`, *optional*, defaults to `None`):
            Receives an `EvalPrediction` whose predictions are the `[N, 2]` implicit rewards (chosen, rejected) and
            whose labels are 0 (the chosen column), e.g. `trl.trainer.utils.compute_accuracy`.
        callbacks, optimizers, optimizer_cls_and_kwargs, preprocess_logits_for_metrics:
            As in [`~transformers.Trainer`].
        quantization_config (`BitsAndBytesConfig` or `None`, *optional*, defaults to `None`):
            Used when `model` is a string.
        peft_config (`PeftConfig` or `None`, *optional*, defaults to `None`):
            Adapter configuration; the model is wrapped with it.
    """

    _tag_names = ["trl", "dpo"]
    _name = "DPO"
    _paper = {
        "title": "Direct Preference Optimization: Your Language Model is Secretly a Reward Model",
        "id": "2305.18290",
        "citation": (
            "@inproceedings{rafailov2023direct,\n"
            "    title        = {{Direct Preference Optimization: Your Language Model is Secretly a Reward Model}},\n"
            "    author       = {Rafael Rafailov and Archit Sharma and Eric Mitchell and Christopher D. Manning and "
            "Stefano Ermon and Chelsea Finn},\n"
            "    year         = 2023,\n"
            "    booktitle    = {Advances in Neural Information Processing Systems 36},\n"
            "}"
        ),
    }

    def __init__(
        self,
        model: str | PreTrainedModel,
        ref_model: str | PreTrainedModel | None = None,
        args: DPOConfig | TrainingArguments | None = None,
        data_collator: Callable | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Dataset | IterableDataset | dict[str, Dataset] | None = None,
        processing_class: Any = None,
        compute_metrics: Callable | None = None,
        callbacks: list | None = None,
        optimizers: tuple = (None, None),
        optimizer_cls_and_kwargs: tuple | None = None,
        preprocess_logits_for_metrics: Callable | None = None,
        quantization_config: Any = None,
        peft_config: Any = None,
    ):
        args = to_config(args, DPOConfig, model_name_of(model), self._name)
        self._validate_config(args, model, ref_model, peft_config, train_dataset)
        model = self._setup_model(model, args, quantization_config)
        processing_class = processing_class or load_processing_class(model.config._name_or_path, args)
        model = prepare_peft_model(model, peft_config, args)
        self._explicit_ref_model = ref_model is not None
        ref_model = self._setup_ref_model(model, ref_model, args)
        if args.disable_dropout:
            for module in (model, ref_model):
                if module is not None:
                    disable_dropout_in_model(module)
        self.pad_token_id = (
            args.padding_value
            if args.padding_value is not None
            else resolve_pad_token_id(processing_class, args.pad_token)
        )

        train_dataset = self._prepare_dataset(train_dataset, processing_class, args, "train")
        if isinstance(eval_dataset, dict):
            eval_dataset = {
                name: self._prepare_dataset(ds, processing_class, args, name) for name, ds in eval_dataset.items()
            }
        elif eval_dataset is not None:
            eval_dataset = self._prepare_dataset(eval_dataset, processing_class, args, "eval")
        if data_collator is None:
            data_collator = DataCollatorForPreference(
                pad_token_id=self.pad_token_id,
                max_length=args.max_length,
                truncation_mode=args.truncation_mode,
                pad_to_multiple_of=args.pad_to_multiple_of,
            )
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        self._setup_after_init(ref_model)

    # ------------------------------------------------------------------------------------------------- setup
    @staticmethod
    def _validate_config(args: DPOConfig, model: Any, ref_model: Any, peft_config: Any, train_dataset: Any) -> None:
        check_model_init_kwargs_unused(model, args)
        if train_dataset is None:
            raise ValueError("DPOTrainer needs a train_dataset of paired preference data.")
        if ref_model is not None and not isinstance(ref_model, str) and args.ref_model_init_kwargs:
            raise ValueError("ref_model_init_kwargs only applies when ref_model is a string; the ref_model is loaded.")
        if ref_model is not None and args.reference_free:
            raise ValueError("reference_free=True uses no reference model, but a ref_model was passed: drop one.")
        peft = peft_config is not None or is_peft_model(model)
        if peft and ref_model is not None and not args.force_use_ref_model:
            raise ValueError(
                "You passed a ref_model together with a PEFT model. The reference of a PEFT model is its base with "
                "the adapters disabled, which needs no second model: drop ref_model, or set force_use_ref_model=True "
                "to use the explicit reference anyway."
            )
        if peft and args.sync_ref_model:
            raise ValueError(
                "sync_ref_model=True (TR-DPO) mixes the policy weights into a separate reference model, which a PEFT "
                "model does not have. Set sync_ref_model=False, or train without peft_config."
            )
        if args.activation_offloading and not torch.cuda.is_available():
            raise ValueError(
                "activation_offloading moves activations from an accelerator to CPU memory; without a "
                "CUDA device there is nothing to offload. Set activation_offloading=False."
            )
        if args.use_liger_loss:
            from ..import_utils import is_liger_kernel_available, require

            require(is_liger_kernel_available(), "use_liger_loss=True", "pip install liger-kernel")
            raise ValueError("use_liger_loss=True is not supported in this version of trl; set it to False.")
        if args.generate_during_eval:
            import importlib.util

            if importlib.util.find_spec("wandb") is None:
                raise ValueError("generate_during_eval=True logs a table to Weights & Biases: `pip install wandb`.")

    @staticmethod
    def _setup_model(model: str | PreTrainedModel, args: DPOConfig, quantization_config: Any) -> PreTrainedModel:
        if isinstance(model, str):
            overrides = {"quantization_config": quantization_config} if quantization_config is not None else {}
            model = load_model(model, args, AutoModelForCausalLM, **overrides)
        elif quantization_config is not None:
            raise ValueError("quantization_config only applies when `model` is a string; the model is already loaded.")
        if args.router_aux_loss_coef not in (None, 0.0) and not _is_moe(model):
            raise ValueError(
                f"router_aux_loss_coef={args.router_aux_loss_coef} is set but {type(model).__name__} is not a "
                "mixture-of-experts model. Leave router_aux_loss_coef=None."
            )
        if args.use_logits_to_keep and not _accepts_logits_to_keep(model):
            raise ValueError(
                f"use_logits_to_keep=True but {type(model).__name__}.forward has no `logits_to_keep` argument. Set "
                "use_logits_to_keep=False (full logits are computed and the completion positions selected)."
            )
        return model

    @staticmethod
    def _setup_ref_model(model: Any, ref_model: str | PreTrainedModel | None, args: DPOConfig) -> Any:
        """The separate reference model, or `None` when the policy itself provides the reference log-probs."""
        if args.reference_free:
            return None
        if isinstance(ref_model, str):
            ref_args = SimpleNamespace(
                model_init_kwargs=args.ref_model_init_kwargs or args.model_init_kwargs,
                trust_remote_code=args.trust_remote_code,
            )
            ref_model = load_model(ref_model, ref_args, AutoModelForCausalLM)
        if ref_model is not None:
            for param in ref_model.parameters():
                param.requires_grad_(False)
            return ref_model.eval()
        if is_peft_model(model) or args.precompute_ref_log_probs:
            return None  # adapters disabled, or the untrained policy itself during precomputation
        return create_reference_model(model)

    def _prepare_dataset(
        self, dataset: Dataset | IterableDataset, processing_class: Any, args: DPOConfig, name: str
    ) -> Dataset | IterableDataset:
        with args.main_process_first(desc=f"preparing the {name} dataset"):
            dataset = prepare_preference_dataset(
                dataset,
                processing_class,
                trainer_name="DPOTrainer",
                tools=args.tools,
                eos_token=get_tokenizer(processing_class).eos_token,
                max_prompt_length=args.max_prompt_length,
                max_completion_length=args.max_completion_length,
                num_proc=args.dataset_num_proc,
            )
        empty = count_empty_completions(dataset, args.max_length, args.truncation_mode)
        if empty:
            warnings.warn(
                f"{empty} pair(s) of the {name} dataset have a chosen or rejected completion with no token left after "
                f"truncation (max_length={args.max_length}, max_prompt_length={args.max_prompt_length}); their "
                "log-probs are 0 and they teach nothing. Lower max_prompt_length or raise max_length.",
                UserWarning,
                stacklevel=3,
            )
        return dataset

    def _setup_after_init(self, ref_model: Any) -> None:
        # The loss is a mean over the pairs of each micro-batch: Trainer divides it by the accumulation steps.
        self.model_accepts_loss_kwargs = False
        self.loss_types = list(self.args.loss_type)
        self.loss_options = self.args.loss_options()
        self.running = RunningMoments(self.accelerator) if "bco_pair" in self.loss_types else None
        self._logits_to_keep_supported = _accepts_logits_to_keep(self.accelerator.unwrap_model(self.model))
        self._precomputed_before_training = False
        self.ref_model = prepare_ref_model(ref_model, self.accelerator) if ref_model is not None else None
        unwrapped = self.accelerator.unwrap_model(self.model)
        if self.args.model_adapter_name is not None and is_peft_model(unwrapped):
            unwrapped.set_adapter(self.args.model_adapter_name)
        attention = getattr(unwrapped.config, "_attn_implementation", None) or ""
        if self.args.padding_free and not attention.startswith("flash"):
            warnings.warn(
                f"padding_free=True with attn_implementation={attention!r}: the loss is exact, but this attention "
                "builds one mask over the whole flattened batch, which is slower than padding. Load the model with "
                "attn_implementation='flash_attention_2' (or 3), or set padding_free=False.",
                UserWarning,
                stacklevel=3,
            )
        if self.args.sync_ref_model:
            if self.ref_model is None:
                raise ValueError("sync_ref_model=True needs a reference model to update; none is in use.")
            self.add_callback(SyncRefModelCallback(ref_model=self.ref_model, accelerator=self.accelerator))

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = [*PREFERENCE_TOKEN_COLUMNS, *_REF_COLUMNS]

    def _reference_description(self) -> str:
        if self.args.reference_free:
            return "none (reference-free)"
        source = "explicit model" if self._explicit_ref_model else "frozen initial policy"
        if is_peft_model(self.accelerator.unwrap_model(self.model)) and self.ref_model is None:
            name = self.args.ref_adapter_name
            source = f"adapter {name!r}" if name else "base model (adapters disabled)"
        return f"{source}, precomputed" if self.args.precompute_ref_log_probs else source

    def _derived_quantities(self) -> dict[str, Any]:
        rows = super()._derived_quantities()
        global_pairs = rows.pop("global batch (sequences/step)")
        rows["global batch (pairs/step)"] = global_pairs
        rows["sequences per forward pass"] = 2 * self.args.per_device_train_batch_size
        if self.args.max_length:
            rows["max tokens per step"] = 2 * global_pairs * self.args.max_length
        weights = self.args.loss_weights or [1.0] * len(self.loss_types)
        rows["loss"] = " + ".join(f"{w:g}·{name}" for w, name in zip(weights, self.loss_types))
        rows["beta"] = self.args.beta
        rows["reference"] = self._reference_description()
        rows["padding-free forward"] = self.args.padding_free
        return rows

    # ------------------------------------------------------------------------------------------ forward pass
    def _model_inputs(self, batch: dict[str, torch.Tensor], keep_R_T: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """Forward kwargs for the padded rows, or for the rows flattened into one without padding, and the
        positions (in the same layout) whose logits are needed."""
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        if not self.args.padding_free:
            return {"input_ids": input_ids, "attention_mask": attention_mask}, keep_R_T
        real = attention_mask.bool()
        # Position ids restart at 0 for every row: attention then keeps the sequences apart (no attention mask).
        position_ids = (attention_mask.long().cumsum(dim=-1) - 1)[real].unsqueeze(0)
        inputs = {"input_ids": input_ids[real].unsqueeze(0), "position_ids": position_ids}
        attn = getattr(getattr(self.model, "config", None), "_attn_implementation", "") or ""
        if attn.startswith("flash"):
            lengths = attention_mask.sum(dim=-1)
            cu = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
            max_len = int(lengths.max())
            inputs.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max_len, max_length_k=max_len)
        return inputs, keep_R_T[real].unsqueeze(0)

    def _completion_logps(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
        """Per-token log-probs `[R, T]` (0 outside completions) of the R = 2B rows, the mask of the positions that
        predict a completion token `[R, T]`, the logits at those positions `[N, V]` and the model outputs."""
        input_ids, completion_mask = batch["input_ids"], batch["completion_mask"]
        # Position t predicts token t + 1: keep the positions whose next token is a completion token.
        keep_R_T = torch.zeros_like(completion_mask, dtype=torch.bool)
        keep_R_T[:, :-1] = completion_mask[:, 1:].bool()
        targets_N = input_ids[:, 1:][keep_R_T[:, :-1]]
        model_inputs, keep_model = self._model_inputs(batch, keep_R_T)
        if self._logits_to_keep_supported:
            model_inputs["logits_to_keep"] = keep_model
        outputs = model(**model_inputs, use_cache=False)
        logits_N_V = outputs.logits if self._logits_to_keep_supported else outputs.logits[keep_model]
        assert logits_N_V.shape[0] == targets_N.shape[0], "kept logits and completion targets are misaligned"
        logps_N = selective_log_softmax(logits_N_V, targets_N)
        logps_R_T = logps_N.new_zeros(keep_R_T.shape).masked_scatter(keep_R_T, logps_N)
        return logps_R_T, keep_R_T, logits_N_V, outputs

    def _sequence_logps(self, logps_R_T: torch.Tensor, keep_R_T: torch.Tensor) -> torch.Tensor:
        """Sequence log-probs `[R]`: the sum over completion tokens, or LD-DPO's when `ld_alpha` is set."""
        if self.args.ld_alpha is None:
            return sequence_logps(logps_R_T, keep_R_T, "sum")
        lengths = keep_R_T.sum(dim=-1)
        half = lengths.shape[0] // 2
        shared_length = torch.minimum(lengths[:half], lengths[half:]).repeat(2)
        return ld_dpo_logps(logps_R_T, keep_R_T, shared_length, self.args.ld_alpha)

    def _policy_scores(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> CompletionScores:
        logps_R_T, keep_R_T, logits_N_V, outputs = self._completion_logps(model, batch)
        half = keep_R_T.shape[0] // 2
        logps_R = self._sequence_logps(logps_R_T, keep_R_T)
        lengths_R = keep_R_T.sum(dim=-1)
        chosen_tokens = keep_R_T[:half]
        nll_loss = -logps_R_T[:half][chosen_tokens].sum() / chosen_tokens.sum().clamp(min=1)
        pair_weights = None
        if self.args.use_weighting:
            logits_R_T_V = logits_N_V.new_zeros(*keep_R_T.shape, logits_N_V.shape[-1])
            logits_R_T_V = logits_R_T_V.masked_scatter(keep_R_T.unsqueeze(-1), logits_N_V.detach())
            weights_R = wpo_sequence_weights(logps_R_T.detach(), logits_R_T_V, keep_R_T)
            pair_weights = wpo_pair_weights(weights_R[:half], weights_R[half:])
        with torch.no_grad():
            mean_logit_N = logits_N_V.float().mean(dim=-1)
            is_chosen_N = keep_R_T.nonzero()[:, 0] < half
            logit_stats = torch.stack(
                [
                    mean_logit_N[is_chosen_N].sum(),
                    is_chosen_N.sum().float(),
                    mean_logit_N[~is_chosen_N].sum(),
                    (~is_chosen_N).sum().float(),
                ]
            )
        return CompletionScores(
            chosen_logps=logps_R[:half],
            rejected_logps=logps_R[half:],
            chosen_lengths=lengths_R[:half],
            rejected_lengths=lengths_R[half:],
            nll_loss=nll_loss,
            pair_weights=pair_weights,
            logit_stats=logit_stats,
            aux_loss=getattr(outputs, "aux_loss", None),
        )

    @contextmanager
    def _reference_model(self) -> Iterator[torch.nn.Module]:
        """The model to run for reference log-probs: the reference model, the PEFT model with its adapters switched,
        or (precomputation without reference model) the policy before any training step."""
        if self.ref_model is not None:
            yield self.ref_model
            return
        unwrapped = self.accelerator.unwrap_model(self.model)
        if is_peft_model(unwrapped):
            with use_adapter(unwrapped, self.args.ref_adapter_name):
                yield unwrapped
            return
        if self.state.global_step > 0 or self._precomputed_before_training:
            raise ValueError(
                "Reference log-probs are needed for a dataset that was not precomputed before training, and without "
                "a ref_model the reference was the initial policy, which has been trained since. Pass the evaluation "
                "dataset to the trainer at construction (it is precomputed with the training data), or pass ref_model."
            )
        yield unwrapped

    @torch.no_grad()
    def compute_ref_log_probs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference sequence log-probs `([B], [B])` of the chosen and rejected completions of a collated batch.

        Args:
            batch (`dict[str, torch.Tensor]`):
                Output of [`DataCollatorForPreference`] (`input_ids`, `attention_mask`, `completion_mask`).
        """
        with self._reference_model() as reference:
            was_training = reference.training
            reference.eval()
            try:
                logps_R_T, keep_R_T, _, _ = self._completion_logps(reference, batch)
            finally:
                reference.train(was_training)
        logps_R = self._sequence_logps(logps_R_T, keep_R_T)
        half = logps_R.shape[0] // 2
        return logps_R[:half], logps_R[half:]

    def _reference_logps(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if "ref_chosen_logps" in batch:
            return batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        if self.args.reference_free:
            return None, None
        return self.compute_ref_log_probs(batch)

    # --------------------------------------------------------------------------------------------------- loss
    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        mode = "train" if model.training else "eval"
        ref_chosen_logps, ref_rejected_logps = self._reference_logps(inputs)
        scores = self._policy_scores(model, inputs)
        loss = self._preference_loss(scores, ref_chosen_logps, ref_rejected_logps, mode)
        if self.args.rpo_alpha is not None:
            loss = loss + self.args.rpo_alpha * scores.nll_loss
        loss = loss + self._router_aux_loss(scores.aux_loss, mode)

        beta = self.args.beta
        chosen_rewards = beta * (scores.chosen_logps - (0 if ref_chosen_logps is None else ref_chosen_logps)).detach()
        rejected_rewards = (
            beta * (scores.rejected_logps - (0 if ref_rejected_logps is None else ref_rejected_logps)).detach()
        )
        self._log_pair_metrics(scores, chosen_rewards, rejected_rewards, mode)
        if return_outputs:
            return loss, {"chosen_rewards": chosen_rewards, "rejected_rewards": rejected_rewards}
        return loss

    def _preference_loss(
        self,
        scores: CompletionScores,
        ref_chosen_logps: torch.Tensor | None,
        ref_rejected_logps: torch.Tensor | None,
        mode: str,
    ) -> torch.Tensor:
        """`Σ_k w_k · mean(ℓ_k)` over the configured loss types (the `sft` type is the chosen NLL)."""
        losses: dict[str, torch.Tensor] = {}
        for loss_type in self.loss_types:
            if loss_type == "sft":
                losses[loss_type] = scores.nll_loss
                continue
            options = dict(
                self.loss_options, chosen_lengths=scores.chosen_lengths, rejected_lengths=scores.rejected_lengths
            )
            if loss_type == "bco_pair":
                options["reward_shift"] = self.running.mean
            output = preference_loss(
                loss_type,
                scores.chosen_logps,
                scores.rejected_logps,
                ref_chosen_logps,
                ref_rejected_logps,
                beta=self.args.beta,
                **options,
            )
            if loss_type == "bco_pair" and mode == "train":
                self.running.update(output.reward_mean.reshape(1))
            per_pair = output.losses if scores.pair_weights is None else output.losses * scores.pair_weights
            losses[loss_type] = per_pair
        return combine_losses(losses, self.args.loss_weights)

    def _router_aux_loss(self, aux_loss: torch.Tensor | None, mode: str) -> torch.Tensor | float:
        if aux_loss is None:
            return 0.0
        coef = self.args.router_aux_loss_coef
        if coef is None:
            coef = getattr(self.accelerator.unwrap_model(self.model).config, "router_aux_loss_coef", 0.0)
        self.log_metric("aux_loss", self.accelerator.gather(aux_loss.detach().reshape(1)).mean(), mode)
        return coef * aux_loss

    @torch.no_grad()
    def _log_pair_metrics(
        self, scores: CompletionScores, chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, mode: str
    ) -> None:
        per_pair = torch.stack(
            [
                chosen_rewards,
                rejected_rewards,
                (chosen_rewards > rejected_rewards).float(),
                chosen_rewards - rejected_rewards,
                scores.chosen_logps.detach(),
                scores.rejected_logps.detach(),
            ],
            dim=1,
        ).float()
        means = self.accelerator.gather_for_metrics(per_pair).mean(dim=0).tolist()
        names = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")
        for name, value in zip((*names, "logps/chosen", "logps/rejected"), means):
            self.log_metric(name, value, mode)
        chosen_sum, chosen_count, rejected_sum, rejected_count = (
            self.accelerator.gather(scores.logit_stats.reshape(1, 4)).sum(dim=0).tolist()
        )
        if chosen_count:
            self.log_metric("logits/chosen", chosen_sum / chosen_count, mode)
        if rejected_count:
            self.log_metric("logits/rejected", rejected_sum / rejected_count, mode)
        if self.args.rpo_alpha is not None or "sft" in self.loss_types:
            self.log_metric("nll_loss", self.accelerator.gather(scores.nll_loss.detach().reshape(1)).mean(), mode)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        loss = loss.detach()
        if prediction_loss_only:
            return loss, None, None
        # Predictions are the (chosen, rejected) implicit rewards; the label 0 names the chosen column.
        logits = torch.stack([outputs["chosen_rewards"], outputs["rejected_rewards"]], dim=1)
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        return loss, logits, labels

    def evaluation_loop(self, dataloader, *args: Any, **kwargs: Any):
        output = super().evaluation_loop(dataloader, *args, **kwargs)
        if self.args.generate_during_eval:
            self._log_generations(dataloader.dataset)
        return output

    @torch.no_grad()
    def _log_generations(self, dataset: Any) -> None:
        """Sample completions of the first evaluation prompts with the policy and the reference, and log them to
        Weights & Biases as the `game_log` table (prompt, policy, reference)."""
        import wandb

        if wandb.run is None or not self.accelerator.is_main_process or not hasattr(dataset, "__getitem__"):
            return
        count = min(len(dataset), self.args.per_device_eval_batch_size)
        prompts = [torch.tensor(dataset[i]["prompt_ids"]) for i in range(count)]
        inputs = {
            "input_ids": pad(prompts, self.pad_token_id, padding_side="left").to(self.accelerator.device),
            "attention_mask": pad([torch.ones_like(p) for p in prompts], 0, padding_side="left").to(
                self.accelerator.device
            ),
        }
        max_new_tokens = self.args.max_completion_length or 64
        policy = self._generate(self.accelerator.unwrap_model(self.model), inputs, max_new_tokens)
        has_reference = self.ref_model is not None or is_peft_model(self.accelerator.unwrap_model(self.model))
        reference = [""] * count
        if has_reference and not self.args.reference_free:
            with self._reference_model() as model:
                reference = self._generate(model, inputs, max_new_tokens)
        tokenizer = get_tokenizer(self.processing_class)
        rows = [[tokenizer.decode(p, skip_special_tokens=True), c, r] for p, c, r in zip(prompts, policy, reference)]
        wandb.log({"game_log": wandb.Table(columns=["Prompt", "Policy", "Ref Model"], rows=rows)})

    def _generate(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], max_new_tokens: int) -> list[str]:
        model = getattr(model, "module", model)
        output = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=True, pad_token_id=self.pad_token_id
        )
        completions = output[:, inputs["input_ids"].shape[1] :]
        return get_tokenizer(self.processing_class).batch_decode(completions, skip_special_tokens=True)

    # ---------------------------------------------------------------------------- precomputed reference log-probs
    def _with_ref_log_probs(self, dataset: Any, batch_size: int, name: str) -> Any:
        """`dataset` with the `ref_chosen_logps` / `ref_rejected_logps` columns, computed once (in order, across
        processes) if missing."""
        if dataset is None or (isinstance(dataset, Dataset) and all(c in dataset.column_names for c in _REF_COLUMNS)):
            return dataset
        if not isinstance(dataset, Dataset):
            raise ValueError(
                f"precompute_ref_log_probs=True stores reference log-probs as columns of the {name} dataset, which "
                f"needs a map-style datasets.Dataset (got {type(dataset).__name__}). Convert it, or set "
                "precompute_ref_log_probs=False."
            )
        loader = DataLoader(
            dataset.select_columns(list(PREFERENCE_TOKEN_COLUMNS)),
            batch_size=self.args.precompute_ref_batch_size or batch_size,
            collate_fn=self.data_collator,
            shuffle=False,
            num_workers=self.args.dataloader_num_workers,
        )
        loader = self.accelerator.prepare(loader)
        chosen, rejected = [], []
        for batch in loader:
            ref_chosen, ref_rejected = self.compute_ref_log_probs(batch)
            chosen.append(self.accelerator.gather_for_metrics(ref_chosen.float()))
            rejected.append(self.accelerator.gather_for_metrics(ref_rejected.float()))
        self.accelerator._dataloaders.remove(loader)
        dataset = dataset.add_column("ref_chosen_logps", torch.cat(chosen).cpu().tolist())
        return dataset.add_column("ref_rejected_logps", torch.cat(rejected).cpu().tolist())

    def _precompute_eval_datasets(self) -> None:
        size = self.args.per_device_eval_batch_size
        if isinstance(self.eval_dataset, dict):
            self.eval_dataset = {
                name: self._with_ref_log_probs(ds, size, f"eval ({name})") for name, ds in self.eval_dataset.items()
            }
        else:
            self.eval_dataset = self._with_ref_log_probs(self.eval_dataset, size, "eval")

    def train(self, *args: Any, **kwargs: Any):
        if self.args.precompute_ref_log_probs:
            # Before any checkpoint is loaded or step taken: without ref_model the initial policy is the reference.
            self.train_dataset = self._with_ref_log_probs(
                self.train_dataset, self.args.per_device_train_batch_size, "train"
            )
            self._precompute_eval_datasets()
            self._precomputed_before_training = True
        return super().train(*args, **kwargs)

    def get_eval_dataloader(self, eval_dataset: str | Dataset | None = None) -> DataLoader:
        if self.args.precompute_ref_log_probs:
            size = self.args.per_device_eval_batch_size
            if isinstance(eval_dataset, str):
                self.eval_dataset[eval_dataset] = self._with_ref_log_probs(
                    self.eval_dataset[eval_dataset], size, eval_dataset
                )
            elif eval_dataset is None or eval_dataset is self.eval_dataset:
                self._precompute_eval_datasets()  # stored, so that later evaluations reuse the columns
                eval_dataset = None if eval_dataset is None else self.eval_dataset
            else:
                eval_dataset = self._with_ref_log_probs(eval_dataset, size, "eval")
        return super().get_eval_dataloader(eval_dataset)
