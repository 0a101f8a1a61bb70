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

from trl.scripts.utils import make_training_parser, parse_script_args, run_training


COMMAND = "dpo"
DESCRIPTION = "Direct Preference Optimization (DPOTrainer) on a paired preference dataset."


def make_parser(subparsers=None, prog: str | None = None):
    """
    Parser of the `dpo` script: `(ScriptArguments, DPOConfig, ModelConfig, DatasetMixtureConfig)`.

    Args:
        subparsers (`argparse._SubParsersAction` or `None`, *optional*, defaults to `None`):
            When given (created with `parser_class=TrlParser`), `dpo` is added to them.
        prog (`str` or `None`, *optional*, defaults to `None`):
            Program name shown in the usage line of a standalone parser.
    """
    from trl.trainer.dpo_config import DPOConfig

    return make_training_parser(COMMAND, DESCRIPTION, DPOConfig, subparsers, prog)


def main(script_args, training_args, model_args, dataset_args) -> None:
    """Train with [`DPOTrainer`], save the model and optionally push it to the Hub."""
    from trl.trainer.dpo_trainer import DPOTrainer

    run_training(DPOTrainer, script_args, training_args, model_args, dataset_args)


if __name__ == "__main__":
    main(*parse_script_args(make_parser()))
