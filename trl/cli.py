"""
The `trl` command: `trl <command> [--config file.yaml] [arguments]`.

A training command (`trl sft`, `trl grpo`, ...) parses its arguments once and, by default, runs the script's `main`
in this process: one interpreter, no launcher. It goes through `accelerate launch` (a child process per rank) only
when something asks for it: an `accelerate launch` option on the command line or in the YAML config
(`--num_processes 2`, `--mixed_precision bf16`, `--config_file ...`, `--cpu`), `--accelerate_config <name|path>` (a
profile shipped in `trl/accelerate_configs/` or a config file), or an accelerate default config file written by
`accelerate config`. Other commands (`env`, `vllm-serve`) always run in this process.

`trl <command> --help` prints the arguments grouped (the script's, the method's own config fields, the model's,
the most used training arguments) and `--help-all` every inherited training argument too; both render from a table
of the parsers' arguments without importing torch, or from a disk cache when the table is out of date
(`trl/scripts/help.py`).

Adding a command is one entry in `COMMANDS`: a training script module exposes
`make_parser(subparsers=None, prog=None)` and `main(script_args, training_args, model_args, dataset_args)`; an
in-process command exposes `make_parser(...)` and a `main` that takes the parsed dataclasses.

User mistakes (a bad value, an unknown argument, a missing model path, a config the trainer refuses) are printed as
one line and exit with status 2; set the environment variable `TRL_DEBUG=1` to see the full traceback.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .scripts.cli_checks import report_user_errors
from .scripts.launch import (
    LAUNCHED_BY_TRL_ENV,
    accelerate_launch_actions,
    default_accelerate_config_file,
    is_launch_option,
    resolve_accelerate_config,
)


if TYPE_CHECKING:
    from .scripts.parser import TrlParser


@dataclass(frozen=True)
class Command:
    """
    One `trl` subcommand.

    Args:
        name (`str`):
            Name typed after `trl` (hyphenated; the underscore spelling is accepted too).
        module (`str`):
            Module implementing it, e.g. `"trl.scripts.sft"`.
        help (`str`):
            One-line description shown by `trl --help`.
        training (`bool`, *optional*, defaults to `True`):
            A training script: run in this process, or through `accelerate launch` when launch options ask for it
            (else a command whose `main` always runs in this process).
        aliases (`tuple[str, ...]`, *optional*, defaults to `()`):
            Other accepted names.
    """

    name: str
    module: str
    help: str
    training: bool = True
    aliases: tuple[str, ...] = ()


COMMANDS: tuple[Command, ...] = (
    Command("sft", "trl.scripts.sft", "Supervised fine-tuning (SFTTrainer)."),
    Command("dpo", "trl.scripts.dpo", "Direct Preference Optimization (DPOTrainer)."),
    Command("reward", "trl.scripts.reward", "Reward modelling (RewardTrainer)."),
    Command("kto", "trl.scripts.kto", "Kahneman-Tversky Optimization (KTOTrainer) on unpaired preference data."),
    Command("bco", "trl.scripts.bco", "Binary Classifier Optimization (BCOTrainer) on unpaired preference data."),
    Command("cpo", "trl.scripts.cpo", "Contrastive Preference Optimization (CPOTrainer; SimPO, CPO-SimPO, AlphaPO)."),
    Command("orpo", "trl.scripts.orpo", "Odds Ratio Preference Optimization (ORPOTrainer)."),
    Command("grpo", "trl.scripts.grpo", "Group Relative Policy Optimization (GRPOTrainer) with reward functions."),
    Command("rloo", "trl.scripts.rloo", "REINFORCE Leave-One-Out (RLOOTrainer) with reward functions."),
    Command("online-dpo", "trl.scripts.online_dpo", "Online DPO (OnlineDPOTrainer) with a judge or reward functions."),
    Command("nash-md", "trl.scripts.nash_md", "Nash-MD (NashMDTrainer) with a judge or reward functions."),
    Command("xpo", "trl.scripts.xpo", "Exploratory Preference Optimization (XPOTrainer) with a judge or rewards."),
    Command("ppo", "trl.scripts.ppo", "Proximal Policy Optimization (PPOTrainer) with a reward and a value model."),
    Command("prm", "trl.scripts.prm", "Process reward modelling (PRMTrainer) on stepwise supervision."),
    Command("gkd", "trl.scripts.gkd", "Generalized Knowledge Distillation (GKDTrainer) from a teacher model."),
    Command(
        "distillation", "trl.scripts.distillation", "On-policy distillation (DistillationTrainer) from a teacher."
    ),
    Command("env", "trl.scripts.env", "Print the environment information to paste into a bug report.", False),
    Command(
        "vllm-serve", "trl.scripts.vllm_serve", "Serve a model for online training (vLLM or transformers).", False
    ),
)

_TRUE_STRINGS = {"true", "1", "yes", "on"}
_FALSE_STRINGS = {"false", "0", "no", "off"}


def find_command(name: str) -> Command | None:
    """
    The command called `name`, accepting `_` for `-` (`online_dpo` for `online-dpo`) and the aliases.

    Args:
        name (`str`):
            The word typed after `trl`.
    """
    normalised = name.replace("_", "-")
    for command in COMMANDS:
        if normalised == command.name or name in command.aliases or normalised in command.aliases:
            return command
    return None


def usage() -> str:
    """The text of `trl --help`."""
    width = max(len(command.name) for command in COMMANDS) + 2
    lines = [f"  {command.name:<{width}}{command.help}" for command in COMMANDS]
    return (
        "usage: trl <command> [--config config.yaml] [arguments]\n\ncommands:\n"
        + "\n".join(lines)
        + "\n\nRun `trl <command> --help` for the arguments of a command (`--help-all` for every one). Training "
        "commands run in this process; any `accelerate launch` option (e.g. --num_processes 2) or "
        "--accelerate_config <name|path> runs them through `accelerate launch` instead."
    )


def main(argv: list[str] | None = None) -> None:
    """
    Entry point of the `trl` console script.

    Args:
        argv (`list[str]` or `None`, *optional*, defaults to `None`):
            Arguments after `trl`; `sys.argv[1:]` when `None`.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    if argv[0] == "--version":
        from . import __version__

        print(__version__)
        return
    command = find_command(argv[0])
    if command is None:
        print(usage(), file=sys.stderr)
        raise SystemExit(f"trl: unknown command {argv[0]!r}; choose one of {[c.name for c in COMMANDS]}.")
    if command.training and print_cached_help(command.name, command.module, argv[1:]):
        raise SystemExit(0)
    module = importlib.import_module(command.module)
    parser = module.make_parser(prog=f"trl {command.name}")
    # A mistake in the arguments or the config is one line and exit status 2; TRL_DEBUG=1 shows the traceback.
    with report_user_errors(f"trl {command.name}"):
        if command.training:
            run_training_command(module, parser, argv[1:])
        else:
            module.main(*parser.parse_args_and_config(argv[1:]))


def print_cached_help(name: str, module_name: str, args: list[str]) -> bool:
    """
    Print the grouped help of a training command when `args` ask for it (`-h`, `--help`, `--help-all`).

    Returns:
        `bool`: Whether help was printed.
    """
    wants_all = "--help-all" in args
    if not wants_all and not any(arg in ("-h", "--help") for arg in args):
        return False
    from .scripts.help import command_help

    print(command_help(name, module_name, everything=wants_all))
    return True


def run_training_command(module, parser: TrlParser, args: list[str]) -> None:
    """
    Run a training script: in this process, or through `accelerate launch` when a launch option asks for it.

    Args:
        module (`module`):
            The script module, with `main(script_args, training_args, model_args, dataset_args)`.
        parser ([`TrlParser`]):
            The script's parser.
        args (`list[str]`):
            The command-line arguments (after the command name).
    """
    *outputs, config_remaining, _ = parser.parse_args_and_config(args, separate_remaining_strings=True)
    _, cli_launch_args = split_script_and_launch_args(parser, args)
    if config_remaining or cli_launch_args or launch_reason() is not None:
        launch_training_script(module.__file__, parser, args)
        return
    # One process, nothing to distribute: run the script's main here, with the arguments parsed once.
    module.main(*outputs)


def launch_reason() -> str | None:
    """Why a training command without launch options still goes through `accelerate launch`, or `None`."""
    default_config = default_accelerate_config_file()
    if default_config is not None:
        return f"the accelerate default config {default_config}"
    return None


def launch_training_script(script_path: str, parser: TrlParser, args: list[str]) -> None:
    """
    Check the arguments of a training script, then run it with `accelerate launch`.

    Args:
        script_path (`str`):
            The script file.
        parser ([`TrlParser`]):
            The script's parser: arguments it knows go to the script, the others to `accelerate launch`.
        args (`list[str]`):
            The command-line arguments (after the command name).
    """
    from accelerate.commands.launch import launch_command, launch_command_parser

    # Parsing here reports a bad value or config before any process starts; the script parses again.
    *_, config_remaining, _ = parser.parse_args_and_config(args, separate_remaining_strings=True)
    script_args, cli_launch_args = split_script_and_launch_args(parser, args)
    launch_args, extra_env = cpu_multiprocess_launch_args(prepare_launch_args(config_remaining + cli_launch_args))
    launch_namespace = launch_command_parser().parse_args([*launch_args, script_path, *script_args])

    extra_env[LAUNCHED_BY_TRL_ENV] = "1"
    previous = {name: os.environ.get(name) for name in extra_env}
    os.environ.update(extra_env)
    try:
        launch_command(launch_namespace)
    except subprocess.CalledProcessError as error:
        raise SystemExit(error.returncode) from error
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def cpu_multiprocess_launch_args(launch_args: list[str]) -> tuple[list[str], dict[str, str]]:
    """
    Make `--cpu --num_processes N` (N > 1) start N processes.

    `accelerate launch --cpu` starts several CPU processes only through `mpirun`; without a hostfile it silently
    runs one. Here such a launch goes through the torchrun launcher (`--multi_gpu`) with `ACCELERATE_USE_CPU` set,
    which gives N CPU processes joined in a gloo process group.

    Args:
        launch_args (`list[str]`):
            Prepared `accelerate launch` arguments.

    Returns:
        `tuple[list[str], dict[str, str]]`: The arguments to launch with and the environment variables to set.
    """
    groups = group_options(launch_args)
    options = {group[0]: group[1:] for group in groups}
    num_processes = int((options.get("--num_processes") or ["1"])[0])
    if "--cpu" not in options or num_processes < 2 or "--mpirun_hostfile" in options:
        return launch_args, {}
    rewritten = [arg for group in groups if group[0] != "--cpu" for arg in group]
    if "--multi_gpu" not in options:
        rewritten.append("--multi_gpu")
    return rewritten, {"ACCELERATE_USE_CPU": "true"}


def group_options(args: list[str]) -> list[list[str]]:
    """
    Split command-line strings into `[option, *values]` groups: `["--a", "1", "--b"]` -> `[["--a", "1"], ["--b"]]`.

    Negative numbers are values, not options. Strings before the first option form a group of their own.

    Args:
        args (`list[str]`):
            The strings.
    """
    groups: list[list[str]] = []
    for arg in args:
        if _is_option(arg) or not groups:
            groups.append([arg])
        else:
            groups[-1].append(arg)
    return groups


def _is_option(arg: str) -> bool:
    if not arg.startswith("-") or arg == "-":
        return False
    try:
        float(arg)
    except ValueError:
        return True
    return False


def split_script_and_launch_args(parser: TrlParser, args: list[str]) -> tuple[list[str], list[str]]:
    """
    Separate the command line into the script's arguments and `accelerate launch` options.

    Args:
        parser ([`TrlParser`]):
            The script's parser. `--config` stays with the script, which reads the YAML file again.
        args (`list[str]`):
            The command-line strings.

    Returns:
        `tuple[list[str], list[str]]`: The script's strings and the launch strings, each in their original order.

    Raises:
        ValueError: For an argument that is neither a script option nor an `accelerate launch` option.
    """
    script_args, launch_args, unknown = [], [], []
    for group in group_options(args):
        option = group[0].split("=", 1)[0]
        if option in parser._option_string_actions or option == "--config":
            script_args.extend(group)
        elif _is_option(option) and is_launch_option(option):
            launch_args.extend(group)
        else:
            unknown.append(option)
    if unknown:
        raise ValueError(
            f"Unknown arguments {unknown}: neither an option of `{parser.prog}` nor an `accelerate launch` option. "
            f"Check the spelling (see `{parser.prog} --help` and `accelerate launch --help`)."
        )
    return script_args, launch_args


def prepare_launch_args(args: list[str]) -> list[str]:
    """
    Turn launch strings from the YAML config and the command line into valid `accelerate launch` arguments.

    `--accelerate_config <name|path>` becomes `--config_file <path>`. On/off flags (`--cpu`) accept a boolean
    value, as a YAML key does (`cpu: true` -> `--cpu`; `false` drops it). Later strings override earlier ones.

    Args:
        args (`list[str]`):
            `--option value...` strings, config first then command line.

    Raises:
        ValueError: For an unknown option or an unknown accelerate profile.
    """
    actions = accelerate_launch_actions()
    prepared = []
    for option, *values in group_options(args):
        if "=" in option:
            option, value = option.split("=", 1)
            values = [value, *values]
        if not is_launch_option(option):
            raise ValueError(f"Unknown argument {option!r}: not an option of the script nor of `accelerate launch`.")
        if option in ("--accelerate_config", "--accelerate-config"):
            if len(values) != 1:
                raise ValueError("`--accelerate_config` takes one value: a profile name or a config file path.")
            prepared += ["--config_file", resolve_accelerate_config(values[0])]
        elif actions[option].nargs == 0:
            prepared += _flag(option, values)
        else:
            prepared += [option, *values]
    return prepared


def _flag(option: str, values: list[str]) -> list[str]:
    if not values:
        return [option]
    if len(values) == 1 and values[0].lower() in _TRUE_STRINGS:
        return [option]
    if len(values) == 1 and values[0].lower() in _FALSE_STRINGS:
        return []
    raise ValueError(f"`accelerate launch {option}` is an on/off flag; give it no value, or true/false, not {values}.")


if __name__ == "__main__":
    main()
