"""Configuration of [`OnlineDPOTrainer`] (and the base of [`NashMDConfig`] and [`XPOConfig`])."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from .online_config import _OnlineConfig


@dataclass
class OnlineDPOConfig(_OnlineConfig):
    r"""
    Configuration class for the [`OnlineDPOTrainer`].

    Only the fields specific to Online DPO, or whose default differs, are listed; the generation, vLLM, reference
    and logging fields shared by the online trainers are documented in `trl.trainer.online_config` (e.g. `top_k`,
    `use_vllm`, `vllm_mode`, `reward_weights`, `log_completions`). As in the reference library,
    `per_device_train_batch_size` and `per_device_eval_batch_size` count prompts: each prompt is sampled as a pair of
    completions, so a micro-batch holds twice as many completions (`generation_batch_size`, when set, counts
    completions, as in the other online trainers).

    > Parameters that control the model and the scoring

    reward_model_path (`str` or `None`, *optional*, defaults to `None`):
        Reward model id or path, used when the trainer is given neither `reward_funcs` nor a `judge`.
    judge (`str` or `None`, *optional*, defaults to `None`):
        Name of a pairwise judge (`"pair_rm"`, `"openai"`, `"hf"`, `"reward_model"`), built by the command line
        script (and by the trainer when it is given neither `reward_funcs` nor `judge`).
    missing_eos_penalty (`float` or `None`, *optional*, defaults to `None`):
        Subtracted from the score of every completion that ends without an EOS token (reward functions only, not
        judges); must be ≥ 0.
    disable_dropout (`bool`, *optional*, defaults to `True`):
        Set every dropout probability of the policy to 0.

    > Parameters that control the generation

    max_new_tokens (`int`, *optional*, defaults to `64`):
        Most tokens generated per completion.
    max_length (`int`, *optional*, defaults to `512`):
        Most tokens of prompt + completion: prompts are cut from the left to `max_length − max_new_tokens` tokens
        (unless `max_prompt_length` is set).
    temperature (`float`, *optional*, defaults to `0.9`):
        Sampling temperature; the log-probs use the same temperature.
    dataset_num_proc (`int` or `None`, *optional*, defaults to `None`):
        Seed-era field; prompts are tokenized on the fly, so it is not used (a warning when set).
    gpu_memory_utilization (`float` or `None`, *optional*, defaults to `None`):
        Deprecated alias of `vllm_gpu_memory_utilization`.

    > Parameters that control the loss

    learning_rate (`float`, *optional*, defaults to `5e-7`):
        Initial learning rate of AdamW.
    beta (`float` or `list[float]`, *optional*, defaults to `[0.1]`):
        β of the DPO loss; a list gives one value per epoch, the last one used for the remaining epochs.
    loss_type (`str`, *optional*, defaults to `"sigmoid"`):
        `"sigmoid"` (`−logσ(βΔ)`) or `"ipo"` (`(Δ − 1/(2β))²`), Δ from summed log-probs.
    """

    _VALUE_LISTS = ("beta",)
    _completions_per_batch_entry = 2  # the batch sizes count prompts; each one is sampled as a pair

    learning_rate: float = field(default=5e-7, metadata={"help": "The initial learning rate for AdamW."})
    reward_model_path: str | None = field(default=None, metadata={"help": "Reward model id or path."})
    judge: str | None = field(
        default=None, metadata={"help": "Pairwise judge name: pair_rm, openai, hf or reward_model."}
    )
    max_new_tokens: int = field(default=64, metadata={"help": "Most tokens generated per completion."})
    max_length: int = field(default=512, metadata={"help": "Most tokens of prompt + completion."})
    temperature: float = field(default=0.9, metadata={"help": "Sampling temperature."})
    missing_eos_penalty: float | None = field(
        default=None, metadata={"help": "Score penalty of completions without EOS (reward functions only)."}
    )
    beta: list[float] = field(default_factory=lambda: [0.1], metadata={"help": "beta, one value per epoch."})
    loss_type: str = field(default="sigmoid", metadata={"help": "sigmoid or ipo.", "choices": ["sigmoid", "ipo"]})
    disable_dropout: bool = field(default=True, metadata={"help": "Set every dropout probability to 0."})
    num_generations: int | None = field(default=2, metadata={"help": "Completions per prompt (always 2)."})
    max_completion_length: int | None = field(
        default=None, metadata={"help": "Set from max_new_tokens (the name of the other online trainers)."}
    )
    vllm_gpu_memory_utilization: float = field(default=0.55, metadata={"help": "Colocate: GPU memory share."})
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Unused (prompts tokenized on the fly)."})
    gpu_memory_utilization: float | None = field(
        default=None, metadata={"help": "Deprecated alias of vllm_gpu_memory_utilization."}
    )

    def __post_init__(self):
        for name in self._VALUE_LISTS:
            value = getattr(self, name)
            values = [value] if isinstance(value, int | float) else list(value)
            if not values:
                raise ValueError(f"{name} needs at least one value (one per epoch).")
            setattr(self, name, [float(v) for v in values])
        if self.gpu_memory_utilization is not None:
            warnings.warn(
                "`gpu_memory_utilization` is deprecated; use `vllm_gpu_memory_utilization`.", FutureWarning, 3
            )
            self.vllm_gpu_memory_utilization = self.gpu_memory_utilization
        if self.dataset_num_proc is not None:
            warnings.warn("dataset_num_proc is not used: prompts are tokenized on the fly.", UserWarning, 3)
        self._resolve_lengths()
        super().__post_init__()
        self._validate_pairwise()

    def _resolve_lengths(self) -> None:
        if self.max_new_tokens is None or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive number of tokens, got {self.max_new_tokens}.")
        if self.max_completion_length not in (None, self.max_new_tokens):
            raise ValueError(
                f"{type(self).__name__} sets the completion length with max_new_tokens; got max_completion_length="
                f"{self.max_completion_length}. Set max_new_tokens instead."
            )
        self.max_completion_length = self.max_new_tokens
        if self.max_prompt_length is None and self.max_length is not None:
            if self.max_length <= self.max_new_tokens:
                raise ValueError(
                    f"max_length ({self.max_length}) must exceed max_new_tokens ({self.max_new_tokens}): it bounds "
                    "prompt + completion."
                )
            self.max_prompt_length = self.max_length - self.max_new_tokens

    def _validate_pairwise(self) -> None:
        for name in ("num_generations", "num_generations_eval"):
            if getattr(self, name) != 2:
                raise ValueError(
                    f"{type(self).__name__} compares two completions per prompt: {name} must be 2, got "
                    f"{getattr(self, name)}."
                )
        self._check_one_of("loss_type", ("sigmoid", "ipo"))
        if any(not b > 0 for b in self.beta):
            raise ValueError(f"Every beta must be > 0 (the loss divides by it or scales by it), got {self.beta}.")
        if self.missing_eos_penalty is not None and self.missing_eos_penalty < 0:
            raise ValueError(
                f"missing_eos_penalty is subtracted from the score, so it must be >= 0; got {self.missing_eos_penalty}."
            )
        if self.judge is not None:
            from ..judges import JUDGES

            self._check_one_of("judge", tuple(sorted(JUDGES)))
