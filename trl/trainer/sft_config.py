"""Configuration of [`SFTTrainer`]."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# `TRUNCATION_MODES` and `resolve_pad_to_multiple_of` live in base_config; this import path keeps working.
from .base_config import (  # noqa: F401
    TRUNCATION_MODES,
    _BaseConfig,
    _ModelLoadingFields,
    _PadToMultipleOfField,
    check_truncation_mode,
    resolve_pad_to_multiple_of,
)


SFT_LOSS_TYPES = ("nll", "dft")
PACKING_STRATEGIES = ("bfd", "bfd_split", "wrapped")


@dataclass
class SFTConfig(_PadToMultipleOfField, _ModelLoadingFields, _BaseConfig):
    r"""
    Configuration class for the [`SFTTrainer`].

    Only the parameters specific to SFT are listed here; see [`~transformers.TrainingArguments`] for the rest.

    > Parameters that control the model

    model_init_kwargs (`dict[str, Any]`, `str` or `None`, *optional*, defaults to `None`):
        Keyword arguments for `AutoModelForCausalLM.from_pretrained`, used when `model` is a string. `dtype` may be
        `"auto"`, a dtype name or a `torch.dtype`; `torch_dtype` is accepted as an alias.
    trust_remote_code (`bool`, *optional*, defaults to `False`):
        Forwarded to every `from_pretrained` call.
    router_aux_loss_coef (`float` or `None`, *optional*, defaults to `None`):
        Weight of the MoE router auxiliary loss when the model returns router logits. `None` uses the model config's
        value, `0.0` disables the term.
    chat_template_path (`str` or `None`, *optional*, defaults to `None`):
        A tokenizer directory or Hub id whose chat template (and special tokens) is cloned, or a `.jinja` file used
        as the chat template.

    > Parameters that control the data preprocessing

    dataset_text_field (`str`, *optional*, defaults to `"text"`):
        Column holding the text of language-modelling datasets.
    dataset_kwargs (`dict[str, Any]`, `str` or `None`, *optional*, defaults to `None`):
        Dataset-preparation options. The only key is `skip_prepare_dataset`.
    dataset_num_proc (`int` or `None`, *optional*, defaults to `None`):
        Number of processes used to prepare the dataset.
    eos_token (`str` or `None`, *optional*, defaults to `None`):
        Token appended to standard texts that do not end with it. Defaults to the tokenizer's `eos_token`.
    pad_token (`str` or `None`, *optional*, defaults to `None`):
        Deprecated: set `tokenizer.pad_token` instead. Defaults to the tokenizer's pad token, else its EOS token.
    max_length (`int` or `None`, *optional*, defaults to `1024`):
        Maximum tokenised length; longer sequences are truncated. With `packing=True` it is the packed row length.
    truncation_mode (`str`, *optional*, defaults to `"keep_start"`):
        `"keep_start"` keeps the first `max_length` tokens; `"keep_end"` (deprecated) keeps the last ones.
    shuffle_dataset (`bool`, *optional*, defaults to `False`):
        Shuffle the training dataset once, before packing.
    packing (`bool`, *optional*, defaults to `False`):
        Pack several sequences into rows of `max_length` tokens.
    packing_strategy (`str`, *optional*, defaults to `"bfd"`):
        `"bfd"` (best-fit decreasing, keeps document boundaries), `"bfd_split"` (like `bfd`, overflow split into
        new pieces) or `"wrapped"` (concatenate and cut; documents may attend to each other).
    padding_free (`bool`, *optional*, defaults to `False`):
        Flatten each batch into a single row without padding, with per-sequence `position_ids`. Turned on by
        `packing` with a `bfd` strategy when the model uses FlashAttention; with sdpa / eager attention packed rows
        stay rows with per-document `position_ids` (the same loss, and attention over one row at a time instead of
        over the whole flattened batch).
    pad_to_multiple_of (`int`, `str` or `None`, *optional*, defaults to `"auto"`):
        Pad sequences to a multiple of this value. `"auto"` means `None` except on AWS Neuron (128).
    eval_packing (`bool` or `None`, *optional*, defaults to `None`):
        Pack the evaluation dataset. `None` follows `packing`.

    > Parameters that control the training

    completion_only_loss (`bool` or `None`, *optional*, defaults to `None`):
        Train on completion tokens only. `None` means on for prompt-completion datasets, off otherwise.
    assistant_only_loss (`bool`, *optional*, defaults to `False`):
        Train on assistant tokens only (conversational data; the chat template needs `{% generation %}` markers).
    loss_type (`str`, *optional*, defaults to `"nll"`):
        `"nll"` (negative log-likelihood) or `"dft"` (Dynamic Fine-Tuning, each token's NLL scaled by its detached
        probability, arXiv 2508.05629). `"chunked_nll"` is a deprecated alias of `"nll"`.
    activation_offloading (`bool`, *optional*, defaults to `False`):
        Offload activations to CPU memory during the forward pass (needs an accelerator).
    """

    _VALID_DICT_FIELDS = _BaseConfig._VALID_DICT_FIELDS + ["model_init_kwargs", "dataset_kwargs"]

    learning_rate: float = field(default=2e-5, metadata={"help": "The initial learning rate for AdamW."})

    router_aux_loss_coef: float | None = field(
        default=None, metadata={"help": "MoE router auxiliary loss weight (None: model config value)."}
    )
    chat_template_path: str | None = field(
        default=None, metadata={"help": "Tokenizer path or .jinja file whose chat template is used."}
    )
    dataset_text_field: str = field(default="text", metadata={"help": "Text column of language-modeling data."})
    dataset_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Dataset preparation options, e.g. {'skip_prepare_dataset': true}."}
    )
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes used to prepare the dataset."})
    eos_token: str | None = field(default=None, metadata={"help": "EOS token appended to standard texts."})
    max_length: int | None = field(default=1024, metadata={"help": "Maximum tokenized length (packed row length)."})
    truncation_mode: str = field(
        default="keep_start", metadata={"help": "keep_start or keep_end.", "choices": list(TRUNCATION_MODES)}
    )
    shuffle_dataset: bool = field(default=False, metadata={"help": "Shuffle the training dataset before packing."})
    packing: bool = field(default=False, metadata={"help": "Pack several sequences into each row."})
    packing_strategy: str = field(
        default="bfd", metadata={"help": "bfd, bfd_split or wrapped.", "choices": list(PACKING_STRATEGIES)}
    )
    padding_free: bool = field(default=False, metadata={"help": "Flatten batches into one row without padding."})
    eval_packing: bool | None = field(default=None, metadata={"help": "Pack the eval dataset (None: as packing)."})
    completion_only_loss: bool | None = field(
        default=None, metadata={"help": "Loss on completion tokens only (None: on for prompt-completion data)."}
    )
    assistant_only_loss: bool = field(default=False, metadata={"help": "Loss on assistant tokens only."})
    loss_type: str = field(default="nll", metadata={"help": "nll or dft.", "choices": ["nll", "dft", "chunked_nll"]})
    activation_offloading: bool = field(default=False, metadata={"help": "Offload activations to CPU memory."})
    pad_token: str | None = field(default=None, metadata={"help": "Deprecated: set tokenizer.pad_token instead."})

    def __post_init__(self):
        super().__post_init__()
        if self.loss_type == "chunked_nll":
            import warnings

            warnings.warn('`loss_type="chunked_nll"` is deprecated; use "nll".', FutureWarning, stacklevel=2)
            self.loss_type = "nll"
        self._validate()

    def _validate(self) -> None:
        if self.loss_type not in SFT_LOSS_TYPES:
            raise ValueError(f"Unknown loss_type {self.loss_type!r}; choose one of {SFT_LOSS_TYPES}.")
        if self.packing_strategy not in PACKING_STRATEGIES:
            raise ValueError(
                f"Unknown packing_strategy {self.packing_strategy!r}; choose one of {PACKING_STRATEGIES}."
            )
        check_truncation_mode(self.truncation_mode)
        if self.max_length is not None and self.max_length <= 0:
            raise ValueError(f"max_length must be positive, got {self.max_length}; use None to disable truncation.")
        if (self.packing or self.eval_packing) and self.max_length is None:
            raise ValueError("packing needs max_length (the packed row length); set max_length, e.g. 1024.")
