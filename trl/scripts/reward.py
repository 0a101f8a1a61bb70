# /// script
# dependencies = [
#     "trl",
#     "peft",
# ]
# ///
"""
Reward modelling from the command line: `trl reward ...` or `python trl/scripts/reward.py ...`.

The model is loaded with `AutoModelForSequenceClassification(num_labels=1)`; with `--use_peft` the LoRA task type
defaults to `SEQ_CLS` and the score head is trained in full.

```bash
trl reward \
    --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \
    --dataset_name trl-lib/ultrafeedback_binarized \
    --per_device_train_batch_size 8 \
    --learning_rate 1.0e-5 \
    --max_length 2048 \
    --output_dir Qwen2.5-0.5B-Reward

# LoRA
trl reward --config reward.yaml --use_peft --lora_r 32 --lora_alpha 16 --learning_rate 1.0e-4
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


COMMAND = "reward"
DESCRIPTION = "Reward modelling (RewardTrainer, Bradley-Terry) on a paired preference dataset."


def make_parser(subparsers=None, prog: str | None = None) -> TrlParser:
    """
    Parser of the reward script: `(ScriptArguments, RewardConfig, ModelConfig, DatasetMixtureConfig)`, with
    `--lora_task_type` defaulting to `SEQ_CLS`.

    Args:
        subparsers (`argparse._SubParsersAction` or `None`, *optional*, defaults to `None`):
            When given (created with `parser_class=TrlParser`), `reward` is added to them.
        prog (`str` or `None`, *optional*, defaults to `None`):
            Program name shown in the usage line of a standalone parser.
    """
    from trl.trainer.reward_config import RewardConfig

    dataclass_types = (ScriptArguments, RewardConfig, ModelConfig, DatasetMixtureConfig)
    if subparsers is not None:
        parser = subparsers.add_parser(
            COMMAND, help=DESCRIPTION, description=DESCRIPTION, dataclass_types=dataclass_types
        )
    else:
        parser = TrlParser(dataclass_types, prog=prog, description=DESCRIPTION)
    parser.set_defaults(lora_task_type="SEQ_CLS")
    return parser


def main(script_args, training_args, model_args, dataset_args) -> None:
    """
    Train with [`RewardTrainer`], save the model and optionally push it to the Hub.

    Args:
        script_args ([`ScriptArguments`]):
            Dataset name, configuration and splits.
        training_args ([`RewardConfig`]):
            The trainer configuration.
        model_args ([`ModelConfig`]):
            Model to load, dtype, LoRA and quantization options.
        dataset_args ([`DatasetMixtureConfig`]):
            A dataset mixture (used instead of `dataset_name` when it lists datasets).
    """
    from trl.trainer.reward_trainer import RewardTrainer

    if model_args.model_name_or_path is None:
        raise ValueError("No model given: set `--model_name_or_path` (a Hub id or a local directory).")
    training_args.model_init_kwargs = merge_model_init_kwargs(
        model_init_kwargs_from_args(model_args), training_args.model_init_kwargs
    )
    dataset = load_dataset_from_args(script_args, dataset_args)
    eval_dataset = None
    if training_args.eval_strategy != "no":
        eval_dataset = get_split(dataset, script_args.dataset_test_split, "--dataset_test_split")
    trainer = RewardTrainer(
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
