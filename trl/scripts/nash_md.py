# /// script
# dependencies = [
#     "trl",
#     "peft",
# ]
# ///
"""
Nash-MD from the command line: `trl nash_md ...` (also `trl nash-md`) or `python trl/scripts/nash_md.py ...`.

The policy plays against samples of its geometric mixture with the reference (`--mixture_coef`); completions are
compared as for `trl online_dpo`, here by a judge:

```bash
trl nash_md --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --dataset_name trl-lib/ultrafeedback-prompt \
    --judge pair_rm --output_dir Qwen2.5-0.5B-NashMD
```
"""

from __future__ import annotations

from trl.scripts.online_dpo import online_entry_points
from trl.scripts.utils import parse_script_args


# `make_parser()`: `(GRPOScriptArguments, NashMDConfig, ModelConfig, DatasetMixtureConfig)`; `main(...)` trains.
COMMAND, DESCRIPTION, make_parser, main = online_entry_points("nash_md")

if __name__ == "__main__":
    main(*parse_script_args(make_parser()))
