"""Correctness rewards for maths answers, checked with `math_verify` (`pip install 'trl[math_verify]'`).

`math_verify` is imported when a reward is first called, not when `trl.rewards` is imported, so the module works
without it; calling a reward without it raises an `ImportError` naming the install command.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..import_utils import is_math_verify_available
from .format_rewards import completion_text


LogExtra = Callable[[str, list], None]


@dataclass(frozen=True)
class _MathVerifier:
    """The three `math_verify` operations the rewards use (replaced by a fake in tests)."""

    parse_gold: Callable[[str], list]
    parse_answer: Callable[[str], list]
    verify: Callable[[list, list], bool]


def _load_math_verifier(caller: str) -> _MathVerifier:
    if not is_math_verify_available():
        raise ImportError(
            f"{caller} checks answers with the `math_verify` package, which is not installed: run "
            "`pip install 'trl[math_verify]'`."
        )
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import LatexExtractionConfig, parse, verify

    # math_verify enforces its timeouts with signal.alarm, which only works in the main thread.
    in_main_thread = threading.current_thread() is threading.main_thread()
    parsing_timeout = 10 if in_main_thread else None
    verify_timeout = 5 if in_main_thread else None
    # The answer must be well-formed LaTeX; a \boxed{} answer is preferred over any other expression.
    answer_config = [
        LatexExtractionConfig(
            normalization_config=NormalizationConfig(units=True),
            boxed_match_priority=0,
            try_extract_without_anchor=False,
        )
    ]
    return _MathVerifier(
        parse_gold=lambda text: parse(text, parsing_timeout=parsing_timeout),
        parse_answer=lambda text: parse(
            text, extraction_config=answer_config, extraction_mode="first_match", parsing_timeout=parsing_timeout
        ),
        verify=lambda gold, answer: verify(gold, answer, timeout_seconds=verify_timeout),
    )


def _score_answers(
    verifier: _MathVerifier, answers: Sequence[str | None], solutions: Sequence[str]
) -> tuple[list[float | None], list[str], list[str]]:
    """Score each answer text against its gold solution.

    An answer of `None` (no final answer found) scores 0.0; an unparseable gold solution scores `None`, so the sample
    is skipped rather than punished. Also returns the parsed gold and answer strings for the completions table.
    """
    if len(answers) != len(solutions):
        raise ValueError(f"Got {len(answers)} completions but {len(solutions)} solutions: pass one solution each.")
    rewards, gold_strs, answer_strs = [], [], []
    for answer, solution in zip(answers, solutions, strict=True):
        if answer is None:
            rewards.append(0.0)
            gold_strs.append("[incomplete reasoning]")
            answer_strs.append("[incomplete reasoning]")
            continue
        gold = verifier.parse_gold(solution)
        if len(gold) == 0:
            rewards.append(None)
            gold_strs.append("[unparseable]")
            answer_strs.append("[skipped]")
            continue
        parsed = verifier.parse_answer(answer)
        rewards.append(float(verifier.verify(gold, parsed)))
        gold_strs.append(str(gold))
        answer_strs.append(str(parsed) if parsed else "[unparseable]")
    return rewards, gold_strs, answer_strs


def _log_parses(log_extra: LogExtra | None, solutions: Sequence[str], gold: list[str], answers: list[str]) -> None:
    if log_extra is not None:
        log_extra("solution", list(solutions))
        log_extra("gold_parsed", gold)
        log_extra("answer_parsed", answers)


def accuracy_reward(
    completions: list[str] | list[list[dict[str, Any]]],
    solution: list[str],
    log_extra: LogExtra | None = None,
    **kwargs,
) -> list[float | None]:
    r"""1.0 when the completion's answer is mathematically equal to the gold solution, else 0.0.

    The answer is the first well-formed LaTeX expression of the completion, a `\boxed{}` one first; equality is
    checked symbolically by `math_verify`. When the gold solution cannot be parsed the reward is `None`: the trainer
    skips that sample instead of punishing it.

    Args:
        completions (`list[str]` or `list[list[dict]]`):
            Completions, standard or conversational (the last assistant message is scored).
        solution (`list[str]`):
            The dataset's `solution` column: the gold answer of each prompt, repeated per completion.
        log_extra (`Callable[[str, list], None]`, *optional*, defaults to `None`):
            Provided by the trainer to add the `solution`, `gold_parsed` and `answer_parsed` columns to the
            completions table.
        **kwargs:
            The other columns the trainer passes; unused.

    Example:
    ```python
    >>> accuracy_reward([r"So \boxed{\frac{1}{3}}", r"So \boxed{\frac{1}{2}}"], [r"\frac{1}{3}", r"\frac{1}{3}"])
    [1.0, 0.0]
    ```
    """
    verifier = _load_math_verifier("accuracy_reward")
    answers = [completion_text(c) for c in completions]
    rewards, gold, parsed = _score_answers(verifier, answers, solution)
    _log_parses(log_extra, solution, gold, parsed)
    return rewards


def _final_answer(text: str, delimiters: Sequence[str]) -> str | None:
    """The text after the last occurrence of the first delimiter found, or `None` if the reasoning never ends."""
    for delimiter in delimiters:
        if delimiter in text:
            return text.rsplit(delimiter, 1)[-1]
    return None


def reasoning_accuracy_reward(
    completions: list[str] | list[list[dict[str, Any]]],
    solution: list[str],
    reasoning_delimiters: list[str] | None = None,
    log_extra: LogExtra | None = None,
    **kwargs,
) -> list[float | None]:
    r"""[`accuracy_reward`] on the final answer only: the text after the end of the reasoning.

    The reasoning ends at the last occurrence of a delimiter (`</think>` by default). A completion whose reasoning
    never ends scores 0.0 (an unfinished answer is wrong), so a `\boxed{}` inside the reasoning earns nothing.

    Args:
        completions (`list[str]` or `list[list[dict]]`):
            Completions, standard or conversational (the last assistant message is scored).
        solution (`list[str]`):
            Gold answers.
        reasoning_delimiters (`list[str]`, *optional*, defaults to `None`):
            Strings that end the reasoning, tried in order; `None` means `["</think>"]`.
        log_extra (`Callable[[str, list], None]`, *optional*, defaults to `None`):
            Provided by the trainer to log the parsed answers.
        **kwargs:
            The other columns the trainer passes; unused.

    Example:
    ```python
    >>> reasoning_accuracy_reward(
    ...     [r"<think>try \boxed{2}</think> \boxed{\frac{1}{3}}", r"<think>maybe \boxed{\frac{1}{3}}"],
    ...     [r"\frac{1}{3}", r"\frac{1}{3}"],
    ... )
    [1.0, 0.0]
    ```
    """
    verifier = _load_math_verifier("reasoning_accuracy_reward")
    delimiters = ["</think>"] if reasoning_delimiters is None else reasoning_delimiters
    answers = [_final_answer(completion_text(c), delimiters) for c in completions]
    rewards, gold, parsed = _score_answers(verifier, answers, solution)
    _log_parses(log_extra, solution, gold, parsed)
    return rewards


class _CosineScaledReward:
    """Picklable reward (a class rather than a closure, so it can be sent to worker processes)."""

    def __init__(
        self,
        max_len: int,
        min_value_wrong: float,
        max_value_wrong: float,
        min_value_correct: float,
        max_value_correct: float,
    ):
        if max_len <= 0:
            raise ValueError(f"max_len must be > 0, got {max_len}.")
        self.__name__ = "cosine_scaled_reward"
        self.max_len = max_len
        # (value at the shortest length, value at max_len) for correct and wrong answers.
        self.correct_bounds = (max_value_correct, min_value_correct)
        self.wrong_bounds = (min_value_wrong, max_value_wrong)

    def __call__(
        self,
        completions: list[str] | list[list[dict[str, Any]]],
        solution: list[str],
        completion_ids: list[list[int]],
        **kwargs,
    ) -> list[float | None]:
        correctness = accuracy_reward(completions, solution)
        rewards = []
        for correct, ids in zip(correctness, completion_ids, strict=True):
            if correct is None:
                rewards.append(None)
                continue
            # Past max_len the schedule stays at its end value: the cosine would otherwise climb back.
            progress = min(len(ids) / self.max_len, 1.0)
            short_value, long_value = self.correct_bounds if correct else self.wrong_bounds
            weight = 0.5 * (1.0 + math.cos(progress * math.pi))  # 1 at length 0, 0 at max_len
            rewards.append(long_value + (short_value - long_value) * weight)
        return rewards


def get_cosine_scaled_reward(
    max_len: int,
    min_value_wrong: float = -1.0,
    max_value_wrong: float = -0.5,
    min_value_correct: float = 0.5,
    max_value_correct: float = 1.0,
) -> Callable[..., list[float | None]]:
    r"""Correctness reward scaled by length along a cosine schedule (arXiv 2502.03373, appendix C.1).

    With `p = min(|y| / max_len, 1)` the completion-token progress, the reward is
    `v_long + (v_short − v_long)·(1 + cos(pπ))/2`:

    - correct answers go from `max_value_correct` (length 0) down to `min_value_correct` (at `max_len`): shorter
      correct answers are worth more;
    - wrong answers go from `min_value_wrong` (length 0) up to `max_value_wrong`: a short wrong answer is punished
      more than a long one, which keeps exploring.

    Correctness is [`accuracy_reward`]'s; an unparseable gold solution gives `None`.

    Args:
        max_len (`int`):
            Length (in completion tokens) where the schedule ends.
        min_value_wrong (`float`, *optional*, defaults to `-1.0`):
            Reward of a wrong answer of length 0.
        max_value_wrong (`float`, *optional*, defaults to `-0.5`):
            Reward of a wrong answer of length `max_len` or more.
        min_value_correct (`float`, *optional*, defaults to `0.5`):
            Reward of a correct answer of length `max_len` or more.
        max_value_correct (`float`, *optional*, defaults to `1.0`):
            Reward of a correct answer of length 0.

    Returns:
        A reward function `f(completions, solution, completion_ids, **kwargs)` named `cosine_scaled_reward`.

    Example:
    ```python
    >>> reward = get_cosine_scaled_reward(max_len=100)
    >>> reward([r"\boxed{\frac{1}{3}}", r"\boxed{\frac{1}{2}}"], [r"\frac{1}{3}"] * 2, [[1] * 50, [1] * 50])
    [0.75, -0.75]
    ```
    """
    return _CosineScaledReward(max_len, min_value_wrong, max_value_wrong, min_value_correct, max_value_correct)
