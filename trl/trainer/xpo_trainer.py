"""XPO (Exploratory Preference Optimization, arXiv 2405.21046): online DPO against the reference's samples, with an
exploration bonus.

For each prompt `x`, `y ~ π_θ` and `y_ref ~ π_ref` are compared, by reward functions / models (the policy's
completion wins ties, after `missing_eos_penalty`) or by a pairwise judge; the winner is `y_c`, the other `y_r`.
With summed log-probs and `Δ = (log π_θ(y_c) − log π_ref(y_c)) − (log π_θ(y_r) − log π_ref(y_r))`,

    L = mean [ dpo(Δ) + α·Σ_t log π_θ(y_ref,t) ],   dpo = −logσ(βΔ) (sigmoid) or (Δ − 1/(2β))² (ipo)

(`trl.losses.xpo_loss`; `α` and `β` per epoch). Minimising `α·log π_θ(y_ref)` moves probability away from what the
reference would say: the exploration bonus. Pairs whose judgement failed are left out. Log-probs use the sampling
temperature. The rollout is the shared one of `trl.trainer.rollout`.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from ..losses import sequence_logps, xpo_loss
from .online_dpo_trainer import OnlineDPOTrainer
from .xpo_config import XPOConfig


class XPOTrainer(OnlineDPOTrainer):
    """Trainer for XPO. Arguments as in [`OnlineDPOTrainer`], with an [`XPOConfig`]."""

    _config_class = XPOConfig
    _name = "XPO"
    _has_pair_model = True

    @property
    def alpha(self) -> float:
        """α of the current epoch."""
        return self._coefficient(self.args.alpha)

    def _pair_model(self, policy: Any) -> contextlib.AbstractContextManager:
        return self._reference_model()

    def _log_scores(self, scores_P_2: torch.Tensor, mode: str) -> None:
        valid_P = self._valid_pairs(scores_P_2)
        self._log_means(
            {
                "objective/model_scores": scores_P_2[valid_P, 0],
                "objective/ref_scores": scores_P_2[valid_P, 1],
                "objective/scores_margin": scores_P_2[valid_P, 0] - scores_P_2[valid_P, 1],
            },
            mode,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = self._loss_mode(model, return_outputs)
        logps_B, _, outputs = self._sequence_logps(model, inputs)
        logps_P_2 = self._pairs(logps_B)
        ref_logps_P_2 = self._pairs(sequence_logps(inputs["ref_logps"], inputs["completion_mask"]))
        scores_P_2 = self._pairs(inputs["advantages"])
        first_chosen_P = scores_P_2[:, 0] >= scores_P_2[:, 1]
        chosen_P, rejected_P = self._chosen_rejected(logps_P_2, first_chosen_P)
        ref_chosen_P, ref_rejected_P = self._chosen_rejected(ref_logps_P_2, first_chosen_P)
        beta, alpha = self.beta, self.alpha
        losses_P, dpo = xpo_loss(chosen_P, rejected_P, ref_chosen_P, ref_rejected_P, logps_P_2[:, 1],
                                 beta=beta, alpha=alpha, loss_type=self.args.loss_type)  # fmt: skip
        valid_P = self._valid_pairs(scores_P_2)
        loss = self._mean_over_pairs(losses_P, valid_P, mode) + self._aux_loss(outputs, mode)
        self._log_means(
            {
                "loss/dpo": dpo.losses.detach()[valid_P],
                "loss/xpo": (alpha * logps_P_2[:, 1].detach())[valid_P],
                "rewards/chosen": dpo.chosen_rewards[valid_P],
                "rewards/rejected": dpo.rejected_rewards[valid_P],
                "rewards/margins": dpo.margins[valid_P],
                "rewards/accuracies": (dpo.margins > 0).float()[valid_P],
                "logps/chosen": chosen_P.detach()[valid_P],
                "logps/rejected": rejected_P.detach()[valid_P],
                "objective/kl": (logps_P_2[:, 0] - ref_logps_P_2[:, 0]).detach(),
                "objective/entropy": -logps_P_2[:, 0].detach(),
            },
            mode,
        )
        self.log_metric("alpha", alpha, mode)
        self.log_metric("beta", beta, mode)
        return loss

    def _derived_quantities(self) -> dict[str, Any]:
        rows = super()._derived_quantities()
        rows["alpha (per epoch)"] = self.args.alpha
        return rows
