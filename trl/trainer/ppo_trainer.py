"""Proximal Policy Optimization with a separate value model (the "PPOv2" design; arXiv 1707.06347, 2403.17031).

Per rollout batch (`batch_size` prompts, one completion each):

1. sample completions at `temperature` (at most `response_length` tokens; generation ends at EOS and at
   `stop_token_id`), score `prompt + completion` with the reward model (`s`), minus `missing_eos_penalty` when the
   completion has no EOS;
2. per-token rewards `r_t = −kl_coef·KL_t + s·[t = last token]` with `KL_t` the k1 or k3 estimate of
   `log π_old(y_t) − log π_ref(y_t)` (`trl.losses.ppo.kl_penalized_rewards`), optionally whitened (mean kept);
3. GAE with (γ, λ) on the value model's `V(s_t)` (0 after the last token) gives advantages `A_t` and returns
   `R_t = A_t + V_t`; the advantages are whitened over the batch's tokens;
4. `num_ppo_epochs` passes over the batch, micro-batches of `per_device_train_batch_size`, one optimizer step per
   `gradient_accumulation_steps` micro-batches:

       loss = mean_t max(−A_t·ρ_t, −A_t·clip(ρ_t, 1 ± cliprange))
            + vf_coef · mean_t ½·max((V_t − R_t)², (clip(V_t, V_old ± cliprange_value) − R_t)²)

   with `ρ_t = π_θ(y_t)/π_old(y_t)` and token means over the micro-batch (`policy_loss(loss_type="bnpo")`,
   `clipped_value_loss`).

Deliberate differences from the reference: the policy and value model train through `transformers.Trainer` (the
shared online-trainer loop: checkpoints with exact resume, evaluation, callbacks, several processes), so the
rollout batch is shuffled once and replayed in the same micro-batch order every PPO epoch; as in the reference, the
gradient accumulates over `gradient_accumulation_steps` micro-batches whatever `num_mini_batches` is. The reward
model scores the decoded text with its own tokenizer (the shared scorer; a reward function works too). The score is
on the last completion token (EOS included) and GAE bootstraps from 0 after it; whitening is per process.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel
from transformers.utils import ModelOutput

from ..losses import clipped_value_loss, gae_advantages, masked_whiten, policy_loss
from ..losses.ppo import kl_penalized_rewards
from .base_trainer import BaseTrainer, TrainerInputs
from .model_utils import accepts_logits_to_keep, is_peft_model, load_trained_model, prepare_auxiliary_model
from .ppo_config import PPOConfig
from .reward_scoring import RewardScorer
from .rollout import OnlineTrainer, RolloutBatch
from .rollout_engine import SEQUENCE_KEYS


_PPO_TOKEN_KEYS = ("advantages", "returns", "old_values")


@dataclass
class PolicyAndValueOutput(ModelOutput):
    """Outputs of [`PolicyAndValueWrapper`]: the policy's (kept) logits, the value at the same positions, and the
    policy's MoE router term."""

    logits: torch.Tensor | None = None
    value_N: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None


class PolicyAndValueWrapper(torch.nn.Module):
    """The policy and the value model as one trained module, so one optimizer (and DDP) covers both.

    `forward` runs the policy and the value model's backbone + `score` head on the same sequences. With a boolean
    `logits_to_keep` mask both are returned only at the kept positions (the positions whose next token is a
    completion token): `V(s_t)` for the state before completion token `t`.
    """

    def __init__(self, policy: torch.nn.Module, value_model: PreTrainedModel):
        super().__init__()
        self.policy = policy
        self.value_model = value_model
        self.critic_backbone = getattr(value_model, value_model.base_model_prefix)
        self.config = policy.config
        self._policy_keeps = accepts_logits_to_keep(policy)

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=None, **kwargs: Any):
        kwargs.pop("use_cache", None)
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        keep = {"logits_to_keep": logits_to_keep} if self._policy_keeps and logits_to_keep is not None else {}
        outputs = self.policy(**inputs, **keep, **kwargs)
        logits = outputs.logits
        if logits_to_keep is not None and not self._policy_keeps:
            logits = logits[logits_to_keep]
        hidden_B_L_H = self.critic_backbone(**inputs).last_hidden_state
        value_B_L = self.value_model.score(hidden_B_L_H).squeeze(-1).float()
        value_N = value_B_L[logits_to_keep] if logits_to_keep is not None else value_B_L
        return PolicyAndValueOutput(logits, value_N, getattr(outputs, "aux_loss", None))

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        for model in (self.policy, self.value_model):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self) -> None:
        for model in (self.policy, self.value_model):
            model.gradient_checkpointing_disable()

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self.policy.generate(*args, **kwargs)

    generation_config = property(lambda self: getattr(self.policy, "generation_config", None))


class PPOTrainer(OnlineTrainer):
    """Trainer for Proximal Policy Optimization (PPO) of a language model against a reward model.

    Args:
        args ([`PPOConfig`]):
            Training configuration.
        processing_class (`PreTrainedTokenizerBase` or `None`):
            Tokenizer of the policy; `None` loads the policy's.
        model (`str` or `PreTrainedModel`):
            The policy (a causal LM), or its id / path (loaded in float32 unless `model_init_kwargs` sets `dtype`).
        ref_model (`PreTrainedModel`, `str` or `None`):
            The reference of the KL penalty; `None` makes a frozen copy of the policy, or under PEFT uses the policy
            with adapters disabled (`ref_adapter_name`: with that adapter). Must not be `model` itself.
        reward_model (`PreTrainedModel`, `str` or callable):
            A sequence classifier with one label (its logit is the score), its id / path, or (beyond the reference)
            a reward function `f(prompts, completions, completion_ids, **kwargs) -> list[float]`. Frozen, eval mode.
        train_dataset (`Dataset`):
            Prompt-only data (`prompt` column, standard or conversational).
        value_model (`PreTrainedModel` or `str`):
            A sequence classifier with one label whose `score` head gives `V(s_t)` at every position; trained.
        data_collator (`None`):
            Not used: the rollout reads the raw rows. A collator is an error.
        eval_dataset (`Dataset`, `dict[str, Dataset]` or `None`, *optional*, defaults to `None`):
            Evaluation prompts; the evaluation loss is the PPO loss on fresh completions.
        optimizers, callbacks:
            As in [`~transformers.Trainer`]; the optimizer covers the policy and the value model.
        peft_config (`PeftConfig` or `None`, *optional*, defaults to `None`):
            Adapters for the policy (the value model is trained in full).
    """

    _config_class = PPOConfig
    _running_state = {"episode": "_episode"}  # saved in checkpoints (see `OnlineTrainer`)
    _requires_train_dataset = True
    _CUMULATIVE_METRICS = BaseTrainer._CUMULATIVE_METRICS | {"episode"}
    _name = "PPO"

    def __init__(
        self,
        args: PPOConfig | None,
        processing_class: Any,
        model: str | torch.nn.Module,
        ref_model: str | torch.nn.Module | None,
        reward_model: Any,
        train_dataset: Any,
        value_model: str | torch.nn.Module,
        data_collator: Any = None,
        eval_dataset: Any = None,
        optimizers: tuple = (None, None),
        callbacks: list | None = None,
        peft_config: Any = None,
    ):
        if data_collator is not None:
            raise ValueError(
                "PPOTrainer reads the raw prompt rows (the rollout tokenizes them): pass no data_collator."
            )
        if reward_model is None or value_model is None:
            raise ValueError("PPOTrainer needs a reward_model and a value_model (sequence classifiers, num_labels=1).")
        self._value_model, self._episode = value_model, 0
        self._start_time: float | None = None
        super().__init__(
            model, reward_model, args, train_dataset, eval_dataset, processing_class, None, callbacks, optimizers,
            None, peft_config, ref_model=ref_model,
        )  # fmt: skip

    # ------------------------------------------------------------------------------------- skeleton steps
    def _validate(self, args: PPOConfig, inputs: TrainerInputs) -> None:
        super()._validate(args, inputs)
        if inputs.ref_model is not None and inputs.ref_model is inputs.model:
            raise ValueError(
                "ref_model is the policy itself: pass a separate copy, or ref_model=None for a frozen copy of the "
                "policy (the base model with adapters disabled under PEFT)."
            )
        if inputs.ref_model is not None and inputs.peft_config is not None:
            raise ValueError(
                "With peft_config the reference is the base model (adapters disabled): pass ref_model=None."
            )
        if (
            (args.model_adapter_name or args.ref_adapter_name)
            and inputs.peft_config is None
            and not is_peft_model(inputs.model)
        ):
            raise ValueError("model_adapter_name / ref_adapter_name select PEFT adapters: use a PEFT policy.")

    def _setup_peft(self, model: Any, peft_config: Any, args: PPOConfig) -> PolicyAndValueWrapper:
        """The policy (with adapters when `peft_config` is set) and the value model, wrapped as one module."""
        policy = super()._setup_peft(model, peft_config, args)
        if args.model_adapter_name is not None:
            policy.set_adapter(args.model_adapter_name)
        value_model = self._value_model
        if isinstance(value_model, str):
            value_model = load_trained_model(value_model, args, AutoModelForSequenceClassification, num_labels=1)
        for param in value_model.parameters():
            param.requires_grad_(True)
        return PolicyAndValueWrapper(policy, value_model)

    def _setup_auxiliary_models(self, model: PolicyAndValueWrapper, args: PPOConfig, inputs: TrainerInputs):
        """The reference (a frozen copy, the given model, or none under PEFT) and the reward scorer."""
        ref_model = self._setup_ref(model.policy, args, inputs.ref_model)
        reward = self._reward_funcs
        if isinstance(reward, str | torch.nn.Module):
            reward = prepare_auxiliary_model(reward, args, auto_class=AutoModelForSequenceClassification)
        return {"ref_model": ref_model, "reward_scorer": RewardScorer([reward])}

    def _after_init(self, auxiliary_models: dict[str, Any]) -> None:
        super()._after_init(auxiliary_models)
        stop_token_id = self.args.stop_token_id
        if stop_token_id is not None and stop_token_id not in self.generation_backend.eos_token_ids:
            # Generation ends at the stop token too, so the reward model scores the truncated completion.
            self.generation_backend.eos_token_ids = [*self.generation_backend.eos_token_ids, stop_token_id]

    def _resolve_options(self, model: Any, processing_class: Any, args: PPOConfig, inputs: TrainerInputs) -> None:
        """`total_episodes` (default: every prompt `num_train_epochs` times) -> `num_total_batches` and `max_steps`."""
        dataset = inputs.train_dataset
        if args.total_episodes is None and dataset is not None:
            args.num_total_batches = max(1, int(args.num_train_epochs * len(dataset)) // args.batch_size)
        elif args.total_episodes is not None:
            args.max_steps = args.num_total_batches * args.num_ppo_epochs

    # --------------------------------------------------------------------------------------------- rollout
    def _uses_reference(self, args: PPOConfig) -> bool:
        return True  # the KL of the rewards and `objective/kl` are measured even when kl_coef = 0

    def _needs_old_logps(self, mode: str) -> bool:
        return False  # computed with the values in one pass (`_rollout_forward`)

    def _unwrapped_policy(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(
            self.model
        ).policy  # not the value model (`ref_adapter_name`: its adapter)

    @torch.no_grad()
    def _rollout_forward(self, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs of the generating policy and values `[B, C]`, `local_rollout_forward_batch_size` rows a pass."""
        step, mask_B_C = self.args.local_rollout_forward_batch_size, tensors["completion_mask"]
        logps, values = [], []
        for start in range(0, mask_B_C.shape[0], step):
            rows = {key: tensors[key][start : start + step] for key in SEQUENCE_KEYS}
            logps_B_C, _, outputs = self._completion_logps(self.model, rows)
            logps.append(logps_B_C.float())
            values.append(_scatter(outputs.value_N, rows["completion_mask"]))
        return torch.cat(logps), torch.cat(values)

    def _compute_advantages(self, rewards_B_F: torch.Tensor, rollout: RolloutBatch, mode: str) -> torch.Tensor:
        """Scores -> per-token KL rewards -> GAE -> whitened advantages (stored for `_extra_rollout_tensors`);
        returns every process's mean advantage per completion (for the completions table)."""
        args, tensors = self.args, rollout.tensors
        mask_B_C, ids_B_C = tensors["completion_mask"], tensors["completion_ids"]
        scores_B = torch.nan_to_num(self.rollout.local(rewards_B_F[:, 0]), nan=0.0)
        eos_B_C = (ids_B_C == self.rollout.tokenizer.eos_token_id) & mask_B_C.bool()
        if args.missing_eos_penalty is not None:
            scores_B = scores_B - args.missing_eos_penalty * (~eos_B_C.any(dim=1)).float()
        old_logps_B_C, old_values_B_C = self._rollout_forward(tensors)
        ref_logps_B_C = tensors["ref_logps"]
        rewards_B_C, kl_B_C = kl_penalized_rewards(
            scores_B, old_logps_B_C, ref_logps_B_C, mask_B_C, args.kl_coef, args.kl_estimator
        )
        if args.whiten_rewards:
            rewards_B_C = masked_whiten(rewards_B_C, mask_B_C, shift_mean=False)
        advantages_B_C, returns_B_C = gae_advantages(rewards_B_C, old_values_B_C, mask_B_C, args.gamma, args.lam)
        advantages_B_C = masked_whiten(advantages_B_C, mask_B_C)
        self._pending = {"old_logps": old_logps_B_C, "old_values": old_values_B_C, "advantages": advantages_B_C,
                         "returns": returns_B_C}  # fmt: skip
        self._log_rollout(scores_B, kl_B_C, old_logps_B_C, eos_B_C, mode)
        sequence_advantage_B = advantages_B_C.sum(1) / mask_B_C.sum(1).clamp(min=1)
        return self.accelerator.gather(sequence_advantage_B)

    def _extra_rollout_tensors(self, rollout: RolloutBatch, mode: str) -> dict[str, torch.Tensor]:
        pending, self._pending = self._pending, {}
        return pending

    def _log_rollout(self, scores_B, kl_B_C, logps_B_C, eos_B_C, mode: str) -> None:
        gather = self.accelerator.gather
        kl_B, entropy_B = gather(kl_B_C.sum(1)), gather(-logps_B_C.sum(1))
        non_score_B = -self.args.kl_coef * kl_B
        scores_B = gather(scores_B.float())
        for name, value in (("kl", kl_B), ("entropy", entropy_B), ("non_score_reward", non_score_B),
                            ("rlhf_reward", scores_B + non_score_B), ("scores", scores_B)):  # fmt: skip
            self.log_metric(f"objective/{name}", value.mean(), mode)
        self.log_metric("val/num_eos_tokens", gather(eos_B_C.sum().reshape(1)).sum().float(), mode)
        if mode == "train":
            now = time.perf_counter()
            self._start_time = self._start_time or now
            self._episode += self.args.batch_size
            self.log_metric("episode", self._episode, mode)
            elapsed = now - self._start_time
            self.log_metric("eps", self._episode / elapsed if elapsed > 0 else 0.0, mode)

    # ------------------------------------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args, mode = self.args, self._loss_mode(model, return_outputs)
        mask_B_C = inputs["completion_mask"]
        width = mask_B_C.shape[1]  # the buffer trims trailing padding of the known per-token keys only
        advantages_B_C, returns_B_C, old_values_B_C = (inputs[key][:, :width] for key in _PPO_TOKEN_KEYS)
        logps_B_C, entropies_B_C, outputs = self._completion_logps(model, inputs, with_entropy=True)
        values_B_C = _scatter(outputs.value_N, mask_B_C)
        old_logps_B_C = self._old_logps(inputs, mode)
        pg_loss, pg_metrics = policy_loss(
            logps_B_C, old_logps_B_C, advantages_B_C, mask_B_C, loss_type="bnpo", epsilon=args.cliprange
        )
        vf_loss, vf_clipfrac = clipped_value_loss(
            values_B_C, old_values_B_C, returns_B_C, mask_B_C, args.cliprange_value
        )
        loss = pg_loss + args.vf_coef * vf_loss
        log_ratio_B_C = logps_B_C.detach() - (logps_B_C.detach() if old_logps_B_C is None else old_logps_B_C)
        ratio_N = log_ratio_B_C[mask_B_C.bool()].exp()
        for name, value in (
            ("policy/approxkl_avg", 0.5 * log_ratio_B_C[mask_B_C.bool()].square().mean()),
            ("policy/clipfrac_avg", pg_metrics["clip_ratio/region_mean"]),
            ("loss/policy_avg", pg_loss), ("loss/value_avg", vf_loss), ("val/clipfrac_avg", vf_clipfrac),
            ("val/ratio", ratio_N.mean()), ("val/ratio_var", ratio_N.var() if ratio_N.numel() > 1 else ratio_N.sum() * 0),
        ):  # fmt: skip
            self._log_gathered(name, torch.nan_to_num(value.detach().float()), mode)
        self.log_metric("policy/entropy_avg", self._log_entropy(entropies_B_C, mask_B_C, mode), mode)
        if mode == "train":
            self.log_metric("lr", self._get_learning_rate(), mode)
        return self._scale_loss(loss, False, mode) + self._aux_loss(outputs, mode)

    # ----------------------------------------------------------------------------------- saving / resuming
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the policy only (with its tokenizer and model card); checkpoints also hold `value_model/`."""
        wrapper = self.model
        self.model = self.accelerator.unwrap_model(wrapper).policy
        try:
            super().save_model(output_dir, _internal_call)
        finally:
            self.model = wrapper
        if _internal_call and self.args.should_save:
            value_model = self.accelerator.unwrap_model(wrapper).value_model
            value_model.save_pretrained(os.path.join(output_dir or self.args.output_dir, "value_model"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        from safetensors.torch import load_file

        wrapper = self.accelerator.unwrap_model(self.model)
        super()._load_from_checkpoint(resume_from_checkpoint, model=wrapper.policy)
        value_file = os.path.join(resume_from_checkpoint, "value_model", "model.safetensors")
        if not os.path.isfile(value_file):
            raise ValueError(
                f"{resume_from_checkpoint} has no value_model/model.safetensors: it is not a PPO checkpoint."
            )
        wrapper.value_model.load_state_dict(load_file(value_file), strict=False)

    def _derived_quantities(self) -> dict[str, Any]:
        args = self.args
        rows = {k: v for k, v in super()._derived_quantities().items() if "generation" not in k and "passes" not in k}
        rows["rollout batch / minibatch (prompts)"] = f"{args.batch_size} / {args.mini_batch_size}"
        rows["PPO epochs = optimizer steps per rollout batch"] = args.num_ppo_epochs
        rows["rollout batches (num_total_batches)"] = args.num_total_batches
        rows["KL"] = f"{args.kl_estimator} × {args.kl_coef}"
        return rows


def _scatter(value_N: torch.Tensor, mask_B_C: torch.Tensor) -> torch.Tensor:
    """Values at the completion positions (in `completion_ids[mask]` order) as a `[B, C]` tensor, 0 elsewhere."""
    mask = mask_B_C.bool()
    return value_N.new_zeros(mask.shape).masked_scatter(mask, value_N)
