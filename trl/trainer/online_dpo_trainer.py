"""Online DPO (arXiv 2402.04792): direct preference optimisation on pairs the policy samples during training.

For each prompt `x` two completions are sampled from the current policy and compared, by reward functions / reward
models (the higher weighted score, minus `missing_eos_penalty` without EOS, wins; a tie goes to the first) or by a
pairwise judge (conversations rendered with a neutral template). With `y_c` the preferred and `y_r` the other one,
and summed completion log-probs,

    Δ = (log π_θ(y_c|x) − log π_ref(y_c|x)) − (log π_θ(y_r|x) − log π_ref(y_r|x))
    sigmoid:  L = −log σ(β·Δ)        ipo:  L = (Δ − 1/(2β))²

averaged over the pairs of the micro-batch (pairs whose judgement failed are left out). β may change per epoch
(`beta` list). Log-probs are computed at the sampling temperature, as in the reference implementation; the reference
is a frozen copy of the initial policy, an explicit `ref_model`, or the PEFT base model with adapters disabled. The
rollout (generation, scoring, reference log-probs, buffer, resume) is the shared one of `trl.trainer.rollout`.
"""

from __future__ import annotations

from typing import Any

import torch

from ..losses import preference_loss, sequence_logps
from .online_dpo_config import OnlineDPOConfig
from .online_preference_trainer import OnlinePreferenceTrainer


class OnlineDPOTrainer(OnlinePreferenceTrainer):
    """Trainer for Online DPO.

    Args:
        model (`str`, `PreTrainedModel` or `PeftModel`):
            Model id / local path (loaded in float32 unless `model_init_kwargs` sets `dtype`), or a causal LM.
        ref_model (`str`, `PreTrainedModel` or `None`, *optional*, defaults to `None`):
            The reference; `None` uses a frozen copy of `model` (the base model with adapters disabled under PEFT).
        reward_funcs (`RewardFunc`, `list[RewardFunc]` or `None`, *optional*, defaults to `None`):
            Reward functions, reward models or their ids; exactly one of `reward_funcs` and `judge` is needed (with
            neither, `args.reward_model_path` is used when set).
        judge ([`~trl.judges.BasePairwiseJudge`] or `None`, *optional*, defaults to `None`):
            A pairwise judge, instead of reward functions.
        args ([`OnlineDPOConfig`] or `None`, *optional*, defaults to `None`):
            Training configuration; `None` uses the defaults with `output_dir="<model>-OnlineDPO"`.
        data_collator (`None`, *optional*, defaults to `None`):
            Not used: prompts are tokenized by the rollout (an error when given).
        train_dataset (`Dataset`):
            Prompt-only data (`prompt` column), standard or conversational; other columns go to reward functions.
        eval_dataset (`Dataset`, `IterableDataset`, `dict[str, Dataset]` or `None`, *optional*, defaults to `None`):
            Evaluation prompts.
        processing_class (`PreTrainedTokenizerBase` or `None`, *optional*, defaults to `None`):
            Defaults to the tokenizer of `model`.
        reward_processing_classes (`PreTrainedTokenizerBase`, `list` or `None`, *optional*, defaults to `None`):
            Tokenizers of the reward models, aligned with `reward_funcs`.
        peft_config (`PeftConfig` or `None`, *optional*, defaults to `None`):
            Adapter configuration.
        compute_metrics, preprocess_logits_for_metrics (`None`):
            Not used by online trainers (an error when given).
        callbacks, optimizers:
            As in [`~transformers.Trainer`].
        reward_model, reward_processing_class:
            Deprecated aliases of `reward_funcs` and `reward_processing_classes`.
    """

    _config_class = OnlineDPOConfig
    _name = "Online DPO"

    def _log_scores(self, scores_P_2: torch.Tensor, mode: str) -> None:
        valid_P = self._valid_pairs(scores_P_2)
        chosen_P, rejected_P = self._chosen_rejected(scores_P_2, scores_P_2[:, 0] >= scores_P_2[:, 1])
        self.log_metric("objective/scores", scores_P_2[valid_P].mean() if valid_P.any() else 0.0, mode)
        margin = (chosen_P - rejected_P)[valid_P]
        self.log_metric("objective/scores_margin", margin.mean() if valid_P.any() else 0.0, mode)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = self._loss_mode(model, return_outputs)
        logps_B, logps_B_C, outputs = self._sequence_logps(model, inputs)
        ref_logps_B = sequence_logps(inputs["ref_logps"], inputs["completion_mask"])
        scores_P_2 = self._pairs(inputs["advantages"])
        first_chosen_P = scores_P_2[:, 0] >= scores_P_2[:, 1]
        chosen_P, rejected_P = self._chosen_rejected(self._pairs(logps_B), first_chosen_P)
        ref_chosen_P, ref_rejected_P = self._chosen_rejected(self._pairs(ref_logps_B), first_chosen_P)
        beta = self.beta
        output = preference_loss(self.args.loss_type, chosen_P, rejected_P, ref_chosen_P, ref_rejected_P, beta=beta)
        valid_P = self._valid_pairs(scores_P_2)
        loss = self._mean_over_pairs(output.losses, valid_P, mode) + self._aux_loss(outputs, mode)
        self._log_loss_metrics(output, logps_B, ref_logps_B, scores_P_2, chosen_P, rejected_P, valid_P, mode)
        return loss

    def _log_loss_metrics(self, output, logps_B, ref_logps_B, scores_P_2, chosen_P, rejected_P, valid_P, mode):
        kl_B = (logps_B - ref_logps_B).detach()
        non_score_B = -self.beta * kl_B
        rlhf_P_2 = torch.nan_to_num(scores_P_2) + self._pairs(non_score_B)
        self._log_means(
            {
                "objective/kl": kl_B,
                "objective/entropy": -logps_B.detach(),
                "objective/non_score_reward": non_score_B,
                "objective/rlhf_reward": rlhf_P_2[valid_P],
                "rewards/chosen": output.chosen_rewards[valid_P],
                "rewards/rejected": output.rejected_rewards[valid_P],
                "rewards/accuracies": (output.margins > 0).float()[valid_P],
                "rewards/margins": output.margins[valid_P],
                "logps/chosen": chosen_P.detach()[valid_P],
                "logps/rejected": rejected_P.detach()[valid_P],
            },
            mode,
        )
        self.log_metric("beta", self.beta, mode)

    def _derived_quantities(self) -> dict[str, Any]:
        rows = super()._derived_quantities()
        rows["beta (per epoch)"] = self.args.beta
        return rows
