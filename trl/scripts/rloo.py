# /// script
# dependencies = [
#     "trl",
#     "peft",
#     "math-verify",
# ]
# ///
"""
RLOO from the command line: `trl rloo ...` or `python trl/scripts/rloo.py ...`.

```bash
trl rloo \
    --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \
    --dataset_name trl-lib/DeepMath-103K \
    --reward_funcs accuracy_reward \
    --num_generations 4 \
    --beta 0.05 \
    --output_dir Qwen2.5-0.5B-RLOO
```

`--reward_funcs` and `--reward_model_name_or_path` work as for `trl grpo`: `trl.rewards` names
(`accuracy_reward`, `reasoning_accuracy_reward`, `think_format_reward`, `get_soft_overlong_punishment`), dotted
import paths, or reward model ids / directories.
"""

from __future__ import annotations

from trl.scripts.grpo import GRPOScriptArguments, resolve_reward_funcs
from trl.scripts.utils import TrlParser, make_training_parser, parse_script_args, run_training


COMMAND = "rloo"
DESCRIPTION = "REINFORCE Leave-One-Out (RLOOTrainer) on a prompt-only dataset with reward functions."

# The script arguments are GRPO's (dataset + rewards); the name matches the reference's.
RLOOScriptArguments = GRPOScriptArguments


def make_parser(subparsers=None, prog: str | None = None) -> TrlParser:
    """
    Parser of the RLOO script: `(RLOOScriptArguments, RLOOConfig, ModelConfig, DatasetMixtureConfig)`.

    Args:
        subparsers (`argparse._SubParsersAction` or `None`, *optional*, defaults to `None`):
            When given (created with `parser_class=TrlParser`), `rloo` is added to them.
        prog (`str` or `None`, *optional*, defaults to `None`):
            Program name shown in the usage line of a standalone parser.
    """
    from trl.trainer.rloo_config import RLOOConfig

    return make_training_parser(
        COMMAND, DESCRIPTION, RLOOConfig, subparsers, prog, script_args_class=RLOOScriptArguments
    )


def main(script_args, training_args, model_args, dataset_args) -> None:
    """
    Train with [`RLOOTrainer`], save the model and optionally push it to the Hub.

    Args:
        script_args ([`RLOOScriptArguments`]):
            Dataset and reward arguments.
        training_args ([`RLOOConfig`]):
            The trainer configuration.
        model_args ([`ModelConfig`]):
            Model to load, dtype, LoRA and quantization options.
        dataset_args ([`DatasetMixtureConfig`]):
            A dataset mixture (used instead of `dataset_name` when it lists datasets).
    """
    from trl.trainer.rloo_trainer import RLOOTrainer

    reward_funcs = resolve_reward_funcs(script_args.reward_funcs, script_args.reward_model_name_or_path)
    run_training(RLOOTrainer, script_args, training_args, model_args, dataset_args, reward_funcs=reward_funcs)


if __name__ == "__main__":
    main(*parse_script_args(make_parser()))
