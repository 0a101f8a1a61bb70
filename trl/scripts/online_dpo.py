# /// script
# dependencies = [
#     "trl",
#     "peft",
# ]
# ///
"""
Online DPO from the command line: `trl online_dpo ...` (also `trl online-dpo`) or `python trl/scripts/online_dpo.py ...`.

```bash
trl online_dpo --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --dataset_name trl-lib/ultrafeedback-prompt \
    --reward_model_path trl-lib/Qwen2-0.5B-Reward --output_dir Qwen2.5-0.5B-OnlineDPO
```

The online preference commands (`online_dpo`, `nash_md`, `xpo`) compare completions with exactly one of
`--reward_funcs` / `--reward_model_name_or_path` (as for `trl grpo`), `--reward_model_path`, or `--judge`
(`pair_rm`, `openai`, `hf`, or `reward_model` with `--reward_model_path`).
"""

from __future__ import annotations

from collections.abc import Callable

from trl.scripts.grpo import GRPOScriptArguments, resolve_reward_funcs, reward_script
from trl.scripts.utils import parse_script_args


# The online preference commands (each `trl/scripts/<command>.py` exports their entry points): their `--help`
# description, config class and trainer class.
ONLINE_SCRIPTS = {
    "online_dpo": ("Online DPO (OnlineDPOTrainer): pairs sampled from the policy, judged or scored.", "OnlineDPO"),
    "nash_md": ("Nash-MD (NashMDTrainer): policy against geometric-mixture samples.", "NashMD"),
    "xpo": ("XPO (XPOTrainer): policy against reference samples, with an exploration bonus.", "XPO"),
}


def trainer_kwargs(script_args: GRPOScriptArguments) -> dict:
    """`reward_funcs` when the command line names any; otherwise the config's `judge` / `reward_model_path`."""
    if not script_args.reward_funcs and not script_args.reward_model_name_or_path:
        return {}
    return {"reward_funcs": resolve_reward_funcs(script_args.reward_funcs, script_args.reward_model_name_or_path)}


def online_entry_points(command: str) -> tuple[str, str, Callable, Callable]:
    """
    The `(COMMAND, DESCRIPTION, make_parser, main)` of the online preference script `trl/scripts/<command>.py`.

    Args:
        command (`str`):
            A key of [`ONLINE_SCRIPTS`], e.g. `"xpo"`.
    """
    description, method = ONLINE_SCRIPTS[command]
    script = reward_script(command, description, f"{method}Config", f"{method}Trainer", trainer_kwargs=trainer_kwargs)
    return command, description, script.make_parser, script.main


# `make_parser()`: `(GRPOScriptArguments, OnlineDPOConfig, ModelConfig, DatasetMixtureConfig)`; `main(...)` trains.
COMMAND, DESCRIPTION, make_parser, main = online_entry_points("online_dpo")


if __name__ == "__main__":
    main(*parse_script_args(make_parser()))
