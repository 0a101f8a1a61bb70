"""`TrainingScript`: the `make_parser` / `main` pair that every `trl <method>` training script exposes, built once.

A script module declares what differs (command, description, config and trainer classes, a LoRA task type, extra
script arguments, extra trainer arguments) and exports the two functions the CLI and downstream code import:

```python
SCRIPT = TrainingScript("dpo", "Direct Preference Optimization ...", "DPOConfig", "DPOTrainer")
make_parser, main = SCRIPT.make_parser, SCRIPT.main
```
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def _import(module_name: str, attribute: str) -> Any:
    # Imported when used, so `trl --help` never imports a trainer.
    return getattr(importlib.import_module(module_name), attribute)


@dataclass(frozen=True)
class TrainingScript:
    """
    One training command: its parser and its `main`.

    Args:
        command (`str`):
            The `trl` subcommand, e.g. `"dpo"`.
        description (`str`):
            One-line description shown in `--help`.
        config (`str`):
            Name of the config class in `trl.trainer.<command>_config`, e.g. `"DPOConfig"`.
        trainer (`str`):
            Name of the trainer class in `trl.trainer.<command>_trainer`, e.g. `"DPOTrainer"`.
        lora_task_type (`str` or `None`, *optional*, defaults to `None`):
            Default `--lora_task_type` (e.g. `"SEQ_CLS"` for reward models); `None` keeps `CAUSAL_LM`.
        script_args_class (`type` or `None`, *optional*, defaults to `None`):
            A [`ScriptArguments`] subclass with the command's own arguments (e.g. GRPO's `--reward_funcs`).
        trainer_kwargs (`Callable` or `None`, *optional*, defaults to `None`):
            Builds extra trainer keyword arguments from the parsed script arguments (e.g. `reward_funcs`).
    """

    command: str
    description: str
    config: str
    trainer: str
    lora_task_type: str | None = None
    script_args_class: type | None = None
    trainer_kwargs: Callable[[Any], dict[str, Any]] | None = None

    def make_parser(self, subparsers: Any = None, prog: str | None = None):
        """
        Parser of the script: `(ScriptArguments, <Config>, ModelConfig, DatasetMixtureConfig)`.

        Args:
            subparsers (`argparse._SubParsersAction` or `None`, *optional*, defaults to `None`):
                When given (created with `parser_class=TrlParser`), the command is added to them.
            prog (`str` or `None`, *optional*, defaults to `None`):
                Program name shown in the usage line of a standalone parser.
        """
        from .utils import make_training_parser

        return make_training_parser(
            self.command,
            self.description,
            _import(f"trl.trainer.{self.command}_config", self.config),
            subparsers,
            prog,
            lora_task_type=self.lora_task_type,
            script_args_class=self.script_args_class,
        )

    def main(self, script_args: Any, training_args: Any, model_args: Any, dataset_args: Any = None) -> Any:
        """
        Train, save the model and optionally push it to the Hub.

        Args:
            script_args ([`ScriptArguments`]):
                Dataset arguments (and the command's own, e.g. rewards).
            training_args:
                The trainer configuration.
            model_args ([`ModelConfig`]):
                Model to load, dtype, LoRA and quantization options.
            dataset_args ([`DatasetMixtureConfig`] or `None`, *optional*, defaults to `None`):
                A dataset mixture (used instead of `dataset_name` when it lists datasets).

        Returns:
            The trained trainer.
        """
        from .utils import run_training

        extra = self.trainer_kwargs(script_args) if self.trainer_kwargs is not None else {}
        trainer_class = _import(f"trl.trainer.{self.command}_trainer", self.trainer)
        return run_training(trainer_class, script_args, training_args, model_args, dataset_args, **extra)
