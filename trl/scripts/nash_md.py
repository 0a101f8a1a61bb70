# /// script
# dependencies = [
#     "trl",
#     "peft",
# ]
# ///
"""
NashMD from the command line: `trl nash_md ...` (also `trl nash-md`) or `python trl/scripts/nash_md.py ...`.

```bash
trl nash_md \
    --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \
    --dataset_name trl-lib/ultrafeedback-prompt \
    --reward_model_path trl-lib/Qwen2-0.5B-Reward \
    --output_dir Qwen2.5-0.5B-NashMD
```

Compare completions with exactly one of `--reward_funcs` / `--reward_model_name_or_path` (as for `trl grpo`),
`--reward_model_path`, or `--judge` (`pair_rm`, `openai`, `hf`, or `reward_model` with `--reward_model_path`).
"""

from __future__ import annotations

from trl.scripts.grpo import GRPOScriptArguments
from trl.scripts.online_dpo import trainer_kwargs
from trl.scripts.training_script import TrainingScript
from trl.scripts.utils import parse_script_args


COMMAND = "nash_md"
DESCRIPTION = "Nash-MD (NashMDTrainer): policy against geometric-mixture samples."


SCRIPT = TrainingScript(
    COMMAND, DESCRIPTION, "NashMDConfig", "NashMDTrainer", script_args_class=GRPOScriptArguments,
    trainer_kwargs=trainer_kwargs,
)  # fmt: skip
make_parser, main = SCRIPT.make_parser, SCRIPT.main


if __name__ == "__main__":
    main(*parse_script_args(make_parser()))
