"""Configuration of [`BCOTrainer`]."""

from __future__ import annotations

from dataclasses import dataclass, field

from .base_config import _UnpairedPreferenceConfig


@dataclass
class BCOConfig(_UnpairedPreferenceConfig):
    r"""
    Configuration class for the [`BCOTrainer`].

    Only the parameters specific to BCO are listed here; the fields shared with [`KTOConfig`] (`model_init_kwargs`,
    `ref_model_init_kwargs`, `trust_remote_code`, `disable_dropout`, `precompute_ref_log_probs`, `dataset_num_proc`,
    `max_prompt_length=None`, `max_completion_length`, `max_length=1024`, `truncation_mode="keep_end"`, `beta=0.1`,
    `generate_during_eval`, and the 0.x `padding_value`, `label_pad_token_id`, `is_encoder_decoder`) are documented in
    `_UnpairedPreferenceConfig`, and the rest in [`~transformers.TrainingArguments`].

    > Parameters that control underlying distribution matching (UDM)

    prompt_sample_size (`int`, *optional*, defaults to `1024`):
        Number of desirable and of undesirable prompts embedded to train the prompt classifier (used when the trainer
        gets an `embedding_func` and an `embedding_tokenizer`).
    min_density_ratio (`float`, *optional*, defaults to `0.5`):
        Lower clamp of the density ratio weighting each undesirable example.
    max_density_ratio (`float`, *optional*, defaults to `10.0`):
        Upper clamp of the density ratio.
    """

    learning_rate: float = field(default=5e-7, metadata={"help": "The initial learning rate for AdamW."})
    prompt_sample_size: int = field(default=1024, metadata={"help": "UDM: prompts per side to fit the classifier."})
    min_density_ratio: float = field(default=0.5, metadata={"help": "UDM: lower clamp of the density ratio."})
    max_density_ratio: float = field(default=10.0, metadata={"help": "UDM: upper clamp of the density ratio."})

    def __post_init__(self):
        super().__post_init__()
        if self.prompt_sample_size < 1:
            raise ValueError(f"prompt_sample_size must be >= 1, got {self.prompt_sample_size}.")
        if not 0 <= self.min_density_ratio <= self.max_density_ratio:
            raise ValueError(
                f"Need 0 <= min_density_ratio <= max_density_ratio, got {self.min_density_ratio} and "
                f"{self.max_density_ratio}."
            )
