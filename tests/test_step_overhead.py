"""Invariance of the per-step overhead cuts: the leaner code builds exactly what the straightforward code built."""

import random

import pytest
import torch

from trl.trainer.collators import DataCollatorForLanguageModeling
from trl.trainer.tensor_utils import pad


IGNORE_INDEX = -100


def _examples(seed: int, n: int = 6) -> list[dict]:
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        length = rng.randint(1, 23)
        prompt = rng.randint(0, length - 1)
        examples.append(
            {
                "input_ids": [rng.randint(1, 99) for _ in range(length)],
                "completion_mask": [0] * prompt + [1] * (length - prompt),
            }
        )
    return examples


def _reference_batch(examples, pad_id, multiple, completion_only_loss, position_ids):
    # The padded batch built the plain way: one ones-tensor per row, padded like the ids.
    ids = [torch.tensor(e["input_ids"]) for e in examples]
    labels = []
    for e, row in zip(examples, ids):
        label = row.clone()
        if completion_only_loss:
            label = label.masked_fill(torch.tensor(e["completion_mask"]) == 0, IGNORE_INDEX)
        labels.append(label)
    batch = {
        "input_ids": pad(ids, pad_id, pad_to_multiple_of=multiple),
        "attention_mask": pad([torch.ones_like(row) for row in ids], 0, pad_to_multiple_of=multiple),
        "labels": pad(labels, IGNORE_INDEX, pad_to_multiple_of=multiple),
    }
    if position_ids:
        batch["position_ids"] = pad([torch.arange(len(row)) for row in ids], 0, pad_to_multiple_of=multiple)
    return batch


@pytest.mark.parametrize("multiple", [None, 8])
@pytest.mark.parametrize("position_ids", [False, True])
@pytest.mark.parametrize("completion_only_loss", [False, True])
def test_padded_batch_matches_plain_construction(multiple, position_ids, completion_only_loss):
    for seed in range(5):
        examples = _examples(seed)
        collator = DataCollatorForLanguageModeling(
            pad_token_id=0,
            completion_only_loss=completion_only_loss,
            pad_to_multiple_of=multiple,
            return_position_ids=position_ids,
        )
        batch = collator(examples)
        expected = _reference_batch(examples, 0, multiple, completion_only_loss, position_ids)
        assert sorted(batch) == sorted(expected)
        for key, value in expected.items():
            assert batch[key].dtype == value.dtype, key
            torch.testing.assert_close(batch[key], value, rtol=0, atol=0, msg=key)


def test_attention_mask_counts_real_tokens():
    examples = [{"input_ids": [5] * n} for n in (3, 7, 1)]
    batch = DataCollatorForLanguageModeling(pad_token_id=0, pad_to_multiple_of=4)(examples)
    assert batch["attention_mask"].shape == (3, 8)
    assert batch["attention_mask"].sum(dim=1).tolist() == [3, 7, 1]
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
