"""The paired forward pass shared by DPO, CPO and ORPO (`trl.trainer.paired_forward`)."""

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from trl.testing import get_tiny_model_path
from trl.trainer.base_trainer import BaseTrainer
from trl.trainer.collators import DataCollatorForPreference
from trl.trainer.paired_forward import (
    TokenLogps,
    completion_logps,
    completion_positions,
    log_paired_metrics,
    paired_scores,
)


# Two pairs with prompts and completions of different lengths, so the rows carry padding.
EXAMPLES = [
    {"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9], "rejected_ids": [10, 11, 12, 13]},
    {"prompt_ids": [14], "chosen_ids": [15, 16, 17], "rejected_ids": [18]},
]


@pytest.fixture(scope="module")
def causal_lm():
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(get_tiny_model_path("qwen2")).eval()


@pytest.fixture(scope="module")
def batch():
    return DataCollatorForPreference(pad_token_id=0)(EXAMPLES)


def reference_row_logps(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """Log-probs of `completion` after `prompt`, from a forward pass over that row alone (no padding)."""
    ids = torch.tensor([prompt + completion])
    logps = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
    targets = ids[0, 1:]
    return logps.gather(-1, targets[:, None]).squeeze(-1)[len(prompt) - 1 :]


def test_completion_positions_are_the_positions_before_each_completion_token():
    completion_mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]])
    expected = torch.tensor([[0, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(completion_positions(completion_mask), expected)


@torch.no_grad()
def test_completion_logps_match_each_row_scored_alone(causal_lm, batch):
    token = completion_logps(causal_lm, batch)
    rows = [(ex["prompt_ids"], ex["chosen_ids"]) for ex in EXAMPLES]
    rows += [(ex["prompt_ids"], ex["rejected_ids"]) for ex in EXAMPLES]
    for row, (prompt, completion) in enumerate(rows):
        expected = reference_row_logps(causal_lm, prompt, completion)
        torch.testing.assert_close(token.logps[row][token.mask[row]], expected, rtol=1e-5, atol=1e-5)
        assert int(token.mask[row].sum()) == len(completion)
    assert token.logits.shape == (int(token.mask.sum()), causal_lm.config.vocab_size)
    assert (token.logps[~token.mask] == 0).all()


@torch.no_grad()
def test_padding_free_and_full_logits_give_the_same_log_probs(causal_lm, batch):
    padded = completion_logps(causal_lm, batch)
    flattened = completion_logps(causal_lm, batch, padding_free=True)
    full_logits = completion_logps(causal_lm, batch, logits_to_keep=False)
    for other in (flattened, full_logits):
        assert torch.equal(other.mask, padded.mask)
        torch.testing.assert_close(other.logps, padded.logps, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(other.logits, padded.logits, rtol=1e-5, atol=1e-5)


def test_paired_scores_reduce_hand_built_log_probs():
    """B = 2 pairs; rows 0-1 chosen, rows 2-3 rejected. Completion log-probs per row:
    [-1, -2], [-0.5, -0.5, -1, -2] | [-3], [-1, -4]. Sums -3, -4 | -3, -5; means -1.5, -1 | -3, -2.5;
    NLL = (3 + 4) / 6 chosen tokens. The 9 kept logits rows have mean logit k = 0..8: chosen rows hold k = 0..5
    (sum 15), rejected rows k = 6..8 (sum 21)."""
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    values = torch.tensor([-1.0, -2.0, -0.5, -0.5, -1.0, -2.0, -3.0, -1.0, -4.0])
    logps = torch.zeros(4, 4).masked_scatter(mask, values)
    logits = torch.stack([torch.arange(9.0) - 1, torch.arange(9.0) + 1], dim=1)
    scores = paired_scores(TokenLogps(logps, mask, logits, SimpleNamespace()))
    torch.testing.assert_close(scores.chosen_logps, torch.tensor([-3.0, -4.0]))
    torch.testing.assert_close(scores.rejected_logps, torch.tensor([-3.0, -5.0]))
    torch.testing.assert_close(scores.chosen_mean_logps, torch.tensor([-1.5, -1.0]))
    torch.testing.assert_close(scores.rejected_mean_logps, torch.tensor([-3.0, -2.5]))
    assert scores.chosen_lengths.tolist() == [2, 4] and scores.rejected_lengths.tolist() == [1, 2]
    torch.testing.assert_close(scores.nll_loss, torch.tensor(7 / 6))
    torch.testing.assert_close(scores.logit_stats, torch.tensor([15.0, 6.0, 21.0, 3.0]))
    assert scores.aux_loss is None and scores.pair_weights is None
    summed = torch.tensor([-1.0, -2.0, -3.0, -4.0])
    replaced = paired_scores(TokenLogps(logps, mask, logits, SimpleNamespace(aux_loss=torch.tensor(0.5))), summed)
    torch.testing.assert_close(replaced.chosen_logps, summed[:2])
    torch.testing.assert_close(replaced.chosen_mean_logps, scores.chosen_mean_logps)  # means are unchanged
    assert replaced.aux_loss.item() == 0.5


def test_nll_gradient_reaches_only_chosen_completion_tokens():
    """NLL = mean over the 3 chosen tokens: d NLL / d logp = −1/3 there and 0 on rejected rows and padding."""
    mask = torch.tensor([[0, 1, 1], [1, 0, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.bool)
    logps = torch.full((4, 3), -0.5, requires_grad=True)
    scores = paired_scores(TokenLogps(logps, mask, torch.zeros(int(mask.sum()), 2), SimpleNamespace()))
    (grad,) = torch.autograd.grad(scores.nll_loss, logps)
    expected = torch.zeros(4, 3)
    expected[:2][mask[:2]] = -1 / 3
    torch.testing.assert_close(grad, expected)


@torch.no_grad()
def test_encoder_decoder_scores_the_completion_given_the_encoded_prompt():
    """Against T5's own loss on each row alone: sum of log-probs = −loss · number of completion tokens."""
    torch.manual_seed(0)
    model = AutoModelForSeq2SeqLM.from_pretrained(get_tiny_model_path("t5")).eval()
    batch = DataCollatorForPreference(pad_token_id=model.config.pad_token_id)(EXAMPLES)
    token = completion_logps(model, batch, is_encoder_decoder=True)
    rows = [(ex["prompt_ids"], ex["chosen_ids"]) for ex in EXAMPLES]
    rows += [(ex["prompt_ids"], ex["rejected_ids"]) for ex in EXAMPLES]
    for row, (prompt, completion) in enumerate(rows):
        loss = model(input_ids=torch.tensor([prompt]), labels=torch.tensor([completion])).loss
        torch.testing.assert_close(token.logps[row].sum(), -loss * len(completion), rtol=1e-5, atol=1e-5)
        assert token.mask[row].tolist()[: len(completion)] == [True] * len(completion)
        assert int(token.mask[row].sum()) == len(completion)


def stub_trainer(model=None):
    """Enough of a trainer for the metric helpers: identity gathers (one process) and a metric store."""
    logged = defaultdict(list)
    accelerator = SimpleNamespace(gather=lambda t: t, gather_for_metrics=lambda t: t, unwrap_model=lambda m: m)
    trainer = SimpleNamespace(accelerator=accelerator, model=model, logged=logged)
    trainer.log_metric = lambda name, value, mode: logged[(mode, name)].append(float(value))
    return trainer


def test_log_paired_metrics_values():
    """Rewards (chosen, rejected) (1, 0.5) and (−1, 2): accuracies mean 0.5, margins mean (0.5 − 3) / 2."""
    scores = paired_scores(
        TokenLogps(
            torch.tensor([[-1.0, -1.0], [-2.0, 0.0], [-4.0, 0.0], [-3.0, -3.0]]),
            torch.tensor([[True, True], [True, False], [True, False], [True, True]]),
            torch.tensor([[1.0, 3.0], [0.0, 0.0], [2.0, 2.0], [4.0, 4.0], [6.0, 6.0], [8.0, 8.0]]),
            SimpleNamespace(),
        )
    )
    trainer = stub_trainer()
    rewards = (torch.tensor([1.0, -1.0]), torch.tensor([0.5, 2.0]))
    log_paired_metrics(trainer, scores, rewards, "train", log_nll=True)
    got = {name: values[0] for (_, name), values in trainer.logged.items()}
    assert got["rewards/chosen"] == 0.0 and got["rewards/rejected"] == 1.25
    assert got["rewards/accuracies"] == 0.5 and got["rewards/margins"] == -1.25
    assert got["logps/chosen"] == -2.0 and got["logps/rejected"] == -5.0  # sums (−2, −2) and (−4, −6)
    assert got["logits/chosen"] == pytest.approx((2 + 0 + 2) / 3) and got["logits/rejected"] == pytest.approx(6)
    assert got["nll_loss"] == pytest.approx(4 / 3)
    trainer = stub_trainer()
    log_paired_metrics(trainer, scores, rewards, "eval", mean_logps=True)
    got = {name: values[0] for (_, name), values in trainer.logged.items()}
    assert got["logps/chosen"] == -1.5 and got["logps/rejected"] == -3.5  # means (−1, −2) and (−4, −3)
    assert "nll_loss" not in got


def test_router_aux_loss_uses_the_model_coefficient_unless_configured():
    """`BaseTrainer.router_aux_loss`, the one MoE term of every trainer: the config's coefficient, else the model's."""
    model = SimpleNamespace(config=SimpleNamespace(router_aux_loss_coef=0.01))
    trainer = stub_trainer(model)
    trainer.args = SimpleNamespace(router_aux_loss_coef=None)
    assert BaseTrainer.router_aux_loss(trainer, None, "train") == 0.0 and not trainer.logged
    aux = torch.tensor(2.0)
    assert BaseTrainer.router_aux_loss(trainer, aux, "train").item() == pytest.approx(0.02)
    trainer.args.router_aux_loss_coef = 0.5
    assert BaseTrainer.router_aux_loss(trainer, aux, "train").item() == 1.0
    assert trainer.logged[("train", "aux_loss")] == [2.0, 2.0]
