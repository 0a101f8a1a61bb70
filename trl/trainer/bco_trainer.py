"""Binary Classifier Optimization (arXiv 2404.04656) on unpaired preference data.

Objective, per example (x, y) labelled desirable or undesirable: with the implicit reward ρ = β·(log π(y|x) −
log π_ref(y|x)) (sums over the completion tokens) and δ the running mean of every reward seen in training,

    desirable:    −log σ(ρ − δ)        undesirable:    −w(x) · log σ(−(ρ − δ))

averaged over the examples of the micro-batch (`trl.losses.bco_loss`). δ is updated with the rewards of each training
batch of every process before the loss uses it (as in the reference), is not updated during evaluation, and is saved
in every checkpoint's extra state (`BaseTrainer.extra_state_dict()`) and restored on resume.

Underlying distribution matching (UDM), active when the trainer gets an `embedding_func` and an
`embedding_tokenizer`: a logistic-regression classifier (scikit-learn, `class_weight="balanced"`) learns to tell the
prompts of desirable examples from those of undesirable ones on `prompt_sample_size` embedded prompts of each side;
each undesirable example is then weighted by w(x) = clamp(p/(1 − p), `min_density_ratio`, `max_density_ratio`) with
p = P(desirable | x) (`trl.losses.bco_udm_weights`); w = 1 otherwise.

- The prompts are sampled with the config's `seed` and the weights computed once, at construction, into a
  `udm_weight` column; a resumed run therefore gets the same classifier (the reference skips UDM when resuming).
- The embedded text is the decoded prompt (chat template applied), tokenised with `embedding_tokenizer`.
- Reference handling is shared with DPO; metrics as in KTO plus `delta`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset, IterableDataset
from transformers import PreTrainedModel, TrainingArguments

from ..import_utils import is_sklearn_available, require
from ..losses import bco_loss, bco_udm_weights
from .bco_config import BCOConfig
from .data_preparation import prepare_train_and_eval
from .model_utils import get_tokenizer
from .unpaired_forward import UnpairedLogps
from .unpaired_preference_trainer import UnpairedPreferenceTrainer
from .utils import RunningMoments


@dataclass
class _WithUDMWeights:
    """Collator wrapper that passes each example's `udm_weight` on as a `udm_weights` tensor."""

    collator: Callable

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(examples)
        if "udm_weight" in examples[0]:
            batch["udm_weights"] = torch.tensor([float(example["udm_weight"]) for example in examples])
        return batch


class BCOTrainer(UnpairedPreferenceTrainer):
    """Trainer for Binary Classifier Optimization, with optional underlying distribution matching.

    Args:
        model (`str`, `PreTrainedModel` or `PeftModel`):
            Model id / local path, or an instantiated causal language model.
        ref_model (`str`, `PreTrainedModel` or `None`, *optional*, defaults to `None`):
            Reference model. `None` uses a frozen copy of the initial model, or, under PEFT, the model with its
            adapters disabled (no copy).
        args (`BCOConfig`, `TrainingArguments` or `None`, *optional*, defaults to `None`):
            Training configuration. `None` uses `BCOConfig(output_dir="<model>-BCO")`.
        train_dataset (`Dataset` or `IterableDataset`):
            Unpaired preference data (`prompt`, `completion`, `label`) or paired preference data (unpaired
            automatically), standard or conversational, or pre-tokenised.
        eval_dataset (`Dataset`, `IterableDataset`, `dict[str, Dataset]` or `None`, *optional*, defaults to `None`):
            Evaluation data in the same formats.
        processing_class (`PreTrainedTokenizerBase` or `None`, *optional*, defaults to `None`):
            Defaults to the tokenizer of `model`.
        data_collator (`Callable` or `None`, *optional*, defaults to `None`):
            Defaults to [`DataCollatorForUnpairedPreference`] without KL rows.
        model_init (`Callable` or `None`, *optional*, defaults to `None`):
            Not supported (raises); pass `model`.
        callbacks, optimizers, preprocess_logits_for_metrics:
            As in [`~transformers.Trainer`].
        peft_config (`PeftConfig` or `None`, *optional*, defaults to `None`):
            Adapter configuration; the model is wrapped with it.
        compute_metrics (`Callable` or `None`, *optional*, defaults to `None`):
            Receives the implicit rewards `[N]` as predictions and the desirability labels (1/0) as labels.
        model_adapter_name (`str` or `None`, *optional*, defaults to `None`):
            PEFT adapter to train.
        ref_adapter_name (`str` or `None`, *optional*, defaults to `None`):
            PEFT adapter used as reference; `None` disables the adapters.
        embedding_func (`Callable` or `None`, *optional*, defaults to `None`):
            UDM: `embedding_func(input_ids=..., attention_mask=...) -> Tensor[B, D]`, prompt embeddings.
        embedding_tokenizer (`PreTrainedTokenizerBase` or `None`, *optional*, defaults to `None`):
            UDM: the tokenizer of the embedding model.
        quantization_config (`BitsAndBytesConfig` or `None`, *optional*, defaults to `None`):
            Keyword-only; used when `model` is a string.
    """

    _name = "BCO"
    _config_class = BCOConfig
    _extra_columns = ("udm_weight",)

    def __init__(
        self,
        model: str | PreTrainedModel | None = None,
        ref_model: str | PreTrainedModel | None = None,
        args: BCOConfig | TrainingArguments | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Dataset | IterableDataset | dict[str, Dataset] | None = None,
        processing_class: Any = None,
        data_collator: Callable | None = None,
        model_init: Callable | None = None,
        callbacks: list | None = None,
        optimizers: tuple = (None, None),
        preprocess_logits_for_metrics: Callable | None = None,
        peft_config: Any = None,
        compute_metrics: Callable | None = None,
        model_adapter_name: str | None = None,
        ref_adapter_name: str | None = None,
        embedding_func: Callable | None = None,
        embedding_tokenizer: Any = None,
        *,
        quantization_config: Any = None,
    ):
        if model is None:
            raise ValueError("BCOTrainer needs a model (an id, a path or a causal language model).")
        if (embedding_func is None) != (embedding_tokenizer is None):
            raise ValueError(
                "Underlying distribution matching needs both embedding_func and embedding_tokenizer; pass both, or "
                "neither to train without it."
            )
        if embedding_func is not None:
            require(
                is_sklearn_available(),
                "BCO's underlying distribution matching (embedding_func)",
                "pip install trl[scikit]",
            )
        super().__init__(
            model, ref_model, args, data_collator, train_dataset, eval_dataset, processing_class, compute_metrics,
            callbacks, optimizers, quantization_config, peft_config, model_init=model_init,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics, model_adapter_name=model_adapter_name,
            ref_adapter_name=ref_adapter_name,
        )  # fmt: skip
        self.running = RunningMoments(self.accelerator)
        self.embedding_func, self.embedding_tokenizer = embedding_func, embedding_tokenizer
        if embedding_func is not None:
            self._setup_udm()

    # ------------------------------------------------------------------------------------------------- loss
    def _unpaired_loss(self, logps: UnpairedLogps, mode: str) -> torch.Tensor:
        if mode == "train":
            self.running.update(self.args.beta * (logps.policy - logps.reference).detach())
        rejected_weights = None if logps.weights is None else logps.by_label(logps.weights)[1]
        output = bco_loss(
            *logps.by_label(logps.policy),
            *logps.by_label(logps.reference),
            beta=self.args.beta,
            delta=self.running.mean,
            rejected_weights=rejected_weights,
        )
        self.log_metric("delta", self.running.mean, mode)
        return output.losses.mean()

    def _derived_quantities(self) -> dict[str, Any]:
        rows = super()._derived_quantities()
        rows["underlying distribution matching"] = self.embedding_func is not None
        return rows

    # ------------------------------------------------------------------------ underlying distribution matching
    def _setup_udm(self) -> None:
        if not isinstance(self.train_dataset, Dataset):
            raise ValueError(
                "Underlying distribution matching samples prompts from the training data, which needs a map-style "
                "datasets.Dataset; convert the dataset, or drop embedding_func."
            )
        classifier = self._fit_prompt_classifier(self.train_dataset)
        self.train_dataset, self.eval_dataset = prepare_train_and_eval(
            self.train_dataset, self.eval_dataset, lambda dataset, name: self._with_udm_weights(dataset, classifier)
        )
        self.data_collator = _WithUDMWeights(self.data_collator)

    def _fit_prompt_classifier(self, dataset: Dataset) -> Any:
        """A logistic regression telling desirable from undesirable prompts, fitted on `prompt_sample_size`
        embedded prompts of each kind, sampled with the config's seed."""
        from sklearn.linear_model import LogisticRegression

        labels = dataset["label"]
        desirable = [i for i, label in enumerate(labels) if label]
        undesirable = [i for i, label in enumerate(labels) if not label]
        if not desirable or not undesirable:
            raise ValueError(
                "Underlying distribution matching compares the prompts of desirable and undesirable examples, but the "
                "training data has only one kind. Drop embedding_func, or add examples of the other kind."
            )
        rng = random.Random(self.args.seed)
        size = self.args.prompt_sample_size
        chosen = rng.sample(desirable, min(size, len(desirable)))
        rejected = rng.sample(undesirable, min(size, len(undesirable)))
        embeddings = self._embed_prompts(dataset, chosen + rejected)
        targets = [1] * len(chosen) + [0] * len(rejected)
        return LogisticRegression(class_weight="balanced").fit(embeddings.numpy(), targets)

    def _with_udm_weights(self, dataset: Dataset, classifier: Any) -> Dataset:
        """`dataset` with a `udm_weight` column: the clamped density ratio for undesirable rows, 1 for the others."""
        if not isinstance(dataset, Dataset):
            raise ValueError("Underlying distribution matching needs map-style datasets (datasets.Dataset).")
        undesirable = [i for i, label in enumerate(dataset["label"]) if not label]
        weights = [1.0] * len(dataset)
        if undesirable:
            probs = classifier.predict_proba(self._embed_prompts(dataset, undesirable).numpy())
            desirable_column = list(classifier.classes_).index(1)
            ratios = bco_udm_weights(
                torch.as_tensor(probs[:, desirable_column], dtype=torch.float64),
                self.args.min_density_ratio,
                self.args.max_density_ratio,
            )
            for index, ratio in zip(undesirable, ratios.tolist()):
                weights[index] = ratio
        if "udm_weight" in dataset.column_names:
            dataset = dataset.remove_columns("udm_weight")
        return dataset.add_column("udm_weight", weights)

    @torch.no_grad()
    def _embed_prompts(self, dataset: Dataset, indices: list[int]) -> torch.Tensor:
        """Embeddings `[len(indices), D]` (float32, CPU) of the prompts of those rows, each process embedding one
        contiguous share."""
        if not indices:
            return torch.zeros(0, 0)
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        share = math.ceil(len(indices) / world)
        mine = indices[rank * share : (rank + 1) * share]
        mine = mine + [indices[-1]] * (share - len(mine))  # equal shares for the gather; the extras are cut below
        texts = get_tokenizer(self.processing_class).batch_decode(
            list(dataset.select(mine)["prompt_ids"]), skip_special_tokens=True
        )
        step = self.args.per_device_eval_batch_size
        chunks = []
        for start in range(0, len(texts), step):
            encoded = self.embedding_tokenizer(
                texts[start : start + step], padding=True, truncation=True, return_tensors="pt"
            ).to(self.accelerator.device)
            embedded = self.embedding_func(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"])
            chunks.append(embedded.float())
        return self.accelerator.gather(torch.cat(chunks))[: len(indices)].cpu()
