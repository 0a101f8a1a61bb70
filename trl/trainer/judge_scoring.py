"""A pairwise judge behind the reward-scorer interface of the rollout ([`JudgeScorer`]), and the neutral rendering
judges see conversations in."""

from __future__ import annotations

import warnings
from typing import Any

import torch


# The neutral template conversations are rendered with for judges (not the policy's chat template): each message as
# "Role: content", separated by blank lines. `render_for_judge` applies it without a template engine.
SIMPLE_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant: {% endif %}"
)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    # Multimodal-style content: a list of parts, of which the text ones are kept.
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def render_for_judge(value: Any, is_prompt: bool) -> str:
    """A prompt or completion as plain text: strings unchanged, conversations through [`SIMPLE_CHAT_TEMPLATE`]
    (prompts end with the generation prompt `Assistant: `, completions are the assistant's text)."""
    if isinstance(value, str):
        return value
    if not is_prompt:
        return "".join(_content_text(message["content"]) for message in value)
    lines = "".join(f"{message['role'].capitalize()}: {_content_text(message['content'])}\n\n" for message in value)
    return lines + "Assistant: "


class JudgeScorer:
    """Scores consecutive pairs of completions with a pairwise judge, in the layout of
    [`~trl.trainer.reward_scoring.RewardScorer`] (one column, `judge`).

    Rows `2i` and `2i + 1` share a prompt. The preferred completion of a pair scores 1 and the other 0; with
    `return_scores=True` the first scores `p = P(first ≻ second)` and the second `1 − p`. A failed judgement (-1)
    scores NaN on both rows.

    Args:
        judge ([`~trl.judges.BasePairwiseJudge`]):
            The judge.
        return_scores (`bool`, *optional*, defaults to `False`):
            Ask the judge for probabilities rather than indices.
        shuffle_order (`bool`, *optional*, defaults to `True`):
            Passed to the judge (random presentation order against position bias).
    """

    def __init__(self, judge: Any, return_scores: bool = False, shuffle_order: bool = True):
        if not callable(getattr(judge, "judge", None)):
            raise TypeError(f"A judge needs a `judge(prompts, completions, ...)` method; got {type(judge).__name__}.")
        self.judge = judge
        self.return_scores = return_scores
        self.shuffle_order = shuffle_order
        self.names = [type(judge).__name__]
        self.weights = torch.ones(1)

    @property
    def models(self) -> list[torch.nn.Module]:
        return list(getattr(self.judge, "models", []))

    def prepare(self, accelerator: Any) -> None:
        """Place the judge's models for the accelerator when it has any (e.g. [`~trl.judges.RewardModelJudge`])."""
        if hasattr(self.judge, "prepare"):
            self.judge.prepare(accelerator)

    def score(
        self,
        prompts: list[Any],
        completions: list[Any],
        completion_ids: list[list[int]] | None,
        columns: dict[str, list[Any]],
        device: Any = "cpu",
        **context: Any,
    ) -> torch.Tensor:
        """Scores `[B, 1]` of the `B / 2` pairs (see the class docstring)."""
        if len(completions) % 2:
            raise ValueError(f"A pairwise judge scores pairs of rows; got {len(completions)} completions.")
        pair_prompts = [render_for_judge(prompt, True) for prompt in prompts[::2]]
        pairs = [
            [render_for_judge(first, False), render_for_judge(second, False)]
            for first, second in zip(completions[::2], completions[1::2], strict=True)
        ]
        kwargs = {"return_scores": True} if self.return_scores else {}
        verdicts = self.judge.judge(pair_prompts, pairs, shuffle_order=self.shuffle_order, **kwargs)
        if len(verdicts) != len(pairs):
            raise ValueError(f"The judge returned {len(verdicts)} judgements for {len(pairs)} pairs.")
        scores = torch.full((len(completions), 1), float("nan"))
        failed = 0
        for index, verdict in enumerate(verdicts):
            if verdict == -1 or verdict is None:
                failed += 1
                continue
            first = float(verdict) if self.return_scores else float(verdict == 0)
            if not 0.0 <= first <= 1.0:
                raise ValueError(f"The judge returned {verdict!r}; expected 0, 1 (or a probability) or -1.")
            scores[2 * index, 0], scores[2 * index + 1, 0] = first, 1.0 - first
        if failed:
            warnings.warn(
                f"The judge failed on {failed} of {len(pairs)} pairs; they are left out of the loss.",
                UserWarning,
                stacklevel=3,
            )
        return scores.to(device)
