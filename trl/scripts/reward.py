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

from trl.scripts.utils import make_training_parser, parse_script_args, run_training


COMMAND = "reward"
DESCRIPTION = "Reward modelling (RewardTrainer, Bradley-Terry) on a paired preference dataset."


def make_parser(subparsers=None, prog: str | None = None):
    """
    Parser of the `reward` script: `(ScriptArguments, RewardConfig, ModelConfig, DatasetMixtureConfig)`.

    Args:
        subparsers (`argparse._SubParsersAction` or `None`, *optional*, defaults to `None`):
            When given (created with `parser_class=TrlParser`), `reward` is added to them.
        prog (`str` or `None`, *optional*, defaults to `None`):
            Program name shown in the usage line of a standalone parser.
    """
    from trl.trainer.reward_config import RewardConfig

    return make_training_parser(COMMAND, DESCRIPTION, RewardConfig, subparsers, prog, lora_task_type="SEQ_CLS")


def main(script_args, training_args, model_args, dataset_args) -> None:
    """Train with [`RewardTrainer`], save the model and optionally push it to the Hub."""
    from trl.trainer.reward_trainer import RewardTrainer

    run_training(RewardTrainer, script_args, training_args, model_args, dataset_args)


if __name__ == "__main__":
    main(*parse_script_args(make_parser()))
