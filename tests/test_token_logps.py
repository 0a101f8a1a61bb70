"""Invariance tests of the one forward module, `trl.kernels.token_logps`, on a 2-layer model: every path (padded,
padding-free, full logits, chunked head, labels or completion mask) gives the log-probs, entropies, top-1 flags and
gradients of a full log-softmax over the model's own logits."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from trl.kernels import token_logps
from trl.kernels.token_logps import linear_head
from trl.testing import get_tiny_model_path


# Rows of different lengths (right padding) and completions that start at different columns.
PROMPTS = [[5, 6, 7], [14], [20, 21, 22, 23, 24]]
COMPLETIONS = [[8, 9], [15, 16, 17, 18], [25]]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(get_tiny_model_path("qwen2"), attn_implementation="sdpa")
    # Perturb the tied head so that log-probs vary across tokens and positions (a fresh tiny model is near-uniform).
    with torch.no_grad():
        model.lm_head.weight.add_(torch.randn_like(model.lm_head.weight))
    return model.eval()


@pytest.fixture(scope="module")
def batch():
    rows = [p + c for p, c in zip(PROMPTS, COMPLETIONS)]
    width = max(map(len, rows))
    input_ids = torch.tensor([row + [0] * (width - len(row)) for row in rows])
    attention_mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    completion_mask = torch.tensor(
        [[0] * len(p) + [1] * len(c) + [0] * (width - len(p) - len(c)) for p, c in zip(PROMPTS, COMPLETIONS)]
    )
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


def reference(model, batch, temperature=1.0):
    """Per-token log-probs, entropies and arg-max flags of every completion token, from the full logits."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1] / temperature
    logps_all = logits.log_softmax(-1)
    targets = batch["input_ids"][:, 1:]
    mask = batch["completion_mask"][:, 1:].bool()
    logps = logps_all.gather(-1, targets[..., None]).squeeze(-1)
    entropy = -(logps_all.exp() * logps_all).sum(-1)
    top1 = logits.argmax(-1) == targets
    return logps[mask], entropy[mask], top1[mask]


def test_scored_tokens_are_the_completion_tokens_in_the_batch_layout(model, batch):
    with torch.no_grad():
        token = token_logps(model, batch)
    assert torch.equal(token.mask, batch["completion_mask"].bool())
    assert (token.logps[~token.mask] == 0).all()
    assert token.logits.shape == (sum(map(len, COMPLETIONS)), model.config.vocab_size)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"padding_free": True},
        {"logits_to_keep": False},
        {"chunk_size": 2},
        {"chunk_size": 3, "padding_free": True},
    ],
    ids=["padded", "padding_free", "full_logits", "chunked", "chunked_padding_free"],
)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_every_path_matches_a_full_log_softmax(model, batch, options, temperature):
    with torch.no_grad():
        token = token_logps(model, batch, temperature=temperature, return_entropy=True, return_top1=True, **options)
        logps, entropy, top1 = reference(model, batch, temperature)
    torch.testing.assert_close(token.logps_N, logps, rtol=1e-5, atol=1e-5)
    # The entropy (log-normaliser minus the mean logit) cancels digits: float32 agrees to about 1e-5.
    torch.testing.assert_close(token.entropy[token.mask], entropy, rtol=1e-4, atol=1e-4)
    assert torch.equal(token.is_top1[token.mask], top1)
    assert token.entropy.shape == token.is_top1.shape == token.mask.shape


def test_chunked_head_gives_the_gradients_and_mean_logits_of_the_logits_path(model, batch):
    grads = {}
    for name, chunk_size in (("full", None), ("chunked", 2)):
        model.zero_grad()
        token = token_logps(model, batch, chunk_size=chunk_size, return_entropy=True, entropy_requires_grad=True)
        (token.logps.sum() + 0.1 * token.entropy.sum()).backward()
        grads[name] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        grads[name + "_mean"] = token.mean_logits()
    model.zero_grad()
    assert grads["chunked"].keys() == grads["full"].keys()
    for name, grad in grads["full"].items():
        torch.testing.assert_close(grads["chunked"][name], grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grads["chunked_mean"], grads["full_mean"], rtol=1e-5, atol=1e-5)


def test_entropy_is_detached_unless_asked(model, batch):
    token = token_logps(model, batch, return_entropy=True)
    assert token.logps.requires_grad and not token.entropy.requires_grad
    assert token_logps(model, batch, return_entropy=True, entropy_requires_grad=True).entropy.requires_grad


def test_labels_score_the_same_tokens_as_the_completion_mask(model, batch):
    labels = batch["input_ids"].masked_fill(~batch["completion_mask"].bool(), -100)
    with torch.no_grad():
        from_mask = token_logps(model, batch)
        from_labels = token_logps(model, {**{k: batch[k] for k in ("input_ids", "attention_mask")}, "labels": labels})
    assert torch.equal(from_labels.mask, from_mask.mask)
    torch.testing.assert_close(from_labels.logps, from_mask.logps)


def test_a_narrow_completion_mask_covers_the_last_columns(model, batch):
    """`completion_mask` of width C scores the last C columns and returns `[B, C]` (the rollout layout)."""
    width = 3
    narrow = {**batch, "completion_mask": batch["completion_mask"][:, -width:]}
    assert batch["completion_mask"][:, :-width].sum() == 2  # row 1 has completion tokens further left
    prompt_part = batch["completion_mask"].clone()
    prompt_part[:, -width:] = 0
    wide = {**batch, "completion_mask": batch["completion_mask"] - prompt_part}
    with torch.no_grad():
        token = token_logps(model, narrow)
        full = token_logps(model, wide)
    assert token.logps.shape == (3, width)
    torch.testing.assert_close(token.logps, full.logps[:, -width:])


def test_padding_free_keeps_the_rows_apart(model, batch):
    """A row's log-probs do not depend on the rows flattened before it."""
    with torch.no_grad():
        together = token_logps(model, batch, padding_free=True)
        alone = token_logps(model, {key: value[2:] for key, value in batch.items()}, padding_free=True)
    torch.testing.assert_close(together.logps[2:], alone.logps, rtol=1e-5, atol=1e-5)


def test_heads_with_a_logit_transform_use_the_logits_path(model, batch):
    assert linear_head(model) is model.lm_head
    model.config.final_logit_softcapping = 30.0
    try:
        assert linear_head(model) is None
        with torch.no_grad():
            token = token_logps(model, batch, chunk_size=2)
        assert token.logits is not None  # fell back: the chunked kernel would skip the soft-capping
    finally:
        model.config.final_logit_softcapping = None
