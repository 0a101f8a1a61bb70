# /// script
# dependencies = [
#     "trl",
#     "peft",
# ]
# ///
"""
PPO from the command line: `trl ppo ...` or `python trl/scripts/ppo.py ...`.

```bash
trl ppo \
    --model_name_or_path EleutherAI/pythia-1b-deduped \
    --reward_model_path cleanrl/EleutherAI_pythia-1b-deduped__reward__tldr \
    --dataset_name trl-lib/tldr \
    --response_length 53 \
    --missing_eos_penalty 1.0 \
    --output_dir pythia-1b-PPO
```

The policy is `--model_name_or_path`; the reward model and the value model are both loaded from
`--reward_model_path` (sequence classifiers with one label), as in the reference script. The dataset needs a `prompt`
column. `--config ppo.yaml` reads the same arguments from YAML.
"""

from __future__ import annotations

from typing import Any

from trl.scripts.training_script import TrainingScript, run_training
from trl.scripts.utils import parse_script_args


COMMAND = "ppo"
DESCRIPTION = "Proximal Policy Optimization (PPOTrainer) with a reward model and a value model on prompt-only data."

SCRIPT = TrainingScript(COMMAND, DESCRIPTION, "PPOConfig", "PPOTrainer")
# `make_parser()`: `(ScriptArguments, PPOConfig, ModelConfig, DatasetMixtureConfig)`.
make_parser = SCRIPT.make_parser


def main(script_args: Any, training_args: Any, model_args: Any, dataset_args: Any = None) -> Any:
    """Train with the reward and value models of `--reward_model_path`, save the policy, optionally push it."""
    from trl.trainer.ppo_trainer import PPOTrainer

    return run_training(
        PPOTrainer,
        script_args,
        training_args,
        model_args,
        dataset_args,
        processing_class=None,
        ref_model=None,
        reward_model=training_args.reward_model_path,
        value_model=training_args.reward_model_path,
    )


if __name__ == "__main__":
    main(*parse_script_args(make_parser()))
