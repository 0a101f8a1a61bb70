"""Unit tests of the CLI building blocks: TrlParser + YAML, dataset mixtures, ModelConfig, PEFT helpers, launch args."""

import json
import logging
import os
from dataclasses import dataclass, field

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from datasets import IterableDatasetDict

import trl.trainer.peft_utils as peft_utils
from trl.cli import COMMANDS, Command, find_command, prepare_launch_args, split_script_and_launch_args
from trl.scripts.utils import (
    LAUNCHED_BY_TRL_ENV,
    DatasetConfig,
    DatasetMixtureConfig,
    ScriptArguments,
    TrlParser,
    available_accelerate_configs,
    get_dataset,
    load_dataset_from_args,
    merge_model_init_kwargs,
    mixture_row_counts,
    model_init_kwargs_from_args,
    parse_script_args,
    resolve_accelerate_config,
)
from trl.trainer.model_config import ModelConfig
from trl.trainer.peft_utils import get_peft_config, get_quantization_config


@dataclass
class MyArgs:
    arg1: int
    arg2: str = "default"


@dataclass
class ListArgs:
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid"])
    loss_weights: list[float] | None = None


@dataclass
class OtherArgs:
    arg3: float = 0.5


def write_yaml(tmp_path, content, name="config.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return str(path)


def write_jsonl(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


# ---------------------------------------------------------------------------------------------------------------
# TrlParser
# ---------------------------------------------------------------------------------------------------------------


def test_parser_rejects_config_field():
    @dataclass
    class WithConfig:
        config: str = "x"

    with pytest.raises(ValueError, match="named `config`"):
        TrlParser((WithConfig,))


def test_yaml_values_become_defaults(tmp_path):
    config = write_yaml(tmp_path, {"arg1": 2, "arg2": "config_value"})
    (args,) = TrlParser((MyArgs,)).parse_args_and_config(["--config", config])
    assert args == MyArgs(arg1=2, arg2="config_value")


def test_cli_overrides_yaml(tmp_path):
    config = write_yaml(tmp_path, {"arg1": 2, "arg2": "config_value"})
    (args,) = TrlParser((MyArgs,)).parse_args_and_config(["--arg1", "3", f"--config={config}"])
    assert args == MyArgs(arg1=3, arg2="config_value")


def test_yaml_string_values_are_typed_like_cli_values(tmp_path):
    # YAML reads `1e-5` as a string; argparse applies the field type to string defaults.
    config = write_yaml(tmp_path, {"arg3": "1e-5"})
    (args,) = TrlParser((OtherArgs,)).parse_args_and_config(["--config", config])
    assert args.arg3 == 1e-5


def test_invalid_env_raises(tmp_path):
    config = write_yaml(tmp_path, {"arg1": 2, "env": "not a mapping"})
    with pytest.raises(ValueError, match="`env`"):
        TrlParser((MyArgs,)).parse_args_and_config(["--config", config])


def test_env_is_exported(tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_TEST_VAR", "before")
    config = write_yaml(tmp_path, {"arg1": 2, "env": {"TRL_TEST_VAR": "after", "TRL_TEST_NUMBER": 7}})
    monkeypatch.setenv("TRL_TEST_NUMBER", "0")  # registers it for restoration at teardown
    TrlParser((MyArgs,)).parse_args_and_config(["--config", config])
    assert os.environ["TRL_TEST_VAR"] == "after"
    assert os.environ["TRL_TEST_NUMBER"] == "7"


def test_non_mapping_yaml_raises(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="YAML mapping"):
        TrlParser((MyArgs,)).parse_args_and_config(["--config", str(path)])


def test_no_config():
    (args,) = TrlParser((MyArgs,)).parse_args_and_config(["--arg1", "2", "--arg2", "value"])
    assert args == MyArgs(arg1=2, arg2="value")


def test_config_given_twice_raises(tmp_path):
    config = write_yaml(tmp_path, {"arg1": 2})
    with pytest.raises(ValueError, match="twice"):
        TrlParser((MyArgs,)).parse_args_and_config(["--config", config, "--config", config])


def test_set_defaults_with_config():
    parser = TrlParser((MyArgs,))
    remaining = parser.set_defaults_with_config(arg1=42, arg2="new_default", unknown_key=1)
    assert remaining == ["--unknown_key", "1"]
    (args,) = parser.parse_args_and_config([])  # arg1 is no longer required
    assert args == MyArgs(arg1=42, arg2="new_default")


def test_remaining_strings_from_config_and_args(tmp_path):
    config = write_yaml(tmp_path, {"arg1": 2, "remaining_in_config": "config_value"})
    parser = TrlParser((MyArgs,))
    args = ["--arg2", "value", "--config", config, "--remaining_in_args", "value2"]
    parsed, remaining = parser.parse_args_and_config(args, return_remaining_strings=True)
    assert parsed == MyArgs(arg1=2, arg2="value")
    assert remaining == ["--remaining_in_config", "config_value", "--remaining_in_args", "value2"]


def test_remaining_strings_separated(tmp_path):
    config = write_yaml(tmp_path, {"arg1": 2, "num_processes": 4, "cpu": True, "gpu_ids": [0, 1]})
    parser = TrlParser((MyArgs,))
    parsed, config_remaining, cli_remaining = parser.parse_args_and_config(
        ["--config", config, "--mixed_precision", "bf16"], separate_remaining_strings=True
    )
    assert parsed == MyArgs(arg1=2)
    assert config_remaining == ["--num_processes", "4", "--cpu", "True", "--gpu_ids", "0", "1"]
    assert cli_remaining == ["--mixed_precision", "bf16"]


def test_remaining_strings_only_from_args():
    parser = TrlParser((MyArgs,))
    parsed, config_remaining, cli_remaining = parser.parse_args_and_config(
        ["--arg1", "1", "--extra", "x"], separate_remaining_strings=True
    )
    assert parsed == MyArgs(arg1=1)
    assert (config_remaining, cli_remaining) == ([], ["--extra", "x"])


def test_unknown_yaml_key_raises_naming_it(tmp_path):
    config = write_yaml(tmp_path, {"arg1": 2, "lerning_rate": 0.1})
    with pytest.raises(ValueError, match="--lerning_rate"):
        TrlParser((MyArgs,)).parse_args_and_config(["--config", config])


def test_unknown_cli_arg_raises_naming_it():
    with pytest.raises(ValueError, match="--arg_typo"):
        TrlParser((MyArgs,)).parse_args_and_config(["--arg1", "1", "--arg_typo", "2"])


def test_unknown_args_dropped_when_allowed(tmp_path):
    config = write_yaml(tmp_path, {"arg1": 2, "unknown": 1})
    (args,) = TrlParser((MyArgs,)).parse_args_and_config(["--config", config], fail_with_unknown_args=False)
    assert args == MyArgs(arg1=2)


def test_abbreviations_are_not_accepted():
    # `--arg` would silently match `--arg1` / `--arg2` with argparse's default allow_abbrev.
    with pytest.raises(ValueError, match="--ar"):
        TrlParser((MyArgs,)).parse_args_and_config(["--arg1", "1", "--ar", "x"])


def test_lists_from_cli_and_yaml(tmp_path):
    parser = TrlParser((ListArgs,))
    (args,) = parser.parse_args_and_config(["--loss_type", "sigmoid", "bco_pair", "--loss_weights", "1.0", "0.5"])
    assert args.loss_type == ["sigmoid", "bco_pair"]
    assert args.loss_weights == [1.0, 0.5]
    config = write_yaml(tmp_path, {"loss_type": ["ipo", "hinge"]})
    (args,) = TrlParser((ListArgs,)).parse_args_and_config(["--config", config])
    assert args.loss_type == ["ipo", "hinge"]


def test_dict_field_from_json_string():
    from trl import SFTConfig

    parser = TrlParser((SFTConfig,))
    (args,) = parser.parse_args_and_config(
        [
            "--output_dir",
            "out",
            "--report_to",
            "none",
            "--model_init_kwargs",
            '{"dtype": "bfloat16", "revision": "v1"}',
        ]
    )
    assert args.model_init_kwargs == {"dtype": "bfloat16", "revision": "v1"}


def _parser_with_subcommands():
    parser = TrlParser(prog="trl")
    subparsers = parser.add_subparsers(dest="command", parser_class=TrlParser)
    subparsers.add_parser("first", dataclass_types=[MyArgs])
    subparsers.add_parser("second", dataclass_types=[OtherArgs])
    return parser


def test_subparsers_with_config_defaults(tmp_path):
    config = write_yaml(tmp_path, {"arg1": 2, "arg2": "config_value"})
    (namespace,) = _parser_with_subcommands().parse_args_and_config(["first", "--config", config])
    assert (namespace.command, namespace.arg1, namespace.arg2) == ("first", 2, "config_value")


def test_subparsers_with_config_and_override(tmp_path):
    config = write_yaml(tmp_path, {"arg1": 2, "arg2": "config_value"})
    (namespace,) = _parser_with_subcommands().parse_args_and_config(["first", "--arg1", "5", "--config", config])
    assert (namespace.arg1, namespace.arg2) == (5, "config_value")


def test_subparsers_keys_for_several_subcommands(tmp_path):
    # A key known to any subcommand is consumed; only keys known to none are unknown.
    config = write_yaml(tmp_path, {"arg1": 2, "arg3": 0.25})
    (namespace,) = _parser_with_subcommands().parse_args_and_config(["second", "--config", config])
    assert (namespace.command, namespace.arg3) == ("second", 0.25)


def test_subparsers_wrong_name(tmp_path):
    config = write_yaml(tmp_path, {"arg1": 2})
    with pytest.raises(SystemExit):
        _parser_with_subcommands().parse_args_and_config(["third", "--config", config])


def test_parser_help_renders():
    # argparse formats help with `%`: a stray `%` in a help text would crash `--help`.
    parser = TrlParser((ScriptArguments, ModelConfig, DatasetMixtureConfig))
    assert "--lora_target_modules" in parser.format_help()


# ---------------------------------------------------------------------------------------------------------------
# ModelConfig and the PEFT / quantization helpers
# ---------------------------------------------------------------------------------------------------------------


def test_model_config_defaults_and_cli():
    parser = TrlParser((ModelConfig,))
    (args,) = parser.parse_args_and_config(
        ["--model_name_or_path", "m", "--use_peft", "--lora_target_modules", "q_proj", "v_proj", "--dtype", "auto"]
    )
    assert args.model_revision == "main"
    assert args.dtype == "auto"
    assert args.use_peft is True
    assert args.lora_target_modules == ["q_proj", "v_proj"]
    assert (args.lora_r, args.lora_alpha, args.lora_dropout, args.lora_task_type) == (16, 32, 0.05, "CAUSAL_LM")
    assert ModelConfig().dtype == "float32"


def test_model_config_rejects_bad_dtype_choice():
    with pytest.raises(SystemExit):
        TrlParser((ModelConfig,)).parse_args_and_config(["--dtype", "int8"])
    with pytest.raises(ValueError, match="Invalid dtype"):
        ModelConfig(dtype="int8")


def test_model_config_validation():
    with pytest.raises(ValueError, match="mutually exclusive"):
        ModelConfig(load_in_4bit=True, load_in_8bit=True)
    assert ModelConfig(lora_target_modules=["all-linear"]).lora_target_modules == "all-linear"
    assert ModelConfig(lora_target_modules=["all-linear", "x"]).lora_target_modules == ["all-linear", "x"]


def test_model_config_torch_dtype_alias():
    with pytest.warns(FutureWarning, match="torch_dtype"):
        config = ModelConfig(torch_dtype="bfloat16")
    assert (config.dtype, config.torch_dtype) == ("bfloat16", None)
    with pytest.raises(ValueError, match="keep only `dtype`"):
        ModelConfig(dtype="float16", torch_dtype="bfloat16")


def test_get_peft_config():
    assert get_peft_config(ModelConfig()) is None
    model_args = ModelConfig(
        use_peft=True,
        lora_r=8,
        lora_alpha=4,
        lora_dropout=0.1,
        lora_target_modules=["q_proj", "v_proj"],
        lora_modules_to_save=["lm_head"],
        lora_task_type="SEQ_CLS",
        use_rslora=True,
    )
    config = get_peft_config(model_args)
    assert type(config).__name__ == "LoraConfig"
    assert (config.r, config.lora_alpha, config.lora_dropout) == (8, 4, 0.1)
    assert config.target_modules == {"q_proj", "v_proj"}
    assert config.modules_to_save == ["lm_head"]
    assert config.task_type == "SEQ_CLS"
    assert (config.bias, config.use_rslora, config.use_dora) == ("none", True, False)


def test_get_peft_config_without_peft(monkeypatch):
    monkeypatch.setattr(peft_utils, "is_peft_available", lambda: False)
    with pytest.raises(ImportError, match="pip install peft"):
        get_peft_config(ModelConfig(use_peft=True))


def test_get_quantization_config(monkeypatch):
    import torch

    assert get_quantization_config(ModelConfig()) is None
    monkeypatch.setattr(peft_utils, "is_bitsandbytes_available", lambda: False)
    with pytest.raises(ImportError, match="pip install bitsandbytes"):
        get_quantization_config(ModelConfig(load_in_4bit=True))

    monkeypatch.setattr(peft_utils, "is_bitsandbytes_available", lambda: True)
    config = get_quantization_config(
        ModelConfig(load_in_4bit=True, dtype="bfloat16", use_bnb_nested_quant=True, bnb_4bit_quant_storage="bfloat16")
    )
    assert config.load_in_4bit and not config.load_in_8bit
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    assert (config.bnb_4bit_quant_type, config.bnb_4bit_use_double_quant) == ("nf4", True)
    assert config.bnb_4bit_quant_storage == torch.bfloat16
    config = get_quantization_config(ModelConfig(load_in_8bit=True))
    assert config.load_in_8bit and not config.load_in_4bit


def test_model_init_kwargs_from_args():
    model_args = ModelConfig(model_revision="v2", attn_implementation="eager", dtype="bfloat16")
    kwargs = model_init_kwargs_from_args(model_args)
    assert kwargs == {"revision": "v2", "attn_implementation": "eager", "dtype": "bfloat16"}
    # Explicit model_init_kwargs win, and their torch_dtype replaces the ModelConfig dtype.
    merged = merge_model_init_kwargs(kwargs, {"torch_dtype": "float16", "revision": "v3"})
    assert merged == {"revision": "v3", "attn_implementation": "eager", "torch_dtype": "float16"}


# ---------------------------------------------------------------------------------------------------------------
# Dataset mixtures
# ---------------------------------------------------------------------------------------------------------------


def test_mixture_config_from_yaml(tmp_path):
    config = write_yaml(
        tmp_path,
        {
            "dataset_name": "ignored",
            "datasets": [
                {"path": "json", "data_files": "a.jsonl", "columns": ["text"], "fraction": 0.25},
                {"path": "org/other", "name": "cfg", "split": "validation", "fraction": 0.75},
            ],
            "test_split_size": 0.1,
        },
    )
    script_args, mixture = TrlParser((ScriptArguments, DatasetMixtureConfig)).parse_args_and_config(
        ["--config", config]
    )
    assert script_args.dataset_name == "ignored"
    assert mixture.datasets == [
        DatasetConfig(path="json", data_files="a.jsonl", columns=["text"], fraction=0.25),
        DatasetConfig(path="org/other", name="cfg", split="validation", fraction=0.75),
    ]
    assert (mixture.streaming, mixture.test_split_size) == (False, 0.1)


def test_mixture_entry_validation():
    with pytest.raises(ValueError, match="unknown keys \\['colums'\\]"):
        DatasetMixtureConfig(datasets=[{"path": "json", "colums": ["a"]}])
    with pytest.raises(ValueError, match="no `path`"):
        DatasetMixtureConfig(datasets=[{"name": "x"}])
    with pytest.raises(ValueError, match="positive"):
        DatasetConfig(path="json", fraction=0)
    assert DatasetMixtureConfig(test_split_size=100.0).test_split_size == 100


def test_get_dataset_single_with_columns(tmp_path):
    data_files = write_jsonl(tmp_path, "a.jsonl", [{"text": f"t{i}", "extra": i} for i in range(5)])
    mixture = DatasetMixtureConfig(datasets=[{"path": "json", "data_files": data_files, "columns": ["text"]}])
    dataset = get_dataset(mixture)
    assert list(dataset) == ["train"]
    assert dataset["train"].column_names == ["text"]
    assert list(dataset["train"]["text"]) == ["t0", "t1", "t2", "t3", "t4"]


def test_get_dataset_concatenates_in_order(tmp_path):
    first = write_jsonl(tmp_path, "a.jsonl", [{"text": "a0"}, {"text": "a1"}])
    second = write_jsonl(tmp_path, "b.jsonl", [{"text": "b0", "other": 1}])
    mixture = DatasetMixtureConfig(
        datasets=[
            DatasetConfig(path="json", data_files=first),
            DatasetConfig(path="json", data_files=second, columns=["text"]),
        ]
    )
    assert list(get_dataset(mixture)["train"]["text"]) == ["a0", "a1", "b0"]


def test_mixture_row_counts_hand_computed():
    # T = min(10 / 0.5, 100 / 0.5) = 20 -> 10 + 10 rows.
    assert mixture_row_counts([10, 100], [0.5, 0.5]) == [10, 10]
    # T = min(10 / 0.3, 100 / 0.7) = 33.33 -> 10 and round(23.33) = 23 rows.
    assert mixture_row_counts([10, 100], [0.3, 0.7]) == [10, 23]
    # The second dataset is the binding one: T = min(50 / 0.8, 4 / 0.2) = 20 -> 16 + 4 rows.
    assert mixture_row_counts([50, 4], [0.8, 0.2]) == [16, 4]


def test_get_dataset_with_fractions(tmp_path):
    first = write_jsonl(tmp_path, "a.jsonl", [{"text": f"a{i}"} for i in range(10)])
    second = write_jsonl(tmp_path, "b.jsonl", [{"text": f"b{i}"} for i in range(100)])
    # Fractions 3 and 7 normalise to 0.3 / 0.7: 10 rows of the first dataset, the first 23 of the second.
    mixture = DatasetMixtureConfig(
        datasets=[
            {"path": "json", "data_files": first, "fraction": 3},
            {"path": "json", "data_files": second, "fraction": 7},
        ]
    )
    texts = list(get_dataset(mixture)["train"]["text"])
    assert texts == [f"a{i}" for i in range(10)] + [f"b{i}" for i in range(23)]


def test_get_dataset_fraction_rules(tmp_path):
    first = write_jsonl(tmp_path, "a.jsonl", [{"text": "a"}])
    with pytest.raises(ValueError, match="every dataset of the mixture or to none"):
        get_dataset(DatasetMixtureConfig(datasets=[{"path": "json", "data_files": first, "fraction": 0.5}, first]))
    with pytest.raises(ValueError, match="streaming"):
        get_dataset(
            DatasetMixtureConfig(datasets=[{"path": "json", "data_files": first, "fraction": 1}], streaming=True)
        )


def test_get_dataset_test_split(tmp_path):
    data_files = write_jsonl(tmp_path, "a.jsonl", [{"text": f"t{i}"} for i in range(10)])
    mixture = DatasetMixtureConfig(datasets=[{"path": "json", "data_files": data_files}], test_split_size=0.2)
    dataset = get_dataset(mixture)
    assert (len(dataset["train"]), len(dataset["test"])) == (8, 2)
    assert sorted([*dataset["train"]["text"], *dataset["test"]["text"]]) == sorted(f"t{i}" for i in range(10))
    # A fixed seed: every process of a distributed run gets the same split.
    assert list(get_dataset(mixture)["test"]["text"]) == list(dataset["test"]["text"])


def test_get_dataset_streaming(tmp_path):
    data_files = write_jsonl(tmp_path, "a.jsonl", [{"text": f"t{i}", "n": i} for i in range(3)])
    mixture = DatasetMixtureConfig(
        datasets=[{"path": "json", "data_files": data_files, "columns": ["n"]}], streaming=True
    )
    dataset = get_dataset(mixture)
    assert isinstance(dataset, IterableDatasetDict)
    assert list(dataset["train"]) == [{"n": 0}, {"n": 1}, {"n": 2}]
    with pytest.raises(ValueError, match="test_split_size"):
        get_dataset(DatasetMixtureConfig(datasets=mixture.datasets, streaming=True, test_split_size=0.5))


def test_get_dataset_empty_mixture_raises():
    with pytest.raises(ValueError, match="empty"):
        get_dataset(DatasetMixtureConfig())


def test_load_dataset_from_args(tmp_path, caplog):
    with pytest.raises(ValueError, match="--dataset_name"):
        load_dataset_from_args(ScriptArguments(), DatasetMixtureConfig())
    data_files = write_jsonl(tmp_path, "a.jsonl", [{"text": "mixture"}])
    mixture = DatasetMixtureConfig(datasets=[{"path": "json", "data_files": data_files}])
    with caplog.at_level(logging.WARNING, logger="trl.scripts.utils"):
        dataset = load_dataset_from_args(ScriptArguments(dataset_name="json"), mixture)
    assert list(dataset["train"]["text"]) == ["mixture"]
    assert "the mixture is used" in caplog.text


def test_load_dataset_from_args_by_name():
    from trl.testing import get_dataset_path

    script_args = ScriptArguments(dataset_name=get_dataset_path(), dataset_config="standard_prompt_only")
    dataset = load_dataset_from_args(script_args, None)
    assert set(dataset) == {"train", "test"}
    assert dataset["train"].column_names == ["prompt"]


# ---------------------------------------------------------------------------------------------------------------
# accelerate profiles and launch arguments
# ---------------------------------------------------------------------------------------------------------------


def test_resolve_accelerate_config(tmp_path):
    assert resolve_accelerate_config("zero2").endswith(os.path.join("accelerate_configs", "zero2.yaml"))
    own = tmp_path / "mine.yaml"
    own.write_text("distributed_type: 'NO'\n")
    assert resolve_accelerate_config(str(own)) == str(own)
    with pytest.raises(ValueError, match="neither a file nor a valid config.*zero3"):
        resolve_accelerate_config("zero4")


EXPECTED_PROFILES = {
    "single_gpu": ("NO", {}),
    "multi_gpu": ("MULTI_GPU", {}),
    "fsdp1": ("FSDP", {"fsdp_version": 1, "fsdp_reshard_after_forward": "FULL_SHARD", "fsdp_use_orig_params": True}),
    "fsdp2": ("FSDP", {"fsdp_version": 2, "fsdp_reshard_after_forward": True}),
    "zero1": ("DEEPSPEED", {"zero_stage": 1, "gradient_accumulation_steps": 1, "zero3_init_flag": False}),
    "zero2": ("DEEPSPEED", {"zero_stage": 2, "zero3_init_flag": False, "offload_param_device": "none"}),
    "zero3": ("DEEPSPEED", {"zero_stage": 3, "zero3_init_flag": True, "zero3_save_16bit_model": True}),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_PROFILES))
def test_accelerate_profiles_load(name):
    config = load_config_from_file(resolve_accelerate_config(name))
    distributed_type, expected = EXPECTED_PROFILES[name]
    assert config.distributed_type == distributed_type
    assert (config.num_machines, config.num_processes, config.mixed_precision) == (1, 8, "bf16")
    assert (config.machine_rank, config.rdzv_backend, config.same_network) == (0, "static", True)
    section = config.fsdp_config or config.deepspeed_config
    assert {key: section[key] for key in expected} == expected


def test_available_accelerate_configs():
    assert available_accelerate_configs() == sorted(EXPECTED_PROFILES)


def test_prepare_launch_args():
    launch = prepare_launch_args(["--accelerate_config", "zero2", "--num_processes", "2", "--cpu", "True"])
    assert launch == ["--config_file", resolve_accelerate_config("zero2"), "--num_processes", "2", "--cpu"]
    assert prepare_launch_args(["--cpu", "false", "--mixed_precision=bf16", "--cpu"]) == [
        "--mixed_precision",
        "bf16",
        "--cpu",
    ]
    with pytest.raises(ValueError, match="--not_an_option"):
        prepare_launch_args(["--not_an_option", "1"])
    with pytest.raises(ValueError, match="on/off flag"):
        prepare_launch_args(["--cpu", "maybe"])
    with pytest.raises(ValueError, match="neither a file"):
        prepare_launch_args(["--accelerate_config", "zero9"])


def test_split_script_and_launch_args():
    parser = TrlParser((ScriptArguments, ModelConfig), prog="trl test")
    args = [
        "--dataset_name", "d",
        "--num_processes", "2",
        "--lora_target_modules", "q_proj", "v_proj",
        "--cpu",
        "--config", "c.yaml",
        "--main_process_port=1234",
        "--lora_dropout", "-0.5",
    ]  # fmt: skip
    script, launch = split_script_and_launch_args(parser, args)
    assert script == [
        "--dataset_name", "d", "--lora_target_modules", "q_proj", "v_proj", "--config", "c.yaml", "--lora_dropout", "-0.5"
    ]  # fmt: skip
    assert launch == ["--num_processes", "2", "--cpu", "--main_process_port=1234"]
    with pytest.raises(ValueError, match="--bogus.*trl test"):
        split_script_and_launch_args(parser, ["--bogus", "1"])


def test_parse_script_args_accepts_launch_keys_in_config(tmp_path, monkeypatch):
    parser = TrlParser((ScriptArguments, ModelConfig))
    config = write_yaml(tmp_path, {"dataset_name": "d", "num_processes": 2, "accelerate_config": "zero2"})
    monkeypatch.setenv(LAUNCHED_BY_TRL_ENV, "1")
    script_args, model_args = parse_script_args(parser, ["--config", config])
    assert script_args.dataset_name == "d"

    monkeypatch.delenv(LAUNCHED_BY_TRL_ENV)
    with pytest.warns(UserWarning, match="no effect when the script runs directly"):
        parse_script_args(TrlParser((ScriptArguments, ModelConfig)), ["--config", config])

    bad = write_yaml(tmp_path, {"dataset_name": "d", "nonsense": 1}, name="bad.yaml")
    with pytest.raises(ValueError, match="--nonsense"):
        parse_script_args(TrlParser((ScriptArguments, ModelConfig)), ["--config", bad])
    with pytest.raises(ValueError, match="--num_processes"):
        parse_script_args(TrlParser((ScriptArguments, ModelConfig)), ["--num_processes", "2"])


def test_find_command(monkeypatch):
    assert find_command("sft").module == "trl.scripts.sft"
    assert find_command("env").training is False
    assert find_command("nope") is None
    assert find_command("online_dpo").module == "trl.scripts.online_dpo"
    extra = Command("my-method", "my_package.my_method", "My method.", aliases=("mm",))
    monkeypatch.setattr("trl.cli.COMMANDS", (*COMMANDS, extra))
    assert find_command("my_method") is extra
    assert find_command("my-method") is extra
    assert find_command("mm") is extra


def test_init_zero_verbose():
    from trl.scripts.utils import init_zero_verbose

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        init_zero_verbose()
        assert root.level == logging.ERROR
        assert not root.isEnabledFor(logging.WARNING)
    finally:
        logging.captureWarnings(False)
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def test_get_git_commit_hash():
    import re

    from trl.scripts.utils import get_git_commit_hash

    assert get_git_commit_hash("yaml") is None  # installed in site-packages, not a checkout
    assert get_git_commit_hash("no_such_package_xyz") is None
    commit = get_git_commit_hash("trl")
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__import__("trl").__file__)))
    if os.path.exists(os.path.join(repo_root, ".git")):
        assert re.fullmatch("[0-9a-f]{40}", commit)
    else:
        assert commit is None
