"""`_BaseConfig`: the `TrainingArguments` subclass every trainer config extends, and the config pieces trainers
share: `TRUNCATION_MODES` / `check_truncation_mode`, `resolve_pad_to_multiple_of` (also importable from
`trl.trainer.sft_config`), and the family bases `_ReferenceFreePairedConfig` (CPO, ORPO; also from
`trl.trainer.orpo_config`) and `_UnpairedPreferenceConfig` (KTO, BCO; also from `trl.trainer.kto_config`), and
the field mixins `_ModelLoadingFields` (the offline configs), `_ReferenceSyncFields` (DPO, KTO),
`_PreferenceLengthFields` (DPO and both preference families), `_ReferencePreferenceFields` (DPO, KTO, BCO) and
`_PadToMultipleOfField` (DPO, KTO, Reward, SFT)."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from .input_checks import check_training_args


def _bf16_supported() -> bool:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    xpu = getattr(torch, "xpu", None)
    return bool(xpu is not None and xpu.is_available())


def parse_json_field(value: Any, name: str) -> Any:
    """Turn a JSON string coming from the CLI or YAML into a dict; leave other values alone.

    Args:
        value (`Any`):
            The field value.
        name (`str`):
            The field name, used in the error message.
    """
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"`{name}` must be a dict or a JSON string encoding one, got {value!r}.") from error
    return value


@dataclass
class _BaseConfig(TrainingArguments):
    r"""
    Defaults shared by every trl configuration on top of [`~transformers.TrainingArguments`].

    Parameters that differ from `TrainingArguments`:
        logging_steps (`float`, *optional*, defaults to `10`):
            Log every `logging_steps` steps.
        gradient_checkpointing (`bool`, *optional*, defaults to `True`):
            Trade compute for memory by recomputing activations in the backward pass.
        bf16 (`bool` or `None`, *optional*, defaults to `None`):
            Use bf16 mixed precision. `None` means "on when the accelerator supports it and `fp16` is off": on a
            CPU-only machine it resolves to `False` (transformers refuses bf16 there unless `use_cpu=True`).
        lr_scheduler_kwargs (`dict`, `str` or `None`, *optional*, defaults to `None`):
            Extra scheduler arguments, also as a JSON string.

    Parameters added by trl:
        overwrite_output_dir (`bool`, *optional*, defaults to `False`):
            Allow a run to write over a model (`*.safetensors`, `config.json`) or `README.md` already in `output_dir`
            that it did not create. Without it such a run stops before training; resuming from a checkpoint of
            `output_dir` is always allowed.
    """

    # Fields whose JSON-string form (CLI / YAML) is decoded in `__post_init__`.
    _json_dict_fields = ("model_init_kwargs", "generation_kwargs", "chat_template_kwargs", "dataset_kwargs")

    logging_steps: float = field(default=10, metadata={"help": "Log every X update steps."})
    gradient_checkpointing: bool = field(
        default=True, metadata={"help": "Recompute activations in the backward pass to save memory."}
    )
    bf16: bool | None = field(
        default=None,
        metadata={"help": "Use bf16 mixed precision. None: on when supported by the accelerator and fp16 is off."},
    )
    lr_scheduler_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Extra learning-rate scheduler arguments (dict or JSON string)."}
    )

    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Allow writing over a model or README.md already in output_dir that this run did not create."
        },
    )

    def __post_init__(self):
        check_training_args(self)
        if self.bf16 is None:
            self.bf16 = not self.fp16 and not self.use_cpu and _bf16_supported()
        for name in self._json_dict_fields:
            if hasattr(self, name):
                setattr(self, name, parse_json_field(getattr(self, name), name))
        # transformers 5 renamed gradient_checkpointing to activation_checkpointing; trl keeps the old name as its
        # documented field, so it is forwarded here instead of going through the deprecation warning.
        if getattr(self, "activation_checkpointing", None) is None:
            self.activation_checkpointing = self.gradient_checkpointing
        if getattr(self, "activation_checkpointing_kwargs", None) is None:
            kwargs = self.gradient_checkpointing_kwargs
            if kwargs is None and self.activation_checkpointing:
                # Non-reentrant checkpointing works with frozen embeddings (PEFT) and inputs that need no grad.
                kwargs = {"use_reentrant": False}
            self.activation_checkpointing_kwargs = kwargs
        super().__post_init__()
        _pin_memory_only_with_an_accelerator(self)


def _pin_memory_only_with_an_accelerator(args: Any) -> None:
    # Pinned memory only speeds up copies to an accelerator; without one, torch ignores it with a warning at every
    # dataloader the user can do nothing useful about.
    import torch

    accelerator = getattr(torch, "accelerator", None)
    available = accelerator.is_available() if accelerator is not None else torch.cuda.is_available()
    if not available and args.dataloader_pin_memory:
        args.dataloader_pin_memory = False


# ------------------------------------------------------------------------------------ shared config pieces
TRUNCATION_MODES = ("keep_start", "keep_end")


def check_truncation_mode(truncation_mode: str) -> None:
    """Raise a `ValueError` naming the choices unless `truncation_mode` is one of `TRUNCATION_MODES`."""
    if truncation_mode not in TRUNCATION_MODES:
        raise ValueError(f"Unknown truncation_mode {truncation_mode!r}; choose one of {TRUNCATION_MODES}.")


def resolve_pad_to_multiple_of(value: int | str | None) -> int | None:
    """Resolve the `"auto"` value of `pad_to_multiple_of`: 128 on AWS Neuron devices, `None` elsewhere."""
    if value == "auto":
        import importlib.util

        return 128 if importlib.util.find_spec("torch_neuronx") is not None else None
    if isinstance(value, str):
        return int(value)
    return value


# ------------------------------------------------------------------------------------ family config bases
@dataclass
class _ModelLoadingFields:
    r"""
    Model-loading fields shared by the offline configs ([`DPOConfig`], [`SFTConfig`], [`RewardConfig`], [`PRMConfig`]
    and the `_ReferenceFreePairedConfig` / `_UnpairedPreferenceConfig` families; a mixin listed before the config's
    base, each config documents them in its own docstring).

    model_init_kwargs (`dict[str, Any]`, `str` or `None`, *optional*, defaults to `None`):
        Keyword arguments for `from_pretrained` when `model` is a string (also as a JSON string).
    trust_remote_code (`bool`, *optional*, defaults to `False`):
        Allow models with custom code from the Hub.
    """

    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Keyword arguments for from_pretrained when the model is a string."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})


@dataclass
class _PadToMultipleOfField:
    r"""
    `pad_to_multiple_of` of [`DPOConfig`], [`KTOConfig`], [`RewardConfig`] and [`SFTConfig`] (a mixin listed before
    the config's base; each config documents it), with its `"auto"` value resolved once the config is built.
    """

    pad_to_multiple_of: int | str | None = field(
        default="auto", metadata={"help": "Pad to a multiple of this value ('auto': None except on Neuron)."}
    )

    def __post_init__(self):
        super().__post_init__()
        self.pad_to_multiple_of = resolve_pad_to_multiple_of(self.pad_to_multiple_of)


@dataclass
class _ReferenceSyncFields:
    r"""
    Reference-model fields shared by [`DPOConfig`] and [`KTOConfig`] (a mixin listed before the config's base; each
    config documents them in its own docstring): `precompute_ref_batch_size` and TR-DPO's (arXiv 2404.09656)
    `sync_ref_model`, `ref_model_mixup_alpha` and `ref_model_sync_steps`.
    """

    precompute_ref_batch_size: int | None = field(
        default=None, metadata={"help": "Per-device batch size of the reference log-prob precomputation."}
    )
    sync_ref_model: bool = field(default=False, metadata={"help": "TR-DPO: periodically mix the policy into the ref."})
    ref_model_mixup_alpha: float = field(default=0.6, metadata={"help": "TR-DPO mixing weight alpha."})
    ref_model_sync_steps: int = field(default=512, metadata={"help": "TR-DPO: steps between reference updates."})


@dataclass
class _PreferenceLengthFields:
    r"""
    Data fields shared by the preference configs ([`DPOConfig`], the `_ReferenceFreePairedConfig` and
    `_UnpairedPreferenceConfig` families; a mixin listed before the config's base, each config documents them in its
    own docstring), and their one check, `_check_preference_lengths`.

    dataset_num_proc (`int` or `None`, *optional*, defaults to `None`):
        Processes used to tokenise the dataset.
    max_prompt_length, max_completion_length, max_length (`int` or `None`):
        Token limits of the prompt, the completion and the whole row (`None`: no limit of that kind).
    label_pad_token_id (`int`, *optional*, defaults to `-100`):
        Kept for compatibility with the 0.x API: completion tokens are tracked with a mask.
    """

    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes used to tokenize the dataset."})
    max_prompt_length: int | None = field(
        default=None, metadata={"help": "Maximum prompt length in tokens; None (the default): no separate limit."}
    )
    max_completion_length: int | None = field(default=None, metadata={"help": "Keep the first N completion tokens."})
    max_length: int | None = field(default=1024, metadata={"help": "Maximum prompt + completion length."})
    label_pad_token_id: int = field(default=-100, metadata={"help": "Kept for compatibility (unused)."})

    def _check_preference_lengths(self, padding_value_is_deprecated: bool = True) -> None:
        """Warn about the 0.x fields that do nothing here, then check `truncation_mode`, the token limits and
        `beta`; called by each config's `__post_init__` (the warnings point at the config's construction)."""
        if padding_value_is_deprecated and self.padding_value is not None:
            warnings.warn(
                "`padding_value` is deprecated: set `tokenizer.pad_token` instead.", FutureWarning, stacklevel=4
            )
        if self.label_pad_token_id != -100:
            warnings.warn(
                "`label_pad_token_id` has no effect: completion tokens are tracked with a mask, not with padded "
                "labels. Remove it from your configuration.",
                UserWarning,
                stacklevel=4,
            )
        check_truncation_mode(self.truncation_mode)
        for name in ("max_length", "max_prompt_length", "max_completion_length"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be a positive number of tokens, got {value}; use None for no limit.")
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}.")


@dataclass
class _ReferencePreferenceFields:
    r"""
    Fields of the preference configs with a reference model ([`DPOConfig`], `_UnpairedPreferenceConfig`; a mixin
    listed before the config's base, each config documents them): the 0.x `padding_value` (deprecated), the inverse
    temperature `beta` of the implicit reward and `generate_during_eval` (policy and reference generations).
    """

    padding_value: int | None = field(default=None, metadata={"help": "Deprecated: set tokenizer.pad_token."})
    beta: float = field(default=0.1, metadata={"help": "Inverse temperature beta."})
    generate_during_eval: bool = field(default=False, metadata={"help": "Log policy/reference generations at eval."})


@dataclass
class _ReferenceFreePairedConfig(_PreferenceLengthFields, _ModelLoadingFields, _BaseConfig):
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
    is_encoder_decoder: bool | None = field(
        default=None, metadata={"help": "Whether the model is an encoder-decoder (None: read from its config)."}
    )
    disable_dropout: bool = field(default=True, metadata={"help": "Disable dropout in the model."})
    truncation_mode: str = field(
        default="keep_end",
        metadata={"help": "Part of a long prompt to keep: keep_end or keep_start.", "choices": list(TRUNCATION_MODES)},
    )
    padding_value: int | None = field(default=None, metadata={"help": "Pad id (None: the tokenizer's pad token)."})
    beta: float = field(default=0.1, metadata={"help": "Weight of the preference term."})
    generate_during_eval: bool = field(default=False, metadata={"help": "Log generations to W&B at evaluation."})

    def __post_init__(self):
        super().__post_init__()
        # `padding_value` is the pad id of these trainers' collator, not a deprecated field.
        self._check_preference_lengths(padding_value_is_deprecated=False)


@dataclass
class _UnpairedPreferenceConfig(_ReferencePreferenceFields, _PreferenceLengthFields, _ModelLoadingFields, _BaseConfig):
    r"""
    Fields shared by the configurations of the unpaired preference trainers ([`KTOConfig`], [`BCOConfig`]).

    > Parameters that control the model and the reference model

    model_init_kwargs (`dict[str, Any]`, `str` or `None`, *optional*, defaults to `None`):
        Keyword arguments for `AutoModelForCausalLM.from_pretrained` when `model` is a string (also as JSON).
    ref_model_init_kwargs (`dict[str, Any]`, `str` or `None`, *optional*, defaults to `None`):
        Keyword arguments for `from_pretrained` when `ref_model` is a string. Defaults to `model_init_kwargs`.
    trust_remote_code (`bool`, *optional*, defaults to `False`):
        Allow models with custom code from the Hub.
    disable_dropout (`bool`, *optional*, defaults to `True`):
        Set every dropout probability of the model and the reference model to 0.
    precompute_ref_log_probs (`bool`, *optional*, defaults to `False`):
        Compute the reference log-probs of every training (and evaluation) example once, before training, and store
        them as dataset columns (`ref_logps`, and for KTO `ref_kl_logps`); no reference model stays in memory.
    is_encoder_decoder (`bool` or `None`, *optional*, defaults to `None`):
        Kept for compatibility; only decoder-only models are supported, so `True` raises.

    > Parameters that control the data

    dataset_num_proc (`int` or `None`, *optional*, defaults to `None`):
        Processes used to tokenise the dataset.
    max_prompt_length (`int` or `None`, *optional*, defaults to `None`):
        Prompts are cut to `max_prompt_length` tokens (which end is kept: `truncation_mode`). `None`, as in trl 1.x,
        sets no separate prompt limit: only `max_length` cuts the row. (trl 0.x defaulted to 512.)
    max_completion_length (`int` or `None`, *optional*, defaults to `None`):
        Completions are cut to their first `max_completion_length` tokens.
    max_length (`int` or `None`, *optional*, defaults to `1024`):
        Maximum length of a prompt + completion row; longer rows keep their first `max_length` tokens.
    truncation_mode (`str`, *optional*, defaults to `"keep_end"`):
        Which end of a prompt longer than `max_prompt_length` is kept: `"keep_end"` (next to the completion) or
        `"keep_start"`.
    padding_value (`int` or `None`, *optional*, defaults to `None`):
        Deprecated: the pad token id; set `tokenizer.pad_token` instead.
    label_pad_token_id (`int`, *optional*, defaults to `-100`):
        Kept for compatibility; completions are tracked with a mask.

    > Parameters that control the loss

    beta (`float`, *optional*, defaults to `0.1`):
        Inverse temperature β of the implicit reward `β·(log π − log π_ref)`.

    > Other parameters

    generate_during_eval (`bool`, *optional*, defaults to `False`):
        At each evaluation, generate completions of a batch of prompts with the policy and the reference and log them
        as a table to Weights & Biases (needs `wandb`).
    """

    _VALID_DICT_FIELDS = _BaseConfig._VALID_DICT_FIELDS + ["model_init_kwargs", "ref_model_init_kwargs"]
    _json_dict_fields = _BaseConfig._json_dict_fields + ("ref_model_init_kwargs",)

    # model and reference model
    ref_model_init_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Keyword arguments for from_pretrained when ref_model is a string."}
    )
    disable_dropout: bool = field(default=True, metadata={"help": "Disable dropout in the model and reference."})
    precompute_ref_log_probs: bool = field(
        default=False, metadata={"help": "Compute reference log-probs once before training and reuse them."}
    )
    is_encoder_decoder: bool | None = field(default=None, metadata={"help": "Only decoder-only models (True raises)."})

    # data
    truncation_mode: str = field(
        default="keep_end",
        metadata={"help": "Which end of a long prompt to keep.", "choices": list(TRUNCATION_MODES)},
    )

    def __post_init__(self):
        super().__post_init__()
        self._check_preference_lengths()
