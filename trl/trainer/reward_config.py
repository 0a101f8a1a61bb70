"""Configuration of [`RewardTrainer`]."""

from __future__ import annotations

from dataclasses import dataclass, field

from .base_config import _BaseConfig, _ModelLoadingFields, _PadToMultipleOfField


@dataclass
class RewardConfig(_PadToMultipleOfField, _ModelLoadingFields, _BaseConfig):
    r"""
    Configuration class for the [`RewardTrainer`].

    Only the parameters specific to reward modelling are listed here; see [`~transformers.TrainingArguments`] for the
    rest.

    > Parameters that control the model

    model_init_kwargs (`dict[str, Any]`, `str` or `None`, *optional*, defaults to `None`):
        Keyword arguments for `AutoModelForSequenceClassification.from_pretrained`, used when `model` is a string
        (`num_labels` is always 1).
    trust_remote_code (`bool`, *optional*, defaults to `False`):
        Forwarded to every `from_pretrained` call.
    chat_template_path (`str` or `None`, *optional*, defaults to `None`):
        A tokenizer directory or Hub id whose chat template (and special tokens) is cloned, or a `.jinja` file used
        as the chat template.
    disable_dropout (`bool`, *optional*, defaults to `True`):
        Set every dropout probability of the model to 0.

    > Parameters that control the data preprocessing

    dataset_num_proc (`int` or `None`, *optional*, defaults to `None`):
        Number of processes used to tokenise the dataset.
    eos_token (`str` or `None`, *optional*, defaults to `None`):
        Token appended to standard (non-conversational) sequences that do not end with it. Defaults to the
        tokenizer's `eos_token`.
    pad_token (`str` or `None`, *optional*, defaults to `None`):
        Deprecated: set `tokenizer.pad_token` instead.
    max_length (`int` or `None`, *optional*, defaults to `1024`):
        Pairs whose chosen or rejected sequence is longer are dropped (not truncated). `None` keeps every pair.
    pad_to_multiple_of (`int`, `str` or `None`, *optional*, defaults to `"auto"`):
        Pad batches to a multiple of this length. `"auto"` means `None` except on AWS Neuron (128).

    > Parameters that control the training

    center_rewards_coefficient (`float` or `None`, *optional*, defaults to `None`):
        Weight of the term `mean((r_c + r_r)²)` that keeps rewards centred on 0 (Eisenstein et al., 2023); 0.01 is
        recommended. `None` disables it.
    activation_offloading (`bool`, *optional*, defaults to `False`):
        Offload activations to CPU memory during the forward pass (needs an accelerator).
    """

    _VALID_DICT_FIELDS = _BaseConfig._VALID_DICT_FIELDS + ["model_init_kwargs"]

    learning_rate: float = field(default=1e-4, metadata={"help": "The initial learning rate for AdamW."})
    chat_template_path: str | None = field(
        default=None, metadata={"help": "Tokenizer path or .jinja file whose chat template is used."}
    )
    disable_dropout: bool = field(default=True, metadata={"help": "Disable dropout in the model."})
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes used to tokenize the dataset."})
    eos_token: str | None = field(default=None, metadata={"help": "EOS token appended to standard sequences."})
    max_length: int | None = field(default=1024, metadata={"help": "Drop pairs with a longer sequence."})
    center_rewards_coefficient: float | None = field(
        default=None, metadata={"help": "Weight of the reward-centring term (0.01 recommended)."}
    )
    activation_offloading: bool = field(default=False, metadata={"help": "Offload activations to CPU memory."})
    pad_token: str | None = field(default=None, metadata={"help": "Deprecated: set tokenizer.pad_token instead."})

    def __post_init__(self):
        super().__post_init__()
        if self.max_length is not None and self.max_length <= 0:
            raise ValueError(f"max_length must be positive, got {self.max_length}; use None to keep every pair.")
        if self.center_rewards_coefficient is not None and self.center_rewards_coefficient < 0:
            raise ValueError(f"center_rewards_coefficient must be >= 0, got {self.center_rewards_coefficient}.")
