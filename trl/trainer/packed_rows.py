"""Forward passes without padding for trainers whose collators right-pad rows (Reward, KTO, BCO).

A right-padded batch of R rows `[R, L]` spends `R · L` positions on `sum(lengths)` real tokens. [`packed_layout`]
moves the real tokens into a layout that computes at most `MAX_POSITIONS_PER_TOKEN` (1.1) positions per real token:

- **packed rows** (`"rows"`: sdpa, eager, flex attention): the sequences are packed first-fit-decreasing into P rows
  of width W, several per row, each with `position_ids` restarting at 0 and the rest of a row filled with padding
  that forms one more sequence; no `attention_mask`. transformers then derives a block-diagonal causal mask per row
  from the `position_ids` (`masking_utils.find_packed_sequence_indices`), so a sequence attends only to itself, and
  attention costs `P · W²`, not the `(P · W)²` of one flattened row. W starts at the longest sequence and grows by
  a quarter until `P · W <= 1.1 · sum(lengths)` (one row of every token at worst).
- **one flattened row** (`"flat"`: FlashAttention): every real token in one row `[1, N]`, with `position_ids` and
  the varlen kwargs `cu_seq_lens_q/k`, `max_length_q/k` (no filler at all).

Results come back in the padded layout ([`PackedRows.unpack`]): with causal attention, a right-padded row's real
tokens see exactly what they see in their packed sequence, at the same positions, so every per-token value is the
padded path's to fp32 rounding (checked in `tests/test_invariance_kto_reward.py`).

[`packing_mode`] says which layout a model keeps apart, or `None`, the documented fallback to the padded forward:
encoder-decoder models, PEFT prompt learning (virtual tokens are prepended to every row), MoE models that return
router logits (the load-balancing loss would count the filler and mix other rows in), attention implementations
other than the four above, model types not in `PACKING_MODEL_TYPES` (those whose transformers code builds its mask
from `position_ids`, checked against the tiny fixtures; GPT-OSS does not), batches that are not right-padded and
batches with inputs other than token ids (pixel values, token type ids). A collator's `pad_to_multiple_of` shapes the
padded batch only: packed shapes follow the lengths.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NamedTuple

import torch

from ..kernels.token_logps import TokenLogps, _attn_implementation, _unwrapped, token_logps
from .model_utils import classification_head_name


MAX_POSITIONS_PER_TOKEN = 1.1
_WIDTH_GROWTH = 1.25
# Model types whose transformers modelling code passes `position_ids` to its mask builder, so that packed sequences
# are kept apart (tests/test_invariance_kto_reward.py checks every tiny fixture; GPT-OSS builds its mask without
# them and is left out). Other model types use the padded forward.
PACKING_MODEL_TYPES = frozenset(
    {"qwen2", "qwen3", "qwen3_moe", "llama", "mistral", "gpt2", "gpt_neox", "gemma2", "phi3", "cohere2"}
)
_ROW_ATTENTION = ("sdpa", "eager", "flex_attention")
# The token-id keys a padding-free forward knows how to move; any other model input means the padded forward.
_TEXT_KEYS = frozenset({"input_ids", "attention_mask", "completion_mask"})


def packing_mode(model: torch.nn.Module, batch_keys: Iterable[str] = ("input_ids", "attention_mask")) -> str | None:
    """`"rows"` (packed rows), `"flat"` (one flattened row) or `None` (padded forward) for this model and batch.

    Args:
        model (`torch.nn.Module`):
            The model, possibly wrapped (DDP, PEFT).
        batch_keys (`Iterable[str]`, *optional*):
            The model-input keys of the batch; any key other than `input_ids`, `attention_mask`, `completion_mask`
            means the padded forward.
    """
    if not set(batch_keys) <= _TEXT_KEYS:
        return None
    peft_config = getattr(getattr(model, "module", model), "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
        return None
    config = getattr(_unwrapped(model), "config", None)
    if (
        config is None
        or getattr(config, "is_encoder_decoder", False)
        or getattr(config, "output_router_logits", False)
    ):
        return None
    if getattr(config, "model_type", None) not in PACKING_MODEL_TYPES:
        return None
    attention = _attn_implementation(model)
    if attention.startswith("flash"):
        return "flat"
    return "rows" if attention in _ROW_ATTENTION else None


def is_right_padded(attention_mask: torch.Tensor) -> bool:
    """Whether every row of `attention_mask` `[R, L]` is ones then zeros (at least one real token)."""
    lengths_R = attention_mask.sum(dim=-1)
    expected = torch.arange(attention_mask.shape[1], device=attention_mask.device) < lengths_R[:, None]
    return bool((lengths_R > 0).all()) and torch.equal(attention_mask.bool(), expected)


def _first_fit_decreasing(lengths: list[int], width: int) -> list[list[int]]:
    """Rows of sequence indices: each sequence, longest first, goes to the first row with room for it."""
    rows, free = [], []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        target = next((r for r, room in enumerate(free) if room >= lengths[index]), None)
        if target is None:
            rows.append([])
            free.append(width)
            target = len(rows) - 1
        rows[target].append(index)
        free[target] -= lengths[index]
    return rows


def _packed_rows(lengths: list[int]) -> list[list[int]]:
    """The fewest-positions rows of the first width (from the longest sequence, growing by a quarter) whose rows
    hold at most `MAX_POSITIONS_PER_TOKEN` positions per real token."""
    total, width = sum(lengths), max(lengths)
    while True:
        rows = _first_fit_decreasing(lengths, width)
        used = max(sum(lengths[i] for i in row) for row in rows)
        if len(rows) * used <= MAX_POSITIONS_PER_TOKEN * total or len(rows) == 1:
            return rows
        width = min(total, max(width + 1, math.ceil(width * _WIDTH_GROWTH)))


class PackedRows(NamedTuple):
    """Where the real tokens of a right-padded batch `[R, L]` sit in a padding-free layout `[P, W]`.

    Args:
        inputs (`dict[str, torch.Tensor]`):
            The model inputs of the layout: `input_ids` and `position_ids` `[P, W]` (plus the varlen kwargs of the
            flattened row); no `attention_mask`.
        real_R_L (`torch.Tensor` of shape `[R, L]`, bool):
            The real tokens of the padded batch.
        slot_N (`torch.Tensor` of shape `[N]`):
            The flat index into `[P · W]` of each real token, in row-major order of `real_R_L`.
    """

    inputs: dict[str, torch.Tensor]
    real_R_L: torch.Tensor
    slot_N: torch.Tensor

    @property
    def num_positions(self) -> int:
        """Positions the model computes: `P · W`."""
        return self.inputs["input_ids"].numel()

    def pack(self, values_R_L: torch.Tensor, fill: int | float = 0) -> torch.Tensor:
        """Values of the padded layout `[R, L]` in the packed layout `[P, W]` (`fill` on the filler)."""
        shape = self.inputs["input_ids"].shape
        packed = values_R_L.new_full((shape.numel(),), fill)
        packed[self.slot_N] = values_R_L[self.real_R_L]
        return packed.view(shape)

    def unpack(self, values_P_W: torch.Tensor, fill: int | float = 0) -> torch.Tensor:
        """Values of the packed layout `[P, W, ...]` back in the padded layout `[R, L, ...]` (`fill` on padding);
        differentiable."""
        rest = values_P_W.shape[2:]
        values_N = values_P_W.reshape(-1, *rest)[self.slot_N]
        padded = values_N.new_full((*self.real_R_L.shape, *rest), fill)
        return padded.index_put((*self.real_R_L.nonzero(as_tuple=True),), values_N)

    def slots(self, rows_K: torch.Tensor, columns_K: torch.Tensor) -> torch.Tensor:
        """The flat index into `[P · W]` of the padded positions `(rows_K, columns_K)` (-1 where not a real token)."""
        slot_R_L = torch.full(self.real_R_L.shape, -1, dtype=torch.long, device=self.slot_N.device)
        slot_R_L[self.real_R_L] = self.slot_N
        return slot_R_L[rows_K, columns_K]


def packed_layout(input_ids: torch.Tensor, attention_mask: torch.Tensor, mode: str, pad_token_id: int) -> PackedRows:
    """The padding-free layout (`mode` `"rows"` or `"flat"`, see the module docstring) of a right-padded batch.

    Args:
        input_ids (`torch.Tensor` of shape `[R, L]`):
            Token ids.
        attention_mask (`torch.Tensor` of shape `[R, L]`):
            1 on the real tokens, which form a prefix of every row ([`is_right_padded`]).
        mode (`str`):
            `"rows"` or `"flat"`, from [`packing_mode`].
        pad_token_id (`int`):
            Fills the end of packed rows.
    """
    real_R_L = attention_mask.bool()
    lengths = real_R_L.sum(dim=-1).tolist()
    rows = [list(range(len(lengths)))] if mode == "flat" else _packed_rows(lengths)
    width = max(sum(lengths[i] for i in row) for row in rows)
    starts = [0] * len(lengths)
    position_ids = []
    for r, row in enumerate(rows):
        offset = r * width
        for index in row:
            starts[index] = offset
            offset += lengths[index]
        used = [lengths[i] for i in row] + ([width * (r + 1) - offset] if offset < width * (r + 1) else [])
        position_ids.append(torch.cat([torch.arange(n) for n in used]))
    device = input_ids.device
    # Real token t of padded row i sits at slot starts[i] + t.
    columns_R_L = torch.arange(real_R_L.shape[1], device=device).expand_as(real_R_L)
    slot_N = (torch.tensor(starts, device=device)[:, None] + columns_R_L)[real_R_L]
    packed_ids = input_ids.new_full((len(rows) * width,), pad_token_id)
    packed_ids[slot_N] = input_ids[real_R_L]
    inputs = {
        "input_ids": packed_ids.view(len(rows), width),
        "position_ids": torch.stack(position_ids).to(device),
    }
    if mode == "flat":
        cu_seq_lens = torch.tensor([0, *lengths], device=device).cumsum(0).to(torch.int32)
        inputs.update(
            cu_seq_lens_q=cu_seq_lens, cu_seq_lens_k=cu_seq_lens, max_length_q=max(lengths), max_length_k=max(lengths)
        )
    return PackedRows(inputs, real_R_L, slot_N)


def packed_token_logps(
    model: torch.nn.Module, rows: dict[str, torch.Tensor], mode: str, pad_token_id: int, **options: Any
) -> TokenLogps:
    """[`~trl.kernels.token_logps`] of the completion tokens of right-padded rows, computed in the padding-free
    layout `mode` and returned in the padded one.

    `logits` is `None` in the result (the kept logits are in packed order); `mean_logits()` is in row-major order of
    the padded `mask`, as on the padded path.

    Args:
        model (`torch.nn.Module`):
            The causal LM (possibly wrapped).
        rows (`dict[str, torch.Tensor]`):
            `input_ids`, `attention_mask` and `completion_mask` of shape `[R, L]`, right-padded.
        mode (`str`):
            `"rows"` or `"flat"` ([`packing_mode`]).
        pad_token_id (`int`):
            Fills the end of packed rows.
        **options:
            Passed to `token_logps` (`logits_to_keep`, `chunk_size`, ...).
    """
    layout = packed_layout(rows["input_ids"], rows["attention_mask"], mode, pad_token_id)
    completion_R_L = rows["completion_mask"].clone()
    completion_R_L[:, 0] = 0  # nothing predicts a sequence's first token (in a packed row, the previous sequence)
    token = token_logps(model, {**layout.inputs, "completion_mask": layout.pack(completion_R_L)}, **options)
    mask_R_L = layout.unpack(token.mask, False)
    # Each scored token, in padded row-major order, as an index into the packed row-major order of `token.mask`.
    packed_order_N = token.mask.reshape(-1).nonzero().squeeze(1)
    order_N = torch.searchsorted(packed_order_N, layout.slots(*mask_R_L.nonzero(as_tuple=True)))
    return TokenLogps(
        logps=layout.unpack(token.logps),
        mask=mask_R_L,
        logits=None,
        outputs=token.outputs,
        vocab_mean_logits=token.mean_logits()[order_N],
    )


def sequence_classification_logits(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, padding_free: bool = True
) -> torch.Tensor:
    """The logits `[R, num_labels]` a sequence-classification model gives right-padded rows (read, as transformers
    reads them, at the rightmost token that is not the model's pad token), from a padding-free forward where
    [`packing_mode`] allows one, else (or with `padding_free=False`) from the padded forward.

    Args:
        model (`torch.nn.Module`):
            The sequence-classification model (possibly wrapped).
        input_ids (`torch.Tensor` of shape `[R, L]`):
            Token ids.
        attention_mask (`torch.Tensor` of shape `[R, L]`):
            1 on real tokens.
        padding_free (`bool`, *optional*, defaults to `True`):
            `False` always runs the padded forward.
    """
    base = _unwrapped(model)
    pad_token_id = base.config.get_text_config().pad_token_id
    head_name = classification_head_name(base)
    mode = packing_mode(model) if padding_free and pad_token_id is not None and head_name else None
    if mode is None or not is_right_padded(attention_mask):
        return model(input_ids=input_ids, attention_mask=attention_mask).logits
    layout = packed_layout(input_ids, attention_mask, mode, pad_token_id)
    columns_L = torch.arange(input_ids.shape[1], device=input_ids.device, dtype=torch.int32)
    last_R = (columns_L * (input_ids != pad_token_id).int()).argmax(-1)  # transformers' choice of token
    slots_R = layout.slots(torch.arange(input_ids.shape[0], device=input_ids.device), last_R)
    if bool((slots_R < 0).any()):  # a row read at a padding position: only the padded forward reproduces that
        return model(input_ids=input_ids, attention_mask=attention_mask).logits
    captured = []
    handle = getattr(base, head_name).register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        model(**layout.inputs, use_cache=False)
    finally:
        handle.remove()
    head_P_W_C = captured[-1]
    return head_P_W_C.reshape(-1, head_P_W_C.shape[-1])[slots_R]
