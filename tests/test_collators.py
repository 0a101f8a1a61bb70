import pytest
import torch
import torch.nn.functional as F
from transformers import Qwen2Config, Qwen2ForCausalLM

from trl.trainer.collators import (
    DataCollatorForLanguageModeling,
    DataCollatorForPreference,
    DataCollatorForRewardPreference,
    DataCollatorForUnpairedPreference,
)


def assert_tensors(batch: dict, expected: dict) -> None:
    assert set(batch) == set(expected), f"keys {sorted(batch)} != {sorted(expected)}"
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert batch[key].dtype == value.dtype, f"{key}: dtype {batch[key].dtype} != {value.dtype}"
            assert torch.equal(batch[key], value), f"{key}:\n{batch[key]}\n!=\n{value}"
        else:
            assert batch[key] == value, f"{key}: {batch[key]} != {value}"


def long(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def int32(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32)


# ------------------------------------------------------------------------------- language modelling, padded
def test_lm_right_padding():
    examples = [{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5]}]
    assert "position_ids" not in DataCollatorForLanguageModeling(pad_token_id=0)(examples)
    batch = DataCollatorForLanguageModeling(pad_token_id=0, return_position_ids=True)(examples)
    assert_tensors(
        batch,
        {
            "input_ids": long([[1, 2, 3], [4, 5, 0]]),
            "attention_mask": long([[1, 1, 1], [1, 1, 0]]),
            "labels": long([[1, 2, 3], [4, 5, -100]]),
            "position_ids": long([[0, 1, 2], [0, 1, 0]]),
        },
    )


def test_lm_pad_to_multiple_of_and_no_position_ids():
    collator = DataCollatorForLanguageModeling(pad_token_id=9, pad_to_multiple_of=4, return_position_ids=False)
    batch = collator([{"input_ids": [1, 2, 3]}, {"input_ids": torch.tensor([4, 5])}])
    assert_tensors(
        batch,
        {
            "input_ids": long([[1, 2, 3, 9], [4, 5, 9, 9]]),
            "attention_mask": long([[1, 1, 1, 0], [1, 1, 0, 0]]),
            "labels": long([[1, 2, 3, -100], [4, 5, -100, -100]]),
        },
    )


def test_lm_completion_mask_sets_prompt_labels_to_ignore():
    examples = [
        {"input_ids": [1, 2, 3], "completion_mask": [0, 1, 1]},
        {"input_ids": [4, 5], "completion_mask": [0, 1]},
    ]
    batch = DataCollatorForLanguageModeling(pad_token_id=0)(examples)
    assert torch.equal(batch["labels"], long([[-100, 2, 3], [-100, 5, -100]]))
    whole = DataCollatorForLanguageModeling(pad_token_id=0, completion_only_loss=False)(examples)
    assert torch.equal(whole["labels"], long([[1, 2, 3], [4, 5, -100]]))


def test_lm_assistant_masks_and_explicit_labels():
    collator = DataCollatorForLanguageModeling(pad_token_id=0)
    batch = collator([{"input_ids": [1, 2, 3, 4], "assistant_masks": [0, 1, 1, 0]}])
    assert torch.equal(batch["labels"], long([[-100, 2, 3, -100]]))
    batch = collator([{"input_ids": [1, 2, 3], "labels": [-100, 7, 8]}, {"input_ids": [4], "labels": [6]}])
    assert torch.equal(batch["labels"], long([[-100, 7, 8], [6, -100, -100]]))
    # Masks apply on top of explicit labels.
    batch = collator([{"input_ids": [1, 2, 3], "labels": [5, 7, 8], "completion_mask": [1, 1, 0]}])
    assert torch.equal(batch["labels"], long([[5, 7, -100]]))


def test_lm_packed_rows_stay_rows_with_per_document_positions_and_no_mask():
    examples = [{"input_ids": [1, 2, 3, 4, 5], "seq_lengths": [2, 3]}, {"input_ids": [6, 7], "seq_lengths": [2]}]
    batch = DataCollatorForLanguageModeling(pad_token_id=0)(examples)
    # The padding of the second row is one more document: positions restart at 0 there too.
    assert_tensors(
        batch,
        {
            "input_ids": long([[1, 2, 3, 4, 5], [6, 7, 0, 0, 0]]),
            "labels": long([[-100, 2, -100, 4, 5], [-100, 7, -100, -100, -100]]),
            "position_ids": long([[0, 1, 0, 1, 2], [0, 1, 0, 1, 2]]),
        },
    )
    padded = DataCollatorForLanguageModeling(pad_token_id=0, pad_to_multiple_of=4)(examples)
    assert padded["position_ids"].tolist() == [[0, 1, 0, 1, 2, 0, 1, 2], [0, 1, 0, 1, 2, 3, 4, 5]]


def test_lm_rejects_bad_seq_lengths_and_return_tensors():
    with pytest.raises(ValueError, match="seq_lengths"):
        DataCollatorForLanguageModeling(pad_token_id=0)([{"input_ids": [1, 2, 3], "seq_lengths": [1, 1]}])
    with pytest.raises(ValueError, match="labels"):
        DataCollatorForLanguageModeling(pad_token_id=0)([{"input_ids": [1, 2, 3], "labels": [1, 2]}])
    with pytest.raises(ValueError, match="no input_ids"):
        DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)([{"input_ids": [1]}, {"input_ids": []}])
    with pytest.raises(ValueError, match="return_tensors"):
        DataCollatorForLanguageModeling(pad_token_id=0, return_tensors="np")


# ------------------------------------------------------------------------------- language modelling, padding-free
def test_lm_padding_free_flattens_and_restarts_positions():
    collator = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)
    batch = collator([{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5]}])
    assert_tensors(
        batch,
        {
            "input_ids": long([[1, 2, 3, 4, 5]]),
            "labels": long([[-100, 2, 3, -100, 5]]),
            "position_ids": long([[0, 1, 2, 0, 1]]),
            "cu_seq_lens_q": int32([0, 3, 5]),
            "cu_seq_lens_k": int32([0, 3, 5]),
            "max_length_q": 3,
            "max_length_k": 3,
            "seq_idx": int32([[0, 0, 0, 1, 1]]),
        },
    )


def test_lm_padding_free_with_completion_mask():
    examples = [
        {"input_ids": [1, 2, 3], "completion_mask": [0, 1, 1]},
        {"input_ids": [4, 5, 6], "completion_mask": [0, 0, 1]},
    ]
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(examples)
    assert torch.equal(batch["labels"], long([[-100, 2, 3, -100, -100, 6]]))


def test_lm_padding_free_pad_to_multiple_of_pads_the_row_as_one_more_sequence():
    collator = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True, pad_to_multiple_of=4)
    batch = collator([{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5]}])
    assert_tensors(
        batch,
        {
            "input_ids": long([[1, 2, 3, 4, 5, 0, 0, 0]]),
            "labels": long([[-100, 2, 3, -100, 5, -100, -100, -100]]),
            "position_ids": long([[0, 1, 2, 0, 1, 0, 1, 2]]),
            "cu_seq_lens_q": int32([0, 3, 5, 8]),
            "cu_seq_lens_k": int32([0, 3, 5, 8]),
            "max_length_q": 3,
            "max_length_k": 3,
            "seq_idx": int32([[0, 0, 0, 1, 1, 2, 2, 2]]),
        },
    )
    # Already a multiple: nothing added.
    batch = collator([{"input_ids": [1, 2]}, {"input_ids": [3, 4]}])
    assert batch["input_ids"].shape == (1, 4) and torch.equal(batch["cu_seq_lens_q"], int32([0, 2, 4]))


def test_lm_padding_free_packed_rows_use_seq_lengths():
    examples = [{"input_ids": [1, 2, 3, 4, 5], "seq_lengths": [2, 3]}, {"input_ids": [6, 7], "seq_lengths": [2]}]
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(examples)
    assert_tensors(
        batch,
        {
            "input_ids": long([[1, 2, 3, 4, 5, 6, 7]]),
            "labels": long([[-100, 2, -100, 4, 5, -100, 7]]),
            "position_ids": long([[0, 1, 0, 1, 2, 0, 1]]),
            "cu_seq_lens_q": int32([0, 2, 5, 7]),
            "cu_seq_lens_k": int32([0, 2, 5, 7]),
            "max_length_q": 3,
            "max_length_k": 3,
            "seq_idx": int32([[0, 0, 1, 1, 1, 2, 2]]),
        },
    )


# ----------------------------------------------------------------------------------------------- preference
PAIRS = [
    {"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4, 5], "ref_chosen_logps": -1.0, "ref_rejected_logps": -2.0},
    {"prompt_ids": [6], "chosen_ids": [7, 8], "rejected_ids": [9], "ref_chosen_logps": -3.0, "ref_rejected_logps": -4.0},
]  # fmt: skip


def test_preference_stacks_chosen_rows_before_rejected_rows():
    batch = DataCollatorForPreference(pad_token_id=0)(PAIRS)
    assert_tensors(
        batch,
        {
            "input_ids": long([[1, 2, 3, 0], [6, 7, 8, 0], [1, 2, 4, 5], [6, 9, 0, 0]]),
            "attention_mask": long([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]]),
            "completion_mask": long([[0, 0, 1, 0], [0, 1, 1, 0], [0, 0, 1, 1], [0, 1, 0, 0]]),
            "ref_chosen_logps": torch.tensor([-1.0, -3.0]),
            "ref_rejected_logps": torch.tensor([-2.0, -4.0]),
        },
    )


def test_preference_pad_to_multiple_of_and_truncation():
    plain = [{key: value for key, value in pair.items() if not key.startswith("ref_")} for pair in PAIRS]
    batch = DataCollatorForPreference(pad_token_id=0, pad_to_multiple_of=8)(plain)
    assert batch["input_ids"].shape == (4, 8) and set(batch) == {"input_ids", "attention_mask", "completion_mask"}
    keep_start = DataCollatorForPreference(pad_token_id=0, max_length=3)(plain)
    assert torch.equal(keep_start["input_ids"][2], long([1, 2, 4]))
    assert torch.equal(keep_start["completion_mask"][2], long([0, 0, 1]))
    keep_end = DataCollatorForPreference(pad_token_id=0, max_length=3, truncation_mode="keep_end")(plain)
    assert torch.equal(keep_end["input_ids"][2], long([2, 4, 5]))
    assert torch.equal(keep_end["completion_mask"][2], long([0, 1, 1]))
    with pytest.raises(ValueError, match="truncation_mode"):
        DataCollatorForPreference(pad_token_id=0, truncation_mode="middle")


def test_reward_preference_collator():
    examples = [
        {"chosen_ids": [1, 2, 3], "rejected_ids": [5], "margin": 0.5},
        {"chosen_ids": [4], "rejected_ids": [6, 7], "margin": 1.0},
    ]
    batch = DataCollatorForRewardPreference(pad_token_id=0)(examples)
    assert_tensors(
        batch,
        {
            "input_ids": long([[1, 2, 3], [4, 0, 0], [5, 0, 0], [6, 7, 0]]),
            "attention_mask": long([[1, 1, 1], [1, 0, 0], [1, 0, 0], [1, 1, 0]]),
            "margin": torch.tensor([0.5, 1.0]),
        },
    )
    without_margin = [{"chosen_ids": [1], "rejected_ids": [2]}]
    assert set(DataCollatorForRewardPreference(pad_token_id=0)(without_margin)) == {"input_ids", "attention_mask"}


UNPAIRED = [
    {"prompt_ids": [1, 2], "completion_ids": [3], "label": True},
    {"prompt_ids": [4], "completion_ids": [5, 6], "label": False},
    {"prompt_ids": [7], "completion_ids": [8], "label": True},
]


def test_unpaired_preference_rows_and_kl_pairs_shifted_by_one():
    batch = DataCollatorForUnpairedPreference(pad_token_id=0)(UNPAIRED)
    # KL rows pair prompt i with completion (i + 1) mod 3: [1, 2]+[5, 6], [4]+[8], [7]+[3].
    assert_tensors(
        batch,
        {
            "input_ids": long([[1, 2, 3], [4, 5, 6], [7, 8, 0]]),
            "attention_mask": long([[1, 1, 1], [1, 1, 1], [1, 1, 0]]),
            "completion_mask": long([[0, 0, 1], [0, 1, 1], [0, 1, 0]]),
            "labels": torch.tensor([True, False, True]),
            "kl_input_ids": long([[1, 2, 5, 6], [4, 8, 0, 0], [7, 3, 0, 0]]),
            "kl_attention_mask": long([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]]),
            "kl_completion_mask": long([[0, 0, 1, 1], [0, 1, 0, 0], [0, 1, 0, 0]]),
        },
    )
    without_kl = DataCollatorForUnpairedPreference(pad_token_id=0, calculate_kl=False)(UNPAIRED)
    assert set(without_kl) == {"input_ids", "attention_mask", "completion_mask", "labels"}
    with_ref = [dict(example, ref_logps=-float(i)) for i, example in enumerate(UNPAIRED)]
    assert torch.equal(
        DataCollatorForUnpairedPreference(pad_token_id=0)(with_ref)["ref_logps"], torch.tensor([0.0, -1.0, -2.0])
    )


# ------------------------------------------------------------------------------ invariance on a tiny Qwen2
SEQUENCES = [[5, 9, 12, 3, 40], [7, 1, 33, 2, 2, 61, 8], [17, 4, 29]]


def tiny_qwen2(attn_implementation: str) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, attn_implementation=attn_implementation,
    )  # fmt: skip
    return Qwen2ForCausalLM(config).eval()


def per_token_losses(model: Qwen2ForCausalLM, batch: dict, use_cache: bool = False) -> torch.Tensor:
    """Cross-entropy of every labelled next token, in batch order (row by row, left to right)."""
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    with torch.no_grad():
        logits = model(**inputs, use_cache=use_cache).logits
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    return F.cross_entropy(logits[:, :-1][keep], targets[keep], reduction="none")


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_padded_padding_free_and_packed_losses_agree(attn_implementation):
    model = tiny_qwen2(attn_implementation)
    separate = [{"input_ids": ids} for ids in SEQUENCES]
    packed = [
        {"input_ids": SEQUENCES[0] + SEQUENCES[1], "seq_lengths": [5, 7]},
        {"input_ids": SEQUENCES[2], "seq_lengths": [3]},
    ]
    padded = per_token_losses(model, DataCollatorForLanguageModeling(pad_token_id=0)(separate))
    padding_free_collator = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)
    padding_free = per_token_losses(model, padding_free_collator(separate))
    packed_rows = per_token_losses(
        model, DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True, pad_to_multiple_of=8)(packed)
    )
    assert padded.numel() == sum(len(ids) - 1 for ids in SEQUENCES)
    torch.testing.assert_close(padding_free, padded, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed_rows, padded, rtol=1e-5, atol=1e-5)

    # The same batch with a key-value cache: transformers skips the position_ids-based block-diagonal mask and the
    # sequences attend to each other (why trainers must call the model with use_cache=False).
    leaking = per_token_losses(model, padding_free_collator(separate), use_cache=True)
    assert not torch.allclose(leaking, padded, rtol=1e-3, atol=1e-3)
