# /// script
# dependencies = [
#     "trl",
#     "peft",
# ]
# ///
"""
XPO from the command line: `trl xpo ...` or `python trl/scripts/xpo.py ...`.

Online DPO with an exploration bonus (`--alpha`) on the reference's samples; completions are compared as for
`trl online_dpo`, here by a reward model:

```bash
trl xpo --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --dataset_name trl-lib/ultrafeedback-prompt \
    --reward_model_name_or_path trl-lib/Qwen2-0.5B-Reward --alpha 1e-5 --output_dir Qwen2.5-0.5B-XPO
```
"""

from __future__ import annotations

from trl.scripts.online_dpo import online_entry_points
from trl.scripts.utils import parse_script_args


# `make_parser()`: `(GRPOScriptArguments, XPOConfig, ModelConfig, DatasetMixtureConfig)`; `main(...)` trains.
COMMAND, DESCRIPTION, make_parser, main = online_entry_points("xpo")

if __name__ == "__main__":
    main(*parse_script_args(make_parser()))
