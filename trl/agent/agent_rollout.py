"""What the online trainers' rollout asks of agent training: tools, environments or a user `rollout_func`.

[`AgentRollout`] is the one object the [`~trl.trainer.rollout_engine.Rollout`] talks to when a trainer is given
`tools`, `environment_factory` or `rollout_func`:

1. `prepare(rows)`: environments are reset (their text joins the prompt) and the tool schemas go into each row's
   `tools` column, which the chat template renders.
2. `generate(rollout, rows, prompt_ids, num_generations)`: the tool loop ([`~trl.agent.run_tool_loop`]), or the
   user's `rollout_func`, in place of one plain generation. It returns an [`AgentOutput`]: the completion ids, the
   `tool_mask` (1 on the model's tokens), the completions as messages and the extra reward-function columns
   (`environments`, the `rollout_func`'s own fields; `AgentOutput.scored_rows` adds them to the rows).
3. `finish(rollout, output, tensors, rewards_B_F, mode)`, after scoring: `completion_mask` keeps only the model's
   tokens of rollouts that did not fail (`completion_attention_mask` keeps every completion token for the forward
   passes); failed rollouts get no reward (NaN), hence a zero advantage; the metrics are logged:
   `tools/call_frequency` (calls per completion), `tools/failure_frequency` (failed calls per call),
   `tools/malformed_frequency` (unparsable calls per completion), `tools/mean_iterations` and
   `environments/failed_rollouts` (a count per generation batch).

The trainer side: `check_agent_features` (in `_validate`), `build_agent` and `with_environment_rewards` (with the
reward functions), `environment_prompts` (the prompts when the environments' `reset()` supplies them).
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data_utils import is_conversational
from ..import_utils import TRLExperimentalWarning
from .environments import EnvironmentPool, environment_tools
from .multi_turn import run_tool_loop
from .tool_calls import tool_name, tool_schemas
from .tool_runner import ToolRunner


__all__ = [
    "AGENT_FEATURES",
    "AgentOutput",
    "AgentRollout",
    "build_agent",
    "check_agent_features",
    "environment_prompts",
    "validate_rollout_output",
    "with_environment_rewards",
]

_WARNED: set[str] = set()


def warn_experimental(feature: str) -> None:
    """Warn once per process that an agent feature is experimental (as the reference does)."""
    if feature not in _WARNED:
        _WARNED.add(feature)
        warnings.warn(
            f"`{feature}` is experimental: its interface may change in a later version of trl.",
            TRLExperimentalWarning,
            stacklevel=3,
        )


@dataclass
class AgentOutput:
    """The completions of one generation batch (this process's rows)."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    truncated: list[bool]
    sampler_logps: list[list[float]] | None
    tool_mask: list[list[int]] | None = None
    completions: list[Any] | None = None
    reward_columns: dict[str, list] = field(default_factory=dict)

    def scored_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The rows with the extra reward-function columns (`environments`, a `rollout_func`'s own fields)."""
        if not self.reward_columns:
            return rows
        return [
            {**row, **{key: values[index] for key, values in self.reward_columns.items()}}
            for index, row in enumerate(rows)
        ]


def validate_rollout_output(output: Any, num_prompts: int, max_completion_length: int) -> dict[str, list]:
    """Check what a `rollout_func` returned: a dict with `prompt_ids` and `completion_ids` (one list of token ids
    per prompt), optional `logprobs` and `tool_mask` aligned with `completion_ids`, and extra fields (one value
    per prompt) passed on to the reward functions. Completions longer than `max_completion_length` are cut."""
    if not isinstance(output, dict):
        raise ValueError(
            f"rollout_func must return a dict with 'prompt_ids', 'completion_ids' and optionally 'logprobs', got "
            f"{type(output).__name__}."
        )
    for key in ("prompt_ids", "completion_ids"):
        if key not in output:
            raise ValueError(f"rollout_func's output has no {key!r}; it returned the keys {sorted(output)}.")
    for key, values in output.items():
        if not isinstance(values, (list, tuple)) or len(values) != num_prompts:
            count = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
            raise ValueError(
                f"rollout_func's {key!r} must hold one entry per prompt ({num_prompts}), got {count}. It receives "
                "each prompt as many times as it has completions (num_generations in a row) and returns one "
                "completion per prompt it received."
            )
    checked = {key: list(values) for key, values in output.items()}
    for key in ("prompt_ids", "completion_ids"):
        for index, ids in enumerate(checked[key]):
            if not isinstance(ids, (list, tuple)) or not all(isinstance(token, int) for token in ids):
                raise ValueError(f"rollout_func's {key}[{index}] must be a list of token ids (ints), got {ids!r}.")
    for key in ("logprobs", "tool_mask"):
        for index, values in enumerate(checked.get(key) or []):
            if values is None or len(values) != len(checked["completion_ids"][index]):
                raise ValueError(
                    f"rollout_func's {key}[{index}] must have one value per completion token "
                    f"({len(checked['completion_ids'][index])}), got {None if values is None else len(values)}."
                )
    for key in ("completion_ids", "logprobs", "tool_mask"):
        if key in checked:
            checked[key] = [list(values)[:max_completion_length] for values in checked[key]]
    return checked


class AgentRollout:
    """Tools, environments or a `rollout_func` for the rollout of an online trainer.

    Args:
        args (`GRPOConfig`-like):
            Reads `max_tool_calling_iterations`, `max_completion_length` and `chat_template_kwargs`.
        tools (`list[Callable]` or `None`, *optional*, defaults to `None`):
            Sync or async functions with type hints and a docstring.
        environment_factory (`Callable`, `dict[str, Callable]` or `None`, *optional*, defaults to `None`):
            See [`~trl.agent.EnvironmentPool`].
        rollout_func (`Callable` or `None`, *optional*, defaults to `None`):
            `rollout_func(prompts, trainer) -> dict` (see [`validate_rollout_output`]); it replaces generation.
        trainer (*optional*):
            Passed to `rollout_func`.
    """

    def __init__(
        self,
        args: Any,
        tools: list[Callable] | None = None,
        environment_factory: Any = None,
        rollout_func: Callable | None = None,
        trainer: Any = None,
    ):
        if rollout_func is not None and (tools or environment_factory is not None):
            raise ValueError(
                "rollout_func replaces generation, so it cannot be combined with tools or environment_factory: "
                "run the tools inside your rollout_func, or drop rollout_func."
            )
        if rollout_func is not None and not callable(rollout_func):
            raise ValueError("rollout_func must be a callable `rollout_func(prompts, trainer) -> dict`.")
        if tools is not None and (not isinstance(tools, (list, tuple)) or not all(callable(t) for t in tools)):
            raise ValueError(
                "tools must be a list of Python functions (sync or async) with type hints and docstrings."
            )
        for feature, value in (("tools", tools), ("environment_factory", environment_factory)):
            if value:
                warn_experimental(feature)
        if rollout_func is not None:
            warn_experimental("rollout_func")
        self.args, self.trainer = args, trainer
        self.tools = list(tools or [])
        self.schemas = tool_schemas(self.tools)
        self.runner = ToolRunner(self.tools)
        self.environments = EnvironmentPool(environment_factory) if environment_factory is not None else None
        if self.environments is not None:  # `close()` the instances when the trainer goes away (or at exit)
            weakref.finalize(self, self.environments.close)
        if self.environments is not None:
            clashes = {tool_name(tool) for tool in self.tools} & {
                schema["function"]["name"] for schemas in self.environments.schemas.values() for schema in schemas
            }
            if clashes:
                raise ValueError(f"Tools and environment methods share the names {sorted(clashes)}: rename them.")
        self.rollout_func = rollout_func
        self._stats: dict[str, float] = {}
        self._environments: list[Any] | None = None

    @property
    def uses_tools(self) -> bool:
        return bool(self.tools) or self.environments is not None

    def reward_functions(self) -> list[Callable]:
        """Extra reward functions: `get_reward()` of the environments that define it (weight 1 each)."""
        if self.environments is None:
            return []
        return [self.environments.reward_function(name) for name in self.environments.reward_names()]

    # ----------------------------------------------------------------------------------------------- rollout
    def prepare(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The rows to render: environments reset (their text in the prompt), the tool schemas in `tools`. The
        batch's environments are kept for `generate` and the rewards."""
        self._environments = None
        if not self.uses_tools:
            return rows
        if self.environments is not None:
            rows, self._environments = self.environments.start(rows)
        prepared = []
        for row in rows:
            if not is_conversational({"prompt": row.get("prompt")}):
                raise ValueError(
                    "Tool calling needs conversational prompts (a list of {'role', 'content'} messages), got "
                    f"{row.get('prompt')!r}. Convert the prompts, e.g. [{{'role': 'user', 'content': prompt}}]."
                )
            prepared.append({**row, "tools": [*(row.get("tools") or []), *self.schemas]})
        return prepared

    def generate(
        self, rollout: Any, rows: list[dict[str, Any]], prompt_ids: list[list[int]], num_generations: int
    ) -> AgentOutput:
        """The completions of `rows` (already `prepare`d and tokenized into `prompt_ids`) for a
        [`~trl.trainer.rollout_engine.Rollout`]: its `generate(prompt_ids, num_generations, max_tokens)` samples
        each turn (its backend, on its random stream), its `processing_class` renders and parses the turns."""
        if self.rollout_func is not None:
            return self._user_rollout(rows, rollout.eos_token_ids)
        environments = self._environments
        tools = None
        if environments is not None:
            own = {tool_name(tool): tool for tool in self.tools}
            tools = [{**own, **{tool_name(t): t for t in environment_tools(env)}} for env in environments]
        result = run_tool_loop(
            rollout.processing_class,
            [row["prompt"] for row in rows],
            prompt_ids,
            rollout.generate,
            self.runner,
            num_generations=num_generations,
            max_completion_length=self.args.max_completion_length,
            max_iterations=getattr(self.args, "max_tool_calling_iterations", None),
            eos_token_ids=rollout.eos_token_ids,
            tools_per_rollout=tools,
            schemas_per_rollout=[row["tools"] for row in rows],
            chat_template_kwargs=self.args.chat_template_kwargs,
        )
        self._stats = {
            "tools/call_frequency": result.tool_calls / max(len(rows), 1),
            "tools/failure_frequency": result.tool_failures / result.tool_calls if result.tool_calls else 0.0,
            "tools/malformed_frequency": result.malformed / max(len(rows), 1),
            "tools/mean_iterations": sum(result.iterations) / max(len(rows), 1),
        }
        columns = {"environments": environments} if environments is not None else {}
        return AgentOutput(
            list(prompt_ids),
            result.completion_ids,
            result.truncated,
            result.sampler_logps,
            result.tool_mask,
            result.completions,
            columns,
        )

    def failed_rows(self, count: int) -> list[bool]:
        """Which rollouts of the batch failed (an environment raised in `reset()` or `get_reward()`); call after
        scoring."""
        if self.environments is None or self._environments is None:
            return [False] * count
        return self.environments.failed_rows(self._environments)

    def _user_rollout(self, rows: list[dict[str, Any]], eos_token_ids: list[int]) -> AgentOutput:
        prompts = [row["prompt"] for row in rows]
        output = validate_rollout_output(
            self.rollout_func(prompts, self.trainer), len(prompts), self.args.max_completion_length
        )
        completion_ids = output.pop("completion_ids")
        eos = set(eos_token_ids)
        truncated = [not ids or ids[-1] not in eos for ids in completion_ids]
        extra = {key: value for key, value in output.items() if key not in ("prompt_ids", "logprobs", "tool_mask")}
        return AgentOutput(
            output["prompt_ids"],
            completion_ids,
            truncated,
            output.get("logprobs"),
            output.get("tool_mask"),
            None,
            extra,
        )

    # ------------------------------------------------------------------------------------------- afterwards
    def finish(
        self, rollout: Any, output: AgentOutput, tensors: dict[str, torch.Tensor], rewards_B_F: torch.Tensor, mode: str
    ) -> torch.Tensor:
        """After scoring: mask the tool glue and the failed rollouts out of the loss, give failed rollouts no reward
        (NaN, hence a zero advantage) and log the batch's metrics. Returns the rewards.

        `tensors["completion_mask"]` becomes the mask of the trained tokens (the model's own, in rollouts that did
        not fail); `tensors["completion_attention_mask"]` keeps every real completion token, which the log-prob
        forward passes attend to; `tensors["tool_mask"]` is the mask of the model's tokens."""
        mask_B_C = tensors["completion_mask"]
        failed_B = torch.tensor(self.failed_rows(mask_B_C.shape[0]), dtype=torch.bool, device=mask_B_C.device)
        if output.tool_mask is not None or failed_B.any():
            width = mask_B_C.shape[1]
            lengths_B = tensors["completion_lengths"]
            tensors["completion_attention_mask"] = (
                torch.arange(width, device=lengths_B.device) < lengths_B[:, None]
            ).long()
        if output.tool_mask is not None:
            tool_mask_B_C = torch.zeros_like(mask_B_C)
            for row, values in enumerate(output.tool_mask):
                tool_mask_B_C[row, : len(values)] = torch.as_tensor(values, dtype=mask_B_C.dtype)
            tensors["tool_mask"] = tool_mask_B_C
            mask_B_C = mask_B_C * tool_mask_B_C
        tensors["completion_mask"] = mask_B_C * (~failed_B).long()[:, None]
        failed_global_B = rollout.accelerator.gather(failed_B)
        if failed_global_B.any():
            rewards_B_F = rewards_B_F.clone()
            rewards_B_F[failed_global_B] = float("nan")
        for name, value in self._stats.items():
            rollout.log_metric(name, value, mode)
        if self.environments is not None:
            rollout.log_metric("environments/failed_rollouts", int(failed_global_B.sum()), mode)
        self._stats = {}
        return rewards_B_F

    def close(self) -> None:
        if self.environments is not None:
            self.environments.close()


# ------------------------------------------------------------------------------------------- trainer side
AGENT_FEATURES = ("tools", "rollout_func", "environment_factory")


def check_agent_features(args: Any, features: dict[str, Any], train_dataset: Any) -> None:
    """The checks of the agent arguments that need no model (a trainer's `_validate`), with the fix in each error."""
    tools, rollout_func, environment_factory = (features.get(name) for name in AGENT_FEATURES)
    iterations = getattr(args, "max_tool_calling_iterations", None)
    if iterations is not None and not tools and environment_factory is None:
        raise ValueError("max_tool_calling_iterations only applies with tools or environment_factory: unset it.")
    if iterations is not None and iterations < 1:
        raise ValueError(f"max_tool_calling_iterations must be at least 1 (or None), got {iterations}.")
    if rollout_func is not None and (tools or environment_factory is not None):
        raise ValueError(
            "rollout_func replaces generation, so it cannot be combined with tools or environment_factory: run the "
            "tools inside your rollout_func, or drop rollout_func."
        )
    if train_dataset is None and environment_factory is not None and args.max_steps <= 0:
        raise ValueError(
            "Without a train_dataset the environments' reset() supplies the prompts and the run has no length: set "
            "max_steps (e.g. max_steps=100), or pass a train_dataset."
        )


def build_agent(args: Any, features: dict[str, Any], trainer: Any = None) -> AgentRollout | None:
    """The [`AgentRollout`] of a trainer's agent arguments, or `None` when none is set."""
    if all(features.get(name) is None for name in AGENT_FEATURES):
        return None
    return AgentRollout(
        args,
        tools=features.get("tools"),
        environment_factory=features.get("environment_factory"),
        rollout_func=features.get("rollout_func"),
        trainer=trainer,
    )


def with_environment_rewards(
    reward_funcs: Any, reward_processing_classes: Any, args: Any, agent: AgentRollout | None
) -> tuple[list, Any]:
    """The reward functions (and their processing classes) with the environments' `get_reward()` sources appended,
    weight 1 each (added to `args.reward_weights` when it is set)."""
    funcs = [] if reward_funcs is None else list(reward_funcs) if isinstance(reward_funcs, list) else [reward_funcs]
    extra = agent.reward_functions() if agent is not None else []
    if not funcs and not extra:
        raise ValueError(
            "No reward source: pass reward_funcs, or give the environment class a `get_reward(self) -> float` method."
        )
    if not extra:
        return reward_funcs, reward_processing_classes
    if args.reward_weights is not None and len(args.reward_weights) == len(funcs):
        args.reward_weights = [*args.reward_weights, *[1.0] * len(extra)]
    if reward_processing_classes is not None:
        classes = (
            reward_processing_classes if isinstance(reward_processing_classes, list) else [reward_processing_classes]
        )
        reward_processing_classes = [*classes, *[None] * len(extra)]
    return funcs + extra, reward_processing_classes


def environment_prompts() -> Any:
    """An endless streaming dataset of empty user prompts, for environments whose `reset()` supplies the prompt."""
    from datasets import IterableDataset

    def rows():
        while True:
            yield {"prompt": [{"role": "user", "content": ""}]}

    return IterableDataset.from_generator(rows)
