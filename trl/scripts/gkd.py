# /// script
# dependencies = [
#     "trl",
#     "peft",
# ]
# ///
"""
Distillation from the command line: `trl gkd ...` or `python trl/scripts/gkd.py ...`.

```bash
trl gkd \
    --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \
    --teacher_model_name_or_path Qwen/Qwen2.5-7B-Instruct \
    --dataset_name trl-lib/chatbot_arena_completions \
    --learning_rate 2e-5 \
    --per_device_train_batch_size 4 \
    --output_dir Qwen2.5-0.5B-gkd
```
"""

from __future__ import annotations

from trl.scripts.parser import parse_script_args
from trl.scripts.training_script import script_entry_points


# `make_parser()`: `(ScriptArguments, GKDConfig, ModelConfig, DatasetMixtureConfig)`; `main(...)` trains a [`GKDTrainer`].
COMMAND, DESCRIPTION, make_parser, main = script_entry_points("gkd")

if __name__ == "__main__":
    main(*parse_script_args(make_parser()))
