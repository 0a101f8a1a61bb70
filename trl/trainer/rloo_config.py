"""Configuration of [`RLOOTrainer`]."""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

from .online_config import _OnlineConfig


# trl <= 0.21 names kept as deprecated aliases: old field -> new field.
_RENAMED = {
    "rloo_k": "num_generations",
    "cliprange": "epsilon",
    "kl_coef": "beta",
    "normalize_reward": "normalize_advantages",
    "num_ppo_epochs": "num_iterations",
    "num_mini_batches": "steps_per_generation",
    "response_length": "max_completion_length",
}
# trl <= 0.21 fields without a counterpart, with what to do instead.
_REMOVED = {
    "token_level_kl": "the KL is always a sequence-level term folded into the reward",
    "dataset_num_proc": "prompts are tokenized on the fly",
    "local_rollout_forward_batch_size": "log-probs are computed per_device_train_batch_size rows at a time",
    "num_sample_generations": "use log_completions=True",
    "stop_token": "completions stop at the tokenizer's EOS token",
    "stop_token_id": "completions stop at the tokenizer's EOS token",
    "missing_eos_penalty": "write a reward function that penalises completions without EOS",
}


@dataclass
class RLOOConfig(_OnlineConfig):
    r"""
    Configuration class for the [`RLOOTrainer`].

    Only the parameters specific to RLOO are listed here; the generation, vLLM, reference-model and logging fields
    shared with the other online trainers are documented in [`~trl.trainer.online_config._OnlineConfig`], and the
    rest in [`~transformers.TrainingArguments`]. `learning_rate` defaults to `1e-6`, `remove_unused_columns` to
    `False`, `num_generations` to `2`.

    > Parameters that control the loss

    beta (`float`, *optional*, defaults to `0.05`):
        KL coefficient. The sequence KL to the reference model, `Σ_t (log π_old − log π_ref)`, is subtracted from the
        reward (`r ← r − β·KL`). `0.0` loads no reference model.
    normalize_advantages (`bool`, *optional*, defaults to `False`):
        Normalise the advantages over the batch to mean 0 and standard deviation 1.
    reward_clip_range (`tuple[float, float]` or `None`, *optional*, defaults to `None`):
        Clip the combined reward to `[low, high]` before the KL penalty. On the command line: `--reward_clip_range
        -1,1`.

    > Deprecated names from trl <= 0.21 (each warns and sets its new field)

    rloo_k (`int` or `None`): `num_generations`.
    cliprange (`float` or `None`): `epsilon`.
    kl_coef (`float` or `None`): `beta`.
    exp_name (`str` or `None`): `run_name` becomes `f"{exp_name}__{seed}__{int(time.time())}"`.
    normalize_reward (`bool` or `None`): `normalize_advantages`.
    num_ppo_epochs (`int` or `None`): `num_iterations`.
    num_mini_batches (`int` or `None`): `steps_per_generation`.
    total_episodes (`int` or `None`): `max_steps = total_episodes // gradient_accumulation_steps`.
    response_length (`int` or `None`): `max_completion_length`.
    token_level_kl, dataset_num_proc, local_rollout_forward_batch_size, num_sample_generations, stop_token,
    stop_token_id, missing_eos_penalty: removed; setting one raises a `ValueError` that says what replaces it.
    """

    num_generations: int | None = field(default=2, metadata={"help": "Completions per prompt (group size)."})
    beta: float = field(default=0.05, metadata={"help": "KL coefficient (folded into the reward)."})
    normalize_advantages: bool = field(default=False, metadata={"help": "Normalise the advantages over the batch."})
    reward_clip_range: tuple[float, float] | None = field(
        default=None, metadata={"help": "Clip the reward to [low, high] before the KL penalty."}
    )

    rloo_k: int | None = field(default=None, metadata={"help": "Deprecated: use num_generations."})
    cliprange: float | None = field(default=None, metadata={"help": "Deprecated: use epsilon."})
    kl_coef: float | None = field(default=None, metadata={"help": "Deprecated: use beta."})
    exp_name: str | None = field(default=None, metadata={"help": "Deprecated: use run_name."})
    normalize_reward: bool | None = field(default=None, metadata={"help": "Deprecated: use normalize_advantages."})
    num_ppo_epochs: int | None = field(default=None, metadata={"help": "Deprecated: use num_iterations."})
    num_mini_batches: int | None = field(default=None, metadata={"help": "Deprecated: use steps_per_generation."})
    total_episodes: int | None = field(default=None, metadata={"help": "Deprecated: use max_steps."})
    response_length: int | None = field(default=None, metadata={"help": "Deprecated: use max_completion_length."})
    token_level_kl: bool | None = field(default=None, metadata={"help": "Removed."})
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Removed."})
    local_rollout_forward_batch_size: int | None = field(default=None, metadata={"help": "Removed."})
    num_sample_generations: int | None = field(default=None, metadata={"help": "Removed."})
    stop_token: str | None = field(default=None, metadata={"help": "Removed."})
    stop_token_id: int | None = field(default=None, metadata={"help": "Removed."})
    missing_eos_penalty: float | None = field(default=None, metadata={"help": "Removed."})

    def __post_init__(self):
        self._apply_legacy_names()
        super().__post_init__()
        if self.reward_clip_range is not None:
            self.reward_clip_range = _parse_range(self.reward_clip_range)
            if len(self.reward_clip_range) != 2 or not self.reward_clip_range[0] < self.reward_clip_range[1]:
                raise ValueError(
                    f"reward_clip_range must be (low, high) with low < high, got {self.reward_clip_range}."
                )
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}.")

    def _apply_legacy_names(self) -> None:
        for old, hint in _REMOVED.items():
            if getattr(self, old) is not None:
                raise ValueError(f"`{old}` was removed from RLOOConfig: {hint}. Remove it from your configuration.")
        for old, new in _RENAMED.items():
            value = getattr(self, old)
            if value is not None:
                warnings.warn(f"`{old}` is deprecated; use `{new}` instead.", FutureWarning, stacklevel=4)
                setattr(self, new, value)
        if self.exp_name is not None:
            warnings.warn("`exp_name` is deprecated; use `run_name` instead.", FutureWarning, stacklevel=4)
            self.run_name = f"{self.exp_name}__{self.seed}__{int(time.time())}"
        if self.total_episodes is not None:
            warnings.warn("`total_episodes` is deprecated; use `max_steps` instead.", FutureWarning, stacklevel=4)
            self.max_steps = max(1, self.total_episodes // self.gradient_accumulation_steps)


def _parse_range(value: Any) -> tuple[float, ...]:
    """`(low, high)` from a sequence, or from the command line's `"low,high"` / `"[low, high]"` string."""
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) and len(v) == 1 for v in value):
        # argparse applies the `tuple` type to the command-line string, which splits it into characters.
        value = "".join(value)
    if isinstance(value, str):
        text = value.strip()
        value = json.loads(text) if text.startswith("[") else text.split(",")
    return tuple(float(v) for v in value)
