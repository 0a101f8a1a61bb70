"""The rollout path shared by every online trainer (GRPO, RLOO; later Online DPO, Nash-MD, XPO, GKD, PPO).

One generation step, in order:

1. **Prompts.** [`RolloutSampler`] yields each prompt `num_generations` times in a row, and the whole generation
   batch `steps_per_generation × num_iterations` times, so every process receives its slice of the same prompt
   groups ([`~trl.trainer.utils.RepeatSampler`], seeded per epoch so a resumed run replays it). Conversational
   prompts go through the chat template ([`render_prompts`]), then the tokenizer.
2. **Generation** through a [`~trl.generation.GenerationBackend`] (transformers, vLLM colocate, vLLM server), from
   a per-process random stream ([`GenerationRNG`]) so that processes holding the same prompt do not draw the same
   completions, and a resumed run draws what the uninterrupted one drew.
3. **Decoding** ([`decode_completions`]) and **scoring** ([`RewardScorer`]): reward functions (sync or async,
   `None` for "not applicable") and reward models, gathered across processes into `rewards_B_F`.
4. **Log-probs** of the generating policy (only when training is off-policy) and of the reference model (only when
   the method has a KL term), once per generation batch.
5. **Advantages**: the method's hook `_process_rollout` (GRPO: group normalisation; RLOO: leave-one-out).
6. **Buffering** ([`GenerationBuffer`]): the local batch is shuffled, cut into `steps_per_generation` micro-batches
   and served to the next `steps_per_generation × num_iterations` training steps. The buffer, the step counter and
   the generation random state go into every checkpoint, so resuming reproduces the uninterrupted run.

Every phase is timed ([`PhaseTimer`]) and logged as `timing/{generate,score,reference,train,weight_sync}`, in
seconds per optimizer step. A method subclasses [`OnlineTrainer`] and adds its advantage (`_process_rollout`) and
its loss (`compute_loss`, built on [`OnlineTrainer._completion_logps`]).

The building blocks live in `trl.trainer.rollout_utils` (timing, sampling, prompts, buffer) and
`trl.trainer.reward_scoring` (reward functions and models).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator
from functools import partial
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from ..data_utils import get_dataset_column_names
from ..generation.base import GenerationBackend, SamplingParams
from ..models.utils import create_reference_model, prepare_ref_model
from .base_trainer import BaseTrainer
from .callbacks import SyncRefModelCallback
from .data_preparation import map_datasets, to_map_style
from .model_utils import (
    accepts_logits_to_keep,
    check_model_init_kwargs_unused,
    get_tokenizer,
    is_moe_model,
    is_peft_model,
    load_processing_class,
    load_trained_model,
    prepare_peft_model,
)
from .reward_scoring import RewardFunc, RewardScorer
from .rollout_utils import (
    GenerationBuffer,
    GenerationRNG,
    PhaseTimer,
    RolloutSampler,
    completion_logps,
    decode_completions,
    pad_rows,
    policy_inputs,
    render_prompts,
    tokenize_prompts,
)
from .utils import (
    disable_dropout_in_model,
    identity,
    message_text,
    print_prompt_completions_sample,
    use_adapter,
)


# Dataset columns that are not passed to reward functions as extra keyword arguments.
_NOT_REWARD_KWARGS = ("prompt", "completion", "completion_ids")


# ------------------------------------------------------------------------------------------------- trainer
class OnlineTrainer(BaseTrainer):
    """Base class of the online trainers: everything but the advantage and the loss.

    A subclass sets `_name`, `_tag_names`, `_paper`, implements `_process_rollout(batch, rewards_B_F, mode)` (set
    `batch["advantages"]` for the local rows, log its metrics, return the global advantages) and `compute_loss`, and
    may override `_needs_old_logps(mode)` / `_wants_sampler_logps()`.

    The training batches it receives (`inputs` of `compute_loss`) hold, for `B` local rows: `prompt_ids`,
    `prompt_mask` `[B, P]` (left-padded), `completion_ids`, `completion_mask` `[B, C]` (right-padded; rows of
    truncated completions zeroed under `mask_truncated_completions`), `advantages` `[B]`, `num_items_in_batch` (the
    optimizer step's completion tokens on every process), and when computed `old_logps`, `ref_logps`,
    `sampler_logps` `[B, C]`.
    """

    def __init__(
        self,
        model: str | PreTrainedModel,
        reward_funcs: RewardFunc | list[RewardFunc],
        args: Any,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        reward_processing_classes: Any = None,
        callbacks: list | None = None,
        optimizers: tuple = (None, None),
        quantization_config: Any = None,
        peft_config: Any = None,
    ):
        self._validate_inputs(args, model, train_dataset, eval_dataset)
        # Evaluation repeats every prompt num_generations_eval times through a sampler, which indexes the data: a
        # streaming evaluation set (finite) is read into memory once.
        eval_dataset = map_datasets(eval_dataset, to_map_style, "eval")
        model = self._setup_model(model, args, quantization_config)
        processing_class = processing_class or load_processing_class(model.config._name_or_path, args)
        tokenizer = get_tokenizer(processing_class)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = prepare_peft_model(model, peft_config, args)
        ref_model = self._setup_ref(model, args)
        self.reward_scorer = RewardScorer(
            reward_funcs, reward_processing_classes, args.reward_weights, args.model_init_kwargs
        )
        super().__init__(
            model=model,
            args=args,
            data_collator=identity,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        self._setup_after_init(ref_model)

    # -------------------------------------------------------------------------------------------- setup
    @staticmethod
    def _validate_inputs(args: Any, model: Any, train_dataset: Any, eval_dataset: Any) -> None:
        check_model_init_kwargs_unused(model, args)
        if train_dataset is not None and not hasattr(train_dataset, "__len__"):
            raise ValueError(
                "Online trainers need a train_dataset with a length (each prompt is repeated num_generations times by "
                "the sampler); streaming datasets are not supported. Load the dataset without streaming."
            )
        for name, dataset in (("train_dataset", train_dataset), ("eval_dataset", eval_dataset)):
            datasets = dataset.values() if isinstance(dataset, dict) else [dataset]
            for part in datasets:
                if part is None:
                    continue
                columns = get_dataset_column_names(part)
                if "prompt" not in columns:
                    raise ValueError(
                        f"The {name} needs a 'prompt' column (prompt-only data, standard or conversational); it has "
                        f"{columns}."
                    )
                if {"image", "images"} & set(columns):
                    raise ValueError("Image prompts (vision-language models) are not supported by this version.")
        if eval_dataset is not None and (args.per_device_eval_batch_size * args.world_size) % (
            args.num_generations_eval
        ):
            raise ValueError(
                f"The global eval batch (per_device_eval_batch_size × processes = "
                f"{args.per_device_eval_batch_size * args.world_size}) must be a multiple of num_generations_eval "
                f"({args.num_generations_eval})."
            )
        if getattr(args, "log_completions_hub_repo", None):
            raise ValueError(
                "log_completions_hub_repo is not supported by this version: the completions tables go to the console "
                "and to W&B / Trackio. Unset log_completions_hub_repo."
            )

    @staticmethod
    def _setup_model(model: str | PreTrainedModel, args: Any, quantization_config: Any) -> PreTrainedModel:
        if isinstance(model, str):
            overrides = {"quantization_config": quantization_config} if quantization_config is not None else {}
            model = load_trained_model(model, args, AutoModelForCausalLM, **overrides)
        elif quantization_config is not None:
            raise ValueError("quantization_config only applies when `model` is a string; the model is already loaded.")
        if args.router_aux_loss_coef not in (None, 0.0) and not is_moe_model(model):
            raise ValueError(
                f"router_aux_loss_coef={args.router_aux_loss_coef} is set but {type(model).__name__} is not a "
                "mixture-of-experts model (its config has no router). Leave router_aux_loss_coef=None."
            )
        if args.disable_dropout:
            disable_dropout_in_model(model)
        if getattr(args, "cast_lm_head_to_fp32", False):
            _cast_lm_head_to_fp32(model)
        return model

    def _setup_ref(self, model: Any, args: Any) -> Any:
        """A frozen copy of the policy when the method uses a reference (`beta != 0`); none under PEFT (the reference
        is the base model with adapters disabled) or without KL."""
        if args.beta == 0.0:
            return None
        if is_peft_model(model):
            if args.sync_ref_model:
                raise ValueError(
                    "sync_ref_model=True needs a separate reference model; with PEFT the reference is the base model "
                    "with adapters disabled. Set sync_ref_model=False or train without peft_config."
                )
            return None
        ref_model = create_reference_model(model)
        if args.disable_dropout:
            disable_dropout_in_model(ref_model)
        return ref_model

    def _setup_after_init(self, ref_model: Any) -> None:
        # Token-mean losses are normalised by the optimizer step's token count (see `_scale_loss`), so Trainer must
        # not divide by the accumulation steps again.
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = True
        self.ref_model = prepare_ref_model(ref_model, self.accelerator) if ref_model is not None else None
        if self.args.sync_ref_model:
            self.add_callback(SyncRefModelCallback(ref_model=self.ref_model, accelerator=self.accelerator))
        self.reward_scorer.prepare(self.accelerator)
        tokenizer = get_tokenizer(self.processing_class)
        self.pad_token_id = tokenizer.pad_token_id
        self.generation_backend = self._setup_generation()
        self._logits_to_keep_supported = accepts_logits_to_keep(self.accelerator.unwrap_model(self.model))
        self._generation_rng = GenerationRNG(self.args.seed, self.accelerator.process_index, self.accelerator.device)
        self._buffer = GenerationBuffer()
        self._timer = PhaseTimer()
        self._step = 0
        self._last_synced_step: int | None = None
        self._total_train_tokens = 0
        self._completion_log: dict[str, list] = defaultdict(list)
        self._extra_log_columns: dict[str, list] = {}

    def _eos_token_ids(self) -> list[int]:
        tokenizer = get_tokenizer(self.processing_class)
        ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        config = getattr(self.accelerator.unwrap_model(self.model), "generation_config", None)
        extra = getattr(config, "eos_token_id", None)
        ids |= set(extra if isinstance(extra, list) else [extra] if extra is not None else [])
        return sorted(ids)

    def _setup_generation(self) -> GenerationBackend:
        args = self.args
        regex = args.vllm_structured_outputs_regex
        if not args.use_vllm:
            from ..generation.transformers_backend import TransformersBackend, unwrap_model_for_generation

            unwrap = partial(unwrap_model_for_generation, gather_deepspeed3_params=args.ds3_gather_for_generation)
            return TransformersBackend(
                self.model,
                accelerator=self.accelerator,
                pad_token_id=self.pad_token_id,
                eos_token_id=self._eos_token_ids(),
                unwrap_context=unwrap,
            )
        if args.vllm_mode == "server":
            from ..generation.server_backend import VLLMServerBackend

            return VLLMServerBackend(
                accelerator=self.accelerator,
                base_url=args.vllm_server_base_url,
                host=args.vllm_server_host,
                server_port=args.vllm_server_port,
                group_port=args.vllm_group_port,
                server_timeout=args.vllm_server_timeout,
                guided_decoding_regex=regex,
            )
        from ..generation.vllm_generation import VLLMGeneration

        return VLLMGeneration(
            model=self.accelerator.unwrap_model(self.model).config._name_or_path,
            accelerator=self.accelerator,
            tensor_parallel_size=args.vllm_tensor_parallel_size,
            gpu_memory_utilization=args.vllm_gpu_memory_utilization,
            max_model_len=args.vllm_max_model_length,
            enable_sleep_mode=args.vllm_enable_sleep_mode,
            model_impl=args.vllm_model_impl,
            revision=(args.model_init_kwargs or {}).get("revision"),
            guided_decoding_regex=regex,
            trust_remote_code=args.trust_remote_code,
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
        if self.train_dataset is None:
            raise ValueError(f"{type(self).__name__} needs a train_dataset to train.")
        return self._get_dataloader(
            dataset=self.train_dataset,
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
    @property
    def _cycle(self) -> int:
        """Micro-steps fed by one generation batch."""
        return self.args.steps_per_generation * self.args.num_iterations

    @property
    def _on_policy(self) -> bool:
        """Whether the policy is unchanged between generating a batch and training on all of it: then the log-probs
        of the generating policy equal the current ones (detached) and need no extra forward pass."""
        return self.args.gradient_accumulation_steps % self._cycle == 0

    def training_step(self, model: torch.nn.Module, inputs: Any, num_items_in_batch: Any = None) -> torch.Tensor:
        start, rollout_before = time.perf_counter(), self._timer.total()
        loss = super().training_step(model, inputs, num_items_in_batch)
        rollout_seconds = self._timer.total() - rollout_before
        self._timer.seconds["train"] += time.perf_counter() - start - rollout_seconds
        if self.accelerator.sync_gradients:
            for phase, seconds in self._timer.pop().items():
                self.log_metric(f"timing/{phase}", seconds, "train")
            self._on_optimizer_step_end()
        return loss

    def _on_optimizer_step_end(self) -> None:
        """Hook run after the last micro-step of every optimizer step (e.g. adaptive coefficients)."""

    def _prepare_inputs(self, rows: Any) -> dict[str, Any]:
        if not self.model.training:
            batch = self._generate_and_score(rows, "eval")
            tokens = self.accelerator.gather(batch["completion_mask"].sum().float().reshape(1)).sum()
            return {**batch, "num_items_in_batch": tokens.item()}
        position = self._step % self._cycle
        if position == 0 or not self._buffer:
            batch = self._generate_and_score(rows, "train")
            self._fill_buffer(batch)
        self._step += 1
        part = dict(self._buffer.slices[position % self.args.steps_per_generation])
        part["num_items_in_batch"] = self._buffer.normaliser(
            position, self._cycle, self.args.gradient_accumulation_steps
        )
        return part

    def _fill_buffer(self, batch: dict[str, torch.Tensor]) -> None:
        """Shuffle the local generation batch (groups are spread over the micro-batches), cut it into
        `steps_per_generation` micro-batches trimmed of shared padding, and count each one's tokens globally."""
        spg = self.args.steps_per_generation
        permutation = torch.randperm(batch["advantages"].shape[0]).to(batch["advantages"].device)
        batch = {key: value[permutation] for key, value in batch.items()}
        size = batch["advantages"].shape[0] // spg
        slices = [
            _trim_padding({key: value[i * size : (i + 1) * size] for key, value in batch.items()}) for i in range(spg)
        ]
        local_tokens = torch.stack([part["completion_mask"].sum() for part in slices]).float()
        tokens = self.accelerator.gather(local_tokens.reshape(1, spg)).sum(dim=0)
        self._buffer.fill(slices, tokens.tolist())

    # ------------------------------------------------------------------------------------------ generation
    def _generate_and_score(self, rows: list[dict[str, Any]], mode: str) -> dict[str, torch.Tensor]:
        """Generate, decode and score the completions of `rows`, then compute the log-probs the method needs and
        its advantages. Returns the local batch (see the class docstring)."""
        device = self.accelerator.device
        num_generations = self.args.num_generations if mode == "train" else self.args.num_generations_eval
        prompts = [row["prompt"] for row in rows]
        texts = render_prompts(rows, self.processing_class, **(self.args.chat_template_kwargs or {}))
        prompt_ids = tokenize_prompts(texts, get_tokenizer(self.processing_class), self.args.max_prompt_length)
        with self._timer("weight_sync"):
            self._maybe_sync_weights()
        with self._timer("generate"):
            completion_ids, truncated, sampler_logps = self._generate(prompt_ids, num_generations)
        completions = decode_completions(prompts, completion_ids, get_tokenizer(self.processing_class))
        batch = self._rollout_tensors(prompt_ids, completion_ids, truncated, sampler_logps, device)
        with self._timer("score"):
            rewards_B_F = self._score(rows, prompts, completions, completion_ids, mode)
        with self._timer("reference"):
            self._add_logps(batch, mode)
        advantages_B = self._process_rollout(batch, rewards_B_F, num_generations, mode)
        self._log_rollout(batch, truncated, rewards_B_F, mode)
        if self.args.log_completions:
            self._record_completions(texts, completions, rewards_B_F, advantages_B)
        return batch

    def _maybe_sync_weights(self) -> None:
        if self._last_synced_step != self.state.global_step:
            self.generation_backend.sync_weights(self.model_wrapped)
            self._last_synced_step = self.state.global_step

    def _generate(
        self, prompt_ids: list[list[int]], num_generations: int
    ) -> tuple[list[list[int]], list[bool], list[list[float]] | None]:
        args = self.args
        groups = len(prompt_ids) % num_generations == 0 and all(
            prompt_ids[i] == prompt_ids[i - i % num_generations] for i in range(len(prompt_ids))
        )
        # Whole groups: each prompt once with n completions (a server then sees each prompt once).
        unique, n = (prompt_ids[::num_generations], num_generations) if groups else (prompt_ids, 1)
        generation_kwargs = dict(args.generation_kwargs or {})
        if args.cache_implementation is not None and not args.use_vllm:
            generation_kwargs.setdefault("cache_implementation", args.cache_implementation)
        sampling = SamplingParams(
            n=n,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            min_p=args.min_p or 0.0,
            repetition_penalty=args.repetition_penalty,
            max_tokens=args.max_completion_length,
            generation_kwargs=generation_kwargs,
            return_logprobs=self._wants_sampler_logps() and self.generation_backend.provides_logprobs,
        )
        with self._generation_rng():
            result = self.generation_backend.generate(unique, sampling)
        return result.completion_ids, result.truncated, result.logprobs

    def _rollout_tensors(
        self,
        prompt_ids: list[list[int]],
        completion_ids: list[list[int]],
        truncated: list[bool],
        sampler_logps: list[list[float]] | None,
        device: Any,
    ) -> dict[str, torch.Tensor]:
        prompt_ids_B_P, prompt_mask_B_P = pad_rows(prompt_ids, self.pad_token_id, "left", torch.long, device)
        completion_ids_B_C, completion_mask_B_C = pad_rows(
            completion_ids, self.pad_token_id, "right", torch.long, device
        )
        truncated_B = torch.tensor(truncated, dtype=torch.bool, device=device)
        if self.args.mask_truncated_completions:
            completion_mask_B_C = completion_mask_B_C * (~truncated_B).unsqueeze(1).long()
        batch = {
            "prompt_ids": prompt_ids_B_P,
            "prompt_mask": prompt_mask_B_P,
            "completion_ids": completion_ids_B_C,
            "completion_mask": completion_mask_B_C,
            "completion_lengths": torch.tensor([len(c) for c in completion_ids], device=device),
        }
        if sampler_logps is not None:
            batch["sampler_logps"] = pad_rows(sampler_logps, 0.0, "right", torch.float32, device)[0]
        return batch

    def _score(self, rows: list[dict], prompts: list, completions: list, completion_ids: list, mode: str):
        """Local rewards from every reward function, gathered into the global `[B_global, F]` tensor."""
        columns = {key: [row[key] for row in rows] for key in rows[0] if key not in _NOT_REWARD_KWARGS}
        self._extra_log_columns = {}
        rewards_B_F = self.reward_scorer.score(
            prompts,
            completions,
            completion_ids,
            columns,
            device=self.accelerator.device,
            trainer_state=self.state,
            log_extra=self._log_extra,
            log_metric=partial(self.log_metric, mode=mode),
        )
        rewards_B_F = self.accelerator.gather(rewards_B_F)
        unscored = torch.isnan(rewards_B_F).all(dim=1)
        if unscored.any():
            warnings.warn(
                f"All reward functions returned None for {int(unscored.sum())} of {len(unscored)} completions: they "
                "get a zero advantage and teach nothing. Make sure at least one reward function scores every sample.",
                UserWarning,
                stacklevel=2,
            )
        return rewards_B_F

    def _log_extra(self, column: str, values: list) -> None:
        self._extra_log_columns[column] = list(values)

    def _needs_old_logps(self, mode: str) -> bool:
        """Whether the rollout computes the generating policy's log-probs (`old_logps`)."""
        return mode == "train" and not self._on_policy

    def _wants_sampler_logps(self) -> bool:
        """Whether to ask the backend for the sampler's log-probs (`sampler_logps`)."""
        return False

    @torch.no_grad()
    def _add_logps(self, batch: dict[str, torch.Tensor], mode: str) -> None:
        if self._needs_old_logps(mode):
            batch["old_logps"] = self._batched_logps(self.model, batch)
        if self.args.beta != 0.0:
            with self._reference_model() as ref_model:
                batch["ref_logps"] = self._batched_logps(ref_model, batch)

    @contextlib.contextmanager
    def _reference_model(self) -> Iterator[torch.nn.Module]:
        if self.ref_model is not None:
            yield self.ref_model
            return
        with use_adapter(self.accelerator.unwrap_model(self.model), None) as model:
            yield model

    def _batched_logps(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Completion log-probs of the whole local batch, `per_device_train_batch_size` rows per forward pass."""
        step = self.args.per_device_train_batch_size
        parts = []
        for start in range(0, batch["completion_ids"].shape[0], step):
            rows = {key: batch[key][start : start + step] for key in _SEQUENCE_KEYS}
            logps_B_C, _, _ = self._completion_logps(model, rows)
            parts.append(logps_B_C.float())
        return torch.cat(parts)

    def _completion_logps(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor], with_entropy: bool = False, entropy_grad=False
    ) -> tuple[torch.Tensor, torch.Tensor | None, Any]:
        """[`completion_logps`] of `batch` (prompt and completion tensors) at the sampling temperature."""
        inputs = policy_inputs(
            batch["prompt_ids"],
            batch["prompt_mask"],
            batch["completion_ids"],
            batch["completion_mask"],
            self.args.pad_to_multiple_of,
        )
        logps_B_C, entropies_B_C, outputs = completion_logps(
            model, inputs, self.args.temperature, with_entropy, entropy_grad, self._logits_to_keep_supported
        )
        # Columns no row needs were trimmed; pad back so every per-token tensor has the batch's width.
        extra = batch["completion_ids"].shape[1] - logps_B_C.shape[1]
        logps_B_C = torch.nn.functional.pad(logps_B_C, (0, extra))
        if entropies_B_C is not None:
            entropies_B_C = torch.nn.functional.pad(entropies_B_C, (0, extra))
        return logps_B_C, entropies_B_C, outputs

    def _process_rollout(
        self, batch: dict[str, torch.Tensor], rewards_B_F: torch.Tensor, num_generations: int, mode: str
    ) -> torch.Tensor:
        """Method hook: set `batch["advantages"]` (local rows) from the global rewards and return the global
        advantages `[B_global]`."""
        raise NotImplementedError

    def _local(self, values_B: torch.Tensor) -> torch.Tensor:
        """This process's rows of a tensor gathered over every process."""
        size = values_B.shape[0] // self.accelerator.num_processes
        start = self.accelerator.process_index * size
        return values_B[start : start + size]

    # --------------------------------------------------------------------------------------------- metrics
    def _log_rollout(self, batch: dict[str, torch.Tensor], truncated: list[bool], rewards_B_F, mode: str) -> None:
        gather = self.accelerator.gather
        device = self.accelerator.device
        if mode == "train":
            local_tokens = batch["prompt_mask"].sum() + batch["completion_lengths"].sum()
            self._total_train_tokens += int(gather(local_tokens.reshape(1)).sum().item())
            self.log_metric("num_tokens", self._total_train_tokens, mode)
        lengths = gather(batch["completion_lengths"]).float()
        clipped = gather(torch.tensor(truncated, dtype=torch.bool, device=device))
        terminated = lengths[~clipped]
        self.log_metric("completions/mean_length", lengths.mean(), mode)
        self.log_metric("completions/min_length", lengths.min(), mode)
        self.log_metric("completions/max_length", lengths.max(), mode)
        self.log_metric("completions/clipped_ratio", clipped.float().mean(), mode)
        stats = (terminated.mean(), terminated.min(), terminated.max()) if terminated.numel() else (0.0, 0.0, 0.0)
        for name, value in zip(("mean", "min", "max"), stats, strict=True):
            self.log_metric(f"completions/{name}_terminated_length", value, mode)
        for i, name in enumerate(self.reward_scorer.names):
            column = rewards_B_F[:, i]
            valid = column[~torch.isnan(column)]
            self.log_metric(f"rewards/{name}/mean", valid.mean() if valid.numel() else float("nan"), mode)
            std = valid.std() if valid.numel() > 1 else torch.zeros(())
            self.log_metric(f"rewards/{name}/std", std, mode)

    def _log_gathered(self, name: str, value: torch.Tensor, mode: str, reductions: tuple[str, ...] = ("mean",)):
        """Log a local scalar gathered over processes, under `name` (mean) or `name` with `_min` / `_max` suffixes
        replacing `_mean` for the other reductions."""
        values = self.accelerator.gather(value.detach().float().reshape(1))
        for reduction in reductions:
            key = name if reduction == "mean" else name.replace("_mean", f"_{reduction}")
            self.log_metric(key, getattr(values, reduction)(), mode)

    def _record_completions(self, prompts: list[str], completions: list, rewards_B_F, advantages_B) -> None:
        from accelerate.utils import gather_object

        texts = [message_text(c) for c in completions]
        prompts, texts = gather_object(prompts), gather_object(texts)
        extra = {key: gather_object(values) for key, values in sorted(self._extra_log_columns.items())}
        self._completion_log = defaultdict(list)
        log = self._completion_log
        log["step"] = [self.state.global_step] * len(prompts)
        log["prompt"], log["completion"] = prompts, texts
        for i, name in enumerate(self.reward_scorer.names):
            log[name] = rewards_B_F[:, i].tolist()
        log["advantage"] = advantages_B.tolist()
        for key, values in extra.items():
            log[key] = values

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        super().log(logs, start_time)
        if self.args.log_completions and self._completion_log and self.accelerator.is_main_process:
            self._report_completions()
        self._completion_log = defaultdict(list)

    def _report_completions(self) -> None:
        log = self._completion_log
        names = self.reward_scorer.names
        extra_keys = [k for k in log if k not in ("step", "prompt", "completion", "advantage", *names)]
        if not os.environ.get("TRL_QUIET"):
            print_prompt_completions_sample(
                log["prompt"],
                log["completion"],
                {name: log[name] for name in names},
                log["advantage"],
                self.state.global_step,
                self.args.num_completions_to_print,
                {key: log[key] for key in extra_keys},
            )
        report_to = self.args.report_to or []
        if not any(target in report_to for target in ("wandb", "trackio")):
            return
        import pandas as pd

        table = pd.DataFrame(dict(log))
        if self.args.log_unique_prompts:
            table = table.drop_duplicates(subset=["prompt"])
        if "wandb" in report_to:
            import wandb

            if wandb.run is not None:
                wandb.log({"completions": wandb.Table(dataframe=table)})
        if "trackio" in report_to:
            import trackio

            trackio.log({"completions": trackio.Table(dataframe=table)})

    # --------------------------------------------------------------------------------------- loss helpers
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
    def _rollout_state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue exactly: micro-step counter, buffered micro-batches, generation
        random state and running statistics."""
        return {
            "step": self._step,
            "buffer": self._buffer.state_dict(),
            "generation_rng": self._generation_rng.state_dict(),
            "total_train_tokens": self._total_train_tokens,
        }

    def _load_rollout_state_dict(self, state: dict[str, Any]) -> None:
        self._step = state["step"]
        self._buffer.load_state_dict(state["buffer"], self.accelerator.device)
        self._generation_rng.load_state_dict(state["generation_rng"])
        self._total_train_tokens = state["total_train_tokens"]

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
        self._step = self.state.global_step * self.args.gradient_accumulation_steps

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
        if self.args.beta == 0.0:
            return "none (beta = 0)"
        if self.ref_model is None:
            return "base model (adapters disabled)"
        return "frozen copy of the initial policy" + (" (synced)" if self.args.sync_ref_model else "")


# Keys of a batch that describe the sequences (enough to rebuild the model inputs).
_SEQUENCE_KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")
_PER_TOKEN_KEYS = ("completion_ids", "completion_mask", "old_logps", "ref_logps", "sampler_logps", "sampler_weights")


def _trim_padding(part: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the prompt columns that are padding in every row of a micro-batch, and the completion columns past its
    longest completion (per-token tensors alike)."""
    prompt_used = part["prompt_mask"].bool().any(dim=0).nonzero()
    first = int(prompt_used.min()) if prompt_used.numel() else part["prompt_mask"].shape[1]
    lengths = part["completion_lengths"]
    width = int(lengths.max()) if lengths.numel() else 0
    trimmed = dict(part)
    trimmed["prompt_ids"], trimmed["prompt_mask"] = part["prompt_ids"][:, first:], part["prompt_mask"][:, first:]
    for key in _PER_TOKEN_KEYS:
        if key in part:
            trimmed[key] = part[key][:, :width]
    return trimmed


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
