# /// script
# dependencies = [
#     "trl",
#     "peft",
# ]
# ///
"""
Contrastive Preference Optimization from the command line: `trl cpo ...` or `python trl/scripts/cpo.py ...`.

```bash
trl cpo \
    --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \
    --dataset_name trl-lib/ultrafeedback_binarized \
    --learning_rate 5.0e-7 \
    --per_device_train_batch_size 2 \
    --gradient_accumulation_steps 8 \
    --output_dir Qwen2.5-0.5B-CPO

# SimPO (no NLL term), CPO-SimPO (with it), AlphaPO (SimPO with a reshaped reward)
trl cpo --config cpo.yaml --loss_type simpo --cpo_alpha 0.0 --simpo_gamma 0.5
trl cpo --config cpo.yaml --loss_type simpo --cpo_alpha 0.5
trl cpo --config cpo.yaml --loss_type alphapo --alpha 0.25
```
"""

from __future__ import annotations

from trl.scripts.utils import make_training_parser, parse_script_args, run_training


COMMAND = "cpo"
DESCRIPTION = "Contrastive Preference Optimization (CPOTrainer; also SimPO, CPO-SimPO, AlphaPO) on preference pairs."


def make_parser(subparsers=None, prog: str | None = None):
    """
    Parser of the `cpo` script: `(ScriptArguments, CPOConfig, ModelConfig, DatasetMixtureConfig)`.

    Args:
        subparsers (`argparse._SubParsersAction` or `None`, *optional*, defaults to `None`):
            When given (created with `parser_class=TrlParser`), `cpo` is added to them.
        prog (`str` or `None`, *optional*, defaults to `None`):
            Program name shown in the usage line of a standalone parser.
    """
    from trl.trainer.cpo_config import CPOConfig

    return make_training_parser(COMMAND, DESCRIPTION, CPOConfig, subparsers, prog)


def main(script_args, training_args, model_args, dataset_args) -> None:
    """Train with [`CPOTrainer`], save the model and optionally push it to the Hub."""
    from trl.trainer.cpo_trainer import CPOTrainer

    run_training(CPOTrainer, script_args, training_args, model_args, dataset_args)


if __name__ == "__main__":
    main(*parse_script_args(make_parser()))
