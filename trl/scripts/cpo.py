# /// script
# dependencies = [
#     "trl",
#     "peft",
# ]
# ///
"""
Contrastive Preference Optimization from the command line: `trl cpo ...` or `python trl/scripts/cpo.py ...`.

```bash
trl cpo --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --dataset_name trl-lib/ultrafeedback_binarized \
    --learning_rate 5.0e-7 --per_device_train_batch_size 2 --gradient_accumulation_steps 8 --output_dir Qwen2.5-0.5B-CPO

# SimPO (no NLL term), CPO-SimPO (with it), AlphaPO (SimPO with a reshaped reward)
trl cpo --config cpo.yaml --loss_type simpo --cpo_alpha 0.0 --simpo_gamma 0.5
trl cpo --config cpo.yaml --loss_type simpo --cpo_alpha 0.5
trl cpo --config cpo.yaml --loss_type alphapo --alpha 0.25
```
"""

from __future__ import annotations

from trl.scripts.parser import parse_script_args
from trl.scripts.training_script import script_entry_points


# `make_parser()`: `(ScriptArguments, CPOConfig, ModelConfig, DatasetMixtureConfig)`; `main(...)` trains a [`CPOTrainer`].
COMMAND, DESCRIPTION, make_parser, main = script_entry_points("cpo")

if __name__ == "__main__":
    main(*parse_script_args(make_parser()))
