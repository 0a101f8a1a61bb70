"""Configuration of [`DPOTrainer`]."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .base_config import (
    TRUNCATION_MODES,
    _BaseConfig,
    _ModelLoadingFields,
    _PadToMultipleOfField,
    _PreferenceLengthFields,
    _ReferencePreferenceFields,
    _ReferenceSyncFields,
)


# Loss types of the DPO family the trainer accepts (the functions live in `trl.losses.preference`). `aot_pair` is the
# 0.x name of `aot_unpaired`.
DPO_LOSS_TYPES = (
    "sigmoid",
    "sigmoid_norm",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_pair",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
)


class FDivergenceType(Enum):
    """The divergences of f-DPO (arXiv 2309.16240), accepted by `DPOConfig.f_divergence_type` (the 0.x API)."""

    REVERSE_KL = "reverse_kl"
    FORWARD_KL = "forward_kl"
    JS_DIVERGENCE = "js_divergence"
    ALPHA_DIVERGENCE = "alpha_divergence"


class FDivergenceConstants:
    """Names kept from the 0.x API (`ALPHA_DIVERGENCE_COEF_KEY`, `ALPHA_DIVERGENCE_COEF_DEFAULT`)."""

    ALPHA_DIVERGENCE_COEF_KEY = "alpha_divergence_coef"
    ALPHA_DIVERGENCE_COEF_DEFAULT = 1.0


@dataclass
class DPOConfig(
    _ReferenceSyncFields,
    _ReferencePreferenceFields,
    _PreferenceLengthFields,
    _PadToMultipleOfField,
    _ModelLoadingFields,
    _BaseConfig,
):
    r"""
    Configuration class for the [`DPOTrainer`].

    Only the parameters specific to DPO are listed here; see [`~transformers.TrainingArguments`] for the rest.

    > Parameters that control the model and the reference model

    model_init_kwargs (`dict[str, Any]`, `str` or `None`, *optional*, defaults to `None`):
        Keyword arguments for `AutoModelForCausalLM.from_pretrained`, used when `model` is a string.
    ref_model_init_kwargs (`dict[str, Any]`, `str` or `None`, *optional*, defaults to `None`):
        Keyword arguments for `from_pretrained` when `ref_model` is a string. Defaults to `model_init_kwargs`.
    trust_remote_code (`bool`, *optional*, defaults to `False`):
        Forwarded to every `from_pretrained` call.
    router_aux_loss_coef (`float` or `None`, *optional*, defaults to `None`):
        Weight of the MoE router auxiliary loss when the model returns router logits (`output_router_logits=True`).
        `None` uses the model config's value, `0.0` disables the term.
    disable_dropout (`bool`, *optional*, defaults to `True`):
        Set every dropout probability of the model and the reference model to 0.
    model_adapter_name (`str` or `None`, *optional*, defaults to `None`):
        PEFT: the adapter to train, when the model holds several.
    ref_adapter_name (`str` or `None`, *optional*, defaults to `None`):
        PEFT: the adapter used as reference. `None` uses the base model with adapters disabled.
    force_use_ref_model (`bool`, *optional*, defaults to `False`):
        Allow an explicit `ref_model` together with a PEFT model (by default the reference of a PEFT model is its base
        with adapters disabled, which needs no second model).
    reference_free (`bool`, *optional*, defaults to `False`):
        Train without reference model: the reference log-probs are 0 (the policy log-probs are the scores).
    precompute_ref_log_probs (`bool`, *optional*, defaults to `False`):
        Compute the reference log-probs of every training (and evaluation) example once, before training, and store
        them in the `ref_chosen_logps` / `ref_rejected_logps` columns; no reference model is kept in memory.
    precompute_ref_batch_size (`int` or `None`, *optional*, defaults to `None`):
        Per-device batch size of that precomputation. Defaults to `per_device_train_batch_size` (training data) and
        `per_device_eval_batch_size` (evaluation data).
    sync_ref_model (`bool`, *optional*, defaults to `False`):
        TR-DPO (arXiv 2404.09656): every `ref_model_sync_steps` steps, move the reference towards the policy,
        `θ_ref ← α·θ + (1−α)·θ_ref` with `α = ref_model_mixup_alpha`.
    ref_model_mixup_alpha (`float`, *optional*, defaults to `0.6`):
        α of TR-DPO.
    ref_model_sync_steps (`int`, *optional*, defaults to `512`):
        Steps between two TR-DPO updates.

    > Parameters that control the data preprocessing

    dataset_num_proc (`int` or `None`, *optional*, defaults to `None`):
        Number of processes used to tokenise the dataset.
    tools (`list[dict]` or `None`, *optional*, defaults to `None`):
        Tools (JSON schemas) passed to the chat template of conversational data. A `tools` column of the dataset
        takes precedence for its rows.
    max_prompt_length (`int` or `None`, *optional*, defaults to `None`):
        Prompts are cut to their last `max_prompt_length` tokens (applied first). `None`, as in trl 1.x, sets no
        separate prompt limit: only `max_length` cuts the row. (trl 0.x defaulted to 512.)
    max_completion_length (`int` or `None`, *optional*, defaults to `None`):
        Completions are cut to their first `max_completion_length` tokens (applied second).
    max_length (`int` or `None`, *optional*, defaults to `1024`):
        Maximum length of a prompt + completion row (applied last, following `truncation_mode`).
    truncation_mode (`str`, *optional*, defaults to `"keep_start"`):
        How a row longer than `max_length` is cut: `"keep_start"` keeps its first tokens, `"keep_end"` its last ones.
    padding_free (`bool`, *optional*, defaults to `False`):
        Run the forward pass on the batch flattened into one row without padding, with per-sequence `position_ids`
        (the loss is unchanged; needs an attention implementation that honours sequence boundaries, see
        `trl.trainer.collators`).
    pad_to_multiple_of (`int`, `str` or `None`, *optional*, defaults to `"auto"`):
        Pad batches to a multiple of this length. `"auto"` means `None` except on AWS Neuron (128).
    pad_token (`str` or `None`, *optional*, defaults to `None`):
        Deprecated: set `tokenizer.pad_token` instead.
    padding_value (`int` or `None`, *optional*, defaults to `None`):
        Deprecated: the id used to pad `input_ids`; set `tokenizer.pad_token` instead.
    label_pad_token_id (`int`, *optional*, defaults to `-100`):
        Kept for compatibility with the 0.x API. Completion tokens are tracked with a mask, so no label padding is
        used.

    > Parameters that control the loss

    loss_type (`str` or `list[str]`, *optional*, defaults to `["sigmoid"]`):
        One or several of `"sigmoid"`, `"sigmoid_norm"`, `"hinge"`, `"ipo"`, `"exo_pair"`, `"nca_pair"`, `"robust"`,
        `"bco_pair"`, `"sppo_hard"`, `"aot"`, `"aot_unpaired"` (alias `"aot_pair"`), `"apo_zero"`, `"apo_down"`,
        `"discopop"`, `"sft"`; see `docs/losses.md`. Several types are summed with `loss_weights` (MPO:
        `["sigmoid", "bco_pair", "sft"]`).
    loss_weights (`list[float]` or `None`, *optional*, defaults to `None`):
        One weight per loss type; `None` weights each by 1.
    beta (`float`, *optional*, defaults to `0.1`):
        Inverse temperature β: higher keeps the policy closer to the reference (IPO's τ, the hinge's inverse margin).
    label_smoothing (`float`, *optional*, defaults to `0.0`):
        Probability ε that a preference label is flipped: cDPO for `"sigmoid"`, also used by `"robust"`,
        `"exo_pair"` and `"aot*"`.
    f_divergence_type (`str`, *optional*, defaults to `"reverse_kl"`):
        Divergence of f-DPO: `"reverse_kl"`, `"forward_kl"`, `"js_divergence"` or `"alpha_divergence"`.
    f_alpha_divergence_coef (`float`, *optional*, defaults to `0.5`):
        α of the α-divergence.
    discopop_tau (`float`, *optional*, defaults to `0.05`):
        Temperature τ of the DiscoPOP loss.
    rpo_alpha (`float` or `None`, *optional*, defaults to `None`):
        RPO (arXiv 2404.19733): add `rpo_alpha` times the NLL of the chosen completions (the paper uses 1.0).
    use_weighting (`bool`, *optional*, defaults to `False`):
        WPO (arXiv 2406.11827): weight each pair by how likely the policy is to generate it.
    ld_alpha (`float` or `None`, *optional*, defaults to `None`):
        LD-DPO (arXiv 2409.06411): tokens past the shorter completion of a pair count with weight `ld_alpha` in
        [0, 1] in the sequence log-probs.
    use_logits_to_keep (`bool`, *optional*, defaults to `False`):
        Kept for compatibility: logits are always computed at completion positions only when the model's forward
        accepts `logits_to_keep`. `True` makes a model without that argument an error instead of a slower path.
    use_liger_loss (`bool`, *optional*, defaults to `False`):
        Use Liger's fused linear DPO loss (not available in this version; raises).
    base_model_attribute_name (`str`, *optional*, defaults to `"model"`):
        Attribute holding the decoder of the model, for the Liger loss.
    activation_offloading (`bool`, *optional*, defaults to `False`):
        Offload activations to CPU memory during the forward pass (needs an accelerator).
    generate_during_eval (`bool`, *optional*, defaults to `False`):
        At each evaluation, generate completions of a batch of prompts with the policy and the reference and log them
        as a table to Weights & Biases (needs `wandb` and `report_to` including it).
    """

    _VALID_DICT_FIELDS = _BaseConfig._VALID_DICT_FIELDS + ["model_init_kwargs", "ref_model_init_kwargs"]
    _json_dict_fields = _BaseConfig._json_dict_fields + ("ref_model_init_kwargs",)

    learning_rate: float = field(default=1e-6, metadata={"help": "The initial learning rate for AdamW."})

    # model and reference model
    ref_model_init_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Keyword arguments for from_pretrained when ref_model is a string."}
    )
    router_aux_loss_coef: float | None = field(
        default=None, metadata={"help": "MoE router auxiliary loss weight (None: model config value)."}
    )
    disable_dropout: bool = field(default=True, metadata={"help": "Disable dropout in the model and reference."})
    model_adapter_name: str | None = field(default=None, metadata={"help": "PEFT adapter to train."})
    ref_adapter_name: str | None = field(
        default=None, metadata={"help": "PEFT adapter used as reference (None: adapters disabled)."}
    )
    force_use_ref_model: bool = field(
        default=False, metadata={"help": "Allow an explicit ref_model together with a PEFT model."}
    )
    reference_free: bool = field(default=False, metadata={"help": "Train without reference (reference log-probs 0)."})
    precompute_ref_log_probs: bool = field(
        default=False, metadata={"help": "Compute reference log-probs once before training and reuse them."}
    )

    # data
    tools: list[Any] | None = field(default=None, metadata={"help": "Tools (JSON schemas) for the chat template."})
    max_prompt_length: int | None = field(
        default=None, metadata={"help": "Keep the last N prompt tokens; None (the default): no separate prompt limit."}
    )
    truncation_mode: str = field(
        default="keep_start", metadata={"help": "keep_start or keep_end.", "choices": list(TRUNCATION_MODES)}
    )
    padding_free: bool = field(default=False, metadata={"help": "Flatten batches into one row without padding."})
    pad_token: str | None = field(default=None, metadata={"help": "Deprecated: set tokenizer.pad_token instead."})

    # loss
    loss_type: list[str] = field(
        default_factory=lambda: ["sigmoid"],
        metadata={"help": "One or several loss types, e.g. --loss_type sigmoid bco_pair sft."},
    )
    loss_weights: list[float] | None = field(default=None, metadata={"help": "One weight per loss type."})
    label_smoothing: float = field(default=0.0, metadata={"help": "Label flip probability (cDPO, robust, exo)."})
    f_divergence_type: str = field(
        default="reverse_kl",
        metadata={"help": "reverse_kl, forward_kl, js_divergence or alpha_divergence."},
    )
    f_alpha_divergence_coef: float = field(default=0.5, metadata={"help": "alpha of the alpha-divergence."})
    discopop_tau: float = field(default=0.05, metadata={"help": "Temperature of the DiscoPOP loss."})
    rpo_alpha: float | None = field(default=None, metadata={"help": "RPO: weight of the chosen NLL term."})
    use_weighting: bool = field(default=False, metadata={"help": "WPO weighting of the pairs."})
    ld_alpha: float | None = field(default=None, metadata={"help": "LD-DPO weight of the verbose tokens, in [0, 1]."})
    use_logits_to_keep: bool = field(default=False, metadata={"help": "Require logits at completion positions only."})
    use_liger_loss: bool = field(default=False, metadata={"help": "Use Liger's fused DPO loss."})
    base_model_attribute_name: str = field(default="model", metadata={"help": "Decoder attribute (Liger)."})
    activation_offloading: bool = field(default=False, metadata={"help": "Offload activations to CPU memory."})

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.loss_type, str):
            self.loss_type = [self.loss_type]
        else:
            self.loss_type = list(self.loss_type)
        self.f_divergence_type = getattr(self.f_divergence_type, "value", self.f_divergence_type)
        self._check_preference_lengths()
        self._validate()

    def _validate(self) -> None:
        unknown = [name for name in self.loss_type if name not in DPO_LOSS_TYPES]
        if unknown or not self.loss_type:
            raise ValueError(f"Unknown loss_type {unknown or self.loss_type}; choose from {list(DPO_LOSS_TYPES)}.")
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError(
                f"Got {len(self.loss_weights)} loss_weights for {len(self.loss_type)} loss types {self.loss_type}: "
                "give exactly one weight per loss type, in the same order."
            )
        if self.ld_alpha is not None and not 0 <= self.ld_alpha <= 1:
            raise ValueError(f"ld_alpha must be in [0, 1], got {self.ld_alpha}.")
        if self.rpo_alpha is not None and self.rpo_alpha < 0:
            raise ValueError(f"rpo_alpha must be >= 0, got {self.rpo_alpha}.")
        if not 0 <= self.ref_model_mixup_alpha <= 1:
            raise ValueError(f"ref_model_mixup_alpha must be in [0, 1], got {self.ref_model_mixup_alpha}.")
        if self.ref_model_sync_steps < 1:
            raise ValueError(f"ref_model_sync_steps must be >= 1, got {self.ref_model_sync_steps}.")
        sorted_losses = [name for name in self.loss_type if name.startswith("aot")]
        if self.use_weighting and sorted_losses:
            raise ValueError(
                f"use_weighting=True weighs each pair's loss, but {sorted_losses} compare log-ratios sorted over the "
                "batch, so their losses belong to no single pair. Set use_weighting=False or use another loss_type."
            )
        self._validate_reference_options()
        self._validate_loss_options()

    def _validate_reference_options(self) -> None:
        if self.reference_free and self.precompute_ref_log_probs:
            raise ValueError(
                "precompute_ref_log_probs=True has nothing to precompute with reference_free=True (the reference "
                "log-probs are 0). Set one of them to False."
            )
        if self.sync_ref_model and (self.reference_free or self.precompute_ref_log_probs):
            raise ValueError(
                "sync_ref_model=True updates a reference model during training; it cannot be combined with "
                "reference_free=True or precompute_ref_log_probs=True (no live reference). Set sync_ref_model=False."
            )

    def _validate_loss_options(self) -> None:
        """Evaluate every loss type once on a dummy batch, so invalid option values (label smoothing out of range,
        a divergence a loss has no form for, ...) fail here, before any model is loaded."""
        import torch

        from ..losses import preference_loss

        zeros = torch.zeros(2)
        lengths = torch.ones(2)
        for loss_type in self.loss_type:
            if loss_type == "sft":
                continue
            preference_loss(
                loss_type,
                zeros,
                zeros,
                zeros,
                zeros,
                beta=self.beta,
                chosen_lengths=lengths,
                rejected_lengths=lengths,
                **self.loss_options(),
            )

    def loss_options(self) -> dict[str, Any]:
        """The options passed to every `trl.losses.preference_loss` call (each loss takes the ones it uses)."""
        return {
            "label_smoothing": self.label_smoothing,
            "f_divergence_type": self.f_divergence_type,
            "f_alpha_divergence_coef": self.f_alpha_divergence_coef,
            "discopop_tau": self.discopop_tau,
        }
