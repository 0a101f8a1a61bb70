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
from typing import TYPE_CHECKING, Any

from .cli_checks import report_user_errors, resolve_resume_from_checkpoint
from .dataset_mixture import DatasetMixtureConfig, get_split, load_dataset_from_args
from .parser import TrlParser


if TYPE_CHECKING:
    from ..trainer.model_config import ModelConfig
    from .utils import ScriptArguments


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
        extra = self.trainer_kwargs(script_args) if self.trainer_kwargs is not None else {}
        trainer_class = _import(f"trl.trainer.{self.command}_trainer", self.trainer)
        return run_training(trainer_class, script_args, training_args, model_args, dataset_args, **extra)


def model_init_kwargs_from_args(model_args: ModelConfig) -> dict[str, Any]:
    """
    Keyword arguments for `from_pretrained` described by a [`ModelConfig`].

    Args:
        model_args ([`ModelConfig`]):
            The model arguments.

    Returns:
        `dict[str, Any]`: `revision`, `dtype`, `attn_implementation` (when set) and, for k-bit loading,
        `quantization_config` and `device_map`.
    """
    from ..trainer.peft_utils import get_kbit_device_map, get_quantization_config

    kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        kwargs["device_map"] = get_kbit_device_map()
    return {key: value for key, value in kwargs.items() if value is not None}


def merge_model_init_kwargs(from_model_args: dict[str, Any], explicit: dict[str, Any] | None) -> dict[str, Any]:
    """
    Combine the kwargs built from a [`ModelConfig`] with a config's explicit `model_init_kwargs`, which win.

    Args:
        from_model_args (`dict[str, Any]`):
            Output of [`model_init_kwargs_from_args`].
        explicit (`dict[str, Any]` or `None`):
            The trainer config's `model_init_kwargs`; its `torch_dtype` counts as `dtype`.
    """
    merged = dict(from_model_args)
    explicit = explicit or {}
    if "torch_dtype" in explicit:
        merged.pop("dtype", None)
    merged.update(explicit)
    return merged


def ignore_bool_buffers(model) -> None:
    """
    Make DDP skip the model's boolean buffers, which it cannot broadcast (`--ignore_bias_buffers`).

    Args:
        model (`torch.nn.Module`):
            The model about to be wrapped in DDP.
    """
    import torch

    model._ddp_params_and_buffers_to_ignore = [
        name for name, buffer in model.named_buffers() if buffer.dtype == torch.bool
    ]


def make_training_parser(
    command: str,
    description: str,
    config_class: type,
    subparsers: Any = None,
    prog: str | None = None,
    lora_task_type: str | None = None,
    script_args_class: type | None = None,
) -> TrlParser:
    """
    Parser of a training script: `(ScriptArguments, <config_class>, ModelConfig, DatasetMixtureConfig)`.

    `command`, `description`, `lora_task_type` and `script_args_class` are those of [`TrainingScript`] (whose
    `make_parser` calls this with the config class imported); `subparsers` and `prog` those of its `make_parser`.
    """
    from ..trainer.model_config import ModelConfig
    from .utils import ScriptArguments

    dataclass_types = (script_args_class or ScriptArguments, config_class, ModelConfig, DatasetMixtureConfig)
    if subparsers is not None:
        parser = subparsers.add_parser(
            command, help=description, description=description, dataclass_types=dataclass_types
        )
    else:
        parser = TrlParser(dataclass_types, prog=prog, description=description)
    if lora_task_type is not None:
        parser.set_defaults(lora_task_type=lora_task_type)
    return parser


def run_training(
    trainer_class: type,
    script_args: ScriptArguments,
    training_args: Any,
    model_args: ModelConfig,
    dataset_args: DatasetMixtureConfig | None = None,
    **trainer_kwargs: Any,
):
    """
    The flow every training script shares: model kwargs from `model_args`, dataset loading, train, save, push.

    `script_args`, `training_args`, `model_args` and `dataset_args` are those of [`TrainingScript.main`], which calls
    this with its trainer class (e.g. `SFTTrainer`) and extra trainer arguments (e.g. `reward_funcs` for GRPO).

    Returns:
        The trained trainer.
    """
    with report_user_errors(f"trl {trainer_class._name.lower()}"):
        return _run_training(trainer_class, script_args, training_args, model_args, dataset_args, **trainer_kwargs)


def _run_training(trainer_class, script_args, training_args, model_args, dataset_args, **trainer_kwargs):
    from trl.trainer.input_checks import check_model_path
    from trl.trainer.peft_utils import get_peft_config

    if model_args.model_name_or_path is None:
        raise ValueError("No model given: set `--model_name_or_path` (a Hub id or a local directory).")
    check_model_path(model_args.model_name_or_path)  # before the dataset loads
    resume_from_checkpoint = resolve_resume_from_checkpoint(training_args.resume_from_checkpoint)
    training_args.model_init_kwargs = merge_model_init_kwargs(
        model_init_kwargs_from_args(model_args), training_args.model_init_kwargs
    )
    dataset = load_dataset_from_args(script_args, dataset_args)
    eval_dataset = None
    if training_args.eval_strategy != "no":
        eval_dataset = get_split(dataset, script_args.dataset_test_split, "--dataset_test_split")
    trainer = trainer_class(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=get_split(dataset, script_args.dataset_train_split, "--dataset_train_split"),
        eval_dataset=eval_dataset,
        peft_config=get_peft_config(model_args),
        **trainer_kwargs,
    )
    if script_args.ignore_bias_buffers:
        ignore_bool_buffers(trainer.model)
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Tear the process group down here rather than at interpreter shutdown, where gloo's threads could be
        # destroyed while still joinable and abort the process after a successful run.
        trainer.accelerator.wait_for_everyone()
        trainer.accelerator.end_training()
    return trainer


# The training scripts that need nothing beyond the shared flow (`trl/scripts/<command>.py` exports their entry
# points): their `--help` description, and their config class, trainer class and default `--lora_task_type`.
_DESCRIPTIONS = {
    "sft": "Supervised fine-tuning (SFTTrainer) on a language-modeling or prompt-completion dataset.",
    "dpo": "Direct Preference Optimization (DPOTrainer) on a paired preference dataset.",
    "kto": "Kahneman-Tversky Optimization (KTOTrainer) on unpaired (or paired) preference data.",
    "bco": "Binary Classifier Optimization (BCOTrainer) on unpaired (or paired) preference data.",
    "cpo": "Contrastive Preference Optimization (CPOTrainer; also SimPO, CPO-SimPO, AlphaPO) on preference pairs.",
    "orpo": "Odds Ratio Preference Optimization (ORPOTrainer): SFT and preference alignment in one stage.",
    "prm": "Process reward modelling (PRMTrainer, token classification) on a stepwise-supervision dataset.",
    "reward": "Reward modelling (RewardTrainer, Bradley-Terry) on a paired preference dataset.",
    "gkd": "Generalized Knowledge Distillation (GKDTrainer) from --teacher_model_name_or_path.",
    "distillation": "On-policy distillation (DistillationTrainer) from --teacher_model_name_or_path.",
}
_CLASSES = {
    "sft": ("SFTConfig", "SFTTrainer", None),
    "dpo": ("DPOConfig", "DPOTrainer", None),
    "kto": ("KTOConfig", "KTOTrainer", None),
    "bco": ("BCOConfig", "BCOTrainer", None),
    "cpo": ("CPOConfig", "CPOTrainer", None),
    "orpo": ("ORPOConfig", "ORPOTrainer", None),
    "prm": ("PRMConfig", "PRMTrainer", "TOKEN_CLS"),
    "reward": ("RewardConfig", "RewardTrainer", "SEQ_CLS"),
    "gkd": ("GKDConfig", "GKDTrainer", None),
    "distillation": ("DistillationConfig", "DistillationTrainer", None),
}


def script_entry_points(command: str) -> tuple[str, str, Callable, Callable]:
    """
    The `(COMMAND, DESCRIPTION, make_parser, main)` of the training script `trl/scripts/<command>.py`.

    Args:
        command (`str`):
            A command of the shared-flow table, e.g. `"dpo"`.
    """
    config, trainer, lora_task_type = _CLASSES[command]
    script = TrainingScript(command, _DESCRIPTIONS[command], config, trainer, lora_task_type=lora_task_type)
    return script.command, script.description, script.make_parser, script.main
