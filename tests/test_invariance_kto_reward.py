"""Padding-free forwards (Reward, KTO, BCO): the same loss and gradients (to fp32 rounding) as the padded path, over
at most 1.1 positions a real token.

The padded path stays callable: `_padding_free = False` on a trainer runs the padded forward.
"""

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from trl.kernels.token_logps import token_logps
from trl.testing import CAUSAL_LM_ARCHITECTURES, get_tiny_model_path
from trl.trainer.bco_config import BCOConfig
from trl.trainer.bco_trainer import BCOTrainer
from trl.trainer.kto_config import KTOConfig
from trl.trainer.kto_trainer import KTOTrainer
from trl.trainer.packed_rows import (
    MAX_POSITIONS_PER_TOKEN,
    PACKING_MODEL_TYPES,
    is_right_padded,
    packed_layout,
    packed_token_logps,
    packing_mode,
    sequence_classification_logits,
)
from trl.trainer.reward_config import RewardConfig
from trl.trainer.reward_trainer import RewardTrainer

from .testing_utils import perturbed_model


MODEL = get_tiny_model_path("qwen2")
REWARD_MODEL = get_tiny_model_path("qwen2-seq-cls")
LENGTHS = [5, 17, 9, 30, 3, 12, 22, 8, 14, 6]


def padded_batch(lengths: list[int], pad_token_id: int, seed: int = 0, prompt: int = 2) -> dict[str, torch.Tensor]:
    """Right-padded random rows; the completion starts after `prompt` tokens."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.full((len(lengths), max(lengths)), pad_token_id)
    attention_mask = torch.zeros_like(input_ids)
    for row, length in enumerate(lengths):
        input_ids[row, :length] = torch.randint(3, 100, (length,), generator=generator)
        attention_mask[row, :length] = 1
    completion_mask = attention_mask.clone()
    completion_mask[:, :prompt] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


class ForwardCounter:
    """Counts a model's forward calls and the positions (batch x length) its input embedding computes."""

    def __init__(self, model: torch.nn.Module):
        self.calls, self.positions = 0, 0
        model.register_forward_pre_hook(self._call)
        model.get_input_embeddings().register_forward_hook(self._embed)

    def _call(self, module, args):
        self.calls += 1

    def _embed(self, module, args, output):
        self.positions += args[0].numel()


def loss_and_grads(trainer, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model = trainer.model.train()
    model.zero_grad()
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    return loss.detach(), {name: param.grad.clone() for name, param in model.named_parameters()}


def assert_same_loss_and_grads(new, old) -> None:
    torch.testing.assert_close(new[0], old[0], rtol=1e-5, atol=1e-7)
    assert new[1].keys() == old[1].keys()
    for name in new[1]:
        torch.testing.assert_close(new[1][name], old[1][name], rtol=1e-4, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")
    assert any(grad.abs().sum() > 0 for grad in new[1].values())


# ------------------------------------------------------------------------------------------------------- layout
@pytest.mark.parametrize("lengths", [LENGTHS, [30, 30, 29, 30], [16, 16, 16, 15, 17], [1, 40, 2, 3]])
def test_packed_rows_hold_every_token_once_within_the_position_budget(lengths):
    batch = padded_batch(lengths, pad_token_id=0)
    layout = packed_layout(batch["input_ids"], batch["attention_mask"], "rows", pad_token_id=0)
    assert layout.num_positions <= MAX_POSITIONS_PER_TOKEN * sum(lengths)
    assert layout.slot_N.unique().numel() == sum(lengths)  # no two tokens share a slot
    torch.testing.assert_close(layout.unpack(layout.pack(batch["input_ids"])), batch["input_ids"])
    # Each sequence keeps its tokens in order, at positions 0, 1, ... of its own.
    positions = layout.unpack(layout.inputs["position_ids"])
    expected = torch.arange(max(lengths)).expand(len(lengths), -1) * batch["attention_mask"]
    torch.testing.assert_close(positions, expected)
    assert "attention_mask" not in layout.inputs


def test_flat_layout_is_one_row_with_varlen_boundaries():
    batch = padded_batch(LENGTHS, pad_token_id=0)
    layout = packed_layout(batch["input_ids"], batch["attention_mask"], "flat", pad_token_id=0)
    assert layout.inputs["input_ids"].shape == (1, sum(LENGTHS))
    assert layout.inputs["cu_seq_lens_q"].tolist() == torch.tensor([0, *LENGTHS]).cumsum(0).tolist()
    assert layout.inputs["max_length_k"] == max(LENGTHS)


def test_right_padding_check():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert is_right_padded(mask)
    assert not is_right_padded(torch.tensor([[0, 1, 1], [1, 1, 1]]))  # left padding
    assert not is_right_padded(torch.tensor([[0, 0, 0], [1, 1, 1]]))  # an empty row


# ------------------------------------------------------------------------------- which models keep rows apart
@pytest.mark.parametrize("arch", CAUSAL_LM_ARCHITECTURES)
def test_packing_is_enabled_exactly_where_packed_sequences_stay_apart(arch):
    model = AutoModelForCausalLM.from_pretrained(get_tiny_model_path(arch)).eval()
    batch = padded_batch([7, 12, 4, 9], pad_token_id=0, prompt=1)
    with torch.no_grad():
        padded = token_logps(model, batch)
        packed = packed_token_logps(model, batch, "rows", pad_token_id=0)
    assert torch.equal(packed.mask, padded.mask)
    same = torch.allclose(packed.logps, padded.logps, rtol=1e-5, atol=1e-5)
    assert same == (model.config.model_type in PACKING_MODEL_TYPES)  # GPT-OSS builds its mask without positions
    assert (packing_mode(model) is not None) == same
    if same:
        torch.testing.assert_close(packed.mean_logits(), padded.mean_logits())


def test_packing_falls_back_where_it_would_change_the_maths():
    model = AutoModelForCausalLM.from_pretrained(MODEL)
    assert packing_mode(model) == "rows"
    assert packing_mode(model, ["input_ids", "attention_mask", "pixel_values"]) is None
    model.config.output_router_logits = True  # the load-balancing loss would see the filler and the other rows
    assert packing_mode(model) is None
    model.config.output_router_logits = False
    model.config._attn_implementation = "flash_attention_2"
    assert packing_mode(model) == "flat"


def test_the_flattened_row_gives_the_padded_values():
    # The layout FlashAttention gets; sdpa keeps its sequences apart through the position ids as well.
    model = AutoModelForCausalLM.from_pretrained(MODEL).eval()
    batch = padded_batch(LENGTHS, pad_token_id=0)
    with torch.no_grad():
        padded, flat = token_logps(model, batch), packed_token_logps(model, batch, "flat", pad_token_id=0)
    torch.testing.assert_close(flat.logps, padded.logps)
    torch.testing.assert_close(flat.mean_logits(), padded.mean_logits())


def test_the_first_completion_token_of_a_row_is_never_scored():
    # An empty prompt: in a packed row the previous sequence would predict it; on the padded path nothing does.
    model = AutoModelForCausalLM.from_pretrained(MODEL).eval()
    batch = padded_batch([6, 3, 8], pad_token_id=0, prompt=0)
    with torch.no_grad():
        padded, packed = token_logps(model, batch), packed_token_logps(model, batch, "rows", pad_token_id=0)
    assert not packed.mask[:, 0].any()
    torch.testing.assert_close(packed.logps, padded.logps)


@pytest.mark.parametrize("arch", ["qwen2-seq-cls", "gpt2-seq-cls", "gpt-oss-seq-cls"])
def test_sequence_classification_logits_match_the_padded_forward(arch):
    model = AutoModelForSequenceClassification.from_pretrained(get_tiny_model_path(arch)).eval()
    pad = model.config.pad_token_id
    batch = padded_batch(LENGTHS, pad_token_id=pad)
    batch["input_ids"][1, 16] = pad  # a real token equal to the pad id: the row is read at the token before it
    with torch.no_grad():
        expected = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits = sequence_classification_logits(model, batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(logits, expected)


# ------------------------------------------------------------------------------------------------ the trainers
def unpaired_dataset(size: int = 8) -> Dataset:
    generator = torch.Generator().manual_seed(1)
    rows = {"prompt_ids": [], "completion_ids": [], "label": []}
    for index in range(size):
        prompt, completion = (
            torch.randint(2, 12, (1,), generator=generator),
            torch.randint(1, 20, (1,), generator=generator),
        )
        rows["prompt_ids"].append(torch.randint(3, 100, (int(prompt),), generator=generator).tolist())
        rows["completion_ids"].append(torch.randint(3, 100, (int(completion),), generator=generator).tolist())
        rows["label"].append(index % 2 == 0)
    return Dataset.from_dict(rows)


def unpaired_trainer(trainer_class, config_class, tmp_path, **config):
    args = config_class(
        output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=8, max_steps=1, beta=0.5,
        gradient_checkpointing=False, disable_tqdm=True, save_strategy="no", **config,
    )  # fmt: skip
    return trainer_class(MODEL, ref_model=perturbed_model(), args=args, train_dataset=unpaired_dataset())


def _batch(trainer) -> dict[str, torch.Tensor]:
    return trainer.data_collator([trainer.train_dataset[i] for i in range(8)])


def test_kto_packs_completion_and_kl_rows_and_gives_the_padded_result(tmp_path):
    trainer = unpaired_trainer(KTOTrainer, KTOConfig, tmp_path)
    batch = _batch(trainer)
    real_completion, real_kl = int(batch["attention_mask"].sum()), int(batch["kl_attention_mask"].sum())
    policy, reference = ForwardCounter(trainer.model), ForwardCounter(trainer.ref_model)
    new = loss_and_grads(trainer, batch)
    new_kl = trainer._metrics["train"]["kl"][-1]
    # Policy: completion rows with gradients, then the KL rows without a graph; reference: both in one pass.
    assert (policy.calls, reference.calls) == (2, 1)
    assert policy.positions <= MAX_POSITIONS_PER_TOKEN * (real_completion + real_kl)
    assert reference.positions <= MAX_POSITIONS_PER_TOKEN * (real_completion + real_kl)
    after = (policy.positions, reference.positions)
    trainer._padding_free = False
    old = loss_and_grads(trainer, batch)
    # The padded path: the same passes over every padded position.
    assert (policy.calls, reference.calls) == (2 + 2, 1 + 1)
    assert policy.positions - after[0] == batch["input_ids"].numel() + batch["kl_input_ids"].numel()
    assert policy.positions - after[0] > 1.2 * (real_completion + real_kl)
    width = max(batch["input_ids"].shape[1], batch["kl_input_ids"].shape[1])
    assert reference.positions - after[1] == 2 * 8 * width
    assert_same_loss_and_grads(new, old)
    assert trainer._metrics["train"]["kl"][-1] == pytest.approx(new_kl, rel=1e-5, abs=1e-7)


def test_kto_with_precomputed_reference_runs_only_the_policy(tmp_path):
    trainer = unpaired_trainer(KTOTrainer, KTOConfig, tmp_path, precompute_ref_log_probs=True)
    dataset = trainer._with_ref_log_probs(trainer.train_dataset, 8, "train")
    batch = trainer.data_collator([dataset[i] for i in range(8)])
    assert "ref_kl_logps" in batch
    policy, reference = ForwardCounter(trainer.model), ForwardCounter(trainer.ref_model)
    new = loss_and_grads(trainer, batch)
    assert (policy.calls, reference.calls) == (2, 0)  # completion rows, then the KL rows without a graph
    trainer._padding_free = False
    assert_same_loss_and_grads(new, loss_and_grads(trainer, batch))


def test_bco_runs_two_padding_free_passes_with_the_padded_result(tmp_path):
    trainer = unpaired_trainer(BCOTrainer, BCOConfig, tmp_path)
    batch = _batch(trainer)
    assert "kl_input_ids" not in batch
    real = int(batch["attention_mask"].sum())
    policy, reference = ForwardCounter(trainer.model), ForwardCounter(trainer.ref_model)
    moments = trainer.running.state_dict()
    new = loss_and_grads(trainer, batch)
    assert (policy.calls, reference.calls) == (1, 1)
    assert max(policy.positions, reference.positions) <= MAX_POSITIONS_PER_TOKEN * real
    trainer._padding_free = False
    for name, value in moments.items():  # the same running reward mean before the step
        setattr(trainer.running, name, value)
    assert_same_loss_and_grads(new, loss_and_grads(trainer, batch))


def test_reward_forward_computes_no_padding_and_gives_the_padded_loss(tmp_path):
    pairs = unpaired_dataset(16)
    dataset = Dataset.from_dict(
        {
            "chosen_ids": [p + c for p, c in zip(pairs["prompt_ids"][:8], pairs["completion_ids"][:8])],
            "rejected_ids": [p + c for p, c in zip(pairs["prompt_ids"][8:], pairs["completion_ids"][8:])],
        }
    )
    args = RewardConfig(
        output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=8, max_steps=1,
        gradient_checkpointing=False, disable_tqdm=True, save_strategy="no", center_rewards_coefficient=0.01,
    )  # fmt: skip
    model = AutoModelForSequenceClassification.from_pretrained(REWARD_MODEL)
    trainer = RewardTrainer(model, args=args, train_dataset=dataset)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    real = int(batch["attention_mask"].sum())
    counter = ForwardCounter(trainer.model)
    new = loss_and_grads(trainer, batch)
    assert counter.calls == 1 and counter.positions <= MAX_POSITIONS_PER_TOKEN * real
    after = counter.positions
    trainer._padding_free = False
    old = loss_and_grads(trainer, batch)
    assert counter.calls == 2 and counter.positions - after == batch["input_ids"].numel() > 1.2 * real
    assert_same_loss_and_grads(new, old)
