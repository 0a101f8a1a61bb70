"""The multi-turn tool loop: generate, parse the tool calls, run the tools, append their results, continue.

For a batch of rollouts, each a conversational prompt with its tools:

1. Generate one assistant turn per active rollout (the first turn for every rollout at once, grouped by prompt).
2. Parse it ([`~trl.agent.tool_calls.parse_turn`]). A turn without a call, a truncated turn, a rollout that has used
   `max_iterations` tool rounds or its `max_completion_length` budget ends there.
3. Run the calls of every continuing rollout together ([`~trl.agent.tool_runner.ToolRunner`]) and append
   `{"role": "tool", "name", "content"}` messages.
4. The tokens between the model's turns (the end of its turn, the tool messages, the next generation prompt) come
   from the chat template: the rendering with the tool messages and a generation prompt, minus the rendering of the
   conversation so far, plus whatever the template writes after the end-of-turn token the model generated. They
   are appended to the completion with `tool_mask = 0`; the generated tokens have `tool_mask = 1`.
5. The next turn is generated from `prompt_ids + completion_ids` token for token, so the sequence that is trained
   is exactly the one the model was conditioned on.

The completion of a rollout is then one token sequence (model turns and tool glue, at most
`max_completion_length` tokens) with its `tool_mask`, and, for the reward functions, the list of assistant and tool
messages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..chat_template_utils._common import tokenizer_of
from .tool_calls import parse_turn
from .tool_runner import ToolRunner


__all__ = ["MultiTurnResult", "run_tool_loop", "turn_glue"]

# `generate(prompt_ids, num_generations, max_tokens) -> (completion_ids, truncated, sampler_logps or None)`
GenerateFn = Callable[[list[list[int]], int, int], tuple[list[list[int]], list[bool], Any]]


@dataclass
class MultiTurnResult:
    """The completions of a batch of tool-calling rollouts.

    Attributes:
        completion_ids (`list[list[int]]`): model turns and tool glue, per rollout.
        tool_mask (`list[list[int]]`): 1 on the model's tokens, 0 on the tool glue, aligned with `completion_ids`.
        truncated (`list[bool]`): the rollout ran out of its `max_completion_length` budget.
        completions (`list[list[dict]]`): the assistant and tool messages of each rollout.
        sampler_logps (`list[list[float]]` or `None`): the sampler's log-probs (0 on the glue), when provided.
        iterations (`list[int]`): tool rounds of each rollout.
        tool_calls, tool_failures, malformed (`int`): calls run, calls that failed, calls that did not parse.
    """

    completion_ids: list[list[int]]
    tool_mask: list[list[int]]
    truncated: list[bool]
    completions: list[list[dict]]
    sampler_logps: list[list[float]] | None = None
    iterations: list[int] = field(default_factory=list)
    tool_calls: int = 0
    tool_failures: int = 0
    malformed: int = 0


def _render(tokenizer: Any, messages: list[dict], tools: list[dict] | None, generation: bool, kwargs: dict) -> str:
    return tokenizer.apply_chat_template(
        messages, tools=tools or None, add_generation_prompt=generation, tokenize=False, **kwargs
    )


def turn_glue(
    processing_class: Any,
    history: list[dict],
    tool_messages: list[dict],
    tools: list[dict] | None,
    end_of_turn: str | None,
    chat_template_kwargs: dict | None = None,
) -> list[int]:
    """The token ids the chat template writes between the model's last turn and its next one.

    Args:
        processing_class (`PreTrainedTokenizerBase` or `ProcessorMixin`):
            Renders with its chat template and tokenizes.
        history (`list[dict]`):
            The prompt messages and the turns so far, ending with the assistant turn that called the tools.
        tool_messages (`list[dict]`):
            The tool results to append.
        tools (`list[dict]` or `None`):
            The tool schemas the prompt was rendered with.
        end_of_turn (`str` or `None`):
            The text of the end-of-turn token the model generated last; `None` when its turn ended otherwise, in
            which case the template's end of the turn is part of the glue.
        chat_template_kwargs (`dict` or `None`, *optional*, defaults to `None`):
            Extra template arguments (as for the prompt).

    Raises:
        `ValueError`: when rendering the tool messages changes the rendering of the conversation before them (the
        template is not prefix-preserving), naming the fix.
    """
    tokenizer = tokenizer_of(processing_class)
    kwargs = dict(chat_template_kwargs or {})
    before = _render(tokenizer, history, tools, False, kwargs)
    after = _render(tokenizer, history + tool_messages, tools, True, kwargs)
    if not after.startswith(before):
        raise ValueError(
            "The chat template renders the conversation differently once tool results follow it (it is not "
            "prefix-preserving), so the tokens between turns cannot be found. Use a template that renders earlier "
            "turns unchanged, e.g. one from trl.chat_template_utils.get_training_chat_template."
        )
    ends = [text for text in tokenizer.all_special_tokens if text and text in before]
    if end_of_turn is not None and end_of_turn in before:
        # What the template writes after the end-of-turn token the model generated (e.g. ChatML's "\n").
        tail = before[before.rfind(end_of_turn) + len(end_of_turn) :]
    elif ends:
        # The model did not write the end of its turn: the template's end-of-turn token is glue too.
        tail = before[max(before.rfind(text) for text in ends) :]
    else:
        tail = ""
    return list(tokenizer(tail + after[len(before) :], add_special_tokens=False)["input_ids"])


def run_tool_loop(
    processing_class: Any,
    conversations: Sequence[list[dict]],
    prompt_ids: Sequence[list[int]],
    generate: GenerateFn,
    runner: ToolRunner,
    *,
    num_generations: int = 1,
    max_completion_length: int,
    max_iterations: int | None = None,
    eos_token_ids: Sequence[int] = (),
    tools_per_rollout: list[dict[str, Callable]] | None = None,
    schemas_per_rollout: list[list[dict]] | None = None,
    chat_template_kwargs: dict | None = None,
) -> MultiTurnResult:
    """Run the tool loop (module docstring) for a batch of rollouts.

    Args:
        processing_class: The tokenizer or processor.
        conversations (`Sequence[list[dict]]`): each rollout's prompt messages.
        prompt_ids (`Sequence[list[int]]`): each rollout's rendered and tokenized prompt (with the tool schemas).
        generate (`GenerateFn`): samples completions of token prompts (see `GenerateFn`).
        runner ([`ToolRunner`]): runs the calls.
        num_generations (`int`): consecutive rollouts sharing a prompt (the first turn is generated per group).
        max_completion_length (`int`): token budget of a whole completion (model and glue tokens).
        max_iterations (`int` or `None`): tool rounds per rollout; `None` is bounded by the budget only.
        eos_token_ids (`Sequence[int]`): ids that end a turn.
        tools_per_rollout (`list[dict[str, Callable]]` or `None`): per-rollout tools by name (environments);
            `None` uses the runner's tools.
        schemas_per_rollout (`list[list[dict]]` or `None`): per-rollout schemas the prompt was rendered with.
        chat_template_kwargs (`dict` or `None`): extra template arguments.
    """
    tokenizer = tokenizer_of(processing_class)
    size = len(prompt_ids)
    eos = set(eos_token_ids)
    result = MultiTurnResult(
        completion_ids=[[] for _ in range(size)],
        tool_mask=[[] for _ in range(size)],
        truncated=[False] * size,
        completions=[[] for _ in range(size)],
        iterations=[0] * size,
    )
    logps: list[list[float]] | None = None
    active = list(range(size))
    turns, truncated, turn_logps = generate(list(prompt_ids), num_generations, max_completion_length)
    while active:
        if turn_logps is not None and logps is None:
            logps = [[] for _ in range(size)]
        calling: list[int] = []
        for position, index in enumerate(active):
            budget = max_completion_length - len(result.completion_ids[index])
            turn = list(turns[position])[:budget]
            cut = truncated[position] or len(turns[position]) > budget
            context = list(prompt_ids[index]) + result.completion_ids[index]
            result.completion_ids[index] += turn
            result.tool_mask[index] += [1] * len(turn)
            if logps is not None:
                logps[index] += (
                    list(turn_logps[position])[: len(turn)] if turn_logps is not None else [0.0] * len(turn)
                )
            parsed = parse_turn(processing_class, turn, context)
            result.completions[index].append(parsed.message)
            result.malformed += parsed.malformed
            result.truncated[index] = cut
            rounds_left = max_iterations is None or result.iterations[index] < max_iterations
            if parsed.calls and not cut and rounds_left:
                calling.append(index)
        outcomes = runner.run(
            [result.completions[index][-1]["tool_calls"] for index in calling],
            [tools_per_rollout[index] for index in calling] if tools_per_rollout is not None else None,
        )
        active = []
        for index, outcome in zip(calling, outcomes, strict=True):
            messages = [{"role": "tool", "name": call.name, "content": call.content} for call in outcome]
            result.tool_calls += len(outcome)
            result.tool_failures += sum(call.failed for call in outcome)
            last = result.completion_ids[index][-1] if result.completion_ids[index] else None
            end_of_turn = tokenizer.decode([last]) if last in eos else None
            history = list(conversations[index]) + result.completions[index]
            schemas = schemas_per_rollout[index] if schemas_per_rollout is not None else None
            glue = turn_glue(processing_class, history, messages, schemas, end_of_turn, chat_template_kwargs)
            result.completions[index].extend(messages)
            result.iterations[index] += 1
            budget = max_completion_length - len(result.completion_ids[index])
            result.completion_ids[index] += glue[:budget]
            result.tool_mask[index] += [0] * min(len(glue), budget)
            if logps is not None:
                logps[index] += [0.0] * min(len(glue), budget)
            if len(glue) >= budget:
                result.truncated[index] = True  # no room left for the model's next turn
            else:
                active.append(index)
        if active:
            budget = max(max_completion_length - len(result.completion_ids[index]) for index in active)
            prompts = [list(prompt_ids[index]) + result.completion_ids[index] for index in active]
            turns, truncated, turn_logps = generate(prompts, 1, budget)
    result.sampler_logps = logps
    return result
