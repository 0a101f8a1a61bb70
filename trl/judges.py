"""Judges: models or services that compare, rank or accept completions of a prompt.

- [`BaseJudge`], [`BaseRankJudge`], [`BasePairwiseJudge`], [`BaseBinaryJudge`]: the interfaces. Subclass one and
  implement `judge` to write your own.
- [`PairRMJudge`] (llm-blender's PairRM), [`HfPairwiseJudge`] (Hugging Face Inference), [`OpenAIPairwiseJudge`]
  (the OpenAI API or any server speaking its protocol): pairwise judges.
- [`RewardModelJudge`]: any sequence-classification reward model or reward function as a pairwise judge (offline,
  CPU-friendly), the preferred completion being the higher-scored one.
- [`AllTrueJudge`]: 1 when every binary judge says 1.

Pairwise judges return, for each prompt, the index (0 or 1) of the preferred completion, or `-1` where no answer
could be obtained (a network failure, a timeout, an answer that is neither "0" nor "1"). With `return_scores=True`
they return the probability that the first completion is preferred (`-1` on failure). Network judges never hang: every
request has a timeout, and failures warn with their cause. The online trainers (Online DPO, Nash-MD, XPO) and
[`~trl.WinRateCallback`] consume pairwise judges.
"""

from __future__ import annotations

import concurrent.futures
import math
import random
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from .import_utils import is_llm_blender_available, is_openai_available


DEFAULT_PAIRWISE_SYSTEM_PROMPT = """You compare two answers written by AI assistants for the same instruction and \
decide which one serves the user better: which is more correct, more helpful and more to the point.

## Instruction

{prompt}

## Answer 0

{response0}

## Answer 1

{response1}

## Your verdict

Reply with exactly one character: "0" if Answer 0 is better, "1" if Answer 1 is better. Write nothing else."""

# A failed judgement (no answer, an unreadable answer).
FAILED = -1


class BaseJudge(ABC):
    """Base class of judges. `judge(prompts, completions, shuffle_order=True)` returns one judgement per prompt."""

    @abstractmethod
    def judge(self, prompts: list[str], completions: list[str], shuffle_order: bool = True) -> list:
        raise NotImplementedError("A judge subclass must implement `judge`.")


class BaseRankJudge(ABC):
    """Base class of judges that rank several completions of each prompt."""

    @abstractmethod
    def judge(self, prompts: list[str], completions: list[list[str]], shuffle_order: bool = True) -> list[list[int]]:
        """Rank the completions of each prompt.

        Args:
            prompts (`list[str]`):
                The prompts.
            completions (`list[list[str]]`):
                The candidate completions of each prompt.
            shuffle_order (`bool`, *optional*, defaults to `True`):
                Present the candidates in a random order (against position bias); the ranks refer to the given order.

        Returns:
            `list[list[int]]`: for each prompt, the indices of its completions from best to worst.
        """
        raise NotImplementedError("A judge subclass must implement `judge`.")


class BasePairwiseJudge(BaseJudge):
    """Base class of judges that pick the better of two completions."""

    @abstractmethod
    def judge(
        self,
        prompts: list[str],
        completions: list[list[str]],
        shuffle_order: bool = True,
        return_scores: bool = False,
    ) -> list[int | float]:
        """Judge each pair of completions.

        Args:
            prompts (`list[str]`):
                The prompts.
            completions (`list[list[str]]`):
                Two completions per prompt.
            shuffle_order (`bool`, *optional*, defaults to `True`):
                Present each pair in a random order (against position bias); results refer to the given order.
            return_scores (`bool`, *optional*, defaults to `False`):
                Return the probability that the first completion is preferred instead of an index.

        Returns:
            `list[int]` (the preferred index, 0 or 1) or `list[float]` (probabilities); `-1` where the judgement
            failed.
        """
        raise NotImplementedError("A judge subclass must implement `judge`.")


class BaseBinaryJudge(BaseJudge):
    """Base class of judges that accept (1) or reject (0) each completion, e.g. against a constraint."""

    @abstractmethod
    def judge(
        self,
        prompts: list[str],
        completions: list[str],
        gold_completions: list[str] | None = None,
        shuffle_order: bool = True,
    ) -> list[int]:
        """Judge each completion: 1 (accepted), 0 (rejected) or -1 (the judgement failed).

        Args:
            prompts (`list[str]`):
                The prompts.
            completions (`list[str]`):
                One completion per prompt.
            gold_completions (`list[str]` or `None`, *optional*, defaults to `None`):
                Reference answers, for judges that need them.
            shuffle_order (`bool`, *optional*, defaults to `True`):
                Unused by most binary judges (kept for a uniform interface).
        """
        raise NotImplementedError("A judge subclass must implement `judge`.")


def check_pairs(prompts: Sequence[Any], completions: Sequence[Sequence[Any]]) -> None:
    """Raise a `ValueError` unless there is one pair of completions per prompt."""
    if len(prompts) != len(completions):
        raise ValueError(
            f"Got {len(prompts)} prompts but {len(completions)} pairs of completions: pass one per prompt."
        )
    for index, pair in enumerate(completions):
        if isinstance(pair, str) or len(pair) != 2:
            raise ValueError(
                f"Pairwise judges compare two completions per prompt; entry {index} is {pair!r}. Pass "
                "`completions=[[first, second], ...]`."
            )


def _flips(count: int, shuffle_order: bool) -> list[bool]:
    return [random.random() < 0.5 for _ in range(count)] if shuffle_order else [False] * count


def _unflip(value: int | float, flipped: bool, as_score: bool) -> int | float:
    """A judgement of a swapped pair, expressed for the original order (failures stay failures)."""
    if value == FAILED or not flipped:
        return value
    return 1.0 - value if as_score else 1 - value


class AllTrueJudge(BaseBinaryJudge):
    """1 when every one of `judges` accepts a completion, -1 when any of them failed on it, else 0.

    Args:
        judges (`list[BaseBinaryJudge]`):
            The binary judges to combine.
    """

    def __init__(self, judges: list[BaseBinaryJudge]):
        if not judges:
            raise ValueError("AllTrueJudge needs at least one binary judge.")
        self.judges = list(judges)

    def judge(self, prompts, completions, gold_completions=None, shuffle_order=True):
        verdicts = [judge.judge(prompts, completions, gold_completions, shuffle_order) for judge in self.judges]
        combined = []
        for index, values in enumerate(zip(*verdicts, strict=True)):
            unknown = [value for value in values if value not in (0, 1, FAILED)]
            if unknown:
                raise ValueError(
                    f"A binary judge returned {unknown[0]!r} for completion {index}; binary judges return 0, 1 or -1."
                )
            combined.append(FAILED if FAILED in values else int(all(value == 1 for value in values)))
        return combined


class PairRMJudge(BasePairwiseJudge):
    """The PairRM pairwise reward model (`llm-blender/PairRM`, arXiv 2306.02561) through llm-blender.

    Needs `pip install llm-blender` (or `pip install trl[judges]`) and the model weights (downloaded on first use).

    Args:
        model (`str`, *optional*, defaults to `"llm-blender/PairRM"`):
            The ranker checkpoint.
        device (`str` or `None`, *optional*, defaults to `None`):
            Where to run it; `None` lets llm-blender choose.
    """

    def __init__(self, model: str = "llm-blender/PairRM", device: str | None = None):
        if not is_llm_blender_available():
            raise ImportError(
                "PairRMJudge needs llm-blender, which is not installed. Install it with `pip install llm-blender` "
                "(or `pip install trl[judges]`)."
            )
        import llm_blender

        self.blender = llm_blender.Blender()
        kwargs = {"device": device} if device is not None else {}
        self.blender.loadranker(model, **kwargs)

    def judge(self, prompts, completions, shuffle_order=True, return_scores=False, temperature=1.0):
        check_pairs(prompts, completions)
        if not prompts:
            return []
        flips = _flips(len(prompts), shuffle_order)
        shown = [list(pair[::-1]) if flip else list(pair) for pair, flip in zip(completions, flips, strict=True)]
        ranks = self.blender.rank(list(prompts), shown, return_scores=return_scores, disable_tqdm=True)
        results = []
        for row, flip in zip(ranks, flips, strict=True):
            row = [float(value) for value in row]
            if return_scores:
                # Scores are logits: the softmax probability that the first shown completion is better.
                first = 1.0 / (1.0 + math.exp(-(row[0] - row[1]) / temperature))
                results.append(_unflip(first, flip, True))
            else:
                # Ranks start at 1 (best): the preferred shown completion has the lower rank.
                results.append(_unflip(0 if row[0] <= row[1] else 1, flip, False))
        return results


class _ChatPairwiseJudge(BasePairwiseJudge):
    """Pairwise judgement by asking a chat model, one request per pair (in parallel), answer "0" or "1"."""

    def __init__(self, system_prompt: str | None, max_workers: int):
        self.system_prompt = system_prompt or DEFAULT_PAIRWISE_SYSTEM_PROMPT
        for name in ("{prompt}", "{response0}", "{response1}"):
            if name not in self.system_prompt:
                raise ValueError(f"system_prompt must contain the placeholder {name} (with {{prompt}}, {{response0}}, "
                                 "{response1}).")  # fmt: skip
        self.max_workers = max_workers

    @abstractmethod
    def _ask(self, content: str) -> str:
        """The model's raw answer to one request."""

    def _judge_one(self, prompt: str, first: str, second: str) -> int:
        content = self.system_prompt.format(prompt=prompt, response0=first, response1=second)
        try:
            answer = self._ask(content)
        except Exception as error:  # network errors, timeouts, malformed replies: a failed judgement
            warnings.warn(
                f"{type(self).__name__}: the request failed ({type(error).__name__}: {error}); the pair gets -1.",
                UserWarning,
                stacklevel=4,
            )
            return FAILED
        answer = (answer or "").strip()
        if answer in ("0", "1"):
            return int(answer)
        warnings.warn(
            f"{type(self).__name__}: the answer {answer[:80]!r} is neither '0' nor '1'; the pair gets -1.",
            UserWarning,
            stacklevel=4,
        )
        return FAILED

    def _requests_allowed(self, count: int) -> int:
        return count

    def judge(self, prompts, completions, shuffle_order=True, return_scores=False):
        check_pairs(prompts, completions)
        flips = _flips(len(prompts), shuffle_order)
        allowed = self._requests_allowed(len(prompts))
        jobs = [
            (prompt, *(pair[::-1] if flip else pair))
            for prompt, pair, flip in zip(prompts[:allowed], completions[:allowed], flips, strict=False)
        ]
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(self.max_workers, len(jobs) or 1))) as pool:
            answers = list(pool.map(lambda job: self._judge_one(*job), jobs))
        answers += [FAILED] * (len(prompts) - allowed)
        results = [_unflip(answer, flip, False) for answer, flip in zip(answers, flips, strict=True)]
        return [float(value) if return_scores and value != FAILED else value for value in results]


class HfPairwiseJudge(_ChatPairwiseJudge):
    """A chat model served by Hugging Face Inference (`huggingface_hub.InferenceClient`) as a pairwise judge.

    Args:
        model (`str`, *optional*, defaults to `"meta-llama/Meta-Llama-3-70B-Instruct"`):
            Model id on the Inference API, or the URL of an endpoint (e.g. a local text-generation-inference server).
        token (`str` or `None`, *optional*, defaults to `None`):
            Hugging Face token; `None` uses the logged-in one.
        system_prompt (`str` or `None`, *optional*, defaults to `None`):
            The request template, with `{prompt}`, `{response0}` and `{response1}`; `None` uses
            `DEFAULT_PAIRWISE_SYSTEM_PROMPT`.
        timeout (`float`, *optional*, defaults to `60.0`):
            Seconds before a request is abandoned (the pair then gets -1).
        max_workers (`int`, *optional*, defaults to `8`):
            Requests in flight at once.
    """

    def __init__(
        self,
        model: str = "meta-llama/Meta-Llama-3-70B-Instruct",
        token: str | None = None,
        system_prompt: str | None = None,
        timeout: float = 60.0,
        max_workers: int = 8,
    ):
        from huggingface_hub import InferenceClient

        super().__init__(system_prompt, max_workers)
        is_url = model.startswith(("http://", "https://"))
        kwargs = {"base_url": model} if is_url else {"model": model}
        self.client = InferenceClient(token=token, timeout=timeout, **kwargs)

    def _ask(self, content: str) -> str:
        response = self.client.chat_completion(messages=[{"role": "user", "content": content}], max_tokens=1)
        return response.choices[0].message.content


class OpenAIPairwiseJudge(_ChatPairwiseJudge):
    """An OpenAI chat model (or any server speaking the OpenAI API) as a pairwise judge.

    The client reads `OPENAI_API_KEY` and `OPENAI_BASE_URL` from the environment unless `api_key` / `base_url` are
    given. Needs `pip install openai` (or `pip install trl[judges]`).

    Args:
        model (`str`, *optional*, defaults to `"gpt-4-turbo-preview"`):
            The chat model.
        system_prompt (`str` or `None`, *optional*, defaults to `None`):
            The request template, with `{prompt}`, `{response0}` and `{response1}`; `None` uses
            `DEFAULT_PAIRWISE_SYSTEM_PROMPT`.
        max_requests (`int` or `None`, *optional*, defaults to `1000`):
            Most requests this judge sends in its lifetime (a cost cap); later pairs get -1, with a warning. `None`
            removes the cap.
        base_url (`str` or `None`, *optional*, defaults to `None`):
            API URL (e.g. a local server); `None` uses the client's default.
        api_key (`str` or `None`, *optional*, defaults to `None`):
            API key; `None` reads `OPENAI_API_KEY`.
        timeout (`float`, *optional*, defaults to `60.0`):
            Seconds before a request is abandoned (the pair then gets -1).
        max_retries (`int`, *optional*, defaults to `2`):
            Retries of a failed request by the client.
        max_workers (`int`, *optional*, defaults to `8`):
            Requests in flight at once.
    """

    def __init__(
        self,
        model: str = "gpt-4-turbo-preview",
        system_prompt: str | None = None,
        max_requests: int | None = 1_000,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        max_workers: int = 8,
    ):
        if not is_openai_available():
            raise ImportError(
                "OpenAIPairwiseJudge needs the openai client, which is not installed. Install it with "
                "`pip install openai` (or `pip install trl[judges]`)."
            )
        from openai import OpenAI

        super().__init__(system_prompt, max_workers)
        self.model = model
        self.max_requests = max_requests
        self.num_requests = 0
        self._warned_cap = False
        self.client = OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=max_retries)

    def _requests_allowed(self, count: int) -> int:
        if self.max_requests is None:
            return count
        allowed = max(0, min(count, self.max_requests - self.num_requests))
        self.num_requests += allowed
        if allowed < count and not self._warned_cap:
            warnings.warn(
                f"OpenAIPairwiseJudge reached max_requests={self.max_requests}: the remaining pairs get -1. Raise "
                "max_requests (or set it to None) to judge more.",
                UserWarning,
                stacklevel=4,
            )
            self._warned_cap = True
        return allowed

    def _ask(self, content: str) -> str:
        response = self.client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": content}], max_tokens=1
        )
        return response.choices[0].message.content


class RewardModelJudge(BasePairwiseJudge):
    """A reward model or reward function as a pairwise judge: the higher-scored completion is preferred.

    With `return_scores=True` the probability that the first completion is preferred is the Bradley-Terry one,
    `σ((r_0 − r_1) / temperature)`.

    Args:
        reward_model (`str`, `PreTrainedModel` or `Callable`):
            A sequence-classification model (id, path or instance; `num_labels=1`) scoring `prompt + completion`, or
            a reward function `f(prompts=..., completions=..., **kwargs) -> list[float]` (`completion_ids` is
            `None` for judges).
        processing_class (`PreTrainedTokenizerBase` or `None`, *optional*, defaults to `None`):
            The reward model's tokenizer; `None` loads the model's own.
        temperature (`float`, *optional*, defaults to `1.0`):
            Scale of the score difference in the probability.
    """

    def __init__(self, reward_model: Any, processing_class: Any = None, temperature: float = 1.0):
        from .trainer.reward_scoring import RewardScorer

        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.scorer = RewardScorer(reward_model, processing_class)
        self.temperature = temperature

    @property
    def models(self) -> list:
        """The reward models to place on a device (for trainers)."""
        return self.scorer.models

    def prepare(self, accelerator: Any) -> None:
        """Place the reward model for `accelerator` (device, DeepSpeed, FSDP)."""
        self.scorer.prepare(accelerator)

    def judge(self, prompts, completions, shuffle_order=True, return_scores=False):
        # Scoring each completion alone has no position bias: `shuffle_order` changes nothing.
        check_pairs(prompts, completions)
        if not prompts:
            return []
        flat_prompts = [prompt for prompt in prompts for _ in range(2)]
        flat_completions = [completion for pair in completions for completion in pair]
        scores = self.scorer.score(flat_prompts, flat_completions, None, {})[:, 0].view(-1, 2)
        if return_scores:
            return ((scores[:, 0] - scores[:, 1]) / self.temperature).sigmoid().tolist()
        return [0 if first >= second else 1 for first, second in scores.tolist()]


# Judges by the names the command line and `OnlineDPOConfig.judge` use.
JUDGES: dict[str, Callable[..., BasePairwiseJudge]] = {
    "pair_rm": PairRMJudge,
    "openai": OpenAIPairwiseJudge,
    "hf": HfPairwiseJudge,
    "reward_model": RewardModelJudge,
}


def get_judge(name: str, **kwargs: Any) -> BasePairwiseJudge:
    """The pairwise judge called `name` (`pair_rm`, `openai`, `hf`, `reward_model`), built with `kwargs`."""
    if name not in JUDGES:
        raise ValueError(f"Unknown judge {name!r}; choose one of {sorted(JUDGES)}.")
    return JUDGES[name](**kwargs)


__all__ = [
    "DEFAULT_PAIRWISE_SYSTEM_PROMPT",
    "JUDGES",
    "AllTrueJudge",
    "BaseBinaryJudge",
    "BaseJudge",
    "BasePairwiseJudge",
    "BaseRankJudge",
    "HfPairwiseJudge",
    "OpenAIPairwiseJudge",
    "PairRMJudge",
    "RewardModelJudge",
    "get_judge",
]
