"""Sampling from the geometric mixture of a policy and a reference model (Nash-MD, arXiv 2312.00886).

    π_mix(y_t | x, y_<t) ∝ π_θ(y_t | ·)^(1−λ) · π_ref(y_t | ·)^λ,  i.e. logits_mix = λ·logits_ref + (1 − λ)·logits_θ

with `λ = mixture_coef`. [`GeometricMixtureWrapper`] exposes `generate` like a causal LM: the policy runs
transformers' generation loop (its KV cache, sampling, stopping) and a logits processor replaces each step's
policy logits by the mixture, running the reference on the new tokens with its own KV cache. The processor runs
before the sampling warpers (temperature, top-k, top-p), so they shape the mixture, as they would a single model.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import torch
from transformers import LogitsProcessor


class _MixtureLogitsProcessor(LogitsProcessor):
    """Replace the policy's next-token logits by `λ·logits_ref + (1 − λ)·logits_policy` (see the module docstring).

    The first call sees the (left-padded) prompts; every later call one new token per row, fed to the reference with
    its KV cache and the extended attention mask.
    """

    def __init__(
        self, ref_forward: Callable[..., Any], attention_mask: torch.Tensor, mixture_coef: float, cache_argument: str
    ):
        self.ref_forward = ref_forward
        self.cache_argument = cache_argument
        self.attention_mask = attention_mask
        self.mixture_coef = mixture_coef
        self.past_key_values = None
        self.seen = 0

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        new_tokens = input_ids[:, self.seen :]
        if self.seen:
            ones = self.attention_mask.new_ones((input_ids.shape[0], new_tokens.shape[1]))
            self.attention_mask = torch.cat([self.attention_mask, ones], dim=1)
        position_ids = (self.attention_mask.cumsum(dim=1) - 1).clamp(min=0)[:, -new_tokens.shape[1] :]
        outputs = self.ref_forward(
            input_ids=new_tokens,
            attention_mask=self.attention_mask,
            position_ids=position_ids,
            use_cache=True,
            **({self.cache_argument: self.past_key_values} if self.past_key_values is not None else {}),
        )
        self.past_key_values = getattr(outputs, self.cache_argument, None)
        self.seen = input_ids.shape[1]
        ref_logits = outputs.logits[:, -1, :].to(scores.dtype)
        return self.mixture_coef * ref_logits + (1.0 - self.mixture_coef) * scores


class GeometricMixtureWrapper(torch.nn.Module):
    """A causal LM view of the geometric mixture of `model` and `ref_model`, for `generate` only.

    Args:
        model (`PreTrainedModel`):
            The policy (its generation loop and KV cache drive the sampling).
        ref_model (`PreTrainedModel` or `None`):
            The reference. `None` with a PEFT `model` uses its base model (adapters disabled for the reference's
            forward passes).
        generation_config (`GenerationConfig` or `None`):
            Default generation settings; a `generation_config` passed to `generate` takes precedence.
        mixture_coef (`float`):
            λ ∈ [0, 1], the reference's weight: 0 samples from the policy, 1 from the reference.
        device (`torch.device`, `str` or `None`, *optional*, defaults to `None`):
            Where the inputs are put; `None` uses the policy's device.
    """

    def __init__(
        self,
        model: Any,
        ref_model: Any,
        generation_config: Any = None,
        mixture_coef: float = 0.5,
        device: Any = None,
    ):
        super().__init__()
        if not 0.0 <= mixture_coef <= 1.0:
            raise ValueError(f"mixture_coef must be in [0, 1], got {mixture_coef}.")
        if ref_model is None and not hasattr(model, "disable_adapter"):
            raise ValueError("GeometricMixtureWrapper needs a ref_model unless model is a PEFT model.")
        # Held outside `_modules`: the wrapper owns no parameters and `train()`/`eval()` touch only the policy.
        self.__dict__["_models"] = (model, ref_model)
        # Mirror the policy's mode: generation switches the wrapper to eval and back, and must restore the policy's
        # own mode (in evaluation it stays in eval mode).
        self.training = model.training
        self.generation_config = generation_config
        self.mixture_coef = mixture_coef
        self.device_override = device

    @property
    def model(self) -> Any:
        return self._models[0]

    @property
    def ref_model(self) -> Any:
        return self._models[1]

    @property
    def config(self) -> Any:
        return self.model.config

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]:
        return self.model.parameters(recurse)

    def train(self, mode: bool = True) -> GeometricMixtureWrapper:
        self.training = mode
        self.model.train(mode)
        return self

    @contextlib.contextmanager
    def _reference(self) -> Iterator[Any]:
        if self.ref_model is not None:
            yield self.ref_model
            return
        with self.model.disable_adapter():
            yield self.model

    def _ref_forward(self, **inputs: Any) -> Any:
        with self._reference() as ref_model:
            return ref_model(**inputs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("GeometricMixtureWrapper only samples: call generate().")

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """`model.generate` with every step's logits replaced by the mixture's; other arguments as in transformers."""
        device = self.device_override or next(self.model.parameters()).device
        input_ids = input_ids.to(device)
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
        with self._reference() as ref_model:
            # transformers 5.2x names the KV cache `cache` (earlier: `past_key_values`).
            base = ref_model.get_base_model() if hasattr(ref_model, "get_base_model") else ref_model
            forward = inspect.signature(base.forward).parameters
            cache_argument = "cache" if "cache" in forward else "past_key_values"
        processor = _MixtureLogitsProcessor(self._ref_forward, attention_mask, self.mixture_coef, cache_argument)
        processors = list(kwargs.pop("logits_processor", None) or []) + [processor]
        kwargs.setdefault("generation_config", self.generation_config)
        if kwargs["generation_config"] is None:
            kwargs.pop("generation_config")
        return self.model.generate(
            input_ids=input_ids, attention_mask=attention_mask, logits_processor=processors, **kwargs
        )
