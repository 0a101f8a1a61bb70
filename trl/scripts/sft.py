# /// script
# dependencies = [
#     "trl",
#     "peft",
# ]
# ///
"""
Supervised fine-tuning from the command line: `trl sft ...` or `python trl/scripts/sft.py ...`.

```bash
trl sft \
    --model_name_or_path Qwen/Qwen2.5-0.5B \
    --dataset_name trl-lib/Capybara \
    --learning_rate 2.0e-5 \
    --per_device_train_batch_size 2 \
    --gradient_accumulation_steps 8 \
    --output_dir Qwen2.5-0.5B-SFT

# LoRA, on 2 GPUs with DeepSpeed ZeRO-2
trl sft --config sft.yaml --use_peft --lora_target_modules all-linear --accelerate_config zero2 --num_processes 2
```
"""

from __future__ import annotations

from trl.scripts.utils import make_training_parser, parse_script_args, run_training


COMMAND = "sft"
DESCRIPTION = "Supervised fine-tuning (SFTTrainer) on a language-modeling or prompt-completion dataset."


def make_parser(subparsers=None, prog: str | None = None):
    """
    Parser of the `sft` script: `(ScriptArguments, SFTConfig, ModelConfig, DatasetMixtureConfig)`.

    Args:
        subparsers (`argparse._SubParsersAction` or `None`, *optional*, defaults to `None`):
            When given (created with `parser_class=TrlParser`), `sft` is added to them.
        prog (`str` or `None`, *optional*, defaults to `None`):
            Program name shown in the usage line of a standalone parser.
    """
    from trl.trainer.sft_config import SFTConfig

    return make_training_parser(COMMAND, DESCRIPTION, SFTConfig, subparsers, prog)


def main(script_args, training_args, model_args, dataset_args) -> None:
    """Train with [`SFTTrainer`], save the model and optionally push it to the Hub."""
    from trl.trainer.sft_trainer import SFTTrainer

    run_training(SFTTrainer, script_args, training_args, model_args, dataset_args)


if __name__ == "__main__":
    main(*parse_script_args(make_parser()))
