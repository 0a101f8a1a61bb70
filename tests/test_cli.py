"""Tests of the `trl` command: dispatch, `trl env`, and `trl sft` end to end through `accelerate launch`."""

import json
import os
import subprocess
import sys
from unittest.mock import patch

import pytest
import yaml

from trl.cli import main
from trl.testing import get_dataset_path, get_tiny_model_path


def trl_command() -> list[str]:
    console_script = os.path.join(os.path.dirname(sys.executable), "trl")
    return [console_script] if os.path.isfile(console_script) else [sys.executable, "-m", "trl.cli"]


def test_env():
    result = subprocess.run([*trl_command(), "env"], capture_output=True, text=True, check=True, timeout=120)
    assert "Copy-paste the following information when reporting an issue:" in result.stdout
    assert "- TRL version: " in result.stdout
    assert "- PyTorch version: " in result.stdout
    assert "- accelerator(s): " in result.stdout
    assert "- vLLM version: " in result.stdout


def _user_error(capsys, argv: list[str]) -> str:
    """Run `trl` on a user mistake: it must exit with status 2 and print one line, returned."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0]
    return lines[0]


def test_env_rejects_arguments(capsys):
    assert "--verbose" in _user_error(capsys, ["env", "--verbose"])


def test_user_errors_show_the_traceback_with_trl_debug(monkeypatch):
    monkeypatch.setenv("TRL_DEBUG", "1")
    with pytest.raises(ValueError, match="--verbose"):
        main(["env", "--verbose"])


def test_help_lists_commands(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    assert "sft" in out and "env" in out and "--accelerate_config" in out


def test_unknown_command():
    with pytest.raises(SystemExit, match="unknown command 'nope'"):
        main(["nope"])


def test_sft_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sft", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--model_name_or_path", "--dataset_name", "--datasets", "--lora_target_modules", "--max_length"):
        assert option in out


def test_sft_rejects_unknown_argument_before_launch(capsys):
    assert "--not_an_option" in _user_error(capsys, ["sft", "--model_name_or_path", "m", "--not_an_option", "1"])


def test_sft_rejects_unknown_accelerate_profile(capsys):
    line = _user_error(capsys, ["sft", "--model_name_or_path", "m", "--accelerate_config", "zero9"])
    assert "neither a file nor a valid config" in line


@pytest.mark.slow
def test_sft_with_config_file(tmp_path):
    """`trl sft --config`: YAML mixture, env, a launch option in the YAML, LoRA lists and a CLI override."""
    train_file = os.path.join(get_dataset_path(), "standard_language_modeling", "train.jsonl")
    config = {
        "model_name_or_path": get_tiny_model_path(),
        "datasets": [{"path": "json", "data_files": train_file, "columns": ["text"]}],
        "output_dir": str(tmp_path / "out"),
        "max_steps": 100,
        "per_device_train_batch_size": 2,
        "save_strategy": "steps",
        "save_steps": 2,
        "report_to": "none",
        "num_processes": 1,
        "env": {"TOKENIZERS_PARALLELISM": "false"},
    }
    config_path = tmp_path / "sft.yaml"
    config_path.write_text(yaml.safe_dump(config))

    argv = [
        "trl",
        "sft",
        "--config",
        str(config_path),
        "--max_steps",
        "2",
        "--use_peft",
        "--lora_target_modules",
        "q_proj",
        "v_proj",
    ]
    with patch("sys.argv", argv):
        main()

    out = tmp_path / "out"
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert sorted(adapter_config["target_modules"]) == ["q_proj", "v_proj"]
    assert (out / "adapter_model.safetensors").exists()
    # The command line's max_steps (2) overrode the YAML's (100).
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["max_steps"] == 2
    assert not (out / "checkpoint-4").exists()
