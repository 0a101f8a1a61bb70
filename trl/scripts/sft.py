# /// script
# dependencies = [
#     "trl",
#     "peft",
# ]
# ///
"""
Supervised fine-tuning from the command line: `trl sft ...` or `python trl/scripts/sft.py ...`.

```bash
trl sft --model_name_or_path Qwen/Qwen2.5-0.5B --dataset_name trl-lib/Capybara \
    --learning_rate 2.0e-5 --per_device_train_batch_size 2 --gradient_accumulation_steps 8 --output_dir Qwen2.5-0.5B-SFT

# LoRA, on 2 GPUs with DeepSpeed ZeRO-2
trl sft --config sft.yaml --use_peft --lora_target_modules all-linear --accelerate_config zero2 --num_processes 2
```
"""

from __future__ import annotations

from trl.scripts.parser import parse_script_args
from trl.scripts.training_script import script_entry_points


# `make_parser()`: `(ScriptArguments, SFTConfig, ModelConfig, DatasetMixtureConfig)`; `main(...)` trains a [`SFTTrainer`].
COMMAND, DESCRIPTION, make_parser, main = script_entry_points("sft")

if __name__ == "__main__":
    main(*parse_script_args(make_parser()))
