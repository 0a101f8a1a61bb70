"""Configuration of [`PRMTrainer`]."""

from __future__ import annotations

from dataclasses import dataclass, field

from .base_config import _BaseConfig, _ModelLoadingFields


@dataclass
class PRMConfig(_ModelLoadingFields, _BaseConfig):
    r"""
    Configuration class for the [`PRMTrainer`] (process reward model trained on stepwise supervision).

    Only the parameters specific to PRM training are listed here; see [`~transformers.TrainingArguments`] for the
    rest.

    > Parameters that control the model

    model_init_kwargs (`dict[str, Any]`, `str` or `None`, *optional*, defaults to `None`):
        Keyword arguments for `AutoModelForTokenClassification.from_pretrained`, used when `model` is a string
        (`num_labels` is always 2). `dtype` may be `"auto"`, a dtype name or a `torch.dtype`.
    trust_remote_code (`bool`, *optional*, defaults to `False`):
        Forwarded to every `from_pretrained` call.
    disable_dropout (`bool`, *optional*, defaults to `True`):
        Set every dropout probability of the model to 0.

    > Parameters that control the data preprocessing

    step_separator (`str`, *optional*, defaults to `"\n"`):
        Text appended after every step. The last token of each separator carries the step's label; use the same
        separator at inference time.
    max_length (`int` or `None`, *optional*, defaults to `1024`):
        Maximum length of prompt + steps; longer sequences are cut at the end. `None` disables truncation.
    max_prompt_length (`int` or `None`, *optional*, defaults to `512`):
        Maximum prompt length (BOS included); longer prompts keep their last tokens. `None` disables truncation.
    max_completion_length (`int` or `None`, *optional*, defaults to `None`):
        Maximum length of the steps with their separators; longer completions keep their first tokens.
    train_on_last_step_only (`bool`, *optional*, defaults to `False`):
        Label only the last step of each training example (evaluation data keeps every step's label).
    dataset_num_proc (`int` or `None`, *optional*, defaults to `None`):
        Number of processes used to tokenise the dataset.
    """

    _VALID_DICT_FIELDS = _BaseConfig._VALID_DICT_FIELDS + ["model_init_kwargs"]

    learning_rate: float = field(default=1e-5, metadata={"help": "The initial learning rate for AdamW."})
    max_length: int | None = field(default=1024, metadata={"help": "Maximum length of prompt + steps."})
    max_prompt_length: int | None = field(
        default=512, metadata={"help": "Maximum prompt length (keeps the end of longer prompts)."}
    )
    max_completion_length: int | None = field(
        default=None, metadata={"help": "Maximum length of the steps with their separators."}
    )
    disable_dropout: bool = field(default=True, metadata={"help": "Disable dropout in the model."})
    step_separator: str = field(default="\n", metadata={"help": "Separator appended after every step."})
    train_on_last_step_only: bool = field(
        default=False, metadata={"help": "Label only the last step of each training example."}
    )
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes used to tokenize the dataset."})

    def __post_init__(self):
        super().__post_init__()
        for name in ("max_length", "max_prompt_length", "max_completion_length"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be a positive number of tokens, got {value}; use None for no limit.")
        if not isinstance(self.step_separator, str) or not self.step_separator:
            raise ValueError(
                f"step_separator must be a non-empty string (its last token carries each step's label), got "
                f"{self.step_separator!r}. The default is '\\n'."
            )
