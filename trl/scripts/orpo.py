# /// script
# dependencies = [
#     "trl",
#     "peft",
# ]
# ///
"""
Odds Ratio Preference Optimization from the command line: `trl orpo ...` or `python trl/scripts/orpo.py ...`.

ORPO fine-tunes and aligns in one stage (no reference model, no prior SFT step):

```bash
trl orpo \
    --model_name_or_path Qwen/Qwen2.5-0.5B \
    --dataset_name trl-lib/ultrafeedback_binarized \
    --learning_rate 8.0e-6 \
    --beta 0.1 \
    --per_device_train_batch_size 2 \
    --gradient_accumulation_steps 8 \
    --output_dir Qwen2.5-0.5B-ORPO

# LoRA
trl orpo --config orpo.yaml --use_peft --lora_r 16 --lora_alpha 32
```
"""

from __future__ import annotations

from trl.scripts.training_script import TrainingScript
from trl.scripts.utils import parse_script_args


DESCRIPTION = "Odds Ratio Preference Optimization (ORPOTrainer): SFT and preference alignment in one stage."
# `make_parser()`: `(ScriptArguments, ORPOConfig, ModelConfig, DatasetMixtureConfig)`; `main(...)` trains a [`ORPOTrainer`].
SCRIPT = TrainingScript("orpo", DESCRIPTION, "ORPOConfig", "ORPOTrainer")
COMMAND, make_parser, main = SCRIPT.command, SCRIPT.make_parser, SCRIPT.main


if __name__ == "__main__":
    main(*parse_script_args(make_parser()))
