"""The one forward pass behind every trainer's per-token log-probs: [`token_logps`].

A batch names the tokens to score: `labels` (SFT; `-100` is not scored) or a `completion_mask` (paired, unpaired and
online trainers; 1 on the completion tokens). Token t is predicted by position t - 1, so only the positions that
precede a scored token reach the LM head:

- **logits path** (default): those positions are passed as a boolean `logits_to_keep`, so the model projects only
  them onto the vocabulary (or, for a model without that argument, the full logits are computed and indexed). The
  log-probs, entropies and top-1 flags are read from those logits block by block ([`selective_log_softmax`]).
- **chunked path** (`chunk_size`): the hidden states of those positions are taken at the LM head's input (the head
  itself then projects nothing) and [`chunked_selective_log_softmax`] projects `chunk_size` of them at a time, in
  the forward and the backward pass. Peak memory falls from `N x V` logits to `chunk_size x V`; the price is one
  more LM-head matmul in the backward pass, so it is slower wherever memory is not the limit (see
  `benchmarks/bench_token_logps.py`). Models whose head is not a plain linear projection (logit soft-capping or
  scaling, a LoRA-wrapped head) use the logits path.
- **padding-free** (`padding_free=True`): the real tokens of every row are flattened into one row with
  per-sequence `position_ids`, so no compute is spent on padding; the result comes back in the padded layout.
- **encoder-decoder**: the prompt feeds the encoder and the completion the decoder (teacher forcing).

Results are in the layout of the scored tokens: `logps[b, t]` is `log p(token t | tokens < t)` where `mask[b, t]`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .chunked_log_prob import chunked_selective_log_softmax
from .log_softmax import selective_log_softmax, selective_log_softmax_and_entropy


# Batch keys that say what to score; every other key of the batch goes to the model's forward.
SCORING_KEYS = ("labels", "completion_mask", "assistant_masks")
# Config fields of heads that are more than `hidden @ W.T + b`: the chunked kernel would skip their transform.
_HEAD_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


class TokenLogps(NamedTuple):
    """Per-token output of [`token_logps`] for B rows, in the layout `[B, C]` of the scored tokens.

    Args:
        logps (`torch.Tensor` of shape `[B, C]`):
            Log-prob of each scored token (under `softmax(logits / temperature)`), 0 elsewhere.
        mask (`torch.Tensor` of shape `[B, C]`, bool):
            True at the scored tokens.
        logits (`torch.Tensor` of shape `[N, V]` or `None`):
            The logits that predict the N scored tokens, in row-major order of `mask` (`None` on the chunked path).
        outputs (`ModelOutput`):
            The model's output (`aux_loss` of MoE models, ...).
        entropy (`torch.Tensor` of shape `[B, C]` or `None`, *optional*, defaults to `None`):
            Entropy of the predicted distribution at each scored token, with `return_entropy`.
        is_top1 (`torch.Tensor` of shape `[B, C]` or `None`, *optional*, defaults to `None`):
            True where the scored token is the most likely one, with `return_top1`.
        vocab_mean_logits (`torch.Tensor` of shape `[N]` or `None`, *optional*, defaults to `None`):
            The mean logit over the vocabulary of each scored token (detached), set on the chunked path where
            `logits` is not kept; see [`TokenLogps.mean_logits`].
    """

    logps: torch.Tensor
    mask: torch.Tensor
    logits: torch.Tensor | None
    outputs: Any
    entropy: torch.Tensor | None = None
    is_top1: torch.Tensor | None = None
    vocab_mean_logits: torch.Tensor | None = None

    @property
    def logps_N(self) -> torch.Tensor:
        """The log-probs of the N scored tokens, flat, in row-major order of `mask`."""
        return self.logps[self.mask]

    @property
    def aux_loss(self) -> torch.Tensor | None:
        """The MoE router auxiliary loss of the forward pass (`None` for dense models)."""
        return getattr(self.outputs, "aux_loss", None)

    @torch.no_grad()
    def mean_logits(self) -> torch.Tensor:
        """`[N]` float32: each scored token's logit averaged over the vocabulary (the `logits/*` metrics)."""
        if self.logits is not None:
            return self.logits.float().mean(dim=-1)
        return self.vocab_mean_logits


def completion_positions(completion_mask: torch.Tensor) -> torch.Tensor:
    """Boolean `[R, T]` mask of the positions whose logits predict a completion token (position t predicts t + 1).

    Args:
        completion_mask (`torch.Tensor` of shape `[R, T]`):
            1 on completion tokens, 0 on prompt and padding.
    """
    keep = torch.zeros_like(completion_mask, dtype=torch.bool)
    keep[:, :-1] = completion_mask[:, 1:].bool()
    return keep


def scored_tokens(batch: dict[str, torch.Tensor], ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    """The scored tokens of a batch: a boolean `[B, L]` mask over `input_ids` and their ids `[N]`.

    `labels` wins over `completion_mask`. A `completion_mask` narrower than `input_ids` (`[B, C]`, C < L) covers
    the last C columns, as an integer `logits_to_keep` would. Column 0 is never scored (nothing predicts it).
    """
    input_ids = batch["input_ids"]
    if "labels" in batch:
        scored_B_L = batch["labels"] != ignore_index
        source_B_L = batch["labels"]
    else:
        completion_B_C = batch["completion_mask"].bool()
        scored_B_L = torch.nn.functional.pad(completion_B_C, (input_ids.shape[1] - completion_B_C.shape[1], 0))
        source_B_L = input_ids
    scored_B_L = scored_B_L.clone()
    scored_B_L[:, 0] = False
    return scored_B_L, source_B_L[scored_B_L]


def padding_free_inputs(
    inputs: dict[str, torch.Tensor], keep_B_L: torch.Tensor, attn_implementation: str = ""
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The real tokens of every row flattened into one row `[1, N_real]` with per-sequence `position_ids`, and
    `keep_B_L` in that layout.

    Args:
        inputs (`dict[str, torch.Tensor]`):
            `input_ids` and `attention_mask` of shape `[B, L]` (other keys are dropped).
        keep_B_L (`torch.Tensor` of shape `[B, L]`):
            The positions whose logits are needed.
        attn_implementation (`str`, *optional*, defaults to `""`):
            FlashAttention also gets the cumulative sequence lengths.
    """
    input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
    real = attention_mask.bool()
    # Position ids restart at 0 for every row: attention then keeps the sequences apart (no attention mask).
    position_ids = (attention_mask.long().cumsum(dim=-1) - 1)[real].unsqueeze(0)
    flat = {"input_ids": input_ids[real].unsqueeze(0), "position_ids": position_ids}
    if attn_implementation.startswith("flash"):
        lengths = attention_mask.sum(dim=-1)
        cu = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
        max_len = int(lengths.max())
        flat.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max_len, max_length_k=max_len)
    return flat, keep_B_L[real].unsqueeze(0)


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    model = getattr(model, "module", model)  # DDP / DeepSpeed engines
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _attn_implementation(model: torch.nn.Module) -> str:
    return getattr(getattr(_unwrapped(model), "config", None), "_attn_implementation", "") or ""


def linear_head(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The model's LM head when it is a plain `nn.Linear` with nothing applied to its output, else `None`."""
    base = _unwrapped(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    config = getattr(base, "config", None)
    transformed = any(getattr(config, name, None) not in (None, 1.0) for name in _HEAD_TRANSFORMS)
    return head if type(head) is torch.nn.Linear and not transformed else None


def _head_inputs(
    model: torch.nn.Module, inputs: dict[str, Any], keep: torch.Tensor, head: torch.nn.Linear, logits_to_keep: bool
) -> tuple[torch.Tensor, Any]:
    """Run the model with its LM head fed nothing; return the hidden states `[N, H]` at `keep` and the outputs."""
    captured = []

    def take_hidden_states(module: torch.nn.Module, args: tuple) -> tuple:
        captured.append(args[0])
        return (args[0][:0], *args[1:])

    handle = head.register_forward_pre_hook(take_hidden_states)
    try:
        outputs = model(**inputs, **({"logits_to_keep": keep} if logits_to_keep else {}), use_cache=False)
    finally:
        handle.remove()
    return (captured[0] if logits_to_keep else captured[0][keep]), outputs


def _chunked_scores(
    hidden_N_H: torch.Tensor, head: torch.nn.Linear, targets_N: torch.Tensor, chunk_size: int, options: dict
) -> dict[str, torch.Tensor]:
    logps_N, *extra = chunked_selective_log_softmax(
        hidden_N_H,
        head.weight,
        targets_N,
        chunk_size=chunk_size,
        temperature=options["temperature"],
        return_entropy=options["return_entropy"],
        return_argmax=options["return_top1"],
        lm_head_bias=head.bias,
    )
    scores = {"logps": logps_N}
    if options["return_entropy"]:
        entropy_N = extra.pop(0)
        scores["entropy"] = entropy_N if options["entropy_requires_grad"] else entropy_N.detach()
    if options["return_top1"]:
        scores["is_top1"] = extra.pop(0)
    with torch.no_grad():
        # The mean over the vocabulary of h·w_v + b_v is h·mean(w) + mean(b): no logits needed.
        mean_N = hidden_N_H.float() @ head.weight.float().mean(dim=0)
        scores["vocab_mean_logits"] = mean_N + head.bias.float().mean() if head.bias is not None else mean_N
    return scores


def logits_scores(logits_N_V: torch.Tensor, targets_N: torch.Tensor, options: dict) -> dict[str, torch.Tensor]:
    """Log-probs (and entropies, top-1 flags) of `targets_N` from the logits `[N, V]` that predict them."""
    assert logits_N_V.shape[0] == targets_N.shape[0], "kept logits and scored tokens are misaligned"
    temperature = options.get("temperature", 1.0)
    scores = {}
    if options.get("return_entropy"):
        scores["logps"], scores["entropy"] = selective_log_softmax_and_entropy(
            logits_N_V, targets_N, options.get("entropy_requires_grad", False), temperature
        )
    else:
        scores["logps"] = selective_log_softmax(logits_N_V, targets_N, temperature)
    if options.get("return_top1"):
        scores["is_top1"] = logits_N_V.detach().argmax(dim=-1) == targets_N
    return scores


def _place(scores: dict[str, torch.Tensor], mask_B_C: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-token values `[N]` scattered to the True positions of `mask_B_C` (0 / False elsewhere)."""
    placed = {}
    for name in ("logps", "entropy", "is_top1"):
        if name in scores:
            values_N = scores[name]
            placed[name] = values_N.new_zeros(mask_B_C.shape).masked_scatter(mask_B_C, values_N)
    return placed


def token_logps(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    *,
    temperature: float = 1.0,
    return_entropy: bool = False,
    entropy_requires_grad: bool = False,
    return_top1: bool = False,
    chunk_size: int | None = None,
    padding_free: bool = False,
    logits_to_keep: bool = True,
    is_encoder_decoder: bool = False,
    num_virtual_tokens: int = 0,
) -> TokenLogps:
    """Per-token log-probs of the scored tokens of a batch, from one forward pass with the LM head run only at the
    positions that predict them.

    Args:
        model (`torch.nn.Module`):
            A causal (or encoder-decoder) language model, possibly wrapped (DDP, PEFT).
        batch (`dict[str, torch.Tensor]`):
            `input_ids` `[B, L]`; `labels` `[B, L]` (`-100` is not scored) or `completion_mask` `[B, C]`, C <= L (1 on
            the tokens to score; it covers the last C columns of `input_ids`). Every other key (`attention_mask`,
            `position_ids`, `pixel_values`, ...) is passed to the model.
        temperature (`float`, *optional*, defaults to `1.0`):
            Scores under `softmax(logits / temperature)` (the sampling distribution of online trainers).
        return_entropy (`bool`, *optional*, defaults to `False`):
            Also return the entropy at each scored token, computed in the same pass over the logits.
        entropy_requires_grad (`bool`, *optional*, defaults to `False`):
            Keep the entropy in the autograd graph (an entropy bonus); otherwise it is detached.
        return_top1 (`bool`, *optional*, defaults to `False`):
            Also return whether each scored token is the arg-max of its logits (token accuracy).
        chunk_size (`int` or `None`, *optional*, defaults to `None`):
            Project the LM head `chunk_size` positions at a time from the hidden states, never holding the `[N, V]`
            logits (the chunked path above). `None` computes the logits of the N positions at once (faster when
            they fit in memory).
        padding_free (`bool`, *optional*, defaults to `False`):
            Flatten the rows (`attention_mask` required) into one without padding. Same result wherever the
            attention implementation honours `position_ids` boundaries.
        logits_to_keep (`bool`, *optional*, defaults to `True`):
            Whether the model's forward takes a boolean `logits_to_keep`; `False` computes every position's logits
            (or hidden states) and selects afterwards.
        is_encoder_decoder (`bool`, *optional*, defaults to `False`):
            Encode the prompt (the start of each row) and decode the completion (`completion_mask`).
        num_virtual_tokens (`int`, *optional*, defaults to `0`):
            Tokens a PEFT prompt-tuning model prepends to every row: their positions are never kept.

    Returns:
        [`TokenLogps`]: values in the `[B, C]` layout of the scored tokens (C = L with `labels`), or, for an
        encoder-decoder model, of the decoder's completion rows.
    """
    options = {
        "temperature": temperature,
        "return_entropy": return_entropy,
        "entropy_requires_grad": entropy_requires_grad,
        "return_top1": return_top1,
    }
    if is_encoder_decoder:
        return _encoder_decoder_logps(model, batch, options)
    scored_B_L, targets_N = scored_tokens(batch)
    keep_B_L = completion_positions(scored_B_L)
    inputs = {key: value for key, value in batch.items() if key not in SCORING_KEYS}
    if padding_free:
        inputs, keep_B_L = padding_free_inputs(inputs, keep_B_L, _attn_implementation(model))
    keep = torch.nn.functional.pad(keep_B_L, (num_virtual_tokens, 0)) if num_virtual_tokens else keep_B_L
    head = linear_head(model) if chunk_size else None
    logits_N_V = None
    if head is not None:
        hidden_N_H, outputs = _head_inputs(model, inputs, keep, head, logits_to_keep)
        scores = _chunked_scores(hidden_N_H, head, targets_N, chunk_size, options)
    else:
        extra = {"logits_to_keep": keep} if logits_to_keep else {}
        outputs = model(**inputs, **extra, use_cache=False)
        logits_N_V = outputs.logits if logits_to_keep else outputs.logits[keep]
        scores = logits_scores(logits_N_V, targets_N, options)
    width = scored_B_L.shape[1] if "labels" in batch else batch["completion_mask"].shape[1]
    mask_B_C = scored_B_L[:, scored_B_L.shape[1] - width :]
    return TokenLogps(
        mask=mask_B_C,
        logits=logits_N_V,
        outputs=outputs,
        vocab_mean_logits=scores.get("vocab_mean_logits"),
        **_place(scores, mask_B_C),
    )


def _encoder_decoder_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor], options: dict) -> TokenLogps:
    """Encoder-decoder form of [`token_logps`]: each row `prompt + completion` is split back into the prompt (the
    encoder input, at the start of the row) and the completion (the decoder targets, moved to the start of their
    row)."""
    input_ids, completion_B_T = batch["input_ids"], batch["completion_mask"].bool()
    prompt_mask = batch["attention_mask"].bool() & ~completion_B_T
    prompt_width = max(int(prompt_mask.sum(dim=-1).max()), 1)
    # A stable sort on "is not completion" moves each row's completion tokens, in order, to its first columns.
    order_B_T = torch.sort((~completion_B_T).to(torch.int8), dim=1, stable=True).indices
    width = int(completion_B_T.sum(dim=-1).max())
    mask_R_C = completion_B_T.gather(1, order_B_T)[:, :width]
    labels_R_C = input_ids.gather(1, order_B_T)[:, :width]
    config = _unwrapped(model).config
    start = config.decoder_start_token_id if config.decoder_start_token_id is not None else config.pad_token_id
    # Teacher forcing: the decoder reads the start token then the completion shifted right by one.
    decoder_input_ids = torch.cat([torch.full_like(labels_R_C[:, :1], start), labels_R_C[:, :-1]], dim=1)
    decoder_input_ids = decoder_input_ids.masked_fill(~torch.cat([mask_R_C[:, :1], mask_R_C[:, :-1]], dim=1), start)
    outputs = model(
        input_ids=input_ids[:, :prompt_width],
        attention_mask=prompt_mask[:, :prompt_width].long(),
        decoder_input_ids=decoder_input_ids,
        decoder_attention_mask=mask_R_C.long(),
        use_cache=False,
    )
    logits_N_V = outputs.logits[mask_R_C]
    placed = _place(logits_scores(logits_N_V, labels_R_C[mask_R_C], options), mask_R_C)
    return TokenLogps(mask=mask_R_C, logits=logits_N_V, outputs=outputs, **placed)
