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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trl.scripts.utils import ScriptArguments, TrlParser, make_training_parser, parse_script_args, run_training


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
        try:
            return getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"Cannot import the reward function {name!r}: {error}.") from error
    raise ValueError(
        f"Unknown reward function {name!r}: use one of {sorted(registry)}, a dotted import path "
        "(`my_package.rewards.my_reward`), or a reward model id / directory."
    )


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


def make_parser(subparsers=None, prog: str | None = None) -> TrlParser:
    """
    Parser of the GRPO script: `(GRPOScriptArguments, GRPOConfig, ModelConfig, DatasetMixtureConfig)`.

    Args:
        subparsers (`argparse._SubParsersAction` or `None`, *optional*, defaults to `None`):
            When given (created with `parser_class=TrlParser`), `grpo` is added to them.
        prog (`str` or `None`, *optional*, defaults to `None`):
            Program name shown in the usage line of a standalone parser.
    """
    from trl.trainer.grpo_config import GRPOConfig

    return make_training_parser(
        COMMAND, DESCRIPTION, GRPOConfig, subparsers, prog, script_args_class=GRPOScriptArguments
    )


def main(script_args, training_args, model_args, dataset_args) -> None:
    """
    Train with [`GRPOTrainer`], save the model and optionally push it to the Hub.

    Args:
        script_args ([`GRPOScriptArguments`]):
            Dataset and reward arguments.
        training_args ([`GRPOConfig`]):
            The trainer configuration.
        model_args ([`ModelConfig`]):
            Model to load, dtype, LoRA and quantization options.
        dataset_args ([`DatasetMixtureConfig`]):
            A dataset mixture (used instead of `dataset_name` when it lists datasets).
    """
    from trl.trainer.grpo_trainer import GRPOTrainer

    reward_funcs = resolve_reward_funcs(script_args.reward_funcs, script_args.reward_model_name_or_path)
    run_training(GRPOTrainer, script_args, training_args, model_args, dataset_args, reward_funcs=reward_funcs)


if __name__ == "__main__":
    main(*parse_script_args(make_parser()))
