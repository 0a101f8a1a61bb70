"""Configuration of [`ORPOTrainer`], and the fields it shares with [`CPOConfig`] (the reference-free paired
trainers)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from .base_config import _BaseConfig
from .sft_config import TRUNCATION_MODES


@dataclass
class _ReferenceFreePairedConfig(_BaseConfig):
    r"""
    Fields shared by the configurations of the reference-free paired trainers ([`CPOConfig`], [`ORPOConfig`]).

    > Parameters that control the model

    model_init_kwargs (`dict[str, Any]`, `str` or `None`, *optional*, defaults to `None`):
        Keyword arguments for `from_pretrained`, used when `model` is a string.
    trust_remote_code (`bool`, *optional*, defaults to `False`):
        Forwarded to every `from_pretrained` call.
    is_encoder_decoder (`bool` or `None`, *optional*, defaults to `None`):
        Whether the model is an encoder-decoder (the prompt is encoded, the completion decoded). `None` reads it from
        the model's config.
    disable_dropout (`bool`, *optional*, defaults to `True`):
        Set every dropout probability of the model to 0.

    > Parameters that control the data preprocessing

    dataset_num_proc (`int` or `None`, *optional*, defaults to `None`):
        Number of processes used to tokenise the dataset.
    max_prompt_length (`int` or `None`, *optional*, defaults to `None`):
        Prompts longer than this are cut following `truncation_mode`. `None`, as in trl 1.x, sets no separate prompt
        limit: only `max_length` cuts the row. (trl 0.x defaulted to 512.)
    max_completion_length (`int` or `None`, *optional*, defaults to `None`):
        Completions are cut to their first `max_completion_length` tokens.
    max_length (`int` or `None`, *optional*, defaults to `1024`):
        Maximum length of a prompt + completion row; longer rows lose the end of their completion.
    truncation_mode (`str`, *optional*, defaults to `"keep_end"`):
        Which part of a prompt longer than `max_prompt_length` is kept: `"keep_end"` its last tokens (next to the
        completion), `"keep_start"` its first ones.
    padding_value (`int` or `None`, *optional*, defaults to `None`):
        The id used to pad `input_ids`; `None` uses the tokenizer's pad token (its EOS token if it has none).
    label_pad_token_id (`int`, *optional*, defaults to `-100`):
        Kept for compatibility with the 0.x API: completion tokens are tracked with a mask, so no label padding is
        used.

    > Parameters that control training and evaluation

    beta (`float`, *optional*, defaults to `0.1`):
        Weight of the preference term (see the trainer).
    generate_during_eval (`bool`, *optional*, defaults to `False`):
        At each evaluation, generate completions of a batch of prompts and log them to Weights & Biases as the
        `game_log` table (needs `wandb`).
    """

    _VALID_DICT_FIELDS = _BaseConfig._VALID_DICT_FIELDS + ["model_init_kwargs"]

    learning_rate: float = field(default=1e-6, metadata={"help": "The initial learning rate for AdamW."})
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Keyword arguments for from_pretrained when the model is a string."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})
    is_encoder_decoder: bool | None = field(
        default=None, metadata={"help": "Whether the model is an encoder-decoder (None: read from its config)."}
    )
    disable_dropout: bool = field(default=True, metadata={"help": "Disable dropout in the model."})
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes used to tokenize the dataset."})
    max_prompt_length: int | None = field(
        default=None, metadata={"help": "Maximum prompt length in tokens; None (the default): no separate limit."}
    )
    max_completion_length: int | None = field(default=None, metadata={"help": "Keep the first N completion tokens."})
    max_length: int | None = field(default=1024, metadata={"help": "Maximum prompt + completion length."})
    truncation_mode: str = field(
        default="keep_end",
        metadata={"help": "Part of a long prompt to keep: keep_end or keep_start.", "choices": list(TRUNCATION_MODES)},
    )
    padding_value: int | None = field(default=None, metadata={"help": "Pad id (None: the tokenizer's pad token)."})
    label_pad_token_id: int = field(default=-100, metadata={"help": "Kept for compatibility (unused)."})
    beta: float = field(default=0.1, metadata={"help": "Weight of the preference term."})
    generate_during_eval: bool = field(default=False, metadata={"help": "Log generations to W&B at evaluation."})

    def __post_init__(self):
        super().__post_init__()
        if self.label_pad_token_id != -100:
            warnings.warn(
                "`label_pad_token_id` has no effect: completion tokens are tracked with a mask, not with padded "
                "labels. Remove it from your configuration.",
                UserWarning,
                stacklevel=3,
            )
        if self.truncation_mode not in TRUNCATION_MODES:
            raise ValueError(f"Unknown truncation_mode {self.truncation_mode!r}; choose one of {TRUNCATION_MODES}.")
        for name in ("max_length", "max_prompt_length", "max_completion_length"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be a positive number of tokens, got {value}; use None for no limit.")
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}.")


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
