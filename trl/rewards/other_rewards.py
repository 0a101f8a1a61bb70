"""Length and repetition rewards: DAPO's soft overlong punishment and an n-gram repetition penalty."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .format_rewards import completion_text


class _SoftOverlongPunishment:
    """Picklable reward (a class rather than a closure, so it can be sent to worker processes)."""

    def __init__(self, max_completion_len: int, soft_punish_cache: int):
        if max_completion_len <= 0 or not 0 <= soft_punish_cache <= max_completion_len:
            raise ValueError(
                f"Need max_completion_len > 0 and 0 <= soft_punish_cache <= max_completion_len, got "
                f"max_completion_len={max_completion_len}, soft_punish_cache={soft_punish_cache}."
            )
        self.__name__ = "soft_overlong_punishment_reward"
        self.max_completion_len = max_completion_len
        self.soft_punish_cache = soft_punish_cache

    def punishment(self, length: int) -> float:
        """0 up to `L_max − L_cache`, then linear down to −1 at `L_max`, −1 beyond."""
        free = self.max_completion_len - self.soft_punish_cache
        if length <= free:
            return 0.0
        if length <= self.max_completion_len:
            return (free - length) / self.soft_punish_cache
        return -1.0

    def __call__(self, completion_ids: list[list[int]], **kwargs) -> list[float]:
        return [self.punishment(len(ids)) for ids in completion_ids]


def get_soft_overlong_punishment(max_completion_len: int, soft_punish_cache: int) -> Callable[..., list[float]]:
    r"""DAPO's soft overlong punishment (arXiv 2503.14476, Eq. 13) on the number of completion tokens `|y|`:

    - `0` if `|y| ≤ L_max − L_cache`;
    - `(L_max − L_cache − |y|) / L_cache` if `L_max − L_cache < |y| ≤ L_max` (from 0 down to −1);
    - `−1` if `|y| > L_max`.

    It only penalises; add it to a correctness reward. With `soft_punish_cache=0` it is a hard −1 beyond `L_max`.

    Args:
        max_completion_len (`int`):
            `L_max`, usually the trainer's `max_completion_length`.
        soft_punish_cache (`int`):
            `L_cache`, the length of the linearly punished band below `L_max`.

    Returns:
        A reward function `f(completion_ids, **kwargs)` named `soft_overlong_punishment_reward`.

    Example:
    ```python
    >>> reward = get_soft_overlong_punishment(max_completion_len=100, soft_punish_cache=20)
    >>> reward(completion_ids=[[1] * 90])  # 90 lies between 80 and 100
    [-0.5]
    ```
    """
    return _SoftOverlongPunishment(max_completion_len, soft_punish_cache)


class _RepetitionPenalty:
    """Picklable reward (a class rather than a closure, so it can be sent to worker processes)."""

    def __init__(self, ngram_size: int, max_penalty: float):
        if ngram_size < 1:
            raise ValueError(f"ngram_size must be >= 1, got {ngram_size}.")
        if max_penalty > 0:
            raise ValueError(f"max_penalty is a penalty and must be <= 0, got {max_penalty}.")
        self.__name__ = "repetition_penalty_reward"
        self.ngram_size = ngram_size
        self.max_penalty = max_penalty

    def penalty(self, text: str) -> float:
        words = text.lower().split()
        if len(words) < self.ngram_size:
            return 0.0
        ngrams = [tuple(words[i : i + self.ngram_size]) for i in range(len(words) - self.ngram_size + 1)]
        repeated = 1 - len(set(ngrams)) / len(ngrams)
        return self.max_penalty * repeated if repeated else 0.0

    def __call__(self, completions: list[str] | list[list[dict[str, Any]]], **kwargs) -> list[float]:
        return [self.penalty(completion_text(c)) for c in completions]


def get_repetition_penalty_reward(ngram_size: int = 3, max_penalty: float = -1.0) -> Callable[..., list[float]]:
    r"""N-gram repetition penalty (arXiv 2502.03373, appendix C.2).

    The completion is lower-cased and split on whitespace; with `n` its word n-grams, the reward is
    `max_penalty · (1 − #distinct n-grams / #n-grams)`: 0 for text without a repeated n-gram, approaching
    `max_penalty` for text that loops. Completions shorter than `ngram_size` words score 0.

    Args:
        ngram_size (`int`, *optional*, defaults to `3`):
            Words per n-gram.
        max_penalty (`float`, *optional*, defaults to `-1.0`):
            The most negative reward; must be `<= 0`.

    Returns:
        A reward function `f(completions, **kwargs)` named `repetition_penalty_reward`.

    Example:
    ```python
    >>> reward = get_repetition_penalty_reward(ngram_size=2, max_penalty=-1.0)
    >>> reward(["a b a b a b", "a b c d"])  # 2 distinct of 5 bigrams; 3 distinct of 3
    [-0.6, 0.0]
    ```
    """
    return _RepetitionPenalty(ngram_size, max_penalty)
