"""`_OnlineConfig`: the configuration fields every online trainer (GRPO, RLOO, ...) shares.

Model loading, the generation batch (`num_generations`, `generation_batch_size` / `steps_per_generation`,
`num_iterations`), sampling, vLLM, the reference model and completion logging are defined once here; each method's
config subclasses it, redefines the fields whose default differs (`num_generations`, `beta`) and adds its algorithm
fields.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from .base_config import _BaseConfig, parse_json_field, resolve_pad_to_multiple_of


VLLM_MODES = ("colocate", "server")
VLLM_MODEL_IMPLS = ("vllm", "transformers")


@dataclass
class _OnlineConfig(_BaseConfig):
    r"""
    Fields shared by the online trainers (generation, vLLM, reference model, logging) on top of
    [`~transformers.TrainingArguments`].

    > Parameters that control the model

    model_init_kwargs (`dict[str, Any]`, `str` or `None`, *optional*, defaults to `None`):
        Keyword arguments for `AutoModelForCausalLM.from_pretrained`, used when `model` is a string.
    trust_remote_code (`bool`, *optional*, defaults to `False`):
        Forwarded to every `from_pretrained` call.
    router_aux_loss_coef (`float` or `None`, *optional*, defaults to `None`):
        Weight of the MoE router auxiliary loss when the model returns router logits. `None` uses the model config's
        value, `0.0` disables the term.
    disable_dropout (`bool`, *optional*, defaults to `False`):
        Set every dropout probability of the policy and the reference model to 0.

    > Parameters that control the data and the generation batch

    num_generations (`int` or `None`, *optional*):
        Completions sampled per prompt (the group size `G`); at least 2. Must divide `generation_batch_size`.
    num_generations_eval (`int` or `None`, *optional*, defaults to `None`):
        Completions per prompt during evaluation; `None` uses `num_generations`.
    max_completion_length (`int` or `None`, *optional*, defaults to `512`):
        Most tokens generated per completion.
    max_prompt_length (`int` or `None`, *optional*, defaults to `None`):
        Seed-era field: keep only the last `max_prompt_length` prompt tokens. `None` keeps whole prompts.
    ds3_gather_for_generation (`bool`, *optional*, defaults to `True`):
        Under DeepSpeed ZeRO-3, gather the whole policy once for generation (fast); `False` gathers layer by layer
        (slower, for models larger than one device). Not compatible with vLLM.
    shuffle_dataset (`bool` or `None`, *optional*, defaults to `True`):
        Shuffle the prompts (a new order every epoch).
    pad_to_multiple_of (`int`, `str` or `None`, *optional*, defaults to `"auto"`):
        Pad training sequences to a multiple of this value. `"auto"` means `None` except on AWS Neuron (128).
    generation_batch_size (`int` or `None`, *optional*, defaults to `None`):
        Completions generated at once across all processes. Mutually exclusive with `steps_per_generation`; must be
        a multiple of `per_device_train_batch_size × processes`.
    steps_per_generation (`int` or `None`, *optional*, defaults to `None`):
        Micro-batches (forward/backward passes) each generation batch feeds. `None` (with `generation_batch_size`
        unset) means `gradient_accumulation_steps`: one generation per optimizer step.
    temperature (`float`, *optional*, defaults to `1.0`):
        Sampling temperature; the training log-probs use the same temperature.
    top_p (`float`, *optional*, defaults to `1.0`):
        Nucleus sampling mass.
    top_k (`int`, *optional*, defaults to `0`):
        Keep the `top_k` most likely tokens; `0` disables it.
    min_p (`float` or `None`, *optional*, defaults to `None`):
        Drop tokens below `min_p` times the most likely token's probability.
    generation_kwargs (`dict`, `str` or `None`, *optional*, defaults to `None`):
        Extra generation arguments, overriding the fields above (`GenerationConfig` fields for transformers,
        `SamplingParams` fields for vLLM).
    chat_template_kwargs (`dict`, `str` or `None`, *optional*, defaults to `None`):
        Extra keyword arguments of the chat template for conversational prompts (e.g. `{"enable_thinking": false}`).
    repetition_penalty (`float`, *optional*, defaults to `1.0`):
        Penalty on tokens already generated; `1.0` disables it.
    cache_implementation (`str` or `None`, *optional*, defaults to `None`):
        KV-cache implementation for transformers generation (a `GenerationConfig.cache_implementation` value).
    use_transformers_continuous_batching (`bool`, *optional*, defaults to `False`):
        Continuous batching in transformers generation; not supported by this version (raises when set).
    transformers_continuous_batching_config (`dict`, `str` or `None`, *optional*, defaults to `None`):
        Options of the continuous-batching manager (needs `use_transformers_continuous_batching`).
    use_transformers_paged (`bool`, *optional*, defaults to `False`):
        Deprecated alias of `use_transformers_continuous_batching`.

    > Parameters that control vLLM generation

    use_vllm (`bool`, *optional*, defaults to `False`):
        Generate with vLLM instead of transformers.
    vllm_mode (`str`, *optional*, defaults to `"colocate"`):
        `"colocate"` (an engine inside each training process, GPU only) or `"server"` (a `trl vllm-serve` server;
        the seed-era default). `--backend transformers` servers work on CPU.
    vllm_model_impl (`str`, *optional*, defaults to `"vllm"`):
        `"vllm"` or `"transformers"` model implementation inside vLLM.
    vllm_enable_sleep_mode (`bool`, *optional*, defaults to `False`):
        Colocate: free the engine's GPU memory between generations.
    vllm_structured_outputs_regex (`str` or `None`, *optional*, defaults to `None`):
        Constrain completions to this regular expression (vLLM only).
    vllm_server_base_url (`str` or `None`, *optional*, defaults to `None`):
        Server URL; takes priority over `vllm_server_host` and `vllm_server_port`.
    vllm_server_host (`str`, *optional*, defaults to `"0.0.0.0"`):
        Server address.
    vllm_server_port (`int`, *optional*, defaults to `8000`):
        Server port.
    vllm_server_timeout (`float`, *optional*, defaults to `240.0`):
        Seconds to wait for the server to answer its health check.
    vllm_group_port (`int`, *optional*, defaults to `51216`):
        Port of the NCCL weight-sync group (vLLM server).
    vllm_gpu_memory_utilization (`float`, *optional*, defaults to `0.3`):
        Colocate: share of each GPU vLLM may use.
    vllm_max_model_length (`int` or `None`, *optional*, defaults to `None`):
        Colocate: longest prompt + completion; `None` uses the model's maximum.
    vllm_tensor_parallel_size (`int`, *optional*, defaults to `1`):
        Colocate: GPUs per engine.
    vllm_guided_decoding_regex (`str` or `None`, *optional*, defaults to `None`):
        Seed-era name of `vllm_structured_outputs_regex`.

    > Parameters that control the optimisation

    num_iterations (`int`, *optional*, defaults to `1`):
        Optimisation passes over each generation batch (μ). Above 1, the log-probs of the generating policy are
        computed once per generation batch and reused by every pass.
    epsilon (`float`, *optional*, defaults to `0.2`):
        Lower clipping range of the importance ratio.
    epsilon_high (`float` or `None`, *optional*, defaults to `None`):
        Upper clipping range; `None` uses `epsilon`.
    reward_weights (`list[float]` or `None`, *optional*, defaults to `None`):
        Weight of each reward function; `None` weighs them all 1.
    mask_truncated_completions (`bool`, *optional*, defaults to `False`):
        Leave completions that hit `max_completion_length` without an EOS token out of the loss.
    sync_ref_model (`bool`, *optional*, defaults to `False`):
        Mix the policy into the reference model every `ref_model_sync_steps` steps (TR-DPO).
    ref_model_mixup_alpha (`float`, *optional*, defaults to `0.6`):
        `α` of the reference update `θ_ref ← α·θ + (1 − α)·θ_ref`.
    ref_model_sync_steps (`int`, *optional*, defaults to `512`):
        Optimizer steps between reference updates.

    > Parameters that control logging

    log_completions (`bool`, *optional*, defaults to `False`):
        At every logging step, print a table of prompts, completions, rewards and advantages, and log it to W&B /
        Trackio when they are in `report_to`.
    log_multimodal (`bool`, *optional*, defaults to `True`):
        Log images with the completions (vision-language models).
    num_completions_to_print (`int` or `None`, *optional*, defaults to `None`):
        Rows of the printed table; `None` prints every completion of the last generation batch.
    log_unique_prompts (`bool`, *optional*, defaults to `False`):
        Log each prompt once in the completions table.
    wandb_log_unique_prompts (`bool` or `None`, *optional*, defaults to `None`):
        Seed-era name of `log_unique_prompts`.
    """

    _VALID_DICT_FIELDS = _BaseConfig._VALID_DICT_FIELDS + [
        "model_init_kwargs",
        "generation_kwargs",
        "chat_template_kwargs",
        "transformers_continuous_batching_config",
    ]
    # Completions per entry of `per_device_train_batch_size` / `per_device_eval_batch_size`: 1, the batch size counts
    # completions; the pairwise trainers (Online DPO, Nash-MD, XPO) set 2, their batch size counts prompts (pairs).
    _completions_per_batch_entry = 1

    learning_rate: float = field(default=1e-6, metadata={"help": "The initial learning rate for AdamW."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep every dataset column: reward functions receive them."}
    )

    # Model
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Keyword arguments for from_pretrained when the model is a string."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})
    router_aux_loss_coef: float | None = field(
        default=None, metadata={"help": "MoE router auxiliary loss weight (None: model config value)."}
    )
    disable_dropout: bool = field(default=False, metadata={"help": "Set every dropout probability to 0."})

    # Data and generation batch
    num_generations: int | None = field(default=8, metadata={"help": "Completions per prompt (group size)."})
    num_generations_eval: int | None = field(
        default=None, metadata={"help": "Completions per prompt during evaluation (None: num_generations)."}
    )
    max_completion_length: int | None = field(default=512, metadata={"help": "Most tokens per completion."})
    max_prompt_length: int | None = field(
        default=None, metadata={"help": "Seed-era: keep only the last N prompt tokens (None: whole prompts)."}
    )
    ds3_gather_for_generation: bool = field(
        default=True, metadata={"help": "ZeRO-3: gather the whole model once for generation."}
    )
    shuffle_dataset: bool | None = field(default=True, metadata={"help": "Shuffle the prompts every epoch."})
    pad_to_multiple_of: int | str | None = field(
        default="auto", metadata={"help": "Pad sequences to a multiple of this value ('auto': None except Neuron)."}
    )
    generation_batch_size: int | None = field(
        default=None, metadata={"help": "Completions generated at once across processes."}
    )
    steps_per_generation: int | None = field(
        default=None, metadata={"help": "Micro-batches per generation batch (None: gradient_accumulation_steps)."}
    )
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling (0 disables it)."})
    min_p: float | None = field(default=None, metadata={"help": "Min-p sampling threshold."})
    generation_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Extra generation arguments (dict or JSON string)."}
    )
    chat_template_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Extra chat template arguments (dict or JSON string)."}
    )
    repetition_penalty: float = field(default=1.0, metadata={"help": "Repetition penalty (1.0 disables it)."})
    cache_implementation: str | None = field(default=None, metadata={"help": "KV-cache implementation."})
    use_transformers_continuous_batching: bool = field(
        default=False, metadata={"help": "Continuous batching in transformers generation (not supported)."}
    )
    transformers_continuous_batching_config: dict | str | None = field(
        default=None, metadata={"help": "Continuous batching options (dict or JSON string)."}
    )
    use_transformers_paged: bool = field(
        default=False, metadata={"help": "Deprecated alias of use_transformers_continuous_batching."}
    )

    # vLLM
    use_vllm: bool = field(default=False, metadata={"help": "Generate with vLLM."})
    vllm_mode: str = field(default="colocate", metadata={"help": "colocate or server.", "choices": list(VLLM_MODES)})
    vllm_model_impl: str = field(
        default="vllm", metadata={"help": "vllm or transformers.", "choices": list(VLLM_MODEL_IMPLS)}
    )
    vllm_enable_sleep_mode: bool = field(default=False, metadata={"help": "Colocate: sleep between generations."})
    vllm_structured_outputs_regex: str | None = field(
        default=None, metadata={"help": "Regular expression the completions must match."}
    )
    vllm_server_base_url: str | None = field(default=None, metadata={"help": "vLLM server URL."})
    vllm_server_host: str = field(default="0.0.0.0", metadata={"help": "vLLM server host."})
    vllm_server_port: int = field(default=8000, metadata={"help": "vLLM server port."})
    vllm_server_timeout: float = field(default=240.0, metadata={"help": "Seconds to wait for the server."})
    vllm_group_port: int = field(default=51216, metadata={"help": "NCCL weight-sync group port."})
    vllm_gpu_memory_utilization: float = field(default=0.3, metadata={"help": "Colocate: GPU memory share."})
    vllm_max_model_length: int | None = field(default=None, metadata={"help": "Colocate: max model length."})
    vllm_tensor_parallel_size: int = field(default=1, metadata={"help": "Colocate: tensor parallel size."})
    vllm_guided_decoding_regex: str | None = field(
        default=None, metadata={"help": "Seed-era name of vllm_structured_outputs_regex."}
    )

    # Optimisation shared by the policy-gradient methods
    num_iterations: int = field(default=1, metadata={"help": "Optimisation passes per generation batch."})
    epsilon: float = field(default=0.2, metadata={"help": "Lower clipping range."})
    epsilon_high: float | None = field(default=None, metadata={"help": "Upper clipping range (None: epsilon)."})
    reward_weights: list[float] | None = field(default=None, metadata={"help": "Weight of each reward function."})
    mask_truncated_completions: bool = field(
        default=False, metadata={"help": "Leave completions without EOS out of the loss."}
    )
    sync_ref_model: bool = field(default=False, metadata={"help": "Mix the policy into the reference (TR-DPO)."})
    ref_model_mixup_alpha: float = field(default=0.6, metadata={"help": "Reference update weight alpha."})
    ref_model_sync_steps: int = field(default=512, metadata={"help": "Steps between reference updates."})

    # Logging
    log_completions: bool = field(default=False, metadata={"help": "Log a table of completions and rewards."})
    log_multimodal: bool = field(default=True, metadata={"help": "Log images with the completions."})
    num_completions_to_print: int | None = field(default=None, metadata={"help": "Rows of the printed table."})
    log_unique_prompts: bool = field(default=False, metadata={"help": "Log each prompt once."})
    wandb_log_unique_prompts: bool | None = field(
        default=None, metadata={"help": "Seed-era name of log_unique_prompts."}
    )

    def __post_init__(self):
        super().__post_init__()
        self.pad_to_multiple_of = resolve_pad_to_multiple_of(self.pad_to_multiple_of)
        self.transformers_continuous_batching_config = parse_json_field(
            self.transformers_continuous_batching_config, "transformers_continuous_batching_config"
        )
        self._apply_deprecated_aliases()
        if self.num_generations_eval is None:
            self.num_generations_eval = self.num_generations
        self._validate_online()
        self._resolve_generation_batch()

    def _apply_deprecated_aliases(self) -> None:
        aliases = (
            ("use_transformers_paged", "use_transformers_continuous_batching", False),
            ("vllm_guided_decoding_regex", "vllm_structured_outputs_regex", None),
            ("wandb_log_unique_prompts", "log_unique_prompts", None),
        )
        for old, new, unset in aliases:
            value = getattr(self, old)
            if value != unset:
                warnings.warn(f"`{old}` is deprecated; use `{new}` instead.", FutureWarning, stacklevel=4)
                setattr(self, new, value)

    def _check_one_of(self, name: str, choices: tuple[str, ...]) -> None:
        """Raise when the field `name` holds none of `choices`."""
        value = getattr(self, name)
        if value not in choices:
            raise ValueError(f"Unknown {name} {value!r}: {name} must be one of {list(choices)}.")

    def _validate_online(self) -> None:
        if self.num_generations is None or self.num_generations < 2:
            raise ValueError(
                f"num_generations must be at least 2 (got {self.num_generations}): advantages compare the "
                "completions of one prompt with each other."
            )
        if self.num_generations_eval < 1:
            raise ValueError(f"num_generations_eval must be at least 1, got {self.num_generations_eval}.")
        if self.max_completion_length is None or self.max_completion_length < 1:
            raise ValueError(
                f"max_completion_length must be a positive number of tokens, got {self.max_completion_length}."
            )
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise ValueError(f"max_prompt_length must be positive or None, got {self.max_prompt_length}.")
        if self.num_iterations < 1:
            raise ValueError(f"num_iterations must be at least 1, got {self.num_iterations}.")
        if not self.temperature > 0:
            raise ValueError(
                f"temperature must be > 0 (got {self.temperature}): the training log-probs divide the logits by it."
            )
        self._check_one_of("vllm_mode", VLLM_MODES)
        self._check_one_of("vllm_model_impl", VLLM_MODEL_IMPLS)
        if self.use_vllm and not self.ds3_gather_for_generation:
            raise ValueError(
                "ds3_gather_for_generation=False (layer-by-layer gathering) only applies to transformers generation; "
                "vLLM needs the whole weights. Set ds3_gather_for_generation=True or use_vllm=False."
            )
        if self.use_transformers_continuous_batching:
            raise ValueError(
                "use_transformers_continuous_batching is not supported by this version of trl. Leave it False "
                "(batched transformers generation), or generate with vLLM (use_vllm=True)."
            )
        if self.transformers_continuous_batching_config is not None:
            raise ValueError("transformers_continuous_batching_config needs use_transformers_continuous_batching.")
        if self.auto_find_batch_size:
            raise ValueError(
                "auto_find_batch_size=True is not supported by online trainers: the generation batch is built from "
                "the batch size. Set per_device_train_batch_size yourself."
            )
        if self.sync_ref_model and self.beta == 0.0:
            raise ValueError("sync_ref_model=True updates the reference model, but beta=0 uses none. Set beta > 0.")
        if self.vllm_structured_outputs_regex is not None and not self.use_vllm:
            raise ValueError("vllm_structured_outputs_regex constrains vLLM generation: set use_vllm=True.")
        if not 0 <= self.ref_model_mixup_alpha <= 1:
            raise ValueError(f"ref_model_mixup_alpha must be in [0, 1], got {self.ref_model_mixup_alpha}.")
        if self.ref_model_sync_steps < 1:
            raise ValueError(f"ref_model_sync_steps must be >= 1, got {self.ref_model_sync_steps}.")
        if self.num_completions_to_print is not None and self.num_completions_to_print < 1:
            raise ValueError(
                f"num_completions_to_print must be positive or None, got {self.num_completions_to_print}."
            )

    def _resolve_generation_batch(self) -> None:
        """Fill in `generation_batch_size` and `steps_per_generation` from each other (one per optimizer step by
        default) and check that a generation batch splits into whole micro-batches and whole groups."""
        global_batch = self.per_device_train_batch_size * self._completions_per_batch_entry * self.world_size
        if self.generation_batch_size is not None and self.steps_per_generation is not None:
            raise ValueError(
                "generation_batch_size and steps_per_generation describe the same thing; set only one of them."
            )
        if self.generation_batch_size is None:
            if self.steps_per_generation is None:
                self.steps_per_generation = self.gradient_accumulation_steps
            if self.steps_per_generation < 1:
                raise ValueError(f"steps_per_generation must be at least 1, got {self.steps_per_generation}.")
            self.generation_batch_size = global_batch * self.steps_per_generation
        elif self.generation_batch_size % global_batch != 0:
            raise ValueError(
                f"generation_batch_size ({self.generation_batch_size}) must be a multiple of the global batch "
                f"per_device_train_batch_size × processes = {global_batch}."
            )
        else:
            self.steps_per_generation = self.generation_batch_size // global_batch
        if self.generation_batch_size % self.num_generations != 0:
            raise ValueError(
                f"The generation batch ({self.generation_batch_size} completions = per_device_train_batch_size × "
                f"processes × steps_per_generation) must be a multiple of num_generations ({self.num_generations}). "
                "Change the batch size, steps_per_generation or num_generations."
            )
