"""The online trainers' base (GRPO, RLOO; later Online DPO, Nash-MD, XPO, GKD, PPO): what ties a [`Rollout`] to
`transformers.Trainer`.

The rollout itself (render and tokenize prompts, generate, decode, score, log-probs, buffer, timing, resume state)
is [`~trl.trainer.rollout_engine.Rollout`], testable without a trainer. [`OnlineTrainer`] adds:

1. **Data.** [`RolloutSampler`] yields each prompt `num_generations` times in a row, and the whole generation
   batch `steps_per_generation × num_iterations` times, so every process receives its slice of the same prompt
   groups (seeded per epoch, so a resumed run replays it). One dataloader batch is one generation batch.
2. **Training step.** At the first micro-step of each generation batch the rollout produces a batch, the method
   adds its advantages ([`OnlineTrainer._compute_advantages`]: GRPO group-normalises, RLOO leaves one out) and
   the rollout buffers it; every micro-step trains on the next buffered micro-batch.
3. **Loss plumbing**: [`OnlineTrainer._completion_logps`] (per-token log-probs at the sampling temperature), the
   normalisation that makes gradient accumulation and several processes equal one large batch, the MoE router
   term, entropy and clip metrics. A method implements `compute_loss` with them.
4. **Logging**: rollout metrics, `timing/{generate,score,reference,train,weight_sync}` per optimizer step, and the
   completions table, recorded here and written by [`~trl.trainer.callbacks.LogCompletionsCallback`].
5. **Checkpoints**: the rollout's `state_dict()` goes into `extra_state_dict()["rollout"]`, so a resumed run
   continues exactly.

The building blocks live in `trl.trainer.rollout_utils` (timing, sampling, prompts, buffer) and
`trl.trainer.reward_scoring` (reward functions and models).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from transformers import PreTrainedModel

from ..agent.agent_rollout import build_agent, check_agent_features, with_environment_rewards
from ..data_utils import get_dataset_column_names
from ..kernels import token_logps
from ..models.utils import create_reference_model, prepare_ref_model
from .base_trainer import BaseTrainer, TrainerInputs
from .callbacks import SyncRefModelCallback
from .completions_callback import LogCompletionsCallback, record_completions
from .data_preparation import to_map_style
from .model_utils import accepts_logits_to_keep, is_peft_model, prepare_auxiliary_model
from .reward_scoring import RewardFunc, RewardScorer
from .rollout_engine import SEQUENCE_KEYS, Rollout, RolloutBatch
from .rollout_utils import RolloutSampler, apply_deprecated_kwargs, policy_inputs, used_columns
from .streaming import check_streaming_dataset, training_rows
from .utils import identity, use_adapter


if TYPE_CHECKING:
    from datasets import Dataset, IterableDataset
    from peft import PeftConfig
    from transformers import BitsAndBytesConfig, PreTrainedTokenizerBase, TrainerCallback, TrainingArguments

__all__ = ["OnlineTrainer", "RewardFunc", "Rollout", "RolloutBatch"]


def _rollout_view(name: str, doc: str) -> property:
    """A read-only trainer property for the attribute `name` of its [`Rollout`]."""
    return property(lambda self: getattr(self.rollout, name), doc=doc)


# ------------------------------------------------------------------------------------------------- trainer
class OnlineTrainer(BaseTrainer):
    """Base class of the online trainers: everything but the advantage and the loss.

    Its `__init__` has the reference's GRPO signature (RLOO's is its first part), shared by both, plus the
    keyword-only `ref_model` (an explicit reference: an id, a path or a model). A subclass sets `_name` (its
    model-card tags and paper follow from it, see `BaseTrainer`) and `_deprecated_init_kwargs` (trl <= 0.21 names),
    implements `_compute_advantages(rewards_B_F, rollout, mode)` (the global advantages `[B_global]`, logging its
    metrics) and `compute_loss`, and may override
    `_needs_old_logps(mode)`, `_wants_sampler_logps()`, `_extra_rollout_tensors(rollout, mode)` and
    `_running_state` (attributes saved in checkpoints).

    Args (those [`GRPOTrainer`] and [`RLOOTrainer`] document themselves: `model`, `reward_funcs`, `args`, the
    datasets; the rest):
        processing_class (`PreTrainedTokenizerBase` or `None`, *optional*, defaults to `None`):
            Defaults to the tokenizer of `model`.
        reward_processing_classes (`PreTrainedTokenizerBase`, `list` or `None`, *optional*, defaults to `None`):
            Tokenizers of the reward models, aligned with `reward_funcs`.
        callbacks, optimizers:
            As in [`~transformers.Trainer`].
        quantization_config (`BitsAndBytesConfig` or `None`, *optional*, defaults to `None`):
            Used when `model` is a string.
        peft_config (`PeftConfig` or `None`, *optional*, defaults to `None`):
            Adapter configuration; the reference is then the base model with adapters disabled.
        tools, rollout_func, environment_factory:
            Agent training (experimental): tools the model calls over several turns, one environment per rollout
            whose public methods are its tools, or a function that makes the rollouts. See `trl.agent` and
            docs/agent_training.md.
        ref_model (`str`, `PreTrainedModel` or `None`, keyword-only, *optional*, defaults to `None`):
            Beyond the reference API: the reference model of the KL term (an id, a path or a model; needs a
            reference, e.g. `beta != 0`). `None` makes a frozen copy of the policy (the base model with adapters
            disabled under PEFT).
        **deprecated_kwargs:
            The subclass's `_deprecated_init_kwargs` (trl <= 0.21 names); each warns. Any other keyword is a
            `TypeError`.

    The training batches it receives (`inputs` of `compute_loss`) hold, for `B` local rows: `prompt_ids`,
    `prompt_mask` `[B, P]` (left-padded), `completion_ids`, `completion_mask` `[B, C]` (right-padded; rows of
    truncated completions zeroed under `mask_truncated_completions`), `advantages` `[B]`, `num_items_in_batch` (the
    optimizer step's completion tokens on every process), and when computed `old_logps`, `ref_logps`,
    `sampler_logps` `[B, C]` and what `_extra_rollout_tensors` adds.
    """

    # Token-mean losses are divided by the optimizer step's token count (see `_scale_loss`): Trainer must neither
    # pass `num_items_in_batch` to the model nor divide by the accumulation steps again.
    loss_normalization = "step"
    # A trainer built only to evaluate needs no training data (get_train_dataloader says so when training starts).
    _requires_train_dataset = False
    # Rows kept together when the generation batch is shuffled into micro-batches (2: the pairs of pairwise losses).
    _buffer_group_size = 1

    # trl <= 0.21 keyword arguments a subclass still accepts: old name -> new name (`None`: ignored, with a warning).
    _deprecated_init_kwargs: dict[str, str | None] = {}

    def __init__(
        self,
        model: str | PreTrainedModel | None = None,
        reward_funcs: RewardFunc | list[RewardFunc] | None = None,
        args: TrainingArguments | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Dataset | IterableDataset | dict[str, Dataset | IterableDataset] | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        reward_processing_classes: PreTrainedTokenizerBase | list[PreTrainedTokenizerBase | None] | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[torch.optim.Optimizer | None, torch.optim.lr_scheduler.LambdaLR | None] = (None, None),
        quantization_config: BitsAndBytesConfig | None = None,
        peft_config: PeftConfig | None = None,
        tools: list[Any] | None = None,
        rollout_func: Any = None,
        environment_factory: Any = None,
        *,
        ref_model: str | PreTrainedModel | None = None,
        **deprecated_kwargs: Any,
    ):
        # The reference's GRPO / RLOO signature (RLOO's ends at `peft_config`); PPO and the online preference trainers
        # keep their own and call this with `ref_model`. The agent-training hooks are checked in `_validate`.
        given = {"args": args, "reward_funcs": reward_funcs, "model": model}
        apply_deprecated_kwargs(type(self).__name__, given, deprecated_kwargs, self._deprecated_init_kwargs)
        if given["model"] is None:
            raise ValueError(f"{type(self).__name__} needs a model (an id, a path or a PreTrainedModel).")
        self._reward_funcs, self._reward_processing_classes = given["reward_funcs"], reward_processing_classes
        self._agent_features = {
            "tools": tools,
            "rollout_func": rollout_func,
            "environment_factory": environment_factory,
        }
        super().__init__(
            given["model"], given["args"], train_dataset=train_dataset, eval_dataset=eval_dataset,
            processing_class=processing_class, callbacks=callbacks, optimizers=optimizers,
            quantization_config=quantization_config, peft_config=peft_config, ref_model=ref_model,
        )  # fmt: skip

    # ------------------------------------------------------------------------------------- skeleton steps
    def _validate(self, args: Any, inputs: TrainerInputs) -> None:
        super()._validate(args, inputs)
        self._validate_scoring(args)
        check_agent_features(args, self._agent_features, inputs.train_dataset)  # see `trl.agent`
        check_streaming_dataset(args, inputs.train_dataset)  # an IterableDataset needs max_steps
        for name in ("train_dataset", "eval_dataset"):
            dataset = getattr(inputs, name)
            for part in dataset.values() if isinstance(dataset, dict) else [dataset]:
                if part is not None:
                    _check_prompt_columns(name, get_dataset_column_names(part))
        global_eval_batch = args.per_device_eval_batch_size * _completions_per_entry(args) * args.world_size
        if inputs.eval_dataset is not None and global_eval_batch % args.num_generations_eval:
            raise ValueError(
                f"The global eval batch (per_device_eval_batch_size × processes = {global_eval_batch}) must be a "
                f"multiple of num_generations_eval ({args.num_generations_eval})."
            )
        if getattr(args, "log_completions_hub_repo", None):
            raise ValueError(
                "log_completions_hub_repo is not supported by this version: the completions tables go to the console "
                "and to W&B / Trackio. Unset log_completions_hub_repo."
            )

    def _validate_scoring(self, args: Any) -> None:
        """Check how completions are scored (part of `_validate`): by default, reward functions are required."""
        if self._reward_funcs is None and self._agent_features.get("environment_factory") is None:
            raise ValueError(
                f"{type(self).__name__} needs reward_funcs: reward functions, reward models or reward model ids."
            )

    def _setup_model(self, model: str | PreTrainedModel, args: Any, quantization_config: Any) -> PreTrainedModel:
        model = super()._setup_model(model, args, quantization_config)
        if getattr(args, "cast_lm_head_to_fp32", False):
            _cast_lm_head_to_fp32(model)
        return model

    def _setup_auxiliary_models(self, model: Any, args: Any, inputs: TrainerInputs) -> dict[str, Any]:
        """The reference (see `_setup_ref`) and the reward functions and models."""
        agent = build_agent(args, self._agent_features, self)  # environments' get_reward() join the rewards
        funcs, classes = with_environment_rewards(self._reward_funcs, self._reward_processing_classes, args, agent)
        reward_scorer = RewardScorer(funcs, classes, args.reward_weights, args.model_init_kwargs)
        ref_model = self._setup_ref(model, args, inputs.ref_model)
        return {"ref_model": ref_model, "reward_scorer": reward_scorer, "agent": agent}

    def _setup_ref(self, model: Any, args: Any, ref_model: Any = None) -> Any:
        """The reference model: `ref_model` when one is given (an id, a path or a model), else a frozen copy of the
        policy (eval mode, dropout off) when the method uses a reference (see `_uses_reference`); none under PEFT
        (the reference is the base model with adapters disabled) or without a reference."""
        if not self._uses_reference(args):
            if ref_model is not None:
                raise ValueError("A ref_model was given but beta=0.0 uses no reference: set beta or drop ref_model.")
            return None
        if ref_model is not None:
            return prepare_auxiliary_model(ref_model, args)
        if is_peft_model(model):
            if args.sync_ref_model:
                raise ValueError(
                    "sync_ref_model=True needs a separate reference model; with PEFT the reference is the base model "
                    "with adapters disabled. Set sync_ref_model=False or train without peft_config."
                )
            return None
        return prepare_auxiliary_model(create_reference_model(model), args)

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, name: str) -> Any:
        # Evaluation repeats every prompt num_generations_eval times through a sampler, which indexes the data: a
        # streaming evaluation set (finite) is read into memory once. Prompts are tokenized by the rollout.
        return to_map_style(dataset, name) if name.startswith("eval") else dataset

    def _default_collator(self, processing_class: Any, args: Any) -> Any:
        return identity  # the rollout reads the raw rows

    def _after_init(self, auxiliary_models: dict[str, Any]) -> None:
        ref_model = auxiliary_models["ref_model"]
        self.ref_model = prepare_ref_model(ref_model, self.accelerator) if ref_model is not None else None
        if self.args.sync_ref_model:
            self.add_callback(SyncRefModelCallback(ref_model=self.ref_model, accelerator=self.accelerator))
        self.reward_scorer = auxiliary_models["reward_scorer"]
        self.reward_scorer.prepare(self.accelerator)
        self._logits_to_keep_supported = accepts_logits_to_keep(self.accelerator.unwrap_model(self.model))
        self.agent = auxiliary_models.get("agent")
        self.rollout = self._setup_rollout()
        self.recorded_completions: dict[str, list] = {}
        if self.args.log_completions and not self._logs_completions:
            self.add_callback(LogCompletionsCallback(self))

    def _setup_rollout(self) -> Rollout:
        """The [`Rollout`]: its backend from `build_generation_backend`, log-probs through this trainer's forward."""
        return Rollout(
            self.args,
            self.model,
            self.processing_class,
            self.reward_scorer,
            self.accelerator,
            pad_token_id=self.pad_token_id,
            old_logps_fn=lambda batch: self._batched_logps(self.model, batch),
            ref_logps_fn=self._ref_logps if self._uses_reference(self.args) else None,
            sampler_logps=self._wants_sampler_logps(),
            log_metric=self.log_metric,
            agent=self.agent,
        )

    # Read-only views of the rollout's state (`_buffer` and `_generation_rng`: earlier trainer attributes, read by
    # the checkpoint tests).
    generation_backend = _rollout_view("backend", "The rollout's [`~trl.generation.GenerationBackend`].")
    _buffer = _rollout_view("buffer", "The rollout's generation buffer.")
    _generation_rng = _rollout_view("rng", "The rollout's generation random stream.")
    _cycle = _rollout_view("cycle", "Micro-steps fed by one generation batch.")
    _on_policy = _rollout_view(
        "on_policy", "Whether the log-probs of the generating policy equal the current ones ([`Rollout.on_policy`])."
    )
    reward_processing_classes = property(
        lambda self: getattr(self.reward_scorer, "processing_classes", []),
        doc="Tokenizers aligned with the reward functions (a callable's entry as passed; `[]` when a judge scores).",
    )

    def _set_signature_columns_if_needed(self) -> None:
        # With remove_unused_columns=True only what prompt rendering reads is kept (reward functions then receive no
        # other column); the default False keeps every column.
        if self._signature_columns is None:
            self._signature_columns = ["prompt", "tools", "chat_template_kwargs"]

    # ------------------------------------------------------------------------------------------ data loading
    def get_train_dataloader(self):
        # One dataloader batch is one process's share of a generation batch; the sampler repeats it for every
        # micro-step it feeds, so Trainer's epoch and resume bookkeeping stay in micro-steps.
        with training_rows(self) as dataset:  # a streaming one in the sampler's order (see `trl.trainer.streaming`)
            if dataset is None:
                raise ValueError(f"{type(self).__name__} needs a train_dataset to train.")
            return self._get_dataloader(
                dataset=dataset,
                description="Training",
                batch_size=self._train_batch_size * self.args.steps_per_generation,
                sampler_fn=self._get_train_sampler,
                is_training=True,
            )

    def _get_train_sampler(self, train_dataset: Any = None) -> RolloutSampler:
        args = self.args
        return RolloutSampler(
            train_dataset if train_dataset is not None else self.train_dataset,
            mini_repeat_count=args.num_generations,
            batch_size=args.generation_batch_size // args.num_generations,
            repeat_count=args.num_iterations * args.steps_per_generation,
            shuffle=bool(args.shuffle_dataset),
            seed=args.data_seed if args.data_seed is not None else args.seed,
        )

    def _get_eval_sampler(self, eval_dataset: Any) -> RolloutSampler:
        return RolloutSampler(eval_dataset, mini_repeat_count=self.args.num_generations_eval, shuffle=False)

    # ------------------------------------------------------------------------------------------ training step
    def training_step(self, model: torch.nn.Module, inputs: Any, num_items_in_batch: Any = None) -> torch.Tensor:
        timer = self.rollout.timer
        start, rollout_before = time.perf_counter(), timer.total()
        loss = super().training_step(model, inputs, num_items_in_batch)
        rollout_seconds = timer.total() - rollout_before
        timer.seconds["train"] += time.perf_counter() - start - rollout_seconds
        if self.accelerator.sync_gradients:
            for phase, seconds in timer.pop().items():
                self.log_metric(f"timing/{phase}", seconds, "train")
            self._on_optimizer_step_end()
        return loss

    def _on_optimizer_step_end(self) -> None:
        """Hook run after the last micro-step of every optimizer step (e.g. adaptive coefficients)."""

    def _prepare_inputs(self, rows: Any) -> dict[str, Any]:
        if not self.model.training:
            batch = self._rollout_batch(rows, "eval")
            tokens = self.accelerator.gather(batch["completion_mask"].sum().float().reshape(1)).sum()
            return {**batch, "num_items_in_batch": tokens.item()}
        if self.rollout.needs_generation():
            self.rollout.fill_buffer(self._rollout_batch(rows, "train"), self._buffer_group_size)
        return self.rollout.next_micro_batch()

    def _rollout_batch(self, rows: list[dict[str, Any]], mode: str) -> dict[str, torch.Tensor]:
        """One generation batch from the rollout, with the method's advantages (local rows) and extra tensors."""
        rollout = self.rollout.produce(
            rows,
            mode,
            with_old_logps=self._needs_old_logps(mode),
            policy=self.model_wrapped,
            trainer_state=self.state,
        )
        advantages_B = self._compute_advantages(rollout.rewards_B_F, rollout, mode)
        if self._logs_completions:
            self.recorded_completions = record_completions(
                self.state.global_step, rollout, self.reward_scorer.names, advantages_B
            )
        extra = self._extra_rollout_tensors(rollout, mode)
        return {**rollout.tensors, "advantages": self.rollout.local(advantages_B), **extra}

    @property
    def _logs_completions(self) -> bool:
        """Whether a [`LogCompletionsCallback`] is registered (it writes what `_rollout_batch` records)."""
        return any(isinstance(cb, LogCompletionsCallback) for cb in self.callback_handler.callbacks)

    # ----------------------------------------------------------------------------------------- method hooks
    def _compute_advantages(self, rewards_B_F: torch.Tensor, rollout: RolloutBatch, mode: str) -> torch.Tensor:
        """The advantages `[B_global]` of every process's completions from their rewards `[B_global, F]` (NaN where
        a function does not apply); `rollout` gives the group size and, when computed, the log-probs."""
        raise NotImplementedError

    def _extra_rollout_tensors(self, rollout: RolloutBatch, mode: str) -> dict[str, torch.Tensor]:
        """Per-row tensors a method adds to the local batch (e.g. importance-sampling weights); none by default."""
        return {}

    def _uses_reference(self, args: Any) -> bool:
        """Whether the method uses a reference model (the rollout computes `ref_logps`); by default when `beta != 0`."""
        return args.beta != 0.0

    def _needs_old_logps(self, mode: str) -> bool:
        """Whether the rollout computes the generating policy's log-probs (`old_logps`)."""
        return mode == "train" and not self._on_policy

    def _wants_sampler_logps(self) -> bool:
        """Whether to ask the backend for the sampler's log-probs (`sampler_logps`)."""
        return False

    # ------------------------------------------------------------------------------------------- log-probs
    def _ref_logps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with self._reference_model() as ref_model:
            return self._batched_logps(ref_model, batch)

    @contextlib.contextmanager
    def _reference_model(self) -> Iterator[torch.nn.Module]:
        if self.ref_model is not None:
            yield self.ref_model
            return
        with use_adapter(self._unwrapped_policy(), getattr(self.args, "ref_adapter_name", None)) as model:
            yield model

    def _unwrapped_policy(self) -> torch.nn.Module:
        """The policy without its accelerate wrapper (under PEFT, the reference with its adapters disabled)."""
        return self.accelerator.unwrap_model(self.model)

    def _batched_logps(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Completion log-probs of the whole local batch, one micro-batch of rows per forward pass."""
        step = self.args.per_device_train_batch_size * _completions_per_entry(self.args)
        parts = []
        for start in range(0, batch["completion_ids"].shape[0], step):
            rows = {key: batch[key][start : start + step] for key in (*SEQUENCE_KEYS, _ATTENTION) if key in batch}
            logps_B_C, _, _ = self._completion_logps(model, rows)
            parts.append(logps_B_C.float())
        return torch.cat(parts)

    def _completion_logps(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor], with_entropy: bool = False, entropy_grad=False
    ) -> tuple[torch.Tensor, torch.Tensor | None, Any]:
        """Per-token log-probs (and entropies) `[B, C]` of the completions of `batch` (prompt and completion
        tensors) at the sampling temperature, through [`~trl.kernels.token_logps`], and the model outputs."""
        # With tools the forward pass attends to every completion token, tool results included; the loss masks them.
        attention_B_C = batch.get(_ATTENTION, batch["completion_mask"])
        inputs = policy_inputs(
            batch["prompt_ids"],
            batch["prompt_mask"],
            batch["completion_ids"],
            attention_B_C,
            self.args.pad_to_multiple_of,
        )
        first, width = used_columns(batch["prompt_mask"], attention_B_C)
        # The completion mask covers the last columns of the rows: extend it over `pad_to_multiple_of`'s padding.
        padding = inputs["input_ids"].shape[1] - (batch["prompt_mask"].shape[1] - first) - width
        scored = {key: inputs[key] for key in ("input_ids", "attention_mask", "position_ids")}
        scored["completion_mask"] = torch.nn.functional.pad(inputs["completion_mask"], (0, padding))
        token = token_logps(
            model,
            scored,
            temperature=self.args.temperature,
            return_entropy=with_entropy,
            entropy_requires_grad=entropy_grad,
            logits_to_keep=self._logits_to_keep_supported,
        )
        # Columns no row needs were trimmed; pad back so every per-token tensor has the batch's width.
        extra = batch["completion_ids"].shape[1] - width
        pad = torch.nn.functional.pad
        logps_B_C = pad(token.logps[:, :width], (0, extra))
        entropies_B_C = None if token.entropy is None else pad(token.entropy[:, :width], (0, extra))
        return logps_B_C, entropies_B_C, token.outputs

    # --------------------------------------------------------------------------------------------- metrics
    def _log_gathered(self, name: str, value: torch.Tensor, mode: str, reductions: tuple[str, ...] = ("mean",)):
        """Log a local scalar gathered over processes, under `name` (mean) or `name` with `_min` / `_max` suffixes
        replacing `_mean` for the other reductions."""
        values = self.accelerator.gather(value.detach().float().reshape(1))
        for reduction in reductions:
            key = name if reduction == "mean" else name.replace("_mean", f"_{reduction}")
            self.log_metric(key, getattr(values, reduction)(), mode)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # LogCompletionsCallback writes the recorded table from `on_log`, inside `super().log`.
        super().log(logs, start_time)
        self.recorded_completions = {}

    # --------------------------------------------------------------------------------------- loss helpers
    def _loss_mode(self, model: Any, return_outputs: bool) -> str:
        """`"train"` or `"eval"` for `compute_loss` (which returns no model outputs)."""
        if return_outputs:
            raise ValueError(f"{type(self).__name__}.compute_loss does not return model outputs.")
        return "train" if model.training else "eval"

    def _old_logps(self, inputs: dict[str, torch.Tensor], mode: str) -> torch.Tensor | None:
        """The generating policy's log-probs for the loss; `None` (the current ones, detached) when on-policy."""
        if mode == "train" and not self._on_policy:
            return inputs["old_logps"]
        return None

    def _scale_loss(self, loss: torch.Tensor | float, global_normaliser: bool, mode: str) -> torch.Tensor | float:
        """Undo what the framework does to the loss, so that the gradient equals the loss's own normalisation.

        A loss divided by the step's global token count is summed over micro-steps and processes: DDP averages over
        the `P` processes, so it is multiplied by `P`. A per-micro-batch mean is divided by the accumulation steps.
        """
        if global_normaliser:
            return loss * self.accelerator.num_processes
        if mode == "train":
            return loss / self.current_gradient_accumulation_steps
        return loss

    def _aux_loss(self, outputs: Any, mode: str) -> torch.Tensor | float:
        """The MoE router term of a micro-batch ([`BaseTrainer.router_aux_loss`]), averaged over accumulation."""
        return self._scale_loss(self.router_aux_loss(getattr(outputs, "aux_loss", None), mode), False, mode)

    def _log_entropy(self, entropies_B_C: torch.Tensor, mask_B_C: torch.Tensor, mode: str) -> torch.Tensor:
        """Log the mean entropy over the completion tokens of every process; return it."""
        mask = mask_B_C.bool()
        totals = torch.stack([entropies_B_C.detach()[mask].float().sum(), mask.sum().float()])
        totals = self.accelerator.gather(totals.reshape(1, 2)).sum(dim=0)
        mean = totals[0] / totals[1].clamp(min=1)
        self.log_metric("entropy", mean, mode)
        return mean

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.mean().detach(), None, None

    # ------------------------------------------------------------------------------------ checkpoint state
    # A method's running values saved with the rollout state: state key -> attribute (e.g. an adaptive coefficient).
    _running_state: dict[str, str] = {}

    def _rollout_state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue exactly: the rollout's state (micro-step counter, buffered
        micro-batches, generation random state, token count) and the method's `_running_state` values."""
        return {**self.rollout.state_dict(), **{key: getattr(self, name) for key, name in self._running_state.items()}}

    def _load_rollout_state_dict(self, state: dict[str, Any]) -> None:
        self.rollout.load_state_dict(state)
        for key, name in self._running_state.items():
            setattr(self, name, state.get(key, getattr(self, name)))

    def extra_state_dict(self) -> dict[str, Any]:
        return {**super().extra_state_dict(), "rollout": self._rollout_state_dict()}

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        super().load_extra_state_dict(state)
        self._load_rollout_state_dict(state["rollout"])

    def _load_legacy_extra_state(self, checkpoint: str) -> None:
        super()._load_legacy_extra_state(checkpoint)
        # Older trl pickled this state to `rollout_state*.pt`: never unpickled, since a crafted file would run code.
        legacy = [name for name in os.listdir(checkpoint) if name.startswith("rollout_state") and name.endswith(".pt")]
        reason = f"{legacy[0]} is a pickle from an older trl and is not read" if legacy else "it has no rollout state"
        warnings.warn(
            f"{checkpoint} was written by another trainer or version ({reason}): the generation buffer starts empty, "
            "so the resumed run does not reproduce the interrupted one exactly.",
            UserWarning,
            stacklevel=3,
        )
        self.rollout.step = self.state.global_step * self.args.gradient_accumulation_steps

    # ------------------------------------------------------------------------------------------- summary
    def _derived_quantities(self) -> dict[str, Any]:
        args = self.args
        rows = super()._derived_quantities()
        rows.pop("optimizer steps per epoch", None)
        rows.pop("total optimizer steps", None)
        if self.train_dataset is not None and hasattr(self.train_dataset, "__len__"):
            prompts_per_generation = args.generation_batch_size // args.num_generations
            generations = len(self.train_dataset) // prompts_per_generation
            steps = math.ceil(generations * self._cycle / args.gradient_accumulation_steps)
            rows["optimizer steps per epoch"] = max(1, steps)
            if args.max_steps <= 0:
                rows["total optimizer steps"] = math.ceil(max(1, steps) * args.num_train_epochs)
        if args.max_steps > 0:
            rows["total optimizer steps"] = args.max_steps
        rows["completions per prompt (num_generations)"] = args.num_generations
        rows["generation batch (completions)"] = args.generation_batch_size
        rows["prompts per generation batch"] = args.generation_batch_size // args.num_generations
        rows["micro-batches per generation (steps_per_generation)"] = args.steps_per_generation
        rows["passes per generation (num_iterations)"] = args.num_iterations
        rows["generations per optimizer step"] = f"{args.gradient_accumulation_steps / self._cycle:g}"
        rows["max tokens per completion"] = args.max_completion_length
        rows["old log-prob pass"] = "no (on-policy)" if self._on_policy else "yes (off-policy)"
        rows["reference model"] = self._reference_description()
        rows["generation backend"] = type(self.generation_backend).__name__
        rows["reward functions"] = ", ".join(
            f"{w:g}·{name}" for w, name in zip(self.reward_scorer.weights.tolist(), self.reward_scorer.names)
        )
        return rows

    def _reference_description(self) -> str:
        if not self._uses_reference(self.args):
            return "none (beta = 0)"
        if self.ref_model is None:
            return "base model (adapters disabled)"
        return "frozen copy of the initial policy" + (" (synced)" if self.args.sync_ref_model else "")


# The completion tokens the forward passes attend to when `completion_mask` marks only the trained ones (tool calls).
_ATTENTION = "completion_attention_mask"


def _completions_per_entry(args: Any) -> int:
    """Completions per entry of the per-device batch sizes: 2 for the pairwise trainers (their batch size counts
    prompts, each sampled as a pair), else 1."""
    return getattr(args, "_completions_per_batch_entry", 1)


def _check_prompt_columns(name: str, columns: list[str]) -> None:
    if "prompt" not in columns:
        raise ValueError(
            f"The {name} needs a 'prompt' column (prompt-only data, standard or conversational); it has {columns}."
        )
    if {"image", "images"} & set(columns):
        raise ValueError("Image prompts (vision-language models) are not supported by this version.")


def _cast_lm_head_to_fp32(model: PreTrainedModel) -> None:
    """Run the output projection in float32 (log-probs of half-precision models lose precision in the softmax)."""
    if getattr(model.config, "tie_word_embeddings", False):
        raise ValueError(
            "cast_lm_head_to_fp32=True needs untied input and output embeddings (casting the LM head would also "
            "cast the tied input embeddings). Set cast_lm_head_to_fp32=False for this model."
        )
    lm_head = model.get_output_embeddings()
    lm_head.float()
    lm_head.register_forward_pre_hook(lambda module, args: tuple(a.float() for a in args))
