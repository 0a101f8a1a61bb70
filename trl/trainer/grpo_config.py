"""Configuration of [`GRPOTrainer`]."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from ..losses.advantages import MULTI_OBJECTIVE_AGGREGATIONS, SCALE_REWARDS
from ..losses.policy import POLICY_LOSS_TYPES, SAMPLER_CORRECTION_MODES
from .online_config import _OnlineConfig


GRPO_IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
# Loss types normalised by token counts, for which a sequence-level ratio mixes two conventions.
_TOKEN_NORMALISED_LOSSES = ("bnpo", "dr_grpo", "dapo", "cispo")


@dataclass
class GRPOConfig(_OnlineConfig):
    r"""
    Configuration class for the [`GRPOTrainer`].

    Only the parameters specific to GRPO are listed here; the generation, vLLM, reference-model and logging fields
    shared with the other online trainers are documented in [`~trl.trainer.online_config._OnlineConfig`], and the
    rest in [`~transformers.TrainingArguments`]. `learning_rate` defaults to `1e-6`, `remove_unused_columns` to
    `False`, `num_generations` to `8`.

    > Parameters that control the model

    cast_lm_head_to_fp32 (`bool`, *optional*, defaults to `False`):
        Compute the LM head (and so the log-probs) in float32 when the model runs in half precision. Needs untied
        input and output embeddings.

    > Parameters that control the loss

    beta (`float`, *optional*, defaults to `0.0`):
        KL coefficient (k3 estimator against the reference model). `0.0` loads no reference model.
    delta (`float` or `None`, *optional*, defaults to `None`):
        Two-sided clipping: cap the unclipped importance ratio at `delta` (INTELLECT-2); should exceed
        `1 + epsilon_high`.
    sapo_temperature_neg (`float`, *optional*, defaults to `1.05`):
        SAPO gate temperature for non-positive advantages.
    sapo_temperature_pos (`float`, *optional*, defaults to `1.0`):
        SAPO gate temperature for positive advantages.
    vespo_k_pos (`float`, *optional*, defaults to `2.0`):
        VESPO shape `k` for non-negative advantages.
    vespo_lambda_pos (`float`, *optional*, defaults to `3.0`):
        VESPO rate `λ` for non-negative advantages.
    vespo_k_neg (`float`, *optional*, defaults to `3.0`):
        VESPO shape `k` for negative advantages.
    vespo_lambda_neg (`float`, *optional*, defaults to `2.0`):
        VESPO rate `λ` for negative advantages.
    importance_sampling_level (`str`, *optional*, defaults to `"token"`):
        `"token"` (one ratio per token) or `"sequence"` (GSPO: `exp` of the mean token log-ratio per completion).
    multi_objective_aggregation (`str`, *optional*, defaults to `"sum_then_normalize"`):
        `"sum_then_normalize"` (weighted sum of the rewards, then advantages) or `"normalize_then_sum"` (GDPO: each
        reward normalised in its group, then summed and batch-normalised).
    scale_rewards (`str`, *optional*, defaults to `"group"`):
        Divide the centred rewards by the group standard deviation (`"group"`), the batch one (`"batch"`) or not at
        all (`"none"`). `True` means `"group"`, `False` means `"none"`.
    loss_type (`str`, *optional*, defaults to `"dapo"`):
        `"grpo"`, `"bnpo"`, `"dr_grpo"`, `"dapo"`, `"cispo"`, `"sapo"`, `"luspo"` or `"vespo"`; see the GRPO docs
        for each normalisation.
    top_entropy_quantile (`float`, *optional*, defaults to `1.0`):
        Train only on the completion tokens whose entropy is in this top fraction of the batch (`1.0`: all).
    entropy_coef (`float`, *optional*, defaults to `0.0`):
        Weight of an entropy bonus subtracted from the loss.
    use_adaptive_entropy (`bool`, *optional*, defaults to `False`):
        Adapt `entropy_coef` after every optimizer step: up by `entropy_coef_delta` while the mean entropy is below
        `entropy_target`, down otherwise, within `[entropy_coef_min, entropy_coef_max]`.
    entropy_coef_min (`float`, *optional*, defaults to `0.0`):
        Lower bound of the adaptive coefficient.
    entropy_coef_max (`float`, *optional*, defaults to `1.0`):
        Upper bound of the adaptive coefficient.
    entropy_coef_delta (`float`, *optional*, defaults to `0.005`):
        Step of the adaptive coefficient.
    entropy_target (`float`, *optional*, defaults to `0.2`):
        Target mean entropy of the adaptive control.
    max_tool_calling_iterations (`int` or `None`, *optional*, defaults to `None`):
        Tool-calling rounds per completion with `tools` or `environment_factory`; `None`: bounded by the length.

    > Parameters that correct the generation / training mismatch (vLLM)

    vllm_importance_sampling_correction (`bool`, *optional*, defaults to `True`):
        With vLLM, reweight the loss by `π_train / π_vllm` of the generating policy (truncated importance sampling).
    vllm_importance_sampling_mode (`str`, *optional*, defaults to `"sequence_mask"`):
        `"token_truncate"`, `"token_mask"`, `"sequence_truncate"` or `"sequence_mask"`.
    vllm_importance_sampling_clip_max (`float` or `None`, *optional*, defaults to `3.0`):
        Upper bound of the ratio.
    vllm_importance_sampling_clip_min (`float` or `None`, *optional*, defaults to `None`):
        Lower bound of the ratio.
    vllm_importance_sampling_cap (`float` or `None`, *optional*, defaults to `None`):
        Deprecated alias of `vllm_importance_sampling_clip_max`.
    off_policy_mask_threshold (`float` or `None`, *optional*, defaults to `None`):
        Drop completions with a negative advantage whose mean log-ratio between the generating and the current
        policy exceeds this threshold (DeepSeek-V3.2).
    use_bias_correction_kl (`bool`, *optional*, defaults to `True`):
        Multiply the KL term by the importance ratio (unbiased off-policy KL).

    > Parameters that control logging

    log_completions_hub_repo (`str` or `None`, *optional*, defaults to `None`):
        Push the completions tables to this Hub dataset (needs `log_completions`); not supported by this version.
    use_liger_loss (`bool`, *optional*, defaults to `False`):
        Seed-era: Liger's fused GRPO loss; not supported (raises when set).
    """

    beta: float = field(default=0.0, metadata={"help": "KL coefficient; 0 loads no reference model."})
    cast_lm_head_to_fp32: bool = field(default=False, metadata={"help": "Compute the LM head in float32."})
    delta: float | None = field(default=None, metadata={"help": "Two-sided clipping cap of the ratio."})
    sapo_temperature_neg: float = field(default=1.05, metadata={"help": "SAPO temperature, A <= 0."})
    sapo_temperature_pos: float = field(default=1.0, metadata={"help": "SAPO temperature, A > 0."})
    vespo_k_pos: float = field(default=2.0, metadata={"help": "VESPO k for A >= 0."})
    vespo_lambda_pos: float = field(default=3.0, metadata={"help": "VESPO lambda for A >= 0."})
    vespo_k_neg: float = field(default=3.0, metadata={"help": "VESPO k for A < 0."})
    vespo_lambda_neg: float = field(default=2.0, metadata={"help": "VESPO lambda for A < 0."})
    importance_sampling_level: str = field(
        default="token",
        metadata={"help": "token or sequence (GSPO).", "choices": list(GRPO_IMPORTANCE_SAMPLING_LEVELS)},
    )
    multi_objective_aggregation: str = field(
        default="sum_then_normalize",
        metadata={"help": "How several rewards combine.", "choices": list(MULTI_OBJECTIVE_AGGREGATIONS)},
    )
    scale_rewards: str = field(default="group", metadata={"help": "group, batch or none."})
    loss_type: str = field(
        default="dapo", metadata={"help": "Loss normalisation.", "choices": list(POLICY_LOSS_TYPES)}
    )
    top_entropy_quantile: float = field(default=1.0, metadata={"help": "Train on the top entropy fraction."})
    entropy_coef: float = field(default=0.0, metadata={"help": "Entropy bonus weight."})
    use_adaptive_entropy: bool = field(default=False, metadata={"help": "Adapt entropy_coef to entropy_target."})
    entropy_coef_min: float = field(default=0.0, metadata={"help": "Adaptive entropy coefficient lower bound."})
    entropy_coef_max: float = field(default=1.0, metadata={"help": "Adaptive entropy coefficient upper bound."})
    entropy_coef_delta: float = field(default=0.005, metadata={"help": "Adaptive entropy coefficient step."})
    entropy_target: float = field(default=0.2, metadata={"help": "Adaptive entropy target."})
    max_tool_calling_iterations: int | None = field(default=None, metadata={"help": "Tool-calling rounds."})
    vllm_importance_sampling_correction: bool = field(
        default=True, metadata={"help": "Correct the vLLM/training mismatch by importance sampling."}
    )
    vllm_importance_sampling_mode: str = field(
        default="sequence_mask",
        metadata={"help": "Correction mode.", "choices": list(SAMPLER_CORRECTION_MODES)},
    )
    vllm_importance_sampling_clip_max: float | None = field(default=3.0, metadata={"help": "Ratio upper bound."})
    vllm_importance_sampling_clip_min: float | None = field(default=None, metadata={"help": "Ratio lower bound."})
    off_policy_mask_threshold: float | None = field(default=None, metadata={"help": "Off-policy mask threshold."})
    use_bias_correction_kl: bool = field(default=True, metadata={"help": "Importance-weight the KL term."})
    log_completions_hub_repo: str | None = field(default=None, metadata={"help": "Hub dataset for completions."})
    vllm_importance_sampling_cap: float | None = field(
        default=None, metadata={"help": "Deprecated alias of vllm_importance_sampling_clip_max."}
    )
    use_liger_loss: bool = field(default=False, metadata={"help": "Seed-era Liger GRPO loss (not supported)."})

    def __post_init__(self):
        self.scale_rewards = _normalise_scale_rewards(self.scale_rewards)
        super().__post_init__()
        if self.vllm_importance_sampling_cap is not None:
            warnings.warn(
                "`vllm_importance_sampling_cap` is deprecated; use `vllm_importance_sampling_clip_max`.",
                FutureWarning,
                stacklevel=3,
            )
            self.vllm_importance_sampling_clip_max = self.vllm_importance_sampling_cap
        self._validate_grpo()

    def _validate_grpo(self) -> None:
        self._check_one_of("loss_type", POLICY_LOSS_TYPES)
        self._check_one_of("importance_sampling_level", GRPO_IMPORTANCE_SAMPLING_LEVELS)
        self._check_one_of("multi_objective_aggregation", MULTI_OBJECTIVE_AGGREGATIONS)
        if self.loss_type == "vespo" and self.importance_sampling_level != "token":
            raise ValueError("loss_type='vespo' weighs whole sequences itself: set importance_sampling_level='token'.")
        if not 0.0 <= self.top_entropy_quantile <= 1.0:
            raise ValueError(f"top_entropy_quantile must be in [0, 1], got {self.top_entropy_quantile}.")
        if self.entropy_coef_min > self.entropy_coef_max:
            raise ValueError("entropy_coef_min must not exceed entropy_coef_max.")
        if self.log_completions_hub_repo is not None and not self.log_completions:
            raise ValueError("log_completions_hub_repo needs log_completions=True.")
        if self.use_liger_loss:
            raise ValueError(
                "use_liger_loss is not supported: the log-probs are already computed only at completion positions. "
                "Set use_liger_loss=False."
            )
        self._validate_sampler_correction()
        self._warn_unusual_combinations()

    def _validate_sampler_correction(self) -> None:
        low, high = self.vllm_importance_sampling_clip_min, self.vllm_importance_sampling_clip_max
        self._check_one_of("vllm_importance_sampling_mode", SAMPLER_CORRECTION_MODES)
        if low is not None and high is not None and not low < high:
            raise ValueError(
                f"vllm_importance_sampling_clip_min ({low}) must be below vllm_importance_sampling_clip_max ({high})."
            )
        if self.vllm_importance_sampling_mode.endswith("_truncate") and low is None and high is None:
            raise ValueError(
                f"vllm_importance_sampling_mode={self.vllm_importance_sampling_mode!r} truncates the ratio: set "
                "vllm_importance_sampling_clip_max and/or vllm_importance_sampling_clip_min."
            )

    def _warn_unusual_combinations(self) -> None:
        if self.importance_sampling_level == "sequence" and self.loss_type in _TOKEN_NORMALISED_LOSSES:
            warnings.warn(
                f"importance_sampling_level='sequence' (GSPO) with loss_type={self.loss_type!r} weighs sequences by "
                "their token count; GSPO uses loss_type='grpo'.",
                UserWarning,
                stacklevel=4,
            )
        if self.loss_type == "luspo" and self.importance_sampling_level != "sequence":
            warnings.warn(
                "loss_type='luspo' is meant for importance_sampling_level='sequence'.", UserWarning, stacklevel=4
            )
        if self.loss_type == "cispo" and self.epsilon_high is None:
            warnings.warn(
                "loss_type='cispo' uses epsilon_high as an absolute bound on the ratio (suggested 5.0); it is unset, "
                f"so epsilon={self.epsilon} is used. Set epsilon_high.",
                UserWarning,
                stacklevel=4,
            )
        epsilon_high = self.epsilon if self.epsilon_high is None else self.epsilon_high
        if self.delta is not None and self.delta <= 1 + epsilon_high:
            warnings.warn(
                f"delta={self.delta} is not above 1 + epsilon_high = {1 + epsilon_high}: the two-sided cap also "
                "clips positive advantages. Use e.g. delta=1.5 or more.",
                UserWarning,
                stacklevel=4,
            )


def _normalise_scale_rewards(value: str | bool) -> str:
    """Map the 0.x booleans (and their CLI spellings) onto `"group"` / `"none"`."""
    if isinstance(value, bool):
        return "group" if value else "none"
    lowered = str(value).lower()
    if lowered in ("true", "1", "yes"):
        return "group"
    if lowered in ("false", "0", "no"):
        return "none"
    if lowered not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {list(SCALE_REWARDS)} (or a boolean), got {value!r}.")
    return lowered
