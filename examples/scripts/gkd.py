# /// script
# dependencies = [
#     "trl",
#     "peft",
# ]
# ///
"""
Knowledge distillation example (gkd). It runs the same code as `trl gkd` (`trl/scripts/gkd.py`); copy that file
to customise the training loop. The teacher must share the student's tokenizer.

```bash
python examples/scripts/gkd.py \
    --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \
    --teacher_model_name_or_path Qwen/Qwen2.5-1.5B-Instruct \
    --dataset_name trl-lib/chatbot_arena_completions \
    --learning_rate 2e-5 \
    --per_device_train_batch_size 4 \
    --output_dir Qwen2.5-0.5B-gkd

# Or with uv, no install needed: uv run examples/scripts/gkd.py ...
```
"""

from trl.scripts.gkd import main, make_parser
from trl.scripts.utils import parse_script_args


if __name__ == "__main__":
    main(*parse_script_args(make_parser(prog="gkd.py")))
