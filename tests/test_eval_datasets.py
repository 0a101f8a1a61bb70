"""Every trainer prepares its evaluation data like its training data, whether it is a `Dataset`, an
`IterableDataset` or a dict of them (`trl.trainer.data_preparation.prepare_train_and_eval`)."""

import math

import pytest
from datasets import Dataset, IterableDataset

from trl import (
    BCOConfig,
    BCOTrainer,
    CPOConfig,
    CPOTrainer,
    DPOConfig,
    DPOTrainer,
    GRPOConfig,
    GRPOTrainer,
    KTOConfig,
    KTOTrainer,
    ORPOConfig,
    ORPOTrainer,
    PRMConfig,
    PRMTrainer,
    RewardConfig,
    RewardTrainer,
    RLOOConfig,
    RLOOTrainer,
    SFTConfig,
    SFTTrainer,
)
from trl.testing import get_tiny_model_path, load_test_dataset
from trl.trainer.data_preparation import map_datasets, prepare_train_and_eval, to_map_style


def constant_reward(completions, **kwargs):
    return [1.0] * len(completions)


ONLINE = {"reward_funcs": constant_reward}
ONLINE_ARGS = {"num_generations": 2, "num_generations_eval": 2, "max_completion_length": 4}
# name: (trainer, config, extra config fields, data, tiny model, extra trainer arguments)
TRAINERS = {
    "sft": (SFTTrainer, SFTConfig, {}, "conversational_language_modeling", "qwen2", {}),
    "dpo": (DPOTrainer, DPOConfig, {}, "conversational_preference", "qwen2", {}),
    "kto": (KTOTrainer, KTOConfig, {}, "standard_unpaired_preference", "qwen2", {}),
    "bco": (BCOTrainer, BCOConfig, {}, "standard_unpaired_preference", "qwen2", {}),
    "cpo": (CPOTrainer, CPOConfig, {}, "standard_preference", "qwen2", {}),
    "orpo": (ORPOTrainer, ORPOConfig, {}, "standard_implicit_prompt_preference", "qwen2", {}),
    "reward": (RewardTrainer, RewardConfig, {}, "conversational_preference", "qwen2-seq-cls", {}),
    "prm": (PRMTrainer, PRMConfig, {}, "standard_stepwise_supervision", "qwen2-token-cls", {}),
    "grpo": (GRPOTrainer, GRPOConfig, ONLINE_ARGS, "standard_prompt_only", "qwen2", ONLINE),
    "rloo": (RLOOTrainer, RLOOConfig, ONLINE_ARGS, "conversational_prompt_only", "qwen2", ONLINE),
}


def streaming(dataset: Dataset) -> IterableDataset:
    """The same rows from a generator: an `IterableDataset` whose features are unknown until read."""
    rows = list(dataset)
    return IterableDataset.from_generator(lambda: iter(rows))


def make_trainer(tmp_path, name: str, eval_dataset):
    trainer_class, config_class, fields, data, model, extra = TRAINERS[name]
    args = config_class(
        output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=2, per_device_eval_batch_size=2,
        max_steps=1, save_strategy="no", disable_tqdm=True, seed=0, **fields,
    )  # fmt: skip
    train = load_test_dataset(data).select(range(4))
    return trainer_class(
        get_tiny_model_path(model), args=args, train_dataset=train, eval_dataset=eval_dataset, **extra
    )


def eval_split(name: str) -> Dataset:
    return load_test_dataset(TRAINERS[name][3], split="test").select(range(4))


@pytest.mark.parametrize("name", list(TRAINERS))
def test_streaming_eval_dataset_gives_the_map_style_metrics(tmp_path, name):
    test = eval_split(name)
    metrics = make_trainer(tmp_path, name, streaming(test)).evaluate()
    assert math.isfinite(metrics["eval_loss"])
    if name not in ("grpo", "rloo"):  # online trainers sample completions: their losses are not comparable
        reference = make_trainer(tmp_path, name, test).evaluate()
        assert metrics["eval_loss"] == pytest.approx(reference["eval_loss"], rel=1e-5)


@pytest.mark.parametrize("name", list(TRAINERS))
def test_dict_of_eval_datasets_reports_each_under_its_name(tmp_path, name):
    test = eval_split(name)
    # "train" as a key must not be mistaken for the training data (e.g. shuffled, or packed like it).
    trainer = make_trainer(tmp_path, name, {"train": test, "stream": streaming(test)})
    metrics = trainer.evaluate()
    assert math.isfinite(metrics["eval_train_loss"]) and math.isfinite(metrics["eval_stream_loss"])
    assert "eval_loss" not in metrics
    if name not in ("grpo", "rloo"):
        assert metrics["eval_stream_loss"] == pytest.approx(metrics["eval_train_loss"], rel=1e-5)


# ------------------------------------------------------------------------------------------- the shared helper
def test_prepare_train_and_eval_names_every_dataset():
    seen = []

    def prepare(dataset, name):
        seen.append(name)
        return f"prepared {dataset}"

    assert prepare_train_and_eval("a", {"x": "b", "train": "c"}, prepare) == (
        "prepared a",
        {"x": "prepared b", "train": "prepared c"},
    )
    assert seen == ["train", "eval_x", "eval_train"]
    assert prepare_train_and_eval(None, None, prepare) == (None, None)
    assert map_datasets("d", prepare, "eval") == "prepared d" and seen[-1] == "eval"


def test_to_map_style_reads_a_streaming_dataset_into_memory():
    dataset = Dataset.from_dict({"prompt": ["a", "b", "c"]})
    assert to_map_style(dataset) is dataset
    copy = to_map_style(streaming(dataset))
    assert isinstance(copy, Dataset) and copy["prompt"] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="empty"):
        to_map_style(streaming(Dataset.from_dict({"prompt": []})))
