"""Configuration of [`KTOTrainer`]."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from .base_config import _BaseConfig
from .sft_config import TRUNCATION_MODES, resolve_pad_to_multiple_of


KTO_LOSS_TYPES = ("kto", "apo_zero_unpaired")


@dataclass
class _UnpairedPreferenceConfig(_BaseConfig):
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
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Keyword arguments for from_pretrained when the model is a string."}
    )
    ref_model_init_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Keyword arguments for from_pretrained when ref_model is a string."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})
    disable_dropout: bool = field(default=True, metadata={"help": "Disable dropout in the model and reference."})
    precompute_ref_log_probs: bool = field(
        default=False, metadata={"help": "Compute reference log-probs once before training and reuse them."}
    )
    is_encoder_decoder: bool | None = field(default=None, metadata={"help": "Only decoder-only models (True raises)."})

    # data
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes used to tokenize the dataset."})
    max_prompt_length: int | None = field(
        default=None, metadata={"help": "Maximum prompt length in tokens; None (the default): no separate limit."}
    )
    max_completion_length: int | None = field(default=None, metadata={"help": "Keep the first N completion tokens."})
    max_length: int | None = field(default=1024, metadata={"help": "Maximum prompt + completion length."})
    truncation_mode: str = field(
        default="keep_end",
        metadata={"help": "Which end of a long prompt to keep.", "choices": list(TRUNCATION_MODES)},
    )
    padding_value: int | None = field(default=None, metadata={"help": "Deprecated: set tokenizer.pad_token."})
    label_pad_token_id: int = field(default=-100, metadata={"help": "Kept for compatibility (unused)."})

    # loss and evaluation
    beta: float = field(default=0.1, metadata={"help": "Inverse temperature beta."})
    generate_during_eval: bool = field(default=False, metadata={"help": "Log policy/reference generations at eval."})

    def __post_init__(self):
        super().__post_init__()
        if self.padding_value is not None:
            warnings.warn(
                "`padding_value` is deprecated: set `tokenizer.pad_token` instead.", FutureWarning, stacklevel=3
            )
        if self.label_pad_token_id != -100:
            warnings.warn(
                "`label_pad_token_id` has no effect: completion tokens are tracked with a mask, not with padded "
                "labels. Remove it from your configuration.",
                UserWarning,
                stacklevel=3,
            )
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}.")
        if self.truncation_mode not in TRUNCATION_MODES:
            raise ValueError(f"Unknown truncation_mode {self.truncation_mode!r}; choose one of {TRUNCATION_MODES}.")
        for name in ("max_length", "max_prompt_length", "max_completion_length"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}; use None to disable that truncation.")


@dataclass
class KTOConfig(_UnpairedPreferenceConfig):
    r"""
    Configuration class for the [`KTOTrainer`].

    Only the parameters specific to KTO are listed here; the fields shared with [`BCOConfig`] (`model_init_kwargs`,
    `ref_model_init_kwargs`, `trust_remote_code`, `disable_dropout`, `precompute_ref_log_probs`, `dataset_num_proc`,
    `max_prompt_length=None`, `max_completion_length`, `max_length=1024`, `truncation_mode="keep_end"`, `beta=0.1`,
    `generate_during_eval`, and the 0.x `padding_value`, `label_pad_token_id`, `is_encoder_decoder`) are documented in
    `_UnpairedPreferenceConfig`, and the rest in [`~transformers.TrainingArguments`]. `train_sampling_strategy`
    defaults to `"sequential"`: batches follow the dataset's order (KTO does not reorder it), so that precomputed
    reference log-probs of the KL pairs match the batches. Shuffle the dataset beforehand for mixed batches.

    > Parameters that control the model and the reference model

    router_aux_loss_coef (`float` or `None`, *optional*, defaults to `None`):
        Weight of the MoE router auxiliary loss (models loaded with `output_router_logits=True`). `None` uses the
        model config's value; `0.0` disables it.
    precompute_ref_batch_size (`int` or `None`, *optional*, defaults to `None`):
        Per-device batch size of the reference log-prob precomputation. `None` uses the training / evaluation batch
        size.
    sync_ref_model (`bool`, *optional*, defaults to `False`):
        Every `ref_model_sync_steps` steps, move the reference towards the policy (TR-DPO, arXiv 2404.09656),
        `θ_ref ← α·θ + (1−α)·θ_ref` with `α = ref_model_mixup_alpha`.
    ref_model_mixup_alpha (`float`, *optional*, defaults to `0.6`):
        The α of `sync_ref_model`.
    ref_model_sync_steps (`int`, *optional*, defaults to `512`):
        Steps between two reference updates with `sync_ref_model`.
    activation_offloading (`bool`, *optional*, defaults to `False`):
        Offload activations to CPU memory (needs an accelerator).

    > Parameters that control the data

    pad_to_multiple_of (`int`, `str` or `None`, *optional*, defaults to `"auto"`):
        Pad batches to a multiple of this value. `"auto"` means 128 on AWS Neuron and `None` elsewhere.

    > Parameters that control the loss

    loss_type (`str`, *optional*, defaults to `"kto"`):
        `"kto"` (arXiv 2402.01306, with the KL reference point) or `"apo_zero_unpaired"` (arXiv 2408.06266, no KL).
    desirable_weight (`float`, *optional*, defaults to `1.0`):
        Weight of the losses of desirable examples.
    undesirable_weight (`float`, *optional*, defaults to `1.0`):
        Weight of the losses of undesirable examples. Choose the weights so that `desirable_weight · #desirable :
        undesirable_weight · #undesirable` is between 1:1 and 4:3.
    use_liger_loss (`bool`, *optional*, defaults to `False`):
        Liger's fused KTO loss; not supported in this version (raises).
    base_model_attribute_name (`str`, *optional*, defaults to `"model"`):
        Name of the decoder attribute, for the Liger loss.
    """

    learning_rate: float = field(default=1e-6, metadata={"help": "The initial learning rate for AdamW."})
    train_sampling_strategy: str = field(
        default="sequential",
        metadata={
            "help": "Sampler for training (sequential: batches follow the dataset's order).",
            "choices": ["random", "sequential", "group_by_length", "batch_rebalance"],
        },
    )
    router_aux_loss_coef: float | None = field(
        default=None, metadata={"help": "MoE router auxiliary loss weight (None: model config value)."}
    )
    precompute_ref_batch_size: int | None = field(
        default=None, metadata={"help": "Per-device batch size of the reference log-prob precomputation."}
    )
    sync_ref_model: bool = field(default=False, metadata={"help": "TR-DPO: periodically mix the policy into the ref."})
    ref_model_mixup_alpha: float = field(default=0.6, metadata={"help": "TR-DPO mixing weight alpha."})
    ref_model_sync_steps: int = field(default=512, metadata={"help": "TR-DPO: steps between reference updates."})
    activation_offloading: bool = field(default=False, metadata={"help": "Offload activations to CPU memory."})
    pad_to_multiple_of: int | str | None = field(
        default="auto", metadata={"help": "Pad to a multiple of this value ('auto': None except on Neuron)."}
    )
    loss_type: str = field(
        default="kto", metadata={"help": "kto or apo_zero_unpaired.", "choices": list(KTO_LOSS_TYPES)}
    )
    desirable_weight: float = field(default=1.0, metadata={"help": "Weight of the desirable losses."})
    undesirable_weight: float = field(default=1.0, metadata={"help": "Weight of the undesirable losses."})
    use_liger_loss: bool = field(default=False, metadata={"help": "Use Liger's fused KTO loss (unsupported)."})
    base_model_attribute_name: str = field(default="model", metadata={"help": "Decoder attribute (Liger)."})

    def __post_init__(self):
        self.pad_to_multiple_of = resolve_pad_to_multiple_of(self.pad_to_multiple_of)
        super().__post_init__()
        if self.loss_type not in KTO_LOSS_TYPES:
            raise ValueError(f"Unknown loss_type {self.loss_type!r}; choose one of {list(KTO_LOSS_TYPES)}.")
        if self.desirable_weight < 0 or self.undesirable_weight < 0:
            raise ValueError("desirable_weight and undesirable_weight must be >= 0.")
        if self.loss_type == "kto" and self.per_device_train_batch_size < 2:
            raise ValueError(
                "loss_type='kto' estimates its KL reference point from mismatched prompt/completion pairs within each "
                "batch; with per_device_train_batch_size=1 the only pair is the example itself, so the KL term equals "
                "the implied reward. Use per_device_train_batch_size >= 2 (4 or more recommended)."
            )
        if self.loss_type == "kto" and self.precompute_ref_log_probs and self.train_sampling_strategy != "sequential":
            raise ValueError(
                "precompute_ref_log_probs=True stores the reference log-probs of each batch's KL pairs, which needs "
                "the batches read in dataset order: keep train_sampling_strategy='sequential' (shuffle the dataset "
                "beforehand for mixed batches)."
            )
        self._validate_sync()

    def _validate_sync(self) -> None:
        if not self.sync_ref_model:
            return
        if not 0 <= self.ref_model_mixup_alpha <= 1:
            raise ValueError(f"ref_model_mixup_alpha must be in [0, 1], got {self.ref_model_mixup_alpha}.")
        if self.ref_model_sync_steps < 1:
            raise ValueError(f"ref_model_sync_steps must be >= 1, got {self.ref_model_sync_steps}.")
        if self.precompute_ref_log_probs:
            raise ValueError(
                "sync_ref_model=True updates a reference model during training; with precompute_ref_log_probs=True "
                "there is no live reference. Set one of them to False."
            )
