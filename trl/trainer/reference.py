"""Reference-model handling shared by the trainers that score completions against a frozen reference (DPO, KTO, BCO).

Where the reference log-probs come from:

- precomputed dataset columns (`precompute_ref_log_probs=True`): computed once, before training and before any
  checkpoint is loaded, with the reference below (without `ref_model`: the initial policy itself); no reference model
  stays in memory;
- an explicit `ref_model` (a model, or an id loaded with `ref_model_init_kwargs`), frozen;
- under PEFT, the policy itself with its adapters disabled (or `ref_adapter_name` active): never a copy;
- otherwise a frozen deep copy of the initial policy (`create_reference_model`).

`sync_ref_model` (TR-DPO) mixes the policy into a separate reference every `ref_model_sync_steps` steps.

A trainer mixes [`ReferenceModelMixin`] in before `BaseTrainer` and provides two things: the names of its reference
columns (`_ref_columns`) and `_add_ref_columns(dataset, batch_size)`, which scores a dataset with
`_compute_reference_columns` and adds the columns. Config fields a trainer lacks (`reference_free`,
`sync_ref_model`, `force_use_ref_model`, ...) count as off.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from datasets import Dataset
from torch.utils.data import DataLoader

from ..models.utils import create_reference_model, prepare_ref_model
from .callbacks import SyncRefModelCallback
from .data_preparation import map_datasets
from .model_utils import get_tokenizer, is_peft_model, prepare_auxiliary_model
from .utils import pad, use_adapter


def validate_reference_options(args: Any, model: Any, ref_model: Any, peft_config: Any) -> None:
    """Reject reference-model combinations that cannot work (and `generate_during_eval` without wandb, which logs
    reference generations), before any model is loaded.

    Args:
        args (`TrainingArguments`):
            The trainer config.
        model (`str`, `PreTrainedModel` or `PeftModel`):
            The policy as passed to the trainer.
        ref_model (`str`, `PreTrainedModel` or `None`):
            The reference as passed to the trainer.
        peft_config (`PeftConfig` or `None`):
            The adapter configuration passed to the trainer.
    """
    if ref_model is not None and not isinstance(ref_model, str) and ref_model is model:
        raise ValueError(
            "`model` and `ref_model` are the same object, so the reference would move with every update. Pass "
            "ref_model=None (a frozen copy is made, or the adapters are disabled under PEFT), or a separate model."
        )
    if ref_model is not None and not isinstance(ref_model, str) and getattr(args, "ref_model_init_kwargs", None):
        raise ValueError("ref_model_init_kwargs only applies when ref_model is a string; the ref_model is loaded.")
    if ref_model is not None and getattr(args, "reference_free", False):
        raise ValueError("reference_free=True uses no reference model, but a ref_model was passed: drop one.")
    peft = peft_config is not None or is_peft_model(model)
    if peft and ref_model is not None and not getattr(args, "force_use_ref_model", False):
        hint = (
            ", or set force_use_ref_model=True to use the explicit reference anyway"
            if hasattr(args, "force_use_ref_model")
            else ""
        )
        raise ValueError(
            "You passed a ref_model together with a PEFT model. The reference of a PEFT model is its base with "
            f"the adapters disabled, which needs no second model: drop ref_model{hint}."
        )
    if peft and getattr(args, "sync_ref_model", False):
        raise ValueError(
            "sync_ref_model=True (TR-DPO) mixes the policy weights into a separate reference model, which a PEFT "
            "model does not have. Set sync_ref_model=False, or train without peft_config."
        )
    if getattr(args, "generate_during_eval", False):
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise ValueError("generate_during_eval=True logs a table to Weights & Biases: `pip install wandb`.")


class ReferenceModelMixin:
    """Reference model, reference log-prob precomputation and policy/reference generation logging.

    Attributes set by the trainer: `_ref_columns` (`tuple[str, ...]`), the dataset columns holding precomputed
    reference log-probs, and `_explicit_ref_model` (`bool`), whether the user passed a `ref_model`.
    """

    _ref_columns: tuple[str, ...] = ()

    def __init__(
        self,
        model: Any,
        ref_model: Any = None,
        args: Any = None,
        data_collator: Callable | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        compute_metrics: Callable | None = None,
        callbacks: list | None = None,
        optimizers: tuple = (None, None),
        quantization_config: Any = None,
        peft_config: Any = None,
        *,
        optimizer_cls_and_kwargs: tuple | None = None,
        preprocess_logits_for_metrics: Callable | None = None,
        model_init: Callable | None = None,
        model_adapter_name: str | None = None,
        ref_adapter_name: str | None = None,
    ):
        # The signature of the reference's DPO and KTO trainers (`model, ref_model, args, ...`), then the 0.x and
        # `Trainer` extras as keywords. The adapter names override the config's (KTO's 0.x arguments).
        self._adapters = (model_adapter_name, ref_adapter_name)
        super().__init__(
            model, args, data_collator, train_dataset, eval_dataset, processing_class, compute_metrics, callbacks,
            optimizers, optimizer_cls_and_kwargs, preprocess_logits_for_metrics, quantization_config, peft_config,
            ref_model=ref_model, model_init=model_init,
        )  # fmt: skip

    # ---------------------------------------------------------------------------------------------- setup
    # The mixin's part of the `BaseTrainer` skeleton: checks before loading, the reference as an auxiliary model,
    # and its placement once the accelerator exists.
    def _validate(self, args: Any, inputs: Any) -> None:
        if inputs.model_init is not None:
            raise ValueError(f"{type(self).__name__} does not support model_init; pass the model (or its id).")
        super()._validate(args, inputs)
        validate_reference_options(args, inputs.model, inputs.ref_model, inputs.peft_config)

    def _setup_auxiliary_models(self, model: Any, args: Any, inputs: Any) -> dict[str, Any]:
        self._explicit_ref_model = inputs.ref_model is not None
        return {
            **super()._setup_auxiliary_models(model, args, inputs),
            "ref_model": self._setup_ref_model(model, inputs.ref_model, args),
        }

    def _after_init(self, auxiliary_models: dict[str, Any]) -> None:
        super()._after_init(auxiliary_models)
        self._setup_reference(auxiliary_models.get("ref_model"), *self._adapter_names())

    def _adapter_names(self) -> tuple[str | None, str | None]:
        """The PEFT adapter to train and the one used as reference (`None`: adapters disabled): the trainer's
        arguments, else the config's."""
        passed = getattr(self, "_adapters", (None, None))
        configured = getattr(self.args, "model_adapter_name", None), getattr(self.args, "ref_adapter_name", None)
        return tuple(mine if mine is not None else theirs for mine, theirs in zip(passed, configured))

    @staticmethod
    def _setup_ref_model(model: Any, ref_model: Any, args: Any) -> Any:
        """The separate reference model (frozen, eval mode, dropout off), or `None` when the policy itself provides
        the reference log-probs (reference-free, PEFT with adapters disabled, or the untrained policy during
        precomputation)."""
        if getattr(args, "reference_free", False):
            return None
        if ref_model is not None:
            return prepare_auxiliary_model(ref_model, args, getattr(args, "ref_model_init_kwargs", None) or None)
        if is_peft_model(model) or args.precompute_ref_log_probs:
            return None
        return prepare_auxiliary_model(create_reference_model(model), args)

    def _setup_reference(
        self, ref_model: Any, model_adapter_name: str | None = None, ref_adapter_name: str | None = None
    ) -> None:
        """After `Trainer.__init__`: place the reference for the accelerator, pick the PEFT adapters, and register
        the TR-DPO callback."""
        self._precomputed_before_training = False
        self._ref_adapter_name = ref_adapter_name
        self.ref_model = prepare_ref_model(ref_model, self.accelerator) if ref_model is not None else None
        unwrapped = self.accelerator.unwrap_model(self.model)
        if model_adapter_name is not None and is_peft_model(unwrapped):
            unwrapped.set_adapter(model_adapter_name)
        if getattr(self.args, "sync_ref_model", False):
            if self.ref_model is None:
                raise ValueError("sync_ref_model=True needs a reference model to update; none is in use.")
            self.add_callback(SyncRefModelCallback(ref_model=self.ref_model, accelerator=self.accelerator))

    def _reference_description(self) -> str:
        if getattr(self.args, "reference_free", False):
            return "none (reference-free)"
        source = "explicit model" if self._explicit_ref_model else "frozen initial policy"
        if is_peft_model(self.accelerator.unwrap_model(self.model)) and self.ref_model is None:
            name = self._ref_adapter_name
            source = f"adapter {name!r}" if name else "base model (adapters disabled)"
        return f"{source}, precomputed" if self.args.precompute_ref_log_probs else source

    # ------------------------------------------------------------------------------------------ the model
    @contextmanager
    def _reference_model(self) -> Iterator[torch.nn.Module]:
        """The model to run for reference log-probs, in eval mode inside the block: the reference model, the PEFT
        model with its adapters switched, or (precomputation without reference model) the policy before any
        training step."""
        if self.ref_model is not None:
            reference = self.ref_model
            with _eval_mode(reference):
                yield reference
            return
        unwrapped = self.accelerator.unwrap_model(self.model)
        if is_peft_model(unwrapped):
            with use_adapter(unwrapped, self._ref_adapter_name), _eval_mode(unwrapped):
                yield unwrapped
            return
        if self.state.global_step > 0 or self._precomputed_before_training:
            raise ValueError(
                "Reference log-probs are needed for a dataset that was not precomputed before training, and without "
                "a ref_model the reference was the initial policy, which has been trained since. Pass the evaluation "
                "dataset to the trainer at construction (it is precomputed with the training data), or pass ref_model."
            )
        with _eval_mode(unwrapped):
            yield unwrapped

    # --------------------------------------------------------------------- precomputed reference log-probs
    def _add_ref_columns(self, dataset: Dataset, batch_size: int) -> Dataset:
        """`dataset` with the `_ref_columns` added; each trainer implements it with `_compute_reference_columns`."""
        raise NotImplementedError

    @torch.no_grad()
    def _compute_reference_columns(
        self,
        dataset: Dataset,
        batch_size: int,
        score: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, ...]],
    ) -> list[list[float]]:
        """Run `score` (one `[B]` tensor per column) over `dataset` in order, split across processes, and return one
        list of floats per column, in dataset order.

        Args:
            dataset (`Dataset`):
                The rows to score (only the columns the collator needs).
            batch_size (`int`):
                Per-device batch size, unless `precompute_ref_batch_size` is set.
            score (`Callable`):
                Maps a collated batch to a tuple of `[B]` tensors.
        """
        loader = DataLoader(
            dataset,
            batch_size=getattr(self.args, "precompute_ref_batch_size", None) or batch_size,
            collate_fn=self.data_collator,
            shuffle=False,
            num_workers=self.args.dataloader_num_workers,
        )
        loader = self.accelerator.prepare(loader)
        columns: list[list[torch.Tensor]] | None = None
        for batch in loader:
            values = [self.accelerator.gather_for_metrics(value.float()) for value in score(batch)]
            columns = columns or [[] for _ in values]
            for column, value in zip(columns, values):
                column.append(value)
        self.accelerator._dataloaders.remove(loader)
        return [torch.cat(column).cpu().tolist() for column in columns or []]

    def _with_ref_log_probs(self, dataset: Any, batch_size: int, name: str) -> Any:
        """`dataset` with its reference log-prob columns, computed once if missing."""
        if dataset is None or (
            isinstance(dataset, Dataset) and all(c in dataset.column_names for c in self._ref_columns)
        ):
            return dataset
        if not isinstance(dataset, Dataset):
            raise ValueError(
                f"precompute_ref_log_probs=True stores reference log-probs as columns of the {name} dataset, which "
                f"needs a map-style datasets.Dataset (got {type(dataset).__name__}). Convert it, or set "
                "precompute_ref_log_probs=False."
            )
        return self._add_ref_columns(dataset, batch_size)

    def _precompute_eval_datasets(self) -> None:
        size = self.args.per_device_eval_batch_size
        self.eval_dataset = map_datasets(
            self.eval_dataset, lambda dataset, name: self._with_ref_log_probs(dataset, size, name), "eval"
        )

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

    # ------------------------------------------------------------------------ generations at evaluation
    def evaluation_loop(self, dataloader, *args: Any, **kwargs: Any):
        output = super().evaluation_loop(dataloader, *args, **kwargs)
        if getattr(self.args, "generate_during_eval", False):
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
        if has_reference and not getattr(self.args, "reference_free", False):
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


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Run `model` in eval mode inside the block and restore its mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
