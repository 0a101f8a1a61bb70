# /// script
# dependencies = [
#     "trl",
#     "peft",
# ]
# ///
"""
Process reward modelling from the command line: `trl prm ...` or `python trl/scripts/prm.py ...`.

The model is loaded with `AutoModelForTokenClassification(num_labels=2)`; with `--use_peft` the LoRA task type
defaults to `TOKEN_CLS` and the classification head is trained in full. The dataset must be standard stepwise
supervision (`prompt`, `completions`, `labels`).

```bash
trl prm \
    --model_name_or_path Qwen/Qwen2-0.5B \
    --dataset_name trl-lib/math_shepherd \
    --learning_rate 1.0e-5 \
    --per_device_train_batch_size 8 \
    --num_train_epochs 1 \
    --output_dir Qwen2-0.5B-PRM

# LoRA
trl prm --config prm.yaml --use_peft --lora_r 32 --lora_alpha 16 --learning_rate 1.0e-4
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


COMMAND = "prm"
DESCRIPTION = "Process reward modelling (PRMTrainer, token classification) on a stepwise-supervision dataset."


def make_parser(subparsers=None, prog: str | None = None) -> TrlParser:
    """
    Parser of the PRM script: `(ScriptArguments, PRMConfig, ModelConfig, DatasetMixtureConfig)`, with
    `--lora_task_type` defaulting to `TOKEN_CLS`.

    Args:
        subparsers (`argparse._SubParsersAction` or `None`, *optional*, defaults to `None`):
            When given (created with `parser_class=TrlParser`), `prm` is added to them.
        prog (`str` or `None`, *optional*, defaults to `None`):
            Program name shown in the usage line of a standalone parser.
    """
    from trl.trainer.prm_config import PRMConfig

    dataclass_types = (ScriptArguments, PRMConfig, ModelConfig, DatasetMixtureConfig)
    if subparsers is not None:
        parser = subparsers.add_parser(
            COMMAND, help=DESCRIPTION, description=DESCRIPTION, dataclass_types=dataclass_types
        )
    else:
        parser = TrlParser(dataclass_types, prog=prog, description=DESCRIPTION)
    parser.set_defaults(lora_task_type="TOKEN_CLS")
    return parser


def main(script_args, training_args, model_args, dataset_args) -> None:
    """
    Train with [`PRMTrainer`], save the model and optionally push it to the Hub.

    Args:
        script_args ([`ScriptArguments`]):
            Dataset name, configuration and splits.
        training_args ([`PRMConfig`]):
            The trainer configuration.
        model_args ([`ModelConfig`]):
            Model to load, dtype, LoRA and quantization options.
        dataset_args ([`DatasetMixtureConfig`]):
            A dataset mixture (used instead of `dataset_name` when it lists datasets).
    """
    from trl.trainer.prm_trainer import PRMTrainer

    if model_args.model_name_or_path is None:
        raise ValueError("No model given: set `--model_name_or_path` (a Hub id or a local directory).")
    training_args.model_init_kwargs = merge_model_init_kwargs(
        model_init_kwargs_from_args(model_args), training_args.model_init_kwargs
    )
    dataset = load_dataset_from_args(script_args, dataset_args)
    eval_dataset = None
    if training_args.eval_strategy != "no":
        eval_dataset = get_split(dataset, script_args.dataset_test_split, "--dataset_test_split")
    trainer = PRMTrainer(
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
