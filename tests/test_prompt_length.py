"""`max_prompt_length` defaults to `None` in the offline preference trainers, as in trl 1.x: no separate prompt limit,
so a long prompt is kept whole (trl 0.x cut it to 512 tokens); an explicit value (old configs) still cuts it. The tiny
model encodes 512 positions, so the prompts here are about 300 tokens long and the explicit limit is 256."""

import pytest
from datasets import Dataset
from transformers import AutoTokenizer

from trl import (
    BCOConfig,
    BCOTrainer,
    CPOConfig,
    CPOTrainer,
    DPOConfig,
    DPOTrainer,
    KTOConfig,
    KTOTrainer,
    ORPOConfig,
    ORPOTrainer,
)
from trl.testing import get_tiny_model_path


MODEL = get_tiny_model_path("qwen2")
TRAINERS = {
    "dpo": (DPOTrainer, DPOConfig),
    "kto": (KTOTrainer, KTOConfig),
    "bco": (BCOTrainer, BCOConfig),
    "cpo": (CPOTrainer, CPOConfig),
    "orpo": (ORPOTrainer, ORPOConfig),
}


@pytest.fixture(scope="module")
def long_prompt():
    prompt = " ".join(f"w{i % 50}" for i in range(110))
    assert 256 < len(AutoTokenizer.from_pretrained(MODEL)(prompt)["input_ids"]) < 500
    return prompt


def prompt_lengths(tmp_path, name: str, prompt: str, **fields) -> list[int]:
    trainer_class, config_class = TRAINERS[name]
    assert config_class(output_dir=str(tmp_path)).max_prompt_length is None
    data = Dataset.from_dict({"prompt": [prompt, prompt], "chosen": [" yes", " sure"], "rejected": [" no", " never"]})
    args = config_class(
        output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=2, max_length=512, disable_tqdm=True,
        **fields,
    )  # fmt: skip
    trainer = trainer_class(MODEL, args=args, train_dataset=data)
    return [len(ids) for ids in trainer.train_dataset["prompt_ids"]]


@pytest.mark.parametrize("name", list(TRAINERS))
def test_long_prompts_are_kept_whole_by_default(tmp_path, name, long_prompt):
    expected = len(AutoTokenizer.from_pretrained(MODEL)(long_prompt)["input_ids"])
    assert set(prompt_lengths(tmp_path, name, long_prompt)) == {expected}
    assert set(prompt_lengths(tmp_path, name, long_prompt, max_prompt_length=256)) == {256}
