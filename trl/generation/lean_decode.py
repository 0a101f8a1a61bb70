"""
A lean decode loop for Llama-family causal LMs, used by [`~trl.generation.TransformersBackend`] instead of
`model.generate` where it reproduces `generate` exactly.

Per generated token, `generate` on CPU spends most of its time outside the matrix multiplications: module calls,
attention-mask construction, cache concatenation, logits-processor dispatch and `torch.multinomial`, which draws one
exponential per vocabulary entry. This loop keeps the model's maths and removes the rest:

- the prompt goes through the model's own forward once (prefill), exactly as in `generate`;
- each decode step then runs the same operations as the model's modules, called functionally on the live weights:
  no module dispatch, no mask rebuilding (a left-padded batch only ever appends a column of ones, so the boolean
  mask is one pre-built buffer sliced per step), a key/value cache allocated once for the whole completion, rotary
  cos/sin computed once for every position, and `q`/`k` rotated in one pass;
- the query/key/value (and gate/up) projections of separately stored weights are one matrix multiplication over the
  concatenated weights when that is bitwise identical on this machine (checked once per shape, see
  [`fused_projection_is_exact`]);
- sampling applies the logits processors' definitions (repetition penalty, temperature, top-k, top-p, min-p) without
  per-step validation, and draws **one** uniform number per row: inverse-CDF sampling, `u ~ U(0, 1)`,
  `searchsorted(cumsum(probs), u * sum(probs))`. Same distribution as `torch.multinomial`, a different random stream.

Which models qualify is [`lean_decode_unsupported_reason`]: the model types of [`LEAN_MODEL_TYPES`] with sdpa
attention, full (not sliding-window) attention, static RoPE, SiLU MLP, plain `nn.Linear` / `nn.Embedding` modules
(no PEFT, quantization, offloading or other hooks). Everything else falls back to `generate`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


#: Model types whose decoder layer the lean loop reproduces.
LEAN_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3")
#: How the decode step computes attention: `"sdpa"` calls the kernel transformers calls (bitwise the same logits as
#: `generate`); `"matmul"` spells it out as `softmax(q k^T * scale + mask) v` (transformers' eager attention), the
#: same maths with a different rounding, without the per-call overhead of the CPU flash-attention kernel.
LEAN_ATTENTIONS = ("sdpa", "matmul")
#: Values of the backend's `decode_loop` argument.
DECODE_LOOPS = ("auto", "lean", "generate")
# RoPE types whose frequencies do not depend on the sequence length (cos/sin are a pure function of the position).
_STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn", "proportional")


def _plain_modules() -> tuple[type, ...]:
    from transformers.activations import SiLUActivation

    return (nn.Linear, nn.Embedding, nn.ModuleList, nn.Dropout, nn.SiLU, SiLUActivation)


_PROJECTIONS = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "qkv_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "gate_up_proj",
)


def lean_decode_unsupported_reason(model: nn.Module) -> str | None:
    """
    Why the lean decode loop cannot reproduce `model.generate` for `model`, or `None` when it can.

    The rule: a `*ForCausalLM` of one of [`LEAN_MODEL_TYPES`] in eval mode, with sdpa attention, no sliding-window
    layer, a RoPE type whose frequencies are static, a SiLU MLP, only plain `nn.Linear` / `nn.Embedding` parameter
    modules (no LoRA, quantized or otherwise wrapped layers; every module is a plain torch one or a class of the
    model type's own transformers modeling file) and no hooks (offloading, ZeRO-3 partitioning).

    Args:
        model (`torch.nn.Module`):
            The plain (unwrapped) model.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in LEAN_MODEL_TYPES:
        return f"model type {model_type!r} is not one of {LEAN_MODEL_TYPES}"
    if not type(model).__name__.endswith("ForCausalLM"):
        return f"{type(model).__name__} is not a causal LM class"
    if model.training:
        return "the model is in training mode"
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return f"attention implementation {getattr(config, '_attn_implementation', None)!r} is not 'sdpa'"
    layer_types = getattr(config, "layer_types", None) or []
    if any(kind != "full_attention" for kind in layer_types) or (
        model_type in ("mistral", "phi3") and getattr(config, "sliding_window", None) is not None
    ):
        return "sliding-window attention"
    if getattr(config, "hidden_act", None) != "silu":
        return f"activation {getattr(config, 'hidden_act', None)!r} is not 'silu'"
    body = getattr(model, "model", None)
    rotary = getattr(body, "rotary_emb", None)
    rope_type = getattr(rotary, "rope_type", None)
    if rope_type not in _STATIC_ROPE_TYPES:
        return f"RoPE type {rope_type!r} is not static"
    if (getattr(config, "rope_parameters", None) or {}).get("partial_rotary_factor", 1.0) != 1.0:
        return "partial rotary embedding"
    if getattr(config, "pretraining_tp", 1) not in (None, 1):
        return "pretraining_tp > 1"
    if type(getattr(body, "embed_tokens", None)) is not nn.Embedding or type(model.lm_head) is not nn.Linear:
        return "embedding or LM head is not a plain module"
    plain_modules = _plain_modules()
    own_classes = f"transformers.models.{model_type}.modeling_{model_type}"
    for name, module in model.named_modules():
        if module._forward_hooks or module._forward_pre_hooks or hasattr(module, "_hf_hook"):
            return f"module {name!r} has hooks"
        kind = type(module)
        if kind not in plain_modules and kind.__module__ != own_classes:
            return f"module {name!r} is a {kind.__module__}.{kind.__name__}"
        if name.rsplit(".", 1)[-1] in _PROJECTIONS and kind is not nn.Linear:
            return f"projection {name!r} is a {kind.__name__}, not an nn.Linear"
        if name.endswith("act_fn") and kind.__name__ not in ("SiLUActivation", "SiLU"):
            return f"activation {name!r} is a {kind.__name__}"
    for param in model.parameters():
        if type(param.data) is not torch.Tensor or param.numel() == 0 or hasattr(param, "ds_id"):
            return "parameters are sharded or wrapped"
    if torch.nn.modules.module._global_forward_hooks or torch.nn.modules.module._global_forward_pre_hooks:
        return "global module hooks are registered"
    return None


@functools.cache
def fused_projection_is_exact(batch: int, in_features: int, out_features: tuple[int, ...], dtype, device) -> bool:
    """
    Whether one matmul over concatenated weights gives bitwise the same outputs as one matmul per weight, for these
    shapes on this machine (BLAS kernels could block a wider matrix differently). Checked once per shape.
    """
    generator = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, in_features, generator=generator).to(device=device, dtype=dtype)
    weights = [
        torch.randn(out, in_features, generator=generator).to(device=device, dtype=dtype) for out in out_features
    ]
    biases = [torch.randn(out, generator=generator).to(device=device, dtype=dtype) for out in out_features]
    with torch.inference_mode():
        separate = torch.cat([F.linear(x, w, b) for w, b in zip(weights, biases, strict=True)], dim=-1)
        fused = F.linear(x, torch.cat(weights), torch.cat(biases))
        separate_no_bias = torch.cat([F.linear(x, w) for w in weights], dim=-1)
        fused_no_bias = F.linear(x, torch.cat(weights))
    return torch.equal(separate, fused) and torch.equal(separate_no_bias, fused_no_bias)


# ---------------------------------------------------------------------------------------------------------- sampler


@dataclass(frozen=True)
class SamplerSettings:
    """
    The token-selection settings of one generation call, with the meaning `generate` gives them.

    Args:
        greedy (`bool`): `argmax` instead of sampling.
        temperature (`float`): Divides the (penalised) logits; ignored when greedy.
        top_k (`int`): Keep the tokens at least as likely as the `top_k`-th; `0` disables it.
        top_p (`float`): Nucleus mass; `1.0` disables it.
        min_p (`float`): Drop tokens below `min_p` times the top probability; `0.0` disables it.
        repetition_penalty (`float`): HF's penalty on tokens of the prompt (padding excluded) and of the completion.
    """

    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0


class TokenSampler:
    """
    Selects the next token of every row from its logits, as `generate`'s logits processors and sampler define it, with
    one uniform random number per row (inverse-CDF sampling on the default generator of the logits' device).

    Args:
        settings ([`SamplerSettings`]): What to apply.
        prompt_ids (`torch.Tensor`): The left-padded prompts, `[batch, length]`, for the repetition penalty.
        attention_mask (`torch.Tensor`): Their mask; padding is not penalised.
        vocab_size (`int`): Width of the logits.
    """

    def __init__(self, settings: SamplerSettings, prompt_ids, attention_mask, vocab_size: int):
        self.settings = settings
        self.vocab_size = vocab_size
        self.seen = None
        if settings.repetition_penalty != 1.0:
            # One extra column absorbs padding and ids beyond the logits' width (the LM head can be narrower than
            # the embedding), which are never penalised.
            seen = torch.zeros(prompt_ids.shape[0], vocab_size + 1, dtype=torch.bool, device=prompt_ids.device)
            ids = prompt_ids.clamp(max=vocab_size).masked_fill(attention_mask == 0, vocab_size)
            self.seen = seen.scatter_(1, ids, True)

    def penalise(self, scores: torch.Tensor) -> torch.Tensor:
        """The repetition penalty: seen tokens' logits divided (positive) or multiplied (negative) by it."""
        if self.seen is None:
            return scores
        penalty = self.settings.repetition_penalty
        penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
        return torch.where(self.seen[:, : self.vocab_size], penalised, scores)

    def observe(self, tokens: torch.Tensor) -> None:
        """Record the tokens just generated (for the repetition penalty)."""
        if self.seen is not None:
            self.seen.scatter_(1, tokens.clamp(max=self.vocab_size)[:, None], True)

    def filtered_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """The scores sampling draws from (softmax of these): penalty, temperature, top-k, top-p, min-p, in
        `generate`'s order; filtered tokens are `-inf`."""
        s = self.settings
        scores = self.penalise(logits)
        if s.greedy:
            return scores
        if s.temperature != 1.0:
            scores = scores / s.temperature
        if s.top_k > 0:
            k = min(max(s.top_k, 1), scores.shape[-1])
            kth = torch.topk(scores, k)[0][..., -1, None]
            scores = scores.masked_fill(scores < kth, -float("inf"))
        if s.top_p < 1.0:
            # Ascending order: drop the tokens whose cumulative mass (from the least likely) is <= 1 - top_p, always
            # keeping the most likely one.
            sorted_scores, order = torch.sort(scores, descending=False)
            cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
            drop_sorted = cumulative <= (1 - s.top_p)
            drop_sorted[..., -1:] = False
            scores = scores.masked_fill(drop_sorted.scatter(1, order, drop_sorted), -float("inf"))
        if s.min_p > 0.0:
            probs = torch.softmax(scores, dim=-1)
            drop = probs < s.min_p * probs.amax(dim=-1, keepdim=True)
            drop.scatter_(-1, probs.argmax(dim=-1, keepdim=True), False)
            scores = scores.masked_fill(drop, -float("inf"))
        return scores

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """The next token of each row, `[batch]`, from float32 `logits` `[batch, vocab]`."""
        scores = self.filtered_scores(logits)
        if self.settings.greedy:
            return scores.argmax(dim=-1)
        cdf = torch.softmax(scores, dim=-1).cumsum_(dim=-1)
        # One uniform per row; `right=True` never lands on a zero-probability (filtered) token.
        target = torch.rand(cdf.shape[0], 1, device=cdf.device, dtype=cdf.dtype).mul_(cdf[:, -1:])
        return torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[-1] - 1).squeeze(1)


# ------------------------------------------------------------------------------------------------------------ model


@dataclass
class _Layer:
    input_norm: tuple[torch.Tensor, float]
    post_norm: tuple[torch.Tensor, float]
    qkv: list[tuple[torch.Tensor, torch.Tensor | None]]  # one fused projection or q, k, v
    qk_norm: tuple[torch.Tensor, float] | None  # per-head norm weights of q and k side by side (Qwen3)
    o: tuple[torch.Tensor, torch.Tensor | None]
    gate_up: list[tuple[torch.Tensor, torch.Tensor | None]]  # one fused projection or gate, up
    down: tuple[torch.Tensor, torch.Tensor | None]


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The Llama-family RMSNorm, operation for operation (float32 statistics, weight applied in the input dtype)."""
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def _linear(x, weight_bias):
    return F.linear(x, weight_bias[0], weight_bias[1])


def _cat_projections(modules: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    weight = torch.cat([m.weight for m in modules])
    if all(m.bias is None for m in modules):
        return weight, None
    biases = [m.bias if m.bias is not None else m.weight.new_zeros(m.out_features) for m in modules]
    return weight, torch.cat(biases)


class LeanDecoder:
    """
    Greedy or sampled decoding of a left-padded batch with the model's own prefill and a functional decode step.

    Built per generation call (weights are read, not copied, except for the concatenated projections), so it always
    decodes with the live weights.

    Args:
        model (`torch.nn.Module`):
            A model for which [`lean_decode_unsupported_reason`] is `None`.
        batch_size (`int`):
            Rows decoded together (decides whether fused projections are exact).
        fuse_projections (`bool`, *optional*, defaults to `True`):
            Use one matmul for q/k/v and for gate/up where bitwise exact.
    """

    def __init__(self, model: nn.Module, batch_size: int, fuse_projections: bool = True, attention: str = "sdpa"):
        if attention not in LEAN_ATTENTIONS:
            raise ValueError(f"`attention` must be one of {LEAN_ATTENTIONS}, got {attention!r}.")
        self.attention = attention
        config = model.config
        self.model = model
        self.config = config
        body = model.model
        self.embed = body.embed_tokens.weight
        self.norm = (body.norm.weight, body.norm.variance_epsilon)
        self.lm_head = (model.lm_head.weight, model.lm_head.bias)
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.scaling = self.head_dim**-0.5
        dtype, device = self.embed.dtype, self.embed.device
        hidden = config.hidden_size
        self.layers = []
        for layer in body.layers:
            attn, mlp = layer.self_attn, layer.mlp
            if hasattr(attn, "qkv_proj"):  # Phi-3 stores them fused
                qkv = [(attn.qkv_proj.weight, attn.qkv_proj.bias)]
            else:
                projections = [attn.q_proj, attn.k_proj, attn.v_proj]
                widths = tuple(p.out_features for p in projections)
                if fuse_projections and fused_projection_is_exact(batch_size, hidden, widths, dtype, device):
                    qkv = [_cat_projections(projections)]
                else:
                    qkv = [(p.weight, p.bias) for p in projections]
            if hasattr(mlp, "gate_up_proj"):
                gate_up = [(mlp.gate_up_proj.weight, mlp.gate_up_proj.bias)]
            else:
                projections = [mlp.gate_proj, mlp.up_proj]
                widths = tuple(p.out_features for p in projections)
                if fuse_projections and fused_projection_is_exact(batch_size, hidden, widths, dtype, device):
                    gate_up = [_cat_projections(projections)]
                else:
                    gate_up = [(p.weight, p.bias) for p in projections]
            qk_norm = None
            if hasattr(attn, "q_norm"):
                weight = torch.cat(
                    [
                        attn.q_norm.weight.expand(self.num_heads, self.head_dim),
                        attn.k_norm.weight.expand(self.num_kv_heads, self.head_dim),
                    ]
                )
                qk_norm = (weight, attn.q_norm.variance_epsilon)
            self.layers.append(
                _Layer(
                    input_norm=(layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon),
                    post_norm=(layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon),
                    qkv=qkv,
                    qk_norm=qk_norm,
                    o=(attn.o_proj.weight, attn.o_proj.bias),
                    gate_up=gate_up,
                    down=(mlp.down_proj.weight, mlp.down_proj.bias),
                )
            )

    # -------------------------------------------------------------------------------------------- prefill

    def _prefill(self, input_ids, attention_mask, padded):
        """The model's own forward over the prompts, with `generate`'s position ids and mask; returns the last
        position's logits and the cache."""
        from transformers import DynamicCache

        position_ids = attention_mask.long().cumsum(-1) - 1
        position_ids = position_ids.masked_fill(attention_mask == 0, 0)
        output = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask if padded else None,
            position_ids=position_ids,
            cache=DynamicCache(config=self.config),
            use_cache=True,
            logits_to_keep=1,
        )
        return output.logits[:, -1], output.cache

    # ---------------------------------------------------------------------------------------------- decode

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        max_new_tokens: int,
        sampler: TokenSampler,
        eos_token_ids: list[int],
        pad_token_id: int,
        logprob_temperature: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        Decode up to `max_new_tokens` tokens per row, stopping when every row has produced an EOS token.

        Args:
            input_ids (`torch.Tensor`): Left-padded prompts, `[batch, length]`.
            attention_mask (`torch.Tensor`): Their mask.
            max_new_tokens (`int`): Budget per row.
            sampler ([`TokenSampler`]): Picks each token.
            eos_token_ids (`list[int]`): Ids that finish a row; later positions hold `pad_token_id`.
            pad_token_id (`int`): Filler after a row's EOS.
            logprob_temperature (`float` or `None`, *optional*): When set, also return the log-probabilities of the
                generated tokens under `softmax(logits / logprob_temperature)` (raw logits, as the backend's
                `generate` path computes them).

        Returns:
            `tuple[torch.Tensor, torch.Tensor | None]`: Generated ids `[batch, steps]` and their log-probs.
        """
        batch, prompt_length = input_ids.shape
        device = input_ids.device
        padded = not bool(attention_mask.all())
        logits, cache = self._prefill(input_ids, attention_mask, padded)
        eos = torch.tensor(eos_token_ids, device=device)
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        tokens, logprobs = [], []
        total = prompt_length + max_new_tokens
        # Key/value cache for the whole completion, filled with the prefill's.
        keys, values = [], []
        for layer in cache.layers:
            k = layer.keys.new_empty(batch, self.num_kv_heads, total, self.head_dim)
            v = layer.values.new_empty(batch, self.num_kv_heads, total, self.head_dim)
            k[:, :, :prompt_length] = layer.keys
            v[:, :, :prompt_length] = layer.values
            keys.append(k)
            values.append(v)
        del cache
        mask = None
        if padded:
            mask = torch.ones(batch, total, dtype=torch.bool, device=device)
            mask[:, :prompt_length] = attention_mask.bool()
            mask = mask[:, None, None, :]
            if self.attention == "matmul":
                # Additive, as in eager attention: 0 where attended, the dtype's minimum elsewhere.
                additive = torch.zeros(mask.shape, dtype=keys[0].dtype, device=device)
                mask = additive.masked_fill_(~mask, torch.finfo(keys[0].dtype).min)
        # RoPE for every decode position at once (position = real prompt length + step).
        steps = max(max_new_tokens - 1, 1)
        positions = attention_mask.long().sum(-1, keepdim=True) + torch.arange(steps, device=device)
        cos, sin = self.model.model.rotary_emb(keys[0], positions)
        half = self.head_dim // 2
        sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)  # rotate_half's sign folded into sin
        cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
        for step in range(max_new_tokens):
            logits = logits.to(dtype=torch.float32)
            next_tokens = sampler(logits)
            next_tokens = torch.where(finished, pad_token_id, next_tokens)
            if logprob_temperature is not None:
                logps = torch.log_softmax(logits / logprob_temperature, dim=-1)
                logprobs.append(logps.gather(-1, next_tokens[:, None]))
            tokens.append(next_tokens)
            sampler.observe(next_tokens)
            finished = finished | torch.isin(next_tokens, eos)
            if step == max_new_tokens - 1 or bool(finished.all()):
                break
            logits = self._step(next_tokens, keys, values, mask, cos[:, step], sin[:, step], prompt_length + step)
        generated = torch.stack(tokens, dim=1)
        return generated, (torch.cat(logprobs, dim=1) if logprob_temperature is not None else None)

    def _step(self, tokens, keys, values, mask, cos, sin, position):
        """One decode forward: `tokens` `[batch]` at cache index `position`; returns the logits `[batch, vocab]`."""
        batch = tokens.shape[0]
        heads, kv_heads, head_dim = self.num_heads, self.num_kv_heads, self.head_dim
        groups = heads // kv_heads
        length = position + 1
        attn_mask = mask[..., :length] if mask is not None else None
        h = F.embedding(tokens, self.embed)
        for index, layer in enumerate(self.layers):
            x = _rms_norm(h, *layer.input_norm)
            if len(layer.qkv) == 1:
                qkv = _linear(x, layer.qkv[0]).view(batch, heads + 2 * kv_heads, head_dim)
                qk, v = qkv[:, : heads + kv_heads], qkv[:, heads + kv_heads :]
            else:
                q, k, v = (_linear(x, p) for p in layer.qkv)
                qk = torch.cat((q, k), dim=-1).view(batch, heads + kv_heads, head_dim)
                v = v.view(batch, kv_heads, head_dim)
            if layer.qk_norm is not None:
                qk = _rms_norm(qk, *layer.qk_norm)
            qk = qk * cos + torch.roll(qk, head_dim // 2, dims=-1) * sin
            keys[index].select(2, position).copy_(qk[:, heads:])
            values[index].select(2, position).copy_(v)
            k_all = keys[index].narrow(2, 0, length)
            v_all = values[index].narrow(2, 0, length)
            q = qk[:, :heads]
            # The layouts transformers' sdpa integration uses for one query token: packed GQA with a mask, native
            # GQA without one.
            if self.attention == "matmul":
                scores = torch.matmul(q.view(batch, kv_heads, groups, head_dim), k_all.transpose(2, 3))
                scores = scores * self.scaling
                if attn_mask is not None:
                    scores = scores + attn_mask
                probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
                out = torch.matmul(probs, v_all)
            elif groups > 1 and attn_mask is not None:
                out = F.scaled_dot_product_attention(
                    q.view(batch, kv_heads, groups, head_dim), k_all, v_all, attn_mask=attn_mask, scale=self.scaling
                )
            else:
                extra = {"enable_gqa": True} if groups > 1 else {}
                out = F.scaled_dot_product_attention(
                    q.view(batch, heads, 1, head_dim), k_all, v_all, attn_mask=attn_mask, scale=self.scaling, **extra
                )
            h = h + _linear(out.reshape(batch, heads * head_dim), layer.o)
            x = _rms_norm(h, *layer.post_norm)
            if len(layer.gate_up) == 1:
                gate, up = _linear(x, layer.gate_up[0]).chunk(2, dim=-1)
            else:
                gate, up = (_linear(x, p) for p in layer.gate_up)
            h = h + _linear(F.silu(gate) * up, layer.down)
        return _linear(_rms_norm(h, *self.norm), self.lm_head)
