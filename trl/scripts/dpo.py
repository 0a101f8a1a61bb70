# /// script
# dependencies = [
#     "trl",
#     "peft",
# ]
# ///
"""
Direct Preference Optimization from the command line: `trl dpo ...` or `python trl/scripts/dpo.py ...`.

```bash
trl dpo --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --dataset_name trl-lib/ultrafeedback_binarized \
    --learning_rate 5.0e-7 --per_device_train_batch_size 2 --gradient_accumulation_steps 8 --output_dir Qwen2.5-0.5B-DPO

# MPO (several losses), LoRA (the reference is the base model with the adapter disabled: no copy)
trl dpo --config dpo.yaml --loss_type sigmoid bco_pair sft --loss_weights 0.8 0.2 1.0 --use_peft
```
"""

from __future__ import annotations

from trl.scripts.parser import parse_script_args
from trl.scripts.training_script import script_entry_points


# `make_parser()`: `(ScriptArguments, DPOConfig, ModelConfig, DatasetMixtureConfig)`; `main(...)` trains a [`DPOTrainer`].
COMMAND, DESCRIPTION, make_parser, main = script_entry_points("dpo")

if __name__ == "__main__":
    main(*parse_script_args(make_parser()))
