"""REINFORCE Leave-One-Out (RLOO, arXiv 2402.14740).

For each prompt, `G = num_generations` completions are sampled and scored. The reward of a completion is the
weighted sum of the reward functions (NaN-aware), optionally clipped to `reward_clip_range`, minus the KL penalty
`β·Σ_t (log π_old(y_t) − log π_ref(y_t))` of the whole sequence. Each completion's baseline is the mean reward of
the other completions of its prompt (the scorable ones), so

    A_i = r_i − mean_{j≠i} r_j = G/(G−1)·(r_i − mean(r)),

optionally normalised over the batch (`normalize_advantages`). The loss is the clipped surrogate on the sequence
likelihood ratio `ρ = exp(Σ_t log π_θ − Σ_t log π_old)`, averaged over the micro-batch's sequences:

    L = mean_i −min(ρ_i·A_i, clip(ρ_i, 1 − ε, 1 + ε_high)·A_i)

Fully on-policy (`ρ = 1`) this is REINFORCE with the leave-one-out baseline. Unscorable completions (every reward
function returned `None`) get a zero advantage and are left out of their siblings' baselines. The rollout lives in
`trl.trainer.rollout`; the formulas in `trl.losses`.
"""

from __future__ import annotations

from typing import Any

import torch

from ..losses import (
    PolicyLossOptions,
    aggregate_rewards,
    nan_mean_std,
    policy_loss_from_options,
    rloo_advantages,
    sequence_kl,
)
from .base_trainer import TrainerInputs
from .rloo_config import RLOOConfig
from .rollout import OnlineTrainer, RolloutBatch


class RLOOTrainer(OnlineTrainer):
    """Trainer for REINFORCE Leave-One-Out (RLOO).

    Args:
        model (`str`, `PreTrainedModel` or `PeftModel`):
            Model id / local path, or an instantiated causal LM.
        reward_funcs (`RewardFunc` or `list[RewardFunc]`):
            Reward functions (sync or async callables returning floats or `None`), reward models or their ids.
        args (`RLOOConfig`, `TrainingArguments` or `None`, *optional*, defaults to `None`):
            Training configuration. `None` uses `RLOOConfig(output_dir="<model>-RLOO")`.
        train_dataset (`Dataset` or `IterableDataset`):
            Prompt-only data (`prompt` column); other columns go to the reward functions.
        eval_dataset (`Dataset`, `IterableDataset`, `dict[str, Dataset]` or `None`, *optional*, defaults to `None`):
            Evaluation prompts. A streaming dataset is read into memory once; a dict evaluates each dataset under its
            name.
        processing_class, reward_processing_classes, callbacks, optimizers, quantization_config, peft_config, tools,
        rollout_func, environment_factory, ref_model:
            As in [`~trl.trainer.rollout.OnlineTrainer`], whose `__init__` RLOO shares with [`GRPOTrainer`] (the
            parameters after `peft_config` go beyond the reference's RLOO).
        **deprecated_kwargs:
            trl <= 0.21 names: `config` (→ `args`), `reward_model` (→ `reward_funcs`), `policy` (→ `model`);
            `ref_policy` and `data_collator` are no longer used. Each warns.
    """

    _config_class = RLOOConfig
    # Keyword arguments of the trl <= 0.21 RLOOTrainer: old name -> new name (None: no longer used).
    _deprecated_init_kwargs = {
        "config": "args",
        "reward_model": "reward_funcs",
        "policy": "model",
        "ref_policy": None,
        "data_collator": None,
    }
    _name = "RLOO"

    def _resolve_options(self, model: Any, processing_class: Any, args: RLOOConfig, inputs: TrainerInputs) -> None:
        super()._resolve_options(model, processing_class, args, inputs)
        # RLOO is one configuration of `policy_loss`: a clipped sequence-sum ratio, no KL term (β is in the reward).
        self.loss_options = PolicyLossOptions(
            loss_type="grpo",
            importance_sampling_level="sequence_sum",
            epsilon=args.epsilon,
            epsilon_high=args.epsilon_high,
        )

    def _needs_old_logps(self, mode: str) -> bool:
        # The KL penalty enters the reward, before the advantages: it needs the generating policy's log-probs.
        return super()._needs_old_logps(mode) or self.args.beta != 0.0

    def _compute_advantages(self, rewards_B_F: torch.Tensor, rollout: RolloutBatch, mode: str) -> torch.Tensor:
        """Leave-one-out advantages of the weighted (clipped) rewards minus `β ×` the sequence KL to the reference."""
        args = self.args
        rewards_B = aggregate_rewards(rewards_B_F, self.reward_scorer.weights.to(rewards_B_F.device))
        if args.reward_clip_range is not None:
            rewards_B = rewards_B.clamp(*args.reward_clip_range)
        self._log_reward_stats(rewards_B, rollout.num_generations, mode)
        if args.beta != 0.0:
            tensors = rollout.tensors
            local_kl_B = sequence_kl(tensors["old_logps"], tensors["ref_logps"], tensors["completion_mask"])
            kl_B = self.accelerator.gather(local_kl_B)
            self.log_metric("kl", kl_B.mean(), mode)
            rewards_B = rewards_B - args.beta * kl_B
        advantages_B, _ = rloo_advantages(rewards_B, rollout.num_generations, args.normalize_advantages)
        return advantages_B

    def _log_reward_stats(self, rewards_B: torch.Tensor, num_generations: int, mode: str) -> None:
        """`reward`, `reward_std` (mean of the group standard deviations) and `frac_reward_zero_std` of the task
        reward, before the KL penalty."""
        _, std_P, _ = nan_mean_std(rewards_B.view(-1, num_generations), dim=1)
        self.log_metric("reward", nan_mean_std(rewards_B)[0], mode)
        self.log_metric("reward_std", std_P.mean(), mode)
        self.log_metric("frac_reward_zero_std", torch.isclose(std_P, torch.zeros_like(std_P)).float().mean(), mode)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = self._loss_mode(model, return_outputs)
        mask_B_C = inputs["completion_mask"]
        logps_B_C, entropies_B_C, outputs = self._completion_logps(model, inputs, with_entropy=True)
        loss, metrics = policy_loss_from_options(
            logps_B_C, self._old_logps(inputs, mode), inputs["advantages"], mask_B_C, self.loss_options
        )
        loss = self._scale_loss(loss, False, mode) + self._aux_loss(outputs, mode)
        self._log_entropy(entropies_B_C, mask_B_C, mode)
        self._log_gathered("clip_ratio/low_mean", metrics["clip_ratio/low_mean"], mode, ("mean", "min"))
        self._log_gathered("clip_ratio/high_mean", metrics["clip_ratio/high_mean"], mode, ("mean", "max"))
        self._log_gathered("clip_ratio/region_mean", metrics["clip_ratio/region_mean"], mode)
        return loss

    def _derived_quantities(self) -> dict[str, Any]:
        rows = super()._derived_quantities()
        rows["loss"] = "leave-one-out REINFORCE, clipped sequence ratio"
        rows["beta (KL in the reward)"] = self.args.beta
        rows["normalize advantages"] = self.args.normalize_advantages
        return rows
