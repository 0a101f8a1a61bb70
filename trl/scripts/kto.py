# /// script
# dependencies = [
#     "trl",
#     "peft",
# ]
# ///
"""
Kahneman-Tversky Optimization from the command line: `trl kto ...` or `python trl/scripts/kto.py ...`.

```bash
trl kto \
    --model_name_or_path Qwen/Qwen2-0.5B-Instruct \
    --dataset_name trl-lib/kto-mix-14k \
    --learning_rate 5.0e-7 \
    --per_device_train_batch_size 8 \
    --gradient_accumulation_steps 4 \
    --output_dir Qwen2-0.5B-KTO

# Paired preference data is unpaired automatically; LoRA needs no reference copy (adapters are disabled instead)
trl kto --config kto.yaml --dataset_name trl-lib/ultrafeedback_binarized --use_peft --loss_type apo_zero_unpaired
```
"""

from __future__ import annotations

from trl.scripts.utils import make_training_parser, parse_script_args, run_training


COMMAND = "kto"
DESCRIPTION = "Kahneman-Tversky Optimization (KTOTrainer) on unpaired (or paired) preference data."


def make_parser(subparsers=None, prog: str | None = None):
    """
    Parser of the `kto` script: `(ScriptArguments, KTOConfig, ModelConfig, DatasetMixtureConfig)`.

    Args:
        subparsers (`argparse._SubParsersAction` or `None`, *optional*, defaults to `None`):
            When given (created with `parser_class=TrlParser`), `kto` is added to them.
        prog (`str` or `None`, *optional*, defaults to `None`):
            Program name shown in the usage line of a standalone parser.
    """
    from trl.trainer.kto_config import KTOConfig

    return make_training_parser(COMMAND, DESCRIPTION, KTOConfig, subparsers, prog)


def main(script_args, training_args, model_args, dataset_args) -> None:
    """Train with [`KTOTrainer`], save the model and optionally push it to the Hub."""
    from trl.trainer.kto_trainer import KTOTrainer

    run_training(KTOTrainer, script_args, training_args, model_args, dataset_args)


if __name__ == "__main__":
    main(*parse_script_args(make_parser()))
