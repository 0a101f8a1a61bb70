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

from trl.scripts.utils import make_training_parser, parse_script_args, run_training


COMMAND = "prm"
DESCRIPTION = "Process reward modelling (PRMTrainer, token classification) on a stepwise-supervision dataset."


def make_parser(subparsers=None, prog: str | None = None):
    """
    Parser of the `prm` script: `(ScriptArguments, PRMConfig, ModelConfig, DatasetMixtureConfig)`.

    Args:
        subparsers (`argparse._SubParsersAction` or `None`, *optional*, defaults to `None`):
            When given (created with `parser_class=TrlParser`), `prm` is added to them.
        prog (`str` or `None`, *optional*, defaults to `None`):
            Program name shown in the usage line of a standalone parser.
    """
    from trl.trainer.prm_config import PRMConfig

    return make_training_parser(COMMAND, DESCRIPTION, PRMConfig, subparsers, prog, lora_task_type="TOKEN_CLS")


def main(script_args, training_args, model_args, dataset_args) -> None:
    """Train with [`PRMTrainer`], save the model and optionally push it to the Hub."""
    from trl.trainer.prm_trainer import PRMTrainer

    run_training(PRMTrainer, script_args, training_args, model_args, dataset_args)


if __name__ == "__main__":
    main(*parse_script_args(make_parser()))
