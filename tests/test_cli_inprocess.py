"""`trl <method>` runs in this process unless launch options ask for accelerate; grouped, cached `--help`; local
`--dataset_name` files and folders; `--reward_funcs` modules from the current directory."""

import json
import os
import subprocess
import sys
import types

import datasets
import pytest
import yaml

from trl import cli
from trl.scripts.dataset_mixture import load_named_dataset
from trl.scripts.grpo import resolve_reward_func
from trl.scripts.help import argument_groups, command_help, format_grouped_help
from trl.scripts.parser import TrlParser
from trl.scripts.utils import ScriptArguments
from trl.testing import get_dataset_path


TRAIN_JSONL = os.path.join(get_dataset_path(), "standard_language_modeling", "train.jsonl")


# ---------------------------------------------------------------------------------------------- in-process dispatch
@pytest.fixture
def no_accelerate_default(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return tmp_path / "hf" / "accelerate" / "default_config.yaml"


def _run(monkeypatch, args):
    """Run `run_training_command` on a fake script; return ("main", parsed) or ("launch", args)."""
    calls = []
    module = types.SimpleNamespace(__file__="script.py", main=lambda *parsed: calls.append(("main", parsed)))
    monkeypatch.setattr(cli, "launch_training_script", lambda path, parser, args: calls.append(("launch", args)))
    cli.run_training_command(module, TrlParser(ScriptArguments), args)
    assert len(calls) == 1
    return calls[0]


def test_training_command_runs_in_process_without_launch_options(monkeypatch, no_accelerate_default):
    kind, parsed = _run(monkeypatch, ["--dataset_name", "data.jsonl"])
    assert kind == "main" and parsed[0].dataset_name == "data.jsonl"


@pytest.mark.parametrize(
    "args", [["--num_processes", "2"], ["--accelerate_config", "multi_gpu"], ["--cpu"], ["--mixed_precision=bf16"]]
)
def test_launch_options_go_through_accelerate(monkeypatch, no_accelerate_default, args):
    kind, launched = _run(monkeypatch, ["--dataset_name", "d", *args])
    assert kind == "launch" and launched[-len(args) :] == args


def test_launch_option_in_yaml_goes_through_accelerate(monkeypatch, no_accelerate_default, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"dataset_name": "d", "num_processes": 2}))
    assert _run(monkeypatch, ["--config", str(config)])[0] == "launch"


def test_accelerate_default_config_goes_through_accelerate(monkeypatch, no_accelerate_default):
    no_accelerate_default.parent.mkdir(parents=True)
    no_accelerate_default.write_text("num_processes: 2\n")
    assert cli.launch_reason() is not None
    assert _run(monkeypatch, ["--dataset_name", "d"])[0] == "launch"


def test_unknown_argument_is_refused_in_process(monkeypatch, no_accelerate_default):
    with pytest.raises(ValueError, match="--bogus"):
        _run(monkeypatch, ["--bogus", "1"])


# ---------------------------------------------------------------------------------------------- --help
def test_grouped_help_order_and_help_all():
    from trl.scripts.sft import make_parser

    parser = make_parser(prog="trl sft")
    titles = [title for title, _ in argument_groups(parser)]
    assert titles[0].startswith("script arguments") and titles[1].startswith("SFTConfig")
    assert titles[2].startswith("model options") and titles[3].startswith("training arguments inherited")
    short, everything = format_grouped_help(parser), format_grouped_help(parser, everything=True)
    for option in ("--dataset_name", "--max_length", "--model_name_or_path", "--learning_rate", "--num_processes"):
        assert option in short
    assert "--dataloader_num_workers" not in short and "--dataloader_num_workers" in everything
    # The method's own options come before any inherited one, and each option is listed once.
    assert short.index("--max_length") < short.index("--model_name_or_path") < short.index("--learning_rate")
    assert short.count("--max-length") == 0
    assert len(short.splitlines()) < 300


@pytest.mark.parametrize("command", [c for c in cli.COMMANDS if c.training], ids=lambda c: c.name)
def test_every_training_command_has_grouped_help(command, tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_CLI_CACHE", str(tmp_path))
    text = command_help(command.name, command.module)
    for title in ("script arguments", "the method's own options", "model options", "training arguments inherited"):
        assert title in text
    assert f"usage: trl {command.name} " in text and "--output_dir" in text


def test_help_without_a_current_table_entry_is_cached(tmp_path, monkeypatch):
    from trl.scripts import help as help_module

    monkeypatch.setenv("TRL_CLI_CACHE", str(tmp_path))
    monkeypatch.setattr(help_module, "_load_table", lambda: {})  # as if the table were stale
    first = command_help("dpo", "trl.scripts.dpo")  # builds the parser, writes the cache entry
    assert "DPOConfig: the method's own options" in first and "--beta" in first
    assert len(list(tmp_path.glob("dpo-short-*.txt"))) == 1

    def no_import(name):
        raise AssertionError(f"imported {name} although the help was cached")

    monkeypatch.setattr(help_module.importlib, "import_module", no_import)
    assert command_help("dpo", "trl.scripts.dpo") == first


def test_uncached_help_renders_from_the_table_without_torch(tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_CLI_CACHE", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "120")
    from trl.scripts.dpo import make_parser

    expected = format_grouped_help(make_parser(prog="trl dpo"))
    code = (
        "import sys\nfrom trl.cli import main\n"
        "try:\n    main(['dpo', '--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "print('IMPORTED', 'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(expected) and "IMPORTED False False" in run.stdout
    assert list(tmp_path.iterdir()) == []  # nothing to cache: the table answered


# ---------------------------------------------------------------------------------------------- --dataset_name
@pytest.mark.parametrize("extension", [".jsonl", ".json", ".csv", ".parquet"])
def test_dataset_name_accepts_local_files(tmp_path, extension):
    rows = datasets.load_dataset("json", data_files=TRAIN_JSONL, split="train")
    path = tmp_path / f"data{extension}"
    if extension == ".csv":
        rows.to_csv(str(path))
    elif extension == ".parquet":
        rows.to_parquet(str(path))
    elif extension == ".json":
        path.write_text(json.dumps(rows.to_list()))
    else:
        rows.to_json(str(path))
    loaded = load_named_dataset(str(path))
    assert list(loaded) == ["train"] and loaded["train"]["text"] == rows["text"]


def test_dataset_name_accepts_saved_datasets_and_folders(tmp_path):
    rows = datasets.load_dataset("json", data_files=TRAIN_JSONL, split="train")
    rows.save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict({"train": rows, "test": rows.select(range(2))}).save_to_disk(str(tmp_path / "two"))
    assert load_named_dataset(str(tmp_path / "one"))["train"].num_rows == rows.num_rows
    assert sorted(load_named_dataset(str(tmp_path / "two"))) == ["test", "train"]
    bundled = load_named_dataset(get_dataset_path(), "standard_language_modeling")
    assert bundled["train"].num_rows == rows.num_rows


def test_dataset_name_missing_local_path_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_named_dataset("./missing/data.jsonl")
    (tmp_path / "notes.docx").write_text("x")
    with pytest.raises(ValueError, match="unknown extension"):
        load_named_dataset(str(tmp_path / "notes.docx"))


# ---------------------------------------------------------------------------------------------- --reward_funcs
def test_reward_funcs_import_from_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "my_cli_rewards.py").write_text(
        "def short(completions, **kw):\n    return [0.0 for _ in completions]\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert resolve_reward_func("my_cli_rewards.short").__name__ == "short"
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        resolve_reward_func("my_cli_rewards.nope")
    with pytest.raises(ValueError, match=r"no module named 'no_such_rewards' in the current directory"):
        resolve_reward_func("no_such_rewards.fn")


# ---------------------------------------------------------------------------------------------- end to end
def test_trl_sft_trains_in_process_without_warnings(tmp_path, monkeypatch, no_accelerate_default):
    import warnings

    from trl.testing import get_tiny_model_path

    def no_launch(*args):
        raise AssertionError("a run without launch options must not go through accelerate launch")

    monkeypatch.setattr(cli, "launch_training_script", no_launch)
    config = {
        "model_name_or_path": get_tiny_model_path(),
        "dataset_name": TRAIN_JSONL,  # a local file
        "output_dir": str(tmp_path / "out"),
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "report_to": "none",
        "save_strategy": "no",
    }
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(config))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli.main(["sft", "--config", str(tmp_path / "sft.yaml")])
    assert (tmp_path / "out" / "config.json").exists()
    assert not [str(w.message) for w in caught if "pin_memory" in str(w.message)]
