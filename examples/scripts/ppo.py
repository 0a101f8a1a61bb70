# /// script
# dependencies = [
#     "trl",
#     "peft",
# ]
# ///
"""
PPO example. It runs the same code as `trl ppo` (`trl/scripts/ppo.py`); copy that file to customise it.

```bash
python examples/scripts/ppo.py \
    --model_name_or_path EleutherAI/pythia-1b-deduped \
    --reward_model_path cleanrl/EleutherAI_pythia-1b-deduped__reward__tldr \
    --dataset_name trl-lib/tldr \
    --per_device_train_batch_size 16 \
    --gradient_accumulation_steps 4 \
    --num_ppo_epochs 4 \
    --response_length 53 \
    --missing_eos_penalty 1.0 \
    --output_dir pythia-1b-PPO

# LoRA on the policy: the reference is the base model with the adapters disabled (no second copy in memory)
python examples/scripts/ppo.py --model_name_or_path EleutherAI/pythia-1b-deduped \
    --reward_model_path cleanrl/EleutherAI_pythia-1b-deduped__reward__tldr --dataset_name trl-lib/tldr \
    --use_peft --lora_target_modules all-linear --output_dir pythia-1b-PPO-LoRA
```
"""

from trl.scripts.ppo import main, make_parser
from trl.scripts.utils import parse_script_args


if __name__ == "__main__":
    main(*parse_script_args(make_parser(prog="ppo.py")))
