"""Group Relative Policy Optimization (GRPO, arXiv 2402.03300) and its variants (DAPO, Dr. GRPO, GSPO, CISPO, SAPO,
LUSPO, VESPO).

For each prompt, `G = num_generations` completions are sampled and scored; the advantage of completion `i` is its
reward relative to its group,

    A_i = (r_i − mean_group(r)) / (std_group(r) + 1e-4)          (scale_rewards="group"; "batch" / "none" differ)

with `r = Σ_k w_k r_k` over the reward functions (NaN-aware: `None` rewards are ignored, a completion no function
scores gets A = 0). The loss is the clipped surrogate per token,

    l_t = −min(ρ_t·A, clip(ρ_t, 1 − ε, 1 + ε_high)·A) + β·k3(π_θ, π_ref),   ρ_t = π_θ(y_t) / π_old(y_t)

(`ρ` per sequence with `importance_sampling_level="sequence"`, capped at `delta` when set), reduced by
`loss_type`: `dapo` (default) divides the sum over the optimizer step's completion tokens by their number on every
process, so gradient accumulation and the number of processes do not change the loss; `grpo` averages per sequence
then over sequences; `bnpo` averages over the micro-batch's tokens; `dr_grpo` divides by `B·max_completion_length`.

Deviations from the reference, all deliberate: unscorable completions get a zero advantage instead of a reward of 0;
`frac_reward_zero_std` always counts groups; the sequence-level vLLM importance weight uses the mean token log-ratio
(not the sum); each process samples from its own random stream. The rollout (sampling, generation, scoring,
buffering, resume) lives in `trl.trainer.rollout`; the formulas in `trl.losses`.
"""

from __future__ import annotations

from typing import Any

import torch

from ..losses import (
    LOSS_AGGREGATIONS,
    PolicyLossOptions,
    aggregate_loss,
    compute_advantages,
    entropy_mask,
    off_policy_mask,
    policy_loss_from_options,
)
from ..losses.policy import sampler_correction_weights
from .base_trainer import TrainerInputs
from .grpo_config import GRPOConfig
from .rollout import OnlineTrainer, RolloutBatch


class GRPOTrainer(OnlineTrainer):
    """Trainer for Group Relative Policy Optimization (GRPO).

    Args:
        model (`str`, `PreTrainedModel` or `PeftModel`):
            Model id / local path (loaded with `AutoModelForCausalLM.from_pretrained(model, **model_init_kwargs)`),
            or an instantiated causal LM.
        reward_funcs (`RewardFunc` or `list[RewardFunc]`):
            Reward functions (callables `f(prompts, completions, completion_ids, **kwargs) -> list[float | None]`,
            sync or async), reward models (`PreTrainedModel` sequence classifiers) or reward model ids / paths.
        args (`GRPOConfig`, `TrainingArguments` or `None`, *optional*, defaults to `None`):
            Training configuration. `None` uses `GRPOConfig(output_dir="<model>-GRPO")`.
        train_dataset (`Dataset` or `IterableDataset`):
            Prompt-only data (`prompt` column, standard or conversational); the other columns are passed to the
            reward functions.
        eval_dataset (`Dataset`, `IterableDataset`, `dict[str, Dataset]` or `None`, *optional*, defaults to `None`):
            Evaluation prompts; the evaluation loss is the GRPO loss on `num_generations_eval` completions each. A
            streaming dataset is read into memory once; a dict evaluates each dataset under its name.
        processing_class, reward_processing_classes, callbacks, optimizers, quantization_config, peft_config, tools,
        rollout_func, environment_factory, ref_model:
            As in [`~trl.trainer.rollout.OnlineTrainer`] (with `beta > 0` under PEFT the reference is the base model
            with adapters disabled; the agent-training hooks are not supported by this version).
    """

    _config_class = GRPOConfig
    _running_state = {"entropy_coef": "_entropy_coef"}  # saved in checkpoints (see `OnlineTrainer`)
    _name = "GRPO"

    def _resolve_options(self, model: Any, processing_class: Any, args: GRPOConfig, inputs: TrainerInputs) -> None:
        super()._resolve_options(model, processing_class, args, inputs)
        # The options of every `policy_loss` call, read once from the config (loss type, clipping, KL, SAPO/VESPO).
        self.loss_options = PolicyLossOptions.from_config(args)
        self._entropy_coef = args.entropy_coef  # adapted after every optimizer step under use_adaptive_entropy
        self._step_entropies: list[float] = []

    # ----------------------------------------------------------------------------------------------- rollout
    @property
    def _use_sampler_correction(self) -> bool:
        return self.args.use_vllm and self.args.vllm_importance_sampling_correction

    def _wants_sampler_logps(self) -> bool:
        return self._use_sampler_correction or (self.args.use_vllm and self.args.off_policy_mask_threshold is not None)

    def _needs_old_logps(self, mode: str) -> bool:
        # The correction compares the sampler with the training model's view of the same (unchanged) policy.
        return super()._needs_old_logps(mode) or (mode == "train" and self._use_sampler_correction)

    def _compute_advantages(self, rewards_B_F: torch.Tensor, rollout: RolloutBatch, mode: str) -> torch.Tensor:
        """Group-normalised advantages of the weighted rewards (see the module docstring)."""
        args = self.args
        advantages_B, _, stats = compute_advantages(
            rewards_B_F,
            rollout.num_generations,
            self.reward_scorer.weights.to(rewards_B_F.device),
            args.scale_rewards,
            args.multi_objective_aggregation,
        )
        for name in ("reward", "reward_std", "frac_reward_zero_std"):
            self.log_metric(name, stats[name], mode)
        return advantages_B

    def _extra_rollout_tensors(self, rollout: RolloutBatch, mode: str) -> dict[str, torch.Tensor]:
        """`sampler_weights` `[B, C]`: the importance weights correcting for the vLLM sampler's distribution."""
        tensors = rollout.tensors
        if mode != "train" or not self._use_sampler_correction or "sampler_logps" not in tensors:
            return {}
        args = self.args
        sampler_weights_B_C, sampling_stats = sampler_correction_weights(
            tensors["old_logps"],
            tensors["sampler_logps"],
            tensors["completion_mask"],
            args.vllm_importance_sampling_mode,
            args.vllm_importance_sampling_clip_min,
            args.vllm_importance_sampling_clip_max,
        )
        for name, value in sampling_stats.items():
            reduction = name.rsplit("/", 1)[-1]
            self.log_metric(name, getattr(self.accelerator.gather(value.reshape(1)), reduction)(), mode)
        return {"sampler_weights": sampler_weights_B_C}

    # -------------------------------------------------------------------------------------------------- loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args = self.args
        mode = self._loss_mode(model, return_outputs)
        mask_B_C = inputs["completion_mask"]
        advantages_B = inputs["advantages"]
        bonus = self._entropy_coef != 0.0 or args.use_adaptive_entropy
        logps_B_C, entropies_B_C, outputs = self._completion_logps(model, inputs, True, bonus and mode == "train")
        keep_B_C = None
        if args.top_entropy_quantile < 1.0:
            keep_B_C = entropy_mask(entropies_B_C, mask_B_C, args.top_entropy_quantile)
        loss, metrics = self._policy_loss(
            logps_B_C,
            self._old_logps(inputs, mode),
            advantages_B,
            mask_B_C,
            self.loss_options,
            ref_logps_B_T=inputs.get("ref_logps"),
            num_items_in_batch=inputs["num_items_in_batch"],
            entropy_mask_B_T=keep_B_C,
            off_policy_mask_B=self._off_policy_mask(logps_B_C, inputs, advantages_B, mode),
            sampler_weights_B_T=inputs.get("sampler_weights") if mode == "train" else None,
        )
        if bonus:
            loss = loss - self._entropy_coef * aggregate_loss(
                entropies_B_C, mask_B_C, args.loss_type, args.max_completion_length, inputs["num_items_in_batch"]
            )
        global_normaliser = LOSS_AGGREGATIONS[args.loss_type] == "dapo"
        loss = self._scale_loss(loss, global_normaliser, mode) + self._aux_loss(outputs, mode)
        self._log_loss_metrics(metrics, entropies_B_C, mask_B_C, mode)
        return loss

    def _policy_loss(self, *tensors, **kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The policy term: [`~trl.losses.policy_loss_from_options`] (a variant swaps it, e.g. GMPO's)."""
        return policy_loss_from_options(*tensors, **kwargs)

    def get_high_entropy_mask(self, entropies: torch.Tensor, mask: torch.Tensor, threshold: float) -> torch.Tensor:
        """The reference's helper: the tokens of `mask` whose entropy is at or above the `threshold` quantile of the
        entropies of the `mask` tokens (a bool `[B, T]`; [`~trl.losses.entropy_mask`] keeps the top `1 − threshold`)."""
        return entropy_mask(entropies, mask, 1.0 - threshold)

    def _off_policy_mask(self, logps_B_C, inputs, advantages_B, mode: str) -> torch.Tensor | None:
        threshold = self.args.off_policy_mask_threshold
        sampler_logps = inputs.get("sampler_logps", self._old_logps(inputs, mode))
        if threshold is None or sampler_logps is None or mode != "train":
            return None
        return off_policy_mask(logps_B_C, sampler_logps, advantages_B, inputs["completion_mask"], threshold)

    def _log_loss_metrics(self, metrics: dict, entropies_B_C, mask_B_C, mode: str) -> None:
        entropy = self._log_entropy(entropies_B_C, mask_B_C, mode)
        if mode == "train":
            self._step_entropies.append(float(entropy))
        for name, value in metrics.items():
            if name == "clip_ratio/low_mean":
                self._log_gathered(name, value, mode, ("mean", "min"))
            elif name == "clip_ratio/high_mean":
                self._log_gathered(name, value, mode, ("mean", "max"))
            else:
                self._log_gathered(name, value, mode)
        if self._entropy_coef != 0.0 or self.args.use_adaptive_entropy:
            self.log_metric("entropy_coef", self._entropy_coef, mode)

    def _on_optimizer_step_end(self) -> None:
        args = self.args
        if args.use_adaptive_entropy and self._step_entropies:
            entropy = sum(self._step_entropies) / len(self._step_entropies)
            step = args.entropy_coef_delta if entropy < args.entropy_target else -args.entropy_coef_delta
            self._entropy_coef = min(max(self._entropy_coef + step, args.entropy_coef_min), args.entropy_coef_max)
        self._step_entropies = []

    def _derived_quantities(self) -> dict[str, Any]:
        args = self.args
        rows = super()._derived_quantities()
        rows["loss"] = f"{args.loss_type} (importance sampling per {args.importance_sampling_level})"
        rows["advantage scaling"] = f"{args.scale_rewards} ({args.multi_objective_aggregation})"
        rows["beta (KL)"] = args.beta
        return rows
