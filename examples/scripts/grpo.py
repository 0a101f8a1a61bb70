# /// script
# dependencies = [
#     "trl",
#     "peft",
#     "math-verify",
# ]
# ///
"""
GRPO example. It runs the same code as `trl grpo` (`trl/scripts/grpo.py`); copy that file to customise it.

```bash
# Maths with a correctness reward and a format reward, one process
python examples/scripts/grpo.py \
    --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \
    --dataset_name trl-lib/DeepMath-103K \
    --reward_funcs accuracy_reward think_format_reward \
    --reward_weights 1.0 0.2 \
    --num_generations 8 \
    --max_completion_length 1024 \
    --learning_rate 1e-6 \
    --output_dir Qwen2.5-0.5B-GRPO

# Generation on a vLLM server (start it first on other GPUs: `trl vllm-serve --model Qwen/Qwen2.5-0.5B-Instruct`)
accelerate launch --config_file trl/accelerate_configs/zero2.yaml examples/scripts/grpo.py \
    --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --dataset_name trl-lib/DeepMath-103K \
    --reward_funcs accuracy_reward --use_vllm --vllm_mode server --output_dir Qwen2.5-0.5B-GRPO

# On a laptop CPU with the tiny test model (`python -c "from trl.testing import get_tiny_model_path as p; print(p())"`)
python examples/scripts/grpo.py --model_name_or_path <tiny path> --dataset_name <trl.testing dataset path> \
    --dataset_config standard_prompt_only --reward_funcs think_format_reward --num_generations 4 \
    --per_device_train_batch_size 4 --max_completion_length 16 --max_steps 10 --output_dir tiny-grpo
```
"""

from trl.scripts.grpo import main, make_parser
from trl.scripts.utils import parse_script_args


if __name__ == "__main__":
    main(*parse_script_args(make_parser(prog="grpo.py")))
