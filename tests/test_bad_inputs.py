"""A catalogue of bad inputs, each found by using the trainers and the CLI as a user would.

Every case names what the user did wrong, how to trigger it, the exception it must raise and a regex that the message
must match: the message names the field, column, row or function at fault and the fix. Before these checks each
of them gave a cryptic error, trained on nothing, or silently damaged the run.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import yaml
from datasets import Dataset

from trl import (
    BCOConfig,
    CPOConfig,
    DPOConfig,
    DPOTrainer,
    GRPOConfig,
    GRPOTrainer,
    KTOConfig,
    ORPOConfig,
    PRMConfig,
    RewardConfig,
    RLOOConfig,
    SFTConfig,
    SFTTrainer,
)
from trl.cli import main as trl_main
from trl.testing import get_tiny_model_path
from trl.trainer.reward_scoring import RewardScorer


MODEL = get_tiny_model_path()
LIMIT = 512  # max_position_embeddings of the tiny models
OUT = "bad-inputs-out"  # never written: every case fails before anything is saved


@dataclass(frozen=True)
class Case:
    """One bad input: `trigger()` must raise `error` with a message matching `match`."""

    id: str
    trigger: Callable[[], object]
    error: type[BaseException]
    match: str


# ------------------------------------------------------------------------------------------------------ helpers
def _sft(rows: list[dict] | Dataset, **config) -> SFTTrainer:
    data = rows if not isinstance(rows, list) else Dataset.from_list(rows)
    return SFTTrainer(MODEL, args=SFTConfig(output_dir=OUT, report_to="none", **config), train_dataset=data)


def _sft_columns(columns: dict, **config) -> SFTTrainer:
    return _sft(Dataset.from_dict(columns), **config)


def _dpo(columns: dict, **config) -> DPOTrainer:
    args = DPOConfig(output_dir=OUT, report_to="none", **config)
    return DPOTrainer(MODEL, args=args, train_dataset=Dataset.from_dict(columns))


def _pairs(prompt=("Hi",), chosen=(" yes",), rejected=(" no",)) -> dict:
    return {"prompt": list(prompt), "chosen": list(chosen), "rejected": list(rejected)}


def _grpo(**config) -> GRPOTrainer:
    args = GRPOConfig(output_dir=OUT, report_to="none", per_device_train_batch_size=2, num_generations=2, **config)
    data = Dataset.from_dict({"prompt": ["Hi", "Yo"]})
    return GRPOTrainer(
        MODEL, reward_funcs=lambda completions, **_: [1.0] * len(completions), args=args, train_dataset=data
    )


def _config(config_class: type, **fields) -> object:
    return config_class(output_dir=OUT, report_to="none", **fields)


def _score(func: Callable) -> object:
    completions = ["a", "b"]
    return RewardScorer([func]).score(["p", "q"], completions, [[1], [2]], {})


def length_reward(completions, **kwargs):
    return [float(len(c)) for c in completions]


def scalar_reward(completions, **kwargs):
    return 1.0


def string_reward(completions, **kwargs):
    return ["0.5" for _ in completions]


def inf_reward(completions, **kwargs):
    return [math.inf, 1.0]


def neg_inf_reward(completions, **kwargs):
    return [-math.inf, 1.0]


def text_reward(completions, **kwargs):
    return "good"


def none_reward(completions, **kwargs):
    return None


def dict_reward(completions, **kwargs):
    return {"a": 1.0, "b": 2.0}


def nested_reward(completions, **kwargs):
    return [[1.0], [2.0]]


def object_reward(completions, **kwargs):
    return [object(), object()]


_PARSER = None


def _parse_yaml(tmp_dir: str, config: dict) -> object:
    """Parse a YAML config with the `trl sft` parser (built once: a refused config leaves its defaults unchanged)."""
    global _PARSER
    if _PARSER is None:
        from trl.scripts.sft import make_parser

        _PARSER = make_parser()
    path = os.path.join(tmp_dir, "config.yaml")
    with open(path, "w") as file:
        yaml.safe_dump(config, file)
    return _PARSER.parse_args_and_config(["--config", path, "--output_dir", OUT])


def _existing_output(tmp_dir: str, filename: str, **config) -> object:
    """Train into an output directory that already holds a file of the user's."""
    output_dir = os.path.join(tmp_dir, "out")
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, filename), "w") as file:
        file.write("the user's own file")
    args = SFTConfig(output_dir=output_dir, report_to="none", max_steps=1, save_strategy="no", **config)
    trainer = SFTTrainer(MODEL, args=args, train_dataset=Dataset.from_dict({"text": ["hello world"] * 2}))
    return trainer.train()


def resolve_resume_from_checkpoint(value):
    from trl.scripts.cli_checks import resolve_resume_from_checkpoint as resolve

    return resolve(value)


def _cli(tmp_dir: str, argv: list[str], config: dict | None = None) -> None:
    if config is not None:
        path = os.path.join(tmp_dir, "config.yaml")
        with open(path, "w") as file:
            yaml.safe_dump(config, file)
        argv = [*argv, "--config", path]
    trl_main(argv)


TMP = "{tmp}"  # replaced by the test's temporary directory


# ------------------------------------------------------------------------------------------------------ catalogue
def _config_cases() -> list[Case]:
    positive = "must be a positive integer.*Set it to 1 or more"
    cases = [
        Case(
            f"{cls.__name__}-batch-0",
            lambda c=cls: _config(c, per_device_train_batch_size=0),
            ValueError,
            f"per_device_train_batch_size.*{positive}",
        )
        for cls in (
            SFTConfig,
            DPOConfig,
            GRPOConfig,
            RLOOConfig,
            KTOConfig,
            BCOConfig,
            CPOConfig,
            ORPOConfig,
            RewardConfig,
            PRMConfig,
        )
    ]
    cases += [
        Case(
            "sft-grad-accum-0",
            lambda: _config(SFTConfig, gradient_accumulation_steps=0),
            ValueError,
            f"gradient_accumulation_steps.*{positive}",
        ),
        Case(
            "dpo-grad-accum-0",
            lambda: _config(DPOConfig, gradient_accumulation_steps=0),
            ValueError,
            f"gradient_accumulation_steps.*{positive}",
        ),
        Case(
            "grad-accum-negative",
            lambda: _config(SFTConfig, gradient_accumulation_steps=-2),
            ValueError,
            "gradient_accumulation_steps.*positive",
        ),
        Case(
            "batch-negative",
            lambda: _config(SFTConfig, per_device_train_batch_size=-1),
            ValueError,
            "per_device_train_batch_size.*positive",
        ),
        Case(
            "batch-fraction",
            lambda: _config(SFTConfig, per_device_train_batch_size=2.5),
            ValueError,
            "per_device_train_batch_size.*positive integer, got 2.5",
        ),
        Case(
            "eval-batch-0",
            lambda: _config(SFTConfig, per_device_eval_batch_size=0),
            ValueError,
            "per_device_eval_batch_size.*positive",
        ),
        Case(
            "max-steps-negative-no-epochs",
            lambda: _config(SFTConfig, max_steps=-5, num_train_epochs=0),
            ValueError,
            r"max_steps=-5.*num_train_epochs=0.*trains nothing.*set `max_steps` to a positive",
        ),
        Case(
            "max-steps-0-no-epochs",
            lambda: _config(DPOConfig, max_steps=0, num_train_epochs=0),
            ValueError,
            "trains nothing",
        ),
        Case(
            "epochs-negative",
            lambda: _config(SFTConfig, num_train_epochs=-1),
            ValueError,
            r"num_train_epochs=-1.*trains nothing",
        ),
        Case(
            "max-steps-fraction",
            lambda: _config(SFTConfig, max_steps=2.7),
            ValueError,
            "max_steps.*must be an integer, got 2.7",
        ),
    ]
    return cases


def _dataset_cases() -> list[Case]:
    row = r"Row {} of the train dataset's '{}' column"
    return [
        Case(
            "sft-text-int",
            lambda: _sft_columns({"text": [1, 2]}),
            ValueError,
            row.format(0, "text") + r" holds 1 \(int\).*Convert the column to text",
        ),
        Case(
            "sft-text-none",
            lambda: _sft_columns({"text": ["hello", None]}),
            ValueError,
            row.format(1, "text") + r" holds None.*filter out the rows",
        ),
        Case("sft-text-float", lambda: _sft_columns({"text": [0.5]}), ValueError, row.format(0, "text")),
        Case(
            "sft-text-int-list",
            lambda: _sft_columns({"text": [[1, 2, 3]]}),
            ValueError,
            row.format(0, "text") + r" holds \[1, 2, 3\]",
        ),
        Case(
            "sft-custom-text-field-int",
            lambda: _sft_columns({"body": [7]}, dataset_text_field="body"),
            ValueError,
            row.format(0, "body"),
        ),
        Case(
            "sft-prompt-none",
            lambda: _sft_columns({"prompt": [None], "completion": ["x"]}),
            ValueError,
            row.format(0, "prompt"),
        ),
        Case(
            "sft-completion-int",
            lambda: _sft_columns({"prompt": ["a"], "completion": [3]}),
            ValueError,
            row.format(0, "completion"),
        ),
        Case(
            "sft-message-without-role",
            lambda: _sft([{"messages": [{"content": "hi"}]}]),
            ValueError,
            r"Message 0 of row 0 in the train dataset's 'messages' column has no 'role'.*Every message needs",
        ),
        Case(
            "sft-second-message-without-role",
            lambda: _sft([{"messages": [{"role": "user", "content": "hi"}, {"role": None, "content": "yo"}]}]),
            ValueError,
            r"Message 1 of row 0 .*has no 'role'",
        ),
        Case("sft-messages-empty-list", lambda: _sft([{"messages": []}]), ValueError, row.format(0, "messages")),
        Case(
            "sft-prompt-message-without-role",
            lambda: _sft([{"prompt": [{"content": "hi"}], "completion": [{"role": "assistant", "content": "yo"}]}]),
            ValueError,
            r"row 0 in the train dataset's 'prompt' column has no 'role'",
        ),
        Case("sft-plain-list", lambda: _sft_plain([{"text": "hello"}]), TypeError, r"got a list.*Dataset.from_list"),
        Case("sft-plain-dict", lambda: _sft_plain({"text": ["hello"]}), TypeError, r"got a dict.*Dataset.from_dict"),
        Case("sft-eval-plain-list", lambda: _sft_eval_plain([{"text": "hello"}]), TypeError, "got a list"),
        Case(
            "dpo-plain-list",
            lambda: _dpo_plain([{"prompt": "a", "chosen": "b", "rejected": "c"}]),
            TypeError,
            "got a list",
        ),
        Case(
            "sft-all-empty",
            lambda: _sft_columns({"text": ["", ""]}),
            ValueError,
            r"2 of 2 rows of the train dataset have an empty 'text'.*Filter them out",
        ),
        Case("sft-all-whitespace", lambda: _sft_columns({"text": ["  ", "\n"]}), ValueError, "empty 'text'"),
        Case("dpo-chosen-none", lambda: _dpo(_pairs(chosen=(None,))), ValueError, row.format(0, "chosen")),
        Case("dpo-rejected-int", lambda: _dpo(_pairs(rejected=(5,))), ValueError, row.format(0, "rejected")),
        Case("dpo-prompt-int", lambda: _dpo(_pairs(prompt=(5,))), ValueError, row.format(0, "prompt")),
        Case(
            "dpo-identical-pairs",
            lambda: _dpo(_pairs(chosen=(" same",), rejected=(" same",))),
            ValueError,
            r"1 of 1 pairs .*identical chosen and rejected.*no gradient.*Remove them",
        ),
        Case(
            "dpo-no-completion-token",
            lambda: _dpo(_pairs(prompt=("a b c d e f",)), max_length=2),
            ValueError,
            r"no token left after truncation.*raise max_length",
        ),
    ]


def _sft_plain(data) -> SFTTrainer:
    return SFTTrainer(MODEL, args=SFTConfig(output_dir=OUT, report_to="none"), train_dataset=data)


def _sft_eval_plain(data) -> SFTTrainer:
    args = SFTConfig(output_dir=OUT, report_to="none", eval_strategy="no")
    return SFTTrainer(MODEL, args=args, train_dataset=Dataset.from_dict({"text": ["a"]}), eval_dataset=data)


def _dpo_plain(data) -> DPOTrainer:
    return DPOTrainer(MODEL, args=DPOConfig(output_dir=OUT, report_to="none"), train_dataset=data)


def _model_and_length_cases() -> list[Case]:
    missing = r"The model path .* does not exist.*Check the path"
    text = {"text": ["hello"]}
    return [
        Case("model-relative-path", lambda: _sft_model("./no/such/model"), FileNotFoundError, missing),
        Case("model-absolute-path", lambda: _sft_model("/no/such/model"), FileNotFoundError, missing),
        Case("model-home-path", lambda: _sft_model("~/no-such-model"), FileNotFoundError, missing),
        Case("model-three-parts", lambda: _sft_model("models/org/name"), FileNotFoundError, missing),
        Case(
            "dpo-model-path",
            lambda: DPOTrainer("./nowhere", args=_config(DPOConfig), train_dataset=Dataset.from_dict(_pairs())),
            FileNotFoundError,
            missing,
        ),
        Case(
            "sft-max-length-beyond-model",
            lambda: _sft_columns(text, max_length=4096),
            ValueError,
            rf"max_length=4096.*position limit of {LIMIT}.*Set `max_length` to at most {LIMIT}",
        ),
        Case(
            "dpo-max-length-beyond-model",
            lambda: _dpo(_pairs(), max_length=2048),
            ValueError,
            rf"max_length=2048.*at most {LIMIT}",
        ),
        Case(
            "dpo-max-completion-beyond-model",
            lambda: _dpo(_pairs(), max_completion_length=1000),
            ValueError,
            rf"max_completion_length=1000.*at most {LIMIT}",
        ),
        Case(
            "grpo-max-completion-beyond-model",
            lambda: _grpo(max_completion_length=1024),
            ValueError,
            rf"max_completion_length=1024.*at most {LIMIT}",
        ),
    ]


def _sft_model(path: str) -> SFTTrainer:
    return SFTTrainer(path, args=_config(SFTConfig), train_dataset=Dataset.from_dict({"text": ["a"]}))


def _reward_cases() -> list[Case]:
    return [
        Case(
            "reward-scalar",
            lambda: _score(scalar_reward),
            TypeError,
            r"'scalar_reward' returned 1.0 \(float\); it must return a list",
        ),
        Case("reward-string", lambda: _score(text_reward), TypeError, r"'text_reward' returned 'good'.*a list"),
        Case("reward-none", lambda: _score(none_reward), TypeError, r"'none_reward' returned None.*a list"),
        Case("reward-dict", lambda: _score(dict_reward), TypeError, r"'dict_reward' returned \{"),
        Case(
            "reward-strings",
            lambda: _score(string_reward),
            TypeError,
            r"'string_reward' returned '0.5' \(str\) for completion 0.*Convert it with float",
        ),
        Case("reward-nested", lambda: _score(nested_reward), TypeError, r"'nested_reward' returned \[1.0\]"),
        Case("reward-objects", lambda: _score(object_reward), TypeError, r"'object_reward' returned <object"),
        Case(
            "reward-inf",
            lambda: _score(inf_reward),
            ValueError,
            r"'inf_reward' returned inf for completion 0; rewards must be finite.*Clip",
        ),
        Case("reward-neg-inf", lambda: _score(neg_inf_reward), ValueError, r"'neg_inf_reward' returned -inf"),
    ]


def _yaml_cases() -> list[Case]:
    def case(case_id: str, config: dict, match: str) -> Case:
        return Case(case_id, lambda: _parse_yaml(TMP, config), ValueError, match)

    return [
        case("yaml-max-steps-float", {"max_steps": 2.7}, r"`max_steps` must be an integer, got 2.7"),
        case("yaml-learning-rate-bool", {"learning_rate": True}, r"`learning_rate` must be a number, got True"),
        case(
            "yaml-batch-list", {"per_device_train_batch_size": [1, 2]}, r"`per_device_train_batch_size` takes a single"
        ),
        case("yaml-batch-fraction", {"per_device_train_batch_size": 2.5}, r"per_device_train_batch_size.*integer"),
        case("yaml-epochs-bool", {"num_train_epochs": False}, r"`num_train_epochs` must be a number"),
        case("yaml-bf16-int", {"bf16": 3}, r"`bf16` must be true or false, got 3"),
        case("yaml-seed-float", {"seed": 1.5}, r"`seed` must be an integer"),
        case("yaml-max-length-float", {"max_length": 12.5}, r"`max_length` must be an integer"),
        case("yaml-max-length-mapping", {"max_length": {"value": 12}}, r"`max_length` takes a single value"),
        case("yaml-weight-decay-list", {"weight_decay": [0.1]}, r"`weight_decay` takes a single value"),
        case("yaml-lora-r-float", {"lora_r": 8.5}, r"`lora_r` must be an integer"),
        case("yaml-packing-string-list", {"packing": ["yes"]}, r"`packing` takes a single value"),
    ]


def _run_cases() -> list[Case]:
    exists = r"already holds \['{}'\].*set `overwrite_output_dir=True`"
    return [
        Case("output-dir-readme", lambda: _existing_output(TMP, "README.md"), ValueError, exists.format("README.md")),
        Case(
            "output-dir-weights",
            lambda: _existing_output(TMP, "model.safetensors"),
            ValueError,
            exists.format("model.safetensors"),
        ),
        Case(
            "output-dir-config", lambda: _existing_output(TMP, "config.json"), ValueError, exists.format("config.json")
        ),
        Case(
            "cli-yaml-type",
            lambda: _cli(TMP, ["sft", "--model_name_or_path", "m"], {"max_steps": 2.7}),
            SystemExit,
            r"^trl sft: error: Config key `max_steps` must be an integer",
        ),
        Case(
            "cli-unknown-argument",
            lambda: _cli(TMP, ["sft", "--model_name_or_path", "m", "--nope", "1"]),
            SystemExit,
            r"^trl sft: error: Unknown arguments \['--nope'\]",
        ),
    ]


CATALOGUE = [
    *_config_cases(),
    *_dataset_cases(),
    *_model_and_length_cases(),
    *_reward_cases(),
    *_yaml_cases(),
    *_run_cases(),
]


def test_catalogue_is_large_and_ids_are_unique():
    assert len(CATALOGUE) >= 60
    assert len({case.id for case in CATALOGUE}) == len(CATALOGUE)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("case", CATALOGUE, ids=lambda case: case.id)
def test_bad_input_gives_a_clear_error(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRL_DEBUG", raising=False)
    global TMP
    TMP = str(tmp_path)  # read by the triggers that write files
    with pytest.raises(case.error) as info:
        case.trigger()
    if case.error is SystemExit:
        assert info.value.code == 2
        message = capsys.readouterr().err.strip()
        assert len(message.splitlines()) == 1 and "Traceback" not in message
    else:
        message = str(info.value)
    assert re.search(case.match, message, flags=re.DOTALL), message


# ------------------------------------------------------------------------------------------------------ behaviour
def test_some_empty_rows_warn_and_train():
    with pytest.warns(UserWarning, match=r"1 of 2 rows .*empty 'text'"):
        _sft_columns({"text": ["", "hello world"]})


def test_some_identical_pairs_warn():
    with pytest.warns(UserWarning, match=r"1 of 2 pairs .*identical"):
        _dpo(_pairs(prompt=("a", "b"), chosen=(" x", " y"), rejected=(" x", " z")))


def test_sharegpt_messages_are_not_reported_as_missing_a_role():
    _sft([{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}])


def test_reward_values_that_are_numbers_are_accepted():
    import numpy as np
    import torch

    def mixed(completions, **kwargs):
        return [np.float32(1.0), None]

    assert _score(mixed).isnan().tolist() == [[False], [True]]
    assert _score(lambda completions, **_: torch.tensor([1.0, 2.0])).tolist() == [[1.0], [2.0]]


def test_yaml_lists_and_mappings_are_accepted_where_the_field_takes_them(tmp_path):
    config = {"report_to": ["none"], "lora_target_modules": ["q_proj"], "model_init_kwargs": {"dtype": "float32"}}
    from trl.scripts.sft import make_parser

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**config, "learning_rate": "2e-5", "max_steps": 3}))
    _, args, model_args, _ = make_parser().parse_args_and_config(["--config", str(path), "--output_dir", OUT])
    assert args.max_steps == 3 and args.learning_rate == 2e-5 and model_args.lora_target_modules == ["q_proj"]


@pytest.mark.parametrize("value, expected", [("true", True), ("True", True), ("false", None), (None, None)])
def test_resume_from_checkpoint_true_on_the_cli(value, expected):
    assert resolve_resume_from_checkpoint(value) is expected


def test_resume_from_a_missing_folder_is_refused_before_the_model_loads():
    with pytest.raises(FileNotFoundError, match=r"is not a folder.*or `true` to resume from the latest"):
        resolve_resume_from_checkpoint("no/such/checkpoint")


def test_run_training_resumes_from_the_latest_checkpoint_with_true(tmp_path, monkeypatch):
    from trl.scripts import training_script
    from trl.scripts.sft import make_parser

    seen = {}

    class FakeTrainer:
        _name = "SFT"

        def __init__(self, **kwargs):
            pass

        def train(self, resume_from_checkpoint=None):
            seen["resume"] = resume_from_checkpoint

        def save_model(self, output_dir):
            pass

    dataset = {"train": Dataset.from_dict({"text": ["a"]})}
    monkeypatch.setattr(training_script, "load_dataset_from_args", lambda *_: dataset)
    argv = ["--model_name_or_path", MODEL, "--output_dir", str(tmp_path), "--resume_from_checkpoint", "true"]
    script_args, args, model_args, dataset_args = make_parser().parse_args_and_config(argv)
    training_script.run_training(FakeTrainer, script_args, args, model_args, dataset_args)
    assert seen["resume"] is True


def test_a_second_train_of_the_same_trainer_writes_over_its_own_files(tmp_path):
    args = SFTConfig(output_dir=str(tmp_path), report_to="none", max_steps=1, save_steps=1)
    trainer = SFTTrainer(MODEL, args=args, train_dataset=Dataset.from_dict({"text": ["hello world"] * 2}))
    trainer.train()
    assert (tmp_path / "README.md").exists()
    trainer.train()


def test_overwrite_output_dir_allows_writing_over_and_resume_is_allowed(tmp_path):
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    (output_dir / "README.md").write_text("mine")
    data = Dataset.from_dict({"text": ["hello world"] * 4})
    args = SFTConfig(
        output_dir=str(output_dir),
        report_to="none",
        max_steps=2,
        save_steps=1,
        logging_steps=1,
        overwrite_output_dir=True,
    )
    SFTTrainer(MODEL, args=args, train_dataset=data).train()
    # Resuming from a checkpoint of the directory is always allowed, and `num_tokens` continues from the checkpoint.
    args = SFTConfig(output_dir=str(output_dir), report_to="none", max_steps=3, logging_steps=1)
    resumed = SFTTrainer(MODEL, args=args, train_dataset=data)
    resumed.train(resume_from_checkpoint=str(output_dir / "checkpoint-1"))
    with open(output_dir / "checkpoint-1" / "trainer_state.json") as file:
        at_checkpoint = [e["num_tokens"] for e in json.load(file)["log_history"] if "num_tokens" in e][-1]
    after = [e["num_tokens"] for e in resumed.state.log_history if "num_tokens" in e]
    # Every step sees the same 4 rows (one batch per epoch): the count grows by one step's tokens per step.
    assert after[-1] == 3 * at_checkpoint


# ------------------------------------------------------------------------------- every trainer checks its text
def _trainer_with_bad_prompt(method: str):
    from trl import BCOTrainer, CPOTrainer, KTOTrainer, ORPOTrainer, RewardTrainer, RLOOTrainer

    bad = {"prompt": ["Hi", None], "chosen": [" yes", " ok"], "rejected": [" no", " nope"]}
    unpaired = {"prompt": ["Hi", None], "completion": [" yes", " no"], "label": [True, False]}
    common = dict(output_dir=OUT, report_to="none")
    reward = dict(reward_funcs=lambda completions, **_: [1.0] * len(completions))
    online = dict(per_device_train_batch_size=2, num_generations=2)
    builders = {
        "cpo": lambda: CPOTrainer(MODEL, args=CPOConfig(**common), train_dataset=Dataset.from_dict(bad)),
        "orpo": lambda: ORPOTrainer(MODEL, args=ORPOConfig(**common), train_dataset=Dataset.from_dict(bad)),
        "kto": lambda: KTOTrainer(MODEL, args=KTOConfig(**common), train_dataset=Dataset.from_dict(unpaired)),
        "bco": lambda: BCOTrainer(MODEL, args=BCOConfig(**common), train_dataset=Dataset.from_dict(unpaired)),
        "reward": lambda: RewardTrainer(
            get_tiny_model_path("qwen2-seq-cls"), args=RewardConfig(**common), train_dataset=Dataset.from_dict(bad)
        ),
        "grpo": lambda: GRPOTrainer(
            MODEL,
            args=GRPOConfig(**common, **online),
            train_dataset=Dataset.from_dict({"prompt": ["Hi", None]}),
            **reward,
        ),
        "rloo": lambda: RLOOTrainer(
            MODEL,
            args=RLOOConfig(**common, **online),
            train_dataset=Dataset.from_dict({"prompt": ["Hi", None]}),
            **reward,
        ),
    }
    return builders[method]()


@pytest.mark.parametrize("method", ["cpo", "orpo", "kto", "bco", "reward", "grpo", "rloo"])
def test_every_trainer_names_the_row_of_a_non_text_prompt(method):
    with pytest.raises(ValueError, match=r"Row 1 of the train dataset's 'prompt' column holds None \(NoneType\)"):
        _trainer_with_bad_prompt(method)
