# /// script
# dependencies = [
#     "trl",
#     "peft",
# ]
# ///
"""
Process reward model (PRM) example. It runs the same code as `trl prm` (`trl/scripts/prm.py`); copy that file to
customise the training loop.

```bash
# Full training, one process
python examples/scripts/prm.py \
    --model_name_or_path Qwen/Qwen2-0.5B \
    --dataset_name trl-lib/math_shepherd \
    --learning_rate 1.0e-5 \
    --per_device_train_batch_size 8 \
    --num_train_epochs 1 \
    --output_dir Qwen2-0.5B-PRM

# LoRA (task type TOKEN_CLS, classification head trained in full), on 2 processes
accelerate launch --num_processes 2 examples/scripts/prm.py \
    --model_name_or_path Qwen/Qwen2-0.5B --dataset_name trl-lib/math_shepherd \
    --use_peft --lora_r 32 --lora_alpha 16 --learning_rate 1.0e-4 --output_dir Qwen2-0.5B-PRM-LoRA

# Or with uv, no install needed: uv run examples/scripts/prm.py ...
```
"""

from trl.scripts.prm import main, make_parser
from trl.scripts.utils import parse_script_args


if __name__ == "__main__":
    main(*parse_script_args(make_parser(prog="prm.py")))
