"""Language models with a value head: `V(s_t)` for every position, next to the LM logits.

`AutoModelForCausalLMWithValueHead` and `AutoModelForSeq2SeqLMWithValueHead` wrap a causal / encoder-decoder LM and
add a [`ValueHead`] (`dropout -> Linear(hidden_size, 1)`) on the last hidden states (of the decoder, for seq2seq).
`forward` returns `(lm_logits, loss, value)` (with `past_key_values` on request), `generate` is the LM's own. Saved
and loaded as one model through safetensors (see [`~trl.models.modeling_base.PreTrainedModelWrapper`]); loading a
plain LM adds a freshly initialised head.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from .modeling_base import PreTrainedModelWrapper


_VALUE_HEAD_ARGS = ("summary_dropout_prob", "v_head_initializer_range", "v_head_init_strategy")


def _hidden_size(config: Any) -> int:
    for candidate in (config, getattr(config, "decoder", None), getattr(config, "text_config", None)):
        if candidate is None:
            continue
        for name in ("word_embed_proj_dim", "hidden_size", "d_model"):
            if isinstance(getattr(candidate, name, None), int):
                return getattr(candidate, name)
    raise ValueError(f"Cannot find the hidden size of {type(config).__name__} for the value head.")


class ValueHead(nn.Module):
    """The value head: `dropout(summary_dropout_prob) -> Linear(hidden_size, 1)`, one scalar per position.

    Args:
        config (`PretrainedConfig`):
            The wrapped model's config: its hidden size (`hidden_size`, or `word_embed_proj_dim` for OPT-style
            models, or the decoder's) and, unless passed, `summary_dropout_prob`.
        summary_dropout_prob (`float`, *optional*):
            Dropout before the projection; defaults to the config's `summary_dropout_prob`, else `0.1`. `0` or
            `None` in the config means no dropout.
    """

    def __init__(self, config: Any, **kwargs: Any):
        super().__init__()
        if "summary_dropout_prob" in kwargs:
            dropout = kwargs.pop("summary_dropout_prob")
        else:
            dropout = getattr(config, "summary_dropout_prob", 0.1)
        # `v_head_init_strategy` / `v_head_initializer_range` are applied by the model (`_init_weights`).
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.summary = nn.Linear(_hidden_size(config), 1)
        self.flatten = nn.Flatten()

    def forward(self, hidden_states_B_L_H: torch.Tensor) -> torch.Tensor:
        output = self.dropout(hidden_states_B_L_H)
        # The head may be in float32 while the model runs in half precision.
        if output.dtype != self.summary.weight.dtype:
            output = output.to(self.summary.weight.dtype)
        return self.summary(output)


class _ValueHeadMixin:
    """What the causal and seq2seq value-head models share: the head, its initialisation, state dict and hub I/O."""

    supported_args = _VALUE_HEAD_ARGS
    # The `outputs` field whose last entry the head reads.
    _hidden_states_key = "hidden_states"

    def _add_value_head(self, kwargs: dict[str, Any]) -> None:
        head_kwargs = {key: kwargs[key] for key in _VALUE_HEAD_ARGS if key in kwargs}
        unknown = sorted(set(kwargs) - set(_VALUE_HEAD_ARGS))
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unknown arguments {unknown}; it takes {list(_VALUE_HEAD_ARGS)}."
            )
        self.v_head = ValueHead(self.pretrained_model.config, **head_kwargs)
        self._init_weights(**head_kwargs)

    def _init_weights(self, **kwargs: Any) -> None:
        """`v_head_init_strategy=None` keeps PyTorch's default `Linear` initialisation; `"normal"` draws the weight
        from `N(0, v_head_initializer_range²)` (default range 0.2) and zeroes the bias."""
        initializer_range = kwargs.pop("v_head_initializer_range", 0.2)
        init_strategy = kwargs.pop("v_head_init_strategy", None)
        if init_strategy is None:
            return
        if init_strategy != "normal":
            raise ValueError(f"Unknown v_head_init_strategy {init_strategy!r}: use None or 'normal'.")
        self.v_head.summary.weight.data.normal_(mean=0.0, std=initializer_range)
        self.v_head.summary.bias.data.zero_()

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped model's `generate`."""
        return self.pretrained_model.generate(*args, **kwargs)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        state = {} if self.is_peft_model else self.pretrained_model.state_dict(*args, **kwargs)
        for key, value in self.v_head.state_dict(*args, **kwargs).items():
            state[f"v_head.{key}"] = value
        return state

    def post_init(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load the value head from `state_dict` (its `v_head.*` keys)."""
        head = {key[len("v_head.") :]: value for key, value in state_dict.items() if key.startswith("v_head.")}
        self.v_head.load_state_dict(head, strict=True)

    def push_to_hub(self, *args: Any, **kwargs: Any) -> Any:
        self.pretrained_model.v_head = self.v_head
        try:
            return self.pretrained_model.push_to_hub(*args, **kwargs)
        finally:
            del self.pretrained_model.v_head

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        attention_mask: torch.Tensor | None = None,
        return_past_key_values: bool = False,
        **kwargs: Any,
    ) -> tuple:
        """Returns `(lm_logits [B, L, V], loss, value [B, L])`, plus `past_key_values` with `return_past_key_values`.

        The value head reads the last hidden states (of the decoder for an encoder-decoder model).

        Args:
            input_ids (`torch.Tensor` of shape `[B, L]`):
                Token ids.
            past_key_values (*optional*):
                Cache of a previous call.
            attention_mask (`torch.Tensor` of shape `[B, L]`, *optional*):
                Attention mask.
            return_past_key_values (`bool`, *optional*, defaults to `False`):
                Also return the cache.
            **kwargs:
                Forwarded to the LM (e.g. `labels`, `position_ids`).
        """
        kwargs["output_hidden_states"] = True
        if past_key_values is not None:
            kwargs["past_key_values"] = past_key_values
        outputs = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        value_B_L = self.v_head(getattr(outputs, self._hidden_states_key)[-1]).squeeze(-1)
        # Half-precision logits are returned in float32, as the value is.
        lm_logits = outputs.logits if outputs.logits.dtype == torch.float32 else outputs.logits.float()
        past = getattr(outputs, "past_key_values", None)
        return (
            (lm_logits, outputs.loss, value_B_L, past)
            if return_past_key_values
            else (lm_logits, outputs.loss, value_B_L)
        )


class AutoModelForCausalLMWithValueHead(_ValueHeadMixin, PreTrainedModelWrapper):
    """A causal LM with a value head on its last hidden states.

    `from_pretrained(path, summary_dropout_prob=..., v_head_init_strategy=..., v_head_initializer_range=...,
    peft_config=...)` loads the LM with `AutoModelForCausalLM` and the head from the checkpoint when it has one
    (`v_head.*` tensors), else initialises it.

    Args:
        pretrained_model (`PreTrainedModel` or `PeftModel`):
            The causal LM.
        summary_dropout_prob (`float`, *optional*):
            Dropout of the head (see [`ValueHead`]).
        v_head_init_strategy (`str` or `None`, *optional*, defaults to `None`):
            `None` (PyTorch default) or `"normal"`.
        v_head_initializer_range (`float`, *optional*, defaults to `0.2`):
            Standard deviation of the `"normal"` initialisation.
    """

    transformers_parent_class = AutoModelForCausalLM

    def __init__(self, pretrained_model: Any, **kwargs: Any):
        super().__init__(pretrained_model)
        self._add_value_head(kwargs)


class AutoModelForSeq2SeqLMWithValueHead(_ValueHeadMixin, PreTrainedModelWrapper):
    """An encoder-decoder LM with a value head on the decoder's last hidden states.

    Same arguments as [`AutoModelForCausalLMWithValueHead`]; the model is loaded with `AutoModelForSeq2SeqLM` and
    must have a language-model head.
    """

    transformers_parent_class = AutoModelForSeq2SeqLM
    lm_head_namings = ("lm_head", "embed_out", "output_projection")
    _hidden_states_key = "decoder_hidden_states"

    def __init__(self, pretrained_model: Any, **kwargs: Any):
        super().__init__(pretrained_model)
        self.is_encoder_decoder = True
        if not self._has_lm_head():
            raise ValueError("The model does not have a language model head; use a model that has one.")
        self._add_value_head(kwargs)

    def _has_lm_head(self) -> bool:
        return any(
            any(naming in name for naming in self.lm_head_namings) for name, _ in self.pretrained_model.named_modules()
        )


# Architectures whose value-head models trl ships (the reference's `SUPPORTED_ARCHITECTURES`).
SUPPORTED_ARCHITECTURES = (AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead)
