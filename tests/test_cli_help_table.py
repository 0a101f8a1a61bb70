"""`trl <command> --help` renders from `trl/scripts/help_table.json`: the committed table must be what the real parsers
give (else `python -m trl.scripts.help --write-table`), render the same text, and list exactly the dataclass fields."""

import dataclasses
import importlib
import json

import pytest

from trl import cli
from trl.scripts import help as help_module


TRAINING_COMMANDS = [command for command in cli.COMMANDS if command.training]


@pytest.fixture(scope="module")
def parsers():
    return {
        command.name: importlib.import_module(command.module).make_parser(prog=f"trl {command.name}")
        for command in TRAINING_COMMANDS
    }


def _resolved(table, name):
    """The entry of `name` with its action records in place of their indices (indices depend on the build order)."""
    entry = table["commands"][name]
    groups = {group: [table["actions"][i] for i in ids] for group, ids in entry["groups"].items()}
    return {**entry, "groups": groups}


def test_the_committed_table_is_current():
    committed = json.loads(help_module.TABLE_PATH.read_text())
    built = help_module.build_table()
    assert sorted(committed["commands"]) == sorted(command.name for command in TRAINING_COMMANDS)
    stale = [name for name in built["commands"] if _resolved(built, name) != _resolved(committed, name)]
    assert not stale and built["versions"] == committed["versions"], (
        f"trl/scripts/help_table.json is out of date for {stale or 'the installed packages'}: run "
        "`python -m trl.scripts.help --write-table` and commit it."
    )


@pytest.mark.parametrize("everything", [False, True], ids=["help", "help-all"])
def test_the_table_renders_the_parser_help(parsers, everything, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    for name, parser in parsers.items():
        assert help_module.help_from_table(name, everything) == help_module.format_grouped_help(parser, everything)


def test_the_table_lists_exactly_the_fields_of_the_dataclasses(parsers):
    table = json.loads(help_module.TABLE_PATH.read_text())
    for name, parser in parsers.items():
        script_class, config_class, model_class, *others = parser.dataclass_types
        entry = table["commands"][name]
        dests = {group: {table["actions"][i][1] for i in ids} for group, ids in entry["groups"].items()}
        fields = {cls: {field.name for field in dataclasses.fields(cls)} for cls in parser.dataclass_types}
        assert dests["config"] | dests["inherited"] == fields[config_class], name
        assert dests["model"] == fields[model_class], name
        assert dests["script"] == fields[script_class].union(*(fields[cls] for cls in others)), name
        assert entry["classes"] == [script_class.__name__, config_class.__name__, model_class.__name__]
        assert entry["description"] == parser.description


def test_an_edited_source_or_another_transformers_is_not_rendered_from_the_table(monkeypatch):
    table = json.loads(help_module.TABLE_PATH.read_text())
    assert help_module.help_from_table("sft") is not None
    edited = json.loads(json.dumps(table))
    edited["commands"]["sft"]["sources"]["trainer/sft_config.py"] = "0" * 16
    monkeypatch.setattr(help_module, "_load_table", lambda: edited)
    assert help_module.help_from_table("sft") is None and help_module.help_from_table("dpo") is not None
    other = dict(table, versions={**table["versions"], "transformers": "0.0.1"})
    monkeypatch.setattr(help_module, "_load_table", lambda: other)
    assert help_module.help_from_table("dpo") is None
