"""Kahneman-Tversky Optimization (arXiv 2402.01306) on unpaired preference data.

Objective, per example (x, y) labelled desirable or undesirable: with r = log π(y|x) − log π_ref(y|x) (sums over the
completion tokens) and the reference point z = max(0, KL),

    desirable:    w_d · (1 − σ(β(r − z)))        undesirable:    w_u · (1 − σ(β(z − r)))

averaged over the examples of the micro-batch (`loss_type="kto"`; the formulas are `trl.losses.kto_loss`). KL is
estimated on mismatched pairs (x_i, y_{i+1}) of the same batch, mean(log π − log π_ref), detached and averaged over
processes before the clamp. `loss_type="apo_zero_unpaired"` (arXiv 2408.06266) drops z: desirable w_d·(1 − σ(βr)),
undesirable w_u·σ(βr).

- Paired data is unpaired first (chosen → desirable, rejected → undesirable); the training data keeps its order and
  is read sequentially by default, so batches (and their precomputed KL pairs) follow the dataset. Shuffle the data
  beforehand, or set `train_sampling_strategy="random"`, for batches that mix both kinds.
- The policy scores the completions, then the KL pairs in a no-grad pass; the reference scores both in one pass;
  all without padding where the model allows (`trl.trainer.packed_rows`).
- Reference handling (explicit, frozen copy, PEFT adapters disabled, precomputed, TR-DPO sync) is shared with DPO.
- Metrics: `rewards/*`, `logps/*`, `logits/*` of desirable (`chosen`) and undesirable (`rejected`) examples from
  the `*_sum` / `count/*` sums, `rewards/margins`, and `kl`.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from datasets import Dataset, IterableDataset

from ..losses import apo_zero_unpaired_loss, kto_kl_estimate, kto_loss
from .base_trainer import TrainerInputs
from .kto_config import KTOConfig
from .unpaired_data import label_counts
from .unpaired_forward import UnpairedLogps
from .unpaired_preference_trainer import UnpairedPreferenceTrainer


class KTOTrainer(UnpairedPreferenceTrainer):
    """Trainer for Kahneman-Tversky Optimization (see `loss_type`).

    Args:
        model, ref_model:
            The causal language model to train (an id, a local path or a loaded model) and its reference, as in
            [`DPOTrainer`] (`None`: a frozen copy of the initial model, or under PEFT the model with its adapters
            disabled).
        args (`KTOConfig`, `TrainingArguments` or `None`, *optional*, defaults to `None`):
            `None` uses `KTOConfig(output_dir="<model>-KTO")`.
        data_collator (`Callable` or `None`, *optional*, defaults to `None`):
            Defaults to [`DataCollatorForUnpairedPreference`] (with KL rows for `loss_type="kto"`).
        train_dataset (`Dataset` or `IterableDataset`):
            Unpaired preference data (`prompt`, `completion`, `label`) or paired preference data (unpaired
            automatically), standard or conversational, or pre-tokenised (`prompt_ids`, `completion_ids`, `label`).
        eval_dataset (`Dataset`, `IterableDataset`, `dict[str, Dataset]` or `None`, *optional*, defaults to `None`):
            Evaluation data in the same formats; a dict evaluates each dataset under its name.
        processing_class (`PreTrainedTokenizerBase` or `None`, *optional*, defaults to `None`):
            Defaults to the tokenizer of `model`.
        compute_metrics (`Callable` or `None`, *optional*, defaults to `None`):
            Receives an `EvalPrediction` whose predictions are the implicit rewards `[N]` and whose labels are the
            desirability labels (1 desirable, 0 undesirable).
        callbacks, optimizers:
            As in [`~transformers.Trainer`].
        quantization_config (`BitsAndBytesConfig` or `None`, *optional*, defaults to `None`):
            Used when `model` is a string.
        peft_config (`PeftConfig` or `None`, *optional*, defaults to `None`):
            Adapter configuration; the model is wrapped with it.
        model_init, preprocess_logits_for_metrics, model_adapter_name, ref_adapter_name (keyword-only):
            The 0.x arguments. `model_init` is not supported (raises); `model_adapter_name` is the PEFT adapter to
            train and `ref_adapter_name` the adapter used as reference (`None`: adapters disabled).
    """

    _name = "KTO"
    _config_class = KTOConfig

    @staticmethod
    def _uses_kl(args: KTOConfig) -> bool:
        return args.loss_type == "kto"

    def _validate(self, args: KTOConfig, inputs: TrainerInputs) -> None:
        super()._validate(args, inputs)
        if args.use_liger_loss:
            from ..import_utils import is_liger_kernel_available, require

            require(is_liger_kernel_available(), "use_liger_loss=True", "pip install liger-kernel")
            raise ValueError("use_liger_loss=True is not supported in this version of trl; set it to False.")

    def _prepare_dataset(
        self, dataset: Dataset | IterableDataset, processing_class: Any, args: KTOConfig, name: str
    ) -> Dataset | IterableDataset:
        dataset = super()._prepare_dataset(dataset, processing_class, args, name)
        # The rows keep their order (as in the reference): the KL pairs are built inside each batch by the collator,
        # so nothing needs moving, and `train_sampling_strategy="sequential"` reads the data as given.
        if name == "train" and isinstance(dataset, Dataset):
            warn_if_unbalanced(dataset, args.desirable_weight, args.undesirable_weight)
        return dataset

    def _derived_quantities(self) -> dict[str, Any]:
        rows = super()._derived_quantities()
        rows["loss"] = self.args.loss_type
        rows["weights (desirable, undesirable)"] = (self.args.desirable_weight, self.args.undesirable_weight)
        return rows

    def _unpaired_loss(self, logps: UnpairedLogps, mode: str) -> torch.Tensor:
        args = self.args
        options = {
            "beta": args.beta,
            "desirable_weight": args.desirable_weight,
            "undesirable_weight": args.undesirable_weight,
        }
        policy, reference = logps.by_label(logps.policy), logps.by_label(logps.reference)
        if args.loss_type == "apo_zero_unpaired":
            return apo_zero_unpaired_loss(*policy, *reference, **options).losses.mean()
        # The reference point is one number for the whole global batch: the mean of the processes' estimates.
        local_kl = kto_kl_estimate(logps.policy_kl, logps.reference_kl)
        kl = self.accelerator.gather(local_kl.reshape(1)).mean()
        output = kto_loss(*policy, None, *reference, None, kl=kl, **options)
        self.log_metric("kl", output.kl, mode)
        return output.losses.mean()


def warn_if_unbalanced(dataset: Dataset, desirable_weight: float, undesirable_weight: float) -> None:
    """Warn when `desirable_weight · #desirable : undesirable_weight · #undesirable` is outside [1:1, 4:3], the range
    the KTO paper recommends, and name weights that bring it back.

    Args:
        dataset (`Dataset`):
            Prepared training data (with `label`).
        desirable_weight (`float`):
            The config's `desirable_weight`.
        undesirable_weight (`float`):
            The config's `undesirable_weight`.
    """
    desirable, undesirable = label_counts(dataset)
    if desirable == 0 or undesirable == 0:
        return  # training on one kind only is allowed; there is no ratio to balance
    ratio = desirable_weight * desirable / (undesirable_weight * undesirable)
    if 1.0 <= ratio <= 4 / 3:
        return
    if ratio < 1:
        fix = f"desirable_weight={undesirable_weight * undesirable / desirable:.3g} (or more, up to 4/3 of that)"
    else:
        fix = f"undesirable_weight={desirable_weight * desirable / undesirable / (4 / 3):.3g} (or up to 4/3 of that)"
    warnings.warn(
        f"The training data has {desirable} desirable and {undesirable} undesirable examples, so desirable_weight · "
        f"#desirable : undesirable_weight · #undesirable = {ratio:.3g}, outside the range [1, 4/3] recommended for "
        f"KTO (weights {desirable_weight}, {undesirable_weight}). Set e.g. {fix}.",
        UserWarning,
        stacklevel=5,
    )
