"""`trl <command> --help`: the arguments of a training command in groups, rendered without importing torch.

Building a training parser imports `transformers.TrainingArguments`, hence torch (several seconds). The help text is
rendered instead from `help_table.json` next to this file: every training command's arguments (option strings,
metavar, choices and help text with its default), written by `python -m trl.scripts.help --write-table` from the real
parsers. An entry is used only while it is current: the installed transformers and torch are those it was written
with and the trl files its parser is built from (the script, the parser, the config and argument dataclasses) hash to
the recorded digests; `tests/test_cli_help_table.py` fails when the committed table is out of date.

Otherwise the parser is built and the text is cached in `$XDG_CACHE_HOME/trl/cli/` (`~/.cache/trl/cli/`; the
`TRL_CLI_CACHE` environment variable picks another folder) under a key made of the package versions, the
modification times of the trl files the text comes from and the terminal width; later calls print the file.

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
from functools import lru_cache
from importlib import metadata
from pathlib import Path


CACHE_ENV = "TRL_CLI_CACHE"
_TRL_DIR = Path(__file__).resolve().parent.parent
_FORMAT_VERSION = 1
TABLE_PATH = Path(__file__).with_name("help_table.json")
# The installed packages whose versions the parsers of the table depend on.
_TABLE_PACKAGES = ("transformers", "torch")

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
    text = help_from_table(command, everything)
    if text is not None:
        return text
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
    return _titled_groups(*_owned_actions(parser), everything)


def _owned_actions(parser) -> tuple[list[str], dict[str, list[argparse.Action]]]:
    """The names of the script, config and model classes, and every action of the parser under its group."""
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
    return [script_class.__name__, config_class.__name__, model_class.__name__], groups


def _titled_groups(
    class_names: list[str], groups: dict[str, list[argparse.Action]], everything: bool
) -> list[tuple[str, list[argparse.Action]]]:
    script_name, config_name, model_name = class_names
    inherited = groups["inherited"]
    hidden = 0
    if not everything:
        order = {name: index for index, name in enumerate(COMMON_TRAINING_ARGUMENTS)}
        shown = [action for action in inherited if action.dest in order]
        hidden = len({action.dest for action in inherited}) - len({action.dest for action in shown})
        inherited = sorted(shown, key=lambda action: order[action.dest])
    inherited_title = "training arguments inherited from transformers.TrainingArguments"
    if hidden:
        inherited_title += f" (the most used; {hidden} more with --help-all)"
    return [
        (f"script arguments ({script_name}; `datasets:` mixtures in the YAML config)", groups["script"]),
        (f"{config_name}: the method's own options", groups["config"]),
        (f"model options ({model_name})", groups["model"]),
        (inherited_title, inherited),
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
    return _render(parser.prog, parser.description, argument_groups(parser, everything))


def _render(prog: str, description: str, groups: list[tuple[str, list[argparse.Action]]]) -> str:
    formatter = _Formatter(prog, width=_width(), max_help_position=32)
    formatter.add_usage(
        f"{prog} [--config CONFIG.yaml] [options]  (-h: this help, --help-all: every argument)", None, []
    )
    formatter.add_text(description)
    for title, actions in groups:
        formatter.start_section(title)
        formatter.add_arguments(actions)
        formatter.end_section()
    return formatter.format_help().rstrip() + "\n\n" + LAUNCH_NOTE


# ---------------------------------------------------------------------------------------------- the help table
def help_from_table(command: str, everything: bool = False) -> str | None:
    """
    The help of `command` rendered from `help_table.json`, or `None` when the table has no current entry for it.

    Args:
        command (`str`):
            The command name, e.g. `"sft"`.
        everything (`bool`, *optional*, defaults to `False`):
            List every inherited training argument (`--help-all`).
    """
    table = _load_table()
    entry = table.get("commands", {}).get(command)
    if entry is None or table.get("format") != _FORMAT_VERSION or table.get("versions") != _installed_versions():
        return None
    if entry["sources"] != {path: _digest(path) for path in entry["sources"]}:
        return None
    records = table["actions"]
    groups = {
        name: [_action_from_record(records[index]) for index in indices] for name, indices in entry["groups"].items()
    }
    return _render(f"trl {command}", entry["description"], _titled_groups(entry["classes"], groups, everything))


@lru_cache
def _load_table() -> dict:
    try:
        return json.loads(TABLE_PATH.read_text())
    except (OSError, ValueError):
        return {}


def _installed_versions() -> dict[str, str]:
    return {name: _version(name) for name in _TABLE_PACKAGES}


def _digest(relative_path: str) -> str | None:
    try:
        return hashlib.sha256((_TRL_DIR / relative_path).read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def _action_record(action: argparse.Action, prog: str) -> list:
    """What the formatter reads of an action; the help text is expanded (default included) and `%`-escaped."""
    text = action.help
    if text and text.strip():
        text = _Formatter(prog)._expand_help(action).replace("%", "%%")
    choices = None if action.choices is None else [str(choice) for choice in action.choices]
    return [action.option_strings, action.dest, action.nargs, action.metavar, choices, text]


def _action_from_record(record: list) -> argparse.Action:
    option_strings, dest, nargs, metavar, choices, text = record
    return argparse.Action(option_strings, dest, nargs=nargs, choices=choices, help=text, metavar=metavar)


def _parser_sources(parser, module_name: str) -> list[str]:
    """The trl files a training parser is built from, relative to the package: the script, the parser modules and
    every trl class in the MRO of its dataclasses."""
    import inspect

    here = Path(__file__).parent
    files = {importlib.import_module(module_name).__file__, here / "parser.py", here / "training_script.py"}
    for dataclass_type in parser.dataclass_types:
        files.update(inspect.getsourcefile(cls) for cls in dataclass_type.__mro__ if cls.__module__.startswith("trl."))
    return sorted(str(Path(file).resolve().relative_to(_TRL_DIR)) for file in files)


def build_table() -> dict:
    """The help table of every training command of `trl.cli.COMMANDS`, built from their real parsers."""
    from ..cli import COMMANDS

    records: list[list] = []
    index_of: dict[str, int] = {}
    commands = {}
    for command in (command for command in COMMANDS if command.training):
        parser = importlib.import_module(command.module).make_parser(prog=f"trl {command.name}")
        class_names, groups = _owned_actions(parser)
        indices = {}
        for name, actions in groups.items():
            indices[name] = []
            for record in (_action_record(action, parser.prog) for action in actions):
                key = json.dumps(record)
                indices[name].append(index_of.setdefault(key, len(records)))
                if index_of[key] == len(records):
                    records.append(record)
        sources = {path: _digest(path) for path in _parser_sources(parser, command.module)}
        commands[command.name] = {
            "description": parser.description,
            "classes": class_names,
            "sources": sources,
            "groups": indices,
        }
    return {"format": _FORMAT_VERSION, "versions": _installed_versions(), "commands": commands, "actions": records}


def write_table(path: Path = TABLE_PATH) -> None:
    """Write [`build_table`] to `path` (`help_table.json` next to this module)."""
    path.write_text(json.dumps(build_table(), indent=0, sort_keys=True) + "\n")
    _load_table.cache_clear()


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--write-table"]:
        raise SystemExit("usage: python -m trl.scripts.help --write-table")
    write_table()
    print(f"wrote {TABLE_PATH}")
