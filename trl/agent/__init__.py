"""Agent training for the online trainers: tool calling, stateful environments and user rollouts.

- [`tool_calls`](tool_calls.py): tool schemas for the chat template; parsing the calls of a generated turn
  (Qwen/ChatML `<tool_call>` JSON, Llama 3.1 JSON, GPT-OSS Harmony).
- [`tool_runner`](tool_runner.py): running calls concurrently with timeouts; errors become the tool's result.
- [`multi_turn`](multi_turn.py): the generate → parse → run → append loop and its `tool_mask`.
- [`environments`](environments.py): `environment_factory` (per-rollout instances, `reset()`, methods as tools,
  `get_reward()`).
- [`agent_rollout`](agent_rollout.py): what the trainers' rollout calls (`tools`, `environment_factory`,
  `rollout_func`).
"""

from .agent_rollout import AgentOutput, AgentRollout, validate_rollout_output
from .environments import RESERVED_METHODS, EnvironmentPool, environment_tools
from .multi_turn import MultiTurnResult, run_tool_loop, turn_glue
from .tool_calls import ParsedTurn, call_style, parse_harmony, parse_turn, tool_name, tool_schemas
from .tool_runner import DEFAULT_TOOL_TIMEOUT, ToolResult, ToolRunner, format_tool_result, tool_timeout


__all__ = [
    "DEFAULT_TOOL_TIMEOUT",
    "RESERVED_METHODS",
    "AgentOutput",
    "AgentRollout",
    "EnvironmentPool",
    "MultiTurnResult",
    "ParsedTurn",
    "ToolResult",
    "ToolRunner",
    "call_style",
    "environment_tools",
    "format_tool_result",
    "parse_harmony",
    "parse_turn",
    "run_tool_loop",
    "tool_name",
    "tool_schemas",
    "tool_timeout",
    "turn_glue",
    "validate_rollout_output",
]
