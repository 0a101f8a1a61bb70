"""Configuration of [`PPOTrainer`]."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from transformers import TrainingArguments

from ..losses.ppo import PPO_KL_ESTIMATORS
from .base_config import _BaseConfig


# Batch sizes PPOConfig computes; a value passed for one of them must agree with the computation.
_COMPUTED = ("world_size", "local_batch_size", "micro_batch_size", "batch_size", "local_mini_batch_size",
             "mini_batch_size")  # fmt: skip


@dataclass
class PPOConfig(_BaseConfig):
    r"""
    Configuration class for the [`PPOTrainer`] (the "PPOv2" design, *The N+ Implementation Details of RLHF with
    PPO*, arXiv 2403.17031).

    Only the parameters specific to PPO are listed here; see [`~transformers.TrainingArguments`] for the others.
    Defaults that differ from `TrainingArguments`: `learning_rate=3e-6`, `logging_steps=10`,
    `gradient_checkpointing=True`, `bf16=None` (on when supported).

    > Parameters that control the run and the data

    exp_name (`str`, *optional*, defaults to `"ppo_config"`):
        Name of the experiment; `run_name` defaults to `"{exp_name}__{seed}__{unix time}"`.
    dataset_num_proc (`int` or `None`, *optional*, defaults to `None`):
        Processes used to tokenize the prompts.
    total_episodes (`int` or `None`, *optional*, defaults to `None`):
        Prompts to train on in total; `None` means `num_train_epochs × len(train_dataset)`. Sets the number of
        optimizer steps (`num_total_batches × num_ppo_epochs`); do not combine it with `max_steps`.
    model_init_kwargs (`dict`, `str` or `None`, *optional*, defaults to `None`):
        Keyword arguments for `from_pretrained` when the policy, value or reward model is given as a string (not
        in the reference, which takes instances only). The policy is loaded in float32 unless `dtype` is set here.

    > Parameters that control the batch

    num_mini_batches (`int`, *optional*, defaults to `1`):
        Minibatches per rollout batch in each PPO epoch; must divide `gradient_accumulation_steps`.
    local_rollout_forward_batch_size (`int`, *optional*, defaults to `64`):
        Rows per forward pass of the reward and value models while scoring a rollout batch.
    world_size, num_total_batches, micro_batch_size, local_batch_size, batch_size, local_mini_batch_size, mini_batch_size (`int` or `None`):
        Computed: `local_batch_size = per_device_train_batch_size × gradient_accumulation_steps` (prompts per
        process and rollout batch), `batch_size = local_batch_size × world_size`, `micro_batch_size =
        per_device_train_batch_size × world_size`, `mini_batch_size = batch_size / num_mini_batches`,
        `local_mini_batch_size = local_batch_size / num_mini_batches`, `num_total_batches =
        ceil(total_episodes / batch_size)` (filled by the trainer when `total_episodes` is `None`).

    > Parameters that control generation

    response_length (`int`, *optional*, defaults to `53`):
        Most tokens generated per completion.
    stop_token (`str` or `None`, *optional*, defaults to `None`):
        `"eos"`: completions end at the tokenizer's EOS token (what generation always does here). Mutually exclusive
        with `stop_token_id`.
    stop_token_id (`int` or `None`, *optional*, defaults to `None`):
        A token that also ends completions: everything after it is masked out of training and scoring.
    temperature (`float`, *optional*, defaults to `0.7`):
        Sampling temperature; the log-probs of training use the same temperature.
    missing_eos_penalty (`float` or `None`, *optional*, defaults to `None`):
        Subtracted from the score of completions that end without an EOS token (the "EOS trick").
    num_sample_generations (`int`, *optional*, defaults to `10`):
        Above 0, a table of prompts, completions and scores is logged with the metrics (`LogCompletionsCallback`);
        `0` turns it off.
    ds3_gather_for_generation (`bool`, *optional*, defaults to `True`):
        Under DeepSpeed ZeRO-3, gather the whole policy once for generation.

    > Parameters that control the models

    sft_model_path (`str`, *optional*, defaults to `"EleutherAI/pythia-160m"`):
        Path of the SFT model, read by the example script only (the trainer takes models).
    reward_model_path (`str`, *optional*, defaults to `"EleutherAI/pythia-160m"`):
        Path of the reward model, read by the example script only.
    model_adapter_name (`str` or `None`, *optional*, defaults to `None`):
        With a PEFT policy holding several adapters: the adapter to train.
    ref_adapter_name (`str` or `None`, *optional*, defaults to `None`):
        With a PEFT policy: the adapter that acts as the reference (`None`: the base model, adapters disabled).

    > Parameters that control the PPO objective

    num_ppo_epochs (`int`, *optional*, defaults to `4`):
        Optimisation passes over each rollout batch.
    whiten_rewards (`bool`, *optional*, defaults to `False`):
        Scale the per-token rewards to unit variance (mean kept) before GAE; needs `local_mini_batch_size ≥ 8`.
    kl_coef (`float`, *optional*, defaults to `0.05`):
        Weight of the per-token KL penalty in the rewards.
    kl_estimator (`str`, *optional*, defaults to `"k1"`):
        `"k1"` (`log π − log π_ref`) or `"k3"` (`e^{−d} − 1 + d`, non-negative, lower variance).
    cliprange (`float`, *optional*, defaults to `0.2`):
        Clip range of the policy's importance ratio.
    vf_coef (`float`, *optional*, defaults to `0.1`):
        Weight of the value loss.
    cliprange_value (`float`, *optional*, defaults to `0.2`):
        Clip range of the value predictions around their rollout-time values.
    gamma (`float`, *optional*, defaults to `1.0`):
        Discount factor of GAE.
    lam (`float`, *optional*, defaults to `0.95`):
        λ of GAE.
    """

    _VALID_DICT_FIELDS = _BaseConfig._VALID_DICT_FIELDS + ["model_init_kwargs"]

    learning_rate: float = field(default=3e-6, metadata={"help": "The initial learning rate for AdamW."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep every dataset column."})

    # Run and data
    exp_name: str = field(default="ppo_config", metadata={"help": "Name of the experiment."})
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes used to tokenize prompts."})
    num_mini_batches: int = field(default=1, metadata={"help": "Minibatches per rollout batch and PPO epoch."})
    total_episodes: int | None = field(default=None, metadata={"help": "Prompts to train on in total."})
    local_rollout_forward_batch_size: int = field(
        default=64, metadata={"help": "Rows per reward/value forward pass during the rollout."}
    )
    num_sample_generations: int = field(
        default=10, metadata={"help": "Above 0, log a completions table with the metrics."}
    )
    response_length: int = field(default=53, metadata={"help": "Most tokens per completion."})
    stop_token: Literal["eos"] | None = field(default=None, metadata={"help": "'eos': completions end at EOS."})
    stop_token_id: int | None = field(default=None, metadata={"help": "A token id that also ends completions."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature."})
    missing_eos_penalty: float | None = field(
        default=None, metadata={"help": "Subtracted from the score of completions without EOS."}
    )
    sft_model_path: str = field(default="EleutherAI/pythia-160m", metadata={"help": "Path of the SFT model."})
    world_size: int | None = field(default=None, metadata={"help": "Computed: number of processes."})
    num_total_batches: int | None = field(default=None, metadata={"help": "Computed: rollout batches in total."})
    micro_batch_size: int | None = field(default=None, metadata={"help": "Computed."})
    local_batch_size: int | None = field(default=None, metadata={"help": "Computed."})
    batch_size: int | None = field(default=None, metadata={"help": "Computed."})
    local_mini_batch_size: int | None = field(default=None, metadata={"help": "Computed."})
    mini_batch_size: int | None = field(default=None, metadata={"help": "Computed."})

    # Models
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Keyword arguments for from_pretrained when a model is a string."}
    )
    reward_model_path: str = field(default="EleutherAI/pythia-160m", metadata={"help": "Path of the reward model."})
    model_adapter_name: str | None = field(default=None, metadata={"help": "PEFT adapter to train."})
    ref_adapter_name: str | None = field(default=None, metadata={"help": "PEFT adapter used as the reference."})
    ds3_gather_for_generation: bool = field(
        default=True, metadata={"help": "ZeRO-3: gather the whole model once for generation."}
    )

    # Objective
    num_ppo_epochs: int = field(default=4, metadata={"help": "Optimisation passes per rollout batch."})
    whiten_rewards: bool = field(default=False, metadata={"help": "Whiten the rewards (mean kept)."})
    kl_coef: float = field(default=0.05, metadata={"help": "KL penalty weight."})
    kl_estimator: Literal["k1", "k3"] = field(default="k1", metadata={"help": "KL estimator: k1 or k3."})
    cliprange: float = field(default=0.2, metadata={"help": "Policy ratio clip range."})
    vf_coef: float = field(default=0.1, metadata={"help": "Value loss weight."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Value clip range."})
    gamma: float = field(default=1.0, metadata={"help": "GAE discount factor."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda."})

    def __post_init__(self):
        passed = {name: getattr(self, name) for name in _COMPUTED}
        self.world_size = None  # the TrainingArguments property is shadowed by the reference's field
        super().__post_init__()
        self.world_size = TrainingArguments.world_size.fget(self)
        if self.run_name is None:
            self.run_name = f"{self.exp_name}__{self.seed}__{int(time.time())}"
        self._validate_ppo()
        self._resolve_batch_sizes(passed)

    def _validate_ppo(self) -> None:
        if self.stop_token is not None and self.stop_token_id is not None:
            raise ValueError("stop_token and stop_token_id both set the stop token: set only one of them.")
        if self.stop_token not in (None, "eos"):
            raise ValueError(
                f"stop_token must be 'eos' or None, got {self.stop_token!r}; use stop_token_id for others."
            )
        if self.kl_estimator not in PPO_KL_ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {list(PPO_KL_ESTIMATORS)}, got {self.kl_estimator!r}.")
        if not self.temperature > 0:
            raise ValueError(
                f"temperature must be > 0 (got {self.temperature}): the log-probs divide the logits by it."
            )
        for name in ("num_ppo_epochs", "num_mini_batches", "response_length", "local_rollout_forward_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.total_episodes is not None and self.total_episodes < 1:
            raise ValueError(f"total_episodes must be positive or None, got {self.total_episodes}.")
        if self.total_episodes is not None and self.max_steps > 0:
            raise ValueError("total_episodes and max_steps both set the length of training: set only one of them.")
        if self.auto_find_batch_size:
            raise ValueError("auto_find_batch_size=True is not supported by PPO: set per_device_train_batch_size.")

    def _resolve_batch_sizes(self, passed: dict[str, int | None]) -> None:
        ga = self.gradient_accumulation_steps
        if ga % self.num_mini_batches:
            raise ValueError(
                f"num_mini_batches ({self.num_mini_batches}) must divide gradient_accumulation_steps ({ga}): each "
                "minibatch is a whole number of micro-batches of per_device_train_batch_size. Change one of them."
            )
        self.local_batch_size = self.per_device_train_batch_size * ga
        self.micro_batch_size = self.per_device_train_batch_size * self.world_size
        self.batch_size = self.local_batch_size * self.world_size
        self.mini_batch_size = self.batch_size // self.num_mini_batches
        self.local_mini_batch_size = self.local_batch_size // self.num_mini_batches
        if self.whiten_rewards and self.local_mini_batch_size < 8:
            raise ValueError(
                f"whiten_rewards=True needs local_mini_batch_size >= 8 (got {self.local_mini_batch_size}) for a "
                "meaningful variance: raise per_device_train_batch_size × gradient_accumulation_steps / "
                "num_mini_batches, or set whiten_rewards=False."
            )
        if self.total_episodes is not None:
            self.num_total_batches = math.ceil(self.total_episodes / self.batch_size)
        for name, value in passed.items():
            if value is not None and value != getattr(self, name):
                raise ValueError(
                    f"{name}={value} disagrees with the computed {getattr(self, name)}: it is derived from the batch "
                    "settings (see PPOConfig); leave it unset."
                )

    # ----------------------------------------------------------------- the online trainers' names for PPO's fields
    # `OnlineTrainer` and `Rollout` read these; PPO samples one completion per prompt and has no other value.
    num_generations = property(lambda self: 1, doc="One completion per prompt.")
    num_generations_eval = property(lambda self: 1, doc="One completion per evaluation prompt.")
    max_completion_length = property(lambda self: self.response_length, doc="`response_length`.")
    steps_per_generation = property(
        lambda self: self.gradient_accumulation_steps, doc="Micro-batches per rollout batch (`local_batch_size`)."
    )
    generation_batch_size = property(lambda self: self.batch_size, doc="Completions per rollout batch (`batch_size`).")
    num_iterations = property(lambda self: self.num_ppo_epochs, doc="`num_ppo_epochs`.")
    beta = property(lambda self: self.kl_coef, doc="`kl_coef` (the KL is in the rewards, not in the loss).")
    epsilon = property(lambda self: self.cliprange, doc="`cliprange`.")
    log_completions = property(lambda self: self.num_sample_generations > 0, doc="`num_sample_generations > 0`.")
    disable_dropout = property(lambda self: True, doc="PPO always turns dropout off (policy, value, reference).")
    top_p, top_k, min_p, repetition_penalty = 1.0, 0, None, 1.0
    generation_kwargs = cache_implementation = chat_template_kwargs = max_prompt_length = None
    reward_weights = pad_to_multiple_of = num_completions_to_print = None
    mask_truncated_completions = sync_ref_model = use_vllm = log_unique_prompts = False
    shuffle_dataset = log_multimodal = True
