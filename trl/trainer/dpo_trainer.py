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
from typing import Any

import torch
from datasets import Dataset, IterableDataset
from transformers import PreTrainedModel

from ..losses import (
    combine_losses,
    ld_dpo_logps,
    preference_loss,
    sequence_logps,
    wpo_pair_weights,
    wpo_sequence_weights,
)
from .base_trainer import LossCall, TrainerInputs
from .dpo_config import DPOConfig
from .input_checks import check_distinct_pairs
from .model_utils import (
    accepts_logits_to_keep,
)
from .paired_forward import (
    PairedScores,
    TokenLogps,
    completion_logps,
    log_paired_metrics,
    paired_scores,
)
from .paired_preference_trainer import PairedPreferenceTrainer
from .preference_data import (
    PREFERENCE_TOKEN_COLUMNS,
    count_empty_completions,
    prepare_on_main_process_first,
    prepare_preference_dataset,
)
from .reference import ReferenceModelMixin
from .utils import RunningMoments


_REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


class DPOTrainer(ReferenceModelMixin, PairedPreferenceTrainer):
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

    _config_class = DPOConfig
    _name = "DPO"
    _ref_columns = _REF_COLUMNS

    # ------------------------------------------------------------------------------------------------- setup
    def _validate(self, args: DPOConfig, inputs: TrainerInputs) -> None:
        super()._validate(args, inputs)
        if args.use_liger_loss:
            from ..import_utils import is_liger_kernel_available, require

            require(is_liger_kernel_available(), "use_liger_loss=True", "pip install liger-kernel")
            raise ValueError("use_liger_loss=True is not supported in this version of trl; set it to False.")

    def _setup_model(self, model: str | PreTrainedModel, args: DPOConfig, quantization_config: Any) -> PreTrainedModel:
        model = super()._setup_model(model, args, quantization_config)
        if args.use_logits_to_keep and not accepts_logits_to_keep(model):
            raise ValueError(
                f"use_logits_to_keep=True but {type(model).__name__}.forward has no `logits_to_keep` argument. Set "
                "use_logits_to_keep=False (full logits are computed and the completion positions selected)."
            )
        return model

    def _prepare_dataset(
        self, dataset: Dataset | IterableDataset, processing_class: Any, args: DPOConfig, name: str
    ) -> Dataset | IterableDataset:
        # The prompt keeps its end; `truncation_mode` is the collator's cut of rows longer than `max_length`.
        dataset = prepare_on_main_process_first(
            prepare_preference_dataset, dataset, processing_class, args, name, "DPOTrainer", tools=args.tools
        )
        check_distinct_pairs(dataset, name)
        empty = count_empty_completions(dataset, args.max_length, args.truncation_mode)
        if empty:
            # As in SFT: a pair with no completion token left has log-probs 0 and trains with zero gradient.
            raise ValueError(
                f"{empty} pair(s) of the {name} dataset have a chosen or rejected completion with no token left after "
                f"truncation (max_length={args.max_length}, max_prompt_length={args.max_prompt_length}); their "
                "log-probs are 0 and they teach nothing. Lower max_prompt_length, raise max_length, or filter out "
                "those pairs."
            )
        return dataset

    def _after_init(self, auxiliary_models: dict[str, Any]) -> None:
        super()._after_init(auxiliary_models)  # the reference model, placed for the accelerator
        self.loss_types = list(self.args.loss_type)
        self.loss_options = self.args.loss_options()
        self.running = RunningMoments(self.accelerator) if "bco_pair" in self.loss_types else None
        self._logits_to_keep_supported = accepts_logits_to_keep(self.accelerator.unwrap_model(self.model))
        unwrapped = self.accelerator.unwrap_model(self.model)
        attention = getattr(unwrapped.config, "_attn_implementation", None) or ""
        if self.args.padding_free and not attention.startswith("flash"):
            warnings.warn(
                f"padding_free=True with attn_implementation={attention!r}: this attention builds one mask over the "
                "whole flattened batch, which is slower than padding, and keeps the sequences apart only when the "
                "model derives its mask from `position_ids` (most transformers models do; GPT-OSS does not, so its "
                "sequences would attend to each other). Load the model with attn_implementation='flash_attention_2' "
                "(or 3), or set padding_free=False.",
                UserWarning,
                stacklevel=3,
            )

    def _loss_description(self) -> str:
        weights = self.args.loss_weights or [1.0] * len(self.loss_types)
        return " + ".join(f"{w:g}·{name}" for w, name in zip(weights, self.loss_types))

    def _derived_quantities(self) -> dict[str, Any]:
        rows = super()._derived_quantities()
        rows["padding-free forward"] = self.args.padding_free
        return rows

    # ------------------------------------------------------------------------------------------ forward pass
    def _completion_logps(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> TokenLogps:
        """Per-token log-probs `[R, T]` of the R = 2B rows, the completion mask, the logits at completion positions
        `[N, V]` and the model outputs, from one forward pass (see `trl.trainer.paired_forward.completion_logps`)."""
        return completion_logps(
            model, batch, padding_free=self.args.padding_free, logits_to_keep=self._logits_to_keep_supported
        )

    def _sequence_logps(self, logps_R_T: torch.Tensor, keep_R_T: torch.Tensor) -> torch.Tensor:
        """Sequence log-probs `[R]`: the sum over completion tokens, or LD-DPO's when `ld_alpha` is set."""
        if self.args.ld_alpha is None:
            return sequence_logps(logps_R_T, keep_R_T, "sum")
        lengths = keep_R_T.sum(dim=-1)
        half = lengths.shape[0] // 2
        shared_length = torch.minimum(lengths[:half], lengths[half:]).repeat(2)
        return ld_dpo_logps(logps_R_T, keep_R_T, shared_length, self.args.ld_alpha)

    def _policy_scores(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> PairedScores:
        token = self._completion_logps(model, batch)
        scores = paired_scores(token, self._sequence_logps(token.logps, token.mask))
        if self.args.use_weighting:
            half = token.mask.shape[0] // 2
            logits_R_T_V = token.logits.new_zeros(*token.mask.shape, token.logits.shape[-1])
            logits_R_T_V = logits_R_T_V.masked_scatter(token.mask.unsqueeze(-1), token.logits.detach())
            weights_R = wpo_sequence_weights(token.logps.detach(), logits_R_T_V, token.mask)
            scores.pair_weights = wpo_pair_weights(weights_R[:half], weights_R[half:])
        return scores

    @torch.no_grad()
    def compute_ref_log_probs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference sequence log-probs `([B], [B])` of the chosen and rejected completions of a collated batch.

        Args:
            batch (`dict[str, torch.Tensor]`):
                Output of [`DataCollatorForPreference`] (`input_ids`, `attention_mask`, `completion_mask`).
        """
        with self._reference_model() as reference:
            token = self._completion_logps(reference, batch)
        logps_R = self._sequence_logps(token.logps, token.mask)
        half = logps_R.shape[0] // 2
        return logps_R[:half], logps_R[half:]

    def _reference_logps(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if "ref_chosen_logps" in batch:
            return batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        if self.args.reference_free:
            return None, None
        return self.compute_ref_log_probs(batch)

    # --------------------------------------------------------------------------------------------------- loss
    def _loss_and_outputs(self, model: torch.nn.Module, inputs: dict, call: LossCall) -> tuple[torch.Tensor, Any]:
        ref_chosen_logps, ref_rejected_logps = self._reference_logps(inputs)
        scores = self._policy_scores(model, inputs)
        loss = self._preference_loss(scores, ref_chosen_logps, ref_rejected_logps, call.mode)
        if self.args.rpo_alpha is not None:
            loss = loss + self.args.rpo_alpha * scores.nll_loss
        loss = loss + self.router_aux_loss(scores.aux_loss, call.mode)

        beta = self.args.beta
        chosen_rewards = beta * (scores.chosen_logps - (0 if ref_chosen_logps is None else ref_chosen_logps)).detach()
        rejected_rewards = (
            beta * (scores.rejected_logps - (0 if ref_rejected_logps is None else ref_rejected_logps)).detach()
        )
        self._log_pair_metrics(scores, chosen_rewards, rejected_rewards, call.mode)
        return loss, {"chosen_rewards": chosen_rewards, "rejected_rewards": rejected_rewards}

    def _preference_loss(
        self,
        scores: PairedScores,
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

    def _log_pair_metrics(
        self, scores: PairedScores, chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, mode: str
    ) -> None:
        log_nll = self.args.rpo_alpha is not None or "sft" in self.loss_types
        log_paired_metrics(self, scores, (chosen_rewards, rejected_rewards), mode, log_nll=log_nll)

    # ---------------------------------------------------------------------------- precomputed reference log-probs
    def _add_ref_columns(self, dataset: Dataset, batch_size: int) -> Dataset:
        """`dataset` with the `ref_chosen_logps` / `ref_rejected_logps` columns."""
        rows = dataset.select_columns(list(PREFERENCE_TOKEN_COLUMNS))
        chosen, rejected = self._compute_reference_columns(rows, batch_size, self.compute_ref_log_probs)
        return dataset.add_column("ref_chosen_logps", chosen).add_column("ref_rejected_logps", rejected)
