# /// script
# dependencies = [
#     "trl",
#     "peft",
# ]
# ///
"""
Direct Preference Optimization from the command line: `trl dpo ...` or `python trl/scripts/dpo.py ...`.

```bash
trl dpo \
    --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \
    --dataset_name trl-lib/ultrafeedback_binarized \
    --learning_rate 5.0e-7 \
    --per_device_train_batch_size 2 \
    --gradient_accumulation_steps 8 \
    --output_dir Qwen2.5-0.5B-DPO

# MPO (several losses), LoRA (the reference is the base model with the adapter disabled: no copy)
trl dpo --config dpo.yaml --loss_type sigmoid bco_pair sft --loss_weights 0.8 0.2 1.0 --use_peft
```
"""

from __future__ import annotations

from trl.scripts.utils import (
    DatasetMixtureConfig,
    ScriptArguments,
    TrlParser,
    get_split,
    ignore_bool_buffers,
    load_dataset_from_args,
    merge_model_init_kwargs,
    model_init_kwargs_from_args,
    parse_script_args,
)
from trl.trainer.model_config import ModelConfig
from trl.trainer.peft_utils import get_peft_config


COMMAND = "dpo"
DESCRIPTION = "Direct Preference Optimization (DPOTrainer) on a paired preference dataset."


def make_parser(subparsers=None, prog: str | None = None) -> TrlParser:
    """
    Parser of the DPO script: `(ScriptArguments, DPOConfig, ModelConfig, DatasetMixtureConfig)`.

    Args:
        subparsers (`argparse._SubParsersAction` or `None`, *optional*, defaults to `None`):
            When given (created with `parser_class=TrlParser`), `dpo` is added to them.
        prog (`str` or `None`, *optional*, defaults to `None`):
            Program name shown in the usage line of a standalone parser.
    """
    from trl.trainer.dpo_config import DPOConfig

    dataclass_types = (ScriptArguments, DPOConfig, ModelConfig, DatasetMixtureConfig)
    if subparsers is not None:
        return subparsers.add_parser(
            COMMAND, help=DESCRIPTION, description=DESCRIPTION, dataclass_types=dataclass_types
        )
    return TrlParser(dataclass_types, prog=prog, description=DESCRIPTION)


def main(script_args, training_args, model_args, dataset_args) -> None:
    """
    Train with [`DPOTrainer`], save the model and optionally push it to the Hub.

    Args:
        script_args ([`ScriptArguments`]):
            Dataset name, configuration and splits.
        training_args ([`DPOConfig`]):
            The trainer configuration.
        model_args ([`ModelConfig`]):
            Model to load, dtype, LoRA and quantization options.
        dataset_args ([`DatasetMixtureConfig`]):
            A dataset mixture (used instead of `dataset_name` when it lists datasets).
    """
    from trl.trainer.dpo_trainer import DPOTrainer

    if model_args.model_name_or_path is None:
        raise ValueError("No model given: set `--model_name_or_path` (a Hub id or a local directory).")
    training_args.model_init_kwargs = merge_model_init_kwargs(
        model_init_kwargs_from_args(model_args), training_args.model_init_kwargs
    )
    dataset = load_dataset_from_args(script_args, dataset_args)
    eval_dataset = None
    if training_args.eval_strategy != "no":
        eval_dataset = get_split(dataset, script_args.dataset_test_split, "--dataset_test_split")
    trainer = DPOTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=get_split(dataset, script_args.dataset_train_split, "--dataset_train_split"),
        eval_dataset=eval_dataset,
        peft_config=get_peft_config(model_args),
    )
    if script_args.ignore_bias_buffers:
        ignore_bool_buffers(trainer.model)

    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)


if __name__ == "__main__":
    main(*parse_script_args(make_parser()))
