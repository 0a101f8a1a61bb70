"""Configuration of [`CPOTrainer`]."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from .base_config import _ReferenceFreePairedConfig


# `alphapo` is accepted by the config only, which turns it into `simpo` without the NLL term (AlphaPO = SimPO with a
# reshaped reward).
CPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "simpo")
# The loss types that read `label_smoothing` (the others have no label-flip form).
_SMOOTHED_LOSS_TYPES = ("sigmoid", "simpo")


@dataclass
class CPOConfig(_ReferenceFreePairedConfig):
    r"""
    Configuration class for the [`CPOTrainer`] (Contrastive Preference Optimization and its SimPO / AlphaPO variants).

    Only the parameters specific to CPO are listed here; see [`~transformers.TrainingArguments`] for the rest. The
    model and data parameters shared with [`ORPOConfig`] are `model_init_kwargs`, `trust_remote_code`,
    `is_encoder_decoder`, `disable_dropout`, `dataset_num_proc`, `max_prompt_length` (default `None`),
    `max_completion_length`, `max_length` (default `1024`), `truncation_mode` (default `"keep_end"`: long prompts keep
    their end), `padding_value`, `label_pad_token_id` and `generate_during_eval`, documented in
    `trl.trainer.orpo_config._ReferenceFreePairedConfig`.

    > Parameters that control the loss

    loss_type (`str`, *optional*, defaults to `"sigmoid"`):
        `"sigmoid"` (CPO), `"hinge"` (SLiC / RSO), `"ipo"`, `"simpo"` (SimPO; CPO-SimPO with `cpo_alpha > 0`) or
        `"alphapo"`, which is read as `"simpo"` with `cpo_alpha=0` (set `alpha` as well). `"ipo"` and `"simpo"` score
        sequences by their length-normalised log-probs, the others by the summed log-probs.
    beta (`float`, *optional*, defaults to `0.1`):
        Inverse temperature β of the preference loss (IPO's τ, the hinge's inverse margin).
    label_smoothing (`float`, *optional*, defaults to `0.0`):
        Probability ε in [0, 0.5] that a preference label is flipped (`"sigmoid"` and `"simpo"` only).
    cpo_alpha (`float`, *optional*, defaults to `1.0`):
        Weight of the NLL of the chosen completions (the behaviour-cloning term of CPO); `0` drops it (SimPO).
    simpo_gamma (`float`, *optional*, defaults to `0.5`):
        Target reward margin γ of `"simpo"`.
    alpha (`float`, *optional*, defaults to `0.0`):
        AlphaPO reward shape: a sequence scores `(1 − p^{−α})/α` with `p = exp(log-prob)` instead of its log-prob;
        `0` keeps the log-prob.
    """

    label_smoothing: float = field(default=0.0, metadata={"help": "Label flip probability (sigmoid, simpo)."})
    loss_type: str = field(
        default="sigmoid",
        metadata={"help": "Preference loss.", "choices": [*CPO_LOSS_TYPES, "alphapo"]},
    )
    cpo_alpha: float = field(default=1.0, metadata={"help": "Weight of the NLL term on the chosen completions."})
    simpo_gamma: float = field(default=0.5, metadata={"help": "Target reward margin of SimPO."})
    alpha: float = field(default=0.0, metadata={"help": "AlphaPO reward-shape parameter (0: log-prob)."})

    def __post_init__(self):
        if self.loss_type == "alphapo":
            if self.cpo_alpha not in (0.0, 1.0):
                raise ValueError(
                    f"loss_type='alphapo' trains without the NLL term (cpo_alpha=0), but cpo_alpha={self.cpo_alpha} "
                    "was set. For AlphaPO with an NLL term use loss_type='simpo' with that cpo_alpha and alpha."
                )
            if self.alpha == 0:
                warnings.warn(
                    "loss_type='alphapo' with alpha=0 is plain SimPO: the reward shape only changes with a non-zero "
                    "alpha. Set a non-zero alpha, or use loss_type='simpo' with cpo_alpha=0 for SimPO.",
                    UserWarning,
                    stacklevel=3,
                )
            self.loss_type, self.cpo_alpha = "simpo", 0.0
        super().__post_init__()
        if self.loss_type not in CPO_LOSS_TYPES:
            raise ValueError(f"Unknown loss_type {self.loss_type!r}; choose one of {[*CPO_LOSS_TYPES, 'alphapo']}.")
        if not 0 <= self.label_smoothing <= 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5], got {self.label_smoothing}.")
        if self.label_smoothing and self.loss_type not in _SMOOTHED_LOSS_TYPES:
            warnings.warn(
                f"label_smoothing={self.label_smoothing} has no effect with loss_type={self.loss_type!r}; it applies "
                f"to {list(_SMOOTHED_LOSS_TYPES)}. Remove it or change loss_type.",
                UserWarning,
                stacklevel=3,
            )
        if self.cpo_alpha < 0:
            raise ValueError(f"cpo_alpha must be >= 0, got {self.cpo_alpha}.")
