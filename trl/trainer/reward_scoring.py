"""Reward scoring for online trainers: reward functions (sync or async, `None` meaning "not applicable") and reward
models, each scored on the completions and gathered across processes."""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from ..data_utils import is_conversational
from ..models.utils import prepare_ref_model
from .model_utils import (
    get_tokenizer,
    resolve_model_init_kwargs,
)
from .utils import (
    get_callable_name,
    is_async_callable,
)


RewardFunc = str | PreTrainedModel | Callable[..., list[float | None]]


# -------------------------------------------------------------------------------------------------- rewards
def reward_column(values: Any, length: int, name: str) -> torch.Tensor:
    """The rewards one function returned, as a float32 column with NaN for `None`, after checking them.

    Args:
        values (`Any`):
            What the reward function returned: one number (or `None`) per completion.
        length (`int`):
            The number of completions.
        name (`str`):
            The function's name, for the error messages.
    """
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__len__"):
        raise TypeError(
            f"Reward function {name!r} returned {values!r} ({type(values).__name__}); it must return a list with one "
            "float (or None) per completion, e.g. `return [score(c) for c in completions]`."
        )
    values = values.tolist() if hasattr(values, "tolist") else list(values)
    if len(values) != length:
        raise ValueError(
            f"Reward function {name!r} returned {len(values)} values for {length} completions: return exactly one "
            "float (or None) per completion."
        )
    column = []
    for index, value in enumerate(values):
        if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
            value = value.item()  # numpy / torch scalars
        if value is not None and not isinstance(value, numbers.Real):
            raise TypeError(
                f"Reward function {name!r} returned {value!r} ({type(value).__name__}) for completion {index}; "
                "rewards must be numbers (or None where the function does not apply). Convert it with float()."
            )
        # +-inf would make the group's mean and std inf/nan, zeroing every advantage of the group.
        if value is not None and math.isinf(value):
            raise ValueError(
                f"Reward function {name!r} returned {value} for completion {index}; rewards must be finite. Clip "
                "the reward (e.g. to [-10, 10]), or return None where the function does not apply."
            )
        column.append(float("nan") if value is None else float(value))
    return torch.tensor(column, dtype=torch.float32)


def _run_async(coroutines: list) -> list:
    """Run coroutines concurrently to completion, also from inside a running event loop (e.g. a notebook)."""

    async def gather():
        return await asyncio.gather(*coroutines)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(gather())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, gather()).result()


class RewardScorer:
    """Scores completions with reward functions and reward models, one column per function.

    - A callable is called with keyword arguments only: `prompts`, `completions`, `completion_ids`,
      `trainer_state`, `log_extra`, `log_metric` and every dataset column except `prompt` / `completion`. It returns
      one float per completion, or `None` where it does not apply (stored as NaN). `async def` functions run
      concurrently with each other.
    - A reward model (an id / path, loaded with `AutoModelForSequenceClassification(num_labels=1)`, or an instance)
      scores `prompt + completion` (conversations rendered with its own tokenizer's chat template): `logits[:, 0]`.

    Args:
        reward_funcs (`RewardFunc` or `list[RewardFunc]`):
            The reward functions and models.
        reward_processing_classes (`PreTrainedTokenizerBase`, `list` or `None`, *optional*, defaults to `None`):
            Tokenizers of the reward models, aligned with `reward_funcs` (`None` entries load the model's own);
            entries for callables are kept as passed (unused).
        reward_weights (`list[float]` or `None`, *optional*, defaults to `None`):
            Weight of each function; `None` weighs them all 1.
        model_init_kwargs (`dict` or `None`, *optional*, defaults to `None`):
            `from_pretrained` arguments for reward models given as strings.
    """

    def __init__(
        self,
        reward_funcs: RewardFunc | list[RewardFunc],
        reward_processing_classes: Any = None,
        reward_weights: list[float] | None = None,
        model_init_kwargs: dict | None = None,
    ):
        funcs = list(reward_funcs) if isinstance(reward_funcs, list | tuple) else [reward_funcs]
        if not funcs:
            raise ValueError("Pass at least one reward function or reward model in reward_funcs.")
        if reward_processing_classes is None:
            reward_processing_classes = [None] * len(funcs)
        elif not isinstance(reward_processing_classes, list | tuple):
            reward_processing_classes = [reward_processing_classes]
        if len(reward_processing_classes) != len(funcs):
            raise ValueError(
                f"Got {len(reward_processing_classes)} reward_processing_classes for {len(funcs)} reward functions: "
                "pass one per reward function (None for callables and for models that use their own tokenizer)."
            )
        if reward_weights is not None and len(reward_weights) != len(funcs):
            raise ValueError(
                f"Got {len(reward_weights)} reward_weights for {len(funcs)} reward functions: pass one weight per "
                "reward function, in the same order."
            )
        self.funcs = [self._load(func, model_init_kwargs) for func in funcs]
        self.processing_classes = [
            self._reward_tokenizer(func, cls) if isinstance(func, torch.nn.Module) else cls
            for func, cls in zip(self.funcs, reward_processing_classes, strict=True)
        ]
        self.names = [self._name(func) for func in self.funcs]
        self.weights = torch.tensor(reward_weights if reward_weights is not None else [1.0] * len(funcs))

    @staticmethod
    def _load(func: RewardFunc, model_init_kwargs: dict | None) -> Any:
        if isinstance(func, str):
            kwargs = resolve_model_init_kwargs(model_init_kwargs)
            kwargs.pop("use_cache", None)
            return AutoModelForSequenceClassification.from_pretrained(func, num_labels=1, **kwargs).eval()
        if isinstance(func, torch.nn.Module):
            return func.eval()
        if not callable(func):
            raise ValueError(f"A reward function must be a callable, a model or a model id; got {type(func)}.")
        return func

    @staticmethod
    def _reward_tokenizer(model: torch.nn.Module, processing_class: Any) -> Any:
        if processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(model.config._name_or_path)
        tokenizer = get_tokenizer(processing_class)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        # The classifier reads the score at the last non-pad token, so it must know the pad id.
        model.config.pad_token_id = tokenizer.pad_token_id
        return processing_class

    @staticmethod
    def _name(func: Any) -> str:
        if isinstance(func, torch.nn.Module):
            return str(func.config._name_or_path).rstrip("/").split("/")[-1]
        return get_callable_name(func)

    @property
    def models(self) -> list[torch.nn.Module]:
        return [func for func in self.funcs if isinstance(func, torch.nn.Module)]

    def prepare(self, accelerator: Any) -> None:
        """Place the reward models for the accelerator (device, DeepSpeed or FSDP), in eval mode."""
        self.funcs = [
            prepare_ref_model(func, accelerator) if isinstance(func, torch.nn.Module) else func for func in self.funcs
        ]

    def score(
        self,
        prompts: list[Any],
        completions: list[Any],
        completion_ids: list[list[int]],
        columns: dict[str, list[Any]],
        device: Any = "cpu",
        **context: Any,
    ) -> torch.Tensor:
        """Rewards `[B, F]` of the completions under every function, NaN where a function returned `None`.

        Args:
            prompts (`list`):
                One prompt per completion (strings or message lists).
            completions (`list`):
                The completions, in the prompts' format.
            completion_ids (`list[list[int]]`):
                Their token ids.
            columns (`dict[str, list]`):
                The other dataset columns, one value per completion.
            device (`torch.device` or `str`, *optional*, defaults to `"cpu"`):
                Device of the returned tensor.
            **context:
                More keyword arguments for the callables (`trainer_state`, `log_extra`, `log_metric`).
        """
        kwargs = {"prompts": prompts, "completions": completions, "completion_ids": completion_ids, **columns}
        kwargs.update(context)
        rewards_B_F = torch.full((len(completions), len(self.funcs)), float("nan"), dtype=torch.float32)
        pending = [(i, func(**kwargs)) for i, func in enumerate(self.funcs) if is_async_callable(func)]
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            # The coroutines run on a worker thread while synchronous functions and models run here.
            async_results = pool.submit(_run_async, [coro for _, coro in pending]) if pending else None
            for i, func in enumerate(self.funcs):
                if isinstance(func, torch.nn.Module):
                    rewards_B_F[:, i] = self._model_scores(func, self.processing_classes[i], prompts, completions)
                elif not is_async_callable(func):
                    rewards_B_F[:, i] = self._as_column(func(**kwargs), len(completions), self.names[i])
            if async_results is not None:
                for (i, _), values in zip(pending, async_results.result(), strict=True):
                    rewards_B_F[:, i] = self._as_column(values, len(completions), self.names[i])
        return rewards_B_F.to(device)

    @staticmethod
    def _as_column(values: Any, length: int, name: str) -> torch.Tensor:
        return reward_column(values, length, name)

    @torch.no_grad()
    def _model_scores(self, model: Any, processing_class: Any, prompts: list, completions: list) -> torch.Tensor:
        tokenizer = get_tokenizer(processing_class)
        texts = []
        for prompt, completion in zip(prompts, completions, strict=True):
            if is_conversational({"prompt": prompt}):
                texts.append(tokenizer.apply_chat_template(prompt + completion, tokenize=False))
            else:
                texts.append(prompt + completion)
        batch = tokenizer(texts, padding=True, padding_side="right", add_special_tokens=False, return_tensors="pt")
        device = next(model.parameters()).device
        logits = model(**{key: value.to(device) for key, value in batch.items()}).logits
        return logits[:, 0].float().cpu()
