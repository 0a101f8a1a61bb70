"""Nash-MD (Nash Learning from Human Feedback, arXiv 2312.00886): mirror descent towards the Nash equilibrium of
the preference game, against a geometric mixture of the policy and the reference.

For each prompt `x`, `y ~ π_θ` and `y' ~ π_mix ∝ π_θ^(1−λ)·π_ref^λ` (`λ = mixture_coef`, per epoch; sampled by
[`~trl.models.geometric_mixture.GeometricMixtureWrapper`]). The preference probability `p = P(y ≻ y')` is
`σ(r(y) − r(y'))` with reward functions / models (after `missing_eos_penalty`), or the judge's probability. The loss
on the policy's completions, with summed log-probs, is

    L = mean [ β·Σ_t sg(log π_θ(y_t) − log π_ref(y_t))·log π_θ(y_t) − (p − ½)·Σ_t log π_θ(y_t) ]

(`trl.losses.nash_md_loss`): REINFORCE for the KL to the reference plus REINFORCE for the preference with the
baseline ½. Only `y` is trained on (one policy forward per pair). A pair whose judgement failed keeps only its KL term
(`p = ½`). Log-probs use the sampling temperature. The rollout is the shared one of `trl.trainer.rollout`.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from ..losses import nash_md_loss, preference_probability, sequence_logps
from ..models.geometric_mixture import GeometricMixtureWrapper
from .nash_md_config import NashMDConfig
from .online_dpo_trainer import OnlineDPOTrainer
from .rollout_engine import SEQUENCE_KEYS


class NashMDTrainer(OnlineDPOTrainer):
    """Trainer for Nash-MD. Arguments as in [`OnlineDPOTrainer`], with a [`NashMDConfig`]; a judge is asked for
    probabilities (`return_scores=True`)."""

    _config_class = NashMDConfig
    _name = "Nash-MD"
    _has_pair_model = True
    _judge_scores = True

    @property
    def mixture_coef(self) -> float:
        """λ of the current epoch."""
        return self._coefficient(self.args.mixture_coef)

    def _pair_model(self, policy: Any) -> contextlib.AbstractContextManager:
        ref_model = self.accelerator.unwrap_model(self.ref_model) if self.ref_model is not None else None
        return contextlib.nullcontext(GeometricMixtureWrapper(policy, ref_model, None, self.mixture_coef))

    def _ref_logps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Reference log-probs of the policy's completions (even rows) only: the loss never reads those of the
        mixture's completions, whose rows stay 0 (half the reference forward passes)."""
        policy_rows = {key: batch[key][0::2] for key in SEQUENCE_KEYS}
        ref_logps_P_C = super()._ref_logps(policy_rows)
        ref_logps_B_C = ref_logps_P_C.new_zeros(batch["completion_ids"].shape[0], ref_logps_P_C.shape[1])
        ref_logps_B_C[0::2] = ref_logps_P_C
        return ref_logps_B_C

    def _probabilities(self, scores_P_2: torch.Tensor) -> torch.Tensor:
        """`P(y ≻ y')` per pair: the judge's probability, or Bradley-Terry on the scores; ½ where unscored."""
        if self._judge is not None:
            probabilities_P = scores_P_2[:, 0]
        else:
            probabilities_P = preference_probability(scores_P_2[:, 0], scores_P_2[:, 1])
        return torch.nan_to_num(probabilities_P, nan=0.5)

    def _log_scores(self, scores_P_2: torch.Tensor, mode: str) -> None:
        valid_P = self._valid_pairs(scores_P_2)
        probabilities_P = self._probabilities(scores_P_2)[valid_P]
        self._log_means(
            {
                "rewards/chosen": scores_P_2[valid_P, 0],
                "rewards/rejected": scores_P_2[valid_P, 1],
                "rewards/probabilities": probabilities_P,
                "rewards/accuracies": (probabilities_P > 0.5).float(),
                "rewards/margins": scores_P_2[valid_P, 0] - scores_P_2[valid_P, 1],
            },
            mode,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = self._loss_mode(model, return_outputs)
        # Only the policy's completions (the first of each pair) are trained on.
        policy_rows = {key: inputs[key][0::2] for key in (*SEQUENCE_KEYS, "ref_logps")}
        mask_P_C = policy_rows["completion_mask"]
        logps_P_C, _, outputs = self._completion_logps(model, policy_rows)
        probabilities_P = self._probabilities(self._pairs(inputs["advantages"]))
        beta = self.beta
        loss, metrics = nash_md_loss(logps_P_C, policy_rows["ref_logps"], mask_P_C, probabilities_P, beta)
        loss = self._scale_loss(loss, False, mode) + self._aux_loss(outputs, mode)
        self._log_means(
            {
                "loss/kl": metrics["kl"],
                "objective/entropy": metrics["entropy"],
                "loss/score": metrics["score"],
                "logps/chosen": sequence_logps(logps_P_C.detach(), mask_P_C),
                "logps/rejected": sequence_logps(policy_rows["ref_logps"], mask_P_C),
            },
            mode,
        )
        self.log_metric("beta", beta, mode)
        self.log_metric("mixture_coef", self.mixture_coef, mode)
        return loss

    def _derived_quantities(self) -> dict[str, Any]:
        rows = super()._derived_quantities()
        rows["loss type"] = "Nash-MD (REINFORCE KL + preference)"
        rows["mixture_coef (per epoch)"] = self.args.mixture_coef
        return rows
