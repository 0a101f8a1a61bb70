"""`trl <command> --help`: the arguments of a training command in groups, cached on disk so it answers fast.

Building a training parser imports `transformers.TrainingArguments`, hence torch (several seconds). The help text
only changes with the trl sources and the installed transformers / peft / accelerate, so the first call writes it to
`$XDG_CACHE_HOME/trl/cli/` (`~/.cache/trl/cli/`; the `TRL_CLI_CACHE` environment variable picks another folder) under
a key made of those versions, the modification times of the trl files the text comes from (the scripts, the CLI and
every `*config*.py` module) and the terminal width; later calls print the file without importing transformers.

Groups, in order: the script's arguments (dataset and command options), the method's own config fields (those of
`<Method>Config` that `TrainingArguments` lacks), the model options (`ModelConfig`), then the inherited
`TrainingArguments`: the most used ones under `--help`, all of them under `--help-all`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path


CACHE_ENV = "TRL_CLI_CACHE"
_TRL_DIR = Path(__file__).resolve().parent.parent
_FORMAT_VERSION = 1

# The inherited `TrainingArguments` shown by `--help` (in this order, those the config has); `--help-all` shows all.
COMMON_TRAINING_ARGUMENTS = (
    "output_dir",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "weight_decay",
    "max_grad_norm",
    "optim",
    "gradient_checkpointing",
    "bf16",
    "seed",
    "logging_steps",
    "eval_strategy",
    "eval_steps",
    "save_strategy",
    "save_steps",
    "save_total_limit",
    "report_to",
    "run_name",
    "resume_from_checkpoint",
    "push_to_hub",
    "hub_model_id",
)

LAUNCH_NOTE = (
    "launch options:\n"
    "  Without them the command trains in this process. Any `accelerate launch` option (e.g. --num_processes 2,\n"
    "  --mixed_precision bf16, --config_file FILE, --cpu) or --accelerate_config <profile|file> (profiles: single_gpu,\n"
    "  multi_gpu, fsdp1, fsdp2, zero1, zero2, zero3) runs it through `accelerate launch`, from the command line or as a\n"
    "  YAML key."
)


def cache_dir() -> Path:
    """Folder of the cached help texts: `$TRL_CLI_CACHE`, else `$XDG_CACHE_HOME/trl/cli` (`~/.cache/trl/cli`)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "trl" / "cli"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def _width() -> int:
    return max(60, min(shutil.get_terminal_size().columns, 140))


def _help_sources() -> list[Path]:
    """The trl files a help text is built from: the scripts and the CLI, and every config module (`*config*.py`)."""
    sources = [_TRL_DIR / "cli.py", *(_TRL_DIR / "scripts").glob("*.py")]
    return sources + [path for path in _TRL_DIR.rglob("*config*.py") if "scripts" not in path.parts]


def cache_key(command: str, everything: bool) -> str:
    """Hash of what the help text of `command` depends on (see the module docstring)."""
    stamps = sorted(
        (str(path.relative_to(_TRL_DIR)), path.stat().st_mtime_ns, path.stat().st_size) for path in _help_sources()
    )
    parts = {
        "format": _FORMAT_VERSION,
        "command": command,
        "everything": everything,
        "width": _width(),
        "versions": [_version(name) for name in ("transformers", "peft", "accelerate", "torch")],
        "sources": stamps,
    }
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def command_help(command: str, module_name: str, everything: bool = False) -> str:
    """
    The grouped help of a training command, from the cache when it is there.

    Args:
        command (`str`):
            The command name, e.g. `"sft"`.
        module_name (`str`):
            The script module, e.g. `"trl.scripts.sft"` (imported only when the cache misses).
        everything (`bool`, *optional*, defaults to `False`):
            List every inherited training argument (`--help-all`).
    """
    path = cache_dir() / f"{command}-{'all' if everything else 'short'}-{cache_key(command, everything)}.txt"
    try:
        return path.read_text()
    except OSError:
        pass
    module = importlib.import_module(module_name)
    text = format_grouped_help(module.make_parser(prog=f"trl {command}"), everything=everything)
    _write_atomically(path, text)
    return text


def _write_atomically(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as file:
            file.write(text)
        os.replace(file.name, path)
    except OSError:
        pass  # a read-only cache only costs speed


def argument_groups(parser, everything: bool = False) -> list[tuple[str, list[argparse.Action]]]:
    """
    The parser's arguments as `(title, actions)` groups, in the order `--help` prints them.

    Args:
        parser ([`TrlParser`]):
            A training parser built from `(ScriptArguments, <Config>, ModelConfig, DatasetMixtureConfig)`.
        everything (`bool`, *optional*, defaults to `False`):
            Keep every inherited training argument, not only [`COMMON_TRAINING_ARGUMENTS`].
    """
    from transformers import TrainingArguments

    script_class, config_class, model_class, *others = parser.dataclass_types
    inherited = {field.name for field in dataclasses.fields(TrainingArguments)}
    owner: dict[str, str] = {}
    for name in _field_names(script_class, *others):
        owner[name] = "script"
    for name in _field_names(config_class):
        owner[name] = "inherited" if name in inherited else "config"
    for name in _field_names(model_class):
        owner[name] = "model"
    groups: dict[str, list[argparse.Action]] = {"script": [], "config": [], "model": [], "inherited": []}
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.dest not in owner:
            continue
        groups[owner[action.dest]].append(action)
    hidden = 0
    if not everything:
        order = {name: index for index, name in enumerate(COMMON_TRAINING_ARGUMENTS)}
        shown = [action for action in groups["inherited"] if action.dest in order]
        hidden = len({action.dest for action in groups["inherited"]}) - len({action.dest for action in shown})
        groups["inherited"] = sorted(shown, key=lambda action: order[action.dest])
    inherited_title = "training arguments inherited from transformers.TrainingArguments"
    if hidden:
        inherited_title += f" (the most used; {hidden} more with --help-all)"
    return [
        (f"script arguments ({script_class.__name__}; `datasets:` mixtures in the YAML config)", groups["script"]),
        (f"{config_class.__name__}: the method's own options", groups["config"]),
        (f"model options ({model_class.__name__})", groups["model"]),
        (inherited_title, groups["inherited"]),
    ]


def _field_names(*classes: type) -> list[str]:
    return [field.name for cls in classes for field in dataclasses.fields(cls)]


class _Formatter(argparse.HelpFormatter):
    """Shows one spelling per option (`--max_length`; `--max-length` works too) and the default of each."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        strings = [s for s in action.option_strings if "-" not in s.lstrip("-")] or action.option_strings
        if action.nargs == 0:
            return ", ".join(strings)
        return ", ".join(
            f"{s} {self._format_args(action, self._get_default_metavar_for_optional(action))}" for s in strings
        )

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if action.default not in (None, argparse.SUPPRESS, False, "", [], {}) and "%(default)" not in help_text:
            help_text += " (default: %(default)s)"
        return help_text


def format_grouped_help(parser, everything: bool = False) -> str:
    """
    The text of `trl <command> --help` (or `--help-all` with `everything=True`) for a training parser.

    Args:
        parser ([`TrlParser`]):
            The command's parser.
        everything (`bool`, *optional*, defaults to `False`):
            List every inherited training argument.
    """
    formatter = _Formatter(parser.prog, width=_width(), max_help_position=32)
    formatter.add_usage(
        f"{parser.prog} [--config CONFIG.yaml] [options]  (-h: this help, --help-all: every argument)", None, []
    )
    formatter.add_text(parser.description)
    for title, actions in argument_groups(parser, everything):
        formatter.start_section(title)
        formatter.add_arguments(actions)
        formatter.end_section()
    return formatter.format_help().rstrip() + "\n\n" + LAUNCH_NOTE
