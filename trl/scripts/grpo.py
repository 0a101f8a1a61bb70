# /// script
# dependencies = [
#     "trl",
#     "peft",
#     "math-verify",
# ]
# ///
"""
GRPO from the command line: `trl grpo ...` or `python trl/scripts/grpo.py ...`.

```bash
trl grpo \
    --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \
    --dataset_name trl-lib/DeepMath-103K \
    --reward_funcs accuracy_reward think_format_reward \
    --num_generations 8 \
    --max_completion_length 1024 \
    --output_dir Qwen2.5-0.5B-GRPO

# A reward model and a reward function of your own (a dotted import path), generation on a vLLM server
trl grpo --config grpo.yaml --reward_model_name_or_path my-org/my-reward-model \
    --reward_funcs my_package.rewards.length_reward --use_vllm --vllm_mode server
```

`--reward_funcs` takes any mix of:

- the names of `trl.rewards` functions: `accuracy_reward`, `reasoning_accuracy_reward`, `think_format_reward`,
  `get_soft_overlong_punishment` (built with `max_completion_len=1280, soft_punish_cache=256`);
- dotted import paths of reward functions, e.g. `my_package.rewards.length_reward`;
- reward models: a Hub id (`org/name`) or a local directory, loaded with `AutoModelForSequenceClassification`.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trl.scripts.training_script import TrainingScript
from trl.scripts.utils import ScriptArguments, parse_script_args


COMMAND = "grpo"
DESCRIPTION = "Group Relative Policy Optimization (GRPOTrainer) on a prompt-only dataset with reward functions."


@dataclass
class GRPOScriptArguments(ScriptArguments):
    """
    Script arguments of `trl grpo` / `trl rloo`: the dataset ones of [`ScriptArguments`], plus the rewards.

    Parameters:
        reward_model_name_or_path (`str` or `None`, *optional*, defaults to `None`):
            A reward model (Hub id or local directory) scoring `prompt + completion`.
        reward_funcs (`list[str]` or `None`, *optional*, defaults to `None`):
            Reward functions: `trl.rewards` names, dotted import paths, or reward model ids / directories.
    """

    reward_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Reward model (Hub id or local directory) scoring prompt + completion."}
    )
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={"help": "Reward functions: trl.rewards names, dotted import paths, or reward model ids / paths."},
    )


def _registry() -> dict[str, Callable[[], Any]]:
    from trl.rewards import (
        accuracy_reward,
        get_soft_overlong_punishment,
        reasoning_accuracy_reward,
        think_format_reward,
    )

    return {
        "accuracy_reward": lambda: accuracy_reward,
        "reasoning_accuracy_reward": lambda: reasoning_accuracy_reward,
        "think_format_reward": lambda: think_format_reward,
        "get_soft_overlong_punishment": lambda: get_soft_overlong_punishment(
            max_completion_len=1280, soft_punish_cache=256
        ),
    }


def resolve_reward_func(name: str) -> Any:
    """
    Turn one `--reward_funcs` entry into what `reward_funcs` of the trainers accepts.

    Args:
        name (`str`):
            A `trl.rewards` name, a local directory or Hub id of a reward model (kept as a string, loaded by the
            trainer), or a dotted import path `module.function`.
    """
    registry = _registry()
    if name in registry:
        return registry[name]()
    if os.path.isdir(name) or "/" in name:
        return name
    module_name, _, attribute = name.rpartition(".")
    if module_name:
        return import_reward_function(module_name, attribute)
    raise ValueError(
        f"Unknown reward function {name!r}: use one of {sorted(registry)}, a dotted import path "
        "(`my_package.rewards.my_reward`), or a reward model id / directory."
    )


def import_reward_function(module_name: str, attribute: str) -> Any:
    """
    `module_name.attribute`, importing the module as `python -m` would: the current directory comes first.

    The `trl` console script's own folder, not the current directory, is the first entry of `sys.path`, so
    `--reward_funcs my_rewards.length_reward` with `my_rewards.py` in the current directory needs it added.

    Raises:
        ValueError: When the module cannot be found (naming where it looked) or has no such attribute.
    """
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is None or not (module_name == error.name or module_name.startswith(error.name + ".")):
            raise  # the reward module itself imports a missing package: keep Python's message
        searched = [path or cwd for path in sys.path if path and os.path.isdir(path)]
        raise ValueError(
            f"Cannot import the reward function {module_name}.{attribute}: no module named {error.name!r} in the "
            f"current directory ({cwd}) nor on the Python path {searched}. Run trl from the folder holding "
            f"{error.name.replace('.', '/')}.py, or add its folder to PYTHONPATH."
        ) from error
    if not hasattr(module, attribute):
        raise ValueError(
            f"Cannot import the reward function {module_name}.{attribute}: module {module_name!r} "
            f"({getattr(module, '__file__', '?')}) has no attribute {attribute!r}."
        )
    return getattr(module, attribute)


def resolve_reward_funcs(reward_funcs: list[str] | None, reward_model_name_or_path: str | None) -> list[Any]:
    """
    All the rewards of a script run: `--reward_model_name_or_path` first, then every `--reward_funcs` entry.

    Raises:
        ValueError: When neither is given.
    """
    funcs = [reward_model_name_or_path] if reward_model_name_or_path else []
    funcs += [resolve_reward_func(name) for name in reward_funcs or []]
    if not funcs:
        raise ValueError("No reward given: set `--reward_funcs` and/or `--reward_model_name_or_path`.")
    return funcs


def reward_trainer_kwargs(script_args: GRPOScriptArguments) -> dict[str, Any]:
    """The `reward_funcs` trainer argument of `trl grpo` / `trl rloo`, from the parsed script arguments."""
    return {"reward_funcs": resolve_reward_funcs(script_args.reward_funcs, script_args.reward_model_name_or_path)}


def reward_script(
    command: str,
    description: str,
    config: str,
    trainer: str,
    trainer_kwargs: Callable[[GRPOScriptArguments], dict[str, Any]] = reward_trainer_kwargs,
) -> TrainingScript:
    """
    A training script with GRPO's script arguments, whose trainer takes `reward_funcs` from `--reward_funcs` /
    `--reward_model_name_or_path` (`trl grpo`, `trl rloo`, and the online preference commands, which pass their own
    `trainer_kwargs`).
    """
    return TrainingScript(
        command, description, config, trainer, script_args_class=GRPOScriptArguments, trainer_kwargs=trainer_kwargs
    )


# `make_parser()`: `(GRPOScriptArguments, GRPOConfig, ModelConfig, DatasetMixtureConfig)`; `main(...)` trains.
SCRIPT = reward_script(COMMAND, DESCRIPTION, "GRPOConfig", "GRPOTrainer")
make_parser, main = SCRIPT.make_parser, SCRIPT.main


if __name__ == "__main__":
    main(*parse_script_args(make_parser()))
