"""Configuration of [`GKDTrainer`]."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .distillation_config import check_distillation_fields
from .sft_config import SFTConfig


@dataclass
class GKDConfig(SFTConfig):
    r"""
    Configuration class for the [`GKDTrainer`].

    It extends [`SFTConfig`] (every SFT field, including `learning_rate=2e-5`) with the Generalized Knowledge
    Distillation parameters; see [`SFTConfig`] and [`~transformers.TrainingArguments`] for the rest.

    > Parameters that control the distillation

    temperature (`float`, *optional*, defaults to `0.9`):
        Sampling temperature of the generated completions; both student and teacher logits are divided by it in the
        loss. Must be positive.
    lmbda (`float`, *optional*, defaults to `0.5`):
        Probability that a micro-batch is on-policy: its completions are sampled from the student. In `[0, 1]`.
    beta (`float`, *optional*, defaults to `0.5`):
        Interpolation of the generalised Jensen-Shannon divergence: `0.0` is the forward KL
        `KL(teacher || student)`, `1.0` the reverse KL `KL(student || teacher)`. In `[0, 1]`.
    max_new_tokens (`int`, *optional*, defaults to `128`):
        Most tokens sampled per completion (student or teacher).
    teacher_model_name_or_path (`str` or `None`, *optional*, defaults to `None`):
        Id or path of the teacher, used when the trainer's `teacher_model` argument is not given. When neither is
        given, the teacher is the model itself: the live student, scored in eval mode (no dropout) under `no_grad` on
        its current weights.
    teacher_model_init_kwargs (`dict[str, Any]`, `str` or `None`, *optional*, defaults to `None`):
        Keyword arguments for `AutoModelForCausalLM.from_pretrained` when the teacher is given as a string. The teacher
        keeps its checkpoint's dtype unless `dtype` is set here.
    disable_dropout (`bool`, *optional*, defaults to `True`):
        Set every dropout probability of the student to 0 (the teacher never has dropout).
    seq_kd (`bool`, *optional*, defaults to `False`):
        Sequence-level KD: off-policy micro-batches train on completions sampled from the teacher instead of the
        dataset's.
    """

    _json_dict_fields = (*SFTConfig._json_dict_fields, "teacher_model_init_kwargs")

    temperature: float = field(default=0.9, metadata={"help": "Sampling temperature; also divides the logits."})
    lmbda: float = field(default=0.5, metadata={"help": "Fraction of on-policy (student-generated) micro-batches."})
    beta: float = field(
        default=0.5, metadata={"help": "Generalised JSD interpolation (0: forward KL, 1: reverse KL)."}
    )
    max_new_tokens: int = field(default=128, metadata={"help": "Most tokens sampled per completion."})
    teacher_model_name_or_path: str | None = field(default=None, metadata={"help": "Teacher model id or path."})
    teacher_model_init_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "from_pretrained kwargs of a teacher given as a string (dict or JSON)."}
    )
    disable_dropout: bool = field(default=True, metadata={"help": "Disable dropout in the student."})
    seq_kd: bool = field(default=False, metadata={"help": "Off-policy batches use teacher-generated completions."})

    def _validate(self) -> None:
        super()._validate()
        check_distillation_fields(self)
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}.")
