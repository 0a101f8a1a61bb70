"""Preparation of paired preference data (`prompt`?, `chosen`, `rejected`), shared by the preference trainers.

Two layouts come out of it:

- **prompt / completions** (DPO, CPO, ORPO): `prompt_ids`, `chosen_ids`, `rejected_ids`, the prompt stored once.
  The collator builds the rows `prompt + chosen` and `prompt + rejected` and marks the completion tokens.
- **whole sequences** (reward modelling): `chosen_ids`, `rejected_ids`, each the complete prompt + answer.

Accepted input, per row: standard (strings) or conversational (lists of `{"role", "content"}` messages, also the
ShareGPT `{"from", "value"}` style); explicit prompt (`prompt` column) or implicit prompt (the prompt is the common
start of `chosen` and `rejected` and is extracted); optional `tools` and `chat_template_kwargs` columns for the chat
template. Datasets that already hold the tokenised columns are only truncated.

Tokenisation keeps `prompt_ids + chosen_ids` equal to tokenising the text `prompt + chosen` whenever the tokenizer
allows it: the completion is what tokenising the concatenation adds after the prompt's tokens. Only when a token
merges across the boundary (e.g. a prompt ending with a space) are the two parts tokenised separately.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from datasets import Dataset, IterableDataset

from ..data_utils import apply_chat_template, get_dataset_column_names, is_conversational
from ..data_utils import maybe_extract_prompt as _maybe_extract_prompt
from .data_preparation import _map_kwargs, check_conversational_template, convert_to_chatml, first_example
from .input_checks import warn_unlearnable
from .model_utils import get_tokenizer


PREFERENCE_TOKEN_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
REWARD_TOKEN_COLUMNS = ("chosen_ids", "rejected_ids")
# Column names of the pre-tokenised format of trl 0.x reward modelling.
_LEGACY_REWARD_COLUMNS = {"input_ids_chosen": "chosen_ids", "input_ids_rejected": "rejected_ids"}


# ---------------------------------------------------------------------------------------------- checks
def check_preference_columns(columns: list[str], trainer_name: str) -> None:
    """Raise a clear error when a dataset is not paired preference data.

    Args:
        columns (`list[str]`):
            The dataset's column names.
        trainer_name (`str`):
            Named in the message, e.g. `"DPOTrainer"`.
    """
    if all(name in columns for name in PREFERENCE_TOKEN_COLUMNS) or all(
        name in columns for name in ("chosen", "rejected")
    ):
        return
    if all(name in columns for name in REWARD_TOKEN_COLUMNS):
        return
    missing = [name for name in ("chosen", "rejected") if name not in columns]
    hint = ""
    if "completion" in columns and "label" in columns:
        hint = " This looks like unpaired preference data (prompt, completion, label): use KTOTrainer or BCOTrainer."
    raise ValueError(
        f"{trainer_name} needs paired preference data with 'chosen' and 'rejected' columns (and optionally "
        f"'prompt'); the dataset has {sorted(columns)}, missing {missing}.{hint}"
    )


def _check_no_images(example: dict[str, Any], trainer_name: str) -> None:
    if "images" in example or "image" in example:
        raise ValueError(
            f"{trainer_name} in this version trains text-only models; the dataset has an image column. Remove the "
            "'image'/'images' column to train on the text alone."
        )


# ------------------------------------------------------------------------------------------ tokenising
def _chat_kwargs(example: dict[str, Any], tools: list | None) -> dict[str, Any]:
    kwargs = dict(example.get("chat_template_kwargs") or {})
    example_tools = example.get("tools")
    if example_tools is not None:
        kwargs["tools"] = example_tools
    elif tools is not None:
        kwargs["tools"] = tools
    return kwargs


def _completion_ids(tokenizer: Any, prompt: str, prompt_ids: list[int], completion: str, special: bool) -> list[int]:
    """Tokens that tokenising `prompt + completion` adds after `prompt_ids`, or the completion's own tokens when
    a merge across the boundary changes the prompt's tokens."""
    full_ids = list(tokenizer(text=prompt + completion, add_special_tokens=special)["input_ids"])
    if full_ids[: len(prompt_ids)] == prompt_ids:
        return full_ids[len(prompt_ids) :]
    return list(tokenizer(text=completion, add_special_tokens=False)["input_ids"])


def _with_eos(text: str, eos_token: str | None) -> str:
    return text if eos_token is None or text.endswith(eos_token) else text + eos_token


def tokenize_prompt_completions(
    example: dict[str, Any],
    processing_class: Any,
    completion_keys: tuple[str, ...],
    tools: list | None = None,
    eos_token: str | None = None,
) -> dict[str, list[int]]:
    """Tokenise one explicit-prompt example into `prompt_ids` and a `<key>_ids` for each of `completion_keys`
    (`("chosen", "rejected")` for paired data, `("completion",)` for unpaired data).

    Conversational examples are rendered with the chat template (the prompt with the generation prompt; each
    completion as what rendering prompt + completion adds), then tokenised without extra special tokens (the
    template writes them). Standard completions get `eos_token` appended when they lack it, so the model learns to
    stop.

    Args:
        example (`dict[str, Any]`):
            A row with `prompt` and the completion keys (strings, or lists of messages), optionally `tools` and
            `chat_template_kwargs`.
        processing_class (`PreTrainedTokenizerBase` or `ProcessorMixin`):
            The tokenizer (or a processor holding one).
        completion_keys (`tuple[str, ...]`):
            The completion columns.
        tools (`list` or `None`, *optional*, defaults to `None`):
            Tools for the chat template when the row has no `tools` column.
        eos_token (`str` or `None`, *optional*, defaults to `None`):
            Appended to standard completions that do not end with it; `None` appends nothing.
    """
    tokenizer = get_tokenizer(processing_class)
    texts = {key: example[key] for key in ("prompt", *completion_keys)}
    special = not is_conversational(example)
    if special:
        texts.update({key: _with_eos(texts[key], eos_token) for key in completion_keys})
    else:
        texts = apply_chat_template(texts, tokenizer, **_chat_kwargs(example, tools))
    prompt = texts["prompt"]
    prompt_ids = list(tokenizer(text=prompt, add_special_tokens=special)["input_ids"])
    completions = {
        f"{key}_ids": _completion_ids(tokenizer, prompt, prompt_ids, texts[key], special) for key in completion_keys
    }
    return {"prompt_ids": prompt_ids, **completions}


def tokenize_preference_example(
    example: dict[str, Any], processing_class: Any, tools: list | None = None, eos_token: str | None = None
) -> dict[str, list[int]]:
    """Tokenise one explicit-prompt preference example into `prompt_ids`, `chosen_ids` and `rejected_ids` (see
    [`tokenize_prompt_completions`], whose arguments this function takes)."""
    return tokenize_prompt_completions(example, processing_class, ("chosen", "rejected"), tools, eos_token)


def truncate_prompt_completions(
    example: dict[str, Any],
    completion_keys: tuple[str, ...],
    max_prompt_length: int | None,
    max_completion_length: int | None,
    truncation_mode: str = "keep_end",
) -> dict[str, list[int]]:
    """Cut the prompt to `max_prompt_length` tokens and each completion to its first `max_completion_length` tokens.

    Args:
        example (`dict[str, Any]`):
            A tokenised row (`prompt_ids` and a `<key>_ids` for each of `completion_keys`).
        completion_keys (`tuple[str, ...]`):
            The completion columns, without their `_ids` suffix.
        max_prompt_length (`int` or `None`):
            Prompt budget; `None` keeps the whole prompt.
        max_completion_length (`int` or `None`):
            Budget of each completion; `None` keeps them whole.
        truncation_mode (`str`, *optional*, defaults to `"keep_end"`):
            Which end of a long prompt to keep: `"keep_end"` (the text next to the completion) or `"keep_start"`.
    """
    prompt_ids = example["prompt_ids"]
    if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
        keep_end = truncation_mode == "keep_end"
        prompt_ids = prompt_ids[-max_prompt_length:] if keep_end else prompt_ids[:max_prompt_length]
    completions = {f"{key}_ids": example[f"{key}_ids"][:max_completion_length] for key in completion_keys}
    return {"prompt_ids": prompt_ids, **completions}


def extract_prompts(dataset: Dataset | IterableDataset, num_proc: int | None = None) -> Dataset | IterableDataset:
    """Give implicit-prompt rows an explicit `prompt` (the common start of `chosen` and `rejected`).

    Args:
        dataset (`Dataset` or `IterableDataset`):
            Preference data with or without a `prompt` column.
        num_proc (`int` or `None`, *optional*, defaults to `None`):
            Processes for `Dataset.map`.
    """
    example = first_example(dataset)
    if "prompt" in example and is_conversational({"prompt": example["prompt"]}) == is_conversational(
        {"chosen": example["chosen"]}
    ):
        return dataset
    return dataset.map(_maybe_extract_prompt, **_map_kwargs(dataset, num_proc, "Extracting prompts"))


@dataclass(frozen=True)
class TokenizeOptions:
    """How the preference preparations ([`prepare_preference_dataset`], `prepare_unpaired_dataset`) tokenise and
    cut a dataset.

    Args:
        trainer_name (`str`):
            Named in error messages.
        tools (`list` or `None`, *optional*, defaults to `None`):
            Tools for the chat template.
        eos_token (`str` or `None`, *optional*, defaults to `None`):
            Appended to standard completions.
        max_prompt_length (`int` or `None`, *optional*, defaults to `None`):
            Prompt budget (which end is kept: `truncation_mode`).
        max_completion_length (`int` or `None`, *optional*, defaults to `None`):
            Keep the first tokens of each completion.
        truncation_mode (`str`, *optional*, defaults to `"keep_end"`):
            Which end of a long prompt to keep.
        num_proc (`int` or `None`, *optional*, defaults to `None`):
            Processes for `Dataset.map`.
    """

    trainer_name: str
    tools: list | None = None
    eos_token: str | None = None
    max_prompt_length: int | None = None
    max_completion_length: int | None = None
    truncation_mode: str = "keep_end"
    num_proc: int | None = None

    @classmethod
    def from_config(cls, args: Any, processing_class: Any, trainer_name: str, **overrides: Any) -> TokenizeOptions:
        """The options a trainer's config gives (its token limits, `dataset_num_proc`, the tokenizer's EOS token),
        with `overrides` taking precedence."""
        options = dict(
            trainer_name=trainer_name,
            eos_token=get_tokenizer(processing_class).eos_token,
            max_prompt_length=args.max_prompt_length,
            max_completion_length=args.max_completion_length,
            num_proc=args.dataset_num_proc,
        )
        return cls(**{**options, **overrides})


def tokenize_and_truncate(
    dataset: Dataset | IterableDataset,
    processing_class: Any,
    completion_keys: tuple[str, ...],
    options: TokenizeOptions,
) -> Dataset | IterableDataset:
    """The tail both preference preparations share: tokenise explicit-prompt text rows (unless the dataset holds the
    token columns already; the text columns are removed, the others kept) and cut them to the options' budgets.

    Args:
        dataset (`Dataset` or `IterableDataset`):
            Rows with `prompt` and the completion columns, as text (ChatML conversations) or tokens.
        processing_class (`PreTrainedTokenizerBase` or `ProcessorMixin`):
            The tokenizer.
        completion_keys (`tuple[str, ...]`):
            The completion columns (`("chosen", "rejected")` or `("completion",)`).
        options ([`TokenizeOptions`]):
            Chat-template tools, EOS token, budgets and processes.
    """
    num_proc = options.num_proc
    columns = get_dataset_column_names(dataset)
    if not all(f"{key}_ids" in columns for key in ("prompt", *completion_keys)):
        check_conversational_template(dataset, processing_class)

        def tokenize(example: dict[str, Any]) -> dict[str, list[int]]:
            return tokenize_prompt_completions(
                example, processing_class, completion_keys, options.tools, options.eos_token
            )

        text_columns = [name for name in ("prompt", *completion_keys) if name in columns]
        dataset = dataset.map(tokenize, remove_columns=text_columns, **_map_kwargs(dataset, num_proc, "Tokenizing"))
    budgets = (options.max_prompt_length, options.max_completion_length)
    if budgets != (None, None):

        def truncate(example: dict[str, Any]) -> dict[str, list[int]]:
            return truncate_prompt_completions(example, completion_keys, *budgets, options.truncation_mode)

        dataset = dataset.map(truncate, **_map_kwargs(dataset, num_proc, "Truncating"))
    return dataset


def prepare_preference_dataset(
    dataset: Dataset | IterableDataset, processing_class: Any, options: TokenizeOptions | None = None, **fields: Any
) -> Dataset | IterableDataset:
    """Tokenise a paired preference dataset into `prompt_ids`, `chosen_ids`, `rejected_ids` and truncate them.

    Other columns (e.g. precomputed `ref_chosen_logps`) are kept; the text columns are removed.

    Args:
        dataset (`Dataset` or `IterableDataset`):
            Preference data (see the module docstring), or data already holding the tokenised columns.
        processing_class (`PreTrainedTokenizerBase` or `ProcessorMixin`):
            The tokenizer.
        options ([`TokenizeOptions`] or `None`, *optional*, defaults to `None`):
            How to tokenise and cut; `None` builds them from `fields`.
        **fields:
            The fields of [`TokenizeOptions`] (`trainer_name` is required), when `options` is `None`.
    """
    options = options or TokenizeOptions(**fields)
    columns = get_dataset_column_names(dataset)
    check_preference_columns(columns, options.trainer_name)
    _check_no_images(first_example(dataset), options.trainer_name)
    if not all(name in columns for name in PREFERENCE_TOKEN_COLUMNS):
        dataset = extract_prompts(convert_to_chatml(dataset, options.num_proc), options.num_proc)
    return tokenize_and_truncate(dataset, processing_class, ("chosen", "rejected"), options)


def prepare_on_main_process_first(
    prepare: Callable, dataset: Any, processing_class: Any, args: Any, name: str, trainer_name: str, **overrides: Any
) -> Any:
    """`prepare(dataset, processing_class, options)` ([`prepare_preference_dataset`] or `prepare_unpaired_dataset`)
    with the [`TokenizeOptions`] of the config `args` (`overrides` taking precedence), run by the main process first
    so that the others read its cache; `name` (`"train"`, `"eval"`, ...) labels the progress."""
    options = TokenizeOptions.from_config(args, processing_class, trainer_name, **overrides)
    with args.main_process_first(desc=f"preparing the {name} dataset"):
        return prepare(dataset, processing_class, options)


class PreferenceDatasetStep:
    """The `_prepare_dataset` skeleton step of the reference-free paired trainers (CPO, ORPO) and the unpaired ones
    (KTO, BCO), a mixin of their bases: `_prepare_preference_data` ([`prepare_preference_dataset`] or
    `prepare_unpaired_dataset`) with the config's [`TokenizeOptions`] (the prompt cut at its `truncation_mode` end),
    then a warning for the `_data_rows` that keep no completion token once cut to `max_length`
    (`_count_empty_rows(dataset, max_length)`)."""

    _prepare_preference_data: Callable
    _count_empty_rows: Callable
    _data_rows: str

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, name: str) -> Any:
        dataset = prepare_on_main_process_first(type(self)._prepare_preference_data, dataset, processing_class, args,
                                                name, type(self).__name__, truncation_mode=args.truncation_mode)  # fmt: skip
        limits = f"max_length={args.max_length} (max_prompt_length={args.max_prompt_length})"
        rows = f"{self._data_rows} of the {name} dataset keep no completion token once cut to {limits}"
        fix = "Set max_prompt_length below max_length, or raise max_length."
        warn_unlearnable(type(self)._count_empty_rows(dataset, args.max_length), rows, fix)
        return dataset


def count_empty_completions(dataset: Dataset, max_length: int | None, truncation_mode: str) -> int:
    """Number of rows whose chosen or rejected completion loses every token to the `max_length` cut.

    Args:
        dataset (`Dataset`):
            Tokenised preference data.
        max_length (`int` or `None`):
            Row length limit; `None` means no cut.
        truncation_mode (`str`):
            `"keep_start"` (cut the end of the row) or `"keep_end"` (cut its start).
    """
    if not isinstance(dataset, Dataset):
        return 0
    empty = 0
    for prompt, chosen, rejected in zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"]):
        for completion in (chosen, rejected):
            if not completion or (
                max_length is not None and truncation_mode == "keep_start" and len(prompt) >= max_length
            ):
                empty += 1
                break
    return empty


# ------------------------------------------------------------------------------------- reward modelling
def tokenize_reward_example(
    example: dict[str, Any], processing_class: Any, tools: list | None = None, eos_token: str | None = None
) -> dict[str, list[int]]:
    """Tokenise one preference example into whole sequences `chosen_ids` and `rejected_ids` (prompt + answer).

    With an explicit prompt the prompt is prepended to each answer; implicit-prompt rows are used as they are.
    Conversations are rendered with the chat template; standard texts get `eos_token` appended when they lack it.

    Args:
        example (`dict[str, Any]`):
            A row with `chosen`, `rejected` and optionally `prompt`, `tools`, `chat_template_kwargs`.
        processing_class (`PreTrainedTokenizerBase` or `ProcessorMixin`):
            The tokenizer.
        tools (`list` or `None`, *optional*, defaults to `None`):
            Tools for the chat template when the row has no `tools` column.
        eos_token (`str` or `None`, *optional*, defaults to `None`):
            Appended to standard sequences that do not end with it.
    """
    tokenizer = get_tokenizer(processing_class)
    prompt = example.get("prompt")
    output = {}
    for key in ("chosen", "rejected"):
        answer = example[key]
        if is_conversational({key: answer}):
            messages = (prompt or []) + answer
            rendered = tokenizer.apply_chat_template(
                messages, tokenize=True, return_dict=True, **_chat_kwargs(example, tools)
            )
            output[f"{key}_ids"] = list(rendered["input_ids"])
        else:
            text = (prompt or "") + answer
            if eos_token is not None and not text.endswith(eos_token):
                text = text + eos_token
            output[f"{key}_ids"] = list(tokenizer(text=text)["input_ids"])
    return output


def prepare_reward_dataset(
    dataset: Dataset | IterableDataset, processing_class: Any, options: TokenizeOptions, max_length: int | None = None
) -> Dataset | IterableDataset:
    """Tokenise preference data into `chosen_ids` / `rejected_ids` and drop pairs longer than `max_length`.

    Pairs are filtered rather than truncated: cutting an answer would change what is being preferred, so only the
    chat-template `tools`, the `eos_token` appended to standard sequences and `num_proc` of `options` apply. The
    legacy pre-tokenised columns `input_ids_chosen` / `input_ids_rejected` are accepted too (a `margin` column, if
    any, is kept).

    Args:
        dataset (`Dataset` or `IterableDataset`):
            Preference data.
        processing_class (`PreTrainedTokenizerBase` or `ProcessorMixin`):
            The tokenizer.
        options ([`TokenizeOptions`]):
            Named trainer, tools, EOS token and processes.
        max_length (`int` or `None`, *optional*, defaults to `None`):
            Drop pairs with a sequence longer than this; `None` keeps all.
    """
    tools, eos_token, num_proc = options.tools, options.eos_token, options.num_proc
    columns = get_dataset_column_names(dataset)
    if all(name in columns for name in _LEGACY_REWARD_COLUMNS):
        dataset = dataset.rename_columns(_LEGACY_REWARD_COLUMNS)
        legacy_masks = [name for name in ("attention_mask_chosen", "attention_mask_rejected") if name in columns]
        dataset = dataset.remove_columns(legacy_masks) if legacy_masks else dataset
        columns = get_dataset_column_names(dataset)
    check_preference_columns(columns, options.trainer_name)
    _check_no_images(first_example(dataset), options.trainer_name)
    if not all(name in columns for name in REWARD_TOKEN_COLUMNS):
        dataset = convert_to_chatml(dataset, num_proc)
        # A reward model scores whole conversations: no prompt/completion boundary to preserve.
        check_conversational_template(dataset, processing_class, require_prefix_preserving=False)

        def tokenize(example: dict[str, Any]) -> dict[str, list[int]]:
            return tokenize_reward_example(example, processing_class, tools, eos_token)

        text_columns = [name for name in ("prompt", "chosen", "rejected") if name in columns]
        dataset = dataset.map(tokenize, remove_columns=text_columns, **_map_kwargs(dataset, num_proc, "Tokenizing"))
    if max_length is not None:
        dataset = _drop_long_pairs(dataset, max_length, num_proc)
    return dataset


def _drop_long_pairs(dataset: Dataset | IterableDataset, max_length: int, num_proc: int | None):
    def fits(example: dict[str, Any]) -> bool:
        return len(example["chosen_ids"]) <= max_length and len(example["rejected_ids"]) <= max_length

    before = len(dataset) if isinstance(dataset, Dataset) else None
    dataset = dataset.filter(fits, **_map_kwargs(dataset, num_proc, f"Dropping pairs longer than {max_length}"))
    if before is not None:
        if len(dataset) == 0:
            raise ValueError(
                f"Every pair has a sequence longer than max_length={max_length}; increase max_length (pairs are "
                "dropped, not truncated)."
            )
        if len(dataset) < before:
            warnings.warn(
                f"Dropped {before - len(dataset)} of {before} pairs longer than max_length={max_length}. Increase "
                "max_length to keep them.",
                UserWarning,
                stacklevel=3,
            )
    return dataset
