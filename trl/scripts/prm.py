# /// script
# dependencies = [
#     "trl",
#     "peft",
# ]
# ///
"""
Process reward modelling from the command line: `trl prm ...` or `python trl/scripts/prm.py ...`.

The model is loaded with `AutoModelForTokenClassification(num_labels=2)`; with `--use_peft` the LoRA task type
defaults to `TOKEN_CLS` and the classification head is trained in full. The dataset must be standard stepwise
supervision (`prompt`, `completions`, `labels`).

```bash
trl prm \
    --model_name_or_path Qwen/Qwen2-0.5B \
    --dataset_name trl-lib/math_shepherd \
    --learning_rate 1.0e-5 \
    --per_device_train_batch_size 8 \
    --num_train_epochs 1 \
    --output_dir Qwen2-0.5B-PRM

# LoRA
trl prm --config prm.yaml --use_peft --lora_r 32 --lora_alpha 16 --learning_rate 1.0e-4
```
"""

from __future__ import annotations

from trl.scripts.parser import parse_script_args
from trl.scripts.training_script import script_entry_points


# `make_parser()`: `(ScriptArguments, PRMConfig, ModelConfig, DatasetMixtureConfig)`; `main(...)` trains a [`PRMTrainer`].
COMMAND, DESCRIPTION, make_parser, main = script_entry_points("prm")

if __name__ == "__main__":
    main(*parse_script_args(make_parser()))
