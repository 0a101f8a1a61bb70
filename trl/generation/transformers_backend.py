"""
Generation with transformers' `generate` on the live training model (the default backend, CPU-friendly).

The prompts are left-padded into one batch (or a few, with `max_batch_size`), generated with the KV cache, then
stripped of padding and cut after their first EOS token. The model is switched to eval mode for the call (no
dropout, no gradient checkpointing, which would disable the cache) and put back afterwards.

For the Llama-family models of [`~trl.generation.lean_decode.LEAN_MODEL_TYPES`] the tokens come from the lean decode
loop of [`~trl.generation.lean_decode`] (the model's own prefill, then a functional decode step with a pre-allocated
cache and one random number per sampled row), which reproduces `generate` (greedy decoding token for token, sampling
in distribution); `decode_loop="generate"` forces `model.generate`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from ..models.utils import unwrap_model_for_generation  # re-exported: the reference's name in trl.models
from .base import GenerationBackend, GenerationResult, SamplingParams, check_prompts, cut_at_eos
from .lean_decode import (
    DECODE_LOOPS,
    LEAN_ATTENTIONS,
    LeanDecoder,
    SamplerSettings,
    TokenSampler,
    lean_decode_unsupported_reason,
)


if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import GenerationConfig


# Keys of `SamplingParams.generation_kwargs` that are not `GenerationConfig` fields but that this backend handles.
_EXTRA_KWARGS = {"seed"}
# `generation_kwargs` the lean decode loop honours (it always uses its own pre-allocated cache); any other key sends
# the call to `model.generate`.
_LEAN_COMPATIBLE_KWARGS = {"seed", "cache_implementation"}


class TransformersBackend(GenerationBackend):
    """
    Generate with `model.generate` on the model being trained.

    Args:
        model (`torch.nn.Module`):
            The policy. It may be wrapped by accelerate; [`~TransformersBackend.sync_weights`] swaps in a new
            reference (e.g. after `accelerator.prepare`).
        accelerator (`accelerate.Accelerator` or `None`, *optional*, defaults to `None`):
            Unwraps the model before generating (DDP, DeepSpeed, FSDP).
        pad_token_id (`int` or `None`, *optional*, defaults to `None`):
            Id used to left-pad the prompts. Defaults to the model's generation config (then its EOS id).
        eos_token_id (`int`, `list[int]` or `None`, *optional*, defaults to `None`):
            Id(s) that end a completion. Defaults to the model's generation config.
        max_batch_size (`int` or `None`, *optional*, defaults to `None`):
            Most rows (prompts times `n`) generated at once; `None` generates the whole batch in one call.
        unwrap_context (`Callable` or `None`, *optional*, defaults to `None`):
            `unwrap_context(model, accelerator)` returning a context manager that yields the model to call
            `generate` on. Defaults to [`unwrap_model_for_generation`].
        decode_loop (`str`, *optional*, defaults to `"auto"`):
            `"auto"`: the lean decode loop where [`~trl.generation.lean_decode.lean_decode_unsupported_reason`]
            allows it and no `generation_kwargs` beyond `seed` / `cache_implementation` are given, else
            `model.generate`; `"generate"`: always `model.generate`; `"lean"`: always the lean loop (an error when
            the model or the kwargs do not allow it).
        lean_attention (`str`, *optional*, defaults to `"sdpa"`):
            Attention in the lean decode step: `"sdpa"` (the kernel `generate` uses: bitwise the same logits) or
            `"matmul"` (`softmax(q k^T * scale + mask) v` spelled out, as transformers' eager attention: the same
            maths with a different rounding, cheaper per call on CPU).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        accelerator: Accelerator | None = None,
        pad_token_id: int | None = None,
        eos_token_id: int | list[int] | None = None,
        max_batch_size: int | None = None,
        unwrap_context: Callable[..., contextlib.AbstractContextManager] | None = None,
        decode_loop: str = "auto",
        lean_attention: str = "sdpa",
    ):
        if lean_attention not in LEAN_ATTENTIONS:
            raise ValueError(f"`lean_attention` must be one of {LEAN_ATTENTIONS}, got {lean_attention!r}.")
        self.lean_attention = lean_attention
        if decode_loop not in DECODE_LOOPS:
            raise ValueError(f"`decode_loop` must be one of {DECODE_LOOPS}, got {decode_loop!r}.")
        self.decode_loop = decode_loop
        self.last_decode_loop: str | None = None
        self.model = model
        self.accelerator = accelerator
        self.max_batch_size = max_batch_size
        self.unwrap_context = unwrap_context or unwrap_model_for_generation
        base_config = getattr(self._plain_model(), "generation_config", None)
        self.eos_token_ids = _as_id_list(
            eos_token_id if eos_token_id is not None else _get(base_config, "eos_token_id")
        )
        if not self.eos_token_ids:
            raise ValueError(
                "No EOS token id: pass `eos_token_id` or set `model.generation_config.eos_token_id`, otherwise "
                "completions never stop before `max_tokens`."
            )
        pad = pad_token_id if pad_token_id is not None else _get(base_config, "pad_token_id")
        self.pad_token_id = pad if pad is not None else self.eos_token_ids[0]

    def sync_weights(self, model: torch.nn.Module | None = None) -> None:
        """
        The live model is the engine, so nothing is copied; a new `model` reference (a re-wrapped model) is kept.

        Args:
            model (`torch.nn.Module` or `None`, *optional*, defaults to `None`):
                The model to generate with from now on.
        """
        if model is not None:
            self.model = model

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingParams) -> GenerationResult:
        check_prompts(prompt_ids)
        generation_kwargs = dict(sampling.generation_kwargs)
        seed = generation_kwargs.pop("seed", None)
        config = self.generation_config(sampling, generation_kwargs)
        step = self._rows_per_call(sampling.n, len(prompt_ids))
        completions, reasons, logprobs = [], [], []
        with self.unwrap_context(self.model, self.accelerator) as model, _call_mode(model, seed):
            lean = self._use_lean(model, sampling)
            self.last_decode_loop = "lean" if lean else "generate"
            generate_chunk = self._lean_chunk if lean else self._generate_chunk
            for start in range(0, len(prompt_ids), step):
                chunk = generate_chunk(model, prompt_ids[start : start + step], config, sampling)
                completions += chunk[0]
                reasons += chunk[1]
                logprobs += chunk[2]
        return GenerationResult(
            completion_ids=completions,
            finish_reasons=reasons,
            logprobs=logprobs if sampling.return_logprobs else None,
            prompt_ids=[list(p) for p in prompt_ids],
        )

    def generation_config(self, sampling: SamplingParams, overrides: dict[str, Any] | None = None) -> GenerationConfig:
        """
        The `GenerationConfig` matching `sampling`, with `overrides` (`GenerationConfig` fields) applied last.

        Every sampling field is set explicitly, so the model's own generation config (e.g. a Hub `top_k=20`) never
        changes what the trainer asked for.

        Args:
            sampling ([`SamplingParams`]):
                The sampling parameters.
            overrides (`dict[str, Any]` or `None`, *optional*, defaults to `None`):
                `GenerationConfig` fields that take precedence.

        Raises:
            ValueError: For an override that is not a `GenerationConfig` field.
        """
        from transformers import GenerationConfig

        overrides = dict(overrides or {})
        known = {key for key in vars(GenerationConfig()) if not key.startswith("_")}
        unknown = sorted(set(overrides) - known - _EXTRA_KWARGS)
        if unknown:
            raise ValueError(
                f"Unknown generation_kwargs {unknown} for the transformers backend: use `GenerationConfig` field "
                "names (e.g. `no_repeat_ngram_size`, `stop_strings`) or `seed`."
            )
        values = {
            "max_new_tokens": sampling.max_tokens,
            "do_sample": not sampling.greedy,
            "repetition_penalty": sampling.repetition_penalty,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": self.eos_token_ids,
            "use_cache": True,
            "return_dict_in_generate": True,
            "output_logits": sampling.return_logprobs,
            "disable_compile": True,
        }
        if not sampling.greedy:
            # Greedy decoding ignores these (and transformers warns when they are set).
            values.update(
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=max(sampling.top_k, 0),
                min_p=sampling.min_p or None,
            )
        values.update(overrides)
        return GenerationConfig(**values)

    def _use_lean(self, model: torch.nn.Module, sampling: SamplingParams) -> bool:
        """Whether this call decodes with the lean loop (see `decode_loop`)."""
        if self.decode_loop == "generate":
            return False
        extra = sorted(set(sampling.generation_kwargs) - _LEAN_COMPATIBLE_KWARGS)
        reason = f"generation_kwargs {extra} need `model.generate`" if extra else lean_decode_unsupported_reason(model)
        if reason is not None and self.decode_loop == "lean":
            raise ValueError(f"`decode_loop='lean'` cannot decode this call: {reason}.")
        return reason is None

    def _rows_per_call(self, n: int, num_prompts: int) -> int:
        if self.max_batch_size is None:
            return max(num_prompts, 1)
        return max(self.max_batch_size // n, 1)

    def _plain_model(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model) if self.accelerator is not None else self.model

    @torch.no_grad()
    def _generate_chunk(self, model, prompts, config, sampling):
        device = next(model.parameters()).device
        # Repeating rows (rather than `num_return_sequences`) also works for greedy decoding with n > 1.
        rows = [prompt for prompt in prompts for _ in range(sampling.n)]
        input_ids, attention_mask = left_pad(rows, self.pad_token_id, device)
        extra = _no_router_logits(model)
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config, **extra)
        generated = output.sequences[:, input_ids.shape[1] :]
        eos = set(self.eos_token_ids)
        cut = [cut_at_eos(row, eos, config.max_new_tokens) for row in generated.tolist()]
        completions = [row for row, _ in cut]
        reasons = [reason for _, reason in cut]
        logprobs = []
        if sampling.return_logprobs:
            temperature = 1.0 if sampling.greedy else sampling.temperature
            logprobs = sampled_logprobs(output.logits, generated, temperature, [len(c) for c in completions])
        return completions, reasons, logprobs

    @torch.inference_mode()
    def _lean_chunk(self, model, prompts, config, sampling):
        device = next(model.parameters()).device
        rows = [prompt for prompt in prompts for _ in range(sampling.n)]
        input_ids, attention_mask = left_pad(rows, self.pad_token_id, device)
        settings = SamplerSettings(
            greedy=sampling.greedy,
            temperature=sampling.temperature,
            top_k=max(sampling.top_k, 0),
            top_p=sampling.top_p,
            min_p=sampling.min_p,
            repetition_penalty=sampling.repetition_penalty,
        )
        sampler = TokenSampler(settings, input_ids, attention_mask, model.lm_head.out_features)
        temperature = None
        if sampling.return_logprobs:
            temperature = 1.0 if sampling.greedy else sampling.temperature
        generated, logps = LeanDecoder(model, len(rows), attention=self.lean_attention).generate(
            input_ids,
            attention_mask,
            sampling.max_tokens,
            sampler,
            self.eos_token_ids,
            self.pad_token_id,
            logprob_temperature=temperature,
        )
        eos = set(self.eos_token_ids)
        cut = [cut_at_eos(row, eos, sampling.max_tokens) for row in generated.tolist()]
        completions = [row for row, _ in cut]
        reasons = [reason for _, reason in cut]
        logprobs = []
        if logps is not None:
            logps = logps.float().cpu()
            logprobs = [logps[row, : len(completion)].tolist() for row, completion in enumerate(completions)]
        return completions, reasons, logprobs


def left_pad(prompts: list[list[int]], pad_token_id: int, device: torch.device | str = "cpu"):
    """
    Left-pad token-id lists into `(input_ids, attention_mask)` tensors of shape `[batch, longest]`.

    Args:
        prompts (`list[list[int]]`):
            The sequences.
        pad_token_id (`int`):
            The padding id.
        device (`torch.device` or `str`, *optional*, defaults to `"cpu"`):
            Where to put the tensors.
    """
    longest = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, longest - len(prompt) :] = torch.as_tensor(prompt, dtype=torch.long)
        attention_mask[row, longest - len(prompt) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def sampled_logprobs(
    step_logits: tuple[torch.Tensor, ...], generated: torch.Tensor, temperature: float, lengths: list[int]
) -> list[list[float]]:
    """
    Log-probabilities of the generated tokens under `softmax(logits / temperature)`, one step at a time so that no
    `[batch, steps, vocab]` tensor of log-probs is ever built.

    Args:
        step_logits (`tuple[torch.Tensor, ...]`):
            Raw logits of each generation step, each `[batch, vocab]` (`generate(..., output_logits=True)`).
        generated (`torch.Tensor`):
            The generated tokens, `[batch, steps]`.
        temperature (`float`):
            The sampling temperature (`1.0` for greedy decoding).
        lengths (`list[int]`):
            Completion length of each row; positions beyond it (padding after EOS) are dropped.
    """
    per_step = []
    for step, logits in enumerate(step_logits):
        logps = torch.log_softmax(logits.float() / temperature, dim=-1)
        per_step.append(logps.gather(-1, generated[:, step : step + 1]).squeeze(-1))
    logps_B_T = torch.stack(per_step, dim=1).cpu()
    return [logps_B_T[row, :length].tolist() for row, length in enumerate(lengths)]


@contextlib.contextmanager
def _call_mode(model: torch.nn.Module, seed: int | None) -> Iterator[None]:
    """One generation call's mode: eval (no dropout; gradient checkpointing would disable the cache) and, with a
    `seed`, a private sampling RNG; the model's mode and the global RNG state come back afterwards."""
    was_training = model.training
    device = next(model.parameters()).device if seed is not None else None
    cuda = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(int(seed))
        model.eval()
        try:
            yield
        finally:
            model.train(was_training)


def _as_id_list(value: int | list[int] | None) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def _get(config: Any, name: str) -> Any:
    return getattr(config, name, None) if config is not None else None


def _no_router_logits(model: torch.nn.Module) -> dict[str, bool]:
    """`output_router_logits=False` for a mixture-of-experts model loaded with router logits on, else nothing.

    The aux loss is a training term; computed during cached decoding, transformers pairs each step's router logits
    (new tokens only) with the attention mask of the whole sequence and fails on the shape mismatch.
    """
    config = getattr(model, "config", None)
    return {"output_router_logits": False} if getattr(config, "output_router_logits", False) else {}
