# /// script
# dependencies = [
#     "trl",
#     "peft",
# ]
# ///
"""
Odds Ratio Preference Optimization from the command line: `trl orpo ...` or `python trl/scripts/orpo.py ...`.

ORPO fine-tunes and aligns in one stage (no reference model, no prior SFT step); `--beta` weighs the odds-ratio term
against the NLL:

```bash
trl orpo --model_name_or_path Qwen/Qwen2.5-0.5B --dataset_name trl-lib/ultrafeedback_binarized --learning_rate 8.0e-6 \
    --beta 0.1 --output_dir Qwen2.5-0.5B-ORPO

# LoRA
trl orpo --config orpo.yaml --use_peft --lora_r 16 --lora_alpha 32
```
"""

from __future__ import annotations

from trl.scripts.parser import parse_script_args
from trl.scripts.training_script import script_entry_points


# `make_parser()`: `(ScriptArguments, ORPOConfig, ModelConfig, DatasetMixtureConfig)`; `main(...)` trains a [`ORPOTrainer`].
COMMAND, DESCRIPTION, make_parser, main = script_entry_points("orpo")

if __name__ == "__main__":
    main(*parse_script_args(make_parser()))
