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

from trl.scripts.grpo import GRPOScriptArguments, reward_script
from trl.scripts.utils import parse_script_args


COMMAND = "rloo"
DESCRIPTION = "REINFORCE Leave-One-Out (RLOOTrainer) on a prompt-only dataset with reward functions."

# The script arguments are GRPO's (dataset + rewards); the name matches the reference's.
RLOOScriptArguments = GRPOScriptArguments


# `make_parser()`: `(RLOOScriptArguments, RLOOConfig, ModelConfig, DatasetMixtureConfig)`; `main(...)` trains.
SCRIPT = reward_script(COMMAND, DESCRIPTION, "RLOOConfig", "RLOOTrainer")
make_parser, main = SCRIPT.make_parser, SCRIPT.main


if __name__ == "__main__":
    main(*parse_script_args(make_parser()))
