"""Copying a chat template and its special tokens onto another tokenizer and model ([`clone_chat_template`]), and
the deprecated [`setup_chat_format`]."""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

from ._common import CHAT_TEMPLATES_DIR


if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def _resize_embeddings(model: PreTrainedModel, num_tokens: int, multiple_of: int | None) -> None:
    # Grow only: shrinking would drop rows that already-trained tokens may use.
    current = model.get_input_embeddings().weight.shape[0]
    target = max(current, num_tokens)
    if multiple_of:
        target = math.ceil(target / multiple_of) * multiple_of
    if target != current:
        model.resize_token_embeddings(target)


def _set_model_token_ids(model: PreTrainedModel, **token_ids: int | None) -> None:
    for name, value in token_ids.items():
        setattr(model.config, name, value)
        if getattr(model, "generation_config", None) is not None:
            setattr(model.generation_config, name, value)


def clone_chat_template(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    source_tokenizer_path: str,
    resize_to_multiple_of: int | None = 64,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, list[int]]:
    """Copy the chat template and special tokens of another tokenizer onto `tokenizer`, and fit the model to it.

    The source's added tokens missing from `tokenizer` are added (keeping their special flag), the source's EOS
    token becomes the EOS token of the tokenizer, model config and generation config, and the input embeddings are
    grown to cover the new vocabulary, rounded up to a multiple of `resize_to_multiple_of`.

    Args:
        model (`PreTrainedModel`):
            The model to adapt.
        tokenizer (`PreTrainedTokenizerBase`):
            The tokenizer to adapt (modified in place).
        source_tokenizer_path (`str`):
            Local path (or Hub id) of the tokenizer whose template is copied.
        resize_to_multiple_of (`int` or `None`, *optional*, defaults to `64`):
            Round the embedding size up to this multiple; `None` resizes to the exact vocabulary size.

    Returns:
        `tuple[PreTrainedModel, PreTrainedTokenizerBase, list[int]]`: the model, the tokenizer and the ids of the
        tokens that were added.
    """
    from transformers import AutoTokenizer

    source = AutoTokenizer.from_pretrained(source_tokenizer_path)
    if source.chat_template is None:
        raise ValueError(
            f"The tokenizer at {source_tokenizer_path!r} has no chat template to copy; point `chat_template_path` "
            "to a tokenizer with one, or to a .jinja file."
        )
    tokenizer.chat_template = source.chat_template

    vocabulary = tokenizer.get_vocab()
    missing = [token for _, token in sorted(source.added_tokens_decoder.items()) if token.content not in vocabulary]
    special = [token.content for token in missing if token.special]
    regular = [token.content for token in missing if not token.special]
    if special:
        tokenizer.add_tokens(special, special_tokens=True)
    if regular:
        tokenizer.add_tokens(regular)
    added_ids = tokenizer.convert_tokens_to_ids([token.content for token in missing])

    if source.eos_token is not None:
        tokenizer.eos_token = source.eos_token
        _set_model_token_ids(model, eos_token_id=tokenizer.eos_token_id)
    _resize_embeddings(model, len(tokenizer), resize_to_multiple_of)
    return model, tokenizer, list(added_ids)


def setup_chat_format(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    format: str | None = "chatml",
    resize_to_multiple_of: int | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Give a model without a chat template the ChatML format (deprecated: use [`clone_chat_template`]).

    Adds `<|im_start|>` (BOS) and `<|im_end|>` (EOS and padding) as special tokens, sets the ChatML training
    template (with `{% generation %}` markers), updates the model's token ids and grows its embeddings.

    Args:
        model (`PreTrainedModel`):
            The model.
        tokenizer (`PreTrainedTokenizerBase`):
            A tokenizer without a chat template (modified in place).
        format (`str` or `None`, *optional*, defaults to `"chatml"`):
            The format; only `"chatml"` exists.
        resize_to_multiple_of (`int` or `None`, *optional*, defaults to `None`):
            Round the embedding size up to this multiple.

    Returns:
        `tuple[PreTrainedModel, PreTrainedTokenizerBase]`: the model and the tokenizer.
    """
    warnings.warn(
        "setup_chat_format is deprecated and will be removed; use clone_chat_template(model, tokenizer, "
        "source_tokenizer_path) or SFTConfig(chat_template_path=...) instead.",
        FutureWarning,
        stacklevel=2,
    )
    if tokenizer.chat_template is not None:
        raise ValueError(
            "The tokenizer already has a chat template; setup_chat_format would add a second format. Keep the "
            "existing template, or set `tokenizer.chat_template = None` first (or use clone_chat_template)."
        )
    if format != "chatml":
        raise ValueError(f"Unsupported format {format!r}; only 'chatml' is available.")
    tokenizer.add_special_tokens(
        {
            "bos_token": "<|im_start|>",
            "eos_token": "<|im_end|>",
            "pad_token": "<|im_end|>",
            "extra_special_tokens": ["<|im_start|>", "<|im_end|>"],
        },
        replace_extra_special_tokens=False,
    )
    tokenizer.chat_template = (CHAT_TEMPLATES_DIR / "chatml_training.jinja").read_text(encoding="utf-8")
    _resize_embeddings(model, len(tokenizer), resize_to_multiple_of)
    _set_model_token_ids(
        model,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model, tokenizer
