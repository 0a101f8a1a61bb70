# /// script
# dependencies = [
#     "trl",
#     "peft",
# ]
# ///
"""
Supervised fine-tuning example. It runs the same code as `trl sft` (`trl/scripts/sft.py`); copy that file to
customise the training loop.

```bash
# Full fine-tuning, one process
python examples/scripts/sft.py \
    --model_name_or_path Qwen/Qwen2.5-0.5B \
    --dataset_name trl-lib/Capybara \
    --learning_rate 2.0e-5 \
    --per_device_train_batch_size 2 \
    --gradient_accumulation_steps 8 \
    --output_dir Qwen2.5-0.5B-SFT

# LoRA on 8 GPUs with DeepSpeed ZeRO-3 (any `accelerate launch` option works in front of the script)
accelerate launch --config_file trl/accelerate_configs/zero3.yaml examples/scripts/sft.py \
    --model_name_or_path Qwen/Qwen2.5-0.5B --dataset_name trl-lib/Capybara \
    --use_peft --lora_target_modules all-linear --output_dir Qwen2.5-0.5B-SFT-LoRA

# Or with uv, no install needed: uv run examples/scripts/sft.py ...
```
"""

from trl.scripts.sft import main, make_parser
from trl.scripts.utils import parse_script_args


if __name__ == "__main__":
    main(*parse_script_args(make_parser(prog="sft.py")))
