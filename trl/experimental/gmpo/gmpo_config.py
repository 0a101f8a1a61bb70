"""Configuration of [`GMPOTrainer`]."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...losses.gmpo import GMPO_LOSS_TYPES
from ...trainer.grpo_config import GRPOConfig


@dataclass
class GMPOConfig(GRPOConfig):
    r"""
    Configuration class for the [`GMPOTrainer`].

    Every field of [`~trl.GRPOConfig`] (generation, rewards, reference model, logging); GMPO adds none. It changes
    the meaning of the clip range and two defaults:

    - `epsilon` and `epsilon_high` are ranges in *log space*: the per-token log-ratio `log π_θ − log π_old` is
      clipped to `[−epsilon, epsilon_high]`, so the ratio's range is `(exp(−epsilon), exp(epsilon_high))`. The paper
      (Sec. 4) uses `(e^{−0.4}, e^{0.4})`, much wider than GRPO's `(0.8, 1.2)`.
    - `loss_type` only chooses how the per-completion objective is reduced: `"grpo"` (a mean over completions, the
      paper's `1/G Σ_i`) or the token-weighted `"dapo"`, `"bnpo"`, `"dr_grpo"`, `"luspo"`. (The reference's GMPO
      always takes the mean over completions and keeps GRPO's `"dapo"` as the unused default.)

    Options of GRPO's own objectives are refused when set: `importance_sampling_level="sequence"` (GMPO's geometric
    mean is already a sequence-level ratio) and `delta`. `use_bias_correction_kl` is not read (the KL term, when
    `beta > 0`, is the plain k3 estimate per token).

    Parameters:
        epsilon (`float`, *optional*, defaults to `0.4`):
            Lower clip range in log space: token ratios below `exp(−epsilon)` are clipped (negative advantages).
        epsilon_high (`float` or `None`, *optional*, defaults to `None`):
            Upper clip range in log space (`None`: `epsilon`): ratios above `exp(epsilon_high)` are clipped (positive
            advantages).
        loss_type (`str`, *optional*, defaults to `"grpo"`):
            The reduction of the per-completion loss, one of `"grpo"`, `"bnpo"`, `"dr_grpo"`, `"dapo"`, `"luspo"`.
    """

    epsilon: float = field(
        default=0.4,
        metadata={"help": "Lower clip range in log space: ratios below exp(-epsilon) are clipped (GMPO: 0.4)."},
    )
    epsilon_high: float | None = field(
        default=None,
        metadata={"help": "Upper clip range in log space (None: epsilon): ratios above exp(epsilon_high) clipped."},
    )
    loss_type: str = field(
        default="grpo",
        metadata={"help": "Reduction of the per-completion loss.", "choices": list(GMPO_LOSS_TYPES)},
    )

    def __post_init__(self):
        super().__post_init__()
        check_gmpo_options(self)


def check_gmpo_options(config: GRPOConfig) -> None:
    """Refuse the GRPO options that GMPO's objective replaces (for a [`GMPOConfig`], and for a [`~trl.GRPOConfig`]
    given to [`GMPOTrainer`])."""
    if config.loss_type not in GMPO_LOSS_TYPES:
        raise ValueError(
            f"GMPO replaces GRPO's objective, so loss_type={config.loss_type!r} does not apply: use one of "
            f"{list(GMPO_LOSS_TYPES)} (the reduction; 'grpo', the paper's mean over completions, by default)."
        )
    if config.importance_sampling_level != "token":
        raise ValueError(
            "GMPO's geometric mean of the token ratios is already a sequence-level ratio: set "
            "importance_sampling_level='token'."
        )
    if config.delta is not None:
        raise ValueError("delta caps GRPO's ratio and is not used by GMPO, whose clip is epsilon: unset delta.")
