"""Configuration of [`KTOTrainer`]."""

from __future__ import annotations

from dataclasses import dataclass, field

from .base_config import _PadToMultipleOfField, _ReferenceSyncFields, _UnpairedPreferenceConfig


KTO_LOSS_TYPES = ("kto", "apo_zero_unpaired")


@dataclass
class KTOConfig(_ReferenceSyncFields, _PadToMultipleOfField, _UnpairedPreferenceConfig):
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
    activation_offloading: bool = field(default=False, metadata={"help": "Offload activations to CPU memory."})
    loss_type: str = field(
        default="kto", metadata={"help": "kto or apo_zero_unpaired.", "choices": list(KTO_LOSS_TYPES)}
    )
    desirable_weight: float = field(default=1.0, metadata={"help": "Weight of the desirable losses."})
    undesirable_weight: float = field(default=1.0, metadata={"help": "Weight of the undesirable losses."})
    use_liger_loss: bool = field(default=False, metadata={"help": "Use Liger's fused KTO loss (unsupported)."})
    base_model_attribute_name: str = field(default="model", metadata={"help": "Decoder attribute (Liger)."})

    def __post_init__(self):
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
