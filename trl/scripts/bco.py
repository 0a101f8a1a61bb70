# /// script
# dependencies = [
#     "trl",
#     "peft",
# ]
# ///
"""
Binary Classifier Optimization from the command line: `trl bco ...` or `python trl/scripts/bco.py ...`.

```bash
trl bco \
    --model_name_or_path Qwen/Qwen2-0.5B-Instruct \
    --dataset_name trl-lib/kto-mix-14k \
    --learning_rate 5.0e-7 \
    --per_device_train_batch_size 8 \
    --gradient_accumulation_steps 4 \
    --output_dir Qwen2-0.5B-BCO
```

Underlying distribution matching needs an embedding function, which a command line cannot pass: use
`examples/scripts/bco.py --embedding_model ...` or build the [`BCOTrainer`] in Python.
"""

from __future__ import annotations

from trl.scripts.utils import make_training_parser, parse_script_args, run_training


COMMAND = "bco"
DESCRIPTION = "Binary Classifier Optimization (BCOTrainer) on unpaired (or paired) preference data."


def make_parser(subparsers=None, prog: str | None = None):
    """
    Parser of the `bco` script: `(ScriptArguments, BCOConfig, ModelConfig, DatasetMixtureConfig)`.

    Args:
        subparsers (`argparse._SubParsersAction` or `None`, *optional*, defaults to `None`):
            When given (created with `parser_class=TrlParser`), `bco` is added to them.
        prog (`str` or `None`, *optional*, defaults to `None`):
            Program name shown in the usage line of a standalone parser.
    """
    from trl.trainer.bco_config import BCOConfig

    return make_training_parser(COMMAND, DESCRIPTION, BCOConfig, subparsers, prog)


def main(script_args, training_args, model_args, dataset_args) -> None:
    """Train with [`BCOTrainer`], save the model and optionally push it to the Hub."""
    from trl.trainer.bco_trainer import BCOTrainer

    run_training(BCOTrainer, script_args, training_args, model_args, dataset_args)


if __name__ == "__main__":
    main(*parse_script_args(make_parser()))
