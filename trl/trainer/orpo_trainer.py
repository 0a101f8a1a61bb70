"""Odds Ratio Preference Optimization (arXiv 2403.07691): supervised fine-tuning with an odds-ratio penalty.

Reference-free objective, per batch of B pairs (x, y_c, y_r):

    L = NLL(y_c) + β · mean_pairs(−log σ(log_odds)) + router_aux_loss_coef · aux_loss

- ℓ is the **length-normalised** log-prob log π(y|x) / |y| of a completion, and
  log_odds = (ℓ_c − ℓ_r) − (log(1 − e^{ℓ_c}) − log(1 − e^{ℓ_r})), the log of odds(y_c)/odds(y_r) with
  odds = P/(1 − P) and P = e^ℓ (`trl.losses.odds_ratio_loss`, computed with `log1mexp`). β is the paper's λ.
- NLL(y_c) is the mean negative log-likelihood over every chosen completion token of the micro-batch (prompt and
  padding excluded).
- The aux-loss coefficient is the MoE model config's `router_aux_loss_coef` (when it returns router logits).

Metrics: `rewards/chosen|rejected` = β·ℓ (detached), `rewards/accuracies`, `rewards/margins`, `logps/*` (ℓ),
`logits/*` (mean logit over the completion tokens), `nll_loss`, `log_odds_ratio` = mean log σ(log_odds),
`log_odds_chosen` = mean log_odds, `aux_loss`.

Chosen and rejected rows go through the model in one forward pass (`trl.trainer.paired_forward`); the data are
tokenised by `trl.trainer.preference_data` and collated by `DataCollatorForPreference`.
"""

from __future__ import annotations

import torch

from ..losses import odds_ratio_loss
from .orpo_config import ORPOConfig
from .paired_forward import PairedScores, log_paired_metrics
from .paired_preference_trainer import _ReferenceFreePairedTrainer


class ORPOTrainer(_ReferenceFreePairedTrainer):
    """Trainer for Odds Ratio Preference Optimization: the NLL of the chosen completions plus β times the odds-ratio
    loss, without reference model.

    Takes the arguments of `trl.trainer.paired_preference_trainer._ReferenceFreePairedTrainer`, with `args` a
    [`ORPOConfig`] (`None`: `ORPOConfig(output_dir="<model>-ORPO")`).
    """

    _name = "ORPO"
    _config_class = ORPOConfig

    def _pair_loss(self, scores: PairedScores, mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        output = odds_ratio_loss(scores.chosen_mean_logps, scores.rejected_mean_logps, self.args.beta)
        rewards = (output.chosen_rewards, output.rejected_rewards)
        log_paired_metrics(self, scores, rewards, mode, mean_logps=True, log_nll=True)
        log_odds = self.accelerator.gather_for_metrics(torch.stack([output.log_odds_ratio, output.log_odds_chosen], 1))
        log_odds_ratio, log_odds_chosen = log_odds.float().mean(dim=0).tolist()
        self.log_metric("log_odds_ratio", log_odds_ratio, mode)
        self.log_metric("log_odds_chosen", log_odds_chosen, mode)
        return scores.nll_loss + output.losses.mean(), *rewards

    def _loss_description(self) -> str:
        return f"NLL(chosen) + {self.args.beta:g}·odds-ratio (mean log-probs)"
