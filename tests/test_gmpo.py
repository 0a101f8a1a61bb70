"""GMPO (arXiv 2507.20673): the loss recomputed from the paper's formula on hand-made tensors, the config, and the
trainer (training on the tiny model, checkpoint resume)."""

import math
import runpy
import shutil
from pathlib import Path

import pytest
import torch

from trl.import_utils import suppress_experimental_warning
from trl.losses import PolicyLossOptions, gmpo_loss, gmpo_loss_from_options, kl_k3
from trl.testing import get_tiny_model_path, load_test_dataset
from trl.trainer.grpo_config import GRPOConfig


with suppress_experimental_warning():
    from trl.experimental.gmpo import GMPOConfig, GMPOTrainer


# Four completions of up to 5 tokens; row 2 is shorter, row 3 has a zero advantage.
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
# log π_θ − log π_old per token: some inside the log-space range ±0.4, some beyond it on either side.
LOG_RATIO = torch.tensor(
    [
        [0.1, 0.9, -0.7, 0.2, 0.0],  # A > 0: 0.9 is clipped to 0.4, -0.7 stays (one-sided)
        [-0.1, -0.9, 0.6, 0.3, 5.0],  # A < 0: -0.9 is clipped to -0.4, 0.6 stays; the padded 5.0 is ignored
        [0.5, -0.2, 0.0, 0.0, 0.0],  # A > 0: 0.5 is clipped to 0.4
        [0.3, -0.3, 0.1, 0.0, 0.0],  # A = 0
    ],
    dtype=torch.float64,
)
ADVANTAGES = torch.tensor([1.5, -0.8, 0.6, 0.0], dtype=torch.float64)
OLD_LOGPS = -torch.linspace(0.5, 3.0, 20, dtype=torch.float64).reshape(4, 5)


def paper_objective(log_ratio, old_logps, advantages, mask, eps_low, eps_high):
    """J_i = sgn(A_i)·(Π_t |min(ρ_t A_i, clip(ρ_t, e^{-ε_low}, e^{ε_high}) A_i)|)^{1/|o_i|}, with plain floats."""
    objectives = []
    for i in range(mask.shape[0]):
        a = float(advantages[i])
        tokens = [t for t in range(mask.shape[1]) if mask[i, t]]
        product = 1.0
        for t in tokens:
            ratio = math.exp(float(log_ratio[i, t]))
            clipped = min(max(ratio, math.exp(-eps_low)), math.exp(eps_high))
            product *= abs(min(ratio * a, clipped * a))
        objectives.append(math.copysign(1.0, a) * product ** (1 / len(tokens)) if a != 0 else 0.0)
    return objectives


def logps_for(log_ratio=LOG_RATIO, old=OLD_LOGPS):
    return (old + log_ratio).clone().requires_grad_(True)


def test_loss_is_the_papers_geometric_mean_objective():
    logps = logps_for()
    loss, metrics = gmpo_loss(logps, OLD_LOGPS, ADVANTAGES, MASK, epsilon=0.4)
    objectives = paper_objective(LOG_RATIO, OLD_LOGPS, ADVANTAGES, MASK, 0.4, 0.4)
    assert loss.item() == pytest.approx(-sum(objectives) / 4, rel=1e-12)
    # Row 0 by hand: exp(mean(0.1, 0.4, -0.7, 0.2, 0.0)) · 1.5.
    assert objectives[0] == pytest.approx(1.5 * math.exp(0.0 / 5), rel=1e-12)
    # Clip fractions over the 14 completion tokens: low = A<0 and log-ratio < -0.4 (one); high = A>0 and > 0.4 (two).
    assert metrics["clip_ratio/low_mean"].item() == pytest.approx(1 / 14)
    assert metrics["clip_ratio/high_mean"].item() == pytest.approx(2 / 14)
    assert metrics["clip_ratio/region_mean"].item() == pytest.approx(3 / 14)
    assert "kl" not in metrics


def test_asymmetric_range_and_epsilon_high():
    logps = logps_for()
    loss, _ = gmpo_loss(logps, OLD_LOGPS, ADVANTAGES, MASK, epsilon=0.2, epsilon_high=0.6)
    objectives = paper_objective(LOG_RATIO, OLD_LOGPS, ADVANTAGES, MASK, 0.2, 0.6)
    assert loss.item() == pytest.approx(-sum(objectives) / 4, rel=1e-12)


def test_gradient_is_zero_exactly_where_the_one_sided_clip_bites():
    logps = logps_for()
    loss, _ = gmpo_loss(logps, OLD_LOGPS, ADVANTAGES, MASK, epsilon=0.4)
    loss.backward()
    grad = logps.grad
    # A > 0: the token above +0.4 gets no gradient; the one below -0.4 keeps its gradient.
    assert grad[0, 1] == 0 and grad[0, 2] != 0
    # A < 0: the token below -0.4 gets no gradient; the one above +0.4 keeps its gradient.
    assert grad[1, 1] == 0 and grad[1, 2] != 0
    # Unclipped token of row 0: d(-A·G/n·...)/d logp_t = -A·G/(n·B) with G the geometric mean (sequence mean of 4).
    geometric = math.exp((0.1 + 0.4 - 0.7 + 0.2 + 0.0) / 5)
    assert grad[0, 0].item() == pytest.approx(-1.5 * geometric / (5 * 4), rel=1e-12)
    # Sign of the advantage: a positive one pushes log-probs up (negative gradient), a negative one down.
    assert (grad[0][MASK[0]][grad[0][MASK[0]] != 0] < 0).all()
    assert (grad[1][MASK[1]][grad[1][MASK[1]] != 0] > 0).all()
    # Padding and the zero-advantage completion get no gradient.
    assert grad[1, 4] == 0 and grad[2, 2:].abs().sum() == 0 and grad[3].abs().sum() == 0


def test_padding_may_hold_anything():
    garbage = OLD_LOGPS.clone()
    garbage[~MASK] = -math.inf
    logps = logps_for()
    clean, _ = gmpo_loss(logps, OLD_LOGPS, ADVANTAGES, MASK)
    loss, _ = gmpo_loss(torch.where(MASK, logps, torch.full_like(logps, float("nan"))), garbage, ADVANTAGES, MASK)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(clean.item(), rel=1e-12)


def test_entropy_mask_restricts_the_geometric_mean_and_off_policy_mask_drops_rows():
    keep = MASK.clone()
    keep[0, 1] = keep[0, 2] = False  # row 0's mean over tokens 0, 3, 4 only
    loss, _ = gmpo_loss(logps_for(), OLD_LOGPS, ADVANTAGES, MASK, entropy_mask_B_T=keep)
    objectives = paper_objective(LOG_RATIO, OLD_LOGPS, ADVANTAGES, keep, 0.4, 0.4)
    assert loss.item() == pytest.approx(-sum(objectives) / 4, rel=1e-12)  # still divided by the 4 completions
    drop = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    loss, _ = gmpo_loss(logps_for(), OLD_LOGPS, ADVANTAGES, MASK, off_policy_mask_B=drop)
    objectives = paper_objective(LOG_RATIO, OLD_LOGPS, ADVANTAGES, MASK, 0.4, 0.4)
    assert loss.item() == pytest.approx(-(objectives[0] + objectives[2] + objectives[3]) / 4, rel=1e-12)


def test_token_weighted_reduction_and_kl_term():
    lengths = MASK.sum(dim=1).double()
    objectives = torch.tensor(paper_objective(LOG_RATIO, OLD_LOGPS, ADVANTAGES, MASK, 0.4, 0.4), dtype=torch.float64)
    loss, _ = gmpo_loss(logps_for(), OLD_LOGPS, ADVANTAGES, MASK, loss_type="dapo", num_items_in_batch=28)
    assert loss.item() == pytest.approx(-(lengths * objectives).sum().item() / 28, rel=1e-12)
    ref = OLD_LOGPS - 0.3
    logps = logps_for()
    loss, metrics = gmpo_loss(logps, OLD_LOGPS, ADVANTAGES, MASK, beta=0.1, ref_logps_B_T=ref)
    kl = kl_k3(logps.detach(), ref)
    per_row_kl = torch.stack([kl[i][MASK[i]].mean() for i in range(4)])
    assert loss.item() == pytest.approx((-objectives + 0.1 * per_row_kl).mean().item(), rel=1e-12)
    assert metrics["kl"].item() == pytest.approx(kl[MASK].mean().item(), rel=1e-6)


def test_on_policy_value_and_invalid_calls():
    logps = logps_for(torch.zeros_like(LOG_RATIO))
    loss, _ = gmpo_loss(logps, None, ADVANTAGES, MASK)  # ratio 1: the loss is -mean(A)
    assert loss.item() == pytest.approx(-ADVANTAGES.mean().item(), rel=1e-12)
    with pytest.raises(ValueError, match="loss_type='grpo'"):
        gmpo_loss(logps, None, ADVANTAGES, MASK, loss_type="cispo")
    with pytest.raises(ValueError, match="ref_logps_B_T"):
        gmpo_loss(logps, None, ADVANTAGES, MASK, beta=0.1)
    with pytest.raises(ValueError, match="one advantage per completion"):
        gmpo_loss(logps, None, torch.ones(4, 5, dtype=torch.float64), MASK)


def test_options_from_the_config():
    config = GMPOConfig(output_dir="out", report_to="none", epsilon_high=0.5, beta=0.05)
    options = PolicyLossOptions.from_config(config)
    ref = OLD_LOGPS - 0.1
    got, _ = gmpo_loss_from_options(logps_for(), OLD_LOGPS, ADVANTAGES, MASK, options, ref_logps_B_T=ref)
    expected, _ = gmpo_loss(logps_for(), OLD_LOGPS, ADVANTAGES, MASK, epsilon=0.4, epsilon_high=0.5, beta=0.05,
                            ref_logps_B_T=ref)  # fmt: skip
    assert got.item() == expected.item()


# ------------------------------------------------------------------------------------------------------ config
def test_config_defaults_and_refusals():
    config = GMPOConfig(output_dir="out", report_to="none")
    assert isinstance(config, GRPOConfig)
    assert (config.epsilon, config.epsilon_high, config.loss_type) == (0.4, None, "grpo")
    assert config.beta == 0.0 and config.num_generations == 8  # the rest is GRPO's
    with pytest.raises(ValueError, match="loss_type"):
        GMPOConfig(output_dir="out", loss_type="sapo")
    with pytest.raises(ValueError, match="importance_sampling_level='token'"):
        GMPOConfig(output_dir="out", importance_sampling_level="sequence", loss_type="grpo")
    with pytest.raises(ValueError, match="unset delta"):
        GMPOConfig(output_dir="out", delta=2.0)


# ----------------------------------------------------------------------------------------------------- trainer
def even_tokens(completion_ids, **kwargs):
    return [sum(token % 2 == 0 for token in ids) / max(len(ids), 1) for ids in completion_ids]


def make_trainer(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path / "out"), report_to="none", max_steps=1, per_device_train_batch_size=8,
        num_generations=4, max_completion_length=8, logging_steps=1, save_strategy="no", learning_rate=1e-2,
        seed=0, gradient_checkpointing=False,
    )  # fmt: skip
    values.update(overrides)
    return GMPOTrainer(
        get_tiny_model_path("qwen2"), even_tokens, args=GMPOConfig(**values),
        train_dataset=load_test_dataset("standard_prompt_only"),
    )  # fmt: skip


def test_a_grpo_config_is_used_as_it_is_and_checked(tmp_path):
    args = GRPOConfig(output_dir=str(tmp_path), report_to="none", num_generations=4, per_device_train_batch_size=4)
    dataset = load_test_dataset("standard_prompt_only")
    trainer = GMPOTrainer(get_tiny_model_path("qwen2"), even_tokens, args=args, train_dataset=dataset)
    assert trainer.args is args and trainer.loss_options.epsilon == 0.2 and trainer.loss_options.loss_type == "dapo"
    args = GRPOConfig(output_dir=str(tmp_path), report_to="none", num_generations=4, per_device_train_batch_size=4,
                      loss_type="cispo", epsilon_high=5.0)  # fmt: skip
    with pytest.raises(ValueError, match="loss_type='cispo' does not apply"):
        GMPOTrainer(get_tiny_model_path("qwen2"), even_tokens, args=args, train_dataset=dataset)


def test_training_changes_every_parameter_through_the_gmpo_loss(tmp_path, monkeypatch):
    import trl.experimental.gmpo.gmpo_trainer as module
    import trl.trainer.grpo_trainer as grpo_module

    calls = []
    real = module.gmpo_loss_from_options
    monkeypatch.setattr(module, "gmpo_loss_from_options", lambda *a, **k: calls.append(a[4]) or real(*a, **k))
    monkeypatch.setattr(grpo_module, "policy_loss_from_options", None)  # GRPO's objective is never called
    trainer = make_trainer(tmp_path, max_steps=2)
    assert trainer._tag_names == ["trl", "gmpo"] and trainer._paper["id"] == "2507.20673"
    before = {name: param.detach().clone() for name, param in trainer.model.named_parameters()}
    trainer.train()
    unchanged = [name for name, param in trainer.model.named_parameters() if torch.equal(before[name], param)]
    assert unchanged == []
    assert len(calls) == 2 and calls[0].epsilon == 0.4 and calls[0].loss_type == "grpo"
    row = trainer.state.log_history[0]
    assert math.isfinite(row["loss"])
    for key in ("reward", "entropy", "clip_ratio/low_mean", "clip_ratio/high_max", "clip_ratio/region_mean"):
        assert key in row, key


def test_default_args_and_resume_reproduces_the_uninterrupted_run(tmp_path):
    default = GMPOTrainer(get_tiny_model_path("qwen2"), even_tokens, train_dataset=load_test_dataset(
        "standard_prompt_only"))  # fmt: skip
    assert isinstance(default.args, GMPOConfig) and default.args.output_dir.endswith("-GMPO")
    # A generation batch feeds 2 steps (num_iterations=2): the checkpoint at step 1 holds a half-used buffer.
    common = dict(num_iterations=2, max_steps=3, save_strategy="steps", save_steps=1, seed=3,
                  per_device_train_batch_size=4)  # fmt: skip
    full = make_trainer(tmp_path / "full", **common)
    full.train()
    resumed_dir = tmp_path / "resumed" / "out"
    shutil.copytree(tmp_path / "full" / "out" / "checkpoint-1", resumed_dir / "checkpoint-1")
    resumed = make_trainer(tmp_path / "resumed", **common)
    resumed.train(resume_from_checkpoint=str(resumed_dir / "checkpoint-1"))
    losses = {row["step"]: row["loss"] for row in full.state.log_history if "loss" in row}
    resumed_losses = {row["step"]: row["loss"] for row in resumed.state.log_history if "loss" in row}
    assert {step: resumed_losses[step] for step in (2, 3)} == {step: losses[step] for step in (2, 3)}
    assert len(set(losses.values())) > 1


def test_example_script_trains_and_the_reward_rises(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = Path(__file__).parent.parent / "examples" / "scripts" / "gmpo.py"
    trainer = runpy.run_path(str(path), run_name="__main__")["trainer"]
    rewards = [row["reward"] for row in trainer.state.log_history if "reward" in row]
    assert trainer.state.global_step == 10 and len(rewards) == 10
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.2, rewards
