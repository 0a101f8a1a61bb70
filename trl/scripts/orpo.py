# /// script
# dependencies = [
#     "trl",
#     "peft",
# ]
# ///
"""
Odds Ratio Preference Optimization from the command line: `trl orpo ...` or `python trl/scripts/orpo.py ...`.

ORPO fine-tunes and aligns in one stage (no reference model, no prior SFT step):

```bash
trl orpo \
    --model_name_or_path Qwen/Qwen2.5-0.5B \
    --dataset_name trl-lib/ultrafeedback_binarized \
    --learning_rate 8.0e-6 \
    --beta 0.1 \
    --per_device_train_batch_size 2 \
    --gradient_accumulation_steps 8 \
    --output_dir Qwen2.5-0.5B-ORPO

# LoRA
trl orpo --config orpo.yaml --use_peft --lora_r 16 --lora_alpha 32
```
"""

from __future__ import annotations

from trl.scripts.utils import make_training_parser, parse_script_args, run_training


COMMAND = "orpo"
DESCRIPTION = "Odds Ratio Preference Optimization (ORPOTrainer): SFT and preference alignment in one stage."


def make_parser(subparsers=None, prog: str | None = None):
    """
    Parser of the `orpo` script: `(ScriptArguments, ORPOConfig, ModelConfig, DatasetMixtureConfig)`.

    Args:
        subparsers (`argparse._SubParsersAction` or `None`, *optional*, defaults to `None`):
            When given (created with `parser_class=TrlParser`), `orpo` is added to them.
        prog (`str` or `None`, *optional*, defaults to `None`):
            Program name shown in the usage line of a standalone parser.
    """
    from trl.trainer.orpo_config import ORPOConfig

    return make_training_parser(COMMAND, DESCRIPTION, ORPOConfig, subparsers, prog)


def main(script_args, training_args, model_args, dataset_args) -> None:
    """Train with [`ORPOTrainer`], save the model and optionally push it to the Hub."""
    from trl.trainer.orpo_trainer import ORPOTrainer

    run_training(ORPOTrainer, script_args, training_args, model_args, dataset_args)


if __name__ == "__main__":
    main(*parse_script_args(make_parser()))
