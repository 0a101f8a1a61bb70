import pytest
import torch
from transformers import AutoTokenizer

from trl import SFTConfig, SFTTrainer
from trl.testing import get_tiny_model_path, get_tiny_tokenizer_path, load_test_dataset
from trl.trainer.base_config import _BaseConfig
from trl.trainer.model_utils import resolve_dtype, resolve_model_init_kwargs, resolve_pad_token_id


def test_base_config_defaults():
    config = _BaseConfig(output_dir="out", report_to="none")
    assert config.logging_steps == 10
    assert config.gradient_checkpointing is True
    assert config.gradient_checkpointing_kwargs == {"use_reentrant": False}
    # No bf16-capable accelerator here: None resolves to False instead of failing.
    assert config.bf16 is False
    assert (
        _BaseConfig(output_dir="out", report_to="none", gradient_checkpointing=False).gradient_checkpointing is False
    )


def test_json_string_dict_fields_are_decoded():
    config = SFTConfig(output_dir="out", report_to="none", model_init_kwargs='{"dtype": "bfloat16"}')
    assert config.model_init_kwargs == {"dtype": "bfloat16"}
    with pytest.raises(ValueError, match="JSON"):
        SFTConfig(output_dir="out", report_to="none", model_init_kwargs="{not json")


def test_dtype_resolution():
    assert resolve_dtype("bfloat16") is torch.bfloat16
    assert resolve_dtype("torch.float16") is torch.float16
    assert resolve_dtype("auto") == "auto"
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("int3")
    assert resolve_model_init_kwargs({"torch_dtype": "float32"}) == {
        "dtype": torch.float32,
        "trust_remote_code": False,
    }
    with pytest.raises(ValueError, match="torch_dtype"):
        resolve_model_init_kwargs({"torch_dtype": "float32", "dtype": "float32"})


def test_pad_token_resolution():
    tokenizer = AutoTokenizer.from_pretrained(get_tiny_tokenizer_path("llama3"))
    assert tokenizer.pad_token is None
    assert resolve_pad_token_id(tokenizer) == tokenizer.eos_token_id
    with pytest.warns(FutureWarning, match="pad_token"):
        assert resolve_pad_token_id(tokenizer, "<|begin_of_text|>") == tokenizer.bos_token_id


def test_default_output_dir_and_model_card(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trainer = SFTTrainer(get_tiny_model_path("qwen2"), train_dataset=load_test_dataset("standard_language_modeling"))
    assert trainer.args.output_dir.endswith("-SFT")
    trainer.create_model_card(model_name="my-model", dataset_name="org/data", tags=["extra"])
    card = (tmp_path / trainer.args.output_dir / "README.md").read_text()
    assert card.startswith("---\n")
    for expected in ("model_name: my-model", "- generated_from_trainer", "- extra", "- sft", "org/data", "SFT"):
        assert expected in card


def test_metrics_are_averaged_and_cleared(tmp_path):
    args = SFTConfig(output_dir=str(tmp_path), report_to="none", max_steps=1)
    trainer = SFTTrainer(
        get_tiny_model_path("qwen2"), args=args, train_dataset=load_test_dataset("standard_language_modeling")
    )
    trainer.log_metric("custom", 1.0, "train")
    trainer.log_metric("custom", 3.0, "train")
    trainer.log_metric("custom", 10.0, "eval")
    logs = {"loss": 0.5}
    trainer.log(logs)
    assert logs["custom"] == 2.0
    assert trainer.state.log_history[-1]["custom"] == 2.0
    assert not trainer._metrics["train"]
    eval_logs = {"eval_loss": 0.1}
    trainer.log(eval_logs)
    assert eval_logs["eval_custom"] == 10.0


def test_derived_quantities_table(tmp_path, capsys):
    args = SFTConfig(
        output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=3, gradient_accumulation_steps=2,
        max_length=64, num_train_epochs=2,
    )  # fmt: skip
    dataset = load_test_dataset("standard_language_modeling")
    trainer = SFTTrainer(get_tiny_model_path("qwen2"), args=args, train_dataset=dataset)
    rows = trainer._derived_quantities()
    assert rows["global batch (sequences/step)"] == 6
    assert rows["optimizer steps per epoch"] == -(-len(dataset) // 6)
    assert rows["total optimizer steps"] == 2 * rows["optimizer steps per epoch"]
    assert rows["max tokens per step"] == 6 * 64
    trainer._print_derived_quantities()
    assert "global batch" in capsys.readouterr().out


def test_activation_offloading_wraps_the_loss_in_save_on_cpu(tmp_path, monkeypatch):
    import contextlib

    entered = []

    @contextlib.contextmanager
    def fake_save_on_cpu(pin_memory=False):
        entered.append(pin_memory)
        yield

    args = SFTConfig(output_dir=str(tmp_path), report_to="none", max_steps=1)
    trainer = SFTTrainer(
        get_tiny_model_path("qwen2"), args=args, train_dataset=load_test_dataset("standard_language_modeling")
    )
    monkeypatch.setattr(torch.autograd.graph, "save_on_cpu", fake_save_on_cpu)
    with trainer.compute_loss_context_manager():
        pass
    assert entered == []
    # Only reachable on an accelerator (the trainers refuse it on CPU); the context is what matters here.
    trainer.args.activation_offloading = True
    with trainer.compute_loss_context_manager():
        pass
    assert entered == [True]


def test_pin_memory_is_off_without_an_accelerator_and_training_does_not_warn(tmp_path):
    import warnings

    from datasets import Dataset

    if torch.accelerator.is_available():
        pytest.skip("this machine has an accelerator: pinned memory is useful there")
    args = SFTConfig(output_dir=str(tmp_path), report_to="none", max_steps=1, save_strategy="no")
    assert args.dataloader_pin_memory is False
    trainer = SFTTrainer(get_tiny_model_path(), args=args, train_dataset=Dataset.from_dict({"text": ["hello"] * 2}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert not [w for w in caught if "pin_memory" in str(w.message)]
