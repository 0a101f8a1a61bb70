# /// script
# dependencies = [
#     "trl",
#     "peft",
# ]
# ///
"""
Kahneman-Tversky Optimization from the command line: `trl kto ...` or `python trl/scripts/kto.py ...`.

```bash
trl kto --model_name_or_path Qwen/Qwen2-0.5B-Instruct --dataset_name trl-lib/kto-mix-14k \
    --learning_rate 5.0e-7 --per_device_train_batch_size 8 --gradient_accumulation_steps 4 --output_dir Qwen2-0.5B-KTO

# Paired preference data is unpaired automatically; LoRA needs no reference copy (adapters are disabled instead)
trl kto --config kto.yaml --dataset_name trl-lib/ultrafeedback_binarized --use_peft --loss_type apo_zero_unpaired
```
"""

from __future__ import annotations

from trl.scripts.parser import parse_script_args
from trl.scripts.training_script import script_entry_points


# `make_parser()`: `(ScriptArguments, KTOConfig, ModelConfig, DatasetMixtureConfig)`; `main(...)` trains a [`KTOTrainer`].
COMMAND, DESCRIPTION, make_parser, main = script_entry_points("kto")

if __name__ == "__main__":
    main(*parse_script_args(make_parser()))
