# /// script
# dependencies = [
#     "trl",
#     "peft",
# ]
# ///
"""
Supervised fine-tuning from the command line: `trl sft ...` or `python trl/scripts/sft.py ...`.

```bash
trl sft \
    --model_name_or_path Qwen/Qwen2.5-0.5B \
    --dataset_name trl-lib/Capybara \
    --learning_rate 2.0e-5 \
    --per_device_train_batch_size 2 \
    --gradient_accumulation_steps 8 \
    --output_dir Qwen2.5-0.5B-SFT

# LoRA, on 2 GPUs with DeepSpeed ZeRO-2
trl sft --config sft.yaml --use_peft --lora_target_modules all-linear --accelerate_config zero2 --num_processes 2
```
"""

from __future__ import annotations

from trl.scripts.training_script import TrainingScript
from trl.scripts.utils import parse_script_args


DESCRIPTION = "Supervised fine-tuning (SFTTrainer) on a language-modeling or prompt-completion dataset."
# `make_parser()`: `(ScriptArguments, SFTConfig, ModelConfig, DatasetMixtureConfig)`; `main(...)` trains a [`SFTTrainer`].
SCRIPT = TrainingScript("sft", DESCRIPTION, "SFTConfig", "SFTTrainer")
COMMAND, make_parser, main = SCRIPT.command, SCRIPT.make_parser, SCRIPT.main


if __name__ == "__main__":
    main(*parse_script_args(make_parser()))
