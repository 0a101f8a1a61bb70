# /// script
# dependencies = [
#     "trl",
#     "peft",
# ]
# ///
"""
Reward modelling from the command line: `trl reward ...` or `python trl/scripts/reward.py ...`.

The model is loaded with `AutoModelForSequenceClassification(num_labels=1)`; with `--use_peft` the LoRA task type
defaults to `SEQ_CLS` and the score head is trained in full.

```bash
trl reward \
    --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \
    --dataset_name trl-lib/ultrafeedback_binarized \
    --per_device_train_batch_size 8 \
    --learning_rate 1.0e-5 \
    --max_length 2048 \
    --output_dir Qwen2.5-0.5B-Reward

# LoRA
trl reward --config reward.yaml --use_peft --lora_r 32 --lora_alpha 16 --learning_rate 1.0e-4
```
"""

from __future__ import annotations

from trl.scripts.parser import parse_script_args
from trl.scripts.training_script import script_entry_points


# `make_parser()`: `(ScriptArguments, RewardConfig, ModelConfig, DatasetMixtureConfig)`; `main(...)` trains a [`RewardTrainer`].
COMMAND, DESCRIPTION, make_parser, main = script_entry_points("reward")

if __name__ == "__main__":
    main(*parse_script_args(make_parser()))
