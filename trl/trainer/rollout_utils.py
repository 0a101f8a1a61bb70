"""Building blocks of the rollout path: phase timing, per-process random streams, the repeat sampler, prompt and
completion handling, and the generation buffer. `trl.trainer.rollout.OnlineTrainer` puts them together."""

from __future__ import annotations

import contextlib
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..data_utils import is_conversational, maybe_apply_chat_template
from .utils import (
    RepeatSampler,
)


ROLLOUT_PHASES = ("generate", "score", "reference", "train", "weight_sync")


# ----------------------------------------------------------------------------------------------------- timing
class PhaseTimer:
    """Wall-clock seconds spent in each named phase since the last [`~PhaseTimer.pop`].

    Example:
        `with timer("generate"): ...` adds the block's duration to `timer.seconds["generate"]`.
    """

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start

    def total(self) -> float:
        """Seconds recorded in every phase together."""
        return sum(self.seconds.values())

    def pop(self) -> dict[str, float]:
        """The recorded seconds of every rollout phase (0 for phases that did not run), then reset."""
        seconds = {phase: self.seconds.get(phase, 0.0) for phase in ROLLOUT_PHASES}
        self.seconds.clear()
        return seconds


# --------------------------------------------------------------------------------------------- random streams
class GenerationRNG:
    """A random stream reserved for sampling completions, separate from the training one.

    Seeded from `(seed, process_index)`: two processes holding prompts of the same group draw different
    completions, and dropout or data shuffling never shift what is sampled. Its state is saved in checkpoints.

    Args:
        seed (`int`):
            The run's seed.
        process_index (`int`):
            This process's rank.
        device (`torch.device`):
            The device generation runs on (its CUDA random state is forked too).
    """

    def __init__(self, seed: int, process_index: int, device: torch.device):
        self.device = torch.device(device)
        with torch.random.fork_rng(devices=self._devices()):
            torch.manual_seed(seed * 1_000_003 + process_index)
            if self.device.type == "cuda":
                torch.cuda.manual_seed(seed * 1_000_003 + process_index)
            self._state = self._capture()

    def _devices(self) -> list:
        return [self.device] if self.device.type == "cuda" else []

    def _capture(self) -> dict[str, torch.Tensor]:
        state = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _restore(self, state: dict[str, torch.Tensor]) -> None:
        torch.set_rng_state(state["cpu"])
        if "cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], self.device)

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        """Run the block on this stream; the global random state is left as it was."""
        with torch.random.fork_rng(devices=self._devices()):
            self._restore(self._state)
            yield
            self._state = self._capture()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {key: value.clone() for key, value in self._state.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._state = {key: value.clone() for key, value in state.items()}


class RolloutSampler(RepeatSampler):
    """[`RepeatSampler`] whose shuffling depends only on `(seed, epoch)`, so a resumed run replays the same order.

    Args:
        data_source (`Sized`):
            The dataset.
        mini_repeat_count (`int`):
            Consecutive repeats of each prompt (`num_generations`).
        batch_size (`int`, *optional*, defaults to `1`):
            Distinct prompts per generation batch.
        repeat_count (`int`, *optional*, defaults to `1`):
            Repeats of each generation batch (`steps_per_generation × num_iterations`).
        shuffle (`bool`, *optional*, defaults to `True`):
            Shuffle the prompts, with a new order every epoch.
        seed (`int` or `None`, *optional*, defaults to `None`):
            Seed of the order (`None`: 0).
    """

    epoch = 0  # set by `set_epoch` (Trainer calls it at the start of every epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            self.generator.manual_seed((self.seed or 0) + self.epoch)
        return super().__iter__()


# --------------------------------------------------------------------------------------- trainer arguments
def apply_deprecated_kwargs(
    name: str, given: dict[str, Any], deprecated: dict[str, Any], renames: dict[str, str | None]
) -> None:
    """Move the values of trl <= 0.21 keyword arguments (`deprecated`) of the trainer `name` to their new names in
    `given`, each with a `FutureWarning`; `renames` maps old name -> new name (`None`: ignored). An unknown name is
    a `TypeError`; an old and a new name given together are a `ValueError`."""
    unknown = sorted(set(deprecated) - set(renames))
    if unknown:
        raise TypeError(f"{name} got unexpected keyword arguments {unknown}.")
    for old, value in deprecated.items():
        new = renames[old]
        if new is None:
            warnings.warn(
                f"`{old}` is no longer used by {name} and is ignored: the reference model is a frozen copy of the "
                "policy (or the base model under PEFT) and prompts are collated internally. Remove it.",
                FutureWarning,
                stacklevel=3,
            )
            continue
        warnings.warn(f"`{old}` is deprecated; use `{new}` instead.", FutureWarning, stacklevel=3)
        if given[new] is not None:
            raise ValueError(f"Both `{old}` and `{new}` were given; pass only `{new}`.")
        given[new] = value


# ---------------------------------------------------------------------------------- prompts and completions
def render_prompts(rows: list[dict[str, Any]], processing_class: Any, **chat_template_kwargs: Any) -> list[str]:
    """The text of each row's `prompt`: conversational prompts through the chat template (with the generation
    prompt, and the row's `tools` / `chat_template_kwargs` when it has them), standard ones unchanged.

    Args:
        rows (`list[dict[str, Any]]`):
            Dataset rows with a `prompt` column.
        processing_class (`PreTrainedTokenizerBase` or `ProcessorMixin`):
            Provides the chat template.
        **chat_template_kwargs:
            Extra chat-template arguments (`chat_template_kwargs` of the config).
    """
    texts = []
    for row in rows:
        example = {"prompt": row["prompt"]}
        for key in ("tools", "chat_template_kwargs"):
            if row.get(key) is not None:
                example[key] = row[key]
        texts.append(maybe_apply_chat_template(example, processing_class, **chat_template_kwargs)["prompt"])
    return texts


def tokenize_prompts(texts: list[str], tokenizer: Any, max_prompt_length: int | None = None) -> list[list[int]]:
    """Token ids of rendered prompts, without added special tokens (the chat template writes them), keeping the
    last `max_prompt_length` tokens when set."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    if max_prompt_length is not None:
        ids = [row[-max_prompt_length:] for row in ids]
    return [list(row) for row in ids]


def decode_completions(
    prompts: list[Any], completion_ids: list[list[int]], tokenizer: Any
) -> list[str | list[dict[str, str]]]:
    """Completions in the prompts' format: strings for standard prompts, `[{"role": "assistant", "content": ...}]`
    for conversational ones. A conversational prompt that ends with an assistant message was continued, so that
    message's content starts the completion."""
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    completions = []
    for prompt, text in zip(prompts, texts, strict=True):
        if is_conversational({"prompt": prompt}):
            prefix = prompt[-1]["content"] if prompt[-1]["role"] == "assistant" else ""
            completions.append([{"role": "assistant", "content": prefix + text}])
        else:
            completions.append(text)
    return completions


def pad_rows(
    rows: Sequence[Sequence[float]], padding_value: float, side: str, dtype: torch.dtype, device: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad variable-length rows into `(values_B_L, mask_B_L)`, the values on the `side` opposite the padding.

    Example:
        `pad_rows([[1, 2], [3]], 0, "right", torch.long, "cpu")` gives `([[1, 2], [3, 0]], [[1, 1], [1, 0]])`.
    """
    width = max((len(row) for row in rows), default=0)
    values = torch.full((len(rows), width), padding_value, dtype=dtype)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if not len(row):
            continue
        columns = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
        values[i, columns] = torch.as_tensor(list(row), dtype=dtype)
        mask[i, columns] = 1
    return values.to(device), mask.to(device)


def used_columns(prompt_mask_B_P: torch.Tensor, completion_mask_B_C: torch.Tensor) -> tuple[int, int]:
    """`(first, width)`: the first prompt column and the number of completion columns some row uses; the columns
    [`policy_inputs`] keeps (the others are padding in every row)."""
    prompt_used = prompt_mask_B_P.bool().any(dim=0).nonzero()
    first = int(prompt_used.min()) if prompt_used.numel() else prompt_mask_B_P.shape[1]
    completion_used = completion_mask_B_C.bool().any(dim=0).nonzero()
    width = int(completion_used.max()) + 1 if completion_used.numel() else 0
    return first, width


def policy_inputs(
    prompt_ids_B_P: torch.Tensor,
    prompt_mask_B_P: torch.Tensor,
    completion_ids_B_C: torch.Tensor,
    completion_mask_B_C: torch.Tensor,
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """Model inputs that score the completions: `[left-padded prompt | right-padded completion]` rows with position
    ids counted over real tokens (as `generate` counts them), and `logits_to_keep_B_L`, the positions whose next token
    is a completion token. Columns that are padding in every row are dropped first.

    Returns:
        `dict[str, torch.Tensor]`: `input_ids`, `attention_mask`, `position_ids`, `logits_to_keep_B_L` (bool), and
        the trimmed `completion_ids` / `completion_mask` (width `C'`); logits taken at `logits_to_keep_B_L` come in
        the order of `completion_ids[completion_mask]`.
    """
    first, width = used_columns(prompt_mask_B_P, completion_mask_B_C)
    prompt_ids, prompt_mask = prompt_ids_B_P[:, first:], prompt_mask_B_P[:, first:]
    completion_ids, completion_mask = completion_ids_B_C[:, :width], completion_mask_B_C[:, :width]
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    if pad_to_multiple_of:
        extra = -input_ids.shape[1] % pad_to_multiple_of
        input_ids = torch.nn.functional.pad(input_ids, (0, extra), value=0)
        attention_mask = torch.nn.functional.pad(attention_mask, (0, extra), value=0)
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    keep_B_L = torch.zeros_like(attention_mask, dtype=torch.bool)
    prompt_length = prompt_ids.shape[1]
    keep_B_L[:, prompt_length - 1 : prompt_length - 1 + width] = completion_mask.bool()
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "logits_to_keep_B_L": keep_B_L,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
    }


# ----------------------------------------------------------------------------------------- generation buffer
class GenerationBuffer:
    """The micro-batches of the current generation batch, served to the next training steps.

    Attributes:
        slices (`list[dict[str, torch.Tensor]]`):
            `steps_per_generation` micro-batches of this process.
        tokens (`list[float]`):
            Completion tokens of each micro-batch summed over every process (normalisers of token-mean losses).
    """

    def __init__(self):
        self.slices: list[dict[str, torch.Tensor]] = []
        self.tokens: list[float] = []

    def fill(self, slices: list[dict[str, torch.Tensor]], tokens: list[float]) -> None:
        self.slices, self.tokens = slices, tokens

    def __bool__(self) -> bool:
        return bool(self.slices)

    def normaliser(self, position: int, cycle: int, gradient_accumulation_steps: int) -> float:
        """Completion tokens of the whole optimizer step that micro-step `position` of the cycle belongs to.

        Exact when the cycle (`steps_per_generation × num_iterations` micro-steps) is a whole number of optimizer
        steps; otherwise the later generation batches of the step are not known yet, and the step's count is
        estimated from this cycle's mean tokens per micro-step.
        """
        per_step = [self.tokens[k % len(self.tokens)] for k in range(cycle)]
        if cycle % gradient_accumulation_steps == 0:
            start = position - position % gradient_accumulation_steps
            return float(sum(per_step[start : start + gradient_accumulation_steps]))
        return gradient_accumulation_steps * sum(per_step) / cycle

    def state_dict(self) -> dict[str, Any]:
        slices = [{key: value.detach().cpu() for key, value in part.items()} for part in self.slices]
        return {"slices": slices, "tokens": list(self.tokens)}

    def load_state_dict(self, state: dict[str, Any], device: Any) -> None:
        self.slices = [{key: value.to(device) for key, value in part.items()} for part in state["slices"]]
        self.tokens = list(state["tokens"])
