"""Configuration of [`ORPOTrainer`]. The fields it shares with [`CPOConfig`] (the reference-free paired trainers)
are `trl.trainer.base_config._ReferenceFreePairedConfig`, importable from here too."""

from __future__ import annotations

from dataclasses import dataclass

from .base_config import _ReferenceFreePairedConfig


@dataclass
class ORPOConfig(_ReferenceFreePairedConfig):
    r"""
    Configuration class for the [`ORPOTrainer`] (Odds Ratio Preference Optimization).

    See [`~transformers.TrainingArguments`] for the training parameters. ORPO's own parameter:

    beta (`float`, *optional*, defaults to `0.1`):
        Weight λ of the odds-ratio term added to the NLL of the chosen completions (the paper's λ).

    The model and data parameters, shared with [`CPOConfig`], are `model_init_kwargs`, `trust_remote_code`,
    `is_encoder_decoder`, `disable_dropout`, `dataset_num_proc`, `max_prompt_length` (default `None`),
    `max_completion_length`, `max_length` (default `1024`), `truncation_mode` (default `"keep_end"`: long prompts keep
    their end), `padding_value`, `label_pad_token_id` and `generate_during_eval`, documented in
    [`_ReferenceFreePairedConfig`].
    """
