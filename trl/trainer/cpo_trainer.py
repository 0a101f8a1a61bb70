"""Contrastive Preference Optimization (arXiv 2401.08417), with SimPO, CPO-SimPO and AlphaPO as variants.

Reference-free objective, per batch of B pairs (x, y_c, y_r):

    L = mean_pairs(ℓ(s_c, s_r)) + cpo_alpha · NLL(y_c) + router_aux_loss_coef · aux_loss

- s is the policy's score of a completion: log π(y|x), the **sum** over its tokens for `sigmoid` and `hinge`, the
  **mean** (length-normalised) for `ipo` and `simpo`; with `alpha ≠ 0` it is reshaped to (1 − e^{−α·s})/α (AlphaPO,
  arXiv 2501.03884).
- ℓ is the function of that name in `trl.losses` with the reference log-probs set to 0; with Δ = s_c − s_r and
  ε = `label_smoothing`: `sigmoid` −(1−ε)·logσ(βΔ) − ε·logσ(−βΔ); `hinge` relu(1 − βΔ); `ipo` (Δ − 1/(2β))²;
  `simpo` (arXiv 2405.14734) the sigmoid form of βΔ − γ with γ = `simpo_gamma`.
- NLL(y_c) is the mean negative log-likelihood over every chosen completion token of the micro-batch (the
  behaviour-cloning term; `cpo_alpha = 0` drops it: SimPO, AlphaPO).
- The aux-loss coefficient is the MoE model config's `router_aux_loss_coef` (when it returns router logits).

Metrics: `rewards/chosen|rejected` = β·s (detached), `rewards/accuracies`, `rewards/margins`, `logps/*` (the
scores before the AlphaPO shape: sums, or means for `ipo`/`simpo`), `logits/*` (mean logit over the completion
tokens; the 0.x trainer averaged over every position, prompt and padding included), `nll_loss`, `aux_loss`.

Chosen and rejected rows go through the model in one forward pass (`trl.trainer.paired_forward`); the data are
tokenised by `trl.trainer.preference_data` and collated by `DataCollatorForPreference`.
"""

from __future__ import annotations

import torch

from ..losses import alphapo_reward, preference_loss
from .cpo_config import CPOConfig
from .paired_forward import PairedScores, log_paired_metrics
from .paired_preference_trainer import _ReferenceFreePairedTrainer


# The loss types that score completions by their length-normalised log-probs.
_LENGTH_NORMALISED = ("ipo", "simpo")


class CPOTrainer(_ReferenceFreePairedTrainer):
    """Trainer for Contrastive Preference Optimization and its SimPO / CPO-SimPO / AlphaPO variants (`loss_type`).

    Takes the arguments of `trl.trainer.paired_preference_trainer._ReferenceFreePairedTrainer`, with `args` a
    [`CPOConfig`] (`None`: `CPOConfig(output_dir="<model>-CPO")`).
    """

    _name = "CPO"
    _config_class = CPOConfig

    def _pair_loss(self, scores: PairedScores, mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        args = self.args
        normalised = args.loss_type in _LENGTH_NORMALISED
        chosen = scores.chosen_mean_logps if normalised else scores.chosen_logps
        rejected = scores.rejected_mean_logps if normalised else scores.rejected_logps
        output = preference_loss(
            args.loss_type,
            alphapo_reward(chosen, args.alpha),
            alphapo_reward(rejected, args.alpha),
            beta=args.beta,
            label_smoothing=args.label_smoothing,
            simpo_gamma=args.simpo_gamma,
        )
        rewards = (output.chosen_rewards, output.rejected_rewards)
        log_paired_metrics(self, scores, rewards, mode, mean_logps=normalised, log_nll=True)
        return output.losses.mean() + args.cpo_alpha * scores.nll_loss, *rewards

    def _loss_description(self) -> str:
        args = self.args
        score = "mean" if args.loss_type in _LENGTH_NORMALISED else "summed"
        shape = f", AlphaPO alpha={args.alpha:g}" if args.alpha else ""
        return f"{args.loss_type} ({score} log-probs{shape}) + {args.cpo_alpha:g}·NLL(chosen)"
