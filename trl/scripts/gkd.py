# /// script
# dependencies = [
#     "trl",
#     "peft",
# ]
# ///
"""
Generalized Knowledge Distillation from the command line: `trl gkd ...` or `python trl/scripts/gkd.py ...`.

Half the micro-batches (`--lmbda`) are the student's own completions; `--beta` interpolates the generalised JSD
between forward (0) and reverse (1) KL, and `--seq_kd` trains the other half on teacher-generated completions:

```bash
trl gkd --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --teacher_model_name_or_path Qwen/Qwen2.5-7B-Instruct \
    --dataset_name trl-lib/chatbot_arena_completions --lmbda 0.5 --beta 0.5 --output_dir Qwen2.5-0.5B-GKD
```
"""

from __future__ import annotations

from trl.scripts.parser import parse_script_args
from trl.scripts.training_script import script_entry_points


# `make_parser()`: `(ScriptArguments, GKDConfig, ModelConfig, DatasetMixtureConfig)`; `main(...)` trains a [`GKDTrainer`].
COMMAND, DESCRIPTION, make_parser, main = script_entry_points("gkd")

if __name__ == "__main__":
    main(*parse_script_args(make_parser()))
