"""Configuration of [`DistillationTrainer`]."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .base_config import _BaseConfig
from .online_config import VLLM_MODEL_IMPLS, VLLM_MODES


def check_distillation_fields(config: Any) -> None:
    """The checks every distillation config makes: `lmbda` and `beta` in `[0, 1]`, a positive `temperature`."""
    for name in ("lmbda", "beta"):
        if not 0.0 <= getattr(config, name) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {getattr(config, name)}.")
    if config.temperature <= 0:
        raise ValueError(f"temperature must be positive (it divides the logits), got {config.temperature}.")


@dataclass
class DistillationConfig(_BaseConfig):
    r"""
    Configuration class for the [`DistillationTrainer`].

    Only the parameters specific to distillation are listed here; see [`~transformers.TrainingArguments`] for the
    rest. `learning_rate` defaults to `1e-6`.

    > Parameters that control the model

    model_init_kwargs (`dict[str, Any]`, `str` or `None`, *optional*, defaults to `None`):
        Keyword arguments for `AutoModelForCausalLM.from_pretrained`, used when `model` is a string (float32 unless
        `dtype` is set here).
    trust_remote_code (`bool`, *optional*, defaults to `False`):
        Forwarded to every `from_pretrained` call, the teacher's included.
    max_length (`int` or `None`, *optional*, defaults to `1024`):
        Most tokens of prompt + completion.
    disable_dropout (`bool`, *optional*, defaults to `True`):
        Set every dropout probability of the student to 0.

    > Parameters that control the distillation

    temperature (`float`, *optional*, defaults to `1.0`):
        Sampling temperature; both student and teacher logits are divided by it in the loss.
    lmbda (`float`, *optional*, defaults to `1.0`):
        Probability that a micro-batch is on-policy (completions sampled from the student); otherwise the dataset's
        completions are used. `0.0` is fully off-policy, `1.0` fully on-policy.
    beta (`float`, *optional*, defaults to `1.0`):
        Generalised JSD interpolation: `0.0` forward KL, `0.5` JSD, `1.0` reverse KL.
    reverse_kl_top_1_mode (`str`, *optional*, defaults to `"sampled"`):
        With `beta > 0` and `loss_top_k == 1`, the reverse term's token: `"sampled"` (the token in the sequence) or
        `"argmax"` (the student's most likely token). The forward term always uses the teacher's top-1 token.
    max_completion_length (`int`, *optional*, defaults to `512`):
        Most tokens sampled per completion; dataset completions are cut to it too.
    max_prompt_length (`int` or `None`, *optional*, defaults to `None`):
        Most prompt tokens (the last ones are kept). `None` means `max_length - max_completion_length`.
    loss_top_k (`int`, *optional*, defaults to `1`):
        Restrict both distributions to `K` tokens before the divergence (teacher's top-k for the forward term,
        student's for the reverse term, the union for the JSD). `0` uses the full vocabulary.
    loss_add_tail (`bool`, *optional*, defaults to `True`):
        Keep the probability mass outside the top-k support as one extra bucket (else renormalise over the support).

    > Parameters that control the teacher

    teacher_model_name_or_path (`str` or `None`, *optional*, defaults to `None`):
        Id or path of the teacher, used when the trainer's `teacher_model` argument is not given.
    teacher_model_revision (`str` or `None`, *optional*, defaults to `None`):
        Revision (branch, tag or commit) of the teacher checkpoint.
    teacher_model_init_kwargs (`dict[str, Any]`, `str` or `None`, *optional*, defaults to `None`):
        Keyword arguments for `AutoModelForCausalLM.from_pretrained` of a teacher given as a string; it keeps its
        checkpoint's dtype unless `dtype` is set here.
    use_teacher_server (`bool`, *optional*, defaults to `False`):
        Score with a teacher served by `trl vllm-serve` instead of a local model (none is loaded): the server returns
        the teacher's log-probs of the completion tokens. The server only gives top-k log-probs, so `beta=0` needs
        `loss_top_k > 0` (the teacher's top-k), and `beta > 0` needs `loss_top_k=1` with
        `reverse_kl_top_1_mode="sampled"`; `use_liger_kernel` is not supported. The connection waits at most
        `vllm_server_timeout` seconds and sends `$TRL_VLLM_SERVER_API_KEY` as the API key when it is set.
    teacher_model_server_url (`str` or `None`, *optional*, defaults to `None`):
        Base URL of that server (e.g. `"http://localhost:8000"`); required with `use_teacher_server=True`.

    > Parameters that control on-policy generation

    num_generations (`int`, *optional*, defaults to `1`):
        Completions per prompt; only `1` is supported.
    generation_batch_size (`int` or `None`, *optional*, defaults to `None`):
        Prompts per process per optimizer step; `None` means `per_device_train_batch_size *
        gradient_accumulation_steps / num_generations`, the only supported value.
    top_p (`float`, *optional*, defaults to `0.95`):
        Nucleus sampling mass.
    top_k (`int`, *optional*, defaults to `0`):
        Top-k sampling; `0` disables it.
    generation_kwargs (`dict[str, Any]`, `str` or `None`, *optional*, defaults to `None`):
        Extra generation arguments (`GenerationConfig` fields, or vLLM `SamplingParams` fields).
    chat_template_kwargs (`dict[str, Any]`, `str` or `None`, *optional*, defaults to `None`):
        Extra arguments of `apply_chat_template` when rendering conversational prompts.
    ds3_gather_for_generation (`bool`, *optional*, defaults to `True`):
        Under DeepSpeed ZeRO-3, gather the student's weights for generation.
    shuffle_dataset (`bool`, *optional*, defaults to `True`):
        Shuffle the training prompts.
    pad_to_multiple_of (`int` or `None`, *optional*, defaults to `None`):
        Pad prompt and completion widths to a multiple of this value.

    > Parameters that control vLLM generation of the student

    use_vllm (`bool`, *optional*, defaults to `False`):
        Sample on-policy completions with vLLM (through the shared generation backends).
    vllm_mode (`str`, *optional*, defaults to `"colocate"`):
        `"colocate"` (in-process engine) or `"server"` (a `trl vllm-serve` server).
    vllm_server_base_url (`str` or `None`, *optional*, defaults to `None`):
        Server URL; overrides host and port.
    vllm_server_host (`str`, *optional*, defaults to `"127.0.0.1"`), vllm_server_port (`int`, *optional*, defaults to `8001`):
        Server address.
    vllm_server_timeout (`float`, *optional*, defaults to `240.0`):
        Seconds to wait for the server.
    vllm_group_port (`int`, *optional*, defaults to `51216`):
        Port of the weight-update group.
    vllm_gpu_memory_utilization (`float`, *optional*, defaults to `0.3`), vllm_tensor_parallel_size (`int`, *optional*, defaults to `1`), vllm_max_model_length (`int` or `None`, *optional*, defaults to `None`), vllm_model_impl (`str`, *optional*, defaults to `"vllm"`), vllm_enable_sleep_mode (`bool`, *optional*, defaults to `False`):
        Colocated engine settings.
    vllm_structured_outputs_regex (`str` or `None`, *optional*, defaults to `None`):
        Regex constraining the completions.
    vllm_sync_frequency (`int`, *optional*, defaults to `1`):
        Optimizer steps between two weight syncs to the vLLM engine.

    > Parameters that control logging

    log_completions (`bool`, *optional*, defaults to `False`):
        Add a [`LogCompletionsCallback`]: every `log_completions_steps` steps, the completions sampled on-policy in
        that step (prompt, completion, source) are printed with rich at the next log, and logged as a `completions`
        table to W&B / Trackio when they are in `report_to`. Needs `lmbda > 0`.
    log_completions_steps (`int`, *optional*, defaults to `100`):
        Steps between two tables.
    num_completions_to_print (`int` or `None`, *optional*, defaults to `None`):
        Rows printed per table (chosen at random); `None` prints every completion of the step.
    """

    _json_dict_fields = (*_BaseConfig._json_dict_fields, "teacher_model_init_kwargs")

    learning_rate: float = field(default=1e-6, metadata={"help": "The initial learning rate for AdamW."})
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "from_pretrained kwargs of a student given as a string (dict or JSON)."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})
    max_length: int | None = field(default=1024, metadata={"help": "Most tokens of prompt + completion."})
    disable_dropout: bool = field(default=True, metadata={"help": "Disable dropout in the student."})

    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature; also divides the logits."})
    lmbda: float = field(default=1.0, metadata={"help": "Probability of an on-policy micro-batch."})
    beta: float = field(default=1.0, metadata={"help": "Generalised JSD interpolation (0: forward KL, 1: reverse)."})
    reverse_kl_top_1_mode: str = field(
        default="sampled",
        metadata={"help": "Reverse top-1 token: sampled or argmax.", "choices": ["sampled", "argmax"]},
    )
    max_completion_length: int = field(default=512, metadata={"help": "Most tokens per completion."})
    max_prompt_length: int | None = field(default=None, metadata={"help": "Most prompt tokens (None: derived)."})
    loss_top_k: int = field(default=1, metadata={"help": "Top-k support of the divergence; 0: full vocabulary."})
    loss_add_tail: bool = field(default=True, metadata={"help": "Keep the mass outside the support as a bucket."})

    teacher_model_name_or_path: str | None = field(default=None, metadata={"help": "Teacher model id or path."})
    teacher_model_revision: str | None = field(default=None, metadata={"help": "Teacher checkpoint revision."})
    teacher_model_init_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "from_pretrained kwargs of a teacher given as a string (dict or JSON)."}
    )
    use_teacher_server: bool = field(default=False, metadata={"help": "Score with a trl vllm-serve teacher."})
    teacher_model_server_url: str | None = field(default=None, metadata={"help": "URL of the teacher server."})

    num_generations: int = field(default=1, metadata={"help": "Completions per prompt."})
    generation_batch_size: int | None = field(default=None, metadata={"help": "Prompts per process per step."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling mass."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling (0: off)."})
    generation_kwargs: dict[str, Any] | str | None = field(default=None, metadata={"help": "Extra sampling args."})
    chat_template_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Extra apply_chat_template arguments for prompts."}
    )
    ds3_gather_for_generation: bool = field(default=True, metadata={"help": "Gather ZeRO-3 weights to generate."})
    shuffle_dataset: bool = field(default=True, metadata={"help": "Shuffle the training prompts."})
    pad_to_multiple_of: int | None = field(default=None, metadata={"help": "Pad widths to a multiple of this."})
    remove_unused_columns: bool | None = field(default=False, metadata={"help": "Keep every dataset column."})

    use_vllm: bool = field(default=False, metadata={"help": "Sample the student's completions with vLLM."})
    vllm_mode: str = field(default="colocate", metadata={"help": "colocate or server.", "choices": list(VLLM_MODES)})
    vllm_server_base_url: str | None = field(default=None, metadata={"help": "vLLM server URL."})
    vllm_server_host: str = field(default="127.0.0.1", metadata={"help": "vLLM server host."})
    vllm_server_port: int = field(default=8001, metadata={"help": "vLLM server port."})
    vllm_server_timeout: float = field(default=240.0, metadata={"help": "Seconds to wait for the server."})
    vllm_group_port: int = field(default=51216, metadata={"help": "Weight-update group port."})
    vllm_gpu_memory_utilization: float = field(default=0.3, metadata={"help": "Colocated engine GPU memory."})
    vllm_tensor_parallel_size: int = field(default=1, metadata={"help": "Colocated engine tensor parallelism."})
    vllm_max_model_length: int | None = field(default=None, metadata={"help": "Colocated engine context length."})
    vllm_model_impl: str = field(default="vllm", metadata={"help": "vllm or transformers."})
    vllm_structured_outputs_regex: str | None = field(default=None, metadata={"help": "Structured-outputs regex."})
    vllm_sync_frequency: int = field(default=1, metadata={"help": "Optimizer steps between weight syncs."})
    vllm_enable_sleep_mode: bool = field(default=False, metadata={"help": "Sleep the engine between generations."})

    log_completions: bool = field(default=False, metadata={"help": "Print sampled (prompt, completion) pairs."})
    log_completions_steps: int = field(default=100, metadata={"help": "Steps between printed samples."})
    num_completions_to_print: int | None = field(default=None, metadata={"help": "Pairs per printed sample."})

    def __post_init__(self):
        super().__post_init__()
        check_distillation_fields(self)
        if self.log_completions and self.lmbda == 0.0:
            raise ValueError(
                "log_completions=True logs the completions sampled on-policy, but lmbda=0.0 never samples any (every "
                "micro-batch uses the dataset's completions). Set lmbda > 0, or log_completions=False."
            )
        if self.log_completions_steps < 1:
            raise ValueError(f"log_completions_steps must be at least 1, got {self.log_completions_steps}.")
        if self.reverse_kl_top_1_mode not in ("sampled", "argmax"):
            raise ValueError(
                f"reverse_kl_top_1_mode must be 'sampled' or 'argmax', got {self.reverse_kl_top_1_mode!r}."
            )
        if self.loss_top_k < 0:
            raise ValueError(f"loss_top_k must be >= 0 (0: full vocabulary), got {self.loss_top_k}.")
        if self.max_length is not None and self.max_completion_length >= self.max_length:
            raise ValueError(
                f"max_completion_length ({self.max_completion_length}) must be smaller than max_length "
                f"({self.max_length}) to leave room for the prompt."
            )
        if self.max_prompt_length is None and self.max_length is not None:
            self.max_prompt_length = self.max_length - self.max_completion_length
        self._check_unsupported()
        if self.vllm_model_impl not in VLLM_MODEL_IMPLS:
            raise ValueError(f"vllm_model_impl must be one of {VLLM_MODEL_IMPLS}, got {self.vllm_model_impl!r}.")
        if self.vllm_sync_frequency < 1:
            raise ValueError(f"vllm_sync_frequency must be at least 1, got {self.vllm_sync_frequency}.")

    def _check_teacher_server(self) -> None:
        """What a teacher server can serve: top-k log-probs and the log-prob of the token in the sequence."""
        if not self.use_teacher_server:
            return
        if not (self.teacher_model_server_url or "").strip():
            raise ValueError(
                "teacher_model_server_url must be set when use_teacher_server=True: the base URL of the "
                "`trl vllm-serve` server hosting the teacher (e.g. 'http://localhost:8000')."
            )
        if self.use_liger_kernel:
            raise ValueError(
                "use_liger_kernel=True is not supported with use_teacher_server=True: the Liger loss needs a local "
                "teacher model. Set use_liger_kernel=False."
            )
        if self.beta == 0 and self.loss_top_k < 1:
            raise ValueError(
                f"loss_top_k must be positive with use_teacher_server=True and beta=0 (got {self.loss_top_k}): the "
                "server only returns the teacher's top-k log-probs, not the full vocabulary. Set loss_top_k to K > 0."
            )
        if self.reverse_kl_top_1_mode == "argmax":
            raise ValueError(
                "reverse_kl_top_1_mode='argmax' is not supported with use_teacher_server=True: the server cannot "
                "score the student's arg-max tokens. Use reverse_kl_top_1_mode='sampled'."
            )
        if self.beta > 0 and self.loss_top_k != 1:
            raise ValueError(
                f"loss_top_k must be 1 with use_teacher_server=True and beta={self.beta} > 0 (got "
                f"{self.loss_top_k}): with a server, the reverse and JSD terms are only implemented on the top-1 "
                "support. Set loss_top_k=1, or beta=0 for the forward KL on the teacher's top-k."
            )

    def _check_unsupported(self) -> None:
        self._check_teacher_server()
        if self.num_generations != 1:
            raise ValueError(
                f"num_generations={self.num_generations} is not supported: DistillationTrainer samples one completion "
                "per prompt. Set num_generations=1 and repeat prompts in the dataset if you want several."
            )
        local_batch = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if self.generation_batch_size not in (None, local_batch):
            raise ValueError(
                f"generation_batch_size={self.generation_batch_size}: completions are sampled per micro-batch, so it "
                f"is per_device_train_batch_size * gradient_accumulation_steps = {local_batch}. Leave it as None."
            )
        self.generation_batch_size = local_batch
