"""`to_config`: another config class given as `args` is converted field by field; a field that its `__post_init__`
derived from another (the generation batch) is derived again instead of being passed twice."""

import pytest
from transformers import TrainingArguments

from trl import GRPOConfig
from trl.import_utils import suppress_experimental_warning
from trl.trainer.model_utils import to_config


with suppress_experimental_warning():
    from trl.experimental.gmpo import GMPOConfig


def grpo(tmp_path, **kwargs) -> GRPOConfig:
    return GRPOConfig(
        output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=4, num_generations=4, **kwargs
    )


def test_a_grpo_config_set_by_steps_per_generation_converts_with_its_values(tmp_path):
    args = grpo(tmp_path, steps_per_generation=3, learning_rate=3e-6, beta=0.04, epsilon_high=0.28)
    assert (args.generation_batch_size, args.steps_per_generation) == (12, 3)
    converted = to_config(args, GMPOConfig, "model", "GMPO")
    assert type(converted) is GMPOConfig
    assert (converted.generation_batch_size, converted.steps_per_generation) == (12, 3)
    assert converted.learning_rate == 3e-6 and converted.beta == 0.04 and converted.epsilon_high == 0.28
    assert converted.output_dir == str(tmp_path) and converted.per_device_train_batch_size == 4


def test_a_grpo_config_set_by_generation_batch_size_converts_with_its_values(tmp_path):
    args = grpo(tmp_path, generation_batch_size=16, gradient_accumulation_steps=2)
    converted = to_config(args, GMPOConfig, "model", "GMPO")
    assert (converted.generation_batch_size, converted.steps_per_generation) == (16, 4)
    assert converted.gradient_accumulation_steps == 2


def test_a_default_grpo_config_converts(tmp_path):
    converted = to_config(grpo(tmp_path), GMPOConfig, "model", "GMPO")
    assert (converted.generation_batch_size, converted.steps_per_generation) == (4, 1)


def test_training_arguments_convert_and_an_invalid_value_still_raises(tmp_path):
    converted = to_config(
        TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, learning_rate=2e-5),
        GRPOConfig, "model", "GRPO",
    )  # fmt: skip
    assert type(converted) is GRPOConfig and converted.learning_rate == 2e-5
    assert (converted.generation_batch_size, converted.steps_per_generation) == (8, 1)
    # A batch of 3 completions cannot hold whole groups of GRPO's default 8: the target's error is kept.
    with pytest.raises(ValueError, match="multiple of num_generations"):
        to_config(TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=3), GRPOConfig, "m", "GRPO")


def test_args_of_the_config_class_are_used_as_they_are_and_none_gives_the_default(tmp_path):
    args = grpo(tmp_path)
    assert to_config(args, GRPOConfig, "model", "GRPO") is args
    assert to_config(None, GRPOConfig, "org/model", "GRPO").output_dir == "model-GRPO"
