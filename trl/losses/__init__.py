"""Every training objective of trl as a pure function of tensors (no Trainer, accelerate or datasets).

- `preference`: the paired DPO family (`PREFERENCE_LOSSES`, `preference_loss`), f-divergence scores, SimPO,
  `combine_losses` for multi-loss training;
- `odds_ratio`: ORPO's odds-ratio term;
- `unpaired`: KTO, APO-zero (unpaired) and BCO;
- `reward`: the Bradley-Terry loss of reward modelling;
- `sequence`: per-token to sequence log-probs (sum / mean), LD-DPO and WPO helpers.

See docs/losses.md for the formulas, papers and which trainer uses what.
"""

from .odds_ratio import OddsRatioLossOutput, log1mexp, odds_ratio_loss
from .preference import (
    F_DIVERGENCE_LOSS_TYPES,
    F_DIVERGENCE_TYPES,
    PREFERENCE_LOSSES,
    PreferenceLossOutput,
    alphapo_reward,
    aot_loss,
    aot_pair_loss,
    apo_down_loss,
    apo_zero_loss,
    bco_pair_loss,
    capped_exp,
    combine_losses,
    discopop_loss,
    exo_pair_loss,
    f_divergence_scores,
    hinge_loss,
    ipo_loss,
    nca_pair_loss,
    preference_loss,
    preference_loss_options,
    robust_loss,
    sft_loss,
    sigmoid_loss,
    sigmoid_norm_loss,
    simpo_loss,
    sppo_hard_loss,
)
from .reward import bradley_terry_loss
from .sequence import ld_dpo_logps, sequence_logps, wpo_pair_weights, wpo_sequence_weights
from .unpaired import (
    UnpairedLossOutput,
    apo_zero_unpaired_loss,
    bco_loss,
    bco_udm_weights,
    kto_kl_estimate,
    kto_loss,
)


__all__ = [
    "F_DIVERGENCE_LOSS_TYPES",
    "F_DIVERGENCE_TYPES",
    "PREFERENCE_LOSSES",
    "OddsRatioLossOutput",
    "PreferenceLossOutput",
    "UnpairedLossOutput",
    "alphapo_reward",
    "aot_loss",
    "aot_pair_loss",
    "apo_down_loss",
    "apo_zero_loss",
    "apo_zero_unpaired_loss",
    "bco_loss",
    "bco_pair_loss",
    "bco_udm_weights",
    "bradley_terry_loss",
    "capped_exp",
    "combine_losses",
    "discopop_loss",
    "exo_pair_loss",
    "f_divergence_scores",
    "hinge_loss",
    "ipo_loss",
    "kto_kl_estimate",
    "kto_loss",
    "ld_dpo_logps",
    "log1mexp",
    "nca_pair_loss",
    "odds_ratio_loss",
    "preference_loss",
    "preference_loss_options",
    "robust_loss",
    "sequence_logps",
    "sft_loss",
    "sigmoid_loss",
    "sigmoid_norm_loss",
    "simpo_loss",
    "sppo_hard_loss",
    "wpo_pair_weights",
    "wpo_sequence_weights",
]
