# /// script
# dependencies = [
#     "trl",
#     "peft",
#     "math-verify",
# ]
# ///
"""
RLOO example. It runs the same code as `trl rloo` (`trl/scripts/rloo.py`); copy that file to customise it.

```bash
python examples/scripts/rloo.py \
    --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \
    --dataset_name trl-lib/DeepMath-103K \
    --reward_funcs accuracy_reward \
    --num_generations 4 \
    --beta 0.05 \
    --max_completion_length 1024 \
    --output_dir Qwen2.5-0.5B-RLOO

# LoRA: the reference model is the base model with the adapters disabled (no second copy in memory)
python examples/scripts/rloo.py --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \
    --dataset_name trl-lib/DeepMath-103K --reward_funcs accuracy_reward \
    --use_peft --lora_target_modules all-linear --output_dir Qwen2.5-0.5B-RLOO-LoRA
```
"""

from trl.scripts.rloo import main, make_parser
from trl.scripts.utils import parse_script_args


if __name__ == "__main__":
    main(*parse_script_args(make_parser(prog="rloo.py")))
