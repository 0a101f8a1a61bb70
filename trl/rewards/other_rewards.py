"""Length and repetition rewards: DAPO's soft overlong punishment and an n-gram repetition penalty."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


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

    def penalty(self, ids: Sequence[int]) -> float:
        """`max_penalty · (1 − distinct n-grams / n-grams)` of one completion's token ids."""
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        if len(ids) < self.ngram_size:
            return 0.0
        ngrams = [tuple(ids[i : i + self.ngram_size]) for i in range(len(ids) - self.ngram_size + 1)]
        repeated = 1 - len(set(ngrams)) / len(ngrams)
        return self.max_penalty * repeated if repeated else 0.0

    def __call__(self, completion_ids: list[list[int]], **kwargs) -> list[float]:
        if completion_ids and not _is_id_sequence(completion_ids[0]):
            raise TypeError(
                "repetition_penalty_reward scores token ids, as in the reference: call it with completion_ids (a list "
                "of token id lists; the trainers pass it by keyword), not with completion texts or messages."
            )
        return [self.penalty(ids) for ids in completion_ids]


def _is_id_sequence(value: Any) -> bool:
    if hasattr(value, "tolist"):  # a tensor or array row
        return True
    return isinstance(value, Sequence) and not isinstance(value, str) and all(isinstance(i, int) for i in value)


def get_repetition_penalty_reward(ngram_size: int = 3, max_penalty: float = -1.0) -> Callable[..., list[float]]:
    r"""N-gram repetition penalty (arXiv 2502.03373, appendix C.2), over the completion's token ids.

    With `n` the token n-grams of a completion, the reward is `max_penalty · (1 − #distinct n-grams / #n-grams)`:
    0 for a completion without a repeated n-gram, approaching `max_penalty` for one that loops. Counting tokens
    rather than words makes it independent of the language and of whitespace. Completions shorter than
    `ngram_size` tokens score 0.

    The call convention is the reference's: `reward(completion_ids, **kwargs)`, where `completion_ids` is one list of
    token ids per completion; the online trainers pass it by keyword.

    Args:
        ngram_size (`int`, *optional*, defaults to `3`):
            Tokens per n-gram.
        max_penalty (`float`, *optional*, defaults to `-1.0`):
            The most negative reward; must be `<= 0`.

    Returns:
        A reward function `f(completion_ids, **kwargs)` named `repetition_penalty_reward`.

    Example:
    ```python
    >>> reward = get_repetition_penalty_reward(ngram_size=2, max_penalty=-1.0)
    >>> reward([[1, 2, 3, 4], [5, 5, 5, 5, 5]])  # 3 distinct of 3 bigrams; 1 distinct of 4
    [0.0, -0.75]
    ```
    """
    return _RepetitionPenalty(ngram_size, max_penalty)
