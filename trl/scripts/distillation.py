# /// script
# dependencies = [
#     "trl",
#     "peft",
# ]
# ///
"""
On-policy distillation from the command line: `trl distillation ...` or `python trl/scripts/distillation.py ...`.

The student samples every completion by default (`--lmbda 1.0`) and the teacher scores it, in this process or on a
`trl vllm-serve` teacher (`--use_teacher_server --teacher_model_server_url URL`):

```bash
trl distillation --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --teacher_model_name_or_path Qwen/Qwen2.5-7B-Instruct \
    --dataset_name trl-lib/chatbot_arena_completions --loss_top_k 0 --output_dir Qwen2.5-0.5B-distillation
```
"""

from __future__ import annotations

from trl.scripts.parser import parse_script_args
from trl.scripts.training_script import script_entry_points


# `make_parser()`: `(ScriptArguments, DistillationConfig, ModelConfig, DatasetMixtureConfig)`; `main(...)` trains a [`DistillationTrainer`].
COMMAND, DESCRIPTION, make_parser, main = script_entry_points("distillation")

if __name__ == "__main__":
    main(*parse_script_args(make_parser()))
