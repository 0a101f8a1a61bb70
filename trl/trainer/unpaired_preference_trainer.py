"""The base of the unpaired preference trainers (KTO, BCO), on the [`BaseTrainer`] skeleton.

[`UnpairedPreferenceTrainer`] tokenises unpaired data (paired data is unpaired first) with
`trl.trainer.unpaired_data`, collates it with [`DataCollatorForUnpairedPreference`] (with KTO's mismatched KL rows
when the method needs them), takes its reference from [`~trl.trainer.reference.ReferenceModelMixin`], scores
completion rows with `trl.trainer.unpaired_forward.completion_scores` (the policy's completion and KL rows in one
pass, without padding where the model allows), and logs the sum/count metrics. A subclass sets
`_config_class`, says whether it needs the KL rows (`_uses_kl`) and implements `_unpaired_loss`.
"""

from __future__ import annotations

from typing import Any

import torch
from datasets import Dataset

from .base_trainer import BaseTrainer, LossCall, TrainerInputs
from .collators import DataCollatorForUnpairedPreference
from .model_utils import accepts_logits_to_keep
from .preference_data import PreferenceDatasetStep
from .reference import ReferenceModelMixin
from .unpaired_data import UNPAIRED_TOKEN_COLUMNS, count_empty_completions, kl_pairs_dataset, prepare_unpaired_dataset
from .unpaired_forward import (
    UnpairedLogps,
    UnpairedScores,
    _without_kl_rows,
    completion_scores,
    policy_scores,
    stack_completion_and_kl_rows,
)


_METRICS = ("rewards", "logps", "logits")
_SPLITS = ("chosen", "rejected")


class UnpairedPreferenceTrainer(PreferenceDatasetStep, ReferenceModelMixin, BaseTrainer):
    """Base of [`KTOTrainer`] and [`BCOTrainer`] (the loss is a mean over the examples of a micro-batch)."""

    loss_normalization = "examples"
    _predictions_from_loss = True
    _extra_columns: tuple[str, ...] = ()
    # The `_prepare_dataset` step (`PreferenceDatasetStep`); the collator keeps the start of rows over `max_length`.
    _prepare_preference_data = prepare_unpaired_dataset
    _count_empty_rows = count_empty_completions
    _data_rows = "example(s)"
    # Forward passes without padding where the model allows (`trl.trainer.packed_rows`); False: the padded path.
    _padding_free = True

    # ------------------------------------------------------------------------------------------------- setup
    @staticmethod
    def _uses_kl(args: Any) -> bool:
        return False

    def _validate(self, args: Any, inputs: TrainerInputs) -> None:
        if inputs.train_dataset is None:
            raise ValueError(f"{type(self).__name__} needs a train_dataset of unpaired (or paired) preference data.")
        if args.is_encoder_decoder:
            raise ValueError(
                f"{type(self).__name__} trains decoder-only causal language models; encoder-decoder models are not "
                "supported. Leave is_encoder_decoder unset (or False)."
            )
        super()._validate(args, inputs)

    def _resolve_options(self, model: Any, processing_class: Any, args: Any, inputs: TrainerInputs) -> None:
        self._needs_kl = self._uses_kl(args)
        self._ref_columns = ("ref_logps", "ref_kl_logps") if self._needs_kl else ("ref_logps",)

    def _default_collator(self, processing_class: Any, args: Any) -> DataCollatorForUnpairedPreference:
        return DataCollatorForUnpairedPreference(
            pad_token_id=self.pad_token_id,
            max_length=args.max_length,
            pad_to_multiple_of=getattr(args, "pad_to_multiple_of", None),
            calculate_kl=self._needs_kl,
        )

    def _after_init(self, auxiliary_models: dict[str, Any]) -> None:
        super()._after_init(auxiliary_models)  # the reference model, placed for the accelerator
        self._policy_keeps_logits = accepts_logits_to_keep(self.accelerator.unwrap_model(self.model))
        reference = self.ref_model if self.ref_model is not None else self.model
        self._ref_keeps_logits = accepts_logits_to_keep(getattr(reference, "module", reference))

    def _collator_columns(self) -> list[str]:
        return [*UNPAIRED_TOKEN_COLUMNS, "ref_logps", "ref_kl_logps", *self._extra_columns]

    def _derived_quantities(self) -> dict[str, Any]:
        rows = super()._derived_quantities()
        rows["global batch (examples/step)"] = rows.pop("global batch (sequences/step)")
        rows["KL rows per batch"] = self.args.per_device_train_batch_size if self._needs_kl else 0
        rows["beta"] = self.args.beta
        rows["reference"] = self._reference_description()
        return rows

    # ------------------------------------------------------------------------------------ reference log-probs
    @torch.no_grad()
    def compute_ref_log_probs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Reference sequence log-probs of the completion rows `[B]` and, when the batch has them, of the KL rows
        `[B]` (else `None`), in one forward pass.

        Args:
            batch (`dict[str, torch.Tensor]`):
                Output of [`DataCollatorForUnpairedPreference`].
        """
        with_kl = "kl_input_ids" in batch
        rows = stack_completion_and_kl_rows(batch, self.pad_token_id) if with_kl else batch
        with self._reference_model() as reference:
            logps = completion_scores(reference, rows, **self._forward_options(self._ref_keeps_logits)).logps
        size = batch["input_ids"].shape[0]
        return (logps[:size], logps[size:]) if with_kl else (logps, None)

    def _reference_logps(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if "ref_logps" in batch:
            return batch["ref_logps"], batch.get("ref_kl_logps")
        return self.compute_ref_log_probs(batch if self._needs_kl else _without_kl_rows(batch))

    def _add_ref_columns(self, dataset: Dataset, batch_size: int) -> Dataset:
        rows = dataset.select_columns(list(UNPAIRED_TOKEN_COLUMNS))

        def completion_logps(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor]:
            return (self.compute_ref_log_probs(_without_kl_rows(batch))[0],)

        if "ref_logps" not in dataset.column_names:
            (logps,) = self._compute_reference_columns(rows, batch_size, completion_logps)
            dataset = dataset.add_column("ref_logps", logps)
        if self._needs_kl and "ref_kl_logps" not in dataset.column_names:
            # Scored as ordinary rows: the pairs are those the collator forms in batches of `batch_size`.
            (logps,) = self._compute_reference_columns(
                kl_pairs_dataset(rows, batch_size), batch_size, completion_logps
            )
            dataset = dataset.add_column("ref_kl_logps", logps)
        return dataset

    # -------------------------------------------------------------------------------------------------- loss
    def _loss_and_outputs(self, model: torch.nn.Module, inputs: dict, call: LossCall) -> tuple[torch.Tensor, Any]:
        ref_logps, ref_kl_logps = self._reference_logps(inputs)
        options = self._forward_options(self._policy_keeps_logits)
        scores, kl_logps = policy_scores(model, inputs, self._needs_kl, **options)
        labels_B = inputs["labels"].bool()
        assert scores.logps.shape == ref_logps.shape == labels_B.shape, "log-probs and labels are misaligned"
        logps = UnpairedLogps(scores.logps, ref_logps, kl_logps, ref_kl_logps, labels_B, inputs.get("udm_weights"))
        loss = self._unpaired_loss(logps, call.mode)
        loss = loss + self.router_aux_loss(scores.aux_loss, call.mode)
        rewards_B = self.args.beta * (scores.logps - ref_logps).detach()
        self._log_unpaired_metrics(labels_B, rewards_B, scores, call.mode)
        return loss, {"rewards": rewards_B}

    def _forward_options(self, keep_logits: bool) -> dict[str, Any]:
        return {"keep_logits": keep_logits, "padding_free": self._padding_free, "pad_token_id": self.pad_token_id}

    def _unpaired_loss(self, logps: UnpairedLogps, mode: str) -> torch.Tensor:
        """The method's scalar loss of the micro-batch."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------------- metrics
    @torch.no_grad()
    def _log_unpaired_metrics(
        self, labels: torch.Tensor, rewards: torch.Tensor, scores: UnpairedScores, mode: str
    ) -> None:
        per_example = torch.stack([rewards.float(), scores.logps.detach().float(), scores.mean_logits, labels.float()])
        values_B_4 = self.accelerator.gather_for_metrics(per_example.T.contiguous())
        chosen_B = values_B_4[:, 3].bool()
        # Per kind: the sums of the three metrics and the count (last column), read in one transfer.
        sums = torch.stack([values_B_4[chosen_B].sum(dim=0), values_B_4[~chosen_B].sum(dim=0)])
        sums[1, 3] = (~chosen_B).sum()
        for split, row in zip(_SPLITS, sums.tolist()):
            for metric, value in zip(_METRICS, row):
                self.log_metric(f"{metric}/{split}_sum", value, mode)
            self.log_metric(f"count/{split}", row[3], mode)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        store = self._metrics[mode]
        means = {}
        for split in _SPLITS:
            # Sums and counts add up over the logging window (BaseTrainer would average them).
            count = sum(store.get(f"count/{split}", []))
            for name in [f"count/{split}"] + [f"{metric}/{split}_sum" for metric in _METRICS]:
                if name in store:
                    store[name] = [sum(store[name])]
            if count:
                for metric in _METRICS:
                    means[f"{metric}/{split}"] = store[f"{metric}/{split}_sum"][0] / count
        if "rewards/chosen" in means and "rewards/rejected" in means:
            means["rewards/margins"] = means["rewards/chosen"] - means["rewards/rejected"]
        for name, value in means.items():
            store[name] = [value]
        super().log(logs, start_time)

    def _eval_predictions(
        self, outputs: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Predictions are the implicit rewards β·(log π − log π_ref); labels the desirability (1 desirable).
        return outputs["rewards"], inputs["labels"].long()
