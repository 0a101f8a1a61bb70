"""The trained model is loaded in float32 unless `model_init_kwargs` sets `dtype`: bf16 weights drop small updates."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer
from trl.testing import get_tiny_model_path, load_test_dataset
from trl.trainer.model_utils import load_trained_model

from .testing_utils import snapshot


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory) -> str:
    """A bf16 copy of the tiny Qwen2, like most published checkpoints."""
    source = get_tiny_model_path("qwen2")
    directory = tmp_path_factory.mktemp("bf16-qwen2")
    AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16).save_pretrained(directory)
    AutoTokenizer.from_pretrained(source).save_pretrained(directory)
    return str(directory)


def common_args(tmp_path) -> dict:
    # The default learning rate on purpose: it is the one whose updates a bf16 weight rounds away.
    return dict(
        output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=4, max_steps=3, logging_steps=1,
        save_strategy="no", disable_tqdm=True, seed=0,
    )  # fmt: skip


def unchanged(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> list[str]:
    return [name for name, param in model.named_parameters() if torch.equal(param, before[name])]


@pytest.mark.parametrize(
    ("model_init_kwargs", "expected"),
    [
        (None, torch.float32),
        ({"dtype": None}, torch.float32),
        ({"dtype": "auto"}, torch.bfloat16),
        ({"dtype": "bfloat16"}, torch.bfloat16),
        ({"torch_dtype": "float16"}, torch.float16),
        ({"dtype": torch.float32}, torch.float32),
    ],
)
def test_trained_model_is_float32_unless_dtype_is_set(bf16_checkpoint, model_init_kwargs, expected):
    args = SFTConfig(output_dir="out", model_init_kwargs=model_init_kwargs)
    assert load_trained_model(bf16_checkpoint, args).dtype == expected


def test_sft_from_a_bf16_checkpoint_trains_every_parameter_in_float32(tmp_path, bf16_checkpoint):
    args = SFTConfig(**common_args(tmp_path), max_length=64)
    assert args.learning_rate == 2e-5
    trainer = SFTTrainer(bf16_checkpoint, args=args, train_dataset=load_test_dataset("standard_language_modeling"))
    assert {param.dtype for param in trainer.model.parameters()} == {torch.float32}
    before = snapshot(trainer.model)
    trainer.train()
    assert unchanged(trainer.model, before) == []


def test_dpo_from_a_bf16_checkpoint_trains_in_float32_and_the_reference_stays_bf16(tmp_path, bf16_checkpoint):
    args = DPOConfig(**common_args(tmp_path), max_length=64)
    assert args.learning_rate == 1e-6
    trainer = DPOTrainer(
        bf16_checkpoint, ref_model=bf16_checkpoint, args=args, train_dataset=load_test_dataset("standard_preference")
    )
    assert {param.dtype for param in trainer.model.parameters()} == {torch.float32}
    # A frozen reference may keep its checkpoint's dtype: it is never updated.
    assert trainer.ref_model.dtype == torch.bfloat16
    before = snapshot(trainer.model)
    trainer.train()
    assert unchanged(trainer.model, before) == []
