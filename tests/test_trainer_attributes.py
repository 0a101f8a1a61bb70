"""Trainer attributes that code written against the reference reads: `aux_loss_enabled` (SFT, DPO, GRPO, RLOO),
`reward_processing_classes` (GRPO, RLOO, Online DPO) and `GRPOTrainer.get_high_entropy_mask`."""

import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from trl import (
    DPOConfig,
    DPOTrainer,
    GRPOConfig,
    GRPOTrainer,
    OnlineDPOConfig,
    OnlineDPOTrainer,
    RLOOConfig,
    RLOOTrainer,
    SFTConfig,
    SFTTrainer,
)
from trl.judges import RewardModelJudge
from trl.losses import entropy_mask
from trl.testing import get_tiny_model_path, load_test_dataset


def even_tokens(completion_ids, **kwargs):
    return [sum(token % 2 == 0 for token in ids) / max(len(ids), 1) for ids in completion_ids]


def common(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=4, max_steps=1, save_strategy="no",
        gradient_checkpointing=False, disable_tqdm=True,
    )  # fmt: skip
    return {**values, **overrides}


def online(tmp_path, **overrides):
    return common(tmp_path, num_generations=4, max_completion_length=8, **overrides)


BUILDERS = {
    "sft": lambda path, tmp, **kw: SFTTrainer(
        path, args=SFTConfig(**common(tmp, **kw), max_length=64),
        train_dataset=load_test_dataset("standard_language_modeling"),
    ),
    "dpo": lambda path, tmp, **kw: DPOTrainer(
        path, args=DPOConfig(**common(tmp, **kw), max_length=64),
        train_dataset=load_test_dataset("standard_preference"),
    ),
    "grpo": lambda path, tmp, **kw: GRPOTrainer(
        path, even_tokens, args=GRPOConfig(**online(tmp, **kw)), train_dataset=load_test_dataset("standard_prompt_only")
    ),
    "rloo": lambda path, tmp, **kw: RLOOTrainer(
        path, even_tokens, args=RLOOConfig(**online(tmp, **kw)), train_dataset=load_test_dataset("standard_prompt_only")
    ),
}  # fmt: skip


# ---------------------------------------------------------------------------------------------- aux_loss_enabled
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_aux_loss_enabled_says_whether_the_router_loss_is_on(tmp_path, name):
    moe = BUILDERS[name](
        get_tiny_model_path("qwen3-moe"), tmp_path / "moe", model_init_kwargs={"output_router_logits": True}
    )
    assert moe.aux_loss_enabled is True
    # It is the model's own switch: the forward pass then returns the load-balancing loss the trainer adds.
    ids = torch.tensor([[1, 2, 3, 4]], device=moe.model.device)
    assert moe.model(input_ids=ids).aux_loss is not None
    moe.model.config.output_router_logits = False
    assert moe.aux_loss_enabled is False and moe.model(input_ids=ids).aux_loss is None
    # The same MoE model loaded without router logits, and a dense model: off.
    assert BUILDERS[name](get_tiny_model_path("qwen3-moe"), tmp_path / "moe-off").aux_loss_enabled is False
    assert BUILDERS[name](get_tiny_model_path("qwen2"), tmp_path / "dense").aux_loss_enabled is False


# ------------------------------------------------------------------------------------- reward_processing_classes
ONLINE = {
    "grpo": lambda funcs, classes, tmp: GRPOTrainer(
        get_tiny_model_path("qwen2"), funcs, args=GRPOConfig(**online(tmp)),
        train_dataset=load_test_dataset("standard_prompt_only"), reward_processing_classes=classes,
    ),
    "rloo": lambda funcs, classes, tmp: RLOOTrainer(
        get_tiny_model_path("qwen2"), funcs, args=RLOOConfig(**online(tmp)),
        train_dataset=load_test_dataset("standard_prompt_only"), reward_processing_classes=classes,
    ),
    "online_dpo": lambda funcs, classes, tmp: OnlineDPOTrainer(
        get_tiny_model_path("qwen2"), reward_funcs=funcs,
        args=OnlineDPOConfig(**common(tmp, per_device_train_batch_size=2), max_new_tokens=6),
        train_dataset=load_test_dataset("standard_prompt_only"), reward_processing_classes=classes,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(ONLINE))
def test_reward_processing_classes_are_aligned_with_the_reward_functions(tmp_path, name):
    reward_model = get_tiny_model_path("qwen2-seq-cls")
    # None for a model: its own tokenizer is loaded (with a pad token); a callable has none.
    trainer = ONLINE[name]([even_tokens, reward_model], None, tmp_path / "own")
    classes = trainer.reward_processing_classes
    assert isinstance(classes, list) and len(classes) == 2 and classes[0] is None
    assert isinstance(classes[1], PreTrainedTokenizerBase) and classes[1].pad_token_id is not None
    assert classes[1].name_or_path == reward_model
    # An explicit tokenizer is the one used, at its position.
    tokenizer = AutoTokenizer.from_pretrained(reward_model)
    trainer = ONLINE[name]([reward_model, even_tokens], [tokenizer, None], tmp_path / "given")
    assert trainer.reward_processing_classes == [tokenizer, None]
    assert trainer.reward_processing_classes[0] is tokenizer
    # A tokenizer passed for a callable is kept at its position (as the reference keeps it), not replaced by None.
    trainer = ONLINE[name]([even_tokens, reward_model], [tokenizer, None], tmp_path / "callable")
    classes = trainer.reward_processing_classes
    assert len(classes) == 2 and classes[0] is tokenizer
    assert isinstance(classes[1], PreTrainedTokenizerBase) and classes[1] is not tokenizer
    assert classes[1].name_or_path == reward_model


def test_online_dpo_judged_by_a_judge_has_no_reward_processing_classes(tmp_path):
    trainer = OnlineDPOTrainer(
        get_tiny_model_path("qwen2"), judge=RewardModelJudge(even_tokens),
        args=OnlineDPOConfig(**common(tmp_path, per_device_train_batch_size=2), max_new_tokens=6),
        train_dataset=load_test_dataset("standard_prompt_only"),
    )  # fmt: skip
    assert trainer.reward_processing_classes == []


# --------------------------------------------------------------------------------------- get_high_entropy_mask
ENTROPIES = torch.tensor([[0.1, 0.5, 0.9, 9.0], [0.3, 0.7, 0.2, 0.4]])
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])  # the padded 9.0 must not count


@pytest.mark.parametrize(
    "threshold, kept",
    [
        # The 7 completion entropies sorted: 0.1 0.2 0.3 0.4 0.5 0.7 0.9 (linear interpolation between them).
        (0.0, [[1, 1, 1, 0], [1, 1, 1, 1]]),  # quantile 0 = the minimum: every completion token
        (0.5, [[0, 1, 1, 0], [0, 1, 0, 1]]),  # median 0.4: kept at or above it, 0.4 itself included
        (0.8, [[0, 0, 1, 0], [0, 1, 0, 0]]),  # 0.5 + 0.8·(0.7 − 0.5) = 0.66
        (1.0, [[0, 0, 1, 0], [0, 0, 0, 0]]),  # the maximum only
    ],
)
def test_get_high_entropy_mask_keeps_tokens_at_or_above_the_quantile(tmp_path, threshold, kept):
    trainer = BUILDERS["grpo"](get_tiny_model_path("qwen2"), tmp_path)
    got = trainer.get_high_entropy_mask(ENTROPIES, MASK, threshold)
    assert got.dtype == torch.bool and got.tolist() == torch.tensor(kept, dtype=torch.bool).tolist()
    # It is the entropy mask of `top_entropy_quantile = 1 − threshold` that the GRPO loss applies.
    assert torch.equal(got, entropy_mask(ENTROPIES, MASK, 1.0 - threshold))
